"""Where tasks run: the seam under the suite runner (and, later, the tuner and other executors).

``ProcessExecutor(workers)`` keeps ``workers`` spawned processes, each running one task at a time;
``submit(fn, *args)`` returns a ``concurrent.futures.Future`` of ``fn(*args)``, and ``events()``
yields what the tasks sent back through ``bench.events`` (without blocking). Each worker imports the
user's plugins (``bench.plugins``) once. Unlike
``ProcessPoolExecutor``, a worker that dies (a crash, the OOM killer, a kill) fails only the future
of the task it was running (``WorkerDied``) and is replaced; the other workers and their tasks go on.

Workers ignore SIGINT: Ctrl-C reaches the client process, which decides what to stop
(``shutdown(kill=True)``). A worker whose client died (a SIGKILL) exits at its task's next training
step (``ParentWatch``, attached as the task's watch through ``bench.events``).
"""
from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
import traceback
from concurrent.futures import Future
from multiprocessing.connection import wait
from typing import Callable

from bench.hooks import Hooks

_POLL_S = 0.1


class WorkerDied(RuntimeError):
    """The process running a task ended before returning its result."""


class TaskError(RuntimeError):
    """A task raised; the message holds the worker's traceback."""


class ParentWatch(Hooks):
    """Ends an orphaned worker (its client was killed) instead of letting it finish a cell."""

    def __init__(self):
        self.parent = os.getppid()

    def on_step(self, step: int) -> None:
        if os.getppid() != self.parent:
            os._exit(3)


def _worker_main(conn, events) -> None:
    from bench import events as channel
    from bench.plugins import load_plugins

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel.attach(events, watch=ParentWatch)
    load_plugins()
    while True:
        try:
            message = conn.recv()
        except EOFError:  # the client is gone
            return
        if message is None:
            return
        fn, args = message
        try:
            reply = ("ok", fn(*args))
        except BaseException as err:  # noqa: BLE001 - reported to the client, the worker goes on
            reply = ("error", f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
        conn.send(reply)


class _Worker:
    def __init__(self, context, events):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, events), daemon=True)
        self.process.start()
        child.close()
        self.future: Future | None = None


class ProcessExecutor:
    """See the module docstring."""

    def __init__(self, workers: int):
        if workers < 1:
            raise ValueError(f"workers must be >= 1; got {workers}")
        self._context = multiprocessing.get_context("spawn")
        self._events = self._context.Queue()
        self._workers = [_Worker(self._context, self._events) for _ in range(workers)]
        self._pending: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dispatch, name="sqvae-bench-executor", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable, *args, key: str | None = None) -> Future:
        """Run ``fn(*args)`` on the next free worker (``fn`` and ``args`` must pickle). ``key`` names
        the task for executors that show names (Dask); here it is unused."""
        if self._stop.is_set():
            raise RuntimeError("the executor is shut down")
        future: Future = Future()
        self._pending.put((future, fn, args))
        return future

    def events(self):
        """The events the tasks have sent so far (non-blocking; none once shut down)."""
        while True:
            try:
                yield self._events.get_nowait()
            except (queue.Empty, EOFError, OSError, ValueError):
                return

    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    # -- the dispatcher thread ---------------------------------------------------------------
    def _dispatch(self) -> None:
        while not self._stop.is_set():
            self._assign()
            busy = [w for w in self._workers if w.future is not None]
            ready = wait([w.conn for w in busy] + [w.process.sentinel for w in busy], timeout=_POLL_S) if busy else []
            for worker in busy:
                if worker.conn in ready:
                    self._collect(worker)
                elif worker.process.sentinel in ready:
                    self._replace(worker)

    def _assign(self) -> None:
        for worker in self._workers:
            if worker.future is not None:
                continue
            try:
                future, fn, args = self._pending.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue
            worker.future = future
            try:
                worker.conn.send((fn, args))
            except (OSError, ValueError) as err:  # the worker died before its task reached it
                future.set_exception(WorkerDied(f"could not hand the task to worker pid {worker.process.pid}: {err}"))
                worker.future = None
                self._restart(worker)

    def _collect(self, worker: _Worker) -> None:
        future, worker.future = worker.future, None
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError):
            worker.future = future
            self._replace(worker)
            return
        if kind == "ok":
            future.set_result(value)
        else:
            future.set_exception(TaskError(value))

    def _replace(self, worker: _Worker) -> None:
        worker.process.join(timeout=1)
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        if worker.future is not None:
            worker.future.set_exception(WorkerDied(f"worker process pid {worker.process.pid} died ({how})"))
            worker.future = None
        self._restart(worker)

    def _restart(self, worker: _Worker) -> None:
        if self._stop.is_set():
            return
        worker.conn.close()
        fresh = _Worker(self._context, self._events)
        worker.conn, worker.process = fresh.conn, fresh.process

    # -- ending ------------------------------------------------------------------------------
    def shutdown(self, kill: bool = False) -> None:
        """Stop the workers: after their current tasks, or at once (``kill``: SIGTERM, then SIGKILL).
        Futures not started are cancelled; those of killed tasks fail with ``WorkerDied``."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        while True:
            try:
                future, _, _ = self._pending.get_nowait()
            except queue.Empty:
                break
            future.cancel()
        for worker in self._workers:
            if kill:
                worker.process.terminate()
            else:
                try:
                    if worker.future is not None:
                        self._collect(worker)
                    worker.conn.send(None)
                except (OSError, ValueError, EOFError):
                    pass
        for worker in self._workers:
            worker.process.join(timeout=10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            if worker.future is not None and not worker.future.done():
                worker.future.set_exception(WorkerDied(f"worker pid {worker.process.pid} stopped by shutdown"))
            worker.conn.close()

    def close(self) -> None:
        """Release the event queue (after ``shutdown`` and a last read of ``events``)."""
        self._events.close()

    def __enter__(self) -> "ProcessExecutor":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.shutdown(kill=exc_type is not None)
