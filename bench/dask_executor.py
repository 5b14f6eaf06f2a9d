"""Cells and trials as Dask tasks: the executor seam of ``bench.executor`` over dask.distributed.

``DaskCluster`` is the client side of one invocation. It connects to a running scheduler
(``--scheduler ADDRESS``) or starts a ``LocalCluster`` of worker processes (``--dask-workers N``: one
thread each, on 127.0.0.1) and closes what it started. Called as ``cluster(workers)`` it makes a
``DaskExecutor``, so it is what ``RunOptions.executor`` and ``TuneOptions.executor`` take.

- **Tasks.** ``submit(fn, *args, key=...)`` runs ``fn`` under the Dask key ``<key>#<session>.<n>``: the
  cell id or trial key, made unique per submission, so Dask never merges two submissions (no
  ``pure=True`` deduplication: a resubmitted cell, or a second invocation on the same cluster, gets
  keys of its own). The Dask future becomes a ``concurrent.futures.Future``, so the suite runner and
  the tuner do not know Dask is there.
- **Events.** A task logs its events under this executor's topic (``Worker.log_event``); the client's
  subscription puts them on a local queue that ``events()`` drains. The client alone writes MLflow.
- **Faults.** When a worker dies in the middle of a task, the scheduler runs the task again on another
  worker, up to its ``distributed.scheduler.allowed-failures`` (default 3); a cell resumes from its
  checkpoint (``execute_cell`` resumes from its folder). After that the future fails with
  ``WorkerDied`` carrying Dask's KilledWorker text: that cell fails with its reason, the others go on.
- **Stopping.** Dask cannot interrupt a running task, so a task watches its own state
  (``CancelWatch``): cancelled by ``shutdown(kill=True)`` (Ctrl-C), or released because its client
  died, it stops at its next training step.
- **GPUs.** Workers that advertise the resource ``GPU`` (one worker per GPU: ``dask worker
  --resources GPU=1`` under ``CUDA_VISIBLE_DEVICES``, or dask-cuda's ``LocalCUDACluster``) get tasks
  that each ask for a 1/K share of it (``cells_per_gpu`` K, default 1), so K cells share one GPU; a
  task runs on the GPU its worker sees. Workers without that resource run tasks by threads.
- **A shared folder.** ``check_shared(folder)``: every worker reads a probe the client wrote into the
  folder and writes one the client reads; a worker that cannot is a ``ConfigError`` before anything
  runs. Each task checks the client's probe again before it starts (workers may join later).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import socket
import threading
import time
import traceback
import uuid
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from bench import events
from bench.errors import ConfigError
from bench.executor import TaskError, WorkerDied
from bench.hooks import Hooks
from bench.plugins import load_plugins

GPU = "GPU"  # the worker resource a GPU task asks for
PROBES = ".dask-probes"  # probe files in a shared folder (client-<token>, worker-<token>-<host>-<pid>)
CONNECT_S = 10  # seconds to reach a scheduler
WORKER_WAIT_S = 120  # seconds to wait for the first worker (a batch system may be slow to start one)
PROBE_WAIT_S = 10  # seconds for a worker's probe to show up on the client (network filesystems cache lookups)
WATCH_EVERY_S = 0.5  # how often a task checks that it is still wanted
# Dask's nannies set this in their workers; any value turns off glibc's adaptive mmap threshold, and
# CPU training then runs ~1.5x slower (one smoke cell: 25.8 s against 17.8 s). Not set in our LocalCluster.
MALLOC_TRIM = "MALLOC_TRIM_THRESHOLD_"
INSTALL = "pip install -e '.[dask]' (dask[distributed])"


class TaskCancelled(RuntimeError):
    """A Dask task stopped because its client cancelled it or is gone."""


def require_dask() -> None:
    """Raise ConfigError unless dask.distributed can be imported."""
    try:
        import distributed  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"--executor dask needs dask.distributed, which is not installed ({err}): {INSTALL}") from None


# -- the worker side ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Channel:
    """The event channel of one executor, as a task sees it: ``put`` logs to the executor's topic."""

    topic: str

    def put(self, event: tuple) -> None:
        from distributed import get_worker

        get_worker().log_event(self.topic, event)


class CancelWatch(Hooks):
    """Stops a task that its client cancelled or abandoned (the worker no longer wants its result),
    at a training step: Dask cannot interrupt a running thread."""

    def __init__(self):
        from distributed import get_worker

        self.worker = get_worker()
        self.key = self.worker.get_current_task()
        self._next = 0.0

    def on_step(self, step: int) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + WATCH_EVERY_S
        task = self.worker.state.tasks.get(self.key)
        if task is None or task.state not in ("executing", "long-running"):
            raise TaskCancelled(f"the client cancelled this task or is gone (at step {step}); run the same "
                                "command again to resume from its checkpoint")


def _run_with_events(channel: _Channel, markers: tuple[str, ...], fn: Callable, *args):
    """A task on a worker: check the shared folder, attach the event channel and the watch, import the
    plugins, run ``fn(*args)``."""
    for marker in markers:
        if not os.path.exists(marker):
            raise ConfigError(f"this Dask worker (host {socket.gethostname()}, cwd {os.getcwd()}) does not see "
                              f"{marker}, which the client wrote into its output folder: the folder must be on a "
                              "filesystem every worker mounts at the same path")
    events.attach(channel, watch=CancelWatch)
    load_plugins()
    return fn(*args)


def _probe(folder: str, token: str) -> dict:
    """Run on each worker by ``probe_folder``: read the client's probe in ``folder``; write one back
    (only where the probe folder exists: never create folders that the client does not see)."""
    probes = Path(folder) / PROBES
    answer = {"host": socket.gethostname(), "where": str(Path(folder).absolute()), "read": False, "wrote": None,
              "malloc_trim": MALLOC_TRIM in os.environ}
    for _ in range(4):  # a network filesystem may show a new file a moment late
        answer["read"] = _holds(probes / f"client-{token}", token)
        if answer["read"]:
            break
        time.sleep(0.5)
    if probes.is_dir():
        name = f"worker-{token}-{answer['host']}-{os.getpid()}"
        try:
            (probes / name).write_text(token)
            answer["wrote"] = name
        except OSError:
            pass
    return answer


# -- the client side: pure parts ------------------------------------------------------------------
def task_resources(advertised: list[dict], device: str, cells_per_gpu: int | None) -> dict | None:
    """What each task asks of a worker: a 1/K share of a GPU (K = ``cells_per_gpu``, default 1) when
    some worker advertises the resource GPU and cells may run on GPUs (``device`` not "cpu"); else None.

    advertised: the resources of each worker (``{"GPU": 1}``, ``{}``, ...).
    Raises: ConfigError if K is given for GPU cells but no worker advertises a GPU.
    """
    if device == "cpu":
        return None  # nothing is shared on the CPU, as with the local pool
    if not any(r.get(GPU, 0) > 0 for r in advertised):
        if cells_per_gpu is None:
            return None
        raise ConfigError(f"--cells-per-gpu {cells_per_gpu}: no Dask worker advertises the resource {GPU}; start "
                          "one worker per GPU with `--resources GPU=1` (or LocalCUDACluster(resources={'GPU': 1}))")
    share = 1.0 / (cells_per_gpu or 1)
    # K shares must fit in 1.0 after K float subtractions on the worker: shave a billionth off
    return {GPU: share if share == 1.0 else share * (1 - 1e-9)}


def task_slots(workers: list[dict], resources: dict | None) -> int:
    """How many tasks ``workers`` run at once (at least 1): per worker its threads, fewer where its
    share of a resource runs out. ``workers``: dicts with "nthreads" and "resources"."""
    total = 0
    for worker in workers:
        slots = worker["nthreads"]
        for name, need in (resources or {}).items():
            slots = min(slots, int(worker.get("resources", {}).get(name, 0) / need))
        total += slots
    return max(total, 1)


def task_key(key: str, session: str, number: int) -> str:
    """The Dask key of a submission: the cell id or trial key, this session and a running number."""
    return f"{key}#{session}.{number}"


def _holds(path: Path, token: str) -> bool:
    """True when ``path`` can be read and holds ``token``."""
    try:
        return path.read_text() == token
    except OSError:
        return False


def blind_workers(answers: dict[str, dict], probes: Path, token: str, wait_s: float = PROBE_WAIT_S) -> dict[str, str]:
    """The workers that did not see the client's probe, or whose probe the client does not see
    (waiting up to ``wait_s``), each with why."""
    blind = {address: f"looked in {a['where']} on host {a['host']} and did not find the probe this process wrote"
             for address, a in answers.items() if not a["read"]}
    waiting = {address: a for address, a in answers.items() if a["read"]}
    deadline = time.monotonic() + wait_s
    while waiting:
        for address, answer in list(waiting.items()):
            if answer["wrote"] and _holds(probes / answer["wrote"], token):
                waiting.pop(address)
        if not waiting or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for address, answer in waiting.items():
        blind[address] = f"wrote a probe into {answer['where']} on host {answer['host']} that this process does not see"
    return blind


def probe_folder(client, folder: Path, option: str = "--output") -> tuple[Path, int]:
    """Check that every worker of ``client`` sees ``folder`` as this process does (a probe each way).

    Returns: the client's probe file, kept while tasks run (they check it before they start), and how
        many workers run with ``MALLOC_TRIM``.
    Raises: ConfigError naming the workers that do not see the folder, and why.
    """
    token = uuid.uuid4().hex
    probes = folder / PROBES
    probes.mkdir(parents=True, exist_ok=True)
    marker = probes / f"client-{token}"
    marker.write_text(token)
    answers = client.run(_probe, str(folder), token)
    blind = blind_workers(answers, probes, token)
    trimmed = sum(a.get("malloc_trim", False) for a in answers.values())
    for answer in answers.values():
        if answer["wrote"]:
            (probes / answer["wrote"]).unlink(missing_ok=True)
    if blind:
        marker.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            probes.rmdir()  # nothing of this invocation stays behind (unless other probes are there)
        where = "; ".join(f"{address} {why}" for address, why in sorted(blind.items()))
        raise ConfigError(f"{option} {folder}: {len(blind)} of {len(answers)} Dask worker(s) do not see this folder "
                          f"({folder.absolute()} here): {where}. It must be on a filesystem every worker mounts at "
                          "the same path; give it as an absolute path")
    return marker, trimmed


# -- the executor -----------------------------------------------------------------------------------
class DaskExecutor:
    """Tasks on a Dask cluster behind the interface of ``bench.executor.ProcessExecutor``; see the
    module docstring. ``client``: a connected ``distributed.Client``; ``resources``: what each task asks
    of its worker; ``markers``: files every task checks before it starts (``probe_folder``)."""

    def __init__(self, client, resources: dict | None = None, markers: tuple[str, ...] = ()):
        self.client, self.resources, self.markers = client, resources, tuple(markers)
        self.session = uuid.uuid4().hex[:8]
        self.topic = f"sqvae-bench-events-{self.session}"
        self._events: queue.Queue = queue.Queue()
        self._tasks: dict[str, tuple[object, Future]] = {}  # Dask key -> (Dask future, our future)
        self._numbers: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stopped = False
        client.subscribe_topic(self.topic, lambda event: self._events.put(tuple(event[1])))

    def submit(self, fn: Callable, *args, key: str | None = None) -> Future:
        """Run ``fn(*args)`` as a Dask task named after ``key`` (the cell id or trial key)."""
        name = key or getattr(fn, "__name__", "task")
        with self._lock:
            if self._stopped:
                raise RuntimeError("the executor is shut down")
            self._numbers[name] = number = self._numbers.get(name, 0) + 1
        dask_key = task_key(name, self.session, number)
        future: Future = Future()
        task = self.client.submit(_run_with_events, _Channel(self.topic), self.markers, fn, *args, key=dask_key,
                                  pure=False, resources=self.resources)
        with self._lock:
            self._tasks[dask_key] = (task, future)
        task.add_done_callback(partial(self._settle, dask_key))
        return future

    def _settle(self, dask_key: str, task) -> None:
        """Pass a finished Dask task's outcome to our future (in a thread of Dask's callback pool)."""
        with self._lock:
            _, future = self._tasks.pop(dask_key, (None, None))
        if future is None or future.done():
            return
        try:
            outcome = _outcome(task)
        finally:
            task.release()
        try:
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        except InvalidStateError:  # cancelled by shutdown meanwhile
            pass

    def events(self):
        """The events the tasks have sent so far (non-blocking)."""
        while True:
            try:
                yield self._events.get_nowait()
            except queue.Empty:
                return

    def shutdown(self, kill: bool = False) -> None:
        """Stop: cancel the tasks not started; those running finish (or, ``kill``, are cancelled too and
        stop at their next training step). Our futures of cancelled tasks are cancelled."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        running = set() if kill or not self._tasks else {k for keys in self.client.processing().values() for k in keys}
        with self._lock:
            open_tasks = dict(self._tasks)
            stop = [k for k in open_tasks if k not in running]
            for k in stop:  # ours first, so that the Dask cancellation does not settle them as failed
                self._tasks.pop(k)
                open_tasks[k][1].cancel()
        if stop:
            self.client.cancel([open_tasks[k][0] for k in stop], force=True)
        if running:
            from distributed import wait

            wait([task for k, (task, _) in open_tasks.items() if k in running])

    def close(self) -> None:
        """Stop listening to the tasks' events (after ``shutdown`` and a last read of ``events``)."""
        try:
            self.client.unsubscribe_topic(self.topic)
        except ValueError:
            pass

    def __enter__(self) -> "DaskExecutor":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.shutdown(kill=exc_type is not None)


def _outcome(task):
    """A finished Dask task's result, or the exception our future gets: ``WorkerDied`` when workers
    died under it (KilledWorker) or Dask cancelled it, ``TaskError`` (with the traceback) when it raised."""
    from distributed import KilledWorker

    if task.status == "cancelled":
        return WorkerDied(f"Dask cancelled task {task.key} (its scheduler went away or restarted)")
    try:
        return task.result()
    except KilledWorker as err:
        return WorkerDied(f"KilledWorker: {err}")
    except Exception as err:  # noqa: BLE001 - the task's own error, reported with its traceback
        where = "".join(traceback.format_tb(task.traceback())) if task.traceback() is not None else ""
        return TaskError(f"{type(err).__name__}: {err}\n{where}")


# -- the cluster of one invocation --------------------------------------------------------------------
class DaskCluster:
    """A Dask client for one invocation: ``scheduler`` (an address) or ``workers`` (a LocalCluster of
    that many one-thread processes on 127.0.0.1, closed at the end), never both. Use as a context
    manager; ``cluster(workers)`` makes a ``DaskExecutor`` (``workers`` is unused: the cluster decides).

    device, cells_per_gpu: as ``task_resources``.
    """

    places_devices = True  # bench.scheduler.device_slots: tasks go to GPUs by worker resources

    def __init__(self, scheduler: str | None = None, workers: int | None = None, device: str = "auto",
                 cells_per_gpu: int | None = None):
        require_dask()
        if (scheduler is None) == (workers is None):
            raise ConfigError("--executor dask needs --scheduler ADDRESS (a running cluster) or --dask-workers N "
                              "(a local cluster for this run), not both")
        if workers is not None and workers < 1:
            raise ConfigError(f"--dask-workers must be >= 1; got {workers}")
        self.address, self.n_workers, self.device, self.cells_per_gpu = scheduler, workers, device, cells_per_gpu
        self.client = None
        self.resources: dict | None = None
        self.markers: list[Path] = []
        self.trimmed = 0  # workers seen running with MALLOC_TRIM (check_shared)
        self._local = None

    def __enter__(self) -> "DaskCluster":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open(self) -> None:
        """Start or reach the cluster, wait for a worker, decide what each task asks of its worker."""
        from distributed import Client

        address = self.address
        if self.n_workers is not None:
            address = self._start_local()
        try:
            self.client = Client(address, timeout=CONNECT_S, set_as_default=False)
        except (OSError, TimeoutError) as err:
            raise ConfigError(f"--scheduler {address}: no Dask scheduler answered within {CONNECT_S} s "
                              f"({type(err).__name__}: {err})") from None
        try:
            self.client.wait_for_workers(1, timeout=WORKER_WAIT_S)
        except (TimeoutError, asyncio.TimeoutError):
            raise ConfigError(f"--scheduler {address}: no Dask worker joined within {WORKER_WAIT_S} s; start some "
                              f"(`dask worker {address}`)") from None
        self.resources = task_resources([w.get("resources", {}) for w in self.workers()], self.device,
                                        self.cells_per_gpu)

    def _start_local(self) -> str:
        import dask
        from distributed import LocalCluster

        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{MALLOC_TRIM}": None}):  # see MALLOC_TRIM
            self._local = LocalCluster(n_workers=self.n_workers, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=":0")
        return self._local.scheduler_address

    def _info(self, n_workers: int = -1) -> dict:
        """The scheduler's info with ``n_workers`` workers listed (-1: all; the parameter and a default
        of 5 came with distributed 2025.4, before which every worker is listed)."""
        try:
            return self.client.scheduler_info(n_workers=n_workers)
        except TypeError:
            return self.client.scheduler_info()

    def workers(self) -> list[dict]:
        """The scheduler's record of each worker ("nthreads", "resources", ...)."""
        return list(self._info()["workers"].values())

    def slots(self) -> int:
        """How many tasks the cluster runs at once now (``task_slots``)."""
        return task_slots(self.workers(), self.resources)

    def describe(self) -> str:
        """One line: where the cluster is, its workers and slots, its dashboard."""
        workers = self.workers()
        line = (f"Dask: {self.client.scheduler.address}, {len(workers)} worker(s), {self.slots()} task slot(s)"
                + (f", {self.resources[GPU]:.3g} GPU per task" if self.resources else ""))
        link = self.client.dashboard_link if self._has_dashboard() else None
        note = (f"\nDask: note: {self.trimmed} worker(s) run with {MALLOC_TRIM} set (Dask's nanny default), which "
                "slows CPU training ~1.5x; see README, Running on a cluster") if self.trimmed else ""
        return line + (f"; dashboard {link}" if link else "") + note

    def _has_dashboard(self) -> bool:
        try:
            return "dashboard" in self._info(0).get("services", {})
        except Exception:  # noqa: BLE001 - the line is only information
            return False

    def check_shared(self, folder: Path, option: str = "--output") -> None:
        """Raise ConfigError unless every worker sees ``folder`` (``probe_folder``); creates it."""
        marker, self.trimmed = probe_folder(self.client, Path(folder), option)
        self.markers.append(marker)

    def __call__(self, workers: int) -> DaskExecutor:
        return DaskExecutor(self.client, self.resources, tuple(str(m) for m in self.markers))

    def close(self) -> None:
        """Remove the probes; close the client, and the local cluster if this started one."""
        for marker in self.markers:
            marker.unlink(missing_ok=True)
        self.markers = []
        if self.client is not None:
            self.client.close()
            self.client = None
        if self._local is not None:
            self._local.close()
            self._local = None
