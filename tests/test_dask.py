"""Suites and studies on Dask (bench.dask_executor), against a real scheduler on 127.0.0.1.

The module starts a ``dask scheduler`` and two ``dask worker`` processes (one thread each, advertising
``GPU=1`` so the resource path runs, on CPU) and stops them, and every process they started, at the
end, also when a test fails. The scheduler allows one failure per task, so one killed worker means a
retry and two mean KilledWorker. The workers' working directory is a folder of their own: a relative
``--output`` there is another folder than the client's, which is how a worker that cannot see the
output folder is simulated. Placement arithmetic is tested with fake GPU counts.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

distributed = pytest.importorskip("distributed")

from bench import store  # noqa: E402
from bench.dask_executor import (DaskExecutor, TaskCancelled, task_resources, task_slots)  # noqa: E402
from bench.errors import ConfigError  # noqa: E402
from bench.executor import WorkerDied  # noqa: E402
from bench.run import RunEnv  # noqa: E402
from bench.scheduler import devices_for, execute_cell  # noqa: E402
from bench.suite import expand, load_suite  # noqa: E402
from tests.conftest import cli_env, run_main, write_suite  # noqa: E402
from tests.test_cli import background, cell_runs, mlflow_runs, process_gone, wait_until  # noqa: E402
from tests.test_tune import finished, trials_of, write_study  # noqa: E402

DASK = Path(sys.executable).parent / "dask"
NO_MALLOC_TRIM = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON": "{'MALLOC_TRIM_THRESHOLD_': None}"}  # README
LONG = {"name": "long", "models": ["vqvae", "sqvae-gauss-1"], "seeds": [0],
        "train": {"max_steps": 100, "checkpoint_every": 10}}


# -- placement arithmetic (no cluster) ---------------------------------------------------------------
def test_local_slots_put_k_cells_on_each_gpu_round_robin():
    assert devices_for(8, "auto", cells_per_gpu=3, gpus=2) == ["cuda:0", "cuda:1"] * 3
    assert devices_for(3, "auto", cells_per_gpu=4, gpus=2) == ["cuda:0", "cuda:1", "cuda:0"]
    assert devices_for(5, "auto", gpus=2) == ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]  # no limit
    assert devices_for(6, "cuda:1", cells_per_gpu=2, gpus=2) == ["cuda:1"] * 2
    assert devices_for(4, "auto", cells_per_gpu=2, gpus=0) == ["cpu"] * 4  # nothing limited on the CPU
    assert devices_for(4, "cpu", cells_per_gpu=1, gpus=2) == ["cpu"] * 4


def test_dask_tasks_ask_for_a_kth_of_a_gpu_and_k_of_them_fit():
    gpu_workers = [{"GPU": 1}, {}]
    assert task_resources(gpu_workers, "auto", None) == {"GPU": 1.0}
    for k in (2, 3, 7, 10):
        share = task_resources(gpu_workers, "auto", k)["GPU"]
        available, started = 1.0, 0
        while available >= share:  # the worker's own accounting, in floats
            available, started = available - share, started + 1
        assert started == k
    assert task_resources([{}, {}], "auto", None) is None  # a CPU cluster: tasks go by threads
    assert task_resources(gpu_workers, "cpu", 4) is None
    with pytest.raises(ConfigError, match="no Dask worker advertises the resource GPU"):
        task_resources([{}], "auto", 4)


def test_dask_slots_are_threads_limited_by_gpu_shares():
    workers = [{"nthreads": 8, "resources": {"GPU": 1}}, {"nthreads": 2, "resources": {"GPU": 1}},
               {"nthreads": 4, "resources": {}}]
    assert task_slots(workers, task_resources([w["resources"] for w in workers], "auto", 4)) == 4 + 2
    assert task_slots(workers, None) == 14
    assert task_slots([], None) == 1


# -- the command line ------------------------------------------------------------------------------
@pytest.mark.parametrize("extra, message", [
    (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --executor dask"),
    (["--dask-workers", "2"], "--dask-workers needs --executor dask"),
    (["--executor", "dask"], "needs either --scheduler ADDRESS"),
    (["--executor", "dask", "--dask-workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    (["--executor", "dask", "--dask-workers", "0"], "--dask-workers must be >= 1"),
    (["--cells-per-gpu", "0"], "--cells-per-gpu must be >= 1"),
])
def test_bad_executor_options_are_one_message_and_exit_2(tmp_path, tiny_suite, extra, message):
    result = run_main(["run", tiny_suite, "--output", tmp_path / "runs", *extra], cwd=tmp_path)
    assert result.code == 2 and message in result.err and result.err.count("\n") == 1, result.err
    assert not (tmp_path / "runs").exists()


def test_tune_cells_per_gpu_needs_dask(tmp_path):
    result = run_main(["tune", write_study(tmp_path / "study.yaml"), "--cells-per-gpu", "2"], cwd=tmp_path)
    assert result.code == 2 and "--cells-per-gpu with `tune` needs --executor dask" in result.err


def test_dask_not_installed_is_a_clear_error(tmp_path, tiny_suite, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed raises ImportError
    result = run_main(["run", tiny_suite, "--executor", "dask", "--dask-workers", "2"], cwd=tmp_path)
    assert result.code == 2 and "pip install -e '.[dask]'" in result.err, result.err


def test_connection_refused_is_a_clear_error(tmp_path, tiny_suite, monkeypatch):
    monkeypatch.setattr("bench.dask_executor.CONNECT_S", 1)
    result = run_main(["run", tiny_suite, "--output", tmp_path / "runs", "--executor", "dask",
                       "--scheduler", f"tcp://127.0.0.1:{free_port()}"], cwd=tmp_path)
    assert result.code == 2 and "no Dask scheduler answered" in result.err, result.err


# -- a real cluster --------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Cluster:
    address: str
    workers_cwd: Path
    processes: list

    def client(self):
        return distributed.Client(self.address, timeout=10, set_as_default=False)

    def wait_for_workers(self, n: int = 2) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=60)


def _stop(processes: list) -> None:
    """Terminate ``processes`` and every child they started; kill what is still there after 15 s."""
    import psutil

    tree = []
    for process in processes:
        try:
            tree += psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            pass
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for child in alive:
        child.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("dask")
    workers_cwd = root / "workers-cwd"
    workers_cwd.mkdir()
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**cli_env(), "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "1", **NO_MALLOC_TRIM}
    processes = []
    try:
        with open(root / "scheduler.log", "w") as log:
            processes.append(subprocess.Popen([DASK, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                               "--no-dashboard"], env=env, stdout=log, stderr=subprocess.STDOUT))
        for i in range(2):
            with open(root / f"worker{i}.log", "w") as log:
                processes.append(subprocess.Popen(
                    [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
                     "--no-dashboard", "--resources", "GPU=1", "--death-timeout", "60",
                     "--local-directory", root / f"scratch{i}"],
                    cwd=workers_cwd, env=env, stdout=log, stderr=subprocess.STDOUT))
        found = Cluster(address, workers_cwd, processes)
        found.wait_for_workers(2)
        yield found
    finally:
        _stop(processes[1:])
        _stop(processes[:1])


@pytest.fixture
def two_workers(cluster) -> Cluster:
    """The cluster with both workers up (a killed worker is restarted by its nanny)."""
    cluster.wait_for_workers(2)
    return cluster


def dask_args(suite: Path, root: Path, cluster: Cluster, *extra) -> list:
    return ["run", suite, "--output", root / "runs", "--results", root / "results", "--no-progress",
            "--executor", "dask", "--scheduler", cluster.address, *extra]


def local_args(suite: Path, root: Path) -> list:
    return ["run", suite, "--output", root / "runs", "--results", root / "results", "--no-progress",
            "--workers", 2, "--no-tracking"]


def cell_test_metrics(root: Path) -> dict[str, str]:
    """cell id -> its test metrics as JSON text (NaN included, compared exactly)."""
    cells = sorted((root / "runs" / "cells").iterdir())
    return {c.name: json.dumps(store.read_json(c / "metrics.json")["test"], sort_keys=True) for c in cells}


@pytest.fixture(scope="module")
def local_tiny(tmp_path_factory) -> Path:
    """The tiny suite through the local pool: the reference."""
    root = tmp_path_factory.mktemp("local")
    result = run_main(local_args(write_suite(root / "tiny.yaml"), root), cwd=root)
    assert result.code == 0, result.err
    return root


def assert_same_results(root: Path, reference: Path) -> None:
    assert cell_test_metrics(root) == cell_test_metrics(reference)
    assert (root / "results" / "table.csv").read_text() == (reference / "results" / "table.csv").read_text()


def test_the_tiny_suite_on_the_cluster_equals_the_local_pool(two_workers, tmp_path, local_tiny):
    result = run_main(dask_args(write_suite(tmp_path / "tiny.yaml"), tmp_path, two_workers), cwd=tmp_path)
    assert result.code == 0, result.err
    assert "4 completed" in result.out and "2 worker(s), 2 task slot(s), 1 GPU per task" in result.out
    assert_same_results(tmp_path, local_tiny)
    assert not list((tmp_path / "runs" / ".dask-probes").iterdir())  # the probes are removed
    by_cell = cell_runs(mlflow_runs(tmp_path / "runs")[1])  # written by this process from the workers' events
    assert len(by_cell) == 4
    for (run,) in by_cell.values():
        assert run.info.status == "FINISHED" and {"train_loss", "val_loss", "test_mse"} <= set(run.data.metrics)


def test_a_local_cluster_runs_the_tiny_suite(tmp_path, local_tiny):
    result = run_main(["run", write_suite(tmp_path / "tiny.yaml"), "--output", tmp_path / "runs", "--results",
                       tmp_path / "results", "--no-progress", "--no-tracking", "--executor", "dask", "--dask-workers", 2], cwd=tmp_path)
    assert result.code == 0, result.err
    assert "2 worker(s), 2 task slot(s)" in result.out and "GPU" not in result.out
    assert "MALLOC_TRIM_THRESHOLD_" not in result.out  # our LocalCluster leaves glibc's malloc as it is
    assert_same_results(tmp_path, local_tiny)


def test_a_study_on_two_dask_workers_finishes_exactly_its_budget(two_workers, tmp_path):
    study = write_study(tmp_path / "tiny.yaml")
    result = run_main(["tune", study, "--output", tmp_path / "runs", "--results", tmp_path / "results",
                       "--no-progress", "--search-only", "--executor", "dask", "--scheduler", two_workers.address],
                      cwd=tmp_path)
    assert result.code == 0, result.err
    assert "2 task slot(s)" in result.out
    for model in ("vqvae", "sqvae-gauss-1"):
        trials = trials_of(tmp_path, f"tiny/shapes/{model}")
        assert len(finished(trials)) == 3 and len(trials) == 3, [t.state for t in trials]


def test_an_output_folder_the_workers_cannot_see_is_exit_2(two_workers, tmp_path, tiny_suite):
    # a relative --output: the client's is tmp_path/runs, the workers' is under their own working directory
    result = run_main(["run", tiny_suite, "--output", "runs", "--results", "results", "--no-progress",
                       "--executor", "dask", "--scheduler", two_workers.address], cwd=tmp_path)
    assert result.code == 2, result.out + result.err
    assert "--output runs: 2 of 2 Dask worker(s) do not see this folder" in result.err
    assert str(two_workers.workers_cwd / "runs") in result.err and "absolute path" in result.err
    assert not (tmp_path / "runs" / "cells").exists() and not (two_workers.workers_cwd / "runs").exists()


def test_a_cancelled_task_stops_at_its_next_step(two_workers, tmp_path):
    cell = expand(load_suite(write_suite(tmp_path / "long.yaml", LONG)))[0]
    folder = store.cell_dir(tmp_path / "runs", cell.cell_id)
    with two_workers.client() as client:
        executor = DaskExecutor(client)
        future = executor.submit(execute_cell, cell, folder, RunEnv(device="cpu"), key=cell.cell_id)
        wait_until(lambda: (folder / "checkpoint.pt").exists(), 60, "a checkpoint")
        executor.shutdown(kill=True)
        assert future.cancelled()
        wait_until(lambda: store.read_status(folder)["status"] == "failed", 30, "the task to stop")
        executor.close()
    assert store.read_status(folder)["reason"].startswith(TaskCancelled.__name__)
    assert not (folder / "metrics.json").exists()


def test_a_worker_killed_in_a_cell_is_retried_and_the_cell_resumes(two_workers, tmp_path):
    suite = write_suite(tmp_path / "long.yaml", LONG)
    ids = [c.cell_id for c in expand(load_suite(suite))]
    output = tmp_path / "dask" / "runs"

    def checkpointed_pid():
        for cell_id in ids:
            record = store.read_status(store.cell_dir(output, cell_id))
            if record["status"] == "running" and (store.cell_dir(output, cell_id) / "checkpoint.pt").exists():
                return cell_id, record["pid"]
        return None

    with background(dask_args(suite, tmp_path / "dask", two_workers, "--no-tracking"), tmp_path, "killed") as process:
        victim, pid = wait_until(checkpointed_pid, 120, "a cell running with a checkpoint")
        os.kill(pid, signal.SIGKILL)
        assert process.wait(180) == 0, process.log_path.read_text()
    assert process_gone(pid)
    for cell_id in ids:
        assert store.read_status(store.cell_dir(output, cell_id))["status"] == "completed"
    record = store.read_status(store.cell_dir(output, victim))
    assert record["attempts"] >= 2 and 0 < record["resumed_from_step"] < 100, record
    reference = run_main(local_args(suite, tmp_path / "local"), cwd=tmp_path)
    assert reference.code == 0, reference.err
    assert_same_results(tmp_path / "dask", tmp_path / "local")


def test_after_its_allowed_failures_a_task_fails_with_killed_worker_and_the_rest_go_on(two_workers):
    with two_workers.client() as client:
        executor = DaskExecutor(client)
        doomed = executor.submit(os._exit, 3, key="doomed")  # kills every worker that runs it
        with pytest.raises(WorkerDied, match="^KilledWorker: Attempted to run task 'doomed#"):
            doomed.result(timeout=120)
        assert executor.submit(pow, 2, 10, key="survivor").result(timeout=60) == 1024
        executor.shutdown()
        executor.close()
