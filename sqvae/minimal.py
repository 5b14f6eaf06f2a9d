"""Minimal-SQVAE's quantizer (yukara-ikemiya/minimal-sqvae, models/stochastic_quantizer.py; SPEC.md §3):
a type-I Gaussian SQ-VAE whose dequantization variance is bounded and initialised from data.

- sigma^2_phi = sigmoid(v) * 2 * sigma^2_init, v trainable from 0, so sigma^2_phi stays in (0, 2 sigma^2_init)
  and starts at sigma^2_init (the official type I uses 1 + e^s, never below 1).
- At the first training forward (the module is in training mode and not yet initialised), from that
  batch's encoder outputs z (N = B*H'*W' positions of dimension d):
    var_z  = mean over d of the unbiased variance over positions of z (torch.var's default);
    y      = z tiled to at least K rows (repeated ceil(K / N) times, only when N < K)
             + eps * 0.2 * var_z, eps ~ N(0, I)  (the noise's standard deviation is 0.2 var_z, a variance);
    codebook       = K rows of y in a random order (randperm);
    sigma^2_init   = var_q_init * (mean over d of the unbiased variance over the rows of y),
  i.e. of the noisy tiled rows, as the reference computes it. Both live in the state (the codebook
  parameter and the ``sigma2_init`` buffer), with an ``initialised`` flag, so a resumed run is exact and
  a loaded model never re-initialises. Before initialisation sigma^2_init is var_q_init itself, as in the
  reference.
- Logits, posterior, Gumbel-softmax training codes, entropy and regulariser are those of the shared
  StochasticQuantizer with the scalar precision 1 / sigma^2_phi: the reference's loss
  sum p log p / B + sum 1/2 prec (z - z_q)^2 / B, with the (D/2) log SSE reconstruction (recon "arelbo").
Deliberate differences from the reference, each below 1e-4 in effect or distributionally nil: the Gumbel
noise comes from the harness's sampler (-log(-log(U + 1e-10) + 1e-10), the same distribution as
F.gumbel_softmax's, another random stream); the harness counts steps from 1 while the reference counts
from 0, so tau = max(exp(-1e-5 step), 1e-5) here is exp(-1e-5) times the reference's at each step.
"""
from __future__ import annotations

import torch
from torch import nn

from sqvae.quantizer import StochasticQuantizer, flatten_positions, squared_distances

INIT_NOISE = 0.2  # the reference's scale_rand


def bounded_variance(v: torch.Tensor, sigma2_init: torch.Tensor) -> torch.Tensor:
    """sigma^2_phi = sigmoid(v) * 2 * sigma^2_init."""
    return torch.sigmoid(v) * 2.0 * sigma2_init


def mean_dim_variance(rows: torch.Tensor) -> torch.Tensor:
    """(N, d) -> scalar: the unbiased variance of each dimension over the N rows, averaged over d."""
    return torch.var(rows, dim=0).mean()


def tile_rows(rows: torch.Tensor, count: int) -> torch.Tensor:
    """(N, d) repeated ceil(count / N) times along the rows when N < count, else unchanged."""
    n = rows.shape[0]
    return rows.repeat((count - 1) // n + 1, 1) if n < count else rows


def init_from_batch(z_flat: torch.Tensor, size_dict: int, var_q_init: float, noise: torch.Tensor,
                    order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The data-dependent initialisation (module docstring), with its randomness passed in.

    Args:
        z_flat: (N, d) encoder outputs of the first training batch.
        noise: standard normal, the shape of ``tile_rows(z_flat, size_dict)``.
        order: a permutation of that many rows; the codebook takes the rows order[:size_dict].
    Returns: (codebook (K, d), sigma^2_init scalar).
    """
    spread = mean_dim_variance(z_flat)
    rows = tile_rows(z_flat, size_dict) + noise * INIT_NOISE * spread
    return rows[order[:size_dict]], var_q_init * mean_dim_variance(rows)


class MinimalQuantizer(StochasticQuantizer):
    """Minimal-SQVAE's bounded-variance type-I Gaussian quantizer; see the module docstring.

    Args: size_dict (K), dim_dict (d), var_q_init (sigma^2_init's multiple of the batch variance), and the
    temperature schedule tau0, tau_decay, tau_min (the reference: 1.0, 1e-5, 1e-5).
    """

    def __init__(self, size_dict: int, dim_dict: int, var_q_init: float = 5.0, **tau):
        super().__init__(size_dict, dim_dict, **tau)
        if isinstance(var_q_init, bool) or not isinstance(var_q_init, (int, float)) or not var_q_init > 0:
            raise ValueError(f"var_q_init must be a number > 0; got {var_q_init!r}")
        self.var_q_init = float(var_q_init)
        self.var_logit = nn.Parameter(torch.zeros(()))  # v, the reference's var_q
        self.register_buffer("sigma2_init", torch.tensor(self.var_q_init))
        self.register_buffer("initialised", torch.zeros((), dtype=torch.bool))
        self._known_initialised = False  # mirrors the buffer, so the check syncs with the device once

    def variance(self) -> torch.Tensor:
        return bounded_variance(self.var_logit, self.sigma2_init)

    @torch.no_grad()
    def initialise(self, z_flat: torch.Tensor) -> None:
        """Set the codebook and sigma^2_init from (N, d) encoder outputs, once."""
        tiled = tile_rows(z_flat, self.size_dict).shape
        noise = torch.randn(tiled, device=z_flat.device, dtype=z_flat.dtype)
        order = torch.randperm(tiled[0], device=z_flat.device)
        codebook, sigma2_init = init_from_batch(z_flat, self.size_dict, self.var_q_init, noise, order)
        self.codebook.copy_(codebook)
        self.sigma2_init.copy_(sigma2_init)
        self.initialised.fill_(True)
        self._known_initialised = True

    def _needs_init(self) -> bool:
        if not self.training or self._known_initialised:
            return False
        self._known_initialised = bool(self.initialised)
        return not self._known_initialised

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._known_initialised = False  # the loaded ``initialised`` flag decides, not the stale mirror

    def prepare(self, z: torch.Tensor, aux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        if self._needs_init():
            self.initialise(flatten_positions(z.detach()))
        return z, 1.0 / torch.clamp(self.variance(), min=1e-10)

    def logits(self, z_flat: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        return -0.5 * precision * squared_distances(z_flat, self.codebook)

    def regulariser(self, z: torch.Tensor, z_q: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        return 0.5 * precision * (z - z_q) ** 2

    def scalars(self) -> dict[str, torch.Tensor]:
        return {**super().scalars(), "sigma2_q": self.variance().detach()}
