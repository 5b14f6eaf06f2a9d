"""VQ-VAE baselines (SPEC.md §4) against numpy references and hand-computed examples."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from baselines.vq import EmaVectorQuantizer, ResetVectorQuantizer, VectorQuantizer, nearest_codes

QUANTIZERS = [VectorQuantizer, EmaVectorQuantizer, ResetVectorQuantizer]


def np_flat(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def grid(values, d: int = 1) -> torch.Tensor:
    """Row vectors (N, d) -> a latent map (1, d, 1, N), positions in order."""
    rows = torch.tensor(values, dtype=torch.float32).reshape(-1, d)
    return rows.t().reshape(1, d, 1, -1).contiguous()


def rows(latent: torch.Tensor) -> np.ndarray:
    return np_flat(latent.detach().double().numpy())


def distinct_rows_from(values: np.ndarray, pool: np.ndarray, tol: float = 1e-4) -> int:
    """Assert every row of ``values`` is (up to the straight-through rounding) a row of ``pool``;
    return how many distinct pool rows appear."""
    match = np.abs(values[:, None, :] - pool[None]).max(-1) <= tol * (1.0 + np.abs(pool).max())
    assert match.any(1).all(), "a quantized vector is not one of the batch's encoder outputs"
    return len({int(np.argmax(m)) for m in match})


def random_case(seed: int = 0, k: int = 16, d: int = 4):
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((2, d, 3, 3)).astype(np.float32)
    codebook = rng.standard_normal((k, d)).astype(np.float32)
    return z, codebook


def set_codebook(q, codebook: np.ndarray) -> None:
    with torch.no_grad():
        q.codebook.copy_(torch.tensor(codebook))
        if hasattr(q, "ema_sum"):
            q.ema_sum.copy_(torch.tensor(codebook))
            q.ema_count.fill_(1.0)
        if hasattr(q, "initialised"):
            q.initialised.fill_(True)


def np_nearest(z_rows: np.ndarray, codebook: np.ndarray) -> np.ndarray:
    z64, c64 = z_rows.astype(np.float64), codebook.astype(np.float64)
    return ((z64[:, None, :] - c64[None]) ** 2).sum(-1).argmin(1)


def test_nearest_code_matches_numpy_argmin():
    z, codebook = random_case()
    idx = nearest_codes(torch.tensor(np_flat(z)), torch.tensor(codebook))
    np.testing.assert_array_equal(idx.numpy(), np_nearest(np_flat(z), codebook))


@pytest.mark.parametrize("cls", QUANTIZERS)
@pytest.mark.parametrize("mode", ["deterministic", "stochastic"])
def test_evaluation_modes_take_the_nearest_code_and_touch_no_state(cls, mode):
    z, codebook = random_case(1)
    q = cls(16, 4)
    set_codebook(q, codebook)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    for training in (True, False):
        q.train(training)
        torch.manual_seed(int(training))
        out = q(torch.tensor(z), None, mode)
        idx = np_nearest(np_flat(z), codebook)
        np.testing.assert_array_equal(out.indices.reshape(-1).numpy(), idx)
        np.testing.assert_allclose(rows(out.z_q), codebook[idx], rtol=1e-5, atol=1e-6)  # z + (e - z)
    for key, value in q.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_straight_through_gradient_passes_the_decoder_gradient_to_z():
    z, codebook = random_case(2)
    q = VectorQuantizer(16, 4)
    set_codebook(q, codebook)
    z_t = torch.tensor(z, requires_grad=True)
    out = q(z_t, None, "train")
    np.testing.assert_allclose(rows(out.z_q), codebook[np_nearest(np_flat(z), codebook)], rtol=1e-5, atol=1e-6)
    w = torch.randn_like(z_t)
    (w * out.z_q).sum().backward()  # d loss / d z_q = w, so d loss / d z must be w
    assert torch.equal(z_t.grad, w)
    assert q.codebook.grad is None or torch.count_nonzero(q.codebook.grad) == 0


def test_codebook_and_commitment_terms_match_numpy_with_beta():
    z, codebook = random_case(3)
    beta = 0.4
    q = VectorQuantizer(16, 4, beta=beta)
    set_codebook(q, codebook)
    z_t = torch.tensor(z, requires_grad=True)
    out = q(z_t, None, "train")
    idx = np_nearest(np_flat(z), codebook)
    diff = np_flat(z).astype(np.float64) - codebook[idx]  # (N, d): z - e
    sq = np.sum(diff**2) / z.shape[0]  # summed per sample, batch mean
    np.testing.assert_allclose(out.terms["codebook"].item(), sq, rtol=1e-5)
    np.testing.assert_allclose(out.terms["commitment"].item(), beta * sq, rtol=1e-5)
    np.testing.assert_allclose(out.latent_loss.item(), (1 + beta) * sq, rtol=1e-5)
    # stop-gradients: the codebook term trains only the codes, the commitment term only the encoder
    out.terms["codebook"].backward(retain_graph=True)
    assert z_t.grad is None or torch.count_nonzero(z_t.grad) == 0
    expected = np.zeros_like(codebook, dtype=np.float64)
    np.add.at(expected, idx, -2.0 * diff / z.shape[0])
    np.testing.assert_allclose(q.codebook.grad.numpy(), expected, rtol=1e-5, atol=1e-6)
    q.codebook.grad = None
    out.terms["commitment"].backward()
    assert q.codebook.grad is None or torch.count_nonzero(q.codebook.grad) == 0
    np.testing.assert_allclose(rows(z_t.grad), 2.0 * beta * diff / z.shape[0], rtol=1e-5, atol=1e-6)
    # training perplexity uses hard counts
    np.testing.assert_allclose(out.avg_probs.numpy(), np.bincount(idx, minlength=16) / idx.size, rtol=1e-6)


def test_ema_update_on_a_hand_computed_example():
    # K = 2, d = 1, codes 0 and 10; z = 1, 2 (-> code 0) and 9 (-> code 1); gamma 0.5, eps 0.1.
    q = EmaVectorQuantizer(2, 1, beta=0.25, gamma=0.5, epsilon=0.1)
    set_codebook(q, np.array([[0.0], [10.0]], dtype=np.float32))
    assert "codebook" not in dict(q.named_parameters())  # a buffer, not trained by gradient
    q.train()
    out = q(grid([1.0, 2.0, 9.0]), None, "train")
    # this step quantizes with the old codes and has only the commitment term: 0.25 * (1 + 4 + 1)
    np.testing.assert_allclose(rows(out.z_q)[:, 0], [0.0, 0.0, 10.0])
    assert set(out.terms) == {"commitment"}
    assert out.terms["commitment"].item() == pytest.approx(1.5)
    # N = 0.5 [1, 1] + 0.5 [2, 1] = [1.5, 1];  m = 0.5 [0, 10] + 0.5 [3, 9] = [1.5, 9.5]
    np.testing.assert_allclose(q.ema_count.numpy(), [1.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(q.ema_sum.numpy()[:, 0], [1.5, 9.5], rtol=1e-6)
    # Laplace: N~ = (N + eps) / (n + K eps) * n, n = 2.5 -> [1.6, 1.1] * 2.5 / 2.7
    # e = m / N~ = [1.5 * 2.7 / 4, 9.5 * 2.7 / 2.75] = [1.0125, 9.327272...]
    np.testing.assert_allclose(q.codebook.numpy()[:, 0], [1.0125, 9.3272727], rtol=1e-6)
    # no smoothing: e = m / N = [1.0, 9.5]
    q0 = EmaVectorQuantizer(2, 1, gamma=0.5, epsilon=0.0)
    set_codebook(q0, np.array([[0.0], [10.0]], dtype=np.float32))
    q0(grid([1.0, 2.0, 9.0]), None, "train")
    np.testing.assert_allclose(q0.codebook.numpy()[:, 0], [1.0, 9.5], rtol=1e-6)


def test_ema_unused_code_stays_put_and_default_gamma():
    q = EmaVectorQuantizer(2, 2)  # gamma 0.99, eps 1e-5
    set_codebook(q, np.array([[0.0, 0.0], [5.0, 5.0]], dtype=np.float32))
    q(grid([1.0, 1.0], d=2), None, "train")
    # code 1 unused: N = 0.99, m = 0.99 * (5, 5) -> e = m / N~ with N~ ~= N (tiny smoothing)
    n = 0.99 + 1.0  # 0.99 * 1 + 0.01 * 1 for code 0, plus 0.99 for code 1
    smoothed = (np.array([1.0, 0.99]) + 1e-5) / (n + 2e-5) * n
    expected = np.array([[0.01, 0.01], [4.95, 4.95]]) / smoothed[:, None]
    np.testing.assert_allclose(q.codebook.numpy(), expected, rtol=1e-5)


def test_reset_initialises_codes_from_rows_of_the_first_batch():
    z = grid([[0.0, 0.0], [1.0, 5.0], [2.0, -3.0], [7.0, 1.0], [-4.0, 2.0], [3.0, 3.0]], d=2)
    torch.manual_seed(0)
    q = ResetVectorQuantizer(3, 2)
    q.train()
    assert not bool(q.initialised)
    out = q(z, None, "train")
    assert bool(q.initialised)
    assert distinct_rows_from(rows(out.z_q), rows(z)) == 3  # three codes, each a row of the batch
    # the three positions that became codes quantize to themselves
    assert int(np.sum(np.abs(rows(out.z_q) - rows(z)).max(1) < 1e-6)) >= 3


def test_reset_with_fewer_vectors_than_codes_tiles_with_small_noise():
    torch.manual_seed(0)
    q = ResetVectorQuantizer(8, 4)
    z = torch.tensor([1.0, -2.0, 0.5, 3.0]).reshape(1, 4, 1, 1)
    out = q(z, None, "train")
    np.testing.assert_allclose(rows(out.z_q)[0], [1.0, -2.0, 0.5, 3.0], atol=0.05)
    # every code (alive or re-drawn) sits within the noise (std 0.01 / sqrt(4)) of that single vector
    np.testing.assert_allclose(q.codebook.numpy(), np.tile([1.0, -2.0, 0.5, 3.0], (8, 1)), atol=0.05)
    assert len({tuple(r) for r in q.codebook.numpy()}) == 8  # distinct, thanks to the noise


def test_reset_redraws_dead_codes_and_live_codes_follow_m_over_n():
    # codes 0 and 100; z = 1, 3 both go to code 0; gamma 0.5, threshold 1.
    q = ResetVectorQuantizer(2, 1, gamma=0.5, threshold=1.0)
    set_codebook(q, np.array([[0.0], [100.0]], dtype=np.float32))
    q.train()
    out = q(grid([1.0, 3.0]), None, "train")
    np.testing.assert_allclose(rows(out.z_q)[:, 0], [0.0, 0.0])
    # N = 0.5 [1, 1] + 0.5 [2, 0] = [1.5, 0.5];  m = 0.5 [0, 100] + 0.5 [4, 0] = [2, 50]
    np.testing.assert_allclose(q.ema_count.numpy(), [1.5, 0.5])
    np.testing.assert_allclose(q.ema_sum.numpy()[:, 0], [2.0, 50.0])
    assert q.codebook[0, 0].item() == pytest.approx(2.0 / 1.5)  # alive: m / N, no smoothing
    assert q.codebook[1, 0].item() in (1.0, 3.0)  # dead (0.5 < 1): a current encoder output
    assert q.scalars()["dead_codes"].item() == 1.0
    assert out.terms["commitment"].item() == pytest.approx(0.25 * (1.0 + 9.0))


def test_reset_reinitialises_after_loading_an_uninitialised_state():
    torch.manual_seed(0)
    q = ResetVectorQuantizer(3, 2)
    q(torch.randn(1, 2, 2, 3), None, "train")
    q.load_state_dict(ResetVectorQuantizer(3, 2).state_dict())
    z = 100.0 * torch.randn(1, 2, 2, 3)
    out = q(z, None, "train")
    assert bool(q.initialised)
    assert distinct_rows_from(rows(out.z_q), rows(z)) == 3


@pytest.mark.parametrize("cls", [VectorQuantizer, EmaVectorQuantizer])  # the reset one initialises from data
def test_codebook_init_options(cls):
    k = 10
    torch.manual_seed(0)
    q = cls(k, 3, codebook_init="uniform")
    assert q.codebook.detach().abs().max().item() <= 1.0 / k
    with pytest.raises(ValueError, match="codebook_init"):
        cls(k, 3, codebook_init="kmeans")
    with pytest.raises(ValueError, match="beta"):
        cls(k, 3, beta=-1.0)
