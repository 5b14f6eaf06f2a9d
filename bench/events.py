"""The channel from a running task back to the client process (progress, metrics, warnings).

The executor attaches a queue in each worker (``attach``) and reads it on the client side; task code
puts small picklable events on ``worker_queue()`` (see ``bench.tracking.QueueHook`` for their form).
Called in-process, with nothing attached, ``worker_queue()`` is None and tasks send no events.

The executor also says how a task notices that its client no longer wants it (``watch``): a process
pool's worker exits when its parent dies (``bench.executor.ParentWatch``); a Dask task stops when its
future is cancelled or its client is gone (``bench.dask_executor.CancelWatch``). Each is a trainer
hook made in the task (``watch_hooks``); in-process, there is none.
"""
from __future__ import annotations

from typing import Callable

_queue = None
_watch: Callable | None = None


def attach(queue, watch: Callable | None = None) -> None:
    """Make ``queue`` (anything with ``put``) this process's channel to the client, and ``watch()``
    (a ``bench.hooks.Hooks`` factory, or None) the hook that stops a task its client abandoned."""
    global _queue, _watch
    _queue, _watch = queue, watch


def worker_queue():
    """The channel attached in this process, or None."""
    return _queue


def watch_hooks() -> list:
    """The executor's watch as a fresh hook for the task being started (an empty list in-process)."""
    return [_watch()] if _watch is not None else []
