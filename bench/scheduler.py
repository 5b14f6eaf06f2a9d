"""Run a suite's cells on local worker processes, resumably, with MLflow written by one process.

- Each cell runs in a worker process (``bench.executor.ProcessExecutor``, spawned), on a GPU assigned
  round-robin (at most ``cells_per_gpu`` cells per GPU when given) or on the CPU, with a fixed
  intra-op thread count (``RunEnv.threads``), so the number of workers never changes a result. An
  executor that places tasks itself (``places_devices``: ``bench.dask_executor``, through worker
  resources) gets the device as given.
- Isolation: an exception, a non-finite loss or an out-of-memory error marks that cell failed with
  its reason and traceback; the others go on. A worker process that dies outright (a crash, a kill)
  fails only the cell it was running; a fresh worker takes its place, and a later invocation
  resumes that cell from its checkpoint. An attempt records the step it started from in status.json
  (``resumed_from_step``, 0 from scratch).
- Resume: completed cells are skipped; an interrupted cell resumes from its last checkpoint;
  ``rerun=True`` moves completed folders to <output>/replaced/ first, so nothing is overwritten.
  A cell resumed under another numerical path (threads, device, precision, library versions; see
  ``bench.numerics``) carries a warning in its status.json, the log and MLflow.
- Workers report through a queue; only this process writes to MLflow (``bench.mirror``) and draws
  progress bars. Ctrl-C stops the workers, marks their cells failed ("interrupted", resumable) and
  ends the open MLflow runs as KILLED.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from bench import events, interrupts, numerics, store
from bench.executor import ProcessExecutor, TaskError, WorkerDied
from bench.hooks import Hooks
from bench.mirror import Mirror
from bench.run import RunEnv, resolve_device, run_cell
from bench.suite import Cell, Suite
from bench.tracking import EVENT_WARNING, QueueHook
from bench.train import CHECKPOINT, resolve_precision

INTERRUPTED = "interrupted (Ctrl-C or SIGTERM); run the same command again to resume from its checkpoint"


@dataclass
class SuiteSummary:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> reason
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


# -- the worker side ------------------------------------------------------------------------------
def numerics_check(folder: Path, env: RunEnv, precision: str) -> tuple[dict, list[str]]:
    """This attempt's numerical record, and what differs from the attempt whose checkpoint it resumes."""
    device = resolve_device(env.device)
    record = numerics.record(device, env.threads, env.deterministic, resolve_precision(precision, device))
    previous = folder / "env.json"
    if not (folder / CHECKPOINT).exists() or not previous.exists():
        return record, []
    return record, numerics.changed(store.read_json(previous), record)


def worker_hooks(key: str) -> list[Hooks]:
    """The hooks of a task in a worker: the executor's watch (stops a task its client abandoned) and
    events to the client under ``key``."""
    queue = events.worker_queue()
    return events.watch_hooks() + ([QueueHook(queue, key)] if queue is not None else [])


class ResumeRecord(Hooks):
    """Writes the step an attempt starts from into the cell's status.json (``resumed_from_step``)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def on_start(self, total_steps: int, start_step: int) -> None:
        store.write_status(self.folder, "running", resumed_from_step=start_step)


def execute_cell(cell: Cell, folder: Path, env: RunEnv) -> tuple[str, str, str | None]:
    """Run one cell in a worker; never raises. Returns (cell id, status, reason)."""
    record = store.read_status(folder)
    store.write_status(folder, "running", started=time.time(), attempts=record.get("attempts", 0) + 1,
                       reason=None, traceback=None, pid=os.getpid(), device=env.device)
    try:
        env_record, changes = numerics_check(folder, env, cell.config.train.precision)
        if changes:
            message = (f"{cell.cell_id} resumes its checkpoint under another numerical path ({'; '.join(changes)}): "
                       "its numbers mix two paths and may differ from an uninterrupted run")
            store.write_status(folder, "running", warnings=[*record.get("warnings", []), message])
            if events.worker_queue() is not None:
                events.worker_queue().put((EVENT_WARNING, cell.cell_id, {"message": message}))
        store.write_json(folder / "env.json", env_record)
        results = run_cell(cell.config, folder, env, hooks=[*worker_hooks(cell.cell_id), ResumeRecord(folder)])
    except BaseException as err:  # noqa: BLE001 - a cell's failure must never stop the suite
        reason = f"{type(err).__name__}: {err}"
        store.write_status(folder, "failed", finished=time.time(), reason=reason, traceback=traceback.format_exc())
        return cell.cell_id, "failed", reason
    store.write_json(folder / "metrics.json", results)
    store.write_status(folder, "completed", finished=time.time(), seconds=results["seconds"])
    return cell.cell_id, "completed", None


# -- the scheduler side ---------------------------------------------------------------------------
def devices_for(workers: int, device: str, cells_per_gpu: int | None = None, gpus: int | None = None) -> list[str]:
    """The device of each worker slot: visible GPUs round-robin under "auto", else the given device.

    cells_per_gpu: K cells share one GPU: with G GPUs at most G * K slots ("auto"), or K on one
        given GPU ("cuda", "cuda:1"); None: no limit. Nothing is limited on the CPU.
    gpus: the number of visible GPUs (default: torch's count).
    Returns: one device name per slot (fewer than ``workers`` when limited).
    """
    count = (torch.cuda.device_count() if torch.cuda.is_available() else 0) if gpus is None else gpus
    if device == "auto" and count:
        slots = workers if cells_per_gpu is None else min(workers, count * cells_per_gpu)
        return [f"cuda:{i % count}" for i in range(slots)]
    if device.startswith("cuda") and cells_per_gpu is not None:
        workers = min(workers, cells_per_gpu)
    return [("cpu" if device == "auto" else device)] * workers


def device_slots(make_executor: Callable, workers: int, device: str, cells_per_gpu: int | None) -> list[str]:
    """The device of each slot: ``devices_for`` for the local pool; an executor that places tasks
    itself (``places_devices``, e.g. Dask by worker resources) gets the device as given."""
    if getattr(make_executor, "places_devices", False):
        return [device] * workers
    return devices_for(workers, device, cells_per_gpu)


def prepare_cells(cells: list[Cell], output: Path, suite: Suite, rerun: bool) -> tuple[list[Cell], list[str]]:
    """Write config.json of each cell; return (cells to run, completed cell ids skipped). What cannot be
    read in a cell folder is set aside and the cell redone (``store.recover_status``)."""
    pending, skipped = [], []
    for cell in cells:
        folder = store.cell_dir(output, cell.cell_id)
        if store.recover_status(folder)["status"] == "completed":
            if not rerun:
                skipped.append(cell.cell_id)
                continue
            archive = output / "replaced" / f"{cell.cell_id}-{time.strftime('%Y%m%d-%H%M%S')}"
            archive.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(archive))
        info = {"cell_id": cell.cell_id, "suite": suite.name, "dataset": cell.dataset, "model": cell.model,
                "seed": cell.seed, "config": cell.config.to_dict()}
        store.write_json(folder / "config.json", info)
        pending.append(cell)
    return pending, skipped


class Progress:
    """One bar for the suite and one per running cell."""

    def __init__(self, total: int, skipped: int, enabled: bool):
        self.enabled = enabled
        self.suite = tqdm(total=total, initial=skipped, desc="suite", unit="cell", disable=not enabled, position=0)
        self.bars: dict[str, tqdm] = {}
        self.failed = 0
        self.free_positions = list(range(1, 65))

    def start(self, cell_id: str, total: int, step: int) -> None:
        if cell_id in self.bars:  # started again (retried on another worker): its bar from the new step
            self.bars[cell_id].reset(total)
            self.bars[cell_id].update(step)
            return
        position = self.free_positions.pop(0)
        self.bars[cell_id] = tqdm(total=total, initial=step, desc=cell_id[:48], unit="step", leave=False,
                                  position=position, disable=not self.enabled)

    def advance(self, cell_id: str, step: int) -> None:
        bar = self.bars.get(cell_id)
        if bar is not None:
            bar.update(step - bar.n)

    def finish(self, cell_id: str, status: str) -> None:
        bar = self.bars.pop(cell_id, None)
        if bar is not None:
            self.free_positions.insert(0, bar.pos if bar.pos > 0 else 1)
            bar.close()
        self.failed += status == "failed"
        self.suite.update(1)
        self.suite.set_postfix(failed=self.failed, running=len(self.bars))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.suite.close()


def run_cells(suite: Suite, cells: list[Cell], output: Path, *, workers: int = 1, env: RunEnv = RunEnv(),
              mirror: Mirror | None = None, rerun: bool = False, progress: bool = True,
              executor: Callable = ProcessExecutor, cells_per_gpu: int | None = None) -> SuiteSummary:
    """Run ``cells`` of ``suite`` into ``output`` (whose lock the caller holds); see the module docstring.

    ``executor(workers)`` makes where the cells run (``bench.executor``: submit, events, shutdown, close).
    ``cells_per_gpu``: K cells share a GPU (``devices_for``); None: as many as ``workers``.
    """
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    mirror = mirror or Mirror(None, suite.name, output)
    summary = SuiteSummary()
    pending, summary.skipped = prepare_cells(cells, output, suite, rerun)
    bars = Progress(len(cells), len(summary.skipped), progress)
    try:
        if pending:
            slots = device_slots(executor, min(workers, len(pending)), env.device, cells_per_gpu)
            _run_pool(executor, pending, output, slots, env, bars, mirror, summary)
    finally:
        bars.close()
    summary.seconds = time.perf_counter() - started
    return summary


def _run_pool(make_executor: Callable, pending: list[Cell], output: Path, slots: list[str], env: RunEnv,
              bars: Progress, mirror: Mirror, summary: SuiteSummary) -> None:
    """Run ``pending`` cells, one per slot at a time (``slots``: the device of each)."""
    todo = list(pending)
    running: dict[Future, tuple[Cell, int]] = {}
    free = list(range(len(slots)))
    executor = make_executor(len(slots))
    try:
        while todo or running:
            interrupts.check()
            while todo and free:
                cell, slot = todo.pop(0), free.pop(0)
                cell_env = RunEnv(**{**env.__dict__, "device": slots[slot]})
                future = executor.submit(execute_cell, cell, store.cell_dir(output, cell.cell_id), cell_env,
                                         key=cell.cell_id)
                running[future] = (cell, slot)
            done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(executor, output, bars, mirror)
            for future in done:
                cell, slot = running.pop(future)
                free.append(slot)
                _, status, reason = _outcome(future, cell, output)
                _finish(cell, status, reason, output, bars, mirror, summary)
    except KeyboardInterrupt:
        executor.shutdown(kill=True)
        for cell, _ in running.values():
            store.write_status(store.cell_dir(output, cell.cell_id), "failed", finished=time.time(), reason=INTERRUPTED)
            summary.failed[cell.cell_id] = INTERRUPTED
        _drain(executor, output, bars, mirror)
        mirror.kill_open(INTERRUPTED)
        raise
    finally:
        executor.shutdown()
        _drain(executor, output, bars, mirror)
        executor.close()


def _outcome(future: Future, cell: Cell, output: Path) -> tuple[str, str, str | None]:
    """The (cell id, status, reason) of a finished future; a dead worker fails only its own cell."""
    try:
        return future.result()
    except (WorkerDied, TaskError) as err:
        reason = f"{type(err).__name__}: {str(err).splitlines()[0]}; run the suite again to resume from its checkpoint"
        store.write_status(store.cell_dir(output, cell.cell_id), "failed", finished=time.time(), reason=reason,
                           traceback=str(err))
        return cell.cell_id, "failed", reason


def _drain(executor, output: Path, bars: Progress, mirror: Mirror) -> None:
    for event in executor.events():
        kind, cell_id, payload = event
        if kind == "start":
            bars.start(cell_id, payload["total"], payload["step"])
            mirror.start_cell(cell_id, store.cell_dir(output, cell_id), payload["step"])
        elif kind == "progress":
            bars.advance(cell_id, payload["step"])
        elif kind == EVENT_WARNING:
            tqdm.write(f"sqvae-bench: warning: {payload['message']}", file=sys.stderr)
        mirror.event(event)


def _finish(cell: Cell, status: str, reason: str | None, output: Path, bars: Progress, mirror: Mirror,
            summary: SuiteSummary) -> None:
    bars.finish(cell.cell_id, status)
    mirror.finish_cell(cell.cell_id, store.cell_dir(output, cell.cell_id), status, reason)
    if status == "completed":
        summary.completed.append(cell.cell_id)
    else:
        summary.failed[cell.cell_id] = reason or "unknown"
