"""passk_companion.processes: the reaper ends what a SIGKILLed command left, even when the kill
lands while it scans /proc."""

import os
import signal
import subprocess
import sys
import textwrap
import time

from passk_companion import processes

WATCHER = textwrap.dedent(
    """
    import os, sys, time
    from passk_companion import processes
    real, armed = processes.descendants, sys.argv[2]

    def slow(root):
        if os.path.exists(armed):
            time.sleep(1.0)  # the kill of the command lands inside this scan
        return real(root)

    processes.descendants = slow
    processes._watch(int(sys.argv[1]))
    """
)


def test_a_kill_during_a_scan_keeps_the_last_snapshot(tmp_path):
    command = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import subprocess, time; time.sleep(2); "
            "subprocess.Popen(['sleep', '300']); time.sleep(300)",
        ]  # fmt: skip
    )  # the child starts after the watcher: it is the watcher's to end
    armed = tmp_path / "armed"
    watcher = subprocess.Popen(
        [sys.executable, "-c", WATCHER, str(command.pid), str(armed)], stdin=subprocess.PIPE
    )
    child = None
    try:
        deadline = time.monotonic() + 20
        while not processes.descendants(command.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        (child,) = processes.descendants(command.pid).items()
        time.sleep(1.5)  # the watcher has taken a snapshot with the child in it
        armed.touch()
        time.sleep(0.8)  # the next scan is under way
        os.kill(command.pid, signal.SIGKILL)
        command.wait()
        watcher.wait(20)
        assert not processes.alive(*child), "the command's child survived the reaper"
    finally:
        for proc in (command, watcher):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if child is not None and processes.alive(*child):
            os.kill(child[0], signal.SIGKILL)
