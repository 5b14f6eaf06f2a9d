"""Run a suite's cells on local worker processes, resumably, with MLflow written by one process.

- Each cell runs in a worker process (spawned), on a GPU assigned round-robin or on the CPU.
- Isolation: an exception, a non-finite loss or an out-of-memory error marks that cell failed with
  its reason and traceback; the others go on. A worker process that dies outright (a crash, a kill)
  breaks the process pool: the cells running in it at that moment are marked failed, a new pool
  takes the remaining cells, and a later invocation resumes the failed ones from their checkpoints.
- Resume: completed cells are skipped; an interrupted cell resumes from its last checkpoint;
  ``rerun=True`` moves completed folders to <output>/replaced/ first, so nothing is overwritten.
- Workers report through a queue; only this process writes to MLflow and draws progress bars.
"""
from __future__ import annotations

import multiprocessing
import os
import queue as queue_module
import shutil
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from bench import store
from bench.errors import ConfigError
from bench.run import RunEnv, run_cell
from bench.suite import Cell, Suite
from bench.tracking import QueueHook, Tracker, apply_event, flatten_params
from bench.train import Hooks

LOCK = ".lock"


@dataclass
class SuiteSummary:
    completed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> reason
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


class ParentWatch(Hooks):
    """Ends an orphaned worker (its scheduler was killed) instead of letting it finish a cell."""

    def __init__(self):
        self.parent = os.getppid()

    def on_step(self, step: int) -> None:
        if os.getppid() != self.parent:
            os._exit(3)


# -- the worker side ------------------------------------------------------------------------------
_events = None  # the worker's end of the event queue, set when the worker process starts


def _init_worker(events) -> None:
    global _events
    _events = events


def execute_cell(cell: Cell, folder: Path, env: RunEnv, threads: int) -> tuple[str, str, str | None]:
    """Run one cell in a worker; never raises. Returns (cell id, status, reason)."""
    torch.set_num_threads(threads)
    record = store.read_status(folder)
    store.write_status(folder, "running", started=time.time(), attempts=record.get("attempts", 0) + 1,
                       reason=None, traceback=None, pid=os.getpid(), device=env.device)
    store.write_json(folder / "env.json", store.environment(env.device))
    try:
        results = run_cell(cell.config, folder, env, hooks=[QueueHook(_events, cell.cell_id), ParentWatch()])
    except BaseException as err:  # noqa: BLE001 - a cell's failure must never stop the suite
        reason = f"{type(err).__name__}: {err}"
        store.write_status(folder, "failed", finished=time.time(), reason=reason, traceback=traceback.format_exc())
        return cell.cell_id, "failed", reason
    store.write_json(folder / "metrics.json", results)
    store.write_status(folder, "completed", finished=time.time(), seconds=results["seconds"])
    return cell.cell_id, "completed", None


# -- the scheduler side ---------------------------------------------------------------------------
def devices_for(workers: int, device: str) -> list[str]:
    """One device per worker slot: visible GPUs round-robin under "auto", else the given device."""
    if device == "auto" and torch.cuda.is_available():
        return [f"cuda:{i % torch.cuda.device_count()}" for i in range(workers)]
    return [("cpu" if device == "auto" else device)] * workers


def acquire_lock(output: Path) -> Path:
    """One `run` per output folder at a time; a lock left by a dead process is taken over."""
    lock = output / LOCK
    if lock.exists():
        pid = int(lock.read_text().strip() or 0)
        if pid and pid != os.getpid() and _alive(pid):
            raise ConfigError(f"{output} is in use by another sqvae-bench run (pid {pid}); wait for it or use --output")
    lock.write_text(str(os.getpid()))
    return lock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_cells(cells: list[Cell], output: Path, suite: Suite, rerun: bool) -> tuple[list[Cell], list[str]]:
    """Write config.json of each cell; return (cells to run, completed cell ids skipped)."""
    pending, skipped = [], []
    for cell in cells:
        folder = store.cell_dir(output, cell.cell_id)
        if store.read_status(folder)["status"] == "completed":
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


def _artifacts(folder: Path) -> list[Path]:
    images = folder / "images"
    files = sorted(images.glob("*.png")) if images.exists() else []
    return files + [p for p in (folder / "config.json", folder / "metrics.json") if p.exists()]


class _Tracking:
    """The scheduler's MLflow writer: nested runs keyed by cell id."""

    def __init__(self, tracker: Tracker | None, suite: Suite):
        self.tracker, self.suite, self.run_ids = tracker, suite, {}

    def start(self, cell: Cell, resumed_step: int) -> None:
        if self.tracker is None or cell.cell_id in self.run_ids:  # a start event drained after the cell finished
            return
        tags = {"suite": self.suite.name, "dataset": cell.dataset, "model": cell.model, "seed": str(cell.seed),
                "cell_id": cell.cell_id, "status": "running", "resumed_from_step": str(resumed_step)}
        self.run_ids[cell.cell_id] = self.tracker.start_cell(cell.cell_id, tags, flatten_params(cell.config.to_dict()))

    def event(self, event) -> None:
        if self.tracker is not None:
            apply_event(self.tracker, self.run_ids, event)

    def finish(self, cell: Cell, folder: Path, status: str, reason: str | None) -> None:
        if self.tracker is None:
            return
        if cell.cell_id not in self.run_ids:  # failed before training started: still recorded
            self.start(cell, 0)
        run_id = self.run_ids[cell.cell_id]
        metrics_path = folder / "metrics.json"
        test = store.read_json(metrics_path)["test"] if status == "completed" and metrics_path.exists() else {}
        self.tracker.log_artifacts(run_id, _artifacts(folder))
        self.tracker.finish_cell(run_id, status, test, reason)


def run_cells(suite: Suite, cells: list[Cell], output: Path, *, workers: int = 1, env: RunEnv = RunEnv(),
              tracker: Tracker | None = None, rerun: bool = False, progress: bool = True) -> SuiteSummary:
    """Run ``cells`` of ``suite`` into ``output``; see the module docstring."""
    started = time.perf_counter()
    output.mkdir(parents=True, exist_ok=True)
    lock = acquire_lock(output)
    summary = SuiteSummary()
    try:
        pending, summary.skipped = prepare_cells(cells, output, suite, rerun)
        bars = Progress(len(cells), len(summary.skipped), progress)
        tracking = _Tracking(tracker, suite)
        _run_pool(pending, output, workers, env, bars, tracking, summary)
        bars.close()
    finally:
        lock.unlink(missing_ok=True)
    summary.seconds = time.perf_counter() - started
    return summary


def _run_pool(pending: list[Cell], output: Path, workers: int, env: RunEnv, bars: Progress, tracking: _Tracking,
              summary: SuiteSummary) -> None:
    context = multiprocessing.get_context("spawn")
    events = context.Queue()

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(events,))

    slots = devices_for(workers, env.device)
    threads = max(1, (os.cpu_count() or 1) // workers)
    by_id = {cell.cell_id: cell for cell in pending}
    todo = list(pending)
    running: dict[Future, tuple[Cell, int, ProcessPoolExecutor]] = {}
    free = list(range(workers))
    pool = new_pool()
    try:
        while todo or running:
            while todo and free:
                cell, slot = todo.pop(0), free.pop(0)
                cell_env = RunEnv(**{**env.__dict__, "device": slots[slot]})
                future = pool.submit(execute_cell, cell, store.cell_dir(output, cell.cell_id), cell_env, threads)
                running[future] = (cell, slot, pool)
            done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(events, by_id, bars, tracking)
            for future in done:
                cell, slot, owner = running.pop(future)
                free.append(slot)
                try:
                    _, status, reason = future.result()
                except BrokenProcessPool:
                    status, reason = "failed", "a worker process died (crash or kill); run the suite again to resume"
                    store.write_status(store.cell_dir(output, cell.cell_id), "failed", finished=time.time(), reason=reason)
                    if owner is pool:
                        pool.shutdown(cancel_futures=True)
                        pool = new_pool()
                _finish(cell, status, reason, output, bars, tracking, summary)
    finally:
        pool.shutdown(cancel_futures=True)
        _drain(events, by_id, bars, tracking)
        events.close()


def _drain(events, by_id: dict[str, Cell], bars: Progress, tracking: _Tracking) -> None:
    while True:
        try:
            event = events.get_nowait()
        except (queue_module.Empty, EOFError, OSError):
            return
        kind, cell_id, payload = event
        if kind == "start":
            bars.start(cell_id, payload["total"], payload["step"])
            tracking.start(by_id[cell_id], payload["step"])
        elif kind == "progress":
            bars.advance(cell_id, payload["step"])
        tracking.event(event)


def _finish(cell: Cell, status: str, reason: str | None, output: Path, bars: Progress, tracking: _Tracking,
            summary: SuiteSummary) -> None:
    bars.finish(cell.cell_id, status)
    tracking.finish(cell, store.cell_dir(output, cell.cell_id), status, reason)
    if status == "completed":
        summary.completed.append(cell.cell_id)
    else:
        summary.failed[cell.cell_id] = reason or "unknown"
