"""How a sweep's jobs run: a pool of local worker processes, or Ray tasks; and how they end.

* :class:`LocalPool`: `workers` spawned processes, each running one job at a time. They die with
  the driver however it ends (a parent-death signal,
  :func:`passk_companion.processes.die_with_parent`);
  one that dies (killed, out of memory) fails only the job it was running, and another takes its
  place.
* :class:`RayRunner`: Ray tasks of the same functions, on a local Ray started on first use (and
  shut down by :meth:`RayRunner.close`, with a :class:`passk_companion.processes.Reaper` that ends
  its processes should the driver be killed outright) or on a cluster at an address.
* :func:`runner` holds one of them for a block: while it runs, SIGTERM, SIGHUP and SIGINT raise
  :class:`Interrupted`, and on the way out the workers are ended and a local Ray stopped, with
  further signals held back until that is done.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from passk_companion.processes import Reaper, descendants, die_with_parent, end

__all__ = ["Interrupted", "LocalPool", "RayRunner", "runner"]

Job = tuple
Outcome = dict


class Interrupted(BaseException):
    """The sweep was ended by a signal (SIGTERM, SIGHUP or Ctrl-C's SIGINT): its workers are
    ended and a local Ray stopped; rerunning the command resumes it."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


def _worker(conn: mpc.Connection, parent: int, gpu: int | None) -> None:
    """A local worker: runs (fn, job) messages one at a time until told to stop (None) or its
    driver goes away. It dies with its driver, and leaves Ctrl-C to the driver."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, job = message
        conn.send(fn(*job))


class LocalPool:
    """`workers` worker processes (spawned, each with one job at a time), started on first use.
    A worker that dies fails only the job it was running; another takes its place."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.slots: list[tuple[mp.process.BaseProcess, mpc.Connection] | None] = []
        self.gpus = 0

    def _start(self, slot: int) -> None:
        ctx = mp.get_context("spawn")
        mine, theirs = ctx.Pipe()
        gpu = slot % self.gpus if self.gpus > 1 else None
        proc = ctx.Process(
            target=_worker, args=(theirs, os.getpid(), gpu), daemon=True, name=f"sweep-{slot}"
        )
        proc.start()
        theirs.close()
        self.slots[slot] = (proc, mine)

    def run(self, fn: Callable[..., Outcome], jobs: list[Job]) -> Iterator[tuple[int, Outcome]]:
        """Yield (index, outcome) as the workers finish fn(*job) for each job."""
        if not self.slots:
            import torch

            self.gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        wanted = min(self.workers, max(len(jobs), 1))
        self.slots += [None] * max(0, wanted - len(self.slots))
        todo = list(enumerate(jobs))[::-1]
        running: dict[int, int] = {}  # slot -> job index
        while todo or running:
            for slot in range(len(self.slots)):
                if slot not in running and todo:
                    if self.slots[slot] is None or not self.slots[slot][0].is_alive():
                        self._start(slot)
                    index, job = todo.pop()
                    self.slots[slot][1].send((fn, job))
                    running[slot] = index
            waiting = {self.slots[s][1]: s for s in running}
            waiting.update({self.slots[s][0].sentinel: s for s in running})
            for ready in mpc.wait(list(waiting)):
                slot = waiting[ready]
                if slot not in running:
                    continue  # both its pipe and its sentinel were ready
                proc, conn = self.slots[slot]
                try:
                    if not conn.poll():
                        raise EOFError
                    outcome = conn.recv()
                except (EOFError, OSError):
                    proc.join(5)
                    code = proc.exitcode
                    how = f"signal {-code}" if code is not None and code < 0 else f"code {code}"
                    outcome = {
                        "status": "failed",
                        "error": f"its worker process died ({how}: killed, or out of memory) "
                        "while running it; the other trials went on",
                    }
                    conn.close()
                    self.slots[slot] = None
                yield running.pop(slot), outcome

    def close(self) -> None:
        """Stop every worker: ask, then SIGTERM, then SIGKILL; wait for each."""
        alive = [s for s in self.slots if s is not None]
        for _, conn in alive:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        for proc, conn in alive:
            proc.join(2)
            if proc.is_alive():
                proc.terminate()
                proc.join(3)
            if proc.is_alive():
                proc.kill()
                proc.join(3)
            conn.close()
        self.slots = []


RAY_START_TRIES = 2  # a loaded machine can miss Ray's start-up deadline once


def _start_local_ray(ray: Any, workers: int, kwargs: dict[str, Any]) -> None:
    """ray.init of a local Ray with `workers` CPUs, tried RAY_START_TRIES times: a start that
    fails (on a busy machine the raylet can miss the GCS's deadline) is shut down, reported in
    one line on stderr, and tried again; the last failure is a ValueError of one line."""
    for attempt in range(1, RAY_START_TRIES + 1):
        try:
            ray.init(num_cpus=workers, **kwargs)
            return
        except Exception as err:  # noqa: BLE001 - Ray raises several types for a failed start
            reason = " ".join(str(err).split())[:300]
            ray.shutdown()
            if attempt == RAY_START_TRIES:
                raise ValueError(
                    f"a local Ray did not start in {RAY_START_TRIES} tries ({reason}); "
                    "is the machine overloaded? rerun the command, or use --backend local"
                ) from None
            print(f"a local Ray did not start ({reason}); trying once more", file=sys.stderr,
                  flush=True)  # fmt: skip


class RayRunner:
    """Ray tasks of the same functions: a local Ray with `workers` CPUs started on first use
    (and stopped by close()), unless an address is given or Ray is already initialised."""

    def __init__(self, workers: int, address: str | None, gpus_per_trial: float | None) -> None:
        self.workers, self.gpus_per_trial = workers, gpus_per_trial
        self.address = address or os.environ.get("RAY_ADDRESS")
        self.ray: Any = None
        self.started = False
        self.reaper: Reaper | None = None
        self.before: dict[int, str] = {}  # this process's children before Ray started

    def _init(self) -> Any:
        try:
            import ray
        except ImportError as err:
            raise ValueError(f"the ray backend needs ray installed ({err})") from None
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            self.started = True  # set first: a signal during init still shuts it down
            # Ray's core worker installs native handlers (which abort): put ours back after
            with _signals_deferred(), _keep_signal_handlers():
                if self.address:
                    ray.init(address=self.address, **kwargs)
                else:
                    self.before = descendants(os.getpid())
                    self.reaper = Reaper().start()  # should this process be SIGKILLed
                    _start_local_ray(ray, self.workers, kwargs)
        self.ray = ray
        return ray

    def run(self, fn: Callable[..., Outcome], jobs: list[Job]) -> Iterator[tuple[int, Outcome]]:
        """Yield (index, outcome) as Ray tasks of fn(*job) finish."""
        ray = self.ray or self._init()
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0}
        if self.gpus_per_trial:
            options["num_gpus"] = self.gpus_per_trial
        remote = ray.remote(**options)(fn)
        pending = {remote.remote(*job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                with _signals_deferred():  # returns within a second to let a signal through
                    ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
                for ref in ready:
                    i = pending.pop(ref)
                    try:
                        with _signals_deferred():
                            outcome = ray.get(ref)
                    except Exception as err:  # noqa: BLE001 - a task whose worker died
                        outcome = {"status": "failed", "error": f"ray task failed: {err!r}"}
                    yield i, outcome
        finally:
            for ref in pending:  # interrupted: cancel what is left
                with contextlib.suppress(Exception):
                    ray.cancel(ref, force=True)

    def close(self) -> None:
        """Shut down the local Ray started here, then end any of its processes still running
        (its agents outlive its raylet for a minute); only disconnect from a cluster."""
        if self.started:
            with contextlib.suppress(Exception):
                import ray

                ray.shutdown()
        if self.reaper is not None:
            mine = {self.reaper.proc.pid} if self.reaper.proc else set()
            left = {
                pid: start
                for pid, start in descendants(os.getpid()).items()
                if self.before.get(pid) != start and pid not in mine
            }
            end(left)
            self.reaper.stop()
            self.reaper = None
        self.started = False


@contextlib.contextmanager
def _keep_signal_handlers() -> Iterator[None]:
    """Put back, after the block, the Python handlers of SIGTERM, SIGHUP and SIGINT that were in
    place before it (a library that installs native handlers replaces them)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, handler in before.items():
            if handler is not None:
                signal.signal(s, handler)


_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_deferred: list[int] | None = None  # signals received while a native call runs (see below)


def _interrupt(signum: int, frame: Any) -> None:
    """The sweep's handler of SIGTERM, SIGHUP and SIGINT: raise Interrupted, or, inside
    :func:`_signals_deferred`, note the signal for when the native call returns."""
    if _deferred is not None:
        _deferred.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Around a native call that must not see a Python exception raised inside it (Ray's core
    worker turns one into a SystemError): signals wait until the call returns, then raise."""
    global _deferred
    outer, _deferred = _deferred, [] if _deferred is None else _deferred
    try:
        yield
    finally:
        pending, _deferred = _deferred, outer
    if outer is None and pending:
        raise Interrupted(pending[0])


@contextlib.contextmanager
def _signals_interrupt() -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM, SIGHUP and SIGINT raise
    :class:`Interrupted`, so that the finally blocks end the workers and a local Ray."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _interrupt) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def runner(
    backend: str, workers: int, address: str | None, gpus_per_trial: float | None
) -> Iterator[LocalPool | RayRunner]:
    runner: LocalPool | RayRunner
    if backend == "local":
        runner = LocalPool(workers)
    else:
        runner = RayRunner(workers, address, gpus_per_trial)
    try:
        with _signals_interrupt():
            yield runner
    finally:
        # a second signal while stopping must not leave workers or Ray behind
        with _signals_blocked():
            runner.close()


@contextlib.contextmanager
def _signals_blocked() -> Iterator[None]:
    """Hold SIGTERM, SIGHUP and SIGINT back while the block runs (stopping the workers)."""
    sigs = set(_SIGNALS)
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
