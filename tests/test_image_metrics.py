"""PSNR, SSIM and LPIPS (bench.metrics.image, bench.metrics.perceptual): known answers, an independent
numpy/scipy SSIM, batching invariance, LPIPS's missing-weights path, and their place in the
evaluation pass and the metric registry."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from bench import metrics
from bench.batches import to_model_input
from bench.data import load_dataset
from bench.evaluate import evaluate, lpips_scoring
from bench.metrics import METRICS, metrics_for, psnr_per_image, ssim_per_image, table_metrics
from bench.metrics import perceptual
from bench.models import build_model

# --- PSNR -----------------------------------------------------------------------------------------


def test_psnr_by_hand_is_the_mean_of_per_image_values():
    x = torch.zeros(2, 1, 2, 2)
    x_hat = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5]]).reshape(2, 1, 2, 2)
    # image 0: MSE = (0.01 + 0.04 + 0.09 + 0.16) / 4 = 0.075; image 1: MSE = 0.25
    expected = [10 * math.log10(1 / 0.075), 10 * math.log10(1 / 0.25)]
    got = psnr_per_image(x, x_hat)
    assert got.tolist() == pytest.approx(expected, rel=1e-6)
    assert got.mean().item() == pytest.approx((11.249387366 + 6.020599913) / 2, rel=1e-6)
    # not the PSNR of the mean MSE
    assert got.mean().item() != pytest.approx(10 * math.log10(1 / 0.1625), rel=1e-3)


def test_psnr_exact_reconstruction_is_infinite_and_shapes_are_checked():
    x = torch.rand(3, 3, 8, 8)
    assert torch.isinf(psnr_per_image(x, x)).all()
    with pytest.raises(ValueError, match="share one shape"):
        psnr_per_image(x, x[:2])


# --- SSIM -----------------------------------------------------------------------------------------


def ssim_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2004 on one (C, H, W) image pair, written from the formula with scipy: Gaussian
    window 11 (σ 1.5, radius 5), K1 0.01, K2 0.03, data range 1, population moments, borders by
    reflection without repeating the edge (scipy "mirror" = torch "reflect"), then the mean of the
    map over channels and all H×W pixels."""
    c1, c2, r = 0.01**2, 0.03**2, 5

    def blur(a):
        return ndimage.gaussian_filter(a, sigma=1.5, truncate=r / 1.5, mode="mirror")

    values = []
    for a, b in zip(x.astype(np.float64), y.astype(np.float64)):
        mu_a, mu_b = blur(a), blur(b)
        var_a, var_b = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
        values.append(ssim_map)
    return float(np.mean(values))


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32)])
def test_ssim_matches_a_scipy_implementation_of_the_formula(channels, size):
    generator = torch.Generator().manual_seed(channels)
    x = torch.rand(2, channels, size, size, generator=generator)
    y = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    got = ssim_per_image(x, y)
    expected = [ssim_numpy(x[i].numpy(), y[i].numpy()) for i in range(2)]
    assert got.tolist() == pytest.approx(expected, abs=2e-5)


def test_ssim_known_answers_and_batching_invariance():
    x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert ssim_per_image(x, x).tolist() == pytest.approx([1.0] * 5, abs=1e-5)
    y = x.roll(1, dims=0)
    batched = ssim_per_image(x, y)
    alone = torch.cat([ssim_per_image(x[i:i + 1], y[i:i + 1]) for i in range(5)])
    assert torch.allclose(batched, alone, atol=1e-6)
    assert (batched < 0.5).all()  # unrelated images


# --- LPIPS ----------------------------------------------------------------------------------------


@pytest.fixture
def no_lpips_weights(monkeypatch, tmp_path):
    """No weights anywhere: no argument, no env var, an empty torch hub; the warn-once flag reset."""
    monkeypatch.delenv(perceptual.WEIGHTS_ENV_VAR, raising=False)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(perceptual, "_missing_weights_warned", False)


def test_missing_lpips_weights_give_none_and_exactly_one_warning(no_lpips_weights):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert perceptual.load_lpips() is None
        assert perceptual.load_lpips(None) is None
    lpips_warnings = [w for w in caught if issubclass(w.category, perceptual.LPIPSUnavailableWarning)]
    assert len(lpips_warnings) == 1
    message = str(lpips_warnings[0].message)
    assert "recorded as null" in message and perceptual.WEIGHTS_ENV_VAR in message and "--lpips-weights" in message


def tiny_model_and_test():
    splits = load_dataset("shapes", size=32, n_train=8, n_val=8, n_test=20)
    torch.manual_seed(0)
    return build_model("vqvae", splits.spec, {"size_dict": 8, "dim_dict": 8, "num_rb": 1}).eval(), splits.test


def test_evaluation_records_lpips_null_with_one_warning_without_weights(no_lpips_weights):
    net, test = tiny_model_and_test()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with lpips_scoring(None):
            first = evaluate(net, test, batch_size=8).metrics
            second = evaluate(net, test, batch_size=8).metrics
    assert first["lpips"] is None and second["lpips"] is None
    assert sum(issubclass(w.category, perceptual.LPIPSUnavailableWarning) for w in caught) == 1
    assert "lpips" not in evaluate(net, test, batch_size=8).metrics  # outside the block: validation


@pytest.fixture(scope="module")
def alexnet_features_file(tmp_path_factory):
    """A torchvision AlexNet state dict (random init: the real weights cannot be downloaded here),
    its features only (the classifier, 95% of the real file, is not used by LPIPS)."""
    import torchvision

    torch.manual_seed(0)
    state = {k: v for k, v in torchvision.models.alexnet(weights=None).state_dict().items() if k.startswith("features")}
    path = tmp_path_factory.mktemp("lpips") / "alexnet.pth"
    torch.save(state, path)
    return path


def test_lpips_with_weights_matches_torchmetrics_and_accepts_gray_28px(alexnet_features_file):
    from torchmetrics.functional.image.lpips import _LPIPS

    net = perceptual.load_lpips(alexnet_features_file)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    assert perceptual.lpips_per_image(x, x, net).tolist() == pytest.approx([0.0] * 4, abs=1e-6)
    reference = _LPIPS(net="alex", pnet_rand=True).eval()  # the library's own module, our backbone copied in
    reference.net.load_state_dict(net.net.state_dict())
    expected = reference(y, x, normalize=True).reshape(-1)
    assert torch.allclose(perceptual.lpips_per_image(x, y, net), expected, atol=1e-6)
    gray = torch.rand(3, 1, 28, 28)
    assert perceptual.lpips_per_image(gray, (gray * 0.9), net).shape == (3,)


def test_evaluation_with_weights_reports_the_mean_of_per_image_lpips(alexnet_features_file):
    net, test = tiny_model_and_test()
    x = to_model_input(test)
    with torch.no_grad():
        recon = net(x, mode="deterministic").recon.clamp(0, 1)
    expected = perceptual.lpips_per_image(x, recon, perceptual.load_lpips(alexnet_features_file)).double().mean()
    with lpips_scoring(str(alexnet_features_file)):
        got = evaluate(net, test, batch_size=6).metrics  # 20 / 6: partial last batch
    assert got["lpips"] == pytest.approx(float(expected), rel=1e-5)


def test_evaluation_psnr_and_ssim_are_means_of_per_image_values_for_any_batch_size():
    net, test = tiny_model_and_test()
    x = to_model_input(test)
    with torch.no_grad():
        recon = net(x, mode="deterministic").recon.clamp(0, 1)
    sse = ((x.double() - recon.double()) ** 2).flatten(1).sum(1)
    psnr = (10 * torch.log10(1 / (sse / x[0].numel()))).mean()
    ssim = np.mean([ssim_numpy(x[i].numpy(), recon[i].numpy()) for i in range(len(x))])
    for batch_size in (7, 20):
        got = evaluate(net, test, batch_size=batch_size).metrics
        assert got["psnr"] == pytest.approx(float(psnr), rel=1e-6)
        assert got["ssim"] == pytest.approx(ssim, abs=2e-5)


def test_label_data_gets_no_image_metrics():
    splits = load_dataset("shapes-labels", size=32, n_train=8, n_val=8, n_test=8)
    torch.manual_seed(0)
    net = build_model("vqvae", splits.spec, {"size_dict": 8, "dim_dict": 8, "num_rb": 1}).eval()
    got = evaluate(net, splits.test, batch_size=8).metrics
    assert not {"psnr", "ssim", "lpips", "sse"} & set(got)


# --- registry -------------------------------------------------------------------------------------


def test_registry_holds_directions_decimals_and_kinds():
    assert METRICS.get("psnr").higher_is_better and METRICS.get("ssim").higher_is_better
    assert not METRICS.get("lpips").higher_is_better
    assert (METRICS.get("psnr").decimals, METRICS.get("ssim").decimals, METRICS.get("lpips").decimals) == (2, 4, 4)
    assert "averaged over images" in METRICS.get("psnr").description
    assert "σ 1.5" in METRICS.get("ssim").description and "K2 0.03" in METRICS.get("ssim").description
    assert {"psnr", "ssim", "lpips", "mse", "fid"} <= set(metrics_for("image"))
    assert not {"psnr", "ssim", "lpips"} & set(metrics_for("labels"))
    assert "loss" not in table_metrics() and table_metrics()[:5] == ["mse", "sse", "psnr", "ssim", "lpips"]
    with pytest.raises(ValueError, match="kinds"):
        metrics.MetricInfo("x", True, "x", "x", kinds=("audio",))


def test_a_suite_without_lpips_weights_says_so_once_not_once_per_worker(tmp_path, monkeypatch):
    from tests.conftest import run_subprocess, write_suite

    monkeypatch.setenv("SQVAE_BENCH_LPIPS_WEIGHTS", str(tmp_path / "no-alexnet.pth"))
    suite = write_suite(tmp_path / "tiny.yaml")
    done = run_subprocess(["run", suite, "--output", tmp_path / "runs", "--results", tmp_path / "results",
                           "--workers", 2, "--no-progress", "--no-tracking"], cwd=tmp_path)
    assert done.code == 0, done.err
    assert (done.out + done.err).count("LPIPS is unavailable") == 1  # the client's note; no worker repeats it
