"""`sqvae-bench perf`: how much the trainer costs on top of the bare training step.

Both loops train the same model on the same data at the same batch size:
- trainer step: ``Trainer.train_steps`` (index batching from the stored uint8 tensor, conversion,
  temperature update, running sums of every loss term, hooks, logging intervals);
- bare step: forward, backward and optimiser step on batches prepared beforehand.
Each is timed over ``steps`` steps after a warm-up, ``repeats`` times alternately; the median counts.
A ratio near 1 means the harness adds next to nothing to the model's own cost.

``measure_compile`` times the bare step of the eager model against the same model after
``nn.Module.compile`` (train setting ``compile``), and the cold compile (the first compiled step).
"""
from __future__ import annotations

import itertools
import statistics
import time
from dataclasses import dataclass

import torch

from bench.batches import train_batches
from bench.data import load_dataset
from bench.errors import ConfigError
from bench.models import build_model
from bench.run import resolve_device
from bench.train import TrainConfig, Trainer, seed_everything


@dataclass(frozen=True)
class PerfResult:
    model: str
    dataset: str
    batch_size: int
    device: str
    trainer_images_per_s: float
    bare_images_per_s: float

    @property
    def ratio(self) -> float:
        return self.trainer_images_per_s / self.bare_images_per_s


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    started = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - started


def _setup(model_name: str, dataset: str, batch_size: int, steps: int, device: str, data_options: dict | None,
           precision: str) -> tuple[torch.device, Trainer, list[torch.Tensor]]:
    """(device, a Trainer of the model in train mode, the first ``steps`` batches of epoch 1)."""
    dev = resolve_device(device)
    splits = load_dataset(dataset, **(data_options or {})).to(dev)
    if splits.train.shape[0] < steps * batch_size:
        raise ConfigError(f"{dataset} has {splits.train.shape[0]} training images; perf needs steps x batch_size = {steps * batch_size}")
    seed_everything(0)
    model = build_model(model_name, splits.spec).to(dev)
    cfg = TrainConfig(batch_size=batch_size, max_steps=10**9, log_every=100, precision=precision)
    trainer = Trainer(model, splits, cfg, seed=0)
    model.train()
    batches = [x for _, x in itertools.islice(train_batches(splits.train, batch_size, seed=0, epoch=1), steps)]
    return dev, trainer, batches


def _bare_steps(trainer: Trainer, batches: list[torch.Tensor], dev: torch.device) -> None:
    """Forward, backward and optimiser step on each prepared batch."""
    for x in batches:
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=trainer.precision == "bf16"):
            out = trainer.model(x, mode="train", check_values=False)
        trainer.optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        trainer.optimizer.step()


def measure(model_name: str, dataset: str, batch_size: int = 32, steps: int = 50, repeats: int = 3,
            device: str = "auto", data_options: dict | None = None, precision: str = "auto") -> PerfResult:
    dev, trainer, batches = _setup(model_name, dataset, batch_size, steps, device, data_options, precision)

    def bare() -> None:
        _bare_steps(trainer, batches, dev)

    def full() -> None:
        trainer.state.batch = 0  # stay inside epoch 1, whose order has at least ``steps`` batches
        trainer.train_steps(steps)

    full(), bare()  # warm-up
    trainer_times, bare_times = [], []
    for _ in range(repeats):
        trainer_times.append(_timed(full, dev))
        bare_times.append(_timed(bare, dev))
    images = steps * batch_size
    return PerfResult(model_name, dataset, batch_size, str(dev), images / statistics.median(trainer_times),
                      images / statistics.median(bare_times))


@dataclass(frozen=True)
class CompileResult:
    model: str
    dataset: str
    batch_size: int
    device: str
    eager_step_s: float  # median bare step, eager
    compiled_step_s: float  # median bare step after nn.Module.compile
    compile_s: float  # the first compiled step: the cold compile

    @property
    def speedup(self) -> float:
        return self.eager_step_s / self.compiled_step_s


def measure_compile(model_name: str, dataset: str, batch_size: int = 32, steps: int = 50, repeats: int = 3,
                    device: str = "auto", data_options: dict | None = None, precision: str = "auto") -> CompileResult:
    """Bare train step eager vs compiled (median over ``repeats`` runs of ``steps`` steps after a warm-up)."""
    dev, trainer, batches = _setup(model_name, dataset, batch_size, steps, device, data_options, precision)
    _bare_steps(trainer, batches[:2], dev)  # warm-up
    eager = [_timed(lambda: _bare_steps(trainer, batches, dev), dev) for _ in range(repeats)]
    trainer.model.compile()
    cold = _timed(lambda: _bare_steps(trainer, batches[:1], dev), dev)
    _bare_steps(trainer, batches[:2], dev)  # warm-up
    compiled = [_timed(lambda: _bare_steps(trainer, batches, dev), dev) for _ in range(repeats)]
    return CompileResult(model_name, dataset, batch_size, str(dev), statistics.median(eager) / steps,
                         statistics.median(compiled) / steps, cold)


@dataclass(frozen=True)
class TrialCost:
    study: str
    dataset: str
    model: str
    cell_s: float  # run_cell: fit, test, pictures
    trial_s: float  # an Optuna trial of the same config: fit with pruning reports, no test

    @property
    def ratio(self) -> float:
        return self.trial_s / self.cell_s


def measure_trial(study_name: str = "smoke", repeats: int = 3, device: str = "auto") -> TrialCost:
    """Wall time of one study configuration run as a suite cell and as a trial (in this process, median)."""
    import tempfile
    from pathlib import Path

    import optuna

    from bench.run import RunEnv, run_cell
    from bench.study import load_study, make_sampler, pairs, trial_config
    from bench.tune import TrialTask, execute_trial, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study(study_name)
    dataset, model = pairs(study)[0]
    config = trial_config(study, dataset, model, {})
    env = RunEnv(device=device)
    cell_times, trial_times = [], []
    with tempfile.TemporaryDirectory() as tmp:
        url = str(Path(tmp) / "perf.journal")
        ostudy = optuna.create_study(study_name="perf", storage=open_storage(url), directions=list(study.directions),
                                     sampler=make_sampler(study, study.space.get(model, ())))
        for repeat in range(repeats):
            started = time.perf_counter()
            run_cell(config, Path(tmp) / f"cell{repeat}", env)
            cell_times.append(time.perf_counter() - started)
            trial = ostudy.ask()
            pruner = study.pruner if study.pruner.get("name", "none") != "none" and len(study.objective) == 1 else None
            task = TrialTask("perf", url, "perf", trial.number, config, env, study.objective, pruner, study)
            started = time.perf_counter()
            outcome = execute_trial(task)
            trial_times.append(time.perf_counter() - started)
            ostudy.tell(trial, outcome["values"][0] if outcome["state"] == "complete" else None,
                        state=None if outcome["state"] == "complete" else optuna.trial.TrialState.FAIL)
    return TrialCost(study.name, dataset, model, statistics.median(cell_times), statistics.median(trial_times))
