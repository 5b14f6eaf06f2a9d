"""`sqvae-bench perf --executor-overhead`: what running on Dask costs against the local process pool.

One tiny suite of 8 cells (``shapes`` 28 px, two models, four seeds, 40 steps each) runs through the
local pool (``--workers N``) and through a LocalCluster of N one-thread workers started for it
(``--executor dask --dask-workers N``), without MLflow, in fresh folders, alternately ``repeats``
times. The makespan of an invocation counts from its start to the end of its suite: the pool's
workers spawn inside it, and so does the local cluster (its start is also given alone). The medians'
ratio dask / local is the overhead; both runs must give the same numbers.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

OVERHEAD_SUITE = {
    "name": "executor-overhead",
    "datasets": {"shapes": {"options": {"size": 28, "n_train": 128, "n_val": 32, "n_test": 32},
                            "model_options": {"size_dict": 16, "dim_dict": 16, "num_rb": 1}}},
    "models": ["vqvae", "sqvae-gauss-1"],
    "seeds": [0, 1, 2, 3],
    "train": {"epochs": 10, "max_steps": 40, "log_every": 10},
}


@dataclass(frozen=True)
class ExecutorOverhead:
    cells: int
    workers: int
    local_s: float  # median makespan through the local pool
    dask_s: float  # median makespan through a LocalCluster, its start included
    cluster_start_s: float  # median start of the LocalCluster alone
    same_numbers: bool  # every cell's test metrics identical

    @property
    def ratio(self) -> float:
        return self.dask_s / self.local_s


def _test_metrics(output: Path) -> dict[str, str]:
    return {c.name: json.dumps(json.loads((c / "metrics.json").read_text())["test"], sort_keys=True)
            for c in sorted((output / "cells").iterdir())}


def _timed_dask(suite, cells, options, workers: int) -> tuple[float, float]:
    """(makespan, cluster start) of the suite on a LocalCluster of ``workers`` started for it."""
    from bench.dask_executor import DaskCluster
    from bench.lifecycle import run_suite

    started = time.perf_counter()
    with DaskCluster(workers=workers, device=options.env.device) as cluster:
        up = time.perf_counter() - started
        cluster.check_shared(options.output)
        run_suite(suite, cells, dataclasses.replace(options, executor=cluster, workers=len(cells)))
        return time.perf_counter() - started, up


def measure_executor_overhead(workers: int = 2, repeats: int = 1, device: str = "cpu") -> ExecutorOverhead:
    """Median makespans of ``OVERHEAD_SUITE`` locally and on Dask; see the module docstring."""
    import yaml

    from bench.lifecycle import RunOptions, run_suite
    from bench.run import RunEnv
    from bench.suite import expand, load_suite

    local, dask, starts, same = [], [], [], True
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "overhead.yaml"
        path.write_text(yaml.safe_dump(OVERHEAD_SUITE, sort_keys=False))
        suite = load_suite(path)
        cells = expand(suite)
        for repeat in range(repeats):
            options = RunOptions(output=Path(tmp) / f"local{repeat}", results=Path(tmp) / f"results-local{repeat}",
                                 env=RunEnv(device=device), workers=workers, tracking=False, progress=False)
            started = time.perf_counter()
            run_suite(suite, cells, options)
            local.append(time.perf_counter() - started)
            on_dask = dataclasses.replace(options, output=Path(tmp) / f"dask{repeat}",
                                          results=Path(tmp) / f"results-dask{repeat}")
            makespan, up = _timed_dask(suite, cells, on_dask, workers)
            dask.append(makespan)
            starts.append(up)
            same = same and _test_metrics(options.output) == _test_metrics(on_dask.output)
    return ExecutorOverhead(len(cells), workers, statistics.median(local), statistics.median(dask),
                            statistics.median(starts), same)
