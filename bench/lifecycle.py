"""A suite invocation from start to end, as a library function: ``run_suite(suite, cells, options)``.

The order is what keeps results safe:
1. check everything the user gave (device, output and table folders, tracking URI, every dataset of
   the selected cells) while nothing exists yet: bad input is one ``BenchError`` (exit 2), and
   nothing is run or left behind;
2. take the output folder's lock (``bench.lock``) before anything touches the folder or MLflow;
3. remove temporary files a killed process left, open MLflow (``bench.mirror``), end runs a dead
   invocation left RUNNING;
4. run the cells (``bench.scheduler``); a tracking failure never stops them;
5. mirror finished cell folders MLflow lacks, then write the tables from the folders.
The CLI (``sqvae-bench run``) prints what this returns.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench import checks, interrupts, store
from bench.data import dataset_spec
from bench.metrics.perceptual import warned_for_workers
from bench.executor import ProcessExecutor
from bench.lock import OutputLock
from bench.mirror import Mirror, check_tracking_uri, open_tracker
from bench.run import RunEnv
from bench.scheduler import SuiteSummary, run_cells
from bench.suite import Cell, Suite
from bench.tracking import resolve_tracking_uri


@dataclass(frozen=True)
class RunOptions:
    """How to run a suite (none of it changes a cell id; ``env`` holds the numerical settings)."""

    output: Path
    results: Path
    env: RunEnv = field(default_factory=RunEnv)
    workers: int = 1
    rerun: bool = False
    tracking: bool = True
    tracking_uri: str | None = None
    tracking_optional: bool = False
    progress: bool = True
    reference: Path | None = None  # a CSV of numbers to show beside ours (bench.tables.load_reference)
    executor: Callable = ProcessExecutor  # executor(workers): where cells run (bench.executor, bench.dask_executor)
    cells_per_gpu: int | None = None  # K cells share a GPU (local pool: bench.scheduler.devices_for); None: no limit


@dataclass
class SuiteRun:
    """What a suite invocation did: the summary, the tables (or None), where MLflow is."""

    summary: SuiteSummary
    tables: dict | None
    tracking_uri: str | None
    tracking_error: str | None = None
    untracked: list[str] = field(default_factory=list)  # cells MLflow did not get
    mirrored: list[str] = field(default_factory=list)  # earlier cells mirrored into MLflow now


def tracking_uri(options: RunOptions) -> str | None:
    return resolve_tracking_uri(options.tracking_uri, options.output) if options.tracking else None


def check_inputs(cells: list[Cell], options: RunOptions) -> None:
    """Everything that can be checked before anything is created; raises BenchError."""
    checks.check_execution(options.env.device, options.output, options.results, {
        "--workers": options.workers, "--threads": options.env.threads,
        "--cells-per-gpu": 1 if options.cells_per_gpu is None else options.cells_per_gpu})
    uri = tracking_uri(options)
    if uri is not None and not options.tracking_optional:
        check_tracking_uri(uri)  # a remote server that does not answer: exit 2 before the folder exists
    checks.check_datasets([c.config for c in cells], options.env.data_root, options.env.download)


def run_suite(suite: Suite, cells: list[Cell], options: RunOptions) -> SuiteRun:
    """Check, lock, track, run, mirror and tabulate; see the module docstring. Raises BenchError on bad input."""
    from bench.tables import write_tables

    check_inputs(cells, options)
    uri = tracking_uri(options)
    options.output.mkdir(parents=True, exist_ok=True)
    images = any(dataset_spec(c.dataset, **c.config.data_options).kind == "image" for c in cells)
    lpips_note = warned_for_workers(options.env.lpips_weights) if images else contextlib.nullcontext()
    with OutputLock(options.output), interrupts.deferred(), lpips_note:  # the LPIPS note once, not per worker
        store.clean_stale_tmp(options.output)
        tracker = open_tracker(uri, f"sqvae-bench/{suite.name}", options.tracking_optional) if uri else None
        mirror = Mirror(tracker, suite.name, options.output)
        mirror.start({"suite_file": str(suite.source), "cells": len(cells), "workers": options.workers,
                      "threads": options.env.threads, "deterministic": options.env.deterministic})
        env = RunEnv(**{**options.env.__dict__, "fid_cache": str(options.output / "fid_cache")})
        summary = run_cells(suite, cells, options.output, workers=options.workers, env=env, mirror=mirror,
                            rerun=options.rerun, progress=options.progress, executor=options.executor,
                            cells_per_gpu=options.cells_per_gpu)
        mirrored = mirror.sync()
        mirror.finish("failed" if summary.failed else "completed",
                      {"completed": len(summary.completed), "skipped": len(summary.skipped),
                       "failed": len(summary.failed), "seconds": summary.seconds})
        tables = None
        if summary.completed or summary.skipped:
            tables = write_tables(options.output, options.results, metrics=list(suite.metrics) or None,
                                  cell_ids=[c.cell_id for c in cells], reference=options.reference)
    return SuiteRun(summary, tables, uri if tracker is not None else None, mirror.error, list(mirror.missed),
                    [m for m in mirrored if m not in summary.completed])
