"""Minimal-SQVAE (sqvae.minimal, sqvae.minimal_net): its formulas against numpy, its data-dependent
initialisation (once, in the state), its parameter count against the reference configuration, exact
resume of a run that initialises from data, and ``network: minimal`` under the other models."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data.spec import DataSpec
from bench.models import build_model, resolve_model_options
from bench.run import RunConfig, run_cell
from bench.train import TrainConfig
from sqvae.minimal import INIT_NOISE, bounded_variance, init_from_batch, tile_rows
from sqvae.quantizer import flatten_positions
from tests.test_train import StopAt

MNIST32 = DataSpec("mnist", "image", 1, 32)
SHAPES32 = DataSpec("shapes", "image", 3, 32)


def np_sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def test_bounded_variance_matches_numpy():
    v = np.array([-30.0, -2.5, 0.0, 0.7, 4.0, 30.0])
    got = bounded_variance(torch.tensor(v), torch.tensor(0.37, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, np_sigmoid(v) * 2 * 0.37, rtol=1e-12)
    assert bounded_variance(torch.tensor(0.0), torch.tensor(0.37)).item() == pytest.approx(0.37)  # v0 = 0
    assert np.all((got > 0) & (got < 2 * 0.37 + 1e-12))


def np_init(z: np.ndarray, k: int, var_q_init: float, noise: np.ndarray, order: np.ndarray):
    """The reference's initialisation written out in numpy (unbiased variances, noise std 0.2 var_z)."""
    var_z = z.var(axis=0, ddof=1).mean()
    rows = np.tile(z, (int(np.ceil(k / len(z))), 1)) if len(z) < k else z
    rows = rows + noise * INIT_NOISE * var_z
    return rows[order[:k]], var_q_init * rows.var(axis=0, ddof=1).mean()


@pytest.mark.parametrize("n, k", [(40, 16), (6, 16), (5, 5)], ids=["more-rows", "tiled", "equal"])
def test_initialisation_statistics_match_numpy(n, k):
    rng = np.random.default_rng(0)
    z = rng.normal(0.3, 1.7, size=(n, 8))
    tiled = tile_rows(torch.tensor(z), k).numpy()
    assert len(tiled) == (n if n >= k else n * int(np.ceil(k / n))) and len(tiled) >= k
    noise, order = rng.normal(size=tiled.shape), rng.permutation(len(tiled))
    codebook, sigma2 = init_from_batch(torch.tensor(z), k, 5.0, torch.tensor(noise), torch.tensor(order))
    want_codebook, want_sigma2 = np_init(z, k, 5.0, noise, order)
    np.testing.assert_allclose(codebook.numpy(), want_codebook, rtol=1e-12)
    assert sigma2.item() == pytest.approx(want_sigma2, rel=1e-12)


def first_forward(model, x: torch.Tensor, seed: int) -> torch.Tensor:
    """A training forward under ``seed``; returns the encoder output it quantized, flattened (N, d)."""
    seen = {}
    handle = model.encoder.register_forward_hook(lambda m, i, o: seen.update(z=o[0].detach()))
    torch.manual_seed(seed)
    model.train()(x)
    handle.remove()
    return flatten_positions(seen["z"])


def test_the_first_training_forward_initialises_from_the_batch_once():
    torch.manual_seed(0)
    model = build_model("sqvae-minimal", MNIST32)
    q = model.quantizer
    x = torch.rand(3, 1, 32, 32)  # 3 x 2 x 2 = 12 positions < K = 32: the rows are tiled
    model.eval()(x)
    assert not q.initialised and q.sigma2_init.item() == 5.0  # evaluation never initialises
    z = first_forward(model, x, seed=7).double().numpy()
    torch.manual_seed(7)  # the encoder draws nothing: the quantizer's first draws are noise, then order
    noise = torch.randn(36, 8).double().numpy()
    order = torch.randperm(36).numpy()
    want_codebook, want_sigma2 = np_init(z, 32, 5.0, noise, order)
    assert q.initialised
    np.testing.assert_allclose(q.codebook.detach().numpy(), want_codebook, rtol=1e-5, atol=1e-6)
    assert q.sigma2_init.item() == pytest.approx(want_sigma2, rel=1e-5)
    assert q.scalars()["sigma2_q"].item() == pytest.approx(want_sigma2, rel=1e-5)  # sigmoid(0) * 2 = 1
    state = {k: v.clone() for k, v in model.state_dict().items()}
    first_forward(model, torch.rand(3, 1, 32, 32), seed=8)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # no second initialisation
    loaded = build_model("sqvae-minimal", MNIST32)
    loaded.load_state_dict(state)
    first_forward(loaded, torch.rand(3, 1, 32, 32), seed=9)
    assert torch.equal(loaded.quantizer.codebook, state["quantizer.codebook"])  # a loaded model keeps its state


def test_parameter_count_of_the_reference_configuration():
    # yukara-ikemiya/minimal-sqvae config/params.yaml: in_ch 1, width 8, depth 2, num_down 4, stride 2,
    # K 32, d 8 (models/encdec.py, common_layers.py with bn=False, stochastic_quantizer.py):
    conv4 = lambda cin, cout: cin * cout * 4 * 4 + cout  # the k = 2 * stride = 4 (transposed) convs
    conv3 = 8 * 8 * 3 * 3 + 8  # 584: 3x3, 8 -> 8
    resblock = conv3 + (8 * 8 + 8)  # 656: 3x3 then 1x1, both with bias
    encoder = conv4(1, 8) + 3 * conv4(8, 8) + 4 * 2 * resblock + conv3  # 136 + 3096 + 5248 + 584 = 9064
    decoder = conv3 + 4 * 2 * resblock + 3 * conv4(8, 8) + (8 * 1 * 16 + 1)  # 584 + 5248 + 3096 + 129 = 9057
    quantizer = 32 * 8 + 1  # codebook + v
    assert encoder + decoder + quantizer == 18_378
    model = build_model("sqvae-minimal", MNIST32)
    assert sum(p.numel() for p in model.parameters()) == 18_378
    assert model.downsampling == 16 and model.encode(torch.rand(2, 1, 32, 32)).shape == (2, 2, 2)


def test_reference_defaults():
    opts = resolve_model_options("sqvae-minimal", MNIST32)
    assert {k: opts[k] for k in ("network", "size_dict", "dim_dict", "width", "depth", "num_down", "stride")} == {
        "network": "minimal", "size_dict": 32, "dim_dict": 8, "width": 8, "depth": 2, "num_down": 4, "stride": 2}
    assert (opts["var_q_init"], opts["tau0"], opts["tau_decay"], opts["tau_min"], opts["recon"]) == (5.0, 1.0, 1e-5, 1e-5, "arelbo")


MINIMAL_NET = {"network": "minimal", "size_dict": 32, "dim_dict": 8}


@pytest.mark.parametrize("name, count", [("vqvae", 18_377), ("sqvae-gauss-1", 18_378), ("vqvae-ema", 18_121),
                                         ("sqvae-gauss-2", 18_378 + 8 * 8 * 9 + 8)])
def test_network_minimal_builds_for_the_other_models(name, count):
    """Same network as sqvae-minimal: vqvae lacks v; EMA codebooks are buffers; type II adds a 3x3 variance head."""
    opts = resolve_model_options(name, MNIST32, MINIMAL_NET)
    assert "num_rb" not in opts and (opts["width"], opts["depth"], opts["num_down"], opts["stride"]) == (8, 2, 4, 2)
    model = build_model(name, MNIST32, MINIMAL_NET)
    assert sum(p.numel() for p in model.parameters()) == count
    out = model.train()(torch.rand(4, 1, 32, 32))
    assert out.indices.shape == (4, 2, 2) and torch.isfinite(out.loss)


def test_minimal_network_options_change_the_stack():
    model = build_model("vqvae", SHAPES32, {**MINIMAL_NET, "width": 16, "depth": 1, "num_down": 2, "stride": 4})
    assert model.downsampling == 16 and model.encoder.trunk[0].weight.shape == (16, 3, 8, 8)
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 2, 2)


def test_interrupted_and_resumed_minimal_run_is_exact(tmp_path):
    # 256 / 32 = 8 steps per epoch; the initialisation happens at step 1, a checkpoint every 3 steps,
    # the crash after step 13: the resumed run must load the initialised state, not initialise again.
    config = RunConfig("shapes", "sqvae-minimal", seed=3, data_options={"size": 32, "n_train": 256, "n_val": 64, "n_test": 64},
                       train=TrainConfig(epochs=2, log_every=2, checkpoint_every=3))
    whole = run_cell(config, tmp_path / "whole")
    with pytest.raises(KeyboardInterrupt):
        run_cell(config, tmp_path / "resumed", hooks=[StopAt(13)])
    assert torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=False)["model"]["quantizer.initialised"]
    resumed = run_cell(config, tmp_path / "resumed")
    assert resumed["test"] == whole["test"]
    strip = lambda history: [{k: v for k, v in r.items() if k != "seconds"} for r in history]
    assert strip(resumed["history"]) == strip(whole["history"])
    best_r, best_w = (torch.load(tmp_path / d / "best.pt") for d in ("resumed", "whole"))
    assert all(torch.equal(best_r[k], best_w[k]) for k in best_w)
    assert best_w["quantizer.initialised"] and best_w["quantizer.sigma2_init"].item() != 5.0
