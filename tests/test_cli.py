"""End-to-end tests of the `sqvae-bench` CLI on tiny suites: run, failure isolation, resume after a
kill, --rerun, bad suite files, --dry-run, show, list and table.

Most commands run in-process through ``bench.cli.main`` (the cells still train in spawned worker
processes); the kill test and one exit-code check run the real command in a subprocess.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from mlflow import MlflowClient

from bench import store
from bench.data import dataset_names
from bench.metrics import METRICS
from bench.models import MODELS
from bench.suite import expand, load_suite
from bench.tracking import default_tracking_uri
from tests.conftest import (SHAPES_OPTIONS, TINY_MODEL_OPTIONS, cli_command, cli_env, run_main, run_subprocess,
                            write_suite)

PICTURES = {"recon_grid.png", "codebook_usage.png", "curves.png"}
TABLE_FILES = {"table.md", "table.tex", "table.csv", "tradeoff.png"}


def run_args(suite: Path, root: Path, *extra, workers: int = 2) -> list:
    return ["run", suite, "--output", root / "runs", "--results", root / "results", "--workers", workers,
            "--no-progress", *extra]


def status(output: Path, cell_id: str) -> dict:
    return store.read_status(store.cell_dir(output, cell_id))


def metrics(output: Path, cell_id: str) -> dict:
    return store.read_json(store.cell_dir(output, cell_id) / "metrics.json")


def mlflow_runs(output: Path) -> tuple[MlflowClient, list]:
    """Every run of every experiment in the sqlite store inside ``output``."""
    client = MlflowClient(default_tracking_uri(output))
    ids = [e.experiment_id for e in client.search_experiments()]
    return client, client.search_runs(ids, max_results=1000)


def cell_runs(runs: list) -> dict[str, list]:
    """cell id -> its MLflow runs (nested runs carry the cell_id tag)."""
    by_cell: dict[str, list] = {}
    for run in runs:
        if "cell_id" in run.data.tags:
            by_cell.setdefault(run.data.tags["cell_id"], []).append(run)
    return by_cell


def artifact_names(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    names = set()
    for item in client.list_artifacts(run_id, path):
        names |= artifact_names(client, run_id, item.path) if item.is_dir else {item.path}
    return names


# -- 1. a whole suite, end to end ------------------------------------------------------------------
@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """The tiny suite (vqvae and sqvae-gauss-1, seeds 0 and 1, 8 steps) run once with two workers."""
    root = tmp_path_factory.mktemp("e2e")
    suite = write_suite(root / "tiny.yaml")
    result = run_main(run_args(suite, root), cwd=root)
    cells = expand(load_suite(suite))
    return SimpleNamespace(root=root, suite=suite, output=root / "runs", results=root / "results", result=result,
                           cells=cells, ids=[c.cell_id for c in cells])


def test_run_end_to_end_writes_cell_folders_and_tables(e2e):
    assert e2e.result.code == 0, e2e.result.err
    assert len(e2e.ids) == 4
    assert sorted(p.name for p in (e2e.output / "cells").iterdir()) == sorted(e2e.ids)
    for cell in e2e.cells:
        folder = store.cell_dir(e2e.output, cell.cell_id)
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "status.json", "metrics.json", "env.json", "best.pt"} <= files
        assert {p.name for p in (folder / "images").glob("*.png")} == PICTURES
        record = status(e2e.output, cell.cell_id)
        assert record["status"] == "completed" and record["attempts"] == 1 and record["reason"] is None
        info = store.read_json(folder / "config.json")
        assert (info["cell_id"], info["suite"]) == (cell.cell_id, "tiny")
        assert (info["model"], info["seed"]) == (cell.model, cell.seed)
        assert info["config"] == json.loads(json.dumps(cell.config.to_dict()))
        result = metrics(e2e.output, cell.cell_id)
        assert result["steps"] == 8 and len(result["history"]) == 2  # 128 images / 32 = 4 steps an epoch
        assert {"mse", "perplexity", "usage"} <= set(result["test"])
        env = store.read_json(folder / "env.json")
        assert {"python", "torch", "git_commit", "device"} <= set(env) and env["device"] == "cpu"
    assert {p.name for p in e2e.results.iterdir()} >= TABLE_FILES
    out = e2e.result.out
    assert "tiny: 4 completed, 0 already done, 0 failed" in out
    assert "| model |" in out and "| vqvae |" in out and "| sqvae-gauss-1 |" in out
    assert (e2e.results / "table.md").read_text().strip() in out
    assert "mlflow ui --backend-store-uri" in out and not (e2e.output / ".lock").exists()


def test_run_end_to_end_mirrors_to_mlflow(e2e):
    client, runs = mlflow_runs(e2e.output)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 1 and len(runs) == 5
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["suite"] == "tiny"
    assert parent.data.metrics["completed"] == 4 and parent.data.metrics["failed"] == 0
    by_cell = cell_runs(runs)
    assert sorted(by_cell) == sorted(e2e.ids)
    for cell in e2e.cells:
        (run,) = by_cell[cell.cell_id]
        tags, params = run.data.tags, run.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id and run.info.status == "FINISHED"
        assert (tags["model"], tags["seed"]) == (cell.model, str(cell.seed))
        assert (tags["status"], tags["resumed_from_step"]) == ("completed", "0")
        assert params["train.lr"] == "0.001" and params["model_options.size_dict"] == "16"
        assert params["train.max_steps"] == "8" and params["data_options.size"] == "28"
        val = client.get_metric_history(run.info.run_id, "val_loss")
        assert sorted(m.step for m in val) == [4, 8]  # one point per epoch
        assert {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")} >= {2, 4, 6, 8}
        test = metrics(e2e.output, cell.cell_id)["test"]
        assert run.data.metrics["test_mse"] == pytest.approx(test["mse"])
        assert run.data.metrics["test_perplexity"] == pytest.approx(test["perplexity"])
        assert artifact_names(client, run.info.run_id) >= {"config.json", "metrics.json", *PICTURES}


# -- 2. failure isolation --------------------------------------------------------------------------
FAILING_SUITE = {
    "name": "failing",
    "datasets": {"shapes": {"options": SHAPES_OPTIONS, "model_options": TINY_MODEL_OPTIONS}},
    "models": {
        "vqvae": {},
        # sigma^2_x = 1e-300 underflows to 0 in float32: SSE / (2 sigma^2_x) is inf from step 1
        "vqvae-ema": {"options": {"recon": "fixed", "recon_variance": 1.0e-300}},
        # 10^6 codes of dimension 10^6 (4 TB of float32) cannot be allocated: RuntimeError
        "vqvae-reset": {"options": {"size_dict": 1000000, "dim_dict": 1000000}},
    },
    "train": {"epochs": 1, "max_steps": 4, "log_every": 2},
}


def test_failed_cells_are_isolated_and_reported(tmp_path):
    suite = write_suite(tmp_path / "failing.yaml", base=FAILING_SUITE)
    ids = {(c.dataset, c.model): c.cell_id for c in expand(load_suite(suite))}
    good, diverged, huge = ids["shapes", "vqvae"], ids["shapes", "vqvae-ema"], ids["shapes", "vqvae-reset"]
    result = run_main(run_args(suite, tmp_path), cwd=tmp_path)
    output = tmp_path / "runs"
    assert result.code == 1, result.err
    assert status(output, good)["status"] == "completed"
    reasons = {}
    for cell_id, error in ((diverged, "RunFailed: non-finite training loss"), (huge, "RuntimeError: ")):
        record = status(output, cell_id)
        assert record["status"] == "failed" and record["reason"].startswith(error)
        assert record["traceback"].startswith("Traceback") and error.split(":")[0] in record["traceback"]
        assert not (store.cell_dir(output, cell_id) / "metrics.json").exists()
        reasons[cell_id] = record["reason"]
    assert "failing: 1 completed, 0 already done, 2 failed" in result.out
    for cell_id, reason in reasons.items():
        assert f"  FAILED {cell_id}: {reason.splitlines()[0]}" in result.out
    assert "2 failed cells excluded" in result.out and (tmp_path / "results" / "table.md").exists()

    _, runs = mlflow_runs(output)
    by_cell = cell_runs(runs)
    assert by_cell[good][0].info.status == "FINISHED"
    for cell_id, reason in reasons.items():
        (run,) = by_cell[cell_id]
        assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
        assert run.data.tags["reason"] == reason
    (parent,) = [r for r in runs if "cell_id" not in r.data.tags]
    assert parent.info.status == "FAILED" and parent.data.metrics["failed"] == 2


def test_every_cell_failing_exits_1_without_tables(tiny_suite, tmp_path, monkeypatch):
    from bench import lifecycle, scheduler

    def all_failed(suite, cells, output, **kwargs):
        return scheduler.SuiteSummary(failed={c.cell_id: "RunFailed: non-finite training loss (nan)" for c in cells})

    monkeypatch.setattr(lifecycle, "run_cells", all_failed)
    result = run_main(run_args(tiny_suite, tmp_path, "--no-tracking"), cwd=tmp_path)
    assert result.code == 1, result.err
    assert "tiny: 0 completed, 0 already done, 4 failed" in result.out and result.out.count("  FAILED ") == 4
    assert "No completed cell, so no tables." in result.out and not (tmp_path / "results").exists()


# -- 3. resume after the scheduler is killed --------------------------------------------------------
def process_gone(pid: int) -> bool:
    """True when ``pid`` has exited (a zombie nobody reaped counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


RESUME_PATCH = {"name": "resume", "models": ["vqvae"], "train": {"max_steps": 40, "checkpoint_every": 5}}


@contextlib.contextmanager
def background(args: list, cwd: Path, name: str):
    """``sqvae-bench args`` running in a subprocess (output in cwd/<name>.log); killed on exit if still running."""
    log_path = cwd / f"{name}.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(cli_command(args), cwd=cwd, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
        process.log_path = log_path
        try:
            yield process
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def kill_between_cells(args: list, cwd: Path, output: Path, first: str, second: str) -> int:
    """Start ``sqvae-bench args`` and SIGKILL the scheduler (not its worker) once ``first`` is
    completed and ``second`` is running with a checkpoint. Returns the pid of the orphaned worker."""
    with background(args, cwd, "killed") as process:
        def interrupted() -> bool:
            if process.poll() is not None:
                pytest.fail(f"the run ended before it could be killed:\n{process.log_path.read_text()}")
            return (status(output, first)["status"] == "completed" and status(output, second)["status"] == "running"
                    and (store.cell_dir(output, second) / "checkpoint.pt").exists())

        wait_until(interrupted, 180, "one cell completed and the other checkpointed")
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
    return status(output, second)["pid"]


def test_resume_after_sigkill_gives_the_uninterrupted_results(tmp_path):
    suite = write_suite(tmp_path / "resume.yaml", RESUME_PATCH)
    first, second = [c.cell_id for c in expand(load_suite(suite))]
    output, reference = tmp_path / "killed" / "runs", tmp_path / "reference" / "runs"
    args = run_args(suite, tmp_path / "killed", workers=1)
    # the uninterrupted run of the same suite goes on meanwhile, in its own folder
    reference_args = run_args(suite, reference.parent, "--no-tracking", workers=1)
    with background(reference_args, tmp_path, "reference") as uninterrupted:
        worker = kill_between_cells(args, tmp_path, output, first, second)
        wait_until(lambda: process_gone(worker), 15, f"the orphaned worker {worker} to exit (ParentWatch)")
        assert status(output, second)["status"] == "running"
        done_before = status(output, first)
        metrics_before = (store.cell_dir(output, first) / "metrics.json").read_bytes()

        resumed = run_main(args, cwd=tmp_path)
        assert uninterrupted.wait(300) == 0, uninterrupted.log_path.read_text()
    assert resumed.code == 0, resumed.err
    assert "resume: 1 completed, 1 already done, 0 failed" in resumed.out
    assert status(output, first) == done_before
    assert (store.cell_dir(output, first) / "metrics.json").read_bytes() == metrics_before
    record = status(output, second)
    assert record["status"] == "completed" and record["attempts"] == 2

    _, runs = mlflow_runs(output)
    assert not [r for r in runs if r.info.status == "RUNNING"]  # the killed invocation's runs were ended
    by_cell = cell_runs(runs)
    assert len(by_cell[first]) == 1  # not run again
    killed = [r for r in by_cell[second] if r.info.status == "KILLED"]
    resumed_run = next(r for r in by_cell[second] if r.info.status == "FINISHED")
    if killed:  # the killed attempt's run (if its start event got through) is linked from the resumed one
        assert resumed_run.data.tags["previous_run_id"] == killed[0].info.run_id
    # the killed attempt's run (if its start event got through) started at 0, the resumed one later
    started = sorted(int(r.data.tags["resumed_from_step"]) for r in by_cell[second])
    assert started[:-1] in ([], [0]) and 0 < started[-1] < 40

    for cell_id in (first, second):
        got, want = metrics(output, cell_id), metrics(reference, cell_id)
        assert got["test"] == want["test"]  # exactly
        for key in ("steps", "best_epoch", "best_val_loss"):
            assert got[key] == want[key], key
        assert [h["val_loss"] for h in got["history"]] == [h["val_loss"] for h in want["history"]]


# -- 4. --rerun ------------------------------------------------------------------------------------
def test_rerun_moves_completed_folders_aside_and_a_plain_run_skips(e2e, tmp_path):
    assert e2e.result.code == 0
    shutil.copytree(e2e.output, tmp_path / "runs", ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    output = tmp_path / "runs"
    target = next(c.cell_id for c in e2e.cells if (c.model, c.seed) == ("vqvae", 0))
    before = {cell_id: status(output, cell_id) for cell_id in e2e.ids}

    args = run_args(e2e.suite, tmp_path, "--rerun", "--only", "model=vqvae,seed=0", "--no-tracking")
    result = run_main(args, cwd=tmp_path)
    assert result.code == 0, result.err
    assert "tiny: 1 completed, 0 already done, 0 failed" in result.out
    (archived,) = (output / "replaced").iterdir()
    assert archived.name.startswith(f"{target}-")
    assert store.read_status(archived) == before[target]
    assert (archived / "metrics.json").exists() and (archived / "best.pt").exists()
    again = status(output, target)
    assert again["status"] == "completed" and again["attempts"] == 1 and again["finished"] > before[target]["finished"]
    assert metrics(output, target)["test"] == store.read_json(archived / "metrics.json")["test"]  # same config and seed
    for cell_id in set(e2e.ids) - {target}:
        assert status(output, cell_id) == before[cell_id]

    after_rerun = {cell_id: status(output, cell_id) for cell_id in e2e.ids}
    started = time.monotonic()
    plain = run_main(run_args(e2e.suite, tmp_path, "--no-tracking"), cwd=tmp_path)
    assert plain.code == 0, plain.err
    assert "tiny: 0 completed, 4 already done, 0 failed" in plain.out
    assert {cell_id: status(output, cell_id) for cell_id in e2e.ids} == after_rerun
    assert len(list((output / "replaced").iterdir())) == 1
    assert time.monotonic() - started < 60  # no worker started


# -- 5. bad suites, --dry-run, show, list, table ---------------------------------------------------
BAD = {
    "unknown model": ({"models": ["vqvae", "vqvea"]}, "models.vqvea", "did you mean 'vqvae'?"),
    "misspelt key": ({"datasets": {"shapes": {"optons": {"size": 28}}}}, "datasets.shapes.optons",
                     "did you mean 'options'?"),
    "wrong type": ({"train": {"epochs": "three"}}, "train.epochs", "must be an integer"),
}


def assert_nothing_ran(root: Path) -> None:
    assert not (root / "runs").exists() and not (root / "results").exists()


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.code == 2 and result.out == ""
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sqvae-bench: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize("case", list(BAD))
def test_bad_suite_exits_2_before_running(tmp_path, case):
    patch, key_path, hint = BAD[case]
    suite = write_suite(tmp_path / "bad.yaml", patch)
    result = run_main(run_args(suite, tmp_path), cwd=tmp_path)
    assert_one_error_line(result, str(suite), key_path, hint)
    assert_nothing_ran(tmp_path)


def test_missing_suite_file_exits_2(tmp_path):
    result = run_main(run_args(tmp_path / "nope.yaml", tmp_path), cwd=tmp_path)
    assert_one_error_line(result, str(tmp_path / "nope.yaml"), "suite file not found", "smoke")
    assert_nothing_ran(tmp_path)


def test_bad_suite_exit_code_of_the_real_command(tmp_path):
    suite = write_suite(tmp_path / "bad.yaml", BAD["unknown model"][0])
    result = run_subprocess(run_args(suite, tmp_path), cwd=tmp_path)
    assert_one_error_line(result, str(suite), "models.vqvea", "did you mean 'vqvae'?")
    assert_nothing_ran(tmp_path)


@pytest.mark.parametrize("only, fragment", [("model=vqvae-ema", "selects no cell"),
                                            ("modle=vqvae", "--only: expected key=value")])
def test_bad_only_exits_2(tiny_suite, tmp_path, only, fragment):
    result = run_main(run_args(tiny_suite, tmp_path, "--only", only), cwd=tmp_path)
    assert_one_error_line(result, fragment)
    assert_nothing_ran(tmp_path)


def test_workers_below_one_exits_2(tiny_suite, tmp_path):
    assert_one_error_line(run_main(run_args(tiny_suite, tmp_path, workers=0), cwd=tmp_path), "--workers must be >= 1")
    assert_nothing_ran(tmp_path)


def test_dry_run_and_show_print_the_grid_without_running(tiny_suite, tmp_path):
    ids = [c.cell_id for c in expand(load_suite(tiny_suite))]
    dry = run_main(run_args(tiny_suite, tmp_path, "--dry-run"), cwd=tmp_path)
    shown = run_main(["show", tiny_suite, "--output", tmp_path / "runs"], cwd=tmp_path)
    for result in (dry, shown):
        assert result.code == 0, result.err
        assert f"suite tiny ({tiny_suite}): 4 cells -> {tmp_path / 'runs'}" in result.out
        assert [line.split()[0] for line in result.out.splitlines()[1:]] == ids
        for line in result.out.splitlines()[1:]:
            assert " pending " in line and "K=16 d=16 epochs=1 max_steps=8" in line
    only = run_main(["show", tiny_suite, "--only", "model=vqvae,seed=1", "--json"], cwd=tmp_path)
    (cell,) = json.loads(only.out)
    assert (cell["cell_id"], cell["model"], cell["seed"]) == (ids[1], "vqvae", 1)
    assert cell["model_options"]["size_dict"] == 16 and cell["train"]["max_steps"] == 8
    assert_nothing_ran(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_show_a_shipped_suite_by_name(tmp_path):
    result = run_main(["show", "paper", "--only", "dataset=celebamask-hq,seed=0"], cwd=tmp_path)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    assert lines[0].startswith("suite paper (") and ": 4 cells -> runs/paper" in lines[0]
    assert all("K=64 d=65 epochs=70" in line for line in lines[1:])
    assert not (tmp_path / "runs").exists()


def test_show_reports_statuses_of_a_run_folder(e2e):
    result = run_main(["show", e2e.suite, "--output", e2e.output], cwd=e2e.root)
    assert result.code == 0 and result.out.count(" completed ") == 4


def test_list_prints_models_datasets_suites_studies_and_metrics(tmp_path):
    result = run_main(["list"], cwd=tmp_path)
    assert result.code == 0
    sections: dict[str, list[str]] = {}
    for line in result.out.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            current = sections.setdefault(line[:-1], [])
        else:
            current.append(line.split()[0])
    assert list(sections) == ["models", "datasets", "suites", "studies", "metrics"]
    assert sections["studies"] == ["paper", "smoke"]
    assert sections["models"] == MODELS.names() and len(sections["models"]) == 9
    assert sections["datasets"] == dataset_names()
    assert {"mnist", "fashion-mnist", "cifar10", "celeba", "celebamask-hq", "shapes"} <= set(sections["datasets"])
    assert sections["suites"] == ["minimal-sqvae", "minimal-sqvae-shapes", "paper", "smoke"]
    assert sections["metrics"] == METRICS.names()
    models = run_main(["list", "models"], cwd=tmp_path).out
    assert models.splitlines()[0] == "models:" and "Gaussian SQ-VAE type I " in models and "datasets:" not in models


def test_table_rebuilds_the_tables_from_the_folders_alone(e2e, tmp_path):
    result = run_main(["table", e2e.output, "--results", tmp_path / "tables"], cwd=tmp_path)
    assert result.code == 0, result.err
    assert {p.name for p in (tmp_path / "tables").iterdir()} == TABLE_FILES
    rebuilt, written = (sorted((folder / "table.csv").read_text().splitlines())
                        for folder in (tmp_path / "tables", e2e.results))
    assert rebuilt == written  # the same rows (ordered by cell id here, by the suite's grid there)
    assert (tmp_path / "tables" / "table.md").read_text().strip() in result.out
    by_suite = run_main(["table", e2e.suite, "--output", e2e.output, "--results", tmp_path / "by-suite"], cwd=tmp_path)
    assert by_suite.code == 0
    assert (tmp_path / "by-suite" / "table.md").read_text() == (e2e.results / "table.md").read_text()


def test_table_without_results_exits_2(tmp_path):
    (tmp_path / "runs" / "cells").mkdir(parents=True)
    result = run_main(["table", tmp_path / "runs", "--results", tmp_path / "tables"], cwd=tmp_path)
    assert_one_error_line(result, "no completed cells")
