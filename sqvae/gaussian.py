"""Gaussian SQ-VAE quantizer, types I to IV, as the official code computes it (SPEC.md §1.2, §1.3).

sigma^2_phi (the dequantization variance), with s = ``log_param_q_scalar`` and v = the variance head:
  I:   1 + e^s                    one global scalar (the official "+1" floor is kept)
  II:  exp(mean_{c,h,w} v) + e^s  one scalar per sample (on any latent grid: fixes SPEC §6.2)
  III: exp(mean_c v) + e^s        one scalar per position
  IV:  exp(v) + e^s               one value per element (diagonal covariance)
Logits l_ik = -1/2 sum_d prec_id (z_id - b_kd)^2 with prec = 1 / clamp(sigma^2_phi, 1e-10).
Regulariser R = 1/2 prec (z - z_q)^2 per element.
"""
from __future__ import annotations

import math

import torch

from sqvae.quantizer import StochasticQuantizer, flatten_positions, squared_distances

GAUSSIAN_TYPES = (1, 2, 3, 4)


class GaussianQuantizer(StochasticQuantizer):
    def __init__(self, size_dict: int, dim_dict: int, variant: int, log_param_q_init: float = math.log(10.0), **tau):
        if variant not in GAUSSIAN_TYPES:
            raise ValueError(f"Gaussian SQ-VAE variant must be one of {GAUSSIAN_TYPES}; got {variant!r}")
        super().__init__(size_dict, dim_dict, **tau)
        self.variant = variant
        self.needs_variance_head = variant != 1
        self.log_param_q_scalar = torch.nn.Parameter(torch.tensor(float(log_param_q_init)))

    def variance(self, log_var: torch.Tensor | None) -> torch.Tensor:
        """sigma^2_phi, broadcastable to (B, d, H, W): (1,1,1,1), (B,1,1,1), (B,1,H,W) or (B,d,H,W)."""
        floor = self.log_param_q_scalar.exp()
        if self.variant == 1:
            return (1.0 + floor).reshape(1, 1, 1, 1)
        if log_var is None:
            raise ValueError(f"Gaussian type {self.variant} needs the variance head's output")
        if self.variant == 2:
            return log_var.mean(dim=(1, 2, 3), keepdim=True).exp() + floor
        if self.variant == 3:
            return log_var.mean(dim=1, keepdim=True).exp() + floor
        return log_var.exp() + floor

    def prepare(self, z: torch.Tensor, aux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        precision = 1.0 / torch.clamp(self.variance(aux), min=1e-10)
        if self.variant != 4:  # one precision per position: (B, 1, H, W)
            precision = precision.expand(z.shape[0], 1, z.shape[2], z.shape[3])
        return z, precision

    def logits(self, z_flat: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        prec = flatten_positions(precision)  # (N, 1) for I-III, (N, d) for IV
        codes = self.codebook
        if self.variant != 4:
            return -0.5 * prec * squared_distances(z_flat, codes)
        # sum_d prec (z - b)^2 = sum_d prec z^2 - 2 (prec z) b^T + prec (b^2)^T: no (N, d, K) tensor.
        weighted = (prec * z_flat**2).sum(1, keepdim=True) - 2.0 * (prec * z_flat) @ codes.t() + prec @ (codes**2).t()
        return -0.5 * weighted

    def regulariser(self, z: torch.Tensor, z_q: torch.Tensor, precision: torch.Tensor) -> torch.Tensor:
        return 0.5 * precision * (z - z_q) ** 2

    def scalars(self) -> dict[str, torch.Tensor]:
        """Type I logs its whole sigma^2_phi; II-IV log the shared floor e^s (the rest depends on x)."""
        floor = self.log_param_q_scalar.detach().exp()
        name, value = ("sigma2_q", 1.0 + floor) if self.variant == 1 else ("sigma2_q_floor", floor)
        return {**super().scalars(), name: value}
