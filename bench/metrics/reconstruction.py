"""Reconstruction error per image (SPEC §1.6).

The official code's "mse" is the per-image sum of squared errors over C×H×W with pixels in [0, 1];
the per-element MSE divides that by D = C·H·W (bench.evaluate does, over a whole split). The SSE is
returned per image, shape (B,), so callers choose how to average (the official code averages over a
batch, then over batches).
"""
from __future__ import annotations

import torch


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> None:
    if x.shape != x_hat.shape or x.dim() < 2:
        raise ValueError(f"x and x_hat must share one shape (B, ...); got {tuple(x.shape)} and {tuple(x_hat.shape)}")


def sse_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors of each image over all its elements.

    Args:
        x: originals, shape (B, C, H, W) (any shape (B, ...)), pixels in [0, 1].
        x_hat: reconstructions, same shape.
    Returns:
        (B,) tensor: Σ_{c,h,w} (x − x̂)².
    Raises:
        ValueError: shapes differ or there is no batch dimension.
    """
    _check_pair(x, x_hat)
    return (x - x_hat).pow(2).flatten(1).sum(dim=1)
