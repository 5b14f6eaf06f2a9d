"""Tests of bench.tracking: the Tracker against sqlite and a real ``mlflow server``, and the worker
side (QueueHook events, apply_event). Every check reads back through a fresh MlflowClient."""
from __future__ import annotations

import json
import os
import pickle
import queue
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient
from PIL import Image

from bench import tracking
from bench.tracking import QueueHook, Tracker, apply_event

EXPERIMENT = "sqvae-bench-test"
CONFIG = {"dataset": "shapes", "model": "sqvae_gaussian", "seed": 0, "data_options": {},
          "model_options": {"size_dict": 16, "dim_dict": 8}, "train": {"lr": 1e-3, "betas": [0.9, 0.999]}}
SERVER_START_S = 60


# -- pure helpers --------------------------------------------------------------------------------
def test_default_and_resolved_uri(tmp_path, monkeypatch):
    uri = tracking.default_tracking_uri(tmp_path)
    assert uri == f"sqlite:///{tmp_path.resolve()}/mlflow.db" and uri.startswith("sqlite:////")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking.resolve_tracking_uri(None, tmp_path) == uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking.resolve_tracking_uri(None, tmp_path) == "http://127.0.0.1:5000"
    assert tracking.resolve_tracking_uri("file:///x", tmp_path) == "file:///x"


def test_ui_command():
    assert tracking.ui_command("sqlite:////a b/mlflow.db") == "mlflow ui --backend-store-uri 'sqlite:////a b/mlflow.db'"
    assert "open http://127.0.0.1:5000" in tracking.ui_command("http://127.0.0.1:5000")


def test_flatten_params():
    flat = tracking.flatten_params({**CONFIG, "long": "x" * 10_000, "none": None})
    assert flat["train.lr"] == "0.001" and flat["model_options.size_dict"] == "16"
    assert flat["train.betas.0"] == "0.9" and flat["train.betas.1"] == "0.999"
    assert flat["data_options"] == "{}" and flat["none"] == "None" and flat["seed"] == "0"
    assert len(flat["long"]) == tracking.PARAM_VALUE_LIMIT and flat["long"].endswith("...")
    assert all(isinstance(v, str) for v in flat.values())
    assert tracking.flatten_params({"a": {"b": 1}}, prefix="cfg.") == {"cfg.a.b": "1"}


# -- the Tracker flow, shared by the sqlite and server tests -----------------------------------------
def cell_tags(seed: int) -> dict:
    return {"dataset": "shapes", "model": "sqvae_gaussian", "seed": seed}


def run_suite_flow(tracker: Tracker, folder: Path) -> dict[str, str]:
    """A suite with a completed cell (per-epoch metrics, a PNG and a JSON) and a failed one."""
    images = folder / "images"
    images.mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(images / "recon_grid.png")
    (folder / "metrics.json").write_text(json.dumps({"test": {"mse": 0.01}}))
    suite = tracker.start_suite("tiny", params={"seeds": [0, 1], "workers": 2}, tags={"git_commit": "abc"})
    ok = tracker.start_cell("cell-ok", cell_tags(0), CONFIG)
    bad = tracker.start_cell("cell-bad", cell_tags(1), {**CONFIG, "seed": 1})
    for epoch in (1, 2, 3):
        tracker.log_metrics(ok, {"train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch, "none": None,
                                 "nan": float("nan")}, step=10 * epoch)
    tracker.log_artifacts(ok, [images])
    tracker.log_artifacts(ok, [folder / "metrics.json", folder / "missing.png"])
    tracker.finish_cell(ok, "completed", {"mse": 0.01, "perplexity": 12.5})
    tracker.finish_cell(bad, "failed", {}, reason="non-finite training loss (nan)")
    tracker.finish_suite("completed", {"completed": 1, "failed": 1, "note": "two cells"})
    return {"suite": suite, "ok": ok, "bad": bad}


def check_suite_flow(tracking_uri: str, ids: dict[str, str]) -> None:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{ids['suite']}'")
    runs = {run.info.run_id: run for run in children}
    assert set(runs) == {ids["ok"], ids["bad"]}
    ok, bad = runs[ids["ok"]], runs[ids["bad"]]
    assert ok.info.run_name == "shapes/sqvae_gaussian/s0" and bad.info.run_name == "shapes/sqvae_gaussian/s1"
    assert {k: ok.data.tags[k] for k in tracking.CELL_TAGS} == {
        "suite": "tiny", "dataset": "shapes", "model": "sqvae_gaussian", "seed": "0", "cell_id": "cell-ok",
        "status": "completed"}
    assert ok.data.params["train.lr"] == "0.001" and ok.data.params["model_options.size_dict"] == "16"
    assert bad.data.params["seed"] == "1"
    assert (ok.info.status, bad.info.status) == ("FINISHED", "FAILED")
    assert bad.data.tags["status"] == "failed" and bad.data.tags["reason"] == "non-finite training loss (nan)"
    history = client.get_metric_history(ids["ok"], "val_loss")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [(10, 2.0), (20, 1.0), (30, 2 / 3)]
    assert ok.data.metrics["test_mse"] == 0.01 and ok.data.metrics["test_perplexity"] == 12.5
    assert not {"none", "nan"} & set(ok.data.metrics)
    assert {a.path for a in client.list_artifacts(ids["ok"])} == {"images", "metrics.json"}
    assert [a.path for a in client.list_artifacts(ids["ok"], "images")] == ["images/recon_grid.png"]
    suite = client.get_run(ids["suite"])
    assert suite.info.status == "FINISHED" and suite.data.tags["status"] == "completed"
    assert suite.data.params == {"seeds.0": "0", "seeds.1": "1", "workers": "2"}
    assert suite.data.metrics == {"completed": 1.0, "failed": 1.0}
    assert [a.path for a in client.list_artifacts(ids["suite"])] == ["summary.json"]


# -- sqlite ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sqlite_tracker(tmp_path_factory) -> Tracker:
    """One database per module: creating its tables takes seconds."""
    return Tracker(tracking.default_tracking_uri(tmp_path_factory.mktemp("sqlite")), EXPERIMENT)


def test_tracker_sqlite(sqlite_tracker, tmp_path):
    ids = run_suite_flow(sqlite_tracker, tmp_path / "cell")
    check_suite_flow(sqlite_tracker.tracking_uri, ids)
    # Artifacts sit beside the database, not in ./mlruns of the current directory.
    db = Path(sqlite_tracker.tracking_uri[len("sqlite:///"):])
    assert (db.parent / "mlartifacts" / ids["ok"] / "artifacts" / "images" / "recon_grid.png").is_file()
    assert Tracker(sqlite_tracker.tracking_uri, EXPERIMENT).experiment_id == sqlite_tracker.experiment_id


def test_tracker_rejects_bad_input(sqlite_tracker):
    with pytest.raises(ValueError, match="seed"):
        sqlite_tracker.start_cell("c", {"dataset": "shapes", "model": "vqvae"}, {})
    run_id = sqlite_tracker.start_cell("c", cell_tags(2), {})
    with pytest.raises(ValueError, match="completed, pruned, failed, killed"):
        sqlite_tracker.finish_cell(run_id, "done", {})


# -- the worker side -----------------------------------------------------------------------------
def drain(q: queue.Queue) -> list:
    events = []
    while not q.empty():
        events.append(q.get_nowait())
    return events


def test_queue_hook_events():
    q = queue.Queue()
    hook = QueueHook(q, "c1", progress_every_s=0.0)
    hook.on_start(100, 20)
    hook.on_step(21)
    hook.on_log(30, {"loss": 1.5, "lr": 1e-3})
    hook.on_epoch(2, {"epoch": 2, "step": 40, "lr": 1e-3, "seconds": 3.0, "train_loss": 1.2,
                      "val_loss": 1.4, "temperature": 0.5, "val_mse": float("nan"), "note": "x"})
    events = drain(q)
    assert events == [
        ("start", "c1", {"total": 100, "step": 20}),
        ("progress", "c1", {"step": 21}),
        ("metrics", "c1", {"step": 30, "values": {"train_loss": 1.5, "train_lr": 1e-3}}),
        ("metrics", "c1", {"step": 40, "values": {"lr": 1e-3, "seconds": 3.0, "train_loss": 1.2,
                                                  "val_loss": 1.4, "temperature": 0.5}}),
    ]
    assert pickle.loads(pickle.dumps(events)) == events  # they cross a multiprocessing queue


def test_queue_hook_throttles_progress(monkeypatch):
    clock = iter([100.0, 100.1, 100.4, 100.6, 100.7, 101.2])
    monkeypatch.setattr(tracking.time, "monotonic", lambda: next(clock))
    q = queue.Queue()
    hook = QueueHook(q, "c1", progress_every_s=0.5)
    for step in range(1, 7):
        hook.on_step(step)
    assert [payload["step"] for _, _, payload in drain(q)] == [1, 4, 6]


def test_apply_event_logs_to_the_right_run(sqlite_tracker):
    run_ids = {"a": sqlite_tracker.start_cell("a", cell_tags(3), {}),
               "b": sqlite_tracker.start_cell("b", cell_tags(4), {})}
    assert apply_event(sqlite_tracker, run_ids, ("metrics", "b", {"step": 7, "values": {"val_loss": 0.5}}))
    assert not apply_event(sqlite_tracker, run_ids, ("progress", "a", {"step": 7}))
    assert not apply_event(sqlite_tracker, run_ids, ("start", "a", {"total": 9, "step": 0}))
    assert not apply_event(sqlite_tracker, run_ids, ("metrics", "unknown", {"step": 1, "values": {"x": 1.0}}))
    client = MlflowClient(sqlite_tracker.tracking_uri)
    assert [(m.step, m.value) for m in client.get_metric_history(run_ids["b"], "val_loss")] == [(7, 0.5)]
    assert client.get_metric_history(run_ids["a"], "val_loss") == []


# -- a real mlflow server ------------------------------------------------------------------------
def mlflow_executable() -> str | None:
    beside_python = Path(sys.executable).parent / "mlflow"
    return str(beside_python) if beside_python.exists() else shutil.which("mlflow")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A started ``mlflow server``; ``url()`` waits (bounded) until ``/health`` answers."""

    def __init__(self, exe: str, folder: Path):
        self.folder, self.port, self.log = folder, free_port(), folder / "server.log"
        command = [exe, "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                   "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                   "--serve-artifacts", "--artifacts-destination", str(folder / "artifacts")]
        env = {**os.environ, "NO_PROXY": "127.0.0.1"}
        with self.log.open("w") as out:  # own session: its uvicorn child is ended with it
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)

    def url(self) -> str:
        url, deadline = f"http://127.0.0.1:{self.port}", time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.process.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        return url
            except OSError:
                time.sleep(0.3)
        pytest.fail(f"mlflow server not healthy after {SERVER_START_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory):
    """Started with the module, so it boots (tens of seconds) while the other tests run; None
    when the mlflow executable is missing. Always stopped at the end of the module."""
    exe = mlflow_executable()
    if exe is None:
        yield None
        return
    server = ServerProcess(exe, tmp_path_factory.mktemp("server"))
    try:
        yield server
    finally:
        server.stop()


def test_tracker_server(mlflow_server, tmp_path):
    if mlflow_server is None:
        pytest.skip("the mlflow executable is not installed")
    url = mlflow_server.url()
    ids = run_suite_flow(Tracker(url, EXPERIMENT), tmp_path / "cell")
    check_suite_flow(url, ids)
    # The artifacts went through the server's proxy into its destination folder.
    assert list((mlflow_server.folder / "artifacts").rglob("recon_grid.png"))
