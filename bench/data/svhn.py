"""SVHN (the cropped 32×32 digits) in torchvision's on-disk format, split into train / val / test.

Files: ``<root>/svhn/train_32x32.mat`` and ``test_32x32.mat``, what ``torchvision.datasets.SVHN``
downloads when given ``<root>/svhn`` as its root (the "extra" set is not used). Each is a MATLAB v5
file with ``X``, uint8 (32, 32, 3, N) = (H, W, C, N), and ``y``, (N, 1) digit labels (not needed:
the models reconstruct images). We read them with ``scipy.io.loadmat`` (torchvision's SVHN
md5-checks the files, so it refuses any copy that is not the official one, our tiny test files
included) and use torchvision only to download.

Split: the validation set is the last 10% (rounded up) of the official train set, cut with no
shuffle: train 0..65,930 / val 65,931..73,256 (7,326 images) of the 73,257; test is the official
test set (26,032). Loaded with ``with_test=False``, test_32x32.mat is neither required nor opened.

The check (``check_svhn``) reads the files' headers only (``scipy.io.whosmat``): ``X`` must be
(32, 32, 3, N) uint8 and ``y`` hold N labels, with N large enough to split. The files are
compressed, so their size says nothing of N; a truncated file passes the check and fails at load
with the same error layout.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import scipy.io
import torch

from bench.data.registry import data_error
from bench.data.spec import DataSpec, Splits
from bench.errors import DataError

FOLDER = "svhn"
TRAIN_FILE, TEST_FILE = "train_32x32.mat", "test_32x32.mat"
SIZE = 32
SPEC = DataSpec("svhn", "image", 3, SIZE)
VAL_FRACTION = 0.1  # the last 10% of the official train set, rounded up, is the validation split
DOWNLOAD_HINT = "pass download=True (CLI: --download), which fetches them through torchvision"


def load_svhn(root: Path, download: bool, seed: int, *, with_test: bool = True) -> Splits:
    """SVHN as (N, 3, 32, 32) uint8: train 65,931 / val 7,326 / test 26,032 (None without
    ``with_test``). ``seed`` is unused.

    Raises: DataError if a file is missing, is not a MATLAB file or holds no (32, 32, 3, N) uint8 X.
    """
    folder = _folder(root, download, with_test)
    train = read_svhn_images(folder / TRAIN_FILE)
    test = read_svhn_images(folder / TEST_FILE) if with_test else None
    cut = validation_start(len(train))
    if cut < 1:
        raise _malformed([folder / TRAIN_FILE], f"the train set has {len(train)} images, too few to split")
    return Splits(SPEC, train[:cut], train[cut:], test)


def check_svhn(root: Path, download: bool) -> None:
    """Raise DataError unless both files are there with well-formed headers and enough train images."""
    folder = _folder(root, download, with_test=True)
    counts = {name: _declared_count(folder / name) for name in (TRAIN_FILE, TEST_FILE)}
    if validation_start(counts[TRAIN_FILE]) < 1:
        raise _malformed([folder / TRAIN_FILE], f"the train set has {counts[TRAIN_FILE]} images, too few to split")


def validation_start(n_train: int) -> int:
    """The first validation index: the last ceil(10%) of the ``n_train`` official train images are val."""
    return n_train - math.ceil(VAL_FRACTION * n_train)


def read_svhn_images(path: Path) -> torch.Tensor:
    """The images of one SVHN .mat file as (N, 3, 32, 32) uint8 (X is stored (H, W, C, N)).

    Raises: DataError naming ``path`` if it cannot be read or X has another shape or type.
    """
    try:
        images = scipy.io.loadmat(path, variable_names=["X"])["X"]
    except Exception as error:  # a damaged .mat file fails in many ways (ValueError, OSError, KeyError, ...)
        raise _malformed([path], f"{path.name} is not a readable SVHN MATLAB file ({error!r})") from error
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[:3] != (SIZE, SIZE, 3):
        raise _malformed([path], f"X is {images.shape} {images.dtype}, not (32, 32, 3, N) uint8")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(3, 2, 0, 1)))


def _declared_count(path: Path) -> int:
    """N, from the headers of X (32, 32, 3, N) uint8 and y (N, 1) in ``path``. Raises DataError."""
    try:
        variables = {name: (shape, kind) for name, shape, kind in scipy.io.whosmat(path)}
    except Exception as error:  # not a MATLAB file
        raise _malformed([path], f"{path.name} is not a MATLAB file ({error!r})") from error
    x_shape, x_kind = variables.get("X", ((), None))
    if len(x_shape) != 4 or tuple(x_shape[:3]) != (SIZE, SIZE, 3) or x_kind != "uint8":
        raise _malformed([path], f"{path.name}: X is {x_shape} {x_kind}, not (32, 32, 3, N) uint8")
    if "y" not in variables or math.prod(variables["y"][0]) != x_shape[3]:
        raise _malformed([path], f"{path.name}: y does not hold one label per image ({x_shape[3]})")
    return x_shape[3]


def _folder(root: Path, download: bool, with_test: bool) -> Path:
    """<root>/svhn with the needed files (test_32x32.mat only ``with_test``), downloaded first if asked."""
    folder = root / FOLDER
    files = (TRAIN_FILE, TEST_FILE) if with_test else (TRAIN_FILE,)
    if download and any(not (folder / name).is_file() for name in files):
        _download(folder)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise data_error("svhn", f"data not found (missing {', '.join(missing)})", [folder],
                         ", ".join(files) + " (torchvision's SVHN files)", f"{DOWNLOAD_HINT}, or put the files in the folder above")
    return folder


def _download(folder: Path) -> None:
    """Both splits through torchvision into ``folder`` (it md5-checks what it downloads)."""
    try:
        from torchvision import datasets  # imported here: importing torchvision takes seconds

        for split in ("train", "test"):
            datasets.SVHN(str(folder), split=split, download=True)
    except (RuntimeError, OSError) as error:  # network errors, md5 mismatch
        raise data_error("svhn", f"download failed: {error}", [folder], "the files torchvision downloads",
                         "retry later, or download train_32x32.mat and test_32x32.mat from "
                         "http://ufldl.stanford.edu/housenumbers/ into the folder above") from error


def _malformed(paths: list[Path], problem: str) -> DataError:
    return data_error("svhn", f"malformed data: {problem}", paths, f"{TRAIN_FILE} and {TEST_FILE} (torchvision's SVHN files)",
                      f"delete the files and {DOWNLOAD_HINT}, or replace them with the official ones")
