"""`sqvae-bench tune` end to end on tiny studies: trials, pruning, the final stage and its table,
MLflow runs, an exact budget under two processes and after a SIGKILL, and a test split no trial reads.

Trials train on 128 generated ``shapes`` images (4 steps an epoch) for 2 epochs; each takes a second or
two on one core, plus a few seconds to spawn the workers.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow import MlflowClient
from optuna.trial import TrialState

from bench.tracking import default_tracking_uri
from bench.tune import JOURNAL, STALE, open_storage
from tests.conftest import SHAPES_OPTIONS, TINY_MODEL_OPTIONS, cli_command, cli_env, run_main
from tests.test_cli import wait_until

TINY_STUDY = {
    "name": "tiny",
    "datasets": {"shapes": {"options": SHAPES_OPTIONS, "model_options": TINY_MODEL_OPTIONS}},
    "models": ["vqvae", "sqvae-gauss-1"],
    "seeds": [0, 1],
    "train": {"log_every": 2},
    "search_space": {"all": {"train.lr": {"type": "categorical", "choices": [1.0e-3, 1.0e-9]}}},
    "objective": "mse",
    "budget": {"trials": 3, "epochs": 2},
    "sampler": {"name": "random", "seed": 0},
    "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
    "final": {"seeds": [0, 1], "train": {"epochs": 1}},
}


def write_study(path: Path, **changes) -> Path:
    study = {**TINY_STUDY, **changes}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path.resolve()


def tune_args(study: Path, root: Path, *extra, workers: int = 1) -> list:
    return ["tune", study, "--output", root / "runs", "--results", root / "results", "--workers", workers,
            "--no-progress", *extra]


def trials_of(root: Path, name: str) -> list:
    storage = open_storage(str(root / "runs" / JOURNAL))
    return optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)


def finished(trials) -> list:
    return [t for t in trials if t.state.is_finished() and not t.user_attrs.get(STALE)]


def enqueue(root: Path, name: str, params: list[dict]) -> None:
    """Queue trials with fixed parameters in the study's storage before `tune` runs them."""
    (root / "runs").mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=open_storage(str(root / "runs" / JOURNAL)),
                                load_if_exists=True)
    for p in params:
        study.enqueue_trial(p)


# -- end to end ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The tiny study, with a good then a hopeless learning rate queued first in each pair, so the
    median pruner (one startup trial) must prune the second trial after its first epoch."""
    root = tmp_path_factory.mktemp("tune")
    study = write_study(root / "tiny.yaml")
    for model in ("vqvae", "sqvae-gauss-1"):
        enqueue(root, f"tiny/shapes/{model}", [{"train.lr": 1.0e-3}, {"train.lr": 1.0e-9}])
    result = run_main(tune_args(study, root), cwd=root)
    return root, result


def test_tune_runs_the_budget_prunes_and_prints_the_tuned_table(tuned):
    root, result = tuned
    assert result.code == 0, result.err
    for model in ("vqvae", "sqvae-gauss-1"):
        trials = trials_of(root, f"tiny/shapes/{model}")
        assert len(finished(trials)) == 3 == len(trials)  # exactly the budget
        assert trials[0].state == TrialState.COMPLETE and trials[0].params == {"train.lr": 1.0e-3}
        assert trials[1].state == TrialState.PRUNED and trials[1].params == {"train.lr": 1.0e-9}
        assert list(trials[1].intermediate_values) == [1]  # pruned after its first epoch, not trained on
        best = min((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
        # the objective is the validation MSE of the best epoch, as the pruning hook saw it after that epoch
        assert best.value == best.intermediate_values[best.user_attrs["best_epoch"]]
    out = result.out
    assert "shapes/vqvae: " in out and " pruned" in out and "best trial" in out
    assert "| vqvae |" in out and "| sqvae-gauss-1 |" in out  # the final table
    assert "optuna-dashboard " in out and "mlflow ui" in out
    tuned_suite = yaml.safe_load((root / "results" / "tuned.yaml").read_text())
    assert tuned_suite["seeds"] == [0, 1]
    final_cells = list((root / "runs" / "final" / "cells").iterdir())
    assert len(final_cells) == 4  # 2 models x 2 final seeds, tested
    assert all((c / "metrics.json").exists() for c in final_cells)
    assert (root / "results" / "table.md").exists()
    plots = {p.name for p in (root / "results" / "plots").iterdir()}
    assert {"shapes_vqvae_history.png", "shapes_vqvae_parallel.png"} <= plots


def test_tune_mirrors_the_study_and_every_trial_to_mlflow(tuned):
    root, _ = tuned
    client = MlflowClient(default_tracking_uri(root / "runs"))
    experiment = client.get_experiment_by_name("sqvae-bench/study/tiny")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("stage") == "search"]
    trials = [r for r in runs if "trial" in r.data.tags]
    assert len(trials) == 6
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    states = [r.data.tags["state"] for r in trials]
    assert states.count("pruned") >= 2 and states.count("complete") >= 2 and set(states) <= {"complete", "pruned"}
    pruned = [r for r in trials if r.data.tags["state"] == "pruned"]
    assert all(r.info.status == "FINISHED" and r.data.tags["status"] == "pruned" for r in pruned)
    complete = [r for r in trials if r.data.tags["state"] == "complete"]
    assert all("objective_mse" in r.data.metrics and "val_mse" in r.data.metrics for r in complete)
    assert all(r.data.params["search.train.lr"] in ("0.001", "1e-09") for r in trials)
    final = client.get_experiment_by_name("sqvae-bench/tiny-tuned")
    assert len([r for r in client.search_runs([final.experiment_id]) if "cell_id" in r.data.tags]) == 4


def test_final_only_reuses_the_search_and_the_untuned_run_shows_beside(tuned, tmp_path):
    root, _ = tuned
    untuned = run_main(["run", root / "results" / "tuned.yaml", "--output", tmp_path / "untuned",
                        "--results", tmp_path / "untuned-results", "--no-progress", "--no-tracking"], cwd=root)
    assert untuned.code == 0, untuned.err
    again = run_main(tune_args(root / "tiny.yaml", root, "--final-only", "--no-tracking", "--untuned",
                               tmp_path / "untuned"), cwd=root)
    assert again.code == 0, again.err
    assert "0 completed, 4 already done" in again.out
    assert "ref " in again.out and "Δ +0" in again.out  # the same configs: no difference


# -- the test split --------------------------------------------------------------------------------
POISON = '''
"""A dataset whose test split fails the run when read: trials must never read it."""
from bench.data import DataSpec, register_dataset
from bench.data.shapes import load_shapes


def load(root, download, seed, *, with_test=True):
    if with_test:
        raise RuntimeError("the test split of poisoned-shapes was read")
    return load_shapes(root, download, seed, size=28, n_train=128, n_val=32, n_test=32, with_test=False)


register_dataset("poisoned-shapes", load, DataSpec("poisoned-shapes", "image", 3, 28))
'''


@pytest.fixture
def poison_plugin(tmp_path, monkeypatch):
    """The plugin module above, imported by the CLI and its workers; unregistered afterwards."""
    from bench.data import DATASETS

    (tmp_path / "poison_plugin.py").write_text(textwrap.dedent(POISON))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("SQVAE_BENCH_PLUGINS", "poison_plugin")
    yield
    if "poisoned-shapes" in DATASETS:
        DATASETS.unregister("poisoned-shapes")
    sys.modules.pop("poison_plugin", None)


def test_no_trial_reads_the_test_split(tmp_path, poison_plugin):
    study = write_study(tmp_path / "poisoned.yaml", name="poisoned",
                        datasets={"poisoned-shapes": {"model_options": TINY_MODEL_OPTIONS}}, models=["vqvae"],
                        budget={"trials": 2, "epochs": 1}, pruner={"name": "none"})
    searched = run_main(tune_args(study, tmp_path, "--search-only", "--no-tracking"), cwd=tmp_path)
    assert searched.code == 0, searched.err + searched.out
    assert len(finished(trials_of(tmp_path, "poisoned/poisoned-shapes/vqvae"))) == 2
    final = run_main(tune_args(study, tmp_path, "--final-only", "--no-tracking"), cwd=tmp_path)
    assert final.code == 1 and "the test split of poisoned-shapes was read" in final.out  # the poison works


# -- budget under concurrency and kills ---------------------------------------------------------------
def test_two_tune_processes_on_one_storage_run_exactly_the_budget(tmp_path):
    study = write_study(tmp_path / "pair.yaml", models=["vqvae"], budget={"trials": 5, "epochs": 1},
                        pruner={"name": "none"})
    args = [str(a) for a in tune_args(study, tmp_path, "--search-only", "--no-tracking")]
    procs = [subprocess.Popen(cli_command(args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    trials = trials_of(tmp_path, "tiny/shapes/vqvae")
    assert len(trials) == 5 and len(finished(trials)) == 5
    assert sorted(t.number for t in trials) == list(range(5))
    owners = {t.user_attrs["owner"] for t in trials}
    assert len(owners) == 2  # both processes ran trials


def test_sigkill_mid_study_then_resume_keeps_finished_trials_and_reruns_the_interrupted(tmp_path):
    study = write_study(tmp_path / "kill.yaml", models=["vqvae"], budget={"trials": 3, "max_steps": 120},
                        pruner={"name": "none"}, search_space={"all": {"train.lr": {
                            "type": "float", "low": 1.0e-4, "high": 1.0e-3, "log": True}}})
    args = [str(a) for a in tune_args(study, tmp_path, "--search-only", "--no-tracking")]
    log = open(tmp_path / "killed.log", "w")
    proc = subprocess.Popen(cli_command(args), cwd=tmp_path, env=cli_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        def second_running():
            if proc.poll() is not None:
                pytest.fail((tmp_path / "killed.log").read_text())
            if not (tmp_path / "runs" / JOURNAL).exists():
                return False
            trials = trials_of(tmp_path, "tiny/shapes/vqvae")
            return len(trials) == 2 and trials[0].state == TrialState.COMPLETE and trials[1].state == TrialState.RUNNING

        wait_until(second_running, 240, "trial 0 complete and trial 1 running", interval=0.5)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    before = trials_of(tmp_path, "tiny/shapes/vqvae")
    resumed = run_main(args, cwd=tmp_path)
    assert resumed.code == 0, resumed.err
    trials = trials_of(tmp_path, "tiny/shapes/vqvae")
    assert trials[0].datetime_complete == before[0].datetime_complete  # kept, not re-run
    stale = [t for t in trials if t.user_attrs.get(STALE)]
    assert [t.number for t in stale] == [1] and stale[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 1]
    assert retry.params == stale[0].params and retry.state == TrialState.COMPLETE
    assert len(finished(trials)) == 3  # the budget still holds


def test_a_diverging_trial_fails_with_its_reason_counts_and_exits_1(tmp_path):
    # sigma^2_x = 1e-300 underflows to 0 in float32: the loss is inf from the first step
    study = write_study(tmp_path / "nan.yaml", name="nan", models={"vqvae-ema": {"options": {"recon": "fixed"}}},
                        search_space={"all": {"recon_variance": {"type": "categorical", "choices": [1.0e-300]}}},
                        budget={"trials": 2, "epochs": 1}, pruner={"name": "none"})
    result = run_main(tune_args(study, tmp_path, "--no-tracking"), cwd=tmp_path)
    assert result.code == 1, result.err
    trials = trials_of(tmp_path, "nan/shapes/vqvae-ema")
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials)  # failed trials count
    assert all(t.user_attrs["reason"].startswith("RunFailed: non-finite") for t in trials)
    assert "2 fail" in result.out and "no completed trial" in result.out
    assert result.err.count("failed: RunFailed") == 2 and not (tmp_path / "runs" / "final").exists()


def test_dry_run_prints_the_spaces_and_creates_nothing(tmp_path):
    study = write_study(tmp_path / "tiny.yaml")
    result = run_main(tune_args(study, tmp_path, "--dry-run"), cwd=tmp_path)
    assert result.code == 0, result.err
    assert "train.lr" in result.out and "mse" in result.out and "storage:" in result.out
    assert not (tmp_path / "runs").exists()


def test_an_unreachable_tracking_server_stops_tune_before_anything_is_created(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    study = write_study(tmp_path / "tiny.yaml")
    result = run_main(tune_args(study, tmp_path, "--tracking-uri", f"http://127.0.0.1:{port}"), cwd=tmp_path)
    assert result.code == 2 and "--tracking-optional" in result.err
    assert not (tmp_path / "runs").exists()


def test_bad_only_for_a_study_exits_2(tmp_path):
    study = write_study(tmp_path / "tiny.yaml")
    result = run_main(tune_args(study, tmp_path, "--only", "seed=0"), cwd=tmp_path)
    assert result.code == 2 and "not seeds" in result.err
    result = run_main(tune_args(study, tmp_path, "--only", "model=vqvae-ema"), cwd=tmp_path)
    assert result.code == 2 and "selects no" in result.err


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
