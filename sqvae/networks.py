"""Encoders and decoders of SPEC.md §2, shared by every model.

Four official families, chosen by the data: ``net_28`` (MNIST-sized), ``net_32`` (CIFAR10-sized),
``net_64`` (CelebA-sized) and ``label`` (one-hot label maps, the vMF experiment), with one option,
``num_rb``. Each encoder ends in a mean head ``res_m`` and, when the quantizer asks for one (Gaussian
types II to IV), a log-variance head ``res_v`` on the same trunk output. ``weights_init`` is the
official initialisation. A fifth family, ``minimal`` (sqvae.minimal_net), is Minimal-SQVAE's plain
stack with options width, depth, num_down and stride; every model can use any family.
"""
from __future__ import annotations

import torch
from torch import nn

from sqvae.minimal_net import MINIMAL_DEFAULTS, build_minimal_networks, minimal_downsampling

OFFICIAL_NETWORKS = ("net_28", "net_32", "net_64", "label")
NETWORKS = (*OFFICIAL_NETWORKS, "minimal")
DOWNSAMPLING = {"net_28": 4, "net_32": 4, "net_64": 4, "label": 8}


def check_network(network: str) -> str:
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}; got {network!r}")
    return network


def network_option_defaults(network: str, num_rb: int) -> dict:
    """The options of family ``network`` with their defaults (``num_rb``: the dataset's paper value)."""
    check_network(network)
    return dict(MINIMAL_DEFAULTS) if network == "minimal" else {"num_rb": num_rb}


def downsampling(network: str, **options) -> int:
    """How many times smaller the latent grid is than the input, per side."""
    return minimal_downsampling(**options) if check_network(network) == "minimal" else DOWNSAMPLING[network]


class ResBlock(nn.Module):
    """x + BN(Conv1x1(ReLU(BN(Conv3x3(ReLU(x)))))); always with BN, no activation after the sum."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(dim, dim, 3, 1, 1),
            nn.BatchNorm2d(dim),
            nn.ReLU(),
            nn.Conv2d(dim, dim, 1, 1, 0),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def _conv_bn_relu(conv: nn.Module, width: int) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(width), nn.ReLU()]


def _encoder_trunk(network: str, in_ch: int, dim: int, num_rb: int) -> nn.Sequential:
    hidden = dim // 2
    if network == "net_28":
        layers = _conv_bn_relu(nn.Conv2d(in_ch, hidden, 4, 2, 1), hidden) + [nn.Conv2d(hidden, dim, 4, 2, 1)]
    elif network == "net_32":
        layers = (
            _conv_bn_relu(nn.Conv2d(in_ch, hidden, 4, 2, 1), hidden)
            + _conv_bn_relu(nn.Conv2d(hidden, dim, 4, 2, 1), dim)
            + _conv_bn_relu(nn.Conv2d(dim, dim, 3, 1, 1), dim)
        )
    elif network == "net_64":
        layers = (
            _conv_bn_relu(nn.Conv2d(in_ch, hidden, 4, 2, 1), hidden)
            + _conv_bn_relu(nn.Conv2d(hidden, dim, 4, 2, 1), dim)
            + [nn.Conv2d(dim, dim, 3, 1, 1)]
        )
    else:  # label
        layers = (
            _conv_bn_relu(nn.Conv2d(in_ch, hidden, 4, 2, 1), hidden)
            + _conv_bn_relu(nn.Conv2d(hidden, dim, 4, 2, 1), dim)
            + [nn.Conv2d(dim, dim, 4, 2, 1)]
        )
    return nn.Sequential(*layers, *[ResBlock(dim) for _ in range(num_rb - 1)])


def _decoder(network: str, out_ch: int, dim: int, num_rb: int) -> nn.Sequential:
    hidden = dim // 2
    # net_64 and the label net use num_rb - 1 ResBlocks in the decoder, the others num_rb (SPEC §2).
    blocks = [ResBlock(dim) for _ in range(num_rb - 1 if network in ("net_64", "label") else num_rb)]
    if network == "net_28":
        layers = _conv_bn_relu(nn.ConvTranspose2d(dim, hidden, 4, 2, 1), hidden)
        return nn.Sequential(*blocks, *layers, nn.ConvTranspose2d(hidden, out_ch, 4, 2, 1), nn.Sigmoid())
    first = nn.ConvTranspose2d(dim, dim, 4, 2, 1) if network == "label" else nn.ConvTranspose2d(dim, dim, 3, 1, 1)
    layers = _conv_bn_relu(first, dim) + _conv_bn_relu(nn.ConvTranspose2d(dim, hidden, 4, 2, 1), hidden)
    final = nn.Softplus() if network == "label" else nn.Sigmoid()
    return nn.Sequential(*blocks, *layers, nn.ConvTranspose2d(hidden, out_ch, 4, 2, 1), final)


class Encoder(nn.Module):
    """Trunk, then the mean head and (optionally) the log-variance head.

    forward(x: (B, C, H, W)) -> (z: (B, dim, H/f, W/f), log_var: same shape or None).
    """

    def __init__(self, network: str, in_channels: int, dim: int, num_rb: int, variance_head: bool):
        super().__init__()
        self.trunk = _encoder_trunk(network, in_channels, dim, num_rb)
        self.res_m = ResBlock(dim)
        self.res_v = ResBlock(dim) if variance_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.trunk(x)
        return self.res_m(h), (self.res_v(h) if self.res_v is not None else None)


def build_networks(
    network: str, in_channels: int, out_channels: int, dim: int, variance_head: bool, kind: str = "image", **options
) -> tuple[nn.Module, nn.Sequential]:
    """Build the (encoder, decoder) pair of one family with its options (see network_option_defaults).

    Official families are initialised as the official code does; ``minimal`` as its reference does
    (PyTorch defaults) and ends in a Sigmoid, or a Softplus when ``kind`` is "labels".
    Raises ValueError naming a bad setting."""
    if check_network(network) == "minimal":
        return build_minimal_networks(in_channels, out_channels, dim, variance_head, kind, **options)
    return _build_official(network, in_channels, out_channels, dim, variance_head, **options)


def _build_official(network: str, in_channels: int, out_channels: int, dim: int, variance_head: bool,
                    num_rb: int) -> tuple[Encoder, nn.Sequential]:
    if num_rb < 1:
        raise ValueError(f"num_rb must be >= 1; got {num_rb}")
    if dim < 2:  # the first hidden width is dim // 2, which must not be 0
        raise ValueError(f"dim_dict must be >= 2 for the {network} networks (hidden width dim_dict // 2); got {dim}")
    encoder = Encoder(network, in_channels, dim, num_rb, variance_head)
    decoder = _decoder(network, out_channels, dim, num_rb)
    encoder.apply(weights_init)
    decoder.apply(weights_init)
    return encoder, decoder


def weights_init(module: nn.Module) -> None:
    """Conv/ConvT weights ~ N(0, 0.02) (biases keep PyTorch's default); BN weight ~ N(1, 0.02), bias 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
