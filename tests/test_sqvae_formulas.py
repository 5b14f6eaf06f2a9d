"""SQ-VAE formulas against independent numpy/scipy references written from SPEC.md §1.2 to §1.6.

Every expected value is computed here, in float64 numpy, from the SPEC's formulas; the code under test
only produces the value being checked.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import torch

from sqvae.bessel import log_ive, vmf_log_normaliser
from sqvae.gaussian import GaussianQuantizer
from sqvae.likelihoods import GaussianImageLikelihood, VmfLabelLikelihood
from sqvae.quantizer import batch_perplexity, flatten_positions, gumbel_softmax_soft, temperature_at
from sqvae.vmf import VmfQuantizer

# ----------------------------------------------------------------------------------------------
# numpy references


def np_flat(a: np.ndarray) -> np.ndarray:
    """(B, C, H, W) -> (B*H*W, C), positions in (b, h, w) order."""
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def np_gauss_variance(variant: int, s: float, log_var: np.ndarray | None) -> np.ndarray:
    """sigma^2_phi of SPEC §1.3, broadcastable to (B, d, H, W)."""
    floor = np.exp(s)
    if variant == 1:
        return np.full((1, 1, 1, 1), 1.0 + floor)
    if variant == 2:
        return np.exp(log_var.mean(axis=(1, 2, 3), keepdims=True)) + floor
    if variant == 3:
        return np.exp(log_var.mean(axis=1, keepdims=True)) + floor
    return np.exp(log_var) + floor


def np_gauss_precision(variant, s, log_var, shape) -> np.ndarray:
    """Per-element precision 1 / clamp(sigma^2, 1e-10), broadcast to (B, d, H, W)."""
    return np.broadcast_to(1.0 / np.maximum(np_gauss_variance(variant, s, log_var), 1e-10), shape)


def np_gauss_logits(z: np.ndarray, precision: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    """Direct (N, d, K) broadcast: l_ik = -1/2 sum_d prec_id (z_id - b_kd)^2."""
    diff = np_flat(z)[:, :, None] - codebook.T[None, :, :]
    return -0.5 * np.sum(np_flat(precision)[:, :, None] * diff**2, axis=1)


def np_softmax(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    return np.exp(log_p), log_p


def np_gumbel_weights(logits: np.ndarray, u: np.ndarray, tau: float) -> np.ndarray:
    gumbel = -np.log(-np.log(u + 1e-10) + 1e-10)
    return np_softmax((logits + gumbel) / tau)[0]


def np_log_ive(nu: float, kappa) -> np.ndarray:
    return np.log(scipy.special.ive(nu, kappa))


def np_vmf_log_normaliser(kappa: float, p: int) -> float:
    m = p / 2.0
    return (m - 1.0) * np.log(kappa) - kappa - np_log_ive(m - 1.0, kappa)


def t32(a: np.ndarray) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float32)


def f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def val(t: torch.Tensor) -> float:
    return float(t.detach())


# ----------------------------------------------------------------------------------------------
# Gaussian SQ-VAE, types I to IV (SPEC §1.2, §1.3)

B, D_B, H, W, K = 2, 4, 3, 3, 6
S = 0.3


def gaussian_case(variant: int, seed: int = 0, grid: tuple[int, int] = (H, W), k: int = K):
    """A quantizer with a known codebook and s, plus float32-exact numpy copies of the inputs."""
    rng = np.random.default_rng(seed)
    z = (1.5 * rng.standard_normal((B, D_B, *grid))).astype(np.float32).astype(np.float64)
    log_var = (0.7 * rng.standard_normal((B, D_B, *grid))).astype(np.float32).astype(np.float64)
    codebook = rng.standard_normal((k, D_B)).astype(np.float32).astype(np.float64)
    q = GaussianQuantizer(k, D_B, variant, log_param_q_init=S)
    with torch.no_grad():
        q.codebook.copy_(t32(codebook))
    aux = t32(log_var) if variant != 1 else None
    precision = np_gauss_precision(variant, float(np.float32(S)), log_var, z.shape)
    return q, z, log_var, aux, codebook, precision


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_gaussian_variance_and_logits_match_numpy(variant):
    q, z, _, aux, codebook, precision = gaussian_case(variant)
    z_t, ctx = q.prepare(t32(z), aux)
    logits = q.logits(flatten_positions(z_t), ctx)
    np.testing.assert_allclose(f64(logits), np_gauss_logits(z, precision, codebook), rtol=1e-5, atol=1e-4)


def test_gaussian_type_one_variance_keeps_the_plus_one_floor():
    # sigma^2 = exp(0) + exp(s): even with s -> -inf the variance stays at 1 (SPEC §1.3, §6.3).
    q = GaussianQuantizer(4, 2, 1, log_param_q_init=-50.0)
    assert val(q.variance(None).squeeze()) == pytest.approx(1.0)
    q = GaussianQuantizer(4, 2, 1, log_param_q_init=math.log(10.0))
    assert val(q.variance(None).squeeze()) == pytest.approx(11.0, rel=1e-6)


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_gaussian_deterministic_latent_loss_matches_numpy(variant):
    q, z, _, aux, codebook, precision = gaussian_case(variant, seed=1)
    out = q(t32(z), aux, "deterministic")
    logits = np_gauss_logits(z, precision, codebook)
    p, log_p = np_softmax(logits)
    idx = logits.argmax(axis=1)
    np.testing.assert_array_equal(out.indices.numpy().reshape(-1), idx)
    z_q = codebook[idx]
    neg_entropy = np.sum(p * log_p) / B
    regulariser = np.sum(0.5 * np_flat(precision) * (np_flat(z) - z_q) ** 2) / B
    np.testing.assert_allclose(np_flat(f64(out.z_q)), z_q, rtol=1e-6)
    np.testing.assert_allclose(val(out.terms["neg_entropy"]), neg_entropy, rtol=1e-5)
    np.testing.assert_allclose(val(out.terms["regulariser"]), regulariser, rtol=1e-5)
    np.testing.assert_allclose(val(out.latent_loss), neg_entropy + regulariser, rtol=1e-5, atol=1e-5)
    # deterministic batch perplexity uses one-hot counts (SPEC §1.6)
    counts = np.bincount(idx, minlength=K) / idx.size
    np.testing.assert_allclose(f64(out.avg_probs), counts, rtol=1e-6)


@pytest.mark.parametrize("variant", [1, 2, 3, 4])
def test_gaussian_training_pass_is_the_soft_gumbel_mixture(variant):
    # Same RNG state -> same uniforms: z_q = softmax((l + G)/tau) @ B, R evaluated with the soft z_q.
    q, z, _, aux, codebook, precision = gaussian_case(variant, seed=2)
    q.set_step(50_000)
    tau = math.exp(-0.5)
    torch.manual_seed(123)
    out = q(t32(z), aux, "train")
    torch.manual_seed(123)
    u = torch.rand(B * H * W, K).double().numpy()
    logits = np_gauss_logits(z, precision, codebook)
    weights = np_gumbel_weights(logits, u, tau)
    z_q = weights @ codebook
    p, log_p = np_softmax(logits)
    np.testing.assert_allclose(np_flat(f64(out.z_q)), z_q, rtol=1e-4, atol=1e-5)
    regulariser = np.sum(0.5 * np_flat(precision) * (np_flat(z) - z_q) ** 2) / B
    np.testing.assert_allclose(val(out.terms["regulariser"]), regulariser, rtol=1e-4)
    np.testing.assert_allclose(val(out.terms["neg_entropy"]), np.sum(p * log_p) / B, rtol=1e-5)
    np.testing.assert_allclose(f64(out.avg_probs), p.mean(axis=0), rtol=1e-5, atol=1e-7)  # soft probs
    np.testing.assert_array_equal(out.indices.numpy().reshape(-1), logits.argmax(axis=1))


def test_gaussian_type_four_matrix_form_equals_direct_broadcast_at_scale():
    # Widely varying per-element precisions and larger latents: the code's expanded matrix form
    # must still equal numpy's direct (N, d, K) sum.
    rng = np.random.default_rng(5)
    q, _, _, _, codebook, _ = gaussian_case(4, seed=5, k=16)
    z = (4.0 * rng.standard_normal((B, D_B, 5, 5))).astype(np.float32).astype(np.float64)
    log_var = (2.0 * rng.standard_normal((B, D_B, 5, 5))).astype(np.float32).astype(np.float64)
    precision = np_gauss_precision(4, float(np.float32(S)), log_var, z.shape)
    z_t, ctx = q.prepare(t32(z), t32(log_var))
    got = f64(q.logits(flatten_positions(z_t), ctx))
    ref = np_gauss_logits(z, precision, codebook)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))


def test_gaussian_type_four_argmax_is_precision_weighted_not_euclidean():
    # z = 0, codes (1, 0) and (0, 1.2); precisions (100, 0.01): the weighted distance picks code 1,
    # the Euclidean distance would pick code 0 (SPEC §1.2, §6.12).
    s = math.log(1e-6)
    q = GaussianQuantizer(2, 2, 4, log_param_q_init=s)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.2]]))
    z = torch.zeros(1, 2, 1, 1)
    log_var = torch.tensor([math.log(0.01 - 1e-6), math.log(100.0 - 1e-6)]).reshape(1, 2, 1, 1)
    out = q(z, log_var, "deterministic")
    assert out.indices.item() == 1
    # R = 1/2 sum prec (z - b_1)^2 = 0.5 * 0.01 * 1.44
    assert val(out.terms["regulariser"]) == pytest.approx(0.5 * 0.01 * 1.44, rel=1e-4)


def test_gaussian_type_two_on_a_16x16_grid_equals_the_per_sample_formula():
    # The official code tiles the per-sample weight to 8x8 and crashes on CelebA's 16x16 grid (SPEC §6.2).
    q, z, log_var, aux, codebook, _ = gaussian_case(2, seed=3, grid=(16, 16), k=8)
    out = q(t32(z), aux, "deterministic")
    z_t, ctx = q.prepare(t32(z), aux)
    logits = f64(q.logits(flatten_positions(z_t), ctx)).reshape(B, 16 * 16, 8)
    s = float(np.float32(S))
    regulariser = 0.0
    for b in range(B):
        var_b = np.exp(log_var[b].mean()) + np.exp(s)  # one scalar per sample
        zb = z[b].reshape(D_B, -1).T  # (256, d)
        sq = ((zb[:, None, :] - codebook[None]) ** 2).sum(-1)
        np.testing.assert_allclose(logits[b], -0.5 * sq / var_b, rtol=1e-5, atol=1e-4)
        regulariser += 0.5 * ((zb - codebook[sq.argmin(1)]) ** 2).sum() / var_b
    assert out.indices.shape == (B, 16, 16)
    np.testing.assert_allclose(val(out.terms["regulariser"]), regulariser / B, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# vMF SQ-VAE (SPEC §1.4)


def vmf_case(seed: int = 0, k: int = 5, d: int = 3, s: float = math.log(0.05)):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((B, d, H, W)).astype(np.float32).astype(np.float64)
    codebook = (2.0 * rng.standard_normal((k, d))).astype(np.float32).astype(np.float64)
    q = VmfQuantizer(k, d, log_param_q_init=s)
    with torch.no_grad():
        q.codebook.copy_(t32(codebook))
    kappa = 1.0 + np.exp(float(np.float32(s)))
    z_unit = np_flat(z) / np.linalg.norm(np_flat(z), axis=1, keepdims=True)
    codes = codebook / np.linalg.norm(codebook, axis=1, keepdims=True)
    return q, z, codebook, kappa, z_unit, codes


def test_vmf_logits_are_kappa_times_cosine():
    q, z, _, kappa, z_unit, codes = vmf_case(s=math.log(3.0))
    assert val(q.kappa()) == pytest.approx(4.0, rel=1e-6)  # kappa_phi = 1 + e^s
    z_t, ctx = q.prepare(t32(z), None)
    got = f64(q.logits(flatten_positions(z_t), ctx))
    np.testing.assert_allclose(got, kappa * z_unit @ codes.T, rtol=1e-5, atol=1e-6)


def test_vmf_deterministic_latent_loss_matches_numpy():
    q, z, codebook, kappa, z_unit, codes = vmf_case(seed=1, s=math.log(2.0))
    out = q(t32(z), None, "deterministic")
    logits = kappa * z_unit @ codes.T
    idx = logits.argmax(1)
    np.testing.assert_array_equal(out.indices.numpy().reshape(-1), idx)
    z_q = codes[idx]
    np.testing.assert_allclose(np_flat(f64(out.z_q)), z_q, rtol=1e-5, atol=1e-6)  # unit codes
    p, log_p = np_softmax(logits)
    regulariser = kappa * np.sum(1.0 - np.sum(z_unit * z_q, axis=1)) / B
    np.testing.assert_allclose(val(out.terms["regulariser"]), regulariser, rtol=1e-5)
    np.testing.assert_allclose(val(out.terms["neg_entropy"]), np.sum(p * log_p) / B, rtol=1e-5)
    np.testing.assert_allclose(val(out.latent_loss), regulariser + np.sum(p * log_p) / B, rtol=1e-5)
    # the stored parameter stays unnormalised
    np.testing.assert_allclose(f64(q.codebook), codebook)


def test_vmf_training_regulariser_uses_the_soft_mixture():
    q, z, _, kappa, z_unit, codes = vmf_case(seed=2)
    torch.manual_seed(9)
    out = q(t32(z), None, "train")
    torch.manual_seed(9)
    u = torch.rand(B * H * W, codes.shape[0]).double().numpy()
    z_q = np_gumbel_weights(kappa * z_unit @ codes.T, u, 1.0) @ codes
    regulariser = kappa * np.sum(z_unit * (z_unit - z_q)) / B
    np.testing.assert_allclose(np_flat(f64(out.z_q)), z_q, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(val(out.terms["regulariser"]), regulariser, rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# Bessel functions and the vMF log-normaliser (SPEC §1.4, §6.15)

ORDERS = [0, 1, 9, 31]
KAPPAS = np.array([0.01, 1.0, 100.0, 1e4])


@pytest.mark.parametrize("nu", ORDERS)
def test_log_ive_value_matches_scipy(nu):
    got = log_ive(nu, torch.tensor(KAPPAS, dtype=torch.float64))
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    np.testing.assert_allclose(got.numpy(), np_log_ive(nu, KAPPAS), rtol=1e-12)


@pytest.mark.parametrize("nu", ORDERS)
def test_log_ive_gradient_matches_finite_differences_and_ivp(nu):
    kappa = torch.tensor(KAPPAS, dtype=torch.float64, requires_grad=True)
    log_ive(nu, kappa).sum().backward()
    h = 1e-5 * KAPPAS
    fd = (np_log_ive(nu, KAPPAS + h) - np_log_ive(nu, KAPPAS - h)) / (2.0 * h)
    np.testing.assert_allclose(kappa.grad.numpy(), fd, rtol=1e-6)
    # analytic, independently: d/dk log(I_nu(k) e^-k) = I'_nu(k) / I_nu(k) - 1 (iv overflows past ~700)
    small = KAPPAS <= 100.0
    analytic = scipy.special.ivp(nu, KAPPAS[small]) / scipy.special.iv(nu, KAPPAS[small]) - 1.0
    np.testing.assert_allclose(kappa.grad.numpy()[small], analytic, rtol=1e-9)


def test_log_ive_float32_input_gives_float32_output():
    out = log_ive(9, torch.tensor([1.0, 100.0]))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np_log_ive(9, np.array([1.0, 100.0])), rtol=1e-6)


def test_vmf_log_normaliser_matches_scipy_formula():
    kappa = torch.tensor(KAPPAS, dtype=torch.float64, requires_grad=True)
    got = vmf_log_normaliser(kappa, 20)  # C' = 20 channels, m = 10
    ref = 9.0 * np.log(KAPPAS) - KAPPAS - np_log_ive(9, KAPPAS)
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-12)
    got.sum().backward()
    # d/dk log C~ = (m-1)/k - I'_{m-1}/I_{m-1} = -I_m(k) / I_{m-1}(k) (recurrence I'_v = I_{v+1} + v I_v / k)
    np.testing.assert_allclose(kappa.grad.numpy(), -scipy.special.ive(10, KAPPAS) / scipy.special.ive(9, KAPPAS), rtol=1e-8)
    big = KAPPAS >= 1.0  # at small kappa a finite difference loses its digits to cancellation
    h = 1e-5 * KAPPAS[big]
    fd = (np_vmf_log_normaliser(KAPPAS[big] + h, 20) - np_vmf_log_normaliser(KAPPAS[big] - h, 20)) / (2.0 * h)
    np.testing.assert_allclose(kappa.grad.numpy()[big], fd, rtol=1e-6)


def test_vmf_log_normaliser_matches_the_closed_form_on_the_2_sphere():
    # p = 3: C_3(k) = k / (4 pi sinh k); log C~ = log C_3 + (3/2) log 2 pi (the constant the code drops).
    kappa = np.array([0.5, 1.0, 10.0, 50.0])
    log_sinh = kappa + np.log1p(-np.exp(-2.0 * kappa)) - np.log(2.0)
    ref = np.log(kappa) - np.log(4.0 * np.pi) - log_sinh + 1.5 * np.log(2.0 * np.pi)
    got = vmf_log_normaliser(torch.tensor(kappa, dtype=torch.float64), 3)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10)


# ----------------------------------------------------------------------------------------------
# Likelihoods (SPEC §1.2 step 5, §1.4)


def test_vmf_label_nll_matches_numpy_on_a_tiny_example():
    # 3 classes -> padded to C' = 4 channels (m = 2); 2 label maps of 2x2 pixels.
    y = np.array([[[0, 1], [2, 2]], [[1, 0], [0, 2]]])
    rng = np.random.default_rng(0)
    out = (rng.uniform(0.05, 2.0, size=(2, 4, 2, 2))).astype(np.float32).astype(np.float64)
    t = math.log(0.2)
    lik = VmfLabelLikelihood(num_classes=3, num_pixels=4, log_kappa_inv_init=t)
    assert lik.padded_classes == 4
    pred, recon, terms = lik(torch.tensor(y), t32(out))

    def nll(t_value: float) -> float:
        u = out / np.linalg.norm(out, axis=1, keepdims=True)
        kappa = 1.0 / (np.exp(t_value) + 1e-9)
        cos = np.take_along_axis(u, y[:, None], axis=1)[:, 0]  # u_d[y_d]
        return -kappa * cos.sum(axis=(1, 2)).mean() - 4 * np_vmf_log_normaliser(kappa, 4)

    t32_value = float(np.float32(t))
    np.testing.assert_allclose(val(recon), nll(t32_value), rtol=1e-5)
    u = out / np.linalg.norm(out, axis=1, keepdims=True)
    np.testing.assert_array_equal(pred.numpy(), u.argmax(1))
    assert val(terms["acc"]) == pytest.approx(np.mean(u.argmax(1) == y))
    recon.backward()
    fd = (nll(t32_value + 1e-6) - nll(t32_value - 1e-6)) / 2e-6
    np.testing.assert_allclose(val(lik.log_kappa_inv.grad), fd, rtol=1e-4)
    # kappa(0) = 100 with the default init log 0.01
    assert val(VmfLabelLikelihood(19, 16).kappa()) == pytest.approx(100.0, rel=1e-5)
    # the encoder sees a one-hot map over the padded channels; the padding channel stays empty
    one_hot = lik.encoder_input(torch.tensor(y)).numpy()
    np.testing.assert_array_equal(one_hot, np.eye(4)[y].transpose(0, 3, 1, 2))


def image_pair(seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(3, 2, 4, 4)).astype(np.float32).astype(np.float64)
    out = rng.uniform(size=(3, 2, 4, 4)).astype(np.float32).astype(np.float64)
    out[0] = x[0] + 0.01  # samples with very different SSEs: mean of logs != log of mean
    return x, out


def test_arelbo_is_half_d_log_of_the_batch_mean_sse():
    x, out = image_pair()
    dim = 2 * 4 * 4
    lik = GaussianImageLikelihood(dim, "arelbo")
    _, recon, terms = lik(t32(x), t32(out))
    sse_per_image = ((x - out) ** 2).sum(axis=(1, 2, 3))
    sse = sse_per_image.mean()
    np.testing.assert_allclose(val(terms["sse"]), sse, rtol=1e-6)
    np.testing.assert_allclose(val(terms["mse"]), sse / dim, rtol=1e-6)
    np.testing.assert_allclose(val(recon), 0.5 * dim * np.log(sse), rtol=1e-6)
    assert abs(0.5 * dim * np.mean(np.log(sse_per_image)) - val(recon)) > 1.0  # not a mean of logs
    assert not any(p.requires_grad for p in lik.parameters())


def test_learned_and_fixed_reconstruction_forms_match_numpy():
    x, out = image_pair(1)
    dim = 2 * 4 * 4
    sse = ((x - out) ** 2).sum(axis=(1, 2, 3)).mean()
    learned = GaussianImageLikelihood(dim, "learned")
    assert val(learned.logvar_x) == pytest.approx(math.log(0.1), rel=1e-6)
    with torch.no_grad():
        learned.logvar_x.fill_(-0.7)
    lv = float(np.float32(-0.7))
    _, recon, _ = learned(t32(x), t32(out))
    np.testing.assert_allclose(val(recon), sse / (2 * np.exp(lv)) + 0.5 * dim * lv, rtol=1e-6)
    recon.backward()  # d/d lv = -SSE / (2 sigma^2) + D / 2
    np.testing.assert_allclose(val(learned.logvar_x.grad), -sse / (2 * np.exp(lv)) + 0.5 * dim, rtol=1e-5)
    _, recon, _ = GaussianImageLikelihood(dim, "fixed", recon_variance=0.5)(t32(x), t32(out))
    np.testing.assert_allclose(val(recon), sse, rtol=1e-6)  # sigma^2 = 1/2: the plain SSE
    _, recon, _ = GaussianImageLikelihood(dim, "fixed", recon_variance=0.1)(t32(x), t32(out))
    np.testing.assert_allclose(val(recon), sse / 0.2, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Gumbel-softmax, temperature schedule, perplexity (SPEC §1.2, §1.5, §1.6)


@pytest.mark.parametrize("tau", [1.0, 0.5, 0.05])
def test_gumbel_soft_weights_match_numpy_with_the_same_uniforms(tau):
    logits = torch.randn(7, 5, generator=torch.Generator().manual_seed(0)) * 3.0
    torch.manual_seed(42)
    weights = gumbel_softmax_soft(logits, torch.tensor(tau))
    torch.manual_seed(42)
    u = torch.rand_like(logits).double().numpy()
    ref = np_gumbel_weights(f64(logits), u, tau)
    np.testing.assert_allclose(f64(weights), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(f64(weights).sum(1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    "step, expected",
    [(0, 1.0), (1, 0.99999), (156_300, 0.2095), (125_000, 0.2865), (356_090, 0.0284), (52_920, 0.5891)],
)
def test_temperature_schedule_reaches_the_spec_final_values(step, expected):
    assert round(temperature_at(step, 1.0, 1e-5, 0.0), 4) == pytest.approx(round(expected, 4))
    q = GaussianQuantizer(4, 2, 1)
    q.set_step(step)
    assert val(q.temperature) == pytest.approx(float(np.exp(-1e-5 * step)), rel=1e-6)
    assert int(q.step) == step


def test_temperature_schedule_floor_and_custom_rate():
    q = VmfQuantizer(4, 3, tau0=2.0, tau_decay=1e-3, tau_min=0.25)
    q.set_step(100)
    assert val(q.temperature) == pytest.approx(2.0 * np.exp(-0.1), rel=1e-6)
    q.set_step(100_000)
    assert val(q.temperature) == pytest.approx(0.25)


def test_batch_perplexity_known_answers():
    for k in (2, 7, 512):
        uniform = torch.full((k,), 1.0 / k)
        ref = np.exp(-np.sum(np.full(k, 1.0 / k) * np.log(1.0 / k + 1e-7)))
        assert val(batch_perplexity(uniform)) == pytest.approx(ref, rel=1e-5)
        assert val(batch_perplexity(uniform)) == pytest.approx(k, rel=1e-3)
        one_hot = torch.zeros(k)
        one_hot[k // 2] = 1.0
        assert val(batch_perplexity(one_hot)) == pytest.approx(1.0, abs=1e-5)


def test_deterministic_perplexity_through_the_quantizer():
    # Latents placed exactly on the codes: every code used equally -> K; all on one code -> 1.
    q = GaussianQuantizer(4, 3, 1)
    codes = q.codebook.detach()
    z = codes.repeat(2, 1).reshape(2, 2, 2, 3).permute(0, 3, 1, 2)  # 8 positions, each code twice
    out = q(z, None, "deterministic")
    np.testing.assert_array_equal(np.sort(out.indices.reshape(-1).numpy()), np.repeat(np.arange(4), 2))
    assert val(batch_perplexity(out.avg_probs)) == pytest.approx(4.0, rel=1e-4)
    z_one = codes[2].reshape(1, 3, 1, 1).expand(2, 3, 2, 2)
    out = q(z_one, None, "deterministic")
    assert val(batch_perplexity(out.avg_probs)) == pytest.approx(1.0, abs=1e-5)
