"""Ctrl-C during a long command: stop within seconds, leaving only whole batches; a second
Ctrl-C stops at once.

While Dagster executes a run in this process it installs its own SIGINT handler (the run
then fails at its next interruptible point, and the command would go on with the next run),
so a handler of ours cannot see that the user asked to stop. The signal's wakeup file
descriptor receives every signal whichever Python handler is in force: a watcher thread
reads it, records the first Ctrl-C (``stop_requested``) and acts on the second.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for a command stopped by Ctrl-C
FIRST_NOTICE = ("\nCtrl-C: stopping within seconds; batches being loaded are rolled back "
                "(press Ctrl-C again to stop at once).\n")

_requested = threading.Event()
_raised = threading.Event()


def stop_requested() -> bool:
    """True once the user pressed Ctrl-C (during ``stop_on_ctrl_c``)."""
    return _requested.is_set()


@contextmanager
def stop_on_ctrl_c(at_once: Callable[[], None], at_once_message: str) -> Iterator[None]:
    """Within the block, the first Ctrl-C raises KeyboardInterrupt in the main thread (or,
    while Dagster runs a step here, fails that run; see ``stop_requested``); the second
    calls ``at_once`` (kill the workers), prints ``at_once_message`` and ends the process
    with EXIT_INTERRUPTED at once. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _requested.clear()
    _raised.clear()
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    previous_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    previous_handler = signal.signal(signal.SIGINT, _raise_once)
    watcher = threading.Thread(target=_watch, args=(reader, at_once, at_once_message),
                               daemon=True, name="checkpoint-assets-ctrl-c")
    watcher.start()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.set_wakeup_fd(previous_fd)
        writer.close()  # the watcher reads end-of-file and returns
        watcher.join()
        reader.close()


def _raise_once(signum: int, frame: FrameType | None) -> None:
    if not _raised.is_set():
        _raised.set()
        raise KeyboardInterrupt
    # a later Ctrl-C: the watcher thread stops the process


def _watch(reader: socket.socket, at_once: Callable[[], None], message: str) -> None:
    presses = 0
    while data := reader.recv(64):
        for signum in data:
            if signum != signal.SIGINT:
                continue
            presses += 1
            if presses == 1:
                _requested.set()
                _write_stderr(FIRST_NOTICE)
            else:
                at_once()
                _write_stderr(message)
                os._exit(EXIT_INTERRUPTED)


def _write_stderr(text: str) -> None:
    # Straight to the file descriptor: the main thread may hold sys.stderr's lock.
    try:
        os.write(sys.stderr.fileno(), text.encode())
    except (OSError, ValueError):
        pass
