"""Counting integer indices into bins without waiting for the device.

``torch.bincount`` and boolean masks read a size back to the host (a synchronisation on an
accelerator); ``scatter_add_`` into a histogram of known length does not.
"""
from __future__ import annotations

import torch


def count_indices(flat: torch.Tensor, bins: int) -> torch.Tensor:
    """(N,) int64 indices in 0..bins-1 -> (bins,) int64 counts, on the device of ``flat``."""
    counts = torch.zeros(bins, dtype=torch.long, device=flat.device)
    return counts.scatter_add_(0, flat, torch.ones_like(flat))
