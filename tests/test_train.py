"""The trainer and run_cell: learning, exact resume, failure on non-finite losses, the schedule."""
import json
import math

import pytest
import torch

from bench.batches import epoch_order, train_batches
from bench.data import load_dataset
from bench.errors import RunFailed
from bench.evaluate import evaluate
from bench.models import build_model
from bench.perf import measure
from bench.run import RunConfig, resolve_run_config, run_cell
from bench.hooks import Hooks
from bench.train import TrainConfig

TINY_DATA = {"size": 28, "n_train": 256, "n_val": 64, "n_test": 64}
TINY_MODEL = {"size_dict": 16, "dim_dict": 16, "num_rb": 1}


def tiny_config(model: str, **train) -> RunConfig:
    settings = {"epochs": 2, "log_every": 2, **train}
    return RunConfig("shapes", model, seed=3, data_options=TINY_DATA, model_options=TINY_MODEL,
                     train=TrainConfig(**settings))


class StopAt(Hooks):
    """Simulates a crash (the process dying) right after ``step``."""

    def __init__(self, step: int):
        self.step = step

    def on_step(self, step: int) -> None:
        if step == self.step:
            raise KeyboardInterrupt


@pytest.mark.parametrize("model", ["sqvae-gauss-1", "vqvae-reset"])
def test_interrupted_and_resumed_run_ends_bit_for_bit_like_an_uninterrupted_one(tmp_path, model):
    # 256 / 32 = 8 steps per epoch; checkpoints every 3 steps; the crash comes mid-epoch 2, after step 13.
    config = tiny_config(model, checkpoint_every=3)
    whole = run_cell(config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_cell(config, tmp_path / "resumed", hooks=[StopAt(13)])
    resumed = run_cell(config, tmp_path / "resumed")
    assert resumed["steps"] == whole["steps"] == 16
    assert resumed["test"] == whole["test"]
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert strip(resumed["history"]) == strip(whole["history"])
    resumed_state = torch.load(tmp_path / "resumed" / "best.pt")
    whole_state = torch.load(tmp_path / "whole" / "best.pt")
    assert all(torch.equal(resumed_state[k], whole_state[k]) for k in whole_state)


def test_a_different_seed_gives_a_different_run(tmp_path):
    first = run_cell(tiny_config("sqvae-gauss-1", max_steps=4))
    second = run_cell(RunConfig(**{**tiny_config("sqvae-gauss-1", max_steps=4).__dict__, "seed": 4}))
    assert first["test"]["loss"] != second["test"]["loss"]


@pytest.mark.parametrize("model", ["sqvae-gauss-1", "vqvae"])
def test_short_training_lowers_test_mse_well_below_the_untrained_model(model):
    data = {**TINY_DATA, "n_train": 512}
    splits = load_dataset("shapes", **data)
    torch.manual_seed(3)
    untrained = build_model(model, splits.spec, TINY_MODEL)
    before = evaluate(untrained, splits.test).metrics["mse"]
    config = RunConfig("shapes", model, seed=3, data_options=data, model_options=TINY_MODEL,
                       train=TrainConfig(epochs=3, batch_size=16, log_every=8))  # 96 steps
    after = run_cell(config)["test"]["mse"]
    assert after < 0.5 * before, (before, after)


def test_label_maps_train_and_report_segmentation_metrics():
    config = RunConfig("shapes-labels", "sqvae-vmf", seed=0, data_options={**TINY_DATA, "size": 32, "n_train": 512},
                       # kappa_phi(0) = 11 instead of the official 1.05, which anneals over thousands of steps
                       model_options={**TINY_MODEL, "dim_dict": 64, "log_param_q_init": math.log(10.0)},
                       train=TrainConfig(epochs=3, batch_size=16, log_every=8))
    test = run_cell(config)["test"]
    assert {"miou", "pixel_acc", "acc", "perplexity", "perplexity_batch", "usage"} <= set(test)
    assert "mse" not in test
    # shapes are mostly background: after 96 steps the decoder must beat predicting background alone
    splits = load_dataset("shapes-labels", **{**TINY_DATA, "size": 32, "n_train": 512})
    background_share = float((splits.test == 0).float().mean())
    assert test["pixel_acc"] > background_share
    assert 0.0 < test["miou"] <= 1.0


def test_non_finite_loss_fails_the_run_with_its_reason():
    config = tiny_config("vqvae", lr=1e30, max_steps=6)
    with pytest.raises(RunFailed, match="non-finite"):
        run_cell(config)


def test_temperature_follows_the_schedule_and_best_epoch_has_the_lowest_validation_loss(tmp_path):
    result = run_cell(tiny_config("sqvae-gauss-1", epochs=3), tmp_path)
    assert result["steps"] == 24
    final = result["history"][-1]
    assert final["temperature"] == pytest.approx(math.exp(-1e-5 * 24), rel=1e-6)
    losses = [record["val_loss"] for record in result["history"]]
    assert result["best_val_loss"] == min(losses)
    assert result["best_epoch"] == 1 + losses.index(min(losses))
    assert {"recon_grid.png", "codebook_usage.png", "curves.png"} <= {p.name for p in (tmp_path / "images").iterdir()}


def test_epoch_order_is_a_pure_function_of_seed_and_epoch_and_keeps_the_last_partial_batch():
    assert torch.equal(epoch_order(100, 1, 2), epoch_order(100, 1, 2))
    assert not torch.equal(epoch_order(100, 1, 2), epoch_order(100, 1, 3))
    data = torch.arange(70, dtype=torch.uint8).reshape(70, 1, 1, 1)
    batches = list(train_batches(data, 32, seed=0, epoch=1))
    assert [x.shape[0] for _, x in batches] == [32, 32, 6]
    seen = torch.cat([x.flatten() for _, x in batches]) * 255
    assert sorted(seen.round().long().tolist()) == list(range(70))
    resumed = list(train_batches(data, 32, seed=0, epoch=1, start=1))
    assert torch.equal(resumed[0][1], batches[1][1])


@pytest.mark.parametrize("official", [False, True])
def test_validation_touches_batchnorm_statistics_only_in_the_official_vmf_mode(official):
    splits = load_dataset("shapes-labels", **{**TINY_DATA, "size": 32})
    torch.manual_seed(0)
    model = build_model("sqvae-vmf", splits.spec, TINY_MODEL)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    evaluate(model, splits.val, bn_train_mode=official)
    after = {k: v for k, v in model.state_dict().items() if "running_mean" in k}
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == official


def test_train_config_rejects_bad_values_naming_the_key():
    with pytest.raises(ValueError, match="train.epochs"):
        TrainConfig(epochs=0)
    with pytest.raises(ValueError, match="write 1.0e-3"):
        TrainConfig(lr="1e-3")
    with pytest.raises(ValueError, match="train.precision"):
        TrainConfig(precision="fp16")


def test_perf_measures_trainer_and_bare_steps():
    result = measure("vqvae", "shapes", batch_size=16, steps=4, repeats=1, data_options=TINY_DATA)
    assert result.trainer_images_per_s > 0 and result.bare_images_per_s > 0
    assert 0 < result.ratio < 10


def test_a_resolved_config_round_trips_through_its_json_form():
    config = resolve_run_config(RunConfig("cifar10", "sqvae-gauss-1", seed=2, train=TrainConfig(epochs=5)))
    assert config.model_options["size_dict"] == 512 and config.model_options["network"] == "net_32"
    assert RunConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
