"""One run: a plain function of a fully resolved config that returns its metrics.

``run_cell(config, workdir, env)`` loads the data, builds the model under the run's seed, trains,
tests the best checkpoint and returns a JSON-ready dict. Everything that changes results is in
``RunConfig`` (hashed into the cell id); where the data lives and which device runs it are in
``RunEnv`` and never change results. Suites, Optuna and a Dask cluster all call this function.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from bench import metrics
from bench.batches import to_model_input
from bench.data import dataset_spec, load_dataset
from bench.errors import ConfigError
from bench.models import build_model, resolve_model_options
from bench.hooks import Hooks
from bench.numerics import numerics
from bench.train import TrainConfig, Trainer, seed_everything

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


def run_cell(config: RunConfig, workdir: str | Path | None = None, env: RunEnv = RunEnv(),
             hooks: Sequence[Hooks] = ()) -> dict:
    """Train and test one configuration; resumes from ``workdir``'s checkpoint when there is one.

    Returns {"test": deterministic test metrics, "test_stochastic": {...} or {}, "best_epoch",
    "best_val_loss", "steps", "history": per-epoch records, "seconds"}.
    """
    with numerics(env.threads, env.deterministic):
        return _run_cell(config, workdir, env, hooks)


def _run_cell(config: RunConfig, workdir: str | Path | None, env: RunEnv, hooks: Sequence[Hooks]) -> dict:
    started = time.perf_counter()
    device = resolve_device(env.device)
    splits = load_dataset(config.dataset, root=env.data_root, download=env.download, **config.data_options)
    seed_everything(config.seed)
    model = build_model(config.model, splits.spec, config.model_options).to(device)
    if workdir is not None:
        Path(workdir).mkdir(parents=True, exist_ok=True)
    data = splits.to(device)
    trainer = Trainer(model, data, config.train, config.seed, workdir, hooks)
    state = trainer.fit()
    want_fid = config.fid and splits.spec.kind == "image"
    test, stochastic = trainer.test(keep_recon=want_fid, miou_absent=config.miou_absent)
    results = dict(test.metrics)
    if want_fid:
        key = f"{config.dataset}-test-{splits.spec.size}px-" + "-".join(f"{k}={v}" for k, v in sorted(config.data_options.items()))
        results["fid"] = metrics.compute_fid(test.recon, splits.test, cache_dir=env.fid_cache, cache_key=key,
                                             weights_path=env.fid_weights, device=device)
    if workdir is not None:
        save_pictures(model, data.test, test.histogram, state.history, Path(workdir) / "images")
    return {
        "test": results,
        "test_stochastic": stochastic,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val,
        "steps": state.step,
        "history": state.history,
        "seconds": time.perf_counter() - started,
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
