"""A run as two stages: ``fit_cell`` (train / validation only) then ``test_cell`` (the test split).

What a search relies on: fit then test gives run_cell's numbers exactly; fitting never loads the test
split (a poisoned test split, a spy on the generator, test files deleted); train and val are the same
tensors with and without the test split; a hook that raises from ``on_epoch`` stops the fit with that
epoch's checkpoint on disk.
"""
from __future__ import annotations

import shutil

import pytest
import torch

from bench.data import DATASETS, Splits, dataset_options, dataset_spec, load_dataset, register_dataset, shapes
from bench.data import torchvision_sets
from bench.errors import ConfigError
from bench.evaluate import evaluate
from bench.hooks import Hooks
from bench.numerics import numerics
from bench.run import RunConfig, fit_cell, run_cell, test_cell
from bench.train import CHECKPOINT, TrainConfig
from tests import data_fixtures as fx
from tests.conftest import SHAPES_OPTIONS, TINY_MODEL_OPTIONS

POISONED = "poisoned-shapes"  # registered by the ``poisoned`` fixture only


class SplitLeak(Exception):
    """Raised by a poisoned test split when anything loads or touches it."""


class PoisonedTensor(torch.Tensor):
    """A tensor that raises on any operation, ``.to`` and indexing included."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        raise SplitLeak(f"the test split was touched ({getattr(func, '__name__', func)})")


def tiny_config(dataset: str = "shapes", model: str = "vqvae", **train) -> RunConfig:
    settings = {"epochs": 2, "log_every": 2, "batch_size": 32, **train}  # 128 / 32 = 4 steps per epoch
    return RunConfig(dataset, model, seed=3, data_options=SHAPES_OPTIONS, model_options=TINY_MODEL_OPTIONS,
                     train=TrainConfig(**settings))


def without_seconds(result: dict) -> dict:
    """``result`` without its wall times, the only values that differ between two identical runs."""
    history = [{k: v for k, v in record.items() if k != "seconds"} for record in result["history"]]
    return {**{k: v for k, v in result.items() if k != "seconds"}, "history": history}


def load_shapes_fit_only(root, download, seed, *, size=28, n_train=128, n_val=32, n_test=32, with_test=True):
    """Shapes' train and val; asked for the test split, it fails as a leak would."""
    if with_test:
        raise SplitLeak("the test split was loaded")
    return shapes.load_shapes(root, download, seed, size=size, n_train=n_train, n_val=n_val, n_test=n_test,
                              with_test=False)


def load_shapes_poisoned_test(root, download, seed, *, size=28, n_train=128, n_val=32, n_test=32):
    """A loader without ``with_test`` (as a third-party one may be) whose test split raises when touched."""
    splits = shapes.load_shapes(root, download, seed, size=size, n_train=n_train, n_val=n_val, n_test=n_test)
    return Splits(splits.spec, splits.train, splits.val, splits.test.as_subclass(PoisonedTensor))


@pytest.fixture(params=[load_shapes_fit_only, load_shapes_poisoned_test], ids=["raising-loader", "poisoned-tensor"])
def poisoned(request, monkeypatch) -> str:
    """``POISONED`` registered with one of the loaders above, unregistered after the test."""
    monkeypatch.setattr(DATASETS, "_entries", dict(DATASETS._entries))  # the registry has no unregister
    register_dataset(POISONED, request.param, shapes.shapes_spec)
    return POISONED


# --- fit + test == run ---------------------------------------------------------------------------


@pytest.mark.parametrize("model, train", [("vqvae", {}), ("sqvae-gauss-1", {"eval_stochastic": True})])
def test_fit_then_test_gives_run_cells_numbers_exactly(tmp_path, model, train):
    config = tiny_config(model=model, **train)
    whole = run_cell(config, tmp_path / "run")
    fit = fit_cell(config, tmp_path / "fit")
    staged = test_cell(fit, config, tmp_path / "fit")
    assert set(staged) == set(whole)
    assert without_seconds(staged) == without_seconds(whole)
    assert staged["seconds"] >= fit.seconds > 0
    best_run, best_fit = (torch.load(tmp_path / name / "best.pt") for name in ("run", "fit"))
    assert all(torch.equal(best_run[k], best_fit[k]) for k in best_run)
    assert {p.name for p in (tmp_path / "fit" / "images").iterdir()} == {p.name for p in (tmp_path / "run" / "images").iterdir()}


def test_fit_holds_the_best_epoch_and_its_validation_metrics():
    config = tiny_config(model="sqvae-gauss-1", epochs=3)
    fit = fit_cell(config)
    assert fit.splits.test is None and fit.model is fit.trainer.model
    record = fit.state.history[fit.state.best_epoch - 1]
    assert fit.val == {k[len("val_"):]: v for k, v in record.items() if k.startswith("val_")}
    assert fit.val["loss"] == fit.state.best_val == min(r["val_loss"] for r in fit.state.history)
    assert {"loss", "mse", "sse", "perplexity", "usage"} <= set(fit.val)
    with numerics(1, True):  # the model holds the best epoch's weights: evaluating again gives its record
        assert evaluate(fit.model, fit.splits.val).metrics == fit.val


# --- the test split is never touched while fitting -----------------------------------------------


def test_fit_never_loads_the_test_split_and_run_fails_when_it_does(poisoned):
    config = tiny_config(dataset=poisoned)
    fit = fit_cell(config)
    reference = fit_cell(tiny_config())  # the same data read the ordinary way
    assert fit.val == reference.val and fit.state.history[0]["val_loss"] == reference.state.history[0]["val_loss"]
    with pytest.raises(SplitLeak):
        test_cell(fit, config)
    with pytest.raises(SplitLeak):
        run_cell(config)


def test_shapes_renders_no_test_image_without_the_test_split(monkeypatch):
    rendered = []
    render = shapes.render_shapes
    monkeypatch.setattr(shapes, "render_shapes", lambda draws, size: rendered.append(len(draws.kind)) or render(draws, size))
    load_dataset("shapes", with_test=False, **SHAPES_OPTIONS)
    assert rendered == [SHAPES_OPTIONS["n_train"] + SHAPES_OPTIONS["n_val"]]


@pytest.mark.parametrize("name", ["shapes", "shapes-labels"])
def test_shapes_train_and_val_are_identical_with_and_without_the_test_split(name):
    options = {**SHAPES_OPTIONS, "n_train": 1500}  # more than one render chunk (1024 images)
    full = load_dataset(name, seed=5, **options)
    fit_only = load_dataset(name, seed=5, with_test=False, **options)
    assert fit_only.test is None and full.test is not None
    assert torch.equal(fit_only.train, full.train) and torch.equal(fit_only.val, full.val)


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion-mnist", "FashionMNIST")])
def test_idx_sets_load_without_the_t10k_files(tmp_path, monkeypatch, name, folder):
    fx.write_mnist(tmp_path, folder, n_train=12, n_test=5)
    monkeypatch.setitem(torchvision_sets.VAL_START, name, 8)
    full = load_dataset(name, root=tmp_path)
    for file in torchvision_sets.IDX_TEST_FILES:
        (tmp_path / folder / "raw" / file).unlink()
    fit_only = load_dataset(name, root=tmp_path, with_test=False)
    assert fit_only.test is None
    assert torch.equal(fit_only.train, full.train) and torch.equal(fit_only.val, full.val)


def test_cifar10_loads_without_test_batch(tmp_path, monkeypatch):
    fx.write_cifar10(tmp_path, n_per_batch=3, n_test=4)
    monkeypatch.setitem(torchvision_sets.VAL_START, "cifar10", 10)
    full = load_dataset("cifar10", root=tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    fit_only = load_dataset("cifar10", root=tmp_path, with_test=False)
    assert fit_only.test is None and torch.equal(fit_only.val, full.val)


def test_celebamask_loads_without_test_label_and_keeps_its_cache(tmp_path):
    fx.write_celebamask(tmp_path, {"train": 3, "val": 2, "test": 2})
    full = load_dataset("celebamask-hq", root=tmp_path)
    shutil.rmtree(tmp_path / "CelebAMask-HQ" / "test_label")
    (tmp_path / "CelebAMask-HQ" / "sqvae_bench_cache_64_test.pt").unlink()
    fit_only = load_dataset("celebamask-hq", root=tmp_path, with_test=False)
    assert fit_only.test is None and torch.equal(fit_only.train, full.train) and torch.equal(fit_only.val, full.val)
    assert not (tmp_path / "CelebAMask-HQ" / "sqvae_bench_cache_64_test.pt").exists()


def test_celeba_decodes_no_test_image_without_the_test_split(tmp_path, monkeypatch):
    from bench.data import celeba

    partition = [0, 1, 0, 2, 0, 1, 2, 0]
    fx.write_celeba(tmp_path, partition)
    read = []
    monkeypatch.setattr(celeba, "read_image", lambda path, real=celeba.read_image: read.append(path.name) or real(path))
    fit_only = load_dataset("celeba", root=tmp_path, with_test=False)
    test_names = {f"{i + 1:06d}.jpg" for i, part in enumerate(partition) if part == 2}
    assert fit_only.test is None and len(read) == 6 and not test_names & set(read)
    full = load_dataset("celeba", root=tmp_path)  # train and val from the cache, test decoded now
    assert set(read[6:]) == test_names and torch.equal(full.train, fit_only.train)


def test_with_test_is_not_a_dataset_option():
    assert "with_test" not in dataset_options("shapes") and dataset_options("mnist") == {"size": 28}
    with pytest.raises(ConfigError, match="no option 'with_test'"):
        dataset_spec("shapes", with_test=False)


# --- stopping early ------------------------------------------------------------------------------


class StopAfterEpoch(Hooks):
    """Raises ``Stop`` from ``on_epoch`` after ``epoch``, as a pruner's hook does."""

    class Stop(Exception):
        pass

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch(self, epoch: int, record: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise self.Stop(epoch)


def test_a_hook_raising_from_on_epoch_stops_the_fit_after_that_epochs_checkpoint(tmp_path):
    config = tiny_config(epochs=3)
    with pytest.raises(StopAfterEpoch.Stop):
        fit_cell(config, tmp_path, hooks=[StopAfterEpoch(2)])
    checkpoint = torch.load(tmp_path / CHECKPOINT, weights_only=False)
    assert checkpoint["state"]["step"] == 8 and checkpoint["state"]["epoch"] == 3
    assert [r["epoch"] for r in checkpoint["state"]["history"]] == [1, 2]
    resumed = fit_cell(config, tmp_path)  # a later call goes on from that checkpoint
    whole = fit_cell(config)
    assert resumed.state.step == whole.state.step == 12 and resumed.val == whole.val
