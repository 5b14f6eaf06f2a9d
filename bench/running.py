"""Running means of a model's named loss terms, summed on the device and read by the host once.

The trainer keeps one per epoch and one per logging window; the evaluation one per pass.
"""
from __future__ import annotations

import math

import torch

from bench.errors import RunFailed


class RunningMean:
    """Sums of the named scalar terms of successive batches; ``what`` names them in errors."""

    def __init__(self, what: str = "training"):
        self.what = what
        self.names: list[str] = []
        self.total: torch.Tensor | None = None
        self.count = 0

    def add(self, terms: dict[str, torch.Tensor]) -> None:
        """Add one batch's terms (scalar tensors, same names each time); one stacked tensor, no sync."""
        values = torch.stack([value.detach().float() for value in terms.values()])
        if self.total is None:
            self.names, self.total = list(terms), values
        else:
            self.total += values
        self.count += 1

    def means(self) -> dict[str, float]:
        """Means over the added batches; raises RunFailed when the mean loss is not finite."""
        values = dict(zip(self.names, (self.total / self.count).tolist())) if self.count else {}
        if "loss" in values and not math.isfinite(values["loss"]):
            raise RunFailed(f"non-finite {self.what} loss ({values['loss']})")
        return values

    def state(self) -> dict:
        return {"names": self.names, "total": self.total, "count": self.count}

    def load(self, state: dict) -> None:
        self.names, self.total, self.count = state["names"], state["total"], state["count"]
