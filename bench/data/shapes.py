"""Synthetic "shapes": one to three coloured circles, squares and triangles, with exact label maps.

A built-in dataset that needs no download and generates 10k images in well under a second, so the
whole pipeline, label-map models included, can run on a CPU. ``shapes`` returns the RGB images,
``shapes-labels`` the label maps of the same draws (0 background, 1 circle, 2 square, 3 triangle).

Each image has a flat dim background (every channel < 64) and bright shapes (every channel >= 64),
drawn in slot order with hard edges: a later shape overwrites earlier ones in the image and in the
label map alike, so the two always agree pixel for pixel.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch

from bench.data.spec import DataSpec, Splits
from bench.errors import ConfigError

SIZES = (28, 32, 64)
MAX_SHAPES = 3
CLASSES = ("background", "circle", "square", "triangle")
CIRCLE, SQUARE, TRIANGLE = 1, 2, 3
DIM, BRIGHT = 64, 64  # background channels lie in [0, DIM), shape channels in [BRIGHT, 256)
RADIUS = (0.12, 0.28)  # fraction of the image size
CENTRE = (0.2, 0.8)  # fraction of the image size
_CHUNK = 1024  # images rendered at once; bounds the float temporaries to about _CHUNK * size² * 8 bytes


@dataclass(frozen=True)
class ShapeDraws:
    """The random parameters of n images; slot k of an image is drawn over slots < k.

    background: (n, 3) uint8.
    kind: (n, MAX_SHAPES) uint8, CIRCLE / SQUARE / TRIANGLE, or 0 for an unused slot.
    centre: (n, MAX_SHAPES, 2) float64, (x, y) in pixels.
    radius: (n, MAX_SHAPES) float64 in pixels: circle radius, half the square's side, and for the
        triangle half its height and half its base (apex up).
    colour: (n, MAX_SHAPES, 3) uint8.
    """

    background: np.ndarray
    kind: np.ndarray
    centre: np.ndarray
    radius: np.ndarray
    colour: np.ndarray

    def take(self, rows: slice) -> "ShapeDraws":
        return ShapeDraws(*(getattr(self, f.name)[rows] for f in fields(self)))


def make_shapes(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Generate n images and their label maps, identical for the same (n, size, seed).

    Returns: images uint8 (n, 3, size, size) and labels uint8 (n, size, size) in 0..3.
    """
    return render_shapes(draw_shapes(n, size, np.random.default_rng(seed)), size)


def draw_shapes(n: int, size: int, rng: np.random.Generator) -> ShapeDraws:
    """Draw the parameters of n images (see ``ShapeDraws``)."""
    count = rng.integers(1, MAX_SHAPES + 1, n)
    kind = rng.integers(CIRCLE, TRIANGLE + 1, (n, MAX_SHAPES), dtype=np.uint8)
    kind[np.arange(MAX_SHAPES) >= count[:, None]] = 0
    return ShapeDraws(
        background=rng.integers(0, DIM, (n, 3), dtype=np.uint8),
        kind=kind,
        centre=rng.uniform(*CENTRE, (n, MAX_SHAPES, 2)) * size,
        radius=rng.uniform(*RADIUS, (n, MAX_SHAPES)) * size,
        colour=rng.integers(BRIGHT, 256, (n, MAX_SHAPES, 3), dtype=np.uint8),
    )


def render_shapes(draws: ShapeDraws, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Render drawn parameters to images (n, 3, size, size) and label maps (n, size, size), uint8."""
    n = len(draws.kind)
    images = np.empty((n, 3, size, size), np.uint8)
    labels = np.empty((n, size, size), np.uint8)
    for start in range(0, n, _CHUNK):
        rows = slice(start, start + _CHUNK)
        images[rows], labels[rows] = _render_chunk(draws.take(rows), size)
    return images, labels


def _render_chunk(draws: ShapeDraws, size: int) -> tuple[np.ndarray, np.ndarray]:
    n = len(draws.kind)
    image = np.broadcast_to(draws.background[:, :, None, None], (n, 3, size, size))
    label = np.zeros((n, size, size), np.uint8)
    for slot in range(MAX_SHAPES):
        inside = _slot_mask(draws, slot, size)  # (n, size, size)
        image = np.where(inside[:, None], draws.colour[:, slot, :, None, None], image)
        label = np.where(inside, draws.kind[:, slot, None, None], label)
    return image, label


def _slot_mask(draws: ShapeDraws, slot: int, size: int) -> np.ndarray:
    """Which pixels the shape in ``slot`` covers, (n, size, size) bool; tested at pixel centres."""
    grid = np.arange(size) + 0.5
    dx = grid[None, None, :] - draws.centre[:, slot, 0, None, None]  # (n, 1, size)
    dy = grid[None, :, None] - draws.centre[:, slot, 1, None, None]  # (n, size, 1)
    r = draws.radius[:, slot, None, None]
    inside = np.zeros((len(draws.kind), size, size), bool)
    for kind, covers in _COVERS.items():
        rows = draws.kind[:, slot] == kind
        inside[rows] = covers(dx[rows], dy[rows], r[rows])
    return inside


def _in_circle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return dx * dx + dy * dy <= r * r


def _in_square(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    return (np.abs(dx) <= r) & (np.abs(dy) <= r)


def _in_triangle(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    # apex at (0, -r), base from (-r, r) to (r, r): the half-width grows from 0 to r down the shape
    return (dy <= r) & (2 * np.abs(dx) <= dy + r)


_COVERS = {CIRCLE: _in_circle, SQUARE: _in_square, TRIANGLE: _in_triangle}


def load_shapes(
    root: Path, download: bool, seed: int, *, size: int = 32, n_train: int = 8000, n_val: int = 1000, n_test: int = 1000,
    with_test: bool = True,
) -> Splits:
    """The images, (N, 3, size, size) uint8. ``root`` and ``download`` are unused (generated data).
    ``with_test=False``: no test images are rendered and ``test`` is None (see ``_generate``).

    Raises: ConfigError for a size other than 28, 32, 64 or a split size below 1.
    """
    images, _ = _generate(size, (n_train, n_val, n_test), seed, with_test)
    return _split(shapes_spec(size=size), images, (n_train, n_val), with_test)


def load_shapes_labels(
    root: Path, download: bool, seed: int, *, size: int = 32, n_train: int = 8000, n_val: int = 1000, n_test: int = 1000,
    with_test: bool = True,
) -> Splits:
    """The label maps of the same draws as ``shapes``, (N, size, size) uint8 in 0..3."""
    _, labels = _generate(size, (n_train, n_val, n_test), seed, with_test)
    return _split(shapes_labels_spec(size=size), labels, (n_train, n_val), with_test)


def shapes_spec(*, size: int = 32, **_) -> DataSpec:
    _check_size(size)
    return DataSpec("shapes", "image", 3, size)


def shapes_labels_spec(*, size: int = 32, **_) -> DataSpec:
    _check_size(size)
    return DataSpec("shapes-labels", "labels", len(CLASSES), size, len(CLASSES))


def _check_size(size: int) -> None:
    if size not in SIZES:
        raise ConfigError(f"shapes: option size must be one of {', '.join(map(str, SIZES))}, got {size!r}")


def _generate(size: int, counts: tuple[int, int, int], seed: int, with_test: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images and label maps of train | val (| test), as ``make_shapes(sum(counts), size, seed)``.

    The parameters of all three splits are drawn, always: each parameter is drawn for every image at
    once, so drawing fewer images would change train and val. Without the test split only the train
    and val rows are rendered, and they are the same arrays as with it (each image renders alone).
    """
    _check_size(size)
    for option, count in zip(("n_train", "n_val", "n_test"), counts):
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ConfigError(f"shapes: option {option} must be an integer >= 1, got {count!r}")
    draws = draw_shapes(sum(counts), size, np.random.default_rng(seed))
    return render_shapes(draws if with_test else draws.take(slice(0, counts[0] + counts[1])), size)


def _split(spec: DataSpec, array: np.ndarray, heads: tuple[int, int], with_test: bool) -> Splits:
    """One generated stream cut into train | val | test, so the splits never share a draw; the test
    part is None without the test split (``array`` then holds train and val only)."""
    train, val, test = (torch.from_numpy(part) for part in np.split(array, np.cumsum(heads)))
    return Splits(spec, train, val, test if with_test else None)
