"""MNIST, Fashion-MNIST and CIFAR10 in torchvision's on-disk layout, split as SPEC.md §3 says.

The validation split is the tail of the official train set, cut with no shuffle; the test split is
the official test set. Pixels stay uint8 (N, C, H, W).

MNIST and Fashion-MNIST are read by torchvision's own dataset classes. CIFAR10 is not: torchvision's
CIFAR10 md5-checks every batch file, so it refuses any copy that is not byte-identical to the
official archive (our tiny test files included). We read its documented python-pickle batches
ourselves after checking that the files exist, and use torchvision only to download them.
"""
from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.data.registry import data_error
from bench.data.spec import DataSpec, Splits
from bench.errors import DataError

# First index of the validation split in the official train set (SPEC.md §3). Module-level so that
# tests can move the cut for tiny files; the values here are exact to the official code.
VAL_START = {"mnist": 50_000, "fashion-mnist": 50_000, "cifar10": 40_000}

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_FILES = CIFAR_TRAIN_FILES + ("test_batch", "batches.meta")
IDX_NOTE = " (uncompressed: gunzip the .gz files, or pass download=True, which extracts them)"
DOWNLOAD_HINT = "pass download=True (CLI: --download)"


def _datasets():
    """torchvision.datasets, imported when a dataset is loaded (importing torchvision takes seconds)."""
    from torchvision import datasets

    return datasets


def load_mnist(root: Path, download: bool, seed: int) -> Splits:
    """MNIST as (N, 1, 28, 28) uint8: train 50,000 / val 10,000 / test 10,000. ``seed`` is unused."""
    return _load_idx_set("mnist", _datasets().MNIST, root, download)


def load_fashion_mnist(root: Path, download: bool, seed: int) -> Splits:
    """Fashion-MNIST, split like MNIST. ``seed`` is unused."""
    return _load_idx_set("fashion-mnist", _datasets().FashionMNIST, root, download)


def load_cifar10(root: Path, download: bool, seed: int) -> Splits:
    """CIFAR10 as (N, 3, 32, 32) uint8: train 40,000 / val 10,000 / test 10,000. ``seed`` is unused."""
    folder = root / CIFAR_FOLDER
    _require_files("cifar10", folder, CIFAR_FILES, download, partial(_datasets().CIFAR10, root, download=True))
    train = torch.cat([_read_cifar_batch(folder / name) for name in CIFAR_TRAIN_FILES])
    test = _read_cifar_batch(folder / "test_batch")
    return _split_official_train(DataSpec("cifar10", "image", 3, 32), train, test, folder)


def _load_idx_set(name: str, dataset_class: type, root: Path, download: bool) -> Splits:
    # torchvision looks in <root>/<class name>/raw for the uncompressed idx files
    raw = root / dataset_class.__name__ / "raw"
    fetch = partial(dataset_class, root, train=True, download=True)  # fetches both parts
    _require_files(name, raw, IDX_FILES, download, fetch, IDX_NOTE)
    train, test = (_read_idx_images(name, dataset_class, root, raw, part) for part in (True, False))
    return _split_official_train(DataSpec(name, "image", 1, 28), train, test, raw)


def _require_files(
    name: str, folder: Path, files: tuple[str, ...], download: bool, fetch: Callable[[], object], note: str = ""
) -> None:
    """Raise one DataError unless every file is in ``folder``; download first if asked and missing."""
    missing = [f for f in files if not (folder / f).is_file()]
    if missing and download:
        _download(name, folder, fetch)
        missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise data_error(
            name, f"data not found (missing {', '.join(missing)})", [folder], ", ".join(files) + note,
            f"{DOWNLOAD_HINT}, or put the files in the folder above",
        )


def _download(name: str, folder: Path, fetch: Callable[[], object]) -> None:
    try:
        fetch()
    except (RuntimeError, OSError) as error:  # torchvision's failed mirrors, network errors
        raise data_error(
            name, f"download failed: {error}", [folder], "the files torchvision downloads",
            "retry later, or download the official archive yourself and extract it into the folder above",
        ) from error


def _read_idx_images(name: str, dataset_class: type, root: Path, raw: Path, train: bool) -> torch.Tensor:
    """The images of one official part, (N, 1, 28, 28) uint8, read by torchvision."""
    path = raw / IDX_FILES[0 if train else 2]
    try:
        images = dataset_class(root, train=train).data
    except (AssertionError, TypeError, ValueError, RuntimeError) as error:
        raise _malformed(name, [path], f"torchvision could not read it ({error!r})") from error
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != (28, 28):
        raise _malformed(name, [path], f"got {tuple(images.shape)} {images.dtype}, not (N, 28, 28) uint8")
    return images.unsqueeze(1)


def _read_cifar_batch(path: Path) -> torch.Tensor:
    """One pickled CIFAR10 batch as (n, 3, 32, 32) uint8.

    The documented format: a dict (pickled by Python 2, hence latin1) whose "data" is a uint8 array
    (n, 3072); each row holds the 1024 red, then green, then blue values of a 32x32 image in
    row-major order.
    """
    try:
        with open(path, "rb") as f:
            data = np.asarray(pickle.load(f, encoding="latin1")["data"])
    except Exception as error:  # unpickling a damaged file can raise almost anything
        raise _malformed("cifar10", [path], f"not a CIFAR10 pickle batch ({error!r})") from error
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise _malformed("cifar10", [path], f"'data' is {data.shape} {data.dtype}, not (n, 3072) uint8")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())


def _split_official_train(spec: DataSpec, train: torch.Tensor, test: torch.Tensor, folder: Path) -> Splits:
    """Cut the official train set at VAL_START: train = [:cut], val = [cut:], no shuffle."""
    cut = VAL_START[spec.name]
    if len(train) <= cut:
        raise _malformed(
            spec.name, [folder], f"the official train set has {len(train)} images; the split needs more than {cut}"
        )
    return Splits(spec, train[:cut], train[cut:], test)


def _malformed(name: str, paths: list[Path], problem: str) -> DataError:
    return data_error(
        name, f"malformed data: {problem}", paths, f"the official {name} files",
        f"delete the files and {DOWNLOAD_HINT}, or replace them with the official ones",
    )
