"""VQ-VAE quantizers (SPEC.md §4): plain, EMA codebook, and Jukebox-style dead-code reset.

All three take the nearest code and pass gradients straight through, z_q = z + sg(e - z). Loss terms
are summed over (d, H, W) per sample and averaged over the batch, like SQ-VAE's latent loss:
- ``VectorQuantizer``: ||sg[z] - e||^2 (codebook) + beta ||z - sg[e]||^2 (commitment), beta = 0.25.
- ``EmaVectorQuantizer``: commitment only; the codebook follows exponential moving averages
  N_k <- g N_k + (1 - g) n_k, m_k <- g m_k + (1 - g) sum_{i: k(i) = k} z_i, e_k = m_k / N~_k, with
  N~ Laplace-smoothed: N~_k = (N_k + eps) / (n + K eps) * n, n = sum_k N_k (gamma 0.99, eps 1e-5).
  N starts at 1 and m at the initial codebook, so an unused code stays where it was.
- ``ResetVectorQuantizer`` (Dhariwal et al. 2020, openai/jukebox bottleneck.py): codes initialised
  from the first training batch's encoder outputs; EMA (mu 0.99) of counts and sums, no smoothing;
  after each training step every code whose EMA count is below ``threshold`` is re-drawn from the
  current batch's encoder outputs.
The modes "deterministic" and "stochastic" both take the nearest code (VQ-VAE has no posterior).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from sqvae.quantizer import QuantizerOutput, check_mode, flatten_positions, unflatten_positions

CODEBOOK_INITS = ("normal", "uniform")


def nearest_codes(z_flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, d), (K, d) -> (N,) index of the Euclidean nearest code."""
    sq_dist = (z_flat**2).sum(1, keepdim=True) + (codes**2).sum(1) - 2.0 * z_flat @ codes.t()
    return sq_dist.argmin(dim=1)


def straight_through(z: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """Forward value z_q, gradient of the identity to z."""
    return z + (z_q - z).detach()


def random_rows(x: torch.Tensor, count: int) -> torch.Tensor:
    """``count`` rows drawn from x (N, d) without replacement; tiled, with noise std 0.01/sqrt(d), when N < count."""
    n, d = x.shape
    if n < count:
        reps = math.ceil(count / n)
        x = x.repeat(reps, 1) + torch.randn(n * reps, d, device=x.device, dtype=x.dtype) * (0.01 / math.sqrt(d))
    return x[torch.randperm(x.shape[0], device=x.device)[:count]]


class VectorQuantizer(nn.Module):
    """Plain VQ-VAE: nearest code, straight-through, codebook term + beta * commitment."""

    needs_variance_head = False
    learns_codebook_by_gradient = True

    def __init__(self, size_dict: int, dim_dict: int, beta: float = 0.25, codebook_init: str = "normal"):
        super().__init__()
        if size_dict < 2:
            raise ValueError(f"size_dict (codebook size K) must be >= 2; got {size_dict}")
        if dim_dict < 1:
            raise ValueError(f"dim_dict (code dimension) must be >= 1; got {dim_dict}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0; got {beta}")
        if codebook_init not in CODEBOOK_INITS:
            raise ValueError(f"codebook_init must be one of {', '.join(CODEBOOK_INITS)}; got {codebook_init!r}")
        self.size_dict, self.dim_dict, self.beta = size_dict, dim_dict, beta
        init = torch.randn(size_dict, dim_dict)
        if codebook_init == "uniform":
            init = torch.empty(size_dict, dim_dict).uniform_(-1.0 / size_dict, 1.0 / size_dict)
        if self.learns_codebook_by_gradient:
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)

    def set_step(self, step: int) -> None:
        """VQ-VAE has no schedule; present so the trainer treats every quantizer alike."""

    def codes(self) -> torch.Tensor:
        return self.codebook

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        return self.codebook[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, aux: torch.Tensor | None, mode: str) -> QuantizerOutput:
        check_mode(mode)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z = z.float()
            z_flat = flatten_positions(z)
            if mode == "train" and self.training:
                self.before_assignment(z_flat.detach())
            indices = nearest_codes(z_flat.detach(), self.codebook.detach())
            e = unflatten_positions(self.codebook[indices], z)
            batch = z.shape[0]
            terms = self.loss_terms(z, e, batch)
            if mode == "train" and self.training:
                self.after_assignment(z_flat.detach(), indices)
            # scatter_add, not bincount: bincount reads the maximum back to the host on CUDA (a sync)
            counts = torch.zeros(self.size_dict, device=z.device, dtype=z.dtype).scatter_add_(
                0, indices, torch.ones_like(indices, dtype=z.dtype))
        return QuantizerOutput(
            z_q=straight_through(z, e),
            latent_loss=sum(terms.values()),
            indices=indices.reshape(batch, z.shape[2], z.shape[3]),
            avg_probs=counts / indices.numel(),
            terms=terms,
        )

    def loss_terms(self, z: torch.Tensor, e: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
        commitment = self.beta * ((z - e.detach()) ** 2).sum() / batch
        codebook = ((z.detach() - e) ** 2).sum() / batch
        return {"codebook": codebook, "commitment": commitment}

    def before_assignment(self, z_flat: torch.Tensor) -> None:
        """Hook before the nearest-code search in a training step (data-dependent init)."""

    def after_assignment(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        """Hook after the assignment in a training step (EMA updates, resets)."""

    def scalars(self) -> dict[str, torch.Tensor]:
        return {}


class EmaVectorQuantizer(VectorQuantizer):
    """VQ-VAE with an EMA codebook (gamma 0.99, Laplace smoothing eps 1e-5)."""

    learns_codebook_by_gradient = False

    def __init__(self, size_dict: int, dim_dict: int, beta: float = 0.25, gamma: float = 0.99, epsilon: float = 1e-5, **kw):
        super().__init__(size_dict, dim_dict, beta, **kw)
        if not 0.0 <= gamma < 1.0:
            raise ValueError(f"gamma must be in [0, 1); got {gamma}")
        self.gamma, self.epsilon = gamma, epsilon
        self.register_buffer("ema_count", torch.ones(size_dict))
        self.register_buffer("ema_sum", self.codebook.clone())

    def loss_terms(self, z: torch.Tensor, e: torch.Tensor, batch: int) -> dict[str, torch.Tensor]:
        return {"commitment": self.beta * ((z - e.detach()) ** 2).sum() / batch}

    def update_ema(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        one_hot = F.one_hot(indices, self.size_dict).to(z_flat.dtype)  # (N, K)
        self.ema_count.mul_(self.gamma).add_(one_hot.sum(0), alpha=1.0 - self.gamma)
        self.ema_sum.mul_(self.gamma).add_(one_hot.t() @ z_flat, alpha=1.0 - self.gamma)

    def after_assignment(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        self.update_ema(z_flat, indices)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (n + self.size_dict * self.epsilon) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))


class ResetVectorQuantizer(EmaVectorQuantizer):
    """VQ-VAE with an EMA codebook and Jukebox-style random restarts of dead codes."""

    def __init__(self, size_dict: int, dim_dict: int, beta: float = 0.25, gamma: float = 0.99, threshold: float = 1.0, **kw):
        super().__init__(size_dict, dim_dict, beta, gamma, **kw)
        if threshold <= 0:
            raise ValueError(f"threshold must be > 0; got {threshold}")
        self.threshold = threshold
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._known_initialised = False  # mirrors the buffer, so the check syncs with the device once

    def before_assignment(self, z_flat: torch.Tensor) -> None:
        if self._known_initialised or bool(self.initialised):
            self._known_initialised = True
            return
        codes = random_rows(z_flat, self.size_dict)
        self.codebook.copy_(codes)
        self.ema_sum.copy_(codes)
        self.ema_count.fill_(1.0)
        self.initialised.fill_(True)
        self._known_initialised = True

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialised = False  # the loaded ``initialised`` flag decides, not the stale mirror

    def after_assignment(self, z_flat: torch.Tensor, indices: torch.Tensor) -> None:
        self.update_ema(z_flat, indices)
        alive = (self.ema_count >= self.threshold).unsqueeze(1).to(z_flat.dtype)
        fresh = random_rows(z_flat, self.size_dict)
        self.codebook.copy_(alive * self.ema_sum / self.ema_count.unsqueeze(1) + (1.0 - alive) * fresh)

    def scalars(self) -> dict[str, torch.Tensor]:
        return {"dead_codes": (self.ema_count < self.threshold).sum().detach().float()}
