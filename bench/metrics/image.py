"""Per-image fidelity metrics of reconstructions: PSNR and SSIM, as the papers after SQ-VAE report them.

Both take images with pixels in [0, 1] (data range 1) and return one value per image, shape (B,), so
the evaluation pass sums them per batch and averages over the split's images (no second pass).

* PSNR: from each image's own MSE over C×H×W, PSNR_i = 10·log10(1 / MSE_i) dB, then the mean over
  images (not the PSNR of the split's mean MSE). A perfect reconstruction has PSNR +inf.
* SSIM: torchmetrics' ``structural_similarity_index_measure`` (Wang et al. 2004): an 11×11 Gaussian
  window with σ = 1.5, K1 = 0.01, K2 = 0.03, data range 1, population (not sample) statistics;
  the image is reflection-padded by 5 pixels, so the SSIM map covers all H×W pixels, and it is
  averaged over pixels and channels (scikit-image instead drops a 5-pixel border: values differ
  slightly, most on small images).
  torchmetrics is imported on first use (it takes seconds).
"""
from __future__ import annotations

import torch

from bench.metrics.reconstruction import sse_per_image

DATA_RANGE = 1.0
SSIM_KERNEL, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def mse_to_psnr(mse: torch.Tensor, data_range: float = DATA_RANGE) -> torch.Tensor:
    """PSNR in dB of each MSE: 10·log10(data_range² / mse); +inf where mse is 0."""
    return 10 * torch.log10(data_range**2 / mse)


def psnr_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """PSNR of each image from its own MSE, data range 1.

    Args:
        x: originals (B, C, H, W), pixels in [0, 1].
        x_hat: reconstructions, same shape (clamp them to [0, 1] first to stay in the data range).
    Returns:
        (B,) float64 PSNR in dB (+inf for an exact reconstruction).
    Raises:
        ValueError: shapes differ or there is no batch dimension.
    """
    mse = sse_per_image(x.double(), x_hat.double()) / x[0].numel()
    return mse_to_psnr(mse)


def ssim_per_image(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """SSIM of each image (torchmetrics; window and constants in the module docstring).

    Args:
        x: originals (B, C, H, W), pixels in [0, 1], H and W at least 11.
        x_hat: reconstructions, same shape, in [0, 1].
    Returns:
        (B,) float SSIM, the mean over channels and valid pixels of the SSIM map.
    Raises:
        ValueError: shapes differ or are not (B, C, H, W).
    """
    if x.shape != x_hat.shape or x.dim() != 4:
        raise ValueError(f"x and x_hat must share one shape (B, C, H, W); got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    from torchmetrics.functional.image import structural_similarity_index_measure  # 2.5 s to import: on first use

    return structural_similarity_index_measure(
        x_hat.float(), x.float(), gaussian_kernel=True, sigma=SSIM_SIGMA, kernel_size=SSIM_KERNEL,
        reduction="none", data_range=DATA_RANGE, k1=SSIM_K1, k2=SSIM_K2,
    )
