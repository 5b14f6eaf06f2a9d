"""MLflow mirror of a suite: one parent run per suite, one nested run per cell.

Parallel workers must not fight over one sqlite file, so only the main (scheduler) process writes
to MLflow, through ``Tracker``. A worker trains with a ``QueueHook``, which puts small picklable
events on a multiprocessing queue::

    ("start", cell_id, {"total": total_steps, "step": start_step})
    ("progress", cell_id, {"step": step})                     # at most every progress_every_s
    ("metrics", cell_id, {"step": step, "values": {name: float}})

The scheduler drains the queue and hands "metrics" events to ``apply_event``, so the mapping from
events to MLflow lives here. The cell folders (``bench.store``) stay the source of truth; MLflow
mirrors them.
"""
from __future__ import annotations

import math
import numbers
import os
import shlex
import time
from pathlib import Path
from typing import Any, Mapping

from bench.hooks import Hooks

# One tag schema for cell runs (the parent run carries TAG_SUITE and TAG_STATUS too).
TAG_SUITE = "suite"
TAG_DATASET = "dataset"
TAG_MODEL = "model"
TAG_SEED = "seed"
TAG_CELL_ID = "cell_id"
TAG_STATUS = "status"
TAG_REASON = "reason"  # why a failed cell failed
CELL_TAGS = (TAG_SUITE, TAG_DATASET, TAG_MODEL, TAG_SEED, TAG_CELL_ID, TAG_STATUS)
PARENT_RUN_TAG = "mlflow.parentRunId"  # how the MLflow UI nests runs

# our final status -> MLflow RunStatus (a pruned Optuna trial ended as planned: FINISHED, tagged "pruned")
RUN_STATES = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "killed": "KILLED"}
EVENT_START, EVENT_PROGRESS, EVENT_METRICS, EVENT_WARNING = "start", "progress", "metrics", "warning"

# MLflow's limits (mlflow.utils.validation): parameter and tag value lengths, entities per log_batch.
PARAM_VALUE_LIMIT = 6000
TAG_VALUE_LIMIT = 8000
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
DB_NAME = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"


# -- URIs ----------------------------------------------------------------------------------------
def default_tracking_uri(output_dir: str | Path) -> str:
    """``sqlite:///<absolute output_dir>/mlflow.db`` (four slashes for an absolute POSIX path)."""
    return f"sqlite:///{(Path(output_dir).resolve() / DB_NAME).as_posix()}"


def resolve_tracking_uri(cli_value: str | None, output_dir: str | Path) -> str:
    """The CLI value, else the environment's ``MLFLOW_TRACKING_URI``, else ``default_tracking_uri``."""
    return cli_value or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(output_dir)


def _is_http(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("http://", "https://"))


def ui_command(tracking_uri: str) -> str:
    """What to tell the user at the end of a suite to look at its runs."""
    if _is_http(tracking_uri):
        return f"open {tracking_uri} in a browser (runs were logged to that MLflow server)"
    return f"mlflow ui --backend-store-uri {shlex.quote(tracking_uri)}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifacts of a sqlite store go next to its database file (MLflow would use ./mlruns of the
    current directory); other stores choose for themselves (a server, a file store)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    return (Path(tracking_uri[len(prefix):]).resolve().parent / ARTIFACTS_DIR).as_uri()


# -- values --------------------------------------------------------------------------------------
def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def flatten_params(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts and lists into dotted keys with string values.

    ``{"train": {"lr": 0.001, "betas": [0.9, 0.999]}}`` -> ``{"train.lr": "0.001",
    "train.betas.0": "0.9", "train.betas.1": "0.999"}``. Empty containers keep their key
    (``"data_options": "{}"``); values longer than MLflow's limit are truncated with "...".
    """
    flat: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, (list, tuple)) and value:
            value = {str(i): v for i, v in enumerate(value)}
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, prefix=f"{name}."))
        else:
            flat[name] = _truncate(str(value), PARAM_VALUE_LIMIT)
    return flat


def finite_floats(values: Mapping[str, Any]) -> dict[str, float]:
    """The entries that are real finite numbers, as floats (None, NaN, inf and text are dropped)."""
    out = {}
    for name, value in values.items():
        if isinstance(value, numbers.Real) and math.isfinite(value):
            out[name] = float(value)
    return out


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the main-process writer ---------------------------------------------------------------------
class Tracker:
    """Writes a suite to MLflow through ``MlflowClient`` (no global fluent state): any tracking URI.

    Use from the main process only; workers talk to it through ``QueueHook`` events.
    """

    def __init__(self, tracking_uri: str, experiment_name: str):
        self.tracking_uri = tracking_uri
        from mlflow import MlflowClient  # imported here: workers use this module without loading mlflow

        self.client = MlflowClient(tracking_uri)
        self.experiment_id = self._experiment(experiment_name)
        self.suite_name: str | None = None
        self.suite_run_id: str | None = None

    def _experiment(self, name: str) -> str:
        """Get or create the experiment (restoring it if it was deleted)."""
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            return self.client.create_experiment(name, artifact_location=default_artifact_location(self.tracking_uri))
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entities = [Param(k, v) for k, v in flatten_params(params).items()]
        for batch in _chunks(entities, PARAMS_PER_BATCH):
            self.client.log_batch(run_id, params=batch)

    def _create_run(self, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        tags = {k: _truncate(str(v), TAG_VALUE_LIMIT) for k, v in tags.items()}
        run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=run_name).info.run_id
        self._log_params(run_id, params)
        return run_id

    def start_suite(self, suite_name: str, params: Mapping[str, Any], tags: Mapping[str, Any]) -> str:
        """Create the suite's parent run; returns its run id."""
        self.suite_name = suite_name
        all_tags = {**tags, TAG_SUITE: suite_name, TAG_STATUS: "running"}
        self.suite_run_id = self._create_run(suite_name, all_tags, params)
        return self.suite_run_id

    def start_child(self, run_name: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """Create a run nested under the suite (or study) run; returns its run id."""
        all_tags = {**tags, TAG_STATUS: "running"}
        if self.suite_run_id is not None:
            all_tags.update({TAG_SUITE: self.suite_name, PARENT_RUN_TAG: self.suite_run_id})
        return self._create_run(run_name, all_tags, params)

    def start_cell(self, cell_id: str, tags: Mapping[str, Any], params: Mapping[str, Any]) -> str:
        """Create a cell's run, nested under the suite run when there is one; returns its run id.

        ``tags`` must hold ``dataset``, ``model`` and ``seed``; the run is named
        ``<dataset>/<model>/s<seed>``. ``params`` (the resolved config) are flattened.
        """
        missing = [k for k in (TAG_DATASET, TAG_MODEL, TAG_SEED) if k not in tags]
        if missing:
            raise ValueError(f"cell tags need {', '.join(missing)}; got {sorted(tags)}")
        name = f"{tags[TAG_DATASET]}/{tags[TAG_MODEL]}/s{tags[TAG_SEED]}"
        return self.start_child(name, {**tags, TAG_CELL_ID: cell_id}, params)

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> None:
        """Log the finite numeric ``metrics`` at ``step`` in batches; None, NaN and inf are skipped
        (a diverged run is recorded by its status and reason tags instead)."""
        timestamp = _now_ms()
        from mlflow.entities import Metric

        entities = [Metric(k, v, timestamp, int(step)) for k, v in finite_floats(metrics).items()]
        for batch in _chunks(entities, METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=batch)

    def log_artifacts(self, run_id: str, paths: list[Path], artifact_path: str | None = None) -> None:
        """Upload files and folders (a folder keeps its name) under ``artifact_path``; missing
        paths are skipped, as a failed cell may not have drawn its pictures."""
        for path in map(Path, paths):
            if path.is_dir():
                inner = f"{artifact_path}/{path.name}" if artifact_path else path.name
                self.client.log_artifacts(run_id, str(path), artifact_path=inner)
            elif path.is_file():
                self.client.log_artifact(run_id, str(path), artifact_path=artifact_path)

    def search_runs(self, filter_string: str) -> list:
        """Every run of the experiment that matches ``filter_string`` (MLflow's search syntax), all pages."""
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def terminate(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Tag ``status`` (and ``reason``) and end the run as FINISHED, FAILED or KILLED."""
        self._terminate(run_id, status, reason)

    def _terminate(self, run_id: str, status: str, reason: str | None) -> None:
        if status not in RUN_STATES:
            raise ValueError(f"status must be one of {', '.join(RUN_STATES)}; got {status!r}")
        self.client.set_tag(run_id, TAG_STATUS, status)
        if reason:
            self.client.set_tag(run_id, TAG_REASON, _truncate(reason, TAG_VALUE_LIMIT))
        self.client.set_terminated(run_id, RUN_STATES[status])

    def finish_cell(self, run_id: str, status: str, test_metrics: Mapping[str, Any],
                    reason: str | None = None) -> None:
        """Log ``test_<name>`` metrics, tag the status (and reason) and end the run FINISHED or FAILED.

        Raises:
            ValueError: ``status`` is not "completed" or "failed".
        """
        self.log_metrics(run_id, {f"test_{k}": v for k, v in test_metrics.items()}, step=0)
        self._terminate(run_id, status, reason)

    def finish_suite(self, status: str, summary: Mapping[str, Any]) -> None:
        """End the suite run: numeric summary entries as metrics, the whole summary as
        ``summary.json``, the status tag, and FINISHED or FAILED.

        Raises:
            ValueError: no suite was started, or ``status`` is not "completed" or "failed".
        """
        if self.suite_run_id is None:
            raise ValueError("finish_suite called before start_suite")
        self.log_metrics(self.suite_run_id, summary, step=0)
        self.client.log_dict(self.suite_run_id, dict(summary), "summary.json")
        self._terminate(self.suite_run_id, status, None)


# -- the worker side -----------------------------------------------------------------------------
class QueueHook(Hooks):
    """Trainer hook of a worker process: puts events on ``queue`` for the scheduler (see module)."""

    def __init__(self, queue, cell_id: str, progress_every_s: float = 0.5):
        self.queue, self.cell_id, self.progress_every_s = queue, cell_id, progress_every_s
        self._last_progress = -math.inf

    def _put(self, kind: str, payload: dict) -> None:
        self.queue.put((kind, self.cell_id, payload))

    def on_start(self, total_steps: int, start_step: int) -> None:
        self._put(EVENT_START, {"total": total_steps, "step": start_step})

    def on_step(self, step: int) -> None:
        """Throttled by the clock only: reads no device value."""
        now = time.monotonic()
        if now - self._last_progress >= self.progress_every_s:
            self._last_progress = now
            self._put(EVENT_PROGRESS, {"step": step})

    def on_log(self, step: int, values: dict[str, float]) -> None:
        self._put(EVENT_METRICS, {"step": step, "values": finite_floats({f"train_{k}": v for k, v in values.items()})})

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        values = finite_floats({k: v for k, v in record.items() if k not in ("epoch", "step")})
        self._put(EVENT_METRICS, {"step": record["step"], "values": values})


def apply_event(tracker: Tracker, run_ids: Mapping[str, str], event: tuple) -> bool:
    """Write a worker's "metrics" event to its cell's run; True when something was logged.

    Other kinds ("start", "progress") and cells without a run (``run_ids`` maps cell id -> run id)
    are ignored.
    """
    kind, cell_id, payload = event
    if kind != EVENT_METRICS or cell_id not in run_ids:
        return False
    tracker.log_metrics(run_ids[cell_id], payload["values"], payload["step"])
    return True
