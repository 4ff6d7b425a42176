"""How many processes load or compare batches at once, and the pool they run in.

Worker processes never outlive the command that started them: a worker ends when its parent
dies, however it dies (SIGKILL included), and a Ctrl-C stops the workers within seconds
(a batch being loaded rolls back with its connection), so no process is left idle behind.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from functools import partial
from multiprocessing.synchronize import Event
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # a type only: the core imports no capability package
    from checkpoint_assets.engine.export.file_format import ExportManifest

# A worker process takes a second or two to start; below this many batches it does not pay.
PARALLEL_MIN_BATCHES = 10


def workers_for(manifest: ExportManifest, configured: int | None = None) -> int:
    """Processes for importing or verifying ``manifest``: ``configured`` if set (the
    caller's setting; None or 0: not set), else the default for a multi-core machine once
    the export is big enough to gain."""
    if configured:
        return max(1, configured)
    return default_workers() if len(manifest.batches) >= PARALLEL_MIN_BATCHES else 1


def default_workers() -> int:
    """Batch loaders to run at once: one per core, at most two.

    Each loader spends about two thirds of its time in Python (parsing, converting) and the
    rest waiting for PostgreSQL, so two processes on two cores keep both busy; more only
    queue up behind each other and the server.
    """
    return max(1, min(2, os.cpu_count() or 1))


# After a Ctrl-C, workers get this long to finish what they are doing before they are killed.
STOP_GRACE_SECONDS = 10.0
# How often a worker checks that its parent still exists (where the kernel cannot tell it).
PARENT_POLL_SECONDS = 1.0
_PR_SET_PDEATHSIG = 1  # linux/prctl.h

_live_pools: set[ProcessPoolExecutor] = set()  # this process's pools, for kill_workers()
_stop_event: Event | None = None  # in a worker: set by the parent when workers must stop


class WorkerPool:
    """A spawn process pool whose workers check, before each call, that the parent has not
    asked them to stop."""

    def __init__(self, executor: ProcessPoolExecutor, stop: Event) -> None:
        self.executor = executor
        self.stop = stop

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """``fn(*args, **kwargs)`` in a worker."""
        with _ctrl_c_held():  # submit may start a worker
            return self.executor.submit(_unless_stopped, fn, *args, **kwargs)

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any]) -> Iterator[Any]:
        """``fn`` over ``iterables`` in the workers, results in order."""
        with _ctrl_c_held():
            return self.executor.map(partial(_unless_stopped, fn), *iterables)


@contextmanager
def process_pool(workers: int) -> Iterator[WorkerPool]:
    """A pool of ``workers`` processes started with spawn: clean interpreters that inherit
    no lock held by another thread at fork time (Dagster's, psycopg's).

    Leaving the block normally waits for the submitted work. Leaving it by an exception
    (KeyboardInterrupt from a Ctrl-C among them) stops the workers: no new call starts,
    running ones are interrupted, and whatever still runs after STOP_GRACE_SECONDS is
    killed; a worker's open transaction rolls back with its connection.
    """
    context = multiprocessing.get_context("spawn")
    with _ctrl_c_held():  # may start multiprocessing's resource tracker
        stop = context.Event()
        executor = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                       initializer=_start_worker,
                                       initargs=(os.getpid(), stop))
    _live_pools.add(executor)
    try:
        yield WorkerPool(executor, stop)
    except BaseException:
        _stop_workers(executor, stop)
        raise
    else:
        executor.shutdown(wait=True)
    finally:
        _live_pools.discard(executor)


def kill_workers() -> None:
    """Kill every worker of this process's pools at once (a second Ctrl-C)."""
    for executor in list(_live_pools):
        for process in _processes(executor):
            process.kill()


def _stop_workers(executor: ProcessPoolExecutor, stop: Event) -> None:
    stop.set()
    processes = _processes(executor)
    executor.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive() and process.pid is not None:
            # Interrupts a Dagster run in the worker at once (it records the run as
            # failed); plain batch loads ignore it and finish their batch.
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()
    executor.shutdown(wait=True)  # the executor's own thread ends once its workers are gone


def _processes(executor: ProcessPoolExecutor) -> list[Any]:
    # ProcessPoolExecutor has no public way to reach its worker processes.
    return list((executor._processes or {}).values())  # noqa: SLF001


@contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """Hold SIGINT back from this thread while it starts processes: they inherit the blocked
    signal, so a Ctrl-C cannot kill a new interpreter half-way through its start (with a
    "Fatal Python error" on the terminal). A Ctrl-C meanwhile is delivered afterwards."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _start_worker(parent_pid: int, stop: Event) -> None:
    """Initializer of every worker: end with the parent, leave Ctrl-C to the parent."""
    global _stop_event
    _stop_event = stop
    # A terminal's Ctrl-C reaches the whole process group; the parent decides what stops
    # (Dagster still turns it into an interrupt while it runs a step in this worker).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # see _ctrl_c_held
    _die_with_parent(parent_pid)


def _die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (its parent) ends: at once on Linux (the
    kernel sends SIGKILL), within PARENT_POLL_SECONDS elsewhere (a watchdog thread)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass  # no prctl: the watchdog below still ends this process
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                     name="checkpoint-assets-parent-watchdog").start()


def _watch_parent(parent_pid: int) -> None:
    while True:
        time.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent_pid:
            os._exit(1)


def _unless_stopped(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    if _stop_event is not None and _stop_event.is_set():
        raise KeyboardInterrupt  # the parent stopped the pool; it no longer reads results
    return fn(*args, **kwargs)
