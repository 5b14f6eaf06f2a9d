"""The ``minimal`` network family: the plain conv/ResNet stack of Minimal-SQVAE (SPEC.md §3, last part).

Written from the description of yukara-ikemiya/minimal-sqvae (models/encdec.py, common_layers.py):
- encoder: ``num_down`` times [Conv(k=2s, stride s, pad s/2) then ``depth`` residual blocks], then a
  3x3 output conv (width -> dim_dict), the mean head; a second 3x3 conv on the same trunk is the
  log-variance head, built only when the quantizer asks for one (Gaussian types II to IV; the
  reference has none);
- decoder: a 3x3 input conv (dim_dict -> width), then ``num_down`` times [``depth`` residual blocks then
  ConvT(k=2s, stride s, pad s/2)], the last ConvT to the data channels, then a Sigmoid for images (a
  Softplus for the vMF label likelihood, which needs positive outputs);
- residual block (pre-activation, no BatchNorm): x + Conv1x1(Mish(Conv3x3(Mish(x)))), biases on;
- PyTorch's default initialisation (the reference applies none of its own).
The reference ties dim_dict to width (it asserts they are equal); here the heads map width to dim_dict,
which has the same shapes and parameter count when they are equal. Stride 1 uses 3x3 kernels with
padding 1 on both sides, as the reference's decoder does (its stride-1 encoder conv, k=2 pad 0, would
shrink the image); odd strides above 1 are refused (the reference's decoder would not invert them).
A 32-px input with num_down 4 and stride 2 gives a 2x2 latent.
"""
from __future__ import annotations

import torch
from torch import nn

MINIMAL_DEFAULTS = {"width": 8, "depth": 2, "num_down": 4, "stride": 2}


def check_minimal_options(width: int, depth: int, num_down: int, stride: int) -> None:
    """Raise ValueError naming the option when a setting cannot build the stack."""
    for name, value, minimum in (("width", width, 1), ("depth", depth, 0), ("num_down", num_down, 1), ("stride", stride, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum} for the minimal network; got {value!r}")
    if stride != 1 and stride % 2:
        raise ValueError(f"stride must be 1 or even for the minimal network (kernel 2s, padding s/2); got {stride}")


def minimal_downsampling(width: int, depth: int, num_down: int, stride: int) -> int:
    """The encoder's size reduction factor, stride ** num_down (after checking the options)."""
    check_minimal_options(width, depth, num_down, stride)
    return stride**num_down


def _kernel_padding(stride: int) -> tuple[int, int]:
    return (3, 1) if stride == 1 else (2 * stride, stride // 2)


class PreActResBlock(nn.Module):
    """x + Conv1x1(Mish(Conv3x3(Mish(x)))): the reference's residual block with BatchNorm off."""

    def __init__(self, width: int):
        super().__init__()
        self.block = nn.Sequential(nn.Mish(), nn.Conv2d(width, width, 3, 1, 1), nn.Mish(), nn.Conv2d(width, width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


def res_stack(width: int, depth: int) -> nn.Sequential:
    return nn.Sequential(*[PreActResBlock(width) for _ in range(depth)])


class MinimalEncoder(nn.Module):
    """forward(x: (B, C, H, W)) -> (z: (B, dim, H/f, W/f), log_var: same shape or None), f = stride**num_down."""

    def __init__(self, in_channels: int, dim: int, width: int, depth: int, num_down: int, stride: int, variance_head: bool):
        super().__init__()
        kernel, pad = _kernel_padding(stride)
        layers: list[nn.Module] = []
        for i in range(num_down):
            layers += [nn.Conv2d(in_channels if i == 0 else width, width, kernel, stride, pad), res_stack(width, depth)]
        self.trunk = nn.Sequential(*layers)
        self.head_m = nn.Conv2d(width, dim, 3, 1, 1)
        self.head_v = nn.Conv2d(width, dim, 3, 1, 1) if variance_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        h = self.trunk(x)
        return self.head_m(h), (self.head_v(h) if self.head_v is not None else None)


def minimal_decoder(out_channels: int, dim: int, width: int, depth: int, num_down: int, stride: int, final: nn.Module) -> nn.Sequential:
    """(B, dim, h, w) -> (B, out_channels, h*f, w*f), ending in ``final`` (Sigmoid or Softplus)."""
    kernel, pad = _kernel_padding(stride)
    layers: list[nn.Module] = [nn.Conv2d(dim, width, 3, 1, 1)]
    for i in range(num_down):
        out = out_channels if i == num_down - 1 else width
        layers += [res_stack(width, depth), nn.ConvTranspose2d(width, out, kernel, stride, pad)]
    return nn.Sequential(*layers, final)


def build_minimal_networks(in_channels: int, out_channels: int, dim: int, variance_head: bool, kind: str,
                           width: int, depth: int, num_down: int, stride: int) -> tuple[MinimalEncoder, nn.Sequential]:
    """The (encoder, decoder) pair; ``kind`` "labels" ends the decoder in a Softplus, "image" in a Sigmoid."""
    check_minimal_options(width, depth, num_down, stride)
    encoder = MinimalEncoder(in_channels, dim, width, depth, num_down, stride, variance_head)
    final = nn.Softplus() if kind == "labels" else nn.Sigmoid()
    return encoder, minimal_decoder(out_channels, dim, width, depth, num_down, stride, final)
