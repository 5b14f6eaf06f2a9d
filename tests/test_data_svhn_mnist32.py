"""SVHN on tiny .mat files in torchvision's real layout (written here with scipy.io.savemat), its
errors and check; MNIST / Fashion-MNIST at 32 px (the ``size`` option) against torchvision's resize."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.io
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from bench.data import check_dataset, dataset_options, dataset_spec, load_dataset, svhn, torchvision_sets
from bench.errors import ConfigError, DataError
from sqvae.paper import dataset_settings
from tests import data_fixtures as fx


def write_svhn_mat(path, n: int, seed: int) -> np.ndarray:
    """An SVHN-format file: X uint8 (32, 32, 3, n) = (H, W, C, N), y (n, 1) labels 1..10. Returns
    the images as (n, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(1, 11, (n, 1), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"X": images.transpose(2, 3, 1, 0), "y": labels})
    return images


@pytest.fixture
def svhn_root(tmp_path):
    train = write_svhn_mat(tmp_path / "svhn" / "train_32x32.mat", 20, seed=0)
    test = write_svhn_mat(tmp_path / "svhn" / "test_32x32.mat", 6, seed=1)
    return tmp_path, train, test


def test_svhn_splits_values_and_spec(svhn_root):
    root, train, test = svhn_root
    splits = load_dataset("svhn", root=root)
    assert splits.spec == dataset_spec("svhn") and (splits.spec.channels, splits.spec.size) == (3, 32)
    assert splits.train.dtype == torch.uint8 and splits.train.shape == (18, 3, 32, 32)
    assert torch.equal(splits.train, torch.from_numpy(train[:18]))  # the last ceil(10%) of train is val
    assert torch.equal(splits.val, torch.from_numpy(train[18:]))
    assert torch.equal(splits.test, torch.from_numpy(test))
    assert svhn.validation_start(73_257) == 65_931  # the official counts: 7,326 validation images


def test_svhn_without_test_needs_no_test_file(svhn_root):
    root, train, _ = svhn_root
    (root / "svhn" / "test_32x32.mat").unlink()
    splits = load_dataset("svhn", root=root, with_test=False)
    assert splits.test is None and len(splits.train) == 18


def test_svhn_missing_data_names_the_files_and_how_to_get_them(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("svhn", root=tmp_path)
    message = str(error.value)
    assert "dataset 'svhn': data not found (missing train_32x32.mat, test_32x32.mat)" in message
    assert str(tmp_path / "svhn") in message and "--download" in message and "SQVAE_BENCH_DATA" in message
    with pytest.raises(DataError, match="data not found"):
        check_dataset("svhn", root=tmp_path)


def test_svhn_check_reads_headers_and_rejects_malformed_files(svhn_root):
    root, _, _ = svhn_root
    check_dataset("svhn", root=root)
    bad = root / "svhn" / "test_32x32.mat"
    scipy.io.savemat(bad, {"X": np.zeros((28, 28, 1, 4), np.uint8), "y": np.zeros((4, 1), np.uint8)})
    with pytest.raises(DataError, match=r"malformed data: test_32x32.mat: X is \(28, 28, 1, 4\)"):
        check_dataset("svhn", root=root)
    with pytest.raises(DataError, match="not \\(32, 32, 3, N\\) uint8"):
        load_dataset("svhn", root=root)
    bad.write_bytes(b"not a mat file")
    with pytest.raises(DataError, match="malformed data"):
        check_dataset("svhn", root=root)


def test_svhn_paper_settings_are_cifar10s():
    assert dataset_settings("svhn") == dataset_settings("cifar10")


# --- MNIST at 32 px ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_sets_at_32_px_resize_like_minimal_sqvae(tmp_path, monkeypatch, name, folder):
    train, test = fx.write_mnist(tmp_path, folder)
    monkeypatch.setitem(torchvision_sets.VAL_START, name, 8)
    assert dataset_options(name) == {"size": 28}
    assert dataset_spec(name, size=32).size == 32 and dataset_spec(name).size == 28
    splits = load_dataset(name, root=tmp_path, size=32)
    assert splits.spec.size == 32 and splits.spec.dim_x == 32 * 32
    assert splits.train.shape == (8, 1, 32, 32) and splits.val.shape == (4, 1, 32, 32)
    assert splits.test.shape == (5, 1, 32, 32) and splits.test.dtype == torch.uint8
    # the reference: ToTensor() then Resize(32, antialias=True) on each image (bilinear), here rounded back
    reference = TF.resize(torch.from_numpy(test).unsqueeze(1).float() / 255, [32, 32],
                          interpolation=InterpolationMode.BILINEAR, antialias=True)
    assert (splits.test.float() / 255 - reference).abs().max() <= 0.5 / 255 + 1e-6
    same = load_dataset(name, root=tmp_path)  # 28 px: the files' own pixels
    assert torch.equal(same.test, torch.from_numpy(test).unsqueeze(1))


def test_idx_size_option_accepts_28_or_32_only(tmp_path):
    with pytest.raises(ConfigError, match="size must be one of 28, 32; got 64"):
        dataset_spec("mnist", size=64)
    fx.write_mnist(tmp_path)
    with pytest.raises(ConfigError, match="size must be one of 28, 32"):
        check_dataset("mnist", root=tmp_path, size=30)


def test_resize_keeps_constant_images_constant():
    images = torch.full((2, 1, 28, 28), 200, dtype=torch.uint8)
    assert torch.equal(torchvision_sets.resize_images(images, 32), torch.full((2, 1, 32, 32), 200, dtype=torch.uint8))
