"""The channel from a running task back to the client process (progress, metrics, warnings).

The executor attaches a queue in each worker (``attach``) and reads it on the client side; task code
puts small picklable events on ``worker_queue()`` (see ``bench.tracking.QueueHook`` for their form).
Called in-process, with nothing attached, ``worker_queue()`` is None and tasks send no events.
"""
from __future__ import annotations

_queue = None


def attach(queue) -> None:
    """Make ``queue`` (anything with ``put``) this process's channel to the client."""
    global _queue
    _queue = queue


def worker_queue():
    """The channel attached in this process, or None."""
    return _queue
