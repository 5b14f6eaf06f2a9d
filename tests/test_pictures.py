"""Tests of bench.pictures: valid PNGs of the expected size, paired rows, label colours, robust curves."""
from __future__ import annotations

import math

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from bench import pictures

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def read_png(path) -> np.ndarray:
    """The RGB pixels of a PNG, after checking its signature and that it decodes."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def no_leftovers(folder) -> bool:
    return not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_recon_grid_pairs_input_rows_with_reconstruction_rows(tmp_path):
    inputs = torch.zeros(10, 3, 8, 8, dtype=torch.uint8)  # black
    recons = torch.ones(10, 3, 8, 8)  # white, float in [0, 1]
    path = pictures.recon_grid(inputs, recons, tmp_path / "a" / "b" / "recon_grid.png", nrow=4)
    pixels = read_png(path)
    # ceil(10 / 4) = 3 pairs of rows of 8-pixel tiles with 2-pixel padding.
    assert pixels.shape == (6 * 10 + 2, 4 * 10 + 2, 3)
    tile = lambda row, col: pixels[2 + 10 * row + 4, 2 + 10 * col + 4]  # noqa: E731 - a tile's centre
    assert [tile(r, 0).tolist() for r in range(6)] == [[0, 0, 0], [255, 255, 255]] * 3
    assert tile(4, 1).tolist() == [0, 0, 0] and tile(4, 2).tolist() == [255, 255, 255]  # 9, 10, then blanks
    assert no_leftovers(path.parent)


def test_recon_grid_gray_images(tmp_path):
    inputs = torch.full((3, 1, 6, 6), 0.5)
    pixels = read_png(pictures.recon_grid(inputs, torch.zeros_like(inputs), tmp_path / "gray.png", nrow=3))
    assert pixels.shape == (2 * 8 + 2, 3 * 8 + 2, 3)
    assert pixels[2 + 3, 2 + 3].tolist() == [128, 128, 128] and pixels[10 + 3, 2 + 3].tolist() == [0, 0, 0]


def test_recon_grid_colourises_label_maps(tmp_path):
    labels = torch.arange(19).view(19, 1, 1).expand(19, 4, 4).to(torch.uint8)
    predictions = torch.zeros(19, 4, 4, dtype=torch.long)
    pixels = read_png(pictures.recon_grid(labels, predictions, tmp_path / "labels.png", nrow=19))
    palette = (pictures.PALETTE * 255).round().to(torch.uint8).numpy()
    inputs_row = [pixels[2 + 1, 2 + 6 * c + 1].tolist() for c in range(19)]
    assert inputs_row == palette[:19].tolist()
    assert pixels[8 + 1, 2 + 1].tolist() == palette[0].tolist()  # the predictions' row
    assert len({tuple(c) for c in palette.tolist()}) == len(palette) >= 19


@pytest.mark.parametrize("inputs, recons", [
    (torch.zeros(2, 3, 4, 4), torch.zeros(3, 3, 4, 4)),
    (torch.zeros(2, 5, 4, 4), torch.zeros(2, 5, 4, 4)),
    (torch.zeros(2, 4, 4), torch.zeros(2, 4, 4)),  # float (N, H, W) is not a label map
])
def test_recon_grid_rejects_bad_shapes(tmp_path, inputs, recons):
    with pytest.raises(ValueError):
        pictures.recon_grid(inputs, recons, tmp_path / "bad.png")


def test_codebook_histogram(tmp_path):
    counts = np.array([0, 5, 0, 50, 10, 0, 0, 35])
    path = pictures.codebook_histogram(counts, tmp_path / "images" / "codebook_usage.png", title="shapes/vqvae")
    assert read_png(path).shape == (350, 800, 3)
    assert no_leftovers(path.parent)
    with pytest.raises(ValueError):
        pictures.codebook_histogram(np.zeros(4), tmp_path / "empty.png")


FULL_HISTORY = [
    {"epoch": e, "step": 10 * e, "lr": 1e-3 / e, "seconds": 1.0, "train_loss": 3.0 / e, "val_loss": 3.5 / e,
     "train_perplexity": 4.0 * e, "val_perplexity_batch": 3.9 * e, "val_perplexity": 4.2 * e,
     "val_mse": 0.1 / e, "temperature": math.exp(-e), "sigma2_q": 0.01, "kappa_x": 100.0 * e}
    for e in (1, 2, 3)
]


@pytest.mark.parametrize("history", [
    FULL_HISTORY,
    [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "val_acc": 0.9}],  # missing keys
    [{"train_loss": float("nan"), "lr": 0.0, "note": "text"}, {"train_loss": None, "val_miou": 0.4}],
    [],
], ids=["full", "partial", "odd-values", "empty"])
def test_training_curves_draws_any_history(tmp_path, history):
    path = pictures.training_curves(history, tmp_path / "deep" / "curves.png")
    height, width, _ = read_png(path).shape
    assert height == 350 and width >= 450
    assert no_leftovers(path.parent)


def test_full_history_has_four_panels(tmp_path):
    assert [title for title, _, _ in pictures._panels(FULL_HISTORY)] == [
        "loss", "perplexity", "reconstruction", "schedules"]
    assert read_png(pictures.training_curves(FULL_HISTORY, tmp_path / "c.png")).shape == (350, 1800, 3)


def test_global_backend_untouched(tmp_path):
    backend = matplotlib.get_backend()
    pictures.training_curves(FULL_HISTORY, tmp_path / "c.png")
    pictures.codebook_histogram([1, 2, 3], tmp_path / "h.png")
    assert matplotlib.get_backend() == backend
