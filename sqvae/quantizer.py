"""What every quantizer returns, and the pieces the stochastic quantizers share (SPEC.md §1.2, §1.5).

Quantization modes:
- "train": SQ-VAE draws a soft Gumbel-softmax mixture of codes; VQ-VAE takes the nearest code with a
  straight-through gradient.
- "deterministic": the hard code argmax_k of the logits (the nearest code for VQ-VAE).
- "stochastic": a hard code drawn from the categorical posterior (nearest code for VQ-VAE).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

MODES = ("train", "deterministic", "stochastic")


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"quantization mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


@dataclass
class QuantizerOutput:
    """z_q: (B, d, H, W), what the decoder sees. latent_loss: scalar, summed per sample, batch mean.
    indices: (B, H, W) long, the hard code of each position (argmax in training).
    avg_probs: (K,), the assignment averaged over the batch's positions, for the batch perplexity.
    terms: further named scalar terms of the latent loss, for logging."""

    z_q: torch.Tensor
    latent_loss: torch.Tensor
    indices: torch.Tensor
    avg_probs: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def batch_perplexity(avg_probs: torch.Tensor) -> torch.Tensor:
    """exp(-sum_k p_k log(p_k + 1e-7)): the official per-batch perplexity (SPEC §1.6)."""
    return torch.exp(-torch.sum(avg_probs * torch.log(avg_probs + 1e-7)))


def flatten_positions(z: torch.Tensor) -> torch.Tensor:
    """(B, d, H, W) -> (B*H*W, d), positions in (b, h, w) order."""
    return z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])


def unflatten_positions(flat: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B*H*W, d) -> (B, d, H, W) with the batch and grid of ``like``."""
    b, _, h, w = like.shape
    return flat.reshape(b, h, w, -1).permute(0, 3, 1, 2).contiguous()


def squared_distances(z_flat: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(N, d), (K, d) -> (N, K) squared Euclidean distances, as ||z||^2 + ||b||^2 - 2 z b^T (the official form)."""
    return (z_flat**2).sum(1, keepdim=True) + (codes**2).sum(1) - 2.0 * z_flat @ codes.t()


def gumbel_softmax_soft(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """softmax((logits + G) / tau), G = -log(-log(U + 1e-10) + 1e-10), U ~ U(0, 1): soft weights, no hard sample."""
    u = torch.rand_like(logits)
    gumbel = -torch.log(-torch.log(u + 1e-10) + 1e-10)
    return torch.softmax((logits + gumbel) / temperature, dim=-1)


def temperature_at(step: int, tau0: float, decay: float, tau_min: float) -> float:
    """tau(step) = max(tau0 * exp(-decay * step), tau_min) (SPEC §1.5)."""
    return max(tau0 * math.exp(-decay * step), tau_min)


class StochasticQuantizer(nn.Module):
    """Shared state and sampling of the SQ-VAE quantizers: codebook, temperature, logits -> codes.

    Subclasses provide ``prepare(z, aux) -> (z, ctx)`` (ctx: what the other two need, e.g. the
    precision), ``logits(z_flat, ctx)`` and ``regulariser(z, z_q, ctx)``.
    """

    needs_variance_head = False

    def __init__(self, size_dict: int, dim_dict: int, tau0: float = 1.0, tau_decay: float = 1e-5, tau_min: float = 0.0):
        super().__init__()
        if size_dict < 2:
            raise ValueError(f"size_dict (codebook size K) must be >= 2; got {size_dict}")
        if dim_dict < 1:
            raise ValueError(f"dim_dict (code dimension) must be >= 1; got {dim_dict}")
        if tau0 <= 0 or tau_decay < 0 or tau_min < 0:
            raise ValueError(f"need tau0 > 0, tau_decay >= 0, tau_min >= 0; got {tau0}, {tau_decay}, {tau_min}")
        self.size_dict, self.dim_dict = size_dict, dim_dict
        self.tau0, self.tau_decay, self.tau_min = tau0, tau_decay, tau_min
        self.codebook = nn.Parameter(torch.randn(size_dict, dim_dict))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("temperature", torch.tensor(float(tau0)))

    def set_step(self, step: int) -> None:
        """Advance the temperature schedule to the global training step (1-based, SPEC §1.5)."""
        self.step.fill_(step)
        self.temperature.fill_(temperature_at(step, self.tau0, self.tau_decay, self.tau_min))

    def codes(self) -> torch.Tensor:
        """The code vectors as the decoder sees them (K, d)."""
        return self.codebook

    def lookup(self, indices: torch.Tensor) -> torch.Tensor:
        """indices (B, H, W) -> hard codes (B, d, H, W)."""
        return self.codes()[indices].permute(0, 3, 1, 2).contiguous()

    def forward(self, z: torch.Tensor, aux: torch.Tensor | None, mode: str) -> QuantizerOutput:
        check_mode(mode)
        with torch.autocast(device_type=z.device.type, enabled=False):
            z, ctx = self.prepare(z.float(), None if aux is None else aux.float())
            logits = self.logits(flatten_positions(z), ctx)  # (N, K), N = B*H*W
            log_probs = torch.log_softmax(logits, dim=-1)
            probs = log_probs.exp()
            if mode == "train":
                weights = gumbel_softmax_soft(logits, self.temperature)
                z_q_flat = weights @ self.codes()
                indices = logits.argmax(dim=-1)
                avg_probs = probs.mean(dim=0)
            else:
                if mode == "deterministic":
                    indices = logits.argmax(dim=-1)
                else:
                    indices = torch.multinomial(probs, 1).squeeze(1)
                z_q_flat = self.codes()[indices]
                one_hot = nn.functional.one_hot(indices, self.size_dict).to(probs.dtype)
                avg_probs = one_hot.mean(dim=0) if mode == "deterministic" else probs.mean(dim=0)
            z_q = unflatten_positions(z_q_flat, z)
            batch = z.shape[0]
            neg_entropy = torch.sum(probs * log_probs) / batch
            regulariser = self.regulariser(z, z_q, ctx).sum() / batch
            indices = indices.reshape(batch, z.shape[2], z.shape[3])
        return QuantizerOutput(
            z_q=z_q,
            latent_loss=neg_entropy + regulariser,
            indices=indices,
            avg_probs=avg_probs,
            terms={"neg_entropy": neg_entropy, "regulariser": regulariser},
        )

    def prepare(self, z: torch.Tensor, aux: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(encoder output, variance-head output) -> (latent to quantize, context for the next two)."""
        raise NotImplementedError

    def logits(self, z_flat: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """(N, d) latents -> (N, K) logits."""
        raise NotImplementedError

    def regulariser(self, z: torch.Tensor, z_q: torch.Tensor, ctx: torch.Tensor | None) -> torch.Tensor:
        """Per-element regulariser R (B, d, H, W); summed and batch-averaged by ``forward``."""
        raise NotImplementedError

    def scalars(self) -> dict[str, torch.Tensor]:
        """Scalars worth logging (temperature, variance or kappa)."""
        return {"temperature": self.temperature}
