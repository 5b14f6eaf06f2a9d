"""The MLflow mirror of one suite invocation, written by the client process alone.

The cell folders (``bench.store``) are the source of truth; MLflow mirrors them, and a tracking
failure never costs a result:

- ``open_tracker`` checks the tracking URI before anything runs: an MLflow server that does not answer
  within seconds, or a database that cannot be opened, is one ``ConfigError`` (exit 2).
- Every write goes through ``Mirror._guard``. The first error is reported once (one line), tracking
  is off for the rest of the invocation, training and tables go on, and the cells MLflow did not get
  are listed at the end (``Mirror.missed``).
- ``Mirror.sync`` mirrors every finished cell folder of the suite that has no finished run in MLflow
  (params, per-epoch history, test metrics, pictures). ``run`` calls it at its end; the
  ``sqvae-bench sync`` command calls it on a run folder.
- Runs left RUNNING by a dead invocation of the same output folder (a SIGKILL, a crash) are ended as
  KILLED when the folder is next run (the lock says no other process is using it); a resumed cell's
  new run carries the tag ``previous_run_id``. Ctrl-C ends the open runs as KILLED (``kill_open``).
Runs are matched to folders by the tags ``cell_id`` and ``output`` (the absolute output folder).
"""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from bench import store
from bench.errors import BenchError, ConfigError
from bench.tracking import EVENT_WARNING, TAG_CELL_ID, TAG_STATUS, Tracker, apply_event, flatten_params

TAG_OUTPUT = "output"
TAG_PREVIOUS = "previous_run_id"
TAG_MIRRORED = "mirrored_from_folder"
FINAL = ("completed", "failed")
CHECK_TIMEOUT_S = 5
# MLflow retries an unanswered HTTP request 7 times with backoff (minutes of silence); fewer here.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


def _warn(message: str) -> None:
    print(f"sqvae-bench: warning: {message}", file=sys.stderr)


def check_tracking_uri(uri: str, timeout_s: float = CHECK_TIMEOUT_S) -> None:
    """An http(s) tracking URI must answer within ``timeout_s`` (its /health page); else ConfigError."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # it answered: a server is there (a proxy without /health still counts)
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"--tracking-uri {uri}: no MLflow server answered within {timeout_s:g} s ({reason}); "
                          "start it, fix the URI, pass --no-tracking, or --tracking-optional to run without "
                          "tracking and mirror the cells later with `sqvae-bench sync`") from None


def open_tracker(uri: str, experiment_name: str, optional: bool = False,
                 warn: Callable[[str], None] = _warn) -> Tracker | None:
    """A Tracker on ``uri``, checked to answer. Unusable: ConfigError, or None (with one warning) if
    ``optional``."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    try:
        check_tracking_uri(uri)
        try:
            return Tracker(uri, experiment_name)
        except Exception as err:  # noqa: BLE001 - any store error means the same to the user
            raise ConfigError(f"cannot open the MLflow tracking store {uri}: {type(err).__name__}: "
                              f"{_first_line(err)}; fix it, pass --no-tracking or --tracking-optional") from None
    except ConfigError as err:
        if not optional:
            raise
        warn(f"{err} -- running WITHOUT tracking (--tracking-optional)")
        return None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


def quote(value: str) -> str:
    """``value`` as a quoted string of MLflow's search syntax."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Guarded:
    """A Tracker (or None) whose writes never raise: the first error is reported once, then tracking
    is off (``error`` says why) and the keys of what MLflow missed are kept in ``missed``."""

    key_tag = TAG_CELL_ID  # the tag naming what a nested run mirrors (a cell, a trial)

    def __init__(self, tracker: Tracker | None, output: Path, warn: Callable[[str], None] = _warn):
        self.tracker = tracker
        self.output = str(Path(output).resolve())
        self.warn = warn
        self.error: str | None = None
        self.missed: list[str] = []
        self.run_ids: dict[str, str] = {}  # key -> its open nested run
        self.previous: dict[str, str] = {}  # key -> run id a dead invocation left RUNNING

    @property
    def active(self) -> bool:
        return self.tracker is not None and self.error is None

    def _guard(self, what: str, fn: Callable, *args, cell_id: str | None = None):
        if not self.active:
            if cell_id is not None and self.tracker is not None and cell_id not in self.missed:
                self.missed.append(cell_id)
            return None
        try:
            return fn(*args)
        except Exception as err:  # noqa: BLE001 - tracking must never stop the suite
            self.error = f"{what}: {type(err).__name__}: {_first_line(err)}"
            self.warn(f"MLflow tracking failed ({self.error}). Tracking is off for the rest of this run; training "
                      f"and tables go on, and `sqvae-bench sync {self.output}` (or the next run) mirrors what is missing")
            if cell_id is not None:
                self.missed.append(cell_id)
            return None

    def end_stale(self) -> None:
        """End the runs of this output folder left RUNNING by a dead invocation as KILLED."""
        self._guard("ending stale runs", self._end_stale)

    def _end_stale(self) -> None:
        stale = self.tracker.search_runs(f"attributes.status = 'RUNNING' and tags.{TAG_OUTPUT} = {quote(self.output)}")
        for run in stale:
            key = run.data.tags.get(self.key_tag)
            if key:
                self.previous[key] = run.info.run_id
            self.tracker.terminate(run.info.run_id, "killed", "its sqvae-bench process died (killed or crashed)")
        if stale:
            self.warn(f"ended {len(stale)} MLflow run(s) left RUNNING by an earlier invocation as KILLED")

    def finish(self, status: str, summary: dict) -> None:
        if self.tracker is not None and self.tracker.suite_run_id is not None:
            self._guard("ending the parent run", self.tracker.finish_suite, status, summary)

    def kill_open(self, reason: str) -> None:
        """Ctrl-C: end every open nested run and the parent run as KILLED."""
        for key, run_id in list(self.run_ids.items()):
            self._guard("ending a run", self.tracker.terminate, run_id, "killed", reason, cell_id=key)
        self.run_ids.clear()
        if self.tracker is not None and self.tracker.suite_run_id is not None:
            self._guard("ending the parent run", self.tracker.terminate, self.tracker.suite_run_id, "killed", reason)


class Mirror(Guarded):
    """MLflow runs of one suite invocation over one output folder; see the module docstring."""

    def __init__(self, tracker: Tracker | None, suite_name: str, output: Path,
                 warn: Callable[[str], None] = _warn):
        super().__init__(tracker, output, warn)
        self.suite_name = suite_name
        self.warnings: dict[str, str] = {}  # cell id -> a warning that came before its run started

    # -- the suite ---------------------------------------------------------------------------
    def start(self, params: dict) -> None:
        """End runs a dead invocation left RUNNING, then open the suite's parent run."""
        self.end_stale()
        self._guard("starting the suite run", self.tracker.start_suite if self.tracker else None, self.suite_name,
                    params, {"suite": self.suite_name, TAG_OUTPUT: self.output})

    # -- cells -------------------------------------------------------------------------------
    def _cell_tags(self, info: dict) -> dict:
        return {"suite": self.suite_name, "dataset": info["dataset"], "model": info["model"], "seed": str(info["seed"]),
                TAG_OUTPUT: self.output}

    def start_cell(self, cell_id: str, folder: Path, resumed_step: int) -> None:
        if cell_id in self.run_ids:  # a start event drained after the cell finished
            return
        info = store.read_json(folder / "config.json")
        tags = {**self._cell_tags(info), "resumed_from_step": str(resumed_step)}
        if cell_id in self.previous:
            tags[TAG_PREVIOUS] = self.previous[cell_id]
        run_id = self._guard("starting a cell run", self.tracker.start_cell if self.tracker else None, cell_id, tags,
                             flatten_params(info["config"]), cell_id=cell_id)
        if run_id is not None:
            self.run_ids[cell_id] = run_id
            if cell_id in self.warnings:
                self._tag_warning(cell_id, self.warnings.pop(cell_id))

    def _tag_warning(self, cell_id: str, message: str) -> None:
        self._guard("tagging a warning", self.tracker.client.set_tag, self.run_ids[cell_id], "warning",
                    message[:5000], cell_id=cell_id)

    def event(self, event: tuple) -> None:
        kind, cell_id, payload = event
        if kind == EVENT_WARNING and cell_id not in self.run_ids:
            self.warnings[cell_id] = payload["message"]
        elif cell_id not in self.run_ids:
            return
        elif kind == EVENT_WARNING:
            self._tag_warning(cell_id, payload["message"])
        else:
            self._guard("logging metrics", apply_event, self.tracker, self.run_ids, event, cell_id=cell_id)

    def finish_cell(self, cell_id: str, folder: Path, status: str, reason: str | None) -> None:
        if self.tracker is None:
            return
        if cell_id not in self.run_ids and self.active:  # failed before training started: still recorded
            self.start_cell(cell_id, folder, 0)
        run_id = self.run_ids.pop(cell_id, None)
        if run_id is None:
            if cell_id not in self.missed:
                self.missed.append(cell_id)
            return
        self._guard("finishing a cell run", self._finish_run, run_id, folder, status, reason, cell_id=cell_id)

    def _finish_run(self, run_id: str, folder: Path, status: str, reason: str | None) -> None:
        metrics_path = folder / "metrics.json"
        test = store.read_json(metrics_path)["test"] if status == "completed" and metrics_path.exists() else {}
        self.tracker.log_artifacts(run_id, artifacts(folder))
        self.tracker.finish_cell(run_id, status, test, reason)

    # -- mirroring folders -------------------------------------------------------------------
    def sync(self) -> list[str]:
        """Mirror every finished cell folder of this suite that MLflow lacks; returns their ids."""
        if not self.active:
            return []
        mirrored = self._guard("reading the mirrored runs", self._mirrored)
        if mirrored is None:
            return []
        done = []
        for record in _finished_records(self.output, self.suite_name, self.warn):
            if (record.cell_id, record.status["status"]) in mirrored or record.cell_id in self.run_ids:
                continue
            if self._guard("mirroring a cell folder", self._mirror_record, record, cell_id=record.cell_id) is not None:
                done.append(record.cell_id)
                if record.cell_id in self.missed:
                    self.missed.remove(record.cell_id)
        return done

    def _mirrored(self) -> set[tuple[str, str]]:
        runs = self.tracker.search_runs(f"tags.{TAG_OUTPUT} = {quote(self.output)}")
        return {(r.data.tags.get(TAG_CELL_ID), r.data.tags.get(TAG_STATUS)) for r in runs
                if r.info.status in ("FINISHED", "FAILED")}

    def _mirror_record(self, record) -> bool:
        status, info = record.status, record.info
        tags = {**self._cell_tags(info), TAG_MIRRORED: "true"}
        run_id = self.tracker.start_cell(record.cell_id, tags, flatten_params(info["config"]))
        for epoch in (record.metrics or {}).get("history", []):
            self.tracker.log_metrics(run_id, {k: v for k, v in epoch.items() if k not in ("epoch", "step")},
                                     epoch["step"])
        self.tracker.log_artifacts(run_id, artifacts(record.folder))
        test = (record.metrics or {}).get("test", {}) if status["status"] == "completed" else {}
        self.tracker.finish_cell(run_id, status["status"], test, status.get("reason"))
        return True


def _finished_records(output: str, suite_name: str, warn: Callable[[str], None]) -> list:
    try:
        records = store.load_cells(Path(output))
    except BenchError as err:
        warn(f"cannot read the cell folders for mirroring: {err}")
        return []
    return [r for r in records if r.info.get("suite") == suite_name and r.status.get("status") in FINAL
            and (r.status["status"] != "completed" or r.metrics is not None)]


def artifacts(folder: Path) -> list[Path]:
    """What a cell's run carries: its pictures, config.json and metrics.json."""
    images = folder / "images"
    files = sorted(images.glob("*.png")) if images.exists() else []
    return files + [p for p in (folder / "config.json", folder / "metrics.json") if p.exists()]


def suite_names(output: Path) -> list[str]:
    """The suites whose cells live in ``output`` (for ``sqvae-bench sync``)."""
    return sorted({r.info.get("suite") for r in store.load_cells(output) if r.info.get("suite")})

