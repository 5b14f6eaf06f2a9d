"""Callbacks of the training loop, shared by the trainer and whoever watches it (progress bars,
MLflow events, pruning). Override what you need; every method is a no-op by default."""
from __future__ import annotations


class Hooks:
    """Called by ``bench.train.Trainer``; see each method for when."""

    def on_start(self, total_steps: int, start_step: int) -> None:
        """Before the first step (``start_step`` > 0 when resumed from a checkpoint)."""

    def on_step(self, step: int) -> None:
        """After every optimiser step; must not read device values (no sync)."""

    def on_log(self, step: int, values: dict[str, float]) -> None:
        """Every ``log_every`` steps: means of the training terms over the window, plus lr."""

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        """After each validation: train_* means, val_* metrics, lr, model scalars, seconds."""
