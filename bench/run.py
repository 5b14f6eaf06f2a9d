"""One run: a plain function of a fully resolved config that returns its metrics.

``run_cell(config, workdir, env)`` loads the data, builds the model under the run's seed, trains,
tests the best checkpoint and returns a JSON-ready dict. Everything that changes results is in
``RunConfig`` (hashed into the cell id); where the data lives and which device runs it are in
``RunEnv`` and never change results. Suites and a Dask cluster call this function.

A run is two stages, also callable alone: ``fit_cell`` loads train and val only (the test split is
neither read nor generated), trains and keeps the best epoch by validation loss, returning a ``Fit``
with that epoch's validation metrics; ``test_cell`` then loads the test split and tests the best
model (metrics, FID, pictures). An Optuna trial calls ``fit_cell`` only, so a search never sees the
test split; ``run_cell`` is the two in a row, with the same numbers.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from bench import metrics
from bench.batches import to_model_input
from bench.data import Splits, dataset_spec, load_dataset
from bench.errors import ConfigError
from bench.evaluate import lpips_scoring
from bench.models import build_model, resolve_model_options
from bench.hooks import Hooks
from bench.numerics import numerics
from bench.train import TrainConfig, Trainer, TrainState, check_split, seed_everything

MIOU_ABSENT = ("zero", "ignore")


@dataclass(frozen=True)
class RunConfig:
    """What one run is: dataset x model x seed with all their settings."""

    dataset: str
    model: str
    seed: int = 0
    data_options: dict = field(default_factory=dict)
    model_options: dict = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    fid: bool = False
    miou_absent: str = "zero"

    def __post_init__(self):
        if self.miou_absent not in MIOU_ABSENT:
            raise ConfigError(f"miou_absent must be one of {', '.join(MIOU_ABSENT)}; got {self.miou_absent!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(**{**d, "train": TrainConfig(**d.get("train", {}))})


@dataclass(frozen=True)
class RunEnv:
    """Where and how a run runs. Not part of the cell id; ``device``, ``threads`` and
    ``deterministic`` are part of the numerical path (bench.numerics) and are recorded in env.json.

    threads: intra-op threads of the run on the CPU. Fixed per run (default 1) rather than derived
    from the number of workers, so ``--workers`` never changes a result.
    deterministic: PyTorch's deterministic algorithms (and cuDNN's deterministic mode on GPUs).
    """

    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    fid_cache: str | None = None
    fid_weights: str | None = None
    lpips_weights: str | None = None  # AlexNet weights for LPIPS (else $SQVAE_BENCH_LPIPS_WEIGHTS, torch hub)
    threads: int = 1
    deterministic: bool = True


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_run_config(config: RunConfig) -> RunConfig:
    """Fill in every model option (paper defaults) so the config alone says what ran; reads no data."""
    spec = dataset_spec(config.dataset, **config.data_options)
    options = resolve_model_options(config.model, spec, config.model_options)
    return RunConfig(**{**config.__dict__, "model_options": options})


@dataclass
class Fit:
    """A fitted run, what ``fit_cell`` returns and ``test_cell`` tests.

    trainer: the Trainer; its model holds the weights of the best epoch (``model``).
    splits: train and val on the run's device; ``test`` is None.
    state: best_epoch, best_val (its validation loss), step, history (per-epoch records).
    val: the validation metrics of the best epoch: the ``val_*`` entries of its history record
        without the prefix, e.g. {"loss", "mse", "perplexity", ...}.
    seconds: wall time of the fit.
    """

    trainer: Trainer
    splits: Splits
    state: TrainState
    val: dict[str, float]
    seconds: float

    @property
    def model(self) -> torch.nn.Module:
        return self.trainer.model


def run_cell(config: RunConfig, workdir: str | Path | None = None, env: RunEnv = RunEnv(),
             hooks: Sequence[Hooks] = ()) -> dict:
    """Train and test one configuration; resumes from ``workdir``'s checkpoint when there is one.

    ``fit_cell`` then ``test_cell`` under one ``numerics`` setting. Returns {"test": deterministic
    test metrics, "test_stochastic": {...} or {}, "best_epoch", "best_val_loss", "steps",
    "history": per-epoch records, "seconds"}, and "compile_seconds" (the cold compile's wall time,
    summed over resumed processes) with ``train.compile``.
    """
    started = time.perf_counter()
    with numerics(env.threads, env.deterministic):
        splits = _load(config, env, with_test=True)  # once: the fit takes train/val, the test its split
        fit = _fit_cell(config, workdir, env, hooks, dataclasses.replace(splits, test=None))
        results = _test_cell(fit, config, workdir, env, splits.test)
    return {**results, "seconds": time.perf_counter() - started}  # the load included


def fit_cell(config: RunConfig, workdir: str | Path | None = None, env: RunEnv = RunEnv(),
             hooks: Sequence[Hooks] = ()) -> Fit:
    """Train one configuration on train / val only and keep its best epoch by validation loss.

    Loads the dataset without its test split; resumes from ``workdir``'s checkpoint when there is
    one. A hook may stop the fit by raising from ``on_epoch`` (pruning): the exception propagates,
    and with a ``workdir`` that epoch's checkpoint is on disk (a later call resumes from it).
    Returns: a ``Fit``, its model holding the best epoch's weights.
    Raises: ConfigError, DataError, RunFailed (non-finite values), or what a hook raises.
    """
    with numerics(env.threads, env.deterministic):
        return _fit_cell(config, workdir, env, hooks)


def test_cell(fit: Fit, config: RunConfig, workdir: str | Path | None = None, env: RunEnv = RunEnv()) -> dict:
    """Load the test split (only now) and test ``fit``'s best model: what ``run_cell`` returns.

    ``config`` and ``env`` are those ``fit`` was made with; with a ``workdir``, pictures are drawn
    into ``workdir/images``. ``seconds`` in the result counts the fit and the test.
    """
    with numerics(env.threads, env.deterministic):
        return _test_cell(fit, config, workdir, env)


test_cell.__test__ = False  # pytest would collect it wherever a test module imports it by name


def _load(config: RunConfig, env: RunEnv, with_test: bool) -> Splits:
    return load_dataset(config.dataset, root=env.data_root, download=env.download, with_test=with_test,
                        **config.data_options)


def _fit_cell(config: RunConfig, workdir: str | Path | None, env: RunEnv, hooks: Sequence[Hooks],
              splits: Splits | None = None) -> Fit:
    """``splits``: train/val already loaded (by ``run_cell``); else loaded here without the test split."""
    started = time.perf_counter()
    device = resolve_device(env.device)
    splits = splits if splits is not None else _load(config, env, with_test=False)
    seed_everything(config.seed)
    model = build_model(config.model, splits.spec, config.model_options).to(device)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    data = splits.to(device)
    trainer = Trainer(model, data, config.train, config.seed, workdir, hooks)
    state = trainer.fit()
    trainer.load_best()
    return Fit(trainer, data, state, best_val_metrics(state), time.perf_counter() - started)


def best_val_metrics(state: TrainState) -> dict[str, float]:
    """The validation metrics of the best epoch, from its history record, without the ``val_`` prefix."""
    record = next(r for r in state.history if r["epoch"] == state.best_epoch)
    return {key.removeprefix("val_"): value for key, value in record.items() if key.startswith("val_")}


def _test_cell(fit: Fit, config: RunConfig, workdir: str | Path | None, env: RunEnv,
               test: torch.Tensor | None = None) -> dict:
    """``test``: the test split already loaded (by ``run_cell``); else loaded here."""
    started = time.perf_counter()
    spec, state = fit.splits.spec, fit.state
    device = resolve_device(env.device)
    test = test if test is not None else _load(config, env, with_test=True).test
    data = test.to(device)
    check_split(fit.model, data)
    want_fid = config.fid and spec.kind == "image"
    scoring = lpips_scoring(env.lpips_weights) if spec.kind == "image" else contextlib.nullcontext()
    with scoring:  # LPIPS on the test split only
        evaluation, stochastic = fit.trainer.test(data, keep_recon=want_fid, miou_absent=config.miou_absent)
    results = dict(evaluation.metrics)
    if want_fid:
        key = f"{config.dataset}-test-{spec.size}px-" + "-".join(f"{k}={v}" for k, v in sorted(config.data_options.items()))
        results["fid"] = metrics.compute_fid(evaluation.recon, test, cache_dir=env.fid_cache, cache_key=key,
                                             weights_path=env.fid_weights, device=device)
    if workdir is not None:
        save_pictures(fit.model, data, evaluation.histogram, state.history, Path(workdir) / "images")
    compiled = {"compile_seconds": state.compile_seconds} if config.train.compile else {}
    return {
        "test": results,
        "test_stochastic": stochastic,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val,
        "steps": state.step,
        "history": state.history,
        "seconds": fit.seconds + time.perf_counter() - started,
        **compiled,
    }


@torch.no_grad()
def save_pictures(model, test: torch.Tensor, histogram: torch.Tensor, history: list[dict], folder: Path) -> None:
    """recon_grid.png (test inputs beside reconstructions), codebook_usage.png, curves.png."""
    from bench import pictures  # matplotlib is imported only when pictures are drawn

    model.eval()
    inputs = to_model_input(test[:32])
    recon = model(inputs, mode="deterministic", check_values=False).recon
    pictures.recon_grid(inputs.cpu(), recon.float().cpu() if recon.is_floating_point() else recon.cpu(), folder / "recon_grid.png")
    pictures.codebook_histogram(histogram.numpy(), folder / "codebook_usage.png", title="test code usage")
    pictures.training_curves(history, folder / "curves.png")
