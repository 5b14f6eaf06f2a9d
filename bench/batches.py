"""Batches from in-memory tensors: index, move, convert. No DataLoader, no per-sample Python.

Images are stored uint8 (N, C, H, W) and become float in [0, 1]; label maps stay integer (N, H, W).
The epoch order is a permutation drawn from a generator seeded by (seed, epoch), so any epoch's
order can be recomputed on resume without saving it.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch


def to_model_input(batch: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; label maps -> int64."""
    if batch.ndim == 4:
        return batch.float().div_(255.0)
    return batch.long()


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The training order of ``epoch``: a permutation of range(n), a pure function of (seed, epoch)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator)


def num_batches(n: int, batch_size: int) -> int:
    """ceil(n / batch_size): the last partial batch is kept, as the official DataLoader does."""
    return math.ceil(n / batch_size)


def train_batches(data: torch.Tensor, batch_size: int, seed: int, epoch: int, start: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """(batch index, model input) of one training epoch, from batch ``start`` on."""
    order = epoch_order(data.shape[0], seed, epoch).to(data.device)
    for b in range(start, num_batches(data.shape[0], batch_size)):
        yield b, to_model_input(data[order[b * batch_size : (b + 1) * batch_size]])


def eval_batches(data: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    """Model inputs of a split in its stored order."""
    for start in range(0, data.shape[0], batch_size):
        yield to_model_input(data[start : start + batch_size])
