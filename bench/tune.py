"""Equal-budget Optuna studies: search on train/validation, then retrain the best and test once.

``tune(study, options)`` runs a study file (``bench.study``) in two stages:

1. **Search.** One Optuna study per (dataset, model), named ``<study>/<dataset>/<model>``, all in one
   storage (a journal file in the output folder by default, or ``--storage URL``). Each trial trains
   with ``bench.run.fit_cell`` (train and validation splits only: the test split is never loaded) on
   the study's budget, reports its per-epoch validation objective to the pruner, and ends COMPLETE,
   PRUNED or FAIL (non-finite loss, out of memory, ... with its reason; a failed trial counts towards
   the budget). Trials run in the worker processes of ``bench.executor``; this process alone asks,
   tells and writes MLflow.
2. **Final stage.** The best trial of each (dataset, model) (several objectives: the Pareto-optimal
   trial best on the first one) is written into a suite, ``<results>/tuned.yaml``, which runs through
   ``bench.lifecycle.run_suite`` on the final seeds and budget: cell folders, tests, the table with
   paired tests, exactly as ``sqvae-bench run``.

**The budget is exact.** A trial is reserved under a file lock beside the storage
(``<output>/.optuna-ask.lock``): count the study's trials, ask only while fewer than the budget
exist. Several ``tune`` processes on one output folder (on one machine, or on several machines sharing
the folder) therefore cooperate without overshooting. Each process holds a lock file of its own
(``<output>/.owners/<host>-<pid>``) for as long as it lives, and tags its trials with it; a RUNNING
trial whose owner's lock is free (the process was killed) is marked FAIL with the user attribute
``stale`` (not counted) and enqueued again with the same parameters, so after a SIGKILL the same
command resumes: finished trials are kept, the interrupted ones re-run, the budget still holds.
"""
from __future__ import annotations

import contextlib
import fcntl
import math
import os
import socket
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

from bench import checks, interrupts, store
from bench.errors import BenchError, ConfigError
from bench.executor import ProcessExecutor, TaskError, WorkerDied
from bench.hooks import Hooks
from bench.lifecycle import RunOptions, run_suite
from bench.mirror import Guarded, check_tracking_uri, open_tracker
from bench.numerics import numerics
from bench.run import RunConfig, RunEnv, fit_cell
from bench.scheduler import Progress, worker_hooks
from bench.tracking import EVENT_WARNING, apply_event, flatten_params, resolve_tracking_uri

JOURNAL = "optuna.journal"
ASK_LOCK = ".optuna-ask.lock"
OWNERS = ".owners"
FINAL = "final"
STALE = "stale"  # user attribute of a trial whose process died; it does not count towards the budget


@dataclass(frozen=True)
class TuneOptions:
    output: Path
    results: Path
    env: RunEnv = field(default_factory=RunEnv)
    workers: int = 1
    storage: str | None = None
    pairs: tuple[tuple[str, str], ...] | None = None  # --only: these (dataset, model) pairs
    search: bool = True
    final: bool = True
    untuned: Path | None = None  # a run folder of the untuned suite, shown beside the tuned table
    tracking: bool = True
    tracking_uri: str | None = None
    tracking_optional: bool = False
    progress: bool = True
    executor: Callable = ProcessExecutor  # executor(workers): where trials and final cells run (bench.executor)


@dataclass
class PairResult:
    """The search of one (dataset, model): trial counts and the chosen trial."""

    dataset: str
    model: str
    counts: dict  # state name -> number of trials (stale ones left out)
    best_number: int | None = None
    best_values: tuple | None = None
    best_params: dict | None = None


@dataclass
class TuneRun:
    pairs: list[PairResult]
    storage: str
    seconds: float
    failed_trials: int = 0
    final: object | None = None  # bench.lifecycle.SuiteRun of the final stage
    tuned_suite: Path | None = None
    plots: list[Path] = field(default_factory=list)
    tracking_uri: str | None = None
    tracking_error: str | None = None

    @property
    def exit_code(self) -> int:
        final_failed = self.final is not None and self.final.summary.failed
        return 1 if self.failed_trials or final_failed else 0


# -- storage ---------------------------------------------------------------------------------------
def storage_url(options: TuneOptions) -> str:
    """``--storage``, else the journal file in the output folder."""
    return options.storage or str((options.output / JOURNAL).resolve())


def open_storage(url: str):
    """A URL with a scheme is a database (Optuna's RDBStorage); anything else is a journal file,
    written under an ``flock`` (``<file>.lock``): a killed writer releases it at once, where Optuna's
    default symlink lock would stall the next writer for its grace period."""
    import optuna

    if "://" in url:
        return optuna.storages.RDBStorage(url)
    from optuna.storages.journal import JournalFileBackend

    return optuna.storages.JournalStorage(JournalFileBackend(url, lock_obj=_journal_lock(url)))


def _journal_lock(url: str) -> "FlockJournalLock":
    return FlockJournalLock(f"{url}.lock")


class FlockJournalLock:
    """Optuna's journal lock (its backend calls ``acquire`` and ``release``) as an exclusive ``flock``
    on a file beside the journal."""

    def __init__(self, path: str):
        self.path, self._fds = path, []

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fds.append(fd)
        return True

    def release(self) -> None:
        os.close(self._fds.pop())  # closing the descriptor releases the lock


def dashboard_command(url: str) -> str:
    return f"optuna-dashboard {url}"


def optuna_name(study, dataset: str, model: str) -> str:
    return f"{study.name}/{dataset}/{model}"


# -- process ownership of trials --------------------------------------------------------------------
@contextlib.contextmanager
def file_lock(path: Path):
    """An exclusive ``flock`` on ``path`` for the body (blocking: other processes wait their turn)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Owner:
    """This process's claim on its trials: a lock file held until the process ends."""

    def __init__(self, output: Path):
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.path = output / OWNERS / self.name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    @staticmethod
    def alive(output: Path, name: str) -> bool:
        path = output / OWNERS / name
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def close(self) -> None:
        self.path.unlink(missing_ok=True)
        os.close(self._fd)


def counted(trials) -> list:
    """The trials that count towards the budget (every state, stale ones left out)."""
    return [t for t in trials if not t.user_attrs.get(STALE)]


def reclaim_stale(ostudy, storage, output: Path) -> list[int]:
    """Mark RUNNING trials of dead owners FAIL + stale and enqueue their parameters again."""
    from optuna.trial import TrialState

    retried = []
    for trial in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("owner")  # set under the ask lock: None only if its process died there
        if owner is not None and Owner.alive(output, owner):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(
            storage.get_study_id_from_name(ostudy.study_name), trial.number)
        storage.set_trial_user_attr(trial_id, STALE, True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        ostudy.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        retried.append(trial.number)
    return retried


def reserve(ostudy, storage, params, budget: int, output: Path, owner: Owner):
    """The next trial of ``ostudy`` with its parameters suggested, or None when the budget is used up."""
    from optuna.trial import TrialState

    with file_lock(output / ASK_LOCK):
        reclaim_stale(ostudy, storage, output)
        trials = counted(ostudy.get_trials(deepcopy=False))
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if not waiting and len(trials) >= budget:
            return None
        trial = ostudy.ask()
        for param in params:
            param.suggest(trial)
        trial.set_user_attr("owner", owner.name)
        return trial


# -- the worker side --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TrialTask:
    key: str  # "<dataset>/<model>/t<number>": the event key
    storage: str
    study_name: str
    trial_number: int
    config: RunConfig
    env: RunEnv
    objective: tuple[str, ...]
    pruner: dict | None  # the study's pruner settings; None: no pruning (several objectives)
    study: object  # bench.study.Study (for make_pruner)


class PruningHook(Hooks):
    """Reports the validation objective after each epoch; raises optuna.TrialPruned when told to."""

    def __init__(self, trial, metric: str):
        self.trial, self.metric = trial, metric

    def on_epoch(self, epoch: int, record: dict) -> None:
        import optuna

        value = record.get(f"val_{self.metric}")
        if value is None or not math.isfinite(value):
            return
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({self.metric} {value:.6g})")


def execute_trial(task: TrialTask) -> dict:
    """Fit one trial's config in a worker (never the test split); never raises.

    Returns {"state": "complete" | "pruned" | "failed", "values", "val", "reason", ...}.
    """
    import optuna

    from bench.study import make_pruner

    started = time.perf_counter()
    hooks = worker_hooks(task.key)  # no events when called in-process (perf)
    try:
        if task.pruner is not None:
            storage = open_storage(task.storage)
            ostudy = optuna.load_study(study_name=task.study_name, storage=storage, pruner=make_pruner(task.study))
            trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(task.study_name), task.trial_number)
            hooks.append(PruningHook(optuna.trial.Trial(ostudy, trial_id), task.objective[0]))
        with numerics(task.env.threads, task.env.deterministic):
            fit = fit_cell(task.config, None, task.env, hooks)
        values = [float(fit.val[name]) for name in task.objective]
        bad = [n for n, v in zip(task.objective, values) if not math.isfinite(v)]
        if bad:
            return {"state": "failed", "reason": f"non-finite validation {', '.join(bad)}",
                    "seconds": time.perf_counter() - started}
        return {"state": "complete", "values": values, "val": fit.val, "best_epoch": fit.state.best_epoch,
                "steps": fit.state.step, "seconds": time.perf_counter() - started}
    except optuna.TrialPruned as pruned:
        return {"state": "pruned", "reason": str(pruned), "seconds": time.perf_counter() - started}
    except BaseException as err:  # noqa: BLE001 - a trial's failure must never stop the study
        return {"state": "failed", "reason": f"{type(err).__name__}: {err}", "seconds": time.perf_counter() - started}


# -- MLflow ---------------------------------------------------------------------------------------
class TrialMirror(Guarded):
    """MLflow runs of a study invocation: a parent run, a nested run per trial (guarded writes)."""

    key_tag = "trial_key"

    def __init__(self, tracker, study_name: str, output: Path):
        super().__init__(tracker, output)
        self.study_name = study_name

    def start(self, params: dict) -> None:
        self.end_stale()
        if self.tracker is not None:
            self._guard("starting the study run", self.tracker.start_suite, f"{self.study_name} (search)", params,
                        {"study": self.study_name, "output": self.output, "stage": "search"})

    def start_trial(self, key: str, dataset: str, model: str, number: int, params: dict, config: RunConfig) -> None:
        if self.tracker is None:
            return
        tags = {"study": self.study_name, "dataset": dataset, "model": model, "trial": str(number),
                self.key_tag: key, "output": self.output}
        all_params = {**{f"search.{k}": v for k, v in params.items()}, **flatten_params(config.to_dict())}
        run_id = self._guard("starting a trial run", self.tracker.start_child, f"{dataset}/{model}/trial {number}",
                             tags, all_params, cell_id=key)
        if run_id is not None:
            self.run_ids[key] = run_id

    def event(self, event: tuple) -> None:
        if event[0] != EVENT_WARNING and event[1] in self.run_ids:
            self._guard("logging metrics", apply_event, self.tracker, self.run_ids, event, cell_id=event[1])

    def finish_trial(self, key: str, outcome: dict, objective: tuple[str, ...]) -> None:
        run_id = self.run_ids.pop(key, None)
        if run_id is None:
            return
        values = dict(zip((f"objective_{n}" for n in objective), outcome.get("values") or ()))
        self._guard("finishing a trial run", self._finish, run_id, outcome, values, cell_id=key)

    def _finish(self, run_id: str, outcome: dict, values: dict) -> None:
        self.tracker.log_metrics(run_id, {**values, "seconds": outcome.get("seconds")}, step=0)
        status = {"complete": "completed", "pruned": "pruned", "failed": "failed"}[outcome["state"]]
        self.tracker.client.set_tag(run_id, "state", outcome["state"])
        self.tracker.terminate(run_id, status, outcome.get("reason"))

    def log_plots(self, plots: list[Path]) -> None:
        if self.tracker is not None and self.tracker.suite_run_id is not None:
            self._guard("logging the plots", self.tracker.log_artifacts, self.tracker.suite_run_id, plots, "plots")


# -- the search -----------------------------------------------------------------------------------
@dataclass
class _Pair:
    dataset: str
    model: str
    ostudy: object
    params: tuple
    done: bool = False


def _open_pairs(study, pairs, storage) -> list[_Pair]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happens
    from bench.study import make_sampler

    opened = []
    for dataset, model in pairs:
        params = study.space.get(model, ())
        ostudy = optuna.create_study(study_name=optuna_name(study, dataset, model), storage=storage,
                                     directions=list(study.directions), load_if_exists=True,
                                     sampler=make_sampler(study, params))
        ostudy.set_user_attr("budget_trials", study.trials)
        opened.append(_Pair(dataset, model, ostudy, tuple(params)))
    return opened


def _search(study, pairs: list[_Pair], storage, url: str, options: TuneOptions, mirror: TrialMirror) -> int:
    """Run trials until every pair's budget is used up; returns the number of trials that failed here."""
    owner = Owner(options.output)
    total = study.trials * len(pairs)
    already = sum(len([t for t in counted(p.ostudy.get_trials(deepcopy=False)) if t.state.is_finished()]) for p in pairs)
    bars = Progress(total, already, options.progress)
    executor = options.executor(options.workers)
    running: dict[Future, tuple[_Pair, object, str]] = {}
    failed, turn = 0, 0
    try:
        while True:
            interrupts.check()
            while len(running) < options.workers:
                pair = _next_pair(pairs, turn)
                if pair is None:
                    break
                turn += 1
                trial = reserve(pair.ostudy, storage, pair.params, study.trials, options.output, owner)
                if trial is None:
                    pair.done = True
                    continue
                future = _submit(executor, study, pair, trial, url, options, mirror)
                if future is None:
                    failed += 1
                    continue
                running[future] = (pair, trial, f"{pair.dataset}/{pair.model}/t{trial.number}")
            if not running:
                if _others_running(pairs):  # trials of other processes: wait for them (or their death)
                    for pair in pairs:
                        pair.done = False
                    time.sleep(2)
                    continue
                break
            done, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
            _drain(executor, bars, mirror)
            for future in done:
                pair, trial, key = running.pop(future)
                outcome = _outcome(future)
                _tell(pair.ostudy, trial, outcome)
                failed += outcome["state"] == "failed"
                if outcome["state"] == "failed":
                    tqdm.write(f"sqvae-bench: trial {key} failed: {outcome['reason']}", file=sys.stderr)
                bars.finish(key, "failed" if outcome["state"] == "failed" else "completed")
                mirror.finish_trial(key, outcome, study.objective)
    except KeyboardInterrupt:
        executor.shutdown(kill=True)
        mirror.kill_open("interrupted (Ctrl-C or SIGTERM); run the same command again to resume")
        raise
    finally:
        executor.shutdown()
        _drain(executor, bars, mirror)
        executor.close()
        bars.close()
        owner.close()
    return failed


def _next_pair(pairs: list[_Pair], turn: int) -> _Pair | None:
    """Round-robin over the pairs still open, so every model advances at the same pace."""
    open_pairs = [p for p in pairs if not p.done]
    return open_pairs[turn % len(open_pairs)] if open_pairs else None


def _others_running(pairs: list[_Pair]) -> bool:
    from optuna.trial import TrialState

    return any(p.ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)) for p in pairs)


def _submit(executor, study, pair: _Pair, trial, url: str, options: TuneOptions, mirror: TrialMirror) -> Future | None:
    """Start ``trial`` on the executor; None (the trial told FAIL with the reason) if its config is invalid."""
    from bench.study import trial_config

    key = f"{pair.dataset}/{pair.model}/t{trial.number}"
    try:
        config = trial_config(study, pair.dataset, pair.model, trial.params)
    except BenchError as err:  # a sampled value the model rejects: that trial fails, the study goes on
        _tell(pair.ostudy, trial, {"state": "failed", "reason": f"{type(err).__name__}: {err}"})
        tqdm.write(f"sqvae-bench: trial {key} failed: {err}", file=sys.stderr)
        return None
    mirror.start_trial(key, pair.dataset, pair.model, trial.number, trial.params, config)
    prune = len(study.objective) == 1 and study.pruner.get("name", "none") != "none"
    task = TrialTask(key, url, pair.ostudy.study_name, trial.number, config, options.env, study.objective,
                     study.pruner if prune else None, study)
    return executor.submit(execute_trial, task, key=key)


def _outcome(future: Future) -> dict:
    try:
        return future.result()
    except (WorkerDied, TaskError) as err:
        return {"state": "failed", "reason": f"{type(err).__name__}: {str(err).splitlines()[0]}"}


def _tell(ostudy, trial, outcome: dict) -> None:
    from optuna.trial import TrialState

    for key in ("reason", "best_epoch", "steps", "seconds"):
        if outcome.get(key) is not None:
            trial.set_user_attr(key, outcome[key])
    for name, value in (outcome.get("val") or {}).items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            trial.set_user_attr(f"val_{name}", float(value))
    if outcome["state"] == "complete":
        values = outcome["values"]
        ostudy.tell(trial, values if len(values) > 1 else values[0])
    else:
        ostudy.tell(trial, state=TrialState.PRUNED if outcome["state"] == "pruned" else TrialState.FAIL)


def _drain(executor, bars: Progress, mirror: TrialMirror) -> None:
    for event in executor.events():
        kind, key, payload = event
        if kind == "start":
            bars.start(key, payload["total"], payload["step"])
        elif kind == "progress":
            bars.advance(key, payload["step"])
        mirror.event(event)


# -- results of the search ------------------------------------------------------------------------
def best_trial(ostudy):
    """The chosen trial: the best one; with several objectives, the Pareto-optimal one best on the first."""
    from optuna.trial import TrialState

    if not ostudy.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    if len(ostudy.directions) == 1:
        return ostudy.best_trial
    first = ostudy.directions[0].name.lower()
    front = ostudy.best_trials
    return (min if first == "minimize" else max)(front, key=lambda t: t.values[0])


def summarize_pair(pair: _Pair) -> PairResult:
    trials = counted(pair.ostudy.get_trials(deepcopy=False))
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    result = PairResult(pair.dataset, pair.model, counts)
    best = best_trial(pair.ostudy)
    if best is not None:
        result.best_number, result.best_values, result.best_params = best.number, tuple(best.values), dict(best.params)
    return result


def write_plots(study, pairs: list[_Pair], folder: Path) -> list[Path]:
    """Optuna's optimisation history, parallel coordinates and parameter importances per pair (PNG)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    kinds = {"history": (oplt.plot_optimization_history, "optimisation history"),
             "parallel": (oplt.plot_parallel_coordinate, "parallel coordinates"),
             "importance": (oplt.plot_param_importances, "parameter importances")}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for pair in pairs:
        for kind, (plot, title) in kinds.items():
            path = folder / f"{pair.dataset}_{pair.model}_{kind}.png"
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    target = {"target": lambda t: t.values[0], "target_name": study.objective[0]} \
                        if len(study.directions) > 1 else {"target_name": study.objective[0]}
                    axes = plot(pair.ostudy, **target)
                axis = axes if hasattr(axes, "figure") else axes.flat[0]
                for other in axis.figure.axes:  # Optuna's generic titles, wherever placed
                    for loc in ("left", "center", "right"):
                        other.set_title("", loc=loc)
                axis.set_title(f"{study.name}, {pair.dataset} / {pair.model}: {title} ({study.objective[0]})")
                figure = axis.figure
                for text in figure.texts:  # Optuna's own generic figure title
                    text.set_visible(False)
                figure.savefig(path, dpi=100, bbox_inches="tight")
                plt.close(figure)
                written.append(path)
            except (ValueError, RuntimeError, ZeroDivisionError, IndexError) as err:
                tqdm.write(f"sqvae-bench: note: no {kind} plot for {pair.dataset}/{pair.model} ({err})", file=sys.stderr)
                plt.close("all")
    return written


def untuned_reference(run_dir: Path, path: Path) -> Path:
    """A reference CSV (bench.tables format) of the untuned run's means, to show beside the tuned table."""
    import csv

    from bench.tables import aggregate, cells_frame

    if not (run_dir / "cells").is_dir():
        raise ConfigError(f"--untuned {run_dir}: holds no run (expected {run_dir / 'cells'}/)")
    frame = cells_frame(store.load_cells(run_dir))
    if frame.empty:
        raise ConfigError(f"--untuned {run_dir}: no completed cell")
    from bench.metrics import METRICS

    rows = aggregate(frame).dropna(subset=["mean"])
    rows = rows[rows["metric"].isin(METRICS.names())]
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["dataset", "model", "metric", "value", "source"])
        for row in rows.itertuples():
            writer.writerow([row.dataset, row.model, row.metric, repr(float(row.mean)), "untuned"])
    return path


# -- the whole invocation ---------------------------------------------------------------------------
def check_inputs(study, options: TuneOptions) -> list[tuple[str, str]]:
    """Check everything before anything is created; returns the (dataset, model) pairs to tune."""
    from bench.study import pairs as study_pairs
    from bench.study import trial_config

    checks.check_execution(options.env.device, options.output, options.results,
                           {"--workers": options.workers, "--threads": options.env.threads})
    chosen = [p for p in study_pairs(study) if options.pairs is None or p in options.pairs]
    if not chosen:
        raise ConfigError(f"--only selects no (dataset, model) of study '{study.name}'")
    if options.tracking and not options.tracking_optional:  # a server that does not answer: exit 2 before anything
        check_tracking_uri(resolve_tracking_uri(options.tracking_uri, options.output))
    if options.untuned is not None and not (options.untuned / "cells").is_dir():
        raise ConfigError(f"--untuned {options.untuned}: holds no run (expected {options.untuned / 'cells'}/)")
    checks.check_datasets([trial_config(study, d, m, {}) for d, m in chosen], options.env.data_root, options.env.download)
    return chosen


def tune(study, options: TuneOptions) -> TuneRun:
    """Search, then the final stage; see the module docstring."""
    import yaml

    from bench.suite import expand, load_suite

    started = time.perf_counter()
    chosen = check_inputs(study, options)
    options.output.mkdir(parents=True, exist_ok=True)
    url = storage_url(options)
    uri = resolve_tracking_uri(options.tracking_uri, options.output) if options.tracking else None
    with file_lock(options.output / ASK_LOCK):  # one process at a time creates the stores
        storage = open_storage(url)
        pairs = _open_pairs(study, chosen, storage)
        tracker = open_tracker(uri, f"sqvae-bench/study/{study.name}", options.tracking_optional) if uri else None
    mirror = TrialMirror(tracker, study.name, options.output)
    failed = 0
    if options.search:
        mirror.start({"study_file": str(study.source), "pairs": len(pairs), "trials": study.trials,
                      "workers": options.workers, "storage": url})
        with interrupts.deferred():
            failed = _search(study, pairs, storage, url, options, mirror)
    results = [summarize_pair(p) for p in pairs]
    plots = write_plots(study, pairs, options.results / "plots")
    mirror.log_plots(plots)
    mirror.finish("failed" if failed else "completed", {"failed_trials": failed})
    run = TuneRun(results, url, 0.0, failed, plots=plots, tracking_uri=uri if tracker else None,
                  tracking_error=mirror.error)
    best = {(r.dataset, r.model): r.best_params for r in results if r.best_params is not None}
    if options.final and best:
        from bench.study import final_suite

        options.results.mkdir(parents=True, exist_ok=True)
        run.tuned_suite = options.results / "tuned.yaml"
        text = f"# generated by `sqvae-bench tune {study.source}`: the best trial of each (dataset, model)\n"
        run.tuned_suite.write_text(text + yaml.safe_dump(final_suite(study, best), sort_keys=False))
        suite = load_suite(run.tuned_suite)
        cells = [c for c in expand(suite) if (c.dataset, c.model) in best]
        reference = untuned_reference(options.untuned, options.results / "untuned.csv") if options.untuned else None
        run.final = run_suite(suite, cells, RunOptions(
            output=options.output / FINAL, results=options.results, env=options.env, workers=options.workers,
            tracking=options.tracking, tracking_uri=uri, tracking_optional=options.tracking_optional,
            progress=options.progress, reference=reference, executor=options.executor))
    run.seconds = time.perf_counter() - started
    return run
