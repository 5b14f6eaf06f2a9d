"""Pictures of a cell: reconstructions beside their inputs, codebook usage, training curves.

Figures are drawn with matplotlib's object-oriented API on an Agg canvas, so no global backend is
touched (an interactive user keeps theirs). Every PNG is written atomically: a temporary file in the
same folder, then a rename, so a reader never sees half a picture.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torchvision.utils import make_grid, save_image

from bench.atomic import atomic_write
from bench.metrics.codebook import histogram_to_perplexity, histogram_to_usage

# The 19 Cityscapes train-id colours, then 13 more distinct ones: label maps with up to 32 classes
# get distinct colours; larger ids wrap around. RGB, 0..255.
PALETTE = torch.tensor([
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
    (0, 0, 0), (255, 255, 255), (255, 128, 0), (0, 255, 255), (128, 0, 255), (0, 128, 0),
    (255, 192, 203), (128, 128, 0), (0, 128, 128), (255, 255, 128), (128, 255, 0), (64, 0, 0),
    (192, 192, 255),
], dtype=torch.float32) / 255.0

# Panels of ``training_curves``: title, y scale, and a test for the history keys drawn there.
PANELS: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("loss", "linear", lambda k: k.endswith("_loss")),
    ("perplexity", "linear", lambda k: "perplexity" in k),
    ("reconstruction", "linear", lambda k: k.endswith(("_mse", "_acc", "_miou"))),
    ("schedules", "log", lambda k: k in ("lr", "temperature") or k.startswith(("sigma2", "variance", "kappa"))),
)


def _save_figure(fig: Figure, path: str | Path) -> Path:
    FigureCanvasAgg(fig)  # attaches an Agg canvas to the figure: no pyplot, no global backend
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


# -- reconstructions -----------------------------------------------------------------------------
def colourise(labels: torch.Tensor) -> torch.Tensor:
    """(N, H, W) integer label maps -> (N, 3, H, W) float RGB in [0, 1] from ``PALETTE``."""
    index = labels.long() % len(PALETTE)
    return PALETTE[index].permute(0, 3, 1, 2)


def as_rgb(batch: torch.Tensor) -> torch.Tensor:
    """Images (N, C, H, W) uint8 or float in [0, 1], or label maps (N, H, W) int, as float in [0, 1]."""
    batch = batch.detach().cpu()
    if batch.dim() == 3:
        if batch.is_floating_point():
            raise ValueError("a (N, H, W) batch must hold integer labels")
        return colourise(batch)
    if batch.dim() != 4 or batch.shape[1] not in (1, 3):
        raise ValueError(f"images must be (N, 1|3, H, W); got {tuple(batch.shape)}")
    if not batch.is_floating_point():
        return batch.float() / 255.0
    return batch.float().clamp(0.0, 1.0)


def _pad_to(batch: torch.Tensor, n: int) -> torch.Tensor:
    blank = torch.ones((n - batch.shape[0], *batch.shape[1:]), dtype=batch.dtype)  # white
    return torch.cat([batch, blank])


def recon_grid(inputs: torch.Tensor, recons: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Save a PNG of paired rows: ``nrow`` inputs, then their ``nrow`` reconstructions, and so on.

    Args:
        inputs, recons: images (N, C, H, W), C in {1, 3}, uint8 or float in [0, 1]; or label maps
            (N, H, W) of integer class ids, colourised with ``PALETTE``. Same shapes.
        path: where the PNG goes (parent folders are created).
        nrow: images per row.
    Returns:
        ``path``.
    Raises:
        ValueError: shapes differ or are not one of the above.
    """
    if inputs.shape != recons.shape or inputs.shape[0] == 0:
        raise ValueError(f"inputs and recons need the same non-empty shape; got {tuple(inputs.shape)} "
                         f"and {tuple(recons.shape)}")
    n = math.ceil(inputs.shape[0] / nrow) * nrow
    pair = torch.stack([_pad_to(as_rgb(inputs), n), _pad_to(as_rgb(recons), n)])  # (2, n, C, H, W)
    rows = pair.unflatten(1, (n // nrow, nrow)).transpose(0, 1)  # (rows, 2, nrow, C, H, W)
    grid = make_grid(rows.flatten(0, 2), nrow=nrow, padding=2, pad_value=1.0)
    return atomic_write(path, lambda tmp: save_image(grid, tmp, format="png"))


# -- codebook usage ------------------------------------------------------------------------------
def codebook_histogram(counts, path: str | Path, title: str = "") -> Path:
    """Save a bar chart of code counts sorted by frequency, titled with usage and perplexity.

    Args:
        counts: (K,) non-negative code counts (array or tensor) with a positive total.
        path: where the PNG goes.
        title: prefix of the figure title (e.g. the cell's name).
    Raises:
        ValueError: empty counts, negative counts or a zero total.
    """
    counts = np.asarray(counts, dtype=np.float64).reshape(-1)
    usage, perplexity = histogram_to_usage(counts), histogram_to_perplexity(counts)
    ranked = np.sort(counts)[::-1]
    fig = Figure(figsize=(8, 3.5))
    ax = fig.add_subplot()
    ax.bar(np.arange(len(ranked)), ranked / ranked.sum(), width=1.0, color="tab:blue")
    ax.set(xlabel="code (sorted by frequency)", ylabel="fraction of assignments", xlim=(-0.5, len(ranked) - 0.5))
    used = int((counts > 0).sum())
    head = f"{title}: " if title else ""
    ax.set_title(f"{head}{used}/{len(counts)} codes used ({usage:.0%}), perplexity {perplexity:.1f}")
    fig.tight_layout()
    return _save_figure(fig, path)


# -- training curves -----------------------------------------------------------------------------
def _series(history: Sequence[dict], key: str, positive: bool) -> tuple[list, list[float]]:
    """(epochs, values) of the records holding a finite (and, for log axes, positive) ``key``;
    the epoch defaults to the record's position + 1."""
    xs, ys = [], []
    for i, record in enumerate(history):
        value = record.get(key)
        if isinstance(value, numbers.Real) and math.isfinite(value) and (value > 0 or not positive):
            xs.append(record.get("epoch", i + 1))
            ys.append(float(value))
    return xs, ys


def _panels(history: Sequence[dict]) -> list[tuple[str, str, dict]]:
    """(title, y scale, {key: (epochs, values)}) of each ``PANELS`` entry that has data."""
    keys = sorted({k for record in history for k in record})
    panels = []
    for title, scale, wanted in PANELS:
        series = {k: _series(history, k, positive=scale == "log") for k in keys if wanted(k)}
        series = {k: xy for k, xy in series.items() if xy[1]}
        if series:
            panels.append((title, scale, series))
    return panels


def training_curves(history: Sequence[dict], path: str | Path) -> Path:
    """Save a multi-panel figure of per-epoch records (``Trainer`` history): losses; perplexities;
    mse / acc / mIoU; lr, temperature, variances and kappas on a log scale. Keys and panels without
    data are left out, so any subset of keys (or an empty history) draws without error."""
    panels = _panels(history)
    fig = Figure(figsize=(4.5 * max(len(panels), 1), 3.5))
    if not panels:
        fig.text(0.5, 0.5, "no training history", ha="center", va="center")
    for i, (title, scale, series) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for key, (xs, ys) in series.items():
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
        ax.set(title=title, xlabel="epoch", yscale=scale)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_figure(fig, path)
