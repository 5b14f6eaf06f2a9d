"""MNIST, Fashion-MNIST and CIFAR10 in torchvision's on-disk layout, split as SPEC.md §3 says.

The validation split is the tail of the official train set, cut with no shuffle; the test split is
the official test set. Pixels stay uint8 (N, C, H, W).

MNIST and Fashion-MNIST take an option ``size``: 28 (the files' own size, default) or 32, which
resizes every image as the Minimal-SQVAE reference does (yukara-ikemiya/minimal-sqvae,
train_sqvae.py: ``ToTensor()`` then ``Resize(32, antialias=True)``): bilinear interpolation (not
padding) of the [0, 1] floats, antialiased, stored back as uint8 (rounded; the reference keeps the
floats, a difference below half a grey level). Loaded with ``with_test=False``, the test
files (t10k-*, test_batch) are neither required nor opened.

We read the files ourselves and use torchvision only to download them: the idx files of MNIST and
Fashion-MNIST through ``read_idx_header`` (torchvision's dataset classes require the test files
even to read the train part), the documented python-pickle batches of CIFAR10 likewise
(torchvision's CIFAR10 md5-checks every batch file, so it refuses any copy that is not
byte-identical to the official archive, our tiny test files included).

The checks (``check_mnist``, ``check_fashion_mnist``, ``check_cifar10``) read headers and sizes only:
an idx file's magic number and dimensions must account for its size exactly; a CIFAR10 batch must
be at least as long as batches.meta says a batch is and end with the pickle STOP opcode, which a
truncated file has lost.
"""
from __future__ import annotations

import math
import pickle
import struct
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from bench.data.registry import data_error
from bench.data.spec import DataSpec, Splits
from bench.errors import ConfigError, DataError

# First index of the validation split in the official train set (SPEC.md §3). Module-level so that
# tests can move the cut for tiny files; the values here are exact to the official code.
VAL_START = {"mnist": 50_000, "fashion-mnist": 50_000, "cifar10": 40_000}

IDX_TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
IDX_TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
IDX_FILES = IDX_TRAIN_FILES + IDX_TEST_FILES
# torchvision's class of each idx set; it reads <root>/<class name>/raw
IDX_CLASSES = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one these sets use
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILE = "test_batch"
CIFAR_FILES = CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE, "batches.meta")
IDX_NOTE = " (uncompressed: gunzip the .gz files, or pass download=True, which extracts them)"
DOWNLOAD_HINT = "pass download=True (CLI: --download)"
CIFAR_ROW = 3 * 32 * 32  # bytes of one image in a batch
PICKLE_STOP = b"."  # the last opcode of every pickle


def _datasets():
    """torchvision.datasets, imported to download only (importing torchvision takes seconds)."""
    from torchvision import datasets

    return datasets


IDX_SIZES = (28, 32)  # the ``size`` option of MNIST and Fashion-MNIST


def load_mnist(root: Path, download: bool, seed: int, *, size: int = 28, with_test: bool = True) -> Splits:
    """MNIST as (N, 1, size, size) uint8: train 50,000 / val 10,000 / test 10,000 (None without
    ``with_test``: the t10k files are then not needed). ``size`` 32 resizes (module docstring).
    ``seed`` is unused. Raises: ConfigError for another size; DataError for missing or bad files."""
    return _load_idx_set("mnist", root, download, with_test, size)


def load_fashion_mnist(root: Path, download: bool, seed: int, *, size: int = 28, with_test: bool = True) -> Splits:
    """Fashion-MNIST, split and sized like MNIST. ``seed`` is unused."""
    return _load_idx_set("fashion-mnist", root, download, with_test, size)


def mnist_spec(size: int = 28) -> DataSpec:
    """The DataSpec of MNIST at ``size`` px. Raises ConfigError for a size other than 28 or 32."""
    return DataSpec("mnist", "image", 1, check_idx_size(size))


def fashion_mnist_spec(size: int = 28) -> DataSpec:
    """The DataSpec of Fashion-MNIST at ``size`` px. Raises ConfigError for a size other than 28 or 32."""
    return DataSpec("fashion-mnist", "image", 1, check_idx_size(size))


def check_idx_size(size) -> int:
    """``size`` if it is 28 or 32. Raises ConfigError otherwise."""
    if isinstance(size, bool) or size not in IDX_SIZES:
        raise ConfigError(f"option size must be one of {', '.join(map(str, IDX_SIZES))}; got {size!r}")
    return size


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, C, size, size): bilinear, antialiased, on [0, 1] floats, rounded
    (Minimal-SQVAE's ``ToTensor()`` then ``Resize(size, antialias=True)``); unchanged at its own size."""
    if images.shape[-2:] == (size, size):
        return images
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    resized = resize(images.float() / 255, [size, size], interpolation=InterpolationMode.BILINEAR, antialias=True)
    return (resized * 255).round().clamp(0, 255).to(torch.uint8)


def load_cifar10(root: Path, download: bool, seed: int, *, with_test: bool = True) -> Splits:
    """CIFAR10 as (N, 3, 32, 32) uint8: train 40,000 / val 10,000 / test 10,000 (None without
    ``with_test``: test_batch is then not needed). ``seed`` is unused."""
    folder = _cifar_folder(root, download, with_test)
    train = torch.cat([_read_cifar_batch(folder / name) for name in CIFAR_TRAIN_FILES])
    test = _read_cifar_batch(folder / CIFAR_TEST_FILE) if with_test else None
    return _split_official_train(DataSpec("cifar10", "image", 3, 32), train, test, folder)


def check_mnist(root: Path, download: bool, size: int = 28) -> None:
    """Raise DataError unless the four MNIST idx files are there, whole, and big enough to split
    (ConfigError for a bad ``size``)."""
    check_idx_size(size)
    _check_idx_set("mnist", root, download)


def check_fashion_mnist(root: Path, download: bool, size: int = 28) -> None:
    """Raise DataError unless the four Fashion-MNIST idx files are there, whole, and big enough to split
    (ConfigError for a bad ``size``)."""
    check_idx_size(size)
    _check_idx_set("fashion-mnist", root, download)


def check_cifar10(root: Path, download: bool) -> None:
    """Raise DataError unless the CIFAR10 batches are there, none truncated, and big enough to split."""
    folder = _cifar_folder(root, download)
    per_batch = _cifar_batch_size(folder / "batches.meta")
    for name in CIFAR_TRAIN_FILES + (CIFAR_TEST_FILE,):
        _check_pickle_length(folder / name, per_batch * CIFAR_ROW)
    _check_split_size("cifar10", len(CIFAR_TRAIN_FILES) * per_batch, folder)


def _idx_folder(name: str, root: Path, download: bool, with_test: bool = True) -> Path:
    """The raw folder of an idx set, every idx file checked present (the t10k ones only
    ``with_test``; downloaded first if asked)."""
    class_name = IDX_CLASSES[name]
    raw = root / class_name / "raw"  # where torchvision looks for the uncompressed idx files

    def fetch():  # fetches both parts
        return getattr(_datasets(), class_name)(root, train=True, download=True)

    _require_files(name, raw, IDX_FILES if with_test else IDX_TRAIN_FILES, download, fetch, IDX_NOTE)
    return raw


def _cifar_folder(root: Path, download: bool, with_test: bool = True) -> Path:
    """The CIFAR10 folder, every batch file checked present (test_batch only ``with_test``;
    downloaded first if asked)."""
    folder = root / CIFAR_FOLDER
    files = CIFAR_FILES if with_test else tuple(f for f in CIFAR_FILES if f != CIFAR_TEST_FILE)
    _require_files("cifar10", folder, files, download, lambda: _datasets().CIFAR10(root, download=True))
    return folder


def _load_idx_set(name: str, root: Path, download: bool, with_test: bool, size: int = 28) -> Splits:
    spec = DataSpec(name, "image", 1, check_idx_size(size))
    raw = _idx_folder(name, root, download, with_test)
    train = resize_images(read_idx_images(name, raw / IDX_TRAIN_FILES[0]), size)
    test = resize_images(read_idx_images(name, raw / IDX_TEST_FILES[0]), size) if with_test else None
    return _split_official_train(spec, train, test, raw)


def _check_idx_set(name: str, root: Path, download: bool) -> None:
    """Headers and sizes of the four idx files: (n, 28, 28) images, n labels, n above the cut."""
    raw = _idx_folder(name, root, download)
    counts = {}
    for part in ("train", "t10k"):
        images, labels = raw / f"{part}-images-idx3-ubyte", raw / f"{part}-labels-idx1-ubyte"
        image_dims, label_dims = _image_dims(name, images), read_idx_header(name, labels)
        if label_dims != image_dims[:1]:
            raise _malformed(name, [labels], f"{labels.name} has dimensions {label_dims}, not "
                                             f"({image_dims[0]},) as the images")
        counts[part] = image_dims[0]
    _check_split_size(name, counts["train"], raw)


def read_idx_header(name: str, path: Path) -> tuple[int, ...]:
    """The dimensions an idx file declares, checked against its magic number and its size.

    The format: two zero bytes, the type code (0x08, unsigned bytes), the number of dimensions,
    each dimension as a big-endian uint32, then the data, one byte per element.
    Raises: DataError (``name``'s malformed-data layout) naming ``path``.
    """
    head, size = _read_at(name, path, 0, 4 + 4 * 4)  # the longest header: four dimensions
    if len(head) < 4 or head[:3] != bytes((0, 0, IDX_UBYTE)) or not 1 <= head[3] <= 4:
        raise _malformed(name, [path], f"{path.name} is not an idx file of unsigned bytes "
                                       f"(starts {head[:4].hex() or 'empty'})")
    ndim = head[3]
    if len(head) < 4 + 4 * ndim:
        raise _malformed(name, [path], f"{path.name}: header cut short (truncated file?)")
    dims = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise _malformed(name, [path], f"{path.name} is {size} bytes where its header {dims} needs {expected} "
                                       "(truncated file?)")
    return dims


def _image_dims(name: str, path: Path) -> tuple[int, int, int]:
    """The dimensions of an idx image file, checked to be (n, 28, 28). Raises DataError naming ``path``."""
    dims = read_idx_header(name, path)
    if len(dims) != 3 or dims[1:] != (28, 28):
        raise _malformed(name, [path], f"{path.name} has dimensions {dims}, not (n, 28, 28)")
    return dims


def read_idx_images(name: str, path: Path) -> torch.Tensor:
    """The images of an idx image file as (n, 1, 28, 28) uint8, its header checked first.
    Raises: DataError naming ``path`` if it is malformed or unreadable."""
    dims = _image_dims(name, path)
    try:
        data = np.fromfile(path, np.uint8, offset=4 + 4 * len(dims))
    except OSError as error:
        raise _malformed(name, [path], f"cannot read {path.name} ({error.strerror})") from error
    return torch.from_numpy(data.reshape(dims)).unsqueeze(1)


def _read_at(name: str, path: Path, start: int, count: int) -> tuple[bytes, int]:
    """Up to ``count`` bytes of ``path`` from offset ``start`` (from the end when negative), and
    the file's size in bytes. Raises DataError naming ``path`` if it cannot be read."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            f.seek(max(size + start, 0) if start < 0 else start)
            return f.read(count), size
    except OSError as error:
        raise _malformed(name, [path], f"cannot read {path.name} ({error.strerror})") from error


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


def _cifar_batch_size(meta: Path) -> int:
    """The images per batch that batches.meta declares (10,000 in the official files)."""
    try:
        with open(meta, "rb") as f:
            per_batch = pickle.load(f, encoding="latin1")["num_cases_per_batch"]
    except Exception as error:  # unpickling a damaged file can raise almost anything
        raise _malformed("cifar10", [meta], f"batches.meta is not the CIFAR10 metadata pickle ({error!r})") from error
    if isinstance(per_batch, bool) or not isinstance(per_batch, int) or per_batch < 1:
        raise _malformed("cifar10", [meta], f"batches.meta: num_cases_per_batch is {per_batch!r}, not a positive integer")
    return per_batch


def _check_pickle_length(path: Path, least: int) -> None:
    """A batch file holds at least ``least`` bytes of pixels and ends as a whole pickle does."""
    last, size = _read_at("cifar10", path, -1, 1)
    if size < least or last != PICKLE_STOP:
        raise _malformed("cifar10", [path], f"{path.name} is cut short (truncated file?): {size} bytes, where a "
                                            f"batch holds at least {least} bytes of pixels and ends a pickle")


def _check_split_size(name: str, train_count: int, folder: Path) -> None:
    """The official train set must be longer than the VAL_START cut, or the split is empty."""
    cut = VAL_START[name]
    if train_count <= cut:
        raise _malformed(name, [folder], f"the official train set has {train_count} images; the split needs more than {cut}")


def _split_official_train(spec: DataSpec, train: torch.Tensor, test: torch.Tensor | None, folder: Path) -> Splits:
    """Cut the official train set at VAL_START: train = [:cut], val = [cut:], no shuffle; ``test``
    (None when not loaded) is the official test set."""
    _check_split_size(spec.name, len(train), folder)
    cut = VAL_START[spec.name]
    return Splits(spec, train[:cut], train[cut:], test)


def _malformed(name: str, paths: list[Path], problem: str) -> DataError:
    return data_error(
        name, f"malformed data: {problem}", paths, f"the official {name} files",
        f"delete the files and {DOWNLOAD_HINT}, or replace them with the official ones",
    )
