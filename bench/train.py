"""The trainer: one loop for every registered model (SPEC.md §3).

Adam, ReduceLROnPlateau on the deterministic validation loss, the temperature advanced every step,
deterministic validation each epoch, the best epoch kept, the best model tested at the end on a test
split given then (training needs train and val only, so a search never holds the test split).
A checkpoint holds everything the loop depends on (model, optimiser, scheduler, counters, running
sums, best model, RNG states); the data order is a pure function of (seed, epoch). So a run stopped
at any checkpoint and resumed ends, on CPU, bit for bit where an uninterrupted run ends.
The host reads device values only at logging intervals and epoch ends.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from bench.atomic import atomic_write
from bench.batches import num_batches, train_batches
from bench.data.spec import Splits
from bench.errors import ConfigError
from bench.evaluate import Evaluation, evaluate
from bench.hooks import Hooks
from bench.running import RunningMean

PRECISIONS = ("auto", "fp32", "bf16")
CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """Training settings; defaults are the official ones (SPEC §3).

    max_steps > 0 replaces ``epochs``: stop after that many steps (validating at the stop).
    checkpoint_every: steps between mid-epoch checkpoints (0: at epoch ends only).
    precision: "auto" is bf16 autocast on CUDA and float32 elsewhere.
    official_vmf_validation: validate with BatchNorm in train mode, as the official vMF trainer does
    (SPEC §6.8; it changes BN statistics and so model selection). Off: validation in eval mode.
    compile: ``torch.compile`` the model's forward (``nn.Module.compile``: state_dict keys unchanged);
    it changes the random stream (Inductor's own RNG) and float rounding, hence part of the cell id.
    The cold compile happens at the first training step; its wall time is reported as compile_seconds.
    """

    epochs: int = 100
    max_steps: int = 0
    batch_size: int = 32
    eval_batch_size: int = 32
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    lr_factor: float = 0.5
    lr_patience: int = 3
    log_every: int = 100
    checkpoint_every: int = 0
    eval_stochastic: bool = False
    precision: str = "auto"
    official_vmf_validation: bool = False
    compile: bool = False

    def __post_init__(self):
        for key, minimum in (("epochs", 1), ("batch_size", 1), ("eval_batch_size", 1), ("log_every", 1),
                             ("max_steps", 0), ("checkpoint_every", 0), ("lr_patience", 0)):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(f"train.{key} must be an integer >= {minimum}; got {value!r}")
        for key in ("lr", "lr_factor"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"train.{key} must be a number; got {value!r} (YAML reads 1e-3 as text: write 1.0e-3)")
        if not (isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"train.betas must be two numbers in [0, 1); got {self.betas!r}")
        object.__setattr__(self, "betas", tuple(self.betas))  # a YAML list and a tuple are one config
        for key in ("eval_stochastic", "official_vmf_validation", "compile"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"train.{key} must be true or false; got {getattr(self, key)!r}")
        if not self.lr > 0:
            raise ConfigError(f"train.lr must be > 0; got {self.lr!r}")
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"train.lr_factor must be in (0, 1); got {self.lr_factor!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 1
    batch: int = 0  # next batch index within ``epoch``
    best_val: float = math.inf
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    compile_seconds: float = 0.0  # wall time of the first compiled training step of each process, summed


def resolve_precision(precision: str, device: torch.device) -> str:
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return precision


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """One seed for initialisation, Gumbel noise and resets (data order uses it through batches.epoch_order)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def save_torch(obj, path: Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cpu_state_dict(model: torch.nn.Module) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def check_data(model, splits: Splits) -> None:
    """Check every loaded split once before training (a missing test split is skipped)."""
    for split in (splits.train, splits.val, splits.test):
        if split is not None:
            check_split(model, split)


def check_split(model, split: torch.Tensor) -> None:
    """Check that ``split`` fits ``model`` (shapes; label ranges read the data, one sync)."""
    if model.kind == "labels":
        model.check_input(split, check_values=True)  # uint8 labels are an integer tensor
    else:
        model.check_input(split[:1].float())


class Trainer:
    """Trains ``model`` on ``splits`` (already on the model's device; ``splits.test`` is not used
    and may be None); see the module docstring.

    A hook may raise from ``on_epoch`` to stop training (pruning): the epoch's checkpoint is already
    written by then, and the exception propagates out of ``fit``.
    """

    def __init__(self, model, splits: Splits, cfg: TrainConfig, seed: int, workdir: Path | None = None,
                 hooks: Sequence[Hooks] = ()):
        self.model, self.splits, self.cfg, self.seed = model, splits, cfg, seed
        self.workdir = Path(workdir) if workdir is not None else None
        self.hooks = list(hooks)
        self.device = splits.train.device
        self.precision = resolve_precision(cfg.precision, self.device)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=cfg.lr_factor, patience=cfg.lr_patience, threshold=1e-4
        )
        self.state = TrainState()
        self.best_state: dict | None = None  # set at the first validation
        self.steps_per_epoch = num_batches(splits.train.shape[0], cfg.batch_size)
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self._epoch = RunningMean()  # training terms since the epoch began
        self._window = RunningMean()  # ... since the last logging interval
        self._cold = cfg.compile  # the next training step compiles
        if cfg.compile:
            model.compile()

    # -- checkpoints -------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        if self.workdir is None:
            return
        checkpoint = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
            "best_state": self.best_state,
            "running": {"epoch": self._epoch.state(), "window": self._window.state()},
            "rng": rng_state(),
        }
        save_torch(checkpoint, self.workdir / CHECKPOINT)

    def try_resume(self) -> bool:
        """Load ``workdir/checkpoint.pt`` when there is one; True when resumed."""
        path = self.workdir / CHECKPOINT if self.workdir is not None else None
        if path is None or not path.exists():
            return False
        ckpt = torch.load(path, map_location=self.device, weights_only=False)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(**ckpt["state"])
        self.best_state = ckpt["best_state"]
        self._epoch.load(ckpt["running"]["epoch"])
        self._window.load(ckpt["running"]["window"])
        set_rng_state(ckpt["rng"])
        return True

    # -- the loop ----------------------------------------------------------------------------
    def _train_step(self, x: torch.Tensor) -> None:
        if self._cold:
            self._cold = False
            started = time.perf_counter()
            self._train_step(x)
            self.state.compile_seconds += time.perf_counter() - started
            return
        self.state.step += 1
        self.model.set_step(self.state.step)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            out = self.model(x, mode="train", check_values=False)
        self.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        self.optimizer.step()
        self._epoch.add(out.terms)
        self._window.add(out.terms)

    def fit(self) -> TrainState:
        """Train until ``epochs`` or ``max_steps``, resuming from the workdir's checkpoint if any."""
        self.model.train()
        if not self.try_resume():
            check_data(self.model, self.splits)
        for hook in self.hooks:
            hook.on_start(self.total_steps, self.state.step)
        while self.state.step < self.total_steps:
            self._run_epoch()
        return self.state

    def _run_epoch(self) -> None:
        started = time.perf_counter()
        self.train_steps(self.total_steps - self.state.step)
        self._end_epoch(time.perf_counter() - started)

    def train_steps(self, limit: int) -> None:
        """Up to ``limit`` steps of the current epoch, with logging, hooks and checkpoints (no validation)."""
        cfg, state = self.cfg, self.state
        stop = state.step + limit
        for b, x in train_batches(self.splits.train, cfg.batch_size, self.seed, state.epoch, state.batch):
            self._train_step(x)
            state.batch = b + 1
            for hook in self.hooks:
                hook.on_step(state.step)
            if state.step % cfg.log_every == 0:
                values = {**self._window.means(), "lr": self.optimizer.param_groups[0]["lr"]}
                self._window = RunningMean()
                for hook in self.hooks:
                    hook.on_log(state.step, values)
            if state.step >= stop:
                break
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()

    def _end_epoch(self, seconds: float) -> None:
        state = self.state
        train = self._epoch.means()
        val = evaluate(self.model, self.splits.val, batch_size=self.cfg.eval_batch_size, precision=self.precision,
                       bn_train_mode=self.cfg.official_vmf_validation).metrics
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step(val["loss"])
        if val["loss"] < state.best_val:
            state.best_val, state.best_epoch = val["loss"], state.epoch
            self.best_state = cpu_state_dict(self.model)
            if self.workdir is not None:
                save_torch(self.best_state, self.workdir / BEST)
        scalars = {name: float(v) for name, v in self.model.scalars().items()}
        record = {"epoch": state.epoch, "step": state.step, "lr": lr, "seconds": seconds,
                  **{f"train_{k}": v for k, v in train.items()}, **{f"val_{k}": v for k, v in val.items()}, **scalars}
        state.history.append(record)
        state.epoch, state.batch = state.epoch + 1, 0
        self._epoch = RunningMean()
        self.save_checkpoint()
        for hook in self.hooks:
            hook.on_epoch(record["epoch"], record)

    def load_best(self) -> None:
        """Load the weights of the best validated epoch into the model."""
        if self.best_state is None:
            raise RuntimeError("no validated model yet: call fit() first")
        self.model.load_state_dict(self.best_state)

    def test(self, data: torch.Tensor, keep_recon: bool = False,
             miou_absent: str = "zero") -> tuple[Evaluation, dict[str, float]]:
        """Evaluate the best model on the test split ``data`` (on the model's device):
        (deterministic evaluation, stochastic metrics or {})."""
        self.load_best()
        kwargs = dict(batch_size=self.cfg.eval_batch_size, precision=self.precision, miou_absent=miou_absent)
        stochastic = evaluate(self.model, data, mode="stochastic", **kwargs).metrics if self.cfg.eval_stochastic else {}
        deterministic = evaluate(self.model, data, keep_recon=keep_recon, **kwargs)
        return deterministic, stochastic
