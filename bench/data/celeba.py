"""CelebA in torchvision's layout, preprocessed as the official code does and cached (SPEC.md §3).

Split by ``list_eval_partition.txt`` (0 train / 1 valid / 2 test: 162,770 / 19,867 / 19,962), each
image CenterCrop(140) then Resize((64, 64)) (bilinear, antialiased: torchvision's PIL path, as the
official code), kept as uint8 (N, 3, 64, 64).

We read the partition file and the JPEGs ourselves: torchvision's CelebA md5-checks every txt file
and parses all of them (attributes, identities, boxes, landmarks) though only the partition is
needed. torchvision is used to download only. Decoding 200k JPEGs takes minutes, so the result is
cached in ``<root>/celeba/sqvae_bench_cache_64.pt`` (train and val) and ``..._64_test.pt`` (test),
keyed by the JPEG count and partition size. Loaded with ``with_test=False``, no test image is
decoded nor its cache opened.
"""
from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from bench.data.registry import cached_splits, data_error
from bench.data.spec import DataSpec, Splits
from bench.errors import DataError

FOLDER = "celeba"
IMAGES = "img_align_celeba"
PARTITION = "list_eval_partition.txt"
CROP, SIZE = 140, 64
SPEC = DataSpec("celeba", "image", 3, SIZE)
CACHE = f"sqvae_bench_cache_{SIZE}.pt"
SPLITS = ("train", "val", "test")  # partition ids 0, 1, 2
CACHE_VERSION = 2  # 2: test in a cache file of its own
HOW = (
    "download img_align_celeba.zip and list_eval_partition.txt from the CelebA page "
    "(https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html) and unzip the images into the folder above; "
    "download=True (CLI: --download) tries torchvision's Google Drive download, which often fails "
    "on quota limits"
)


def load_celeba(root: Path, download: bool, seed: int, *, with_test: bool = True) -> Splits:
    """CelebA 64x64 as (N, 3, 64, 64) uint8 per partition (test None without ``with_test``).
    ``seed`` is unused.

    Raises: DataError if the folder, the partition file or a listed image is missing or unreadable.
    """
    folder = _folder(root, download)
    partition = read_partition(folder / PARTITION)
    key = {"version": CACHE_VERSION, "crop": CROP, "size": SIZE, "jpgs": _count_jpgs(folder / IMAGES),
           "partition": len(partition)}
    names = _split_names(folder / PARTITION, partition)
    return Splits(SPEC, *cached_splits(folder / CACHE, key, lambda split: _preprocess(folder / IMAGES, split, names[split]),
                                       with_test))


def check_celeba(root: Path, download: bool) -> None:
    """Raise DataError unless the partition file is well formed, lists images in every split, and
    every image it lists is in the image folder (names only: no image is opened)."""
    folder = _folder(root, download)
    partition = read_partition(folder / PARTITION)
    _split_names(folder / PARTITION, partition)
    with os.scandir(folder / IMAGES) as entries:
        present = {entry.name for entry in entries}
    missing = [name for name, _ in partition if name not in present]
    if missing:
        raise _error([folder / IMAGES / missing[0]], f"{len(missing)} of the {len(partition)} images listed in "
                                                     f"{PARTITION} are missing, the first being {missing[0]}")


def _folder(root: Path, download: bool) -> Path:
    """<root>/celeba, checked to hold the image folder and the partition file (downloaded if asked)."""
    folder = root / FOLDER
    if download and not _present(folder):
        _download(root, folder)
    if not _present(folder):
        raise _error([folder / IMAGES, folder / PARTITION], "data not found")
    return folder


def read_partition(path: Path) -> list[tuple[str, int]]:
    """The (file name, partition id 0/1/2) lines of list_eval_partition.txt, in file order."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise _error([path], f"malformed line {number}: {line!r} (expected '<name>.jpg <0|1|2>')")
        entries.append((parts[0], int(parts[1])))
    return entries


def _present(folder: Path) -> bool:
    return (folder / IMAGES).is_dir() and (folder / PARTITION).is_file()


def _count_jpgs(images: Path) -> int:
    with os.scandir(images) as entries:
        return sum(entry.name.endswith(".jpg") for entry in entries)


def _download(root: Path, folder: Path) -> None:
    try:
        from torchvision import datasets  # imported here: importing torchvision takes seconds

        datasets.CelebA(root, split="all", target_type=[], download=True)
    except (RuntimeError, OSError) as error:  # Google Drive quota, network, md5 mismatch
        raise _error([folder], f"download failed: {error}") from error


def _split_names(path: Path, partition: list[tuple[str, int]]) -> dict[str, list[str]]:
    """The image names of each split; raises DataError naming ``path`` if a split has none."""
    names = {split: [name for name, part in partition if part == index] for index, split in enumerate(SPLITS)}
    for split, listed in names.items():
        if not listed:
            raise _error([path], f"no images in the {split} partition")
    return names


def _preprocess(images: Path, split: str, listed: list[str]) -> torch.Tensor:
    """Decode, crop and resize the listed images of one split into one preallocated uint8 tensor."""
    out = torch.empty((len(listed), 3, SIZE, SIZE), dtype=torch.uint8)
    for row, name in enumerate(tqdm(listed, desc=f"celeba {split}: preprocessing to {SIZE}x{SIZE}", unit="img")):
        out[row] = read_image(images / name)
    return out


@functools.cache
def _transform():
    """CenterCrop(140) then Resize((64, 64)), torchvision's defaults (bilinear, antialiased)."""
    from torchvision import transforms

    return transforms.Compose([transforms.CenterCrop(CROP), transforms.Resize((SIZE, SIZE)), transforms.PILToTensor()])


def read_image(path: Path) -> torch.Tensor:
    """One CelebA JPEG as (3, 64, 64) uint8, cropped and resized as the official pipeline does."""
    try:
        with Image.open(path) as image:
            return _transform()(image.convert("RGB"))
    except (OSError, ValueError) as error:  # missing, truncated or not an image
        raise _error([path], f"cannot read image ({error})") from error


def _error(paths: list[Path], problem: str) -> DataError:
    expected = f"{IMAGES}/*.jpg and {PARTITION} (torchvision's CelebA layout)"
    return data_error("celeba", problem, paths, expected, HOW)
