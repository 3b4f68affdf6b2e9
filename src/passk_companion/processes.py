"""Processes that end with the command that started them (Linux; elsewhere best effort).

* :func:`alive` tells a running process from a dead or zombie one, :func:`descendants` lists the
  process tree below a pid with each process's start time (so that a pid reused by another
  process is never mistaken for ours).
* :func:`die_with_parent` (in a child) asks the kernel to SIGKILL it when its parent dies, however
  the parent dies (prctl PR_SET_PDEATHSIG): the local sweep's workers call it first.
* :class:`Reaper` is a small watchdog process for children the command does not start itself (a
  local Ray's agents are started by its raylet): it snapshots the command's process tree twice a
  second, and if the command dies without saying goodbye (SIGKILL), it ends every process of the
  last snapshot that was not there when the reaper started (SIGTERM, then SIGKILL) within
  seconds.

No torch: ``python -m passk_companion.processes <pid>`` is the reaper itself, and starts in a
moment.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["alive", "descendants", "die_with_parent", "end", "Reaper"]


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int, start: str | None = None) -> bool:
    """Whether process `pid` is running (a zombie, killed but not yet reaped, is not); with
    `start` (from :func:`descendants`), whether it is still that same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    fields = _stat(pid)
    if fields is None:
        return start is None  # no /proc (macOS): trust kill(0)
    return fields[0] not in ("Z", "X") and (start is None or fields[19] == start)


def descendants(root: int) -> dict[int, str]:
    """Every process below `root` (children, their children ...): pid -> start time."""
    parents: dict[int, int] = {}
    starts: dict[int, str] = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                fields = _stat(int(entry.name))
                if fields is not None:
                    parents[int(entry.name)], starts[int(entry.name)] = int(fields[1]), fields[19]
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        children.setdefault(parent, []).append(pid)
    found: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found[child] = starts[child]
                todo.append(child)
    return found


def die_with_parent(parent: int) -> None:
    """In a child process: be SIGKILLed when the parent dies (Linux prctl PR_SET_PDEATHSIG), and
    exit at once if `parent` has already gone. A no-op elsewhere."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


def end(processes: dict[int, str], grace: float = 3.0) -> list[int]:
    """SIGTERM every process of `processes` (pid -> start time) still running, SIGKILL those
    left after `grace` seconds; returns the pids that had to be ended."""
    running = [pid for pid, start in processes.items() if alive(pid, start)]
    for pid in running:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p, processes[p]) for p in running):
        time.sleep(0.1)
    for pid in running:
        if alive(pid, processes[pid]):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
    return running


class Reaper:
    """A watchdog that ends this process's descendants if this process dies without calling
    :meth:`stop` (see the module docstring). Use as a context manager around the code that
    starts them; the reaper itself leaves with a goodbye."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def start(self) -> Reaper:
        """Start the watchdog (a second process of this interpreter, in its own session so that
        a terminal's Ctrl-C reaches only the command)."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "passk_companion.processes", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
        return self

    def stop(self) -> None:
        """Say goodbye: this process has ended what it started; the watchdog leaves."""
        if self.proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.write(b"done\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> Reaper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _watch(command: int) -> None:
    """The reaper's loop (see :class:`Reaper`). A scan that ends after the command died may
    already see its children reparented (to init), so it never replaces the last snapshot taken
    while the command lived: it is added to it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    me = os.getpid()
    fields = _stat(command)
    started = fields[19] if fields is not None else None  # a reused pid is not the command
    before = descendants(command)  # what the command ran before the reaper: not the reaper's
    snapshot: dict[int, str] = {}
    while True:
        readable, _, _ = select.select([sys.stdin], [], [], 0.5)
        if readable:
            if sys.stdin.buffer.readline() == b"done\n":
                return  # a goodbye: the command ended its processes itself
            break  # the pipe closed without one: the command died
        if not alive(command, started):
            break
        scan = {p: s for p, s in descendants(command).items() if p != me and before.get(p) != s}
        if not alive(command, started):
            snapshot.update(scan)  # the command died during the scan: keep what it had
            break
        snapshot = scan
    end(snapshot)


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
