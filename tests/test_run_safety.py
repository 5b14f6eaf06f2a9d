"""A run never loses a result: one process per output folder (an atomic lock), tracking failures that
cost nothing, an unreachable tracking server caught at once, runs left RUNNING ended as KILLED, Ctrl-C
recorded, and a dead worker that fails only its own cell."""
from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from bench import store
from bench.errors import ConfigError
from bench.lock import OutputLock
from bench.suite import expand, load_suite
from bench.tracking import Tracker
from tests.conftest import cli_command, cli_env, run_main, run_subprocess, write_suite
from tests.test_cli import background, cell_runs, mlflow_runs, process_gone, status, wait_until


def run_args(suite: Path, root: Path, *extra, workers: int = 2) -> list:
    return ["run", suite, "--output", root / "runs", "--results", root / "results", "--workers", workers,
            "--no-progress", *extra]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- the output lock -------------------------------------------------------------------------------
def _try_lock(output: str, barrier, results) -> None:
    barrier.wait()
    try:
        lock = OutputLock(Path(output)).acquire()
    except ConfigError as err:
        results.put(("refused", str(err)))
        return
    results.put(("held", ""))
    time.sleep(0.3)  # hold it while the other tries
    lock.release()


def test_two_processes_started_together_exactly_one_gets_the_lock(tmp_path):
    context = multiprocessing.get_context("fork")
    for attempt in range(10):
        output = tmp_path / f"out{attempt}"
        barrier, results = context.Barrier(2), context.Queue()
        procs = [context.Process(target=_try_lock, args=(str(output), barrier, results)) for _ in range(2)]
        for proc in procs:
            proc.start()
        outcomes = sorted(results.get(timeout=20) for _ in procs)
        for proc in procs:
            proc.join(10)
        assert [kind for kind, _ in outcomes] == ["held", "refused"]
        message = outcomes[1][1]
        assert str(output) in message and "pid " in message and "remove" in message


def test_a_lock_whose_holder_died_or_holds_garbage_is_taken_over(tmp_path):
    holder = subprocess.Popen([*cli_command([])[:1], "-c", "import sys, time; from pathlib import Path; "
                               "from bench.lock import OutputLock; OutputLock(Path(sys.argv[1])).acquire(); "
                               "print('held', flush=True); time.sleep(60)", str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"pid {holder.pid}"):
            OutputLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(tmp_path):  # the dead holder's lock is gone with it
        pass
    (tmp_path / ".lock").write_text("not-a-pid")
    with OutputLock(tmp_path):
        assert (tmp_path / ".lock").read_text().split()[0] == str(os.getpid())


def test_two_runs_started_together_on_a_new_output(tiny_suite, tmp_path):
    args = run_args(tiny_suite, tmp_path, workers=1)
    procs = [subprocess.Popen(cli_command(args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcomes = sorted((p.wait(300), *p.communicate()) for p in procs)
    (code_ok, out_ok, err_ok), (code_refused, _, err_refused) = outcomes
    assert code_ok == 0, err_ok
    assert code_refused == 2
    assert "Traceback" not in err_refused and len(err_refused.strip().splitlines()) == 1
    assert str(tmp_path / "runs") in err_refused and "in use by another sqvae-bench process (pid" in err_refused
    third = run_subprocess(args, cwd=tmp_path)  # the MLflow database is fine for later runs
    assert third.code == 0 and "0 completed, 4 already done" in third.out, third.err


# -- tracking failures -----------------------------------------------------------------------------
def test_a_tracking_store_that_fails_mid_suite_costs_nothing(tiny_suite, tmp_path, monkeypatch):
    original, calls = Tracker.finish_cell, []

    def failing_after_first(self, run_id, *args, **kwargs):
        calls.append(run_id)
        if len(calls) > 1:
            raise OSError("attempt to write a readonly database")
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(Tracker, "finish_cell", failing_after_first)
    result = run_main(run_args(tiny_suite, tmp_path, workers=1), cwd=tmp_path)
    assert result.code == 0, result.err
    assert "tiny: 4 completed" in result.out and (tmp_path / "results" / "table.md").exists()
    warnings = [line for line in result.err.splitlines() if "MLflow tracking failed" in line]
    assert len(warnings) == 1 and "readonly database" in warnings[0] and "Traceback" not in result.err
    ids = [c.cell_id for c in expand(load_suite(tiny_suite))]
    missing = [i for i in ids if i in result.out.split("not in MLflow: ")[1].splitlines()[0]]
    assert len(missing) == 3

    monkeypatch.setattr(Tracker, "finish_cell", original)
    again = run_main(run_args(tiny_suite, tmp_path, workers=1), cwd=tmp_path)
    assert again.code == 0, again.err
    assert "mirrored 3 earlier cell(s)" in again.out
    client, runs = mlflow_runs(tmp_path / "runs")
    by_cell = cell_runs(runs)
    for cell_id in ids:
        finished = [r for r in by_cell[cell_id] if r.info.status == "FINISHED"]
        assert len(finished) == 1 and "test_mse" in finished[0].data.metrics
    # the run whose finish failed was left open: the next run ended it KILLED, and mirrored the folder
    assert sorted(r.info.status for i in missing for r in by_cell[i]) == ["FINISHED"] * 3 + ["KILLED"]
    for cell_id in missing:
        history = client.get_metric_history(
            next(r for r in by_cell[cell_id] if r.info.status == "FINISHED").info.run_id, "val_loss")
        folder_history = store.read_json(store.cell_dir(tmp_path / "runs", cell_id) / "metrics.json")["history"]
        assert [m.value for m in history] == [h["val_loss"] for h in folder_history]
    assert not [r for r in runs if r.info.status == "RUNNING"]


def test_an_unreachable_tracking_server_is_one_message_within_seconds(tiny_suite, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = run_subprocess(run_args(tiny_suite, tmp_path, "--tracking-uri", uri), cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < 10
    assert result.code == 2 and "Traceback" not in result.err
    (line,) = result.err.strip().splitlines()
    assert line.startswith("sqvae-bench: error: --tracking-uri " + uri) and "--tracking-optional" in line
    assert not (tmp_path / "runs").exists()


def test_tracking_optional_runs_without_the_server_and_sync_mirrors_later(tiny_suite, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    args = run_args(tiny_suite, tmp_path, "--tracking-uri", uri, "--tracking-optional", "--only", "seed=0")
    result = run_main(args, cwd=tmp_path)
    assert result.code == 0, result.err
    assert result.err.count("running WITHOUT tracking") == 1 and "MLflow: " not in result.out
    synced = run_main(["sync", tmp_path / "runs"], cwd=tmp_path)
    assert synced.code == 0, synced.err
    assert "tiny: mirrored 2 cell(s)" in synced.out
    by_cell = cell_runs(mlflow_runs(tmp_path / "runs")[1])
    assert len(by_cell) == 2 and all(r.info.status == "FINISHED" and r.data.tags["mirrored_from_folder"] == "true"
                                     for runs in by_cell.values() for r in runs)
    assert run_main(["sync", tmp_path / "runs"], cwd=tmp_path).out.startswith("tiny: mirrored 0 cell(s)")


# -- interruptions ---------------------------------------------------------------------------------
LONG = {"name": "long", "models": ["vqvae", "vqvae-ema"], "seeds": [0],
        "train": {"max_steps": 400, "checkpoint_every": 10}}


def running_pids(output: Path, ids: list[str]) -> dict[str, int]:
    records = {i: status(output, i) for i in ids}
    return {i: r["pid"] for i, r in records.items()
            if r.get("status") == "running" and (store.cell_dir(output, i) / "checkpoint.pt").exists()}


def test_ctrl_c_records_the_interrupted_cells_and_ends_mlflow_runs_as_killed(tmp_path):
    suite = write_suite(tmp_path / "long.yaml", LONG)
    ids = [c.cell_id for c in expand(load_suite(suite))]
    output = tmp_path / "runs"
    with background(run_args(suite, tmp_path), tmp_path, "interrupted") as process:
        wait_until(lambda: len(running_pids(output, ids)) == 2, 120, "both cells running with a checkpoint")
        workers = running_pids(output, ids).values()
        process.send_signal(signal.SIGINT)
        assert process.wait(60) == 130, process.log_path.read_text()
    assert "Traceback" not in process.log_path.read_text()
    for cell_id in ids:
        record = status(output, cell_id)
        assert record["status"] == "failed" and record["reason"].startswith("interrupted")
    for pid in workers:
        wait_until(lambda: process_gone(pid), 15, f"worker {pid} to stop")
    _, runs = mlflow_runs(output)
    assert runs and {r.info.status for r in runs} == {"KILLED"}


def test_a_killed_worker_fails_only_its_own_cell(tmp_path):
    suite = write_suite(tmp_path / "long.yaml", LONG)
    ids = [c.cell_id for c in expand(load_suite(suite))]
    output = tmp_path / "runs"
    with background(run_args(suite, tmp_path), tmp_path, "worker-killed") as process:
        pids = wait_until(lambda: (p := running_pids(output, ids)) and len(p) == 2 and p, 120, "two running cells")
        victim, survivor = ids
        os.kill(pids[victim], signal.SIGKILL)
        assert process.wait(300) == 1, process.log_path.read_text()
    assert status(output, survivor)["status"] == "completed"
    record = status(output, victim)
    assert record["status"] == "failed" and record["reason"].startswith("WorkerDied")
    assert "signal 9" in record["reason"]
    resumed = run_main(run_args(suite, tmp_path), cwd=tmp_path)  # and it resumes from its checkpoint
    assert resumed.code == 0 and "1 completed, 1 already done" in resumed.out, resumed.err
    steps = [int(r.data.tags["resumed_from_step"]) for r in cell_runs(mlflow_runs(output)[1])[victim]]
    assert any(0 < step < 400 for step in steps), steps
