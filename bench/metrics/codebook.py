"""Codebook statistics: histograms, perplexity and usage (SPEC §1.6).

Two perplexities are kept apart on purpose:

* the official per-batch value exp(−Σ_k p̄_k log(p̄_k + 1e-7)), which every model reports as its
  ``perplexity`` term (``sqvae.quantizer.batch_perplexity``) and the evaluation averages over the
  batches of a split ("batch-mean perplexity (B=32)");
* the dataset-level value: one histogram over the whole split (``codes_to_histogram``, summed over
  batches) -> ``histogram_to_perplexity`` (exact entropy, 0·log 0 = 0).
"""
from __future__ import annotations

import torch

from bench.metrics.counting import count_indices

def codes_to_histogram(indices: torch.Tensor, num_codes: int) -> torch.Tensor:
    """Count how often each code index occurs.

    Args:
        indices: integer tensor of code indices, any shape.
        num_codes: codebook size K.
    Returns:
        (K,) int64 counts, on the device of ``indices``. Histograms of batches add up to the
        histogram of their concatenation.
    Raises:
        ValueError: an index lies outside 0..K−1 (checked on the CPU; on an accelerator the check
            would make the host wait for the device).
    """
    flat = indices.reshape(-1).long()
    if flat.device.type == "cpu" and flat.numel() and (flat.min() < 0 or flat.max() >= num_codes):
        raise ValueError(f"code indices must lie in 0..{num_codes - 1}; got {flat.min()}..{flat.max()}")
    return count_indices(flat, num_codes)


def _as_counts(counts) -> torch.Tensor:
    counts = torch.as_tensor(counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0 or bool((counts < 0).any()) or float(counts.sum()) <= 0:
        raise ValueError("a histogram needs non-negative counts with a positive total")
    return counts


def histogram_to_perplexity(counts) -> float:
    """Perplexity exp(H(p)) of the code distribution p = counts / Σ counts, with 0·log 0 = 0.

    Args:
        counts: (K,) counts (tensor or array).
    Returns:
        A float in [1, K]: K for uniform use, 1 when a single code is used.
    Raises:
        ValueError: empty histogram, negative counts or a zero total.
    """
    p = _as_counts(counts)
    p = p / p.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def histogram_to_usage(counts) -> float:
    """Fraction of the K codes used at least once.

    Raises:
        ValueError: as ``histogram_to_perplexity``.
    """
    counts = _as_counts(counts)
    return float((counts > 0).sum()) / counts.numel()
