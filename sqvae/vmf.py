"""vMF SQ-VAE quantizer (SPEC.md §1.1, §1.4).

Latents and codes live on the unit sphere: z_i = g(x)_i / ||g(x)_i|| and b~_k = b_k / ||b_k||, the
stored codebook staying unnormalised. kappa_phi = 1 + e^s (the official floor of 1, SPEC §6.3),
s initialised to log 0.05. Logits l_ik = kappa_phi z_i^T b~_k; regulariser kappa_phi z_i^T (z_i - z_q,i).
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from sqvae.quantizer import StochasticQuantizer


class VmfQuantizer(StochasticQuantizer):
    def __init__(self, size_dict: int, dim_dict: int, log_param_q_init: float = math.log(0.05), **tau):
        super().__init__(size_dict, dim_dict, **tau)
        self.log_param_q_scalar = torch.nn.Parameter(torch.tensor(float(log_param_q_init)))

    def kappa(self) -> torch.Tensor:
        return 1.0 + self.log_param_q_scalar.exp()

    def codes(self) -> torch.Tensor:
        return F.normalize(self.codebook, dim=1)

    def prepare(self, z: torch.Tensor, aux: torch.Tensor | None) -> tuple[torch.Tensor, None]:
        return F.normalize(z, dim=1), None

    def logits(self, z_flat: torch.Tensor, ctx: None) -> torch.Tensor:
        return self.kappa() * (z_flat @ self.codes().t())

    def regulariser(self, z: torch.Tensor, z_q: torch.Tensor, ctx: None) -> torch.Tensor:
        return self.kappa() * z * (z - z_q)

    def scalars(self) -> dict[str, torch.Tensor]:
        return {**super().scalars(), "kappa_q": self.kappa().detach()}
