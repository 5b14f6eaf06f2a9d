"""One autoencoder skeleton for every model: encoder -> quantizer -> decoder -> likelihood.

Models differ only in the quantizer (and its loss terms), so the trainer never special-cases one.
``forward`` returns a ``ModelOutput`` with the reconstruction and named scalar terms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sqvae.networks import build_networks, downsampling
from sqvae.quantizer import batch_perplexity, check_mode


@dataclass
class ModelOutput:
    """recon: images (B, C, H, W) in [0, 1], or predicted label maps (B, H, W).
    loss: scalar total loss. indices: (B, H', W') code indices.
    terms: named scalars: loss, recon, latent, perplexity, then sse and mse (images) or acc (labels),
    then the quantizer's own terms (neg_entropy, regulariser, codebook, commitment...)."""

    recon: torch.Tensor
    loss: torch.Tensor
    indices: torch.Tensor
    terms: dict[str, torch.Tensor]


class Autoencoder(nn.Module):
    """x -> Encoder -> (z, log_var) -> quantizer -> z_q -> decoder -> likelihood.

    Args:
        network: one of sqvae.networks.NETWORKS.
        in_channels, size: the input's channels (for labels: number of classes) and H == W.
        quantizer: an SQ-VAE or VQ-VAE quantizer (see sqvae.quantizer, baselines.vq).
        likelihood: GaussianImageLikelihood or VmfLabelLikelihood.
        network_options: the family's options (sqvae.networks.network_option_defaults): ``num_rb``
            (residual blocks, SPEC §2) for the official families; width, depth, num_down, stride for
            ``minimal``.
    Raises ValueError naming a bad setting.
    """

    def __init__(self, network: str, in_channels: int, size: int, quantizer: nn.Module, likelihood: nn.Module,
                 network_options: dict):
        super().__init__()
        factor = downsampling(network, **network_options)  # checks the network and its options
        if size < factor or size % factor:
            raise ValueError(f"{network} needs an image size that is a positive multiple of {factor}; got {size}")
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1; got {in_channels}")
        self.network, self.in_channels, self.size = network, in_channels, size
        self.downsampling = factor
        self.kind = likelihood.kind
        net_in = likelihood.output_channels(in_channels)
        self.encoder, self.decoder = build_networks(
            network, net_in, net_in, quantizer.dim_dict, quantizer.needs_variance_head, self.kind, **network_options
        )
        self.quantizer, self.likelihood = quantizer, likelihood

    @property
    def size_dict(self) -> int:
        return self.quantizer.size_dict

    def check_input(self, x: torch.Tensor, check_values: bool = True) -> None:
        """Raise ValueError when x is not what this model takes; ``check_values`` reads the data (a sync)."""
        if self.kind == "image":
            expected = f"a float tensor (B, {self.in_channels}, {self.size}, {self.size}) with pixels in [0, 1]"
            if x.ndim != 4 or tuple(x.shape[1:]) != (self.in_channels, self.size, self.size) or not x.is_floating_point():
                raise ValueError(f"input must be {expected}; got {x.dtype} {tuple(x.shape)}")
            return
        expected = f"an integer tensor (B, {self.size}, {self.size}) of labels in 0..{self.in_channels - 1}"
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.size, self.size) or x.is_floating_point():
            raise ValueError(f"input must be {expected}; got {x.dtype} {tuple(x.shape)}")
        if check_values and x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.in_channels):
            raise ValueError(f"labels out of range: input must be {expected}; got values {int(x.min())}..{int(x.max())}")

    def default_mode(self) -> str:
        return "train" if self.training else "deterministic"

    def forward(self, x: torch.Tensor, mode: str | None = None, check_values: bool | None = None) -> ModelOutput:
        """x: images (B, C, H, W) float in [0, 1] or labels (B, H, W) int. mode: see sqvae.quantizer.

        Label values are checked on the CPU by default; on an accelerator pass check_values=True to pay the sync.
        """
        mode = check_mode(mode or self.default_mode())
        self.check_input(x, check_values=(x.device.type == "cpu") if check_values is None else check_values)
        z, log_var = self.encoder(self.likelihood.encoder_input(x))
        q = self.quantizer(z, log_var, mode)
        recon, recon_term, data_terms = self.likelihood(x, self.decoder(q.z_q))
        loss = recon_term + q.latent_loss
        terms = {
            "loss": loss,
            "recon": recon_term,
            "latent": q.latent_loss,
            "perplexity": batch_perplexity(q.avg_probs),
            **data_terms,
            **q.terms,
        }
        return ModelOutput(recon=recon, loss=loss, indices=q.indices, terms=terms)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic code indices (B, H', W')."""
        self.check_input(x, check_values=x.device.type == "cpu")
        z, log_var = self.encoder(self.likelihood.encoder_input(x))
        return self.quantizer(z, log_var, "deterministic").indices

    @torch.no_grad()
    def decode(self, indices: torch.Tensor) -> torch.Tensor:
        """Code indices (B, H', W') -> images (B, C, H, W) or label maps (B, H, W)."""
        return self.likelihood.decode_output(self.decoder(self.quantizer.lookup(indices)))

    def set_step(self, step: int) -> None:
        """Global training step (1-based): advances the temperature schedule."""
        self.quantizer.set_step(step)

    def scalars(self) -> dict[str, torch.Tensor]:
        """Model state worth logging each epoch: temperature, variance or kappa parameters."""
        return {**self.quantizer.scalars(), **self.likelihood.scalars()}
