"""CelebAMask-HQ face-parsing label maps, as the official vMF code reads them (SPEC.md §1.4, §3).

The layout is what the CelebAMask-HQ ``face_parsing`` scripts g_mask.py and g_partition.py make:
``<root>/CelebAMask-HQ/{train,val,test}_label/{i}.png`` (and ``{split}_img/{i}.jpg``, which we do
not read: only the label map is modelled). Like the official loader, each folder's files are
counted and must be numbered 0..N-1 with no gap. Labels are 0..18 (19 classes), resized to 64x64
with NEAREST and no crop, kept as uint8 (N, 64, 64). The result is cached in
``<root>/CelebAMask-HQ/sqvae_bench_cache_64.pt`` (train and val) and ``..._64_test.pt`` (test), both
keyed by the per-split file counts. Loaded with ``with_test=False``, no test label map is opened
nor its cache read (the files of test_label are counted, by name, so both loads share one key).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from bench.data.registry import cached_splits, data_error
from bench.data.spec import DataSpec, Splits
from bench.errors import DataError

FOLDER = "CelebAMask-HQ"
SPLITS = ("train", "val", "test")
NUM_CLASSES = 19
SIZE = 64
SPEC = DataSpec("celebamask-hq", "labels", NUM_CLASSES, SIZE, NUM_CLASSES)
CACHE = f"sqvae_bench_cache_{SIZE}.pt"
CACHE_VERSION = 2  # 2: test in a cache file of its own
REPO_URL = "https://github.com/switchablenorms/CelebAMask-HQ"
HOW = (
    f"it cannot be downloaded automatically: get CelebAMask-HQ via {REPO_URL}, then run its "
    "face_parsing/Data_preprocessing scripts g_mask.py and g_partition.py and move the "
    "{train,val,test}_label folders they write into the folder above"
)


def load_celebamask_hq(root: Path, download: bool, seed: int, *, with_test: bool = True) -> Splits:
    """The 19-class label maps as (N, 64, 64) uint8 per split (test None without ``with_test``).
    ``download`` and ``seed`` are unused.

    Raises: DataError if a split folder is missing or empty, the numbering has a gap, or a file is
        not an 8-bit label map with values 0..18.
    """
    folder = root / FOLDER
    counts = _counts(folder)
    paths = _split_paths(folder, counts, SPLITS if with_test else SPLITS[:2])
    key = {"version": CACHE_VERSION, "size": SIZE, "labels": counts}
    return Splits(SPEC, *cached_splits(folder / CACHE, key, lambda split: _preprocess(split, paths[split]), with_test))


def check_celebamask_hq(root: Path, download: bool) -> None:
    """Raise DataError unless every split's label folder holds 0.png .. (N-1).png, N >= 1 (no map is
    opened). ``download`` is unused: the dataset cannot be downloaded."""
    folder = root / FOLDER
    _split_paths(folder, _counts(folder), SPLITS)


def _counts(folder: Path) -> dict[str, int]:
    """The number of .png files in each split's label folder (0 if the folder is missing), by name only."""
    return {split: _count_pngs(folder / f"{split}_label") for split in SPLITS}


def _split_paths(folder: Path, counts: dict[str, int], splits: tuple[str, ...]) -> dict[str, list[Path]]:
    """The label map paths of ``splits``; raises DataError if a folder is missing, empty or has a gap."""
    empty = [folder / f"{split}_label" for split in splits if counts[split] == 0]
    if empty:
        raise _error(empty, "data not found (no label maps)")
    return {split: label_paths(folder / f"{split}_label", counts[split]) for split in splits}


def label_paths(labels: Path, count: int) -> list[Path]:
    """The paths 0.png .. (count-1).png; raises DataError naming the first that is missing."""
    paths = [labels / f"{i}.png" for i in range(count)]
    for path in paths:
        if not path.is_file():
            raise _error([path], f"{labels} holds {count} label maps, so 0..{count - 1}.png must all exist")
    return paths


def read_label(path: Path) -> torch.Tensor:
    """One label map as (64, 64) uint8, checked to lie in 0..18 at full resolution."""
    try:
        with Image.open(path) as image:
            if image.mode not in ("L", "P"):
                raise _error([path], f"mode {image.mode}, not an 8-bit single-channel label map")
            top = int(np.asarray(image).max())
            small = image.resize((SIZE, SIZE), Image.NEAREST)
    except (OSError, ValueError) as error:  # missing, truncated or not an image
        raise _error([path], f"cannot read label map ({error})") from error
    if top >= NUM_CLASSES:
        raise _error([path], f"label value {top} out of range 0..{NUM_CLASSES - 1}")
    return torch.from_numpy(np.array(small, dtype=np.uint8))


def _count_pngs(labels: Path) -> int:
    if not labels.is_dir():
        return 0
    with os.scandir(labels) as entries:
        return sum(entry.name.endswith(".png") for entry in entries)


def _preprocess(split: str, paths: list[Path]) -> torch.Tensor:
    """Read the label maps of one split into one preallocated (N, 64, 64) uint8 tensor."""
    out = torch.empty((len(paths), SIZE, SIZE), dtype=torch.uint8)
    for row, path in enumerate(tqdm(paths, desc=f"celebamask-hq {split}: preprocessing to {SIZE}x{SIZE}", unit="map")):
        out[row] = read_label(path)
    return out


def _error(paths: list[Path], problem: str) -> DataError:
    expected = "{train,val,test}_label/{0..N-1}.png, 8-bit label maps with values 0..18"
    return data_error("celebamask-hq", problem, paths, expected, HOW)
