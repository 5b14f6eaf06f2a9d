"""LPIPS (Zhang et al. 2018) through torchmetrics, with the backbone weights from a local file.

The network is torchmetrics' LPIPS: AlexNet features (torchvision's ``alexnet``), unit-normalised per
layer, weighted by the published linear layers "v0.1" (shipped inside torchmetrics, so nothing to
download) and averaged over positions; inputs in [0, 1] are mapped to [-1, 1]. Gray images are
repeated to RGB, and images under 32 px are first resized to 32 px (bilinear, no antialias): the
LPIPS AlexNet slices need at least 31 px. The value is per image, (B,), averaged over the split.

No download is ever attempted. The AlexNet ImageNet weights (torchvision's file
``alexnet-owt-7be5be79.pth``) are looked up, in order, in the ``weights_path`` argument
(CLI ``--lpips-weights``), ``$SQVAE_BENCH_LPIPS_WEIGHTS``, then torch hub's checkpoint cache (where
torchvision itself would have downloaded them). Where that file is missing, ``load_lpips`` returns
None and warns once per process, and the evaluation records LPIPS as null.
"""
from __future__ import annotations

import functools
import os
import contextlib
import sys
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

WEIGHTS_ENV_VAR = "SQVAE_BENCH_LPIPS_WEIGHTS"
ALEXNET_WEIGHTS_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
ALEXNET_WEIGHTS_FILE = "alexnet-owt-7be5be79.pth"
MIN_SIZE = 32  # smallest input size the LPIPS AlexNet slices accept (31), rounded to the usual 32


class LPIPSUnavailableWarning(UserWarning):
    """LPIPS cannot be computed here (AlexNet weights missing); it is recorded as null."""


_missing_weights_warned = False


def hub_alexnet_weights_path() -> Path:
    """Where torchvision's own download of the AlexNet weights lands: <hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_WEIGHTS_FILE


def lpips_weights_location(weights_path: str | os.PathLike | None = None) -> tuple[str, Path]:
    """(where the name came from, path) of the AlexNet weights, in lookup order: the argument,
    ``$SQVAE_BENCH_LPIPS_WEIGHTS``, torch hub's checkpoint cache. The path may not exist."""
    if weights_path is not None:
        return "--lpips-weights / the weights_path argument", Path(weights_path)
    if os.environ.get(WEIGHTS_ENV_VAR):
        return f"${WEIGHTS_ENV_VAR}", Path(os.environ[WEIGHTS_ENV_VAR])
    return "torch hub's checkpoint cache", hub_alexnet_weights_path()


def missing_weights_message(source: str, path: Path) -> str:
    """The one warning of a run without LPIPS: what is missing and how to get it."""
    return (f"LPIPS is unavailable (recorded as null): AlexNet weights not found at {path} (from {source})."
            f" Lookup order: --lpips-weights, ${WEIGHTS_ENV_VAR}, then {hub_alexnet_weights_path()}."
            f" To enable LPIPS, download {ALEXNET_WEIGHTS_URL} on a machine with internet and pass"
            f" --lpips-weights /path/to/{ALEXNET_WEIGHTS_FILE} or set {WEIGHTS_ENV_VAR}.")


WARNED_ENV_VAR = "SQVAE_BENCH_LPIPS_WARNED"  # set by a client that has warned for its workers


def _warn_once(message: str) -> None:
    global _missing_weights_warned
    if not _missing_weights_warned and not os.environ.get(WARNED_ENV_VAR):
        _missing_weights_warned = True
        warnings.warn(message, LPIPSUnavailableWarning, stacklevel=3)


@contextlib.contextmanager
def warned_for_workers(weights_path: str | os.PathLike | None = None):
    """In a client that starts workers: say once here that LPIPS will be null, and mark the environment
    for the body (local workers inherit it) so each worker does not say it again."""
    source, path = lpips_weights_location(weights_path)
    if path.is_file() or os.environ.get(WARNED_ENV_VAR):
        yield
        return
    print(f"sqvae-bench: warning: {missing_weights_message(source, path)}", file=sys.stderr)
    os.environ[WARNED_ENV_VAR] = "1"
    try:
        yield
    finally:
        os.environ.pop(WARNED_ENV_VAR, None)


def _backbone_state(lpips_net: torch.nn.Module, weights: dict) -> dict:
    """torchvision AlexNet keys ``features.<i>.<param>`` -> torchmetrics' ``slice<k>.<i>.<param>``."""
    state = {}
    for key in lpips_net.net.state_dict():
        _, index, param = key.split(".")
        state[key] = weights[f"features.{index}.{param}"]
    return state


@functools.lru_cache(maxsize=2)
def _build(path: str) -> torch.nn.Module:
    from torchmetrics.functional.image.lpips import _NoTrainLpips

    net = _NoTrainLpips(net="alex", pretrained=True, pnet_rand=True)  # linear layers: the shipped v0.1 file
    weights = torch.load(path, map_location="cpu", weights_only=True)
    try:
        net.net.load_state_dict(_backbone_state(net, weights), strict=True)
    except (KeyError, RuntimeError) as error:
        raise ValueError(f"{path} is not torchvision's AlexNet state dict ({error})") from None
    return net.eval()


def load_lpips(weights_path: str | os.PathLike | None = None) -> torch.nn.Module | None:
    """The LPIPS network (CPU, eval mode, memoised per file), or None with one
    LPIPSUnavailableWarning per process when the AlexNet weights are not found.

    Raises:
        ValueError: the file exists but does not hold AlexNet's ``features.*`` weights.
    """
    source, path = lpips_weights_location(weights_path)
    if not path.is_file():
        _warn_once(missing_weights_message(source, path))
        return None
    return _build(str(path.resolve()))


def _to_lpips_input(images: torch.Tensor) -> torch.Tensor:
    """(B, 1|3, H, W) in [0, 1] -> (B, 3, ≥32, ≥32) float in [0, 1]."""
    images = images.float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if min(images.shape[-2:]) < MIN_SIZE:
        images = F.interpolate(images, size=(MIN_SIZE, MIN_SIZE), mode="bilinear", align_corners=False)
    return images


@torch.no_grad()
def lpips_per_image(x: torch.Tensor, x_hat: torch.Tensor, net: torch.nn.Module) -> torch.Tensor:
    """LPIPS distance of each reconstruction to its original.

    Args:
        x: originals (B, 1|3, H, W), pixels in [0, 1].
        x_hat: reconstructions, same shape (clamped to [0, 1] here).
        net: from ``load_lpips`` (moved to the images' device here).
    Returns:
        (B,) float32 distances (0 for identical images).
    Raises:
        ValueError: shapes differ or are not (B, 1|3, H, W).
    """
    if x.shape != x_hat.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"x and x_hat must share one shape (B, 1|3, H, W); got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    net = net.to(x.device)
    return net(_to_lpips_input(x_hat), _to_lpips_input(x), normalize=True).reshape(-1)
