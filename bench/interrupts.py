"""Ctrl-C and SIGTERM at safe points.

Inside ``deferred()``, SIGINT and SIGTERM only set a flag; the client loops call ``check()`` between
steps, which raises KeyboardInterrupt there. So an interrupt never lands inside an MLflow or
database call (where it would leave a session half-done and a traceback in the log); a second
signal while the first waits raises at once.
"""
from __future__ import annotations

import contextlib
import signal
import threading

_requested = threading.Event()


def _handler(signum, frame) -> None:
    if _requested.is_set():  # asked twice: stop now
        raise KeyboardInterrupt
    _requested.set()


@contextlib.contextmanager
def deferred():
    """SIGINT and SIGTERM set the flag for the body (in the main thread; elsewhere nothing changes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    check()  # asked for after the last check (e.g. while the tables were written): honour it now


def check() -> None:
    """Raise KeyboardInterrupt if an interrupt was asked for since the last check."""
    if _requested.is_set():
        _requested.clear()
        raise KeyboardInterrupt
