"""What a loaded dataset is: its description (``DataSpec``) and its three splits (``Splits``).

Every dataset, real or synthetic, ends up as three uint8 tensors that fit in memory (and on the
training device), so the trainer batches by index with no per-sample Python. A dataset loaded for
fitting only (``load_dataset(..., with_test=False)``, as an Optuna trial does) has no test tensor.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch


@dataclass(frozen=True)
class DataSpec:
    """Describes the tensors of a dataset and which network family fits them.

    kind: "image" -> uint8 tensors (N, C, H, W), pixels 0..255 (the trainer divides by 255);
          "labels" -> uint8 tensors (N, H, W), values 0..num_classes-1.
    channels: image channels (1 or 3); for labels, the number of classes.
    size: H == W in pixels.
    num_classes: label datasets only, else None.
    """

    name: str
    kind: Literal["image", "labels"]
    channels: int
    size: int
    num_classes: int | None = None

    @property
    def dim_x(self) -> int:
        """D of SPEC.md §0: elements per image, or pixels per label map."""
        return self.size * self.size * (self.channels if self.kind == "image" else 1)


@dataclass(frozen=True)
class Splits:
    """The train / validation / test tensors of one dataset, all on the CPU as loaded.

    test: None when the dataset was loaded without its test split (``with_test=False``).
    """

    spec: DataSpec
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "Splits":
        """The same splits on ``device`` (a missing test split stays None)."""
        test = self.test.to(device) if self.test is not None else None
        return Splits(self.spec, self.train.to(device), self.val.to(device), test)
