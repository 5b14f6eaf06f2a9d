"""Tests of bench.data: each loader on tiny files in the real formats, the errors, the cache, shapes."""
from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import functional as TF

from bench.data import DataSpec, dataset_names, dataset_options, load_dataset, make_shapes
from bench.data import celebamask, shapes, torchvision_sets
from bench.errors import ConfigError, DataError
from tests import data_fixtures as fx

IDX_SETS = [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")]


def assert_names_path(error: pytest.ExceptionInfo, *paths) -> None:
    message = str(error.value)
    for path in paths:
        assert str(path) in message
    assert "SQVAE_BENCH_DATA" in message


# --- registry, options, root ---------------------------------------------------------------------


def test_builtin_names_are_registered():
    expected = {"mnist", "fashion-mnist", "cifar10", "svhn", "celeba", "celebamask-hq", "shapes", "shapes-labels"}
    assert set(dataset_names()) == expected


def test_unknown_dataset_is_config_error_with_did_you_mean():
    with pytest.raises(ConfigError, match=r"did you mean 'mnist'\?.*valid: celeba"):
        load_dataset("mnsit")


def test_unknown_option_names_it_and_the_valid_ones():
    with pytest.raises(ConfigError, match=r"'sise'.*did you mean 'size'.*valid options: size, n_train, n_val, n_test"):
        load_dataset("shapes", sise=28)
    with pytest.raises(ConfigError, match="valid options: none"):
        load_dataset("cifar10", size=28)


def test_dataset_options_come_from_the_loader_signature():
    assert dataset_options("shapes") == {"size": 32, "n_train": 8000, "n_val": 1000, "n_test": 1000}
    assert dataset_options("cifar10") == {}


def test_root_comes_from_env_var_then_defaults_to_data(tmp_path, monkeypatch):
    fx.write_mnist(tmp_path / "env_root")
    monkeypatch.setitem(torchvision_sets.VAL_START, "mnist", 8)
    monkeypatch.setenv("SQVAE_BENCH_DATA", str(tmp_path / "env_root"))
    assert len(load_dataset("mnist").train) == 8
    monkeypatch.delenv("SQVAE_BENCH_DATA")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as error:
        load_dataset("mnist")
    assert_names_path(error, tmp_path / "data" / "MNIST" / "raw")


# --- MNIST, Fashion-MNIST, CIFAR10 ---------------------------------------------------------------


def test_default_split_points_follow_the_spec():
    assert torchvision_sets.VAL_START == {"mnist": 50_000, "fashion-mnist": 50_000, "cifar10": 40_000}


@pytest.mark.parametrize("name, folder", IDX_SETS)
def test_idx_sets_read_and_split_in_order(tmp_path, monkeypatch, name, folder):
    train, test = fx.write_mnist(tmp_path, folder, n_train=12, n_test=5)
    monkeypatch.setitem(torchvision_sets.VAL_START, name, 8)
    splits = load_dataset(name, root=tmp_path)
    assert splits.spec == DataSpec(name, "image", 1, 28)
    assert [s.dtype for s in (splits.train, splits.val, splits.test)] == [torch.uint8] * 3
    assert splits.train.shape == (8, 1, 28, 28)
    np.testing.assert_array_equal(splits.train[:, 0].numpy(), train[:8])
    np.testing.assert_array_equal(splits.val[:, 0].numpy(), train[8:])
    np.testing.assert_array_equal(splits.test[:, 0].numpy(), test)


@pytest.mark.parametrize("name, folder", IDX_SETS)
def test_idx_set_missing_names_the_raw_folder(tmp_path, name, folder):
    with pytest.raises(DataError, match=f"'{name}'.*data not found") as error:
        load_dataset(name, root=tmp_path)
    assert_names_path(error, tmp_path / folder / "raw", "train-images-idx3-ubyte", "download=True")


def test_idx_set_smaller_than_the_default_cut_is_an_error(tmp_path):
    fx.write_mnist(tmp_path)
    with pytest.raises(DataError, match="has 12 images; the split needs more than 50000"):
        load_dataset("mnist", root=tmp_path)


def test_malformed_idx_file_names_it(tmp_path):
    fx.write_mnist(tmp_path)
    bad = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + b"\x00" * 7)  # header cut short
    with pytest.raises(DataError, match="malformed") as error:
        load_dataset("mnist", root=tmp_path)
    assert_names_path(error, bad)


def test_cifar10_reads_pickle_batches_and_splits_in_order(tmp_path, monkeypatch):
    train, test = fx.write_cifar10(tmp_path, n_per_batch=3, n_test=4)
    monkeypatch.setitem(torchvision_sets.VAL_START, "cifar10", 10)
    splits = load_dataset("cifar10", root=tmp_path)
    assert splits.spec == DataSpec("cifar10", "image", 3, 32)
    assert splits.train.dtype == torch.uint8 and splits.train.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(splits.train.numpy(), train[:10])
    np.testing.assert_array_equal(splits.val.numpy(), train[10:])
    np.testing.assert_array_equal(splits.test.numpy(), test)


def test_cifar10_missing_names_the_folder_and_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("cifar10", root=tmp_path)
    assert_names_path(error, tmp_path / "cifar-10-batches-py", "data_batch_5", "test_batch", "download=True")


def test_cifar10_malformed_batch_names_the_file(tmp_path):
    fx.write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="malformed") as error:
        load_dataset("cifar10", root=tmp_path)
    assert_names_path(error, bad)


# --- CelebA --------------------------------------------------------------------------------------

PARTITION = [0, 1, 0, 2, 0, 1, 2, 0]


def test_celeba_splits_by_partition_crops_and_resizes(tmp_path):
    colours = fx.write_celeba(tmp_path, PARTITION)
    splits = load_dataset("celeba", root=tmp_path)
    assert splits.spec == DataSpec("celeba", "image", 3, 64)
    for index, split in enumerate((splits.train, splits.val, splits.test)):
        rows = [i for i, part in enumerate(PARTITION) if part == index]
        assert split.dtype == torch.uint8 and split.shape == (len(rows), 3, 64, 64)
        for image, row in zip(split, rows):
            # the black border lies outside CenterCrop(140): the mean is the flat inner colour
            mean = image.double().mean(dim=(1, 2)).numpy()
            np.testing.assert_allclose(mean, colours[row], atol=4)
            path = tmp_path / "celeba" / "img_align_celeba" / f"{row + 1:06d}.jpg"
            reference = TF.resize(TF.center_crop(Image.open(path).convert("RGB"), 140), [64, 64])
            assert torch.equal(image, TF.pil_to_tensor(reference))


def test_celeba_cache_is_reused_until_the_folder_changes(tmp_path):
    fx.write_celeba(tmp_path, PARTITION)
    first = load_dataset("celeba", root=tmp_path)
    folder = tmp_path / "celeba"
    assert (folder / "sqvae_bench_cache_64.pt").is_file()
    assert not list(folder.glob("*.tmp*"))
    Image.new("RGB", fx.CELEBA_SIZE, (255, 255, 255)).save(folder / "img_align_celeba" / "000001.jpg")
    assert torch.equal(load_dataset("celeba", root=tmp_path).train, first.train)  # from the cache
    Image.new("RGB", fx.CELEBA_SIZE).save(folder / "img_align_celeba" / "999999.jpg")  # one more file
    assert load_dataset("celeba", root=tmp_path).train[0].min() > 250  # rebuilt


def test_celeba_missing_names_the_paths(tmp_path):
    with pytest.raises(DataError, match="'celeba'.*data not found") as error:
        load_dataset("celeba", root=tmp_path)
    assert_names_path(error, tmp_path / "celeba" / "img_align_celeba", "list_eval_partition.txt", "Google Drive")


def test_celeba_missing_listed_image_names_it(tmp_path):
    fx.write_celeba(tmp_path, PARTITION)
    gone = tmp_path / "celeba" / "img_align_celeba" / "000004.jpg"
    gone.unlink()
    with pytest.raises(DataError, match="cannot read image") as error:
        load_dataset("celeba", root=tmp_path)
    assert_names_path(error, gone)


def test_celeba_malformed_partition_line_names_it(tmp_path):
    fx.write_celeba(tmp_path, PARTITION)
    with open(tmp_path / "celeba" / "list_eval_partition.txt", "a") as f:
        f.write("000009.jpg 7\n")
    with pytest.raises(DataError, match="malformed line 9"):
        load_dataset("celeba", root=tmp_path)


# --- CelebAMask-HQ -------------------------------------------------------------------------------

COUNTS = {"train": 3, "val": 2, "test": 2}


def test_celebamask_reads_label_maps_with_nearest_resize(tmp_path):
    grids = fx.write_celebamask(tmp_path, COUNTS)
    splits = load_dataset("celebamask-hq", root=tmp_path)
    assert splits.spec == DataSpec("celebamask-hq", "labels", 19, 64, 19)
    for split in COUNTS:
        tensor = getattr(splits, split)
        assert tensor.dtype == torch.uint8 and tensor.shape == (COUNTS[split], 64, 64)
        np.testing.assert_array_equal(tensor.numpy(), grids[split])


def test_celebamask_gap_in_numbering_names_the_missing_file(tmp_path):
    fx.write_celebamask(tmp_path, COUNTS)
    (tmp_path / "CelebAMask-HQ" / "train_label" / "1.png").unlink()
    with pytest.raises(DataError, match="0..1.png must all exist") as error:
        load_dataset("celebamask-hq", root=tmp_path)
    assert_names_path(error, tmp_path / "CelebAMask-HQ" / "train_label" / "1.png")


def test_celebamask_label_above_18_names_the_file(tmp_path):
    fx.write_celebamask(tmp_path, COUNTS)
    grid = np.zeros((64, 64), np.uint8)
    grid[10, 10] = 19
    bad = fx.write_label(tmp_path, "val", 1, grid)
    with pytest.raises(DataError, match="label value 19 out of range 0..18") as error:
        load_dataset("celebamask-hq", root=tmp_path)
    assert_names_path(error, bad)


def test_celebamask_rgb_label_is_malformed(tmp_path):
    fx.write_celebamask(tmp_path, COUNTS)
    bad = tmp_path / "CelebAMask-HQ" / "test_label" / "0.png"
    Image.new("RGB", (512, 512)).save(bad)
    with pytest.raises(DataError, match="mode RGB") as error:
        load_dataset("celebamask-hq", root=tmp_path)
    assert_names_path(error, bad)


def test_celebamask_cache_is_reused_until_a_count_changes(tmp_path):
    grids = fx.write_celebamask(tmp_path, COUNTS)
    load_dataset("celebamask-hq", root=tmp_path)
    assert (tmp_path / "CelebAMask-HQ" / "sqvae_bench_cache_64.pt").is_file()
    fx.write_label(tmp_path, "train", 0, np.full((64, 64), 5, np.uint8))
    cached = load_dataset("celebamask-hq", root=tmp_path)
    np.testing.assert_array_equal(cached.train.numpy(), grids["train"])
    fx.write_label(tmp_path, "test", 2, np.zeros((64, 64), np.uint8))
    rebuilt = load_dataset("celebamask-hq", root=tmp_path)
    assert len(rebuilt.test) == 3 and (rebuilt.train[0] == 5).all()


def test_celebamask_missing_names_folders_and_repo(tmp_path):
    with pytest.raises(DataError, match="cannot be downloaded automatically") as error:
        load_dataset("celebamask-hq", root=tmp_path, download=True)
    assert_names_path(error, tmp_path / "CelebAMask-HQ" / "train_label", celebamask.REPO_URL, "g_mask.py")


# --- shapes --------------------------------------------------------------------------------------


def reference_render(draws: shapes.ShapeDraws, i: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel by pixel, from the documented geometry: the last shape covering a pixel centre wins."""
    image = np.empty((3, size, size), np.uint8)
    label = np.empty((size, size), np.uint8)
    for py in range(size):
        for px in range(size):
            colour, kind = draws.background[i], 0
            for slot in range(shapes.MAX_SHAPES):
                dx, dy = px + 0.5 - draws.centre[i, slot, 0], py + 0.5 - draws.centre[i, slot, 1]
                r = draws.radius[i, slot]
                covers = {
                    0: False,
                    1: dx * dx + dy * dy <= r * r,
                    2: abs(dx) <= r and abs(dy) <= r,
                    3: dy <= r and 2 * abs(dx) <= dy + r,
                }[int(draws.kind[i, slot])]
                if covers:
                    colour, kind = draws.colour[i, slot], draws.kind[i, slot]
            image[:, py, px], label[py, px] = colour, kind
    return image, label


def test_shapes_match_a_pixel_by_pixel_reference():
    draws = shapes.draw_shapes(6, 28, np.random.default_rng(3))
    images, labels = shapes.render_shapes(draws, 28)
    for i in range(6):
        image, label = reference_render(draws, i, 28)
        np.testing.assert_array_equal(images[i], image)
        np.testing.assert_array_equal(labels[i], label)


def test_shapes_labels_agree_with_image_colours():
    draws = shapes.draw_shapes(500, 32, np.random.default_rng(0))
    images, labels = shapes.render_shapes(draws, 32)
    background = labels == 0
    np.testing.assert_array_equal(
        np.where(background[:, None], images, 0), np.where(background[:, None], draws.background[:, :, None, None], 0)
    )
    assert (images.transpose(1, 0, 2, 3)[:, ~background] >= shapes.BRIGHT).all()
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert ((draws.kind > 0).sum(axis=1) >= 1).all() and ((draws.kind > 0).sum(axis=1) <= 3).all()


def test_make_shapes_is_deterministic_per_seed():
    first, first_labels = make_shapes(50, 32, seed=1)
    again, again_labels = make_shapes(50, 32, seed=1)
    other, _ = make_shapes(50, 32, seed=2)
    assert np.array_equal(first, again) and np.array_equal(first_labels, again_labels)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("size", [28, 32, 64])
def test_shapes_sizes_and_specs(size):
    images = load_dataset("shapes", size=size, n_train=20, n_val=5, n_test=7, seed=4)
    labels = load_dataset("shapes-labels", size=size, n_train=20, n_val=5, n_test=7, seed=4)
    assert images.spec == DataSpec("shapes", "image", 3, size)
    assert labels.spec == DataSpec("shapes-labels", "labels", 4, size, 4)
    assert images.train.shape == (20, 3, size, size) and images.test.shape == (7, 3, size, size)
    assert labels.val.shape == (5, size, size) and labels.val.dtype == torch.uint8
    expected_images, expected_labels = make_shapes(32, size, seed=4)
    assert torch.equal(torch.cat([images.train, images.val, images.test]), torch.from_numpy(expected_images))
    assert torch.equal(torch.cat([labels.train, labels.val, labels.test]), torch.from_numpy(expected_labels))


def test_shapes_splits_share_no_image():
    splits = load_dataset("shapes", n_train=300, n_val=100, n_test=100)
    hashes = [{image.numpy().tobytes() for image in split} for split in (splits.train, splits.val, splits.test)]
    assert [len(h) for h in hashes] == [300, 100, 100]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])


def test_shapes_default_split_sizes_and_speed():
    start = time.perf_counter()
    splits = load_dataset("shapes")
    assert time.perf_counter() - start < 5
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [8000, 1000, 1000]


@pytest.mark.parametrize("options", [{"size": 48}, {"n_val": 0}, {"n_train": 2.5}])
def test_shapes_rejects_bad_options(options):
    with pytest.raises(ConfigError, match="shapes: option"):
        load_dataset("shapes", **options)
