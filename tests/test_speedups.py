"""Issue 9's two speed-ups: the vMF likelihood's argmax with the class channels last (the same values bit
for bit as the dim-1 computation it replaces), and the ``compile`` train setting (compiled outputs
against eager ones on fixed noise; the compile time in the run's results; part of the cell id)."""
from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch.nn import functional as F

from bench.data.spec import DataSpec
from bench.models import build_model
from bench.run import RunConfig, run_cell
from bench.suite import config_hash
from bench.train import TrainConfig
from sqvae.bessel import vmf_log_normaliser
from sqvae.likelihoods import VmfLabelLikelihood


def dim1_vmf(lik: VmfLabelLikelihood, y: torch.Tensor, out: torch.Tensor):
    """The likelihood as it was before the speed-up: normalise, gather and argmax over dim 1."""
    u = F.normalize(out.float(), dim=1)
    kappa = lik.kappa()
    cos = u.gather(1, y.long().unsqueeze(1)).squeeze(1)
    recon = -kappa * cos.sum(dim=(1, 2)).mean() - lik.num_pixels * vmf_log_normaliser(kappa, lik.padded_classes)
    pred = u.argmax(dim=1)
    return pred, recon, {"acc": (pred == y).float().mean()}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_channels_last_vmf_gives_the_dim1_values_bit_for_bit(seed):
    g = torch.Generator().manual_seed(seed)
    classes, size = 19, 16
    lik = VmfLabelLikelihood(classes, size * size)
    out = F.softplus(torch.randn(4, 20, size, size, generator=g) * 3, beta=2)
    out[:, 3:7, :4] = out[:, 5:6, :4]  # ties: the first channel must win in both
    out[0, :, 0, 0] = 0.0  # an all-zero pixel (normalise's eps)
    y = torch.randint(0, classes, (4, size, size), generator=g)
    pred, recon, terms = lik(y, out)
    old_pred, old_recon, old_terms = dim1_vmf(lik, y, out)
    assert torch.equal(pred, old_pred) and torch.equal(recon, old_recon) and torch.equal(terms["acc"], old_terms["acc"])
    assert torch.equal(lik.decode_output(out), out.argmax(dim=1))
    a = out.detach().clone().requires_grad_()
    b = out.detach().clone().requires_grad_()
    lik(y, a)[1].backward()
    dim1_vmf(lik, y, b)[1].backward()
    assert torch.equal(a.grad, b.grad)


def test_compile_is_a_validated_train_setting_in_the_cell_id():
    with pytest.raises(ValueError, match="train.compile"):
        TrainConfig(compile="yes")
    eager = RunConfig("shapes", "vqvae", train=TrainConfig())
    compiled = RunConfig("shapes", "vqvae", train=TrainConfig(compile=True))
    assert TrainConfig().compile is False and config_hash(eager) != config_hash(compiled)


@pytest.fixture
def can_compile():
    """Skip, saying why, where torch.compile cannot run (Inductor needs a C compiler on the CPU)."""
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        pytest.skip("torch.compile's CPU backend (Inductor) needs a C compiler: none on PATH")
    try:
        torch.compile(lambda t: t * 2 + 1)(torch.ones(2))
    except Exception as err:  # noqa: BLE001 - any failure means this machine cannot compile
        pytest.skip(f"torch.compile fails on this machine: {type(err).__name__}: {err}")


SMALL_MINIMAL = {"network": "minimal", "size_dict": 16, "dim_dict": 4, "width": 4, "depth": 1, "num_down": 2}
RTOL, ATOL = 1e-4, 1e-5  # fused kernels reorder float32 sums; codes must agree exactly


def test_compiled_outputs_equal_eager_outputs_on_fixed_noise(can_compile):
    spec = DataSpec("shapes", "image", 3, 16)
    torch.manual_seed(0)
    model = build_model("sqvae-minimal", spec, SMALL_MINIMAL)
    x = torch.rand(8, 3, 16, 16)
    model.train()(x)  # the data-dependent initialisation, eager

    def outputs():
        det = model.eval()(x)
        torch.manual_seed(1)
        train = model.train()(x)  # Gumbel noise from the eager RNG (Inductor's fallback_random)
        return det, train

    eager = outputs()
    model.compile()
    with torch._inductor.config.patch(fallback_random=True):
        compiled = outputs()
    for e, c in zip(eager, compiled):
        assert torch.equal(e.indices, c.indices)
        torch.testing.assert_close(c.recon, e.recon, rtol=RTOL, atol=ATOL)
        for key in e.terms:
            torch.testing.assert_close(c.terms[key], e.terms[key], rtol=RTOL, atol=ATOL)


def test_a_compiled_run_reports_its_compile_time(can_compile):
    config = RunConfig("shapes", "vqvae", data_options={"size": 32, "n_train": 64, "n_val": 32, "n_test": 32},
                       model_options=SMALL_MINIMAL, train=TrainConfig(max_steps=2, batch_size=32, compile=True))
    result = run_cell(config)
    assert result["compile_seconds"] > 0 and math.isfinite(result["test"]["loss"])
    assert "compile_seconds" not in run_cell(RunConfig(**{**config.__dict__, "train": TrainConfig(max_steps=2)}))
