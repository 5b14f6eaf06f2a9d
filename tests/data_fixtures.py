"""Writers of tiny datasets in the real on-disk formats, for the data-layer tests.

Each writer follows the published format (not our reader), builds small random content, writes it
under a data root and returns what a correct reader must load back.
"""
from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image

IDX_UBYTE = 0x08  # the idx type code of unsigned bytes


def write_idx(path: Path, array: np.ndarray) -> None:
    """An idx file: magic (0, 0, type, ndim), then each dimension as big-endian int32, then the data."""
    header = struct.pack(">BBBB", 0, 0, IDX_UBYTE, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_mnist(root: Path, folder: str = "MNIST", n_train: int = 12, n_test: int = 5, seed: int = 0):
    """MNIST-style raw idx files in <root>/<folder>/raw. Returns (train, test) images (n, 28, 28)."""
    rng = np.random.default_rng(seed)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        parts[prefix] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", parts[prefix])
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", rng.integers(0, 10, n, dtype=np.uint8))
    return parts["train"], parts["t10k"]


def cifar_rows(images: np.ndarray) -> np.ndarray:
    """(n, 3, 32, 32) -> the documented rows of 3072 bytes: 1024 red, 1024 green, 1024 blue, row-major."""
    return np.stack([np.concatenate([image[c].ravel() for c in range(3)]) for image in images])


def write_cifar_batch(path: Path, images: np.ndarray, label: str) -> None:
    batch = {
        "batch_label": label,
        "labels": [0] * len(images),
        "data": cifar_rows(images),
        "filenames": [f"img_{i}.png" for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def write_cifar10(root: Path, n_per_batch: int = 3, n_test: int = 4, seed: int = 0):
    """<root>/cifar-10-batches-py with data_batch_1..5, test_batch and batches.meta.

    Returns (train, test) images (n, 3, 32, 32), train being the five batches in order.
    """
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    batches = [rng.integers(0, 256, (n_per_batch, 3, 32, 32), dtype=np.uint8) for _ in range(5)]
    for i, images in enumerate(batches, start=1):
        write_cifar_batch(folder / f"data_batch_{i}", images, f"training batch {i} of 5")
    test = rng.integers(0, 256, (n_test, 3, 32, 32), dtype=np.uint8)
    write_cifar_batch(folder / "test_batch", test, "testing batch 1 of 1")
    meta = {"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": n_per_batch, "num_vis": 3072}
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump(meta, f, protocol=2)
    return np.concatenate(batches), test


CELEBA_SIZE = (178, 218)  # (width, height) of img_align_celeba
CELEBA_CROP_BOX = (19, 39, 159, 179)  # torchvision's CenterCrop(140) of a 178x218 image (l, t, r, b)


def write_celeba(root: Path, partition: list[int], seed: int = 0) -> list[np.ndarray]:
    """<root>/celeba: img_align_celeba/NNNNNN.jpg plus the txt files of torchvision's layout.

    Image i is black outside the centre 140x140 crop and one flat colour inside it; that colour is
    returned (one (3,) uint8 per image, in partition order).
    """
    rng = np.random.default_rng(seed)
    folder = root / "celeba"
    (folder / "img_align_celeba").mkdir(parents=True)
    names = [f"{i + 1:06d}.jpg" for i in range(len(partition))]
    colours = [rng.integers(40, 216, 3, dtype=np.uint8) for _ in names]
    for name, colour in zip(names, colours):
        image = Image.new("RGB", CELEBA_SIZE)
        image.paste(tuple(int(c) for c in colour), CELEBA_CROP_BOX)
        image.save(folder / "img_align_celeba" / name, quality=95)
    _write_lines(folder / "list_eval_partition.txt", [f"{n} {p}" for n, p in zip(names, partition)])
    attributes = ["5_o_Clock_Shadow", "Smiling"]
    _write_lines(folder / "list_attr_celeba.txt", [str(len(names)), " ".join(attributes)]
                 + [f"{n}  1 -1" for n in names])
    _write_lines(folder / "identity_CelebA.txt", [f"{n} {i}" for i, n in enumerate(names)])
    _write_lines(folder / "list_bbox_celeba.txt", [str(len(names)), "image_id x_1 y_1 width height"]
                 + [f"{n} 95 71 226 313" for n in names])
    _write_lines(folder / "list_landmarks_align_celeba.txt", [str(len(names)), "lefteye_x lefteye_y"]
                 + [f"{n} 69 109" for n in names])
    return colours


def write_celebamask(root: Path, counts: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """<root>/CelebAMask-HQ/{split}_img/i.jpg and {split}_label/i.png as g_partition.py writes them.

    Each 512x512 label map is a 64x64 grid of 8x8 blocks (values 0..18), so a NEAREST resize to
    64x64 gives the grid back exactly. Returns the grids, (n, 64, 64) uint8 per split.
    """
    rng = np.random.default_rng(seed)
    grids = {}
    for split, n in counts.items():
        (root / "CelebAMask-HQ" / f"{split}_img").mkdir(parents=True)
        (root / "CelebAMask-HQ" / f"{split}_label").mkdir(parents=True)
        grids[split] = rng.integers(0, 19, (n, 64, 64), dtype=np.uint8)
        for i, grid in enumerate(grids[split]):
            write_label(root, split, i, grid)
            Image.new("RGB", (32, 32), (i, 0, 0)).save(root / "CelebAMask-HQ" / f"{split}_img" / f"{i}.jpg")
    return grids


def write_label(root: Path, split: str, index: int, grid: np.ndarray) -> Path:
    """Write one 64x64 grid as an 8-bit grayscale 512x512 PNG label map; returns its path."""
    path = root / "CelebAMask-HQ" / f"{split}_label" / f"{index}.png"
    Image.fromarray(np.kron(grid, np.ones((8, 8), np.uint8))).save(path)
    return path


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("\n".join(lines) + "\n")
