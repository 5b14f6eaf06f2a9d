"""Same resolved config, same numbers: on the CPU, bit for bit, whatever the calling process's thread
count (a worker of ``--workers 1`` had two threads, of ``--workers 2`` one) and however often it runs;
and a cell resumed under another numerical path says so."""
from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient

from bench import numerics, store
from bench.run import RunConfig, resolve_run_config, run_cell
from bench.suite import expand, load_suite
from bench.tracking import default_tracking_uri
from bench.train import TrainConfig
from tests.conftest import SHAPES_OPTIONS, TINY_MODEL_OPTIONS, run_main, write_suite


def tiny_config(model: str) -> RunConfig:
    return resolve_run_config(RunConfig(dataset="shapes", model=model, seed=3, data_options=SHAPES_OPTIONS,
                                        model_options=TINY_MODEL_OPTIONS,
                                        train=TrainConfig(epochs=2, max_steps=12, log_every=4)))


def run_with_caller_threads(config: RunConfig, threads: int) -> dict:
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        result = run_cell(config)
    finally:
        torch.set_num_threads(saved)
    return {"test": result["test"], "best_val_loss": result["best_val_loss"], "best_epoch": result["best_epoch"],
            "val_loss": [h["val_loss"] for h in result["history"]]}


@pytest.mark.parametrize("model", ["vqvae", "sqvae-gauss-1"])  # vqvae's codebook lookup is an index accumulate
def test_one_cell_with_one_and_two_threads_gives_the_same_metrics(model):
    config = tiny_config(model)
    one = run_with_caller_threads(config, 1)
    two = run_with_caller_threads(config, 2)
    again = run_with_caller_threads(config, 2)
    assert one == two == again  # exactly, not approximately


def test_numerics_restores_the_callers_settings():
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    with numerics.numerics(threads=1, deterministic=True):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == saved


def test_changed_names_each_numerical_setting_that_differs():
    old = numerics.record(torch.device("cpu"), threads=1, deterministic=True, precision="fp32")
    new = {**old, "threads": 2, "torch": "9.9", "host": "elsewhere"}
    assert numerics.changed(old, new) == ["torch '%s' -> '9.9'" % old["torch"], "threads 1 -> 2"]
    assert numerics.changed(old, dict(old)) == []


def args_for(suite, root, *extra, workers):
    return ["run", suite, "--output", root / "runs", "--results", root / "results", "--workers", workers,
            "--no-progress", *extra]


def test_workers_1_and_2_give_the_same_metrics(tiny_suite, tmp_path):
    results = {}
    for workers in (1, 2):
        root = tmp_path / f"w{workers}"
        done = run_main(args_for(tiny_suite, root, "--no-tracking", workers=workers), cwd=tmp_path)
        assert done.code == 0, done.err
        results[workers] = {c.cell_id: store.read_json(store.cell_dir(root / "runs", c.cell_id) / "metrics.json")["test"]
                            for c in expand(load_suite(tiny_suite))}
        env = store.read_json(next((root / "runs" / "cells").iterdir()) / "env.json")
        assert env["threads"] == 1 and env["deterministic"] is True and env["device_type"] == "cpu"
    assert results[1] == results[2]
    assert (tmp_path / "w1" / "results" / "table.md").read_text() == (tmp_path / "w2" / "results" / "table.md").read_text()


def test_a_cell_resumed_under_another_numerical_path_says_so(tmp_path):
    suite = write_suite(tmp_path / "one.yaml", {"models": ["vqvae"], "seeds": [0],
                                                "train": {"max_steps": 6, "checkpoint_every": 2}})
    (cell,) = expand(load_suite(suite))
    folder = store.cell_dir(tmp_path / "runs", cell.cell_id)
    first = run_main(args_for(suite, tmp_path, workers=1), cwd=tmp_path)
    assert first.code == 0, first.err
    # as if it had been interrupted after its last checkpoint, by a run with 3 threads
    env = store.read_json(folder / "env.json")
    store.write_json(folder / "env.json", {**env, "threads": 3})
    store.write_status(folder, "failed", reason="killed")
    resumed = run_main(args_for(suite, tmp_path, workers=1), cwd=tmp_path)
    assert resumed.code == 0, resumed.err
    status = store.read_status(folder)
    assert status["status"] == "completed"
    (warning,) = status["warnings"]
    assert "threads 3 -> 1" in warning and cell.cell_id in warning
    assert "threads 3 -> 1" in resumed.err
    client = MlflowClient(default_tracking_uri(tmp_path / "runs"))
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.cell_id = '{cell.cell_id}'")
    assert any("threads 3 -> 1" in r.data.tags.get("warning", "") for r in runs)
    assert json.loads((folder / "env.json").read_text())["threads"] == 1
