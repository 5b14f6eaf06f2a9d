"""One evaluation pass of a model over a split, reduced to the named metrics of bench.metrics.

Per-batch values stay on the device and are summed there; the host reads them once at the end.
- loss, recon, latent: means over batches (the official reduction; drives LR decay and selection).
- perplexity_batch: mean of per-batch perplexities at the evaluation batch size (official, SPEC §1.6).
- sse, mse: exact means over the split's images (the official code weights a last partial batch
  like a full one; with 10,000 test images at B = 32 the difference is below 0.1%).
- psnr, ssim (images): per-image values of the reconstruction clamped to [0, 1], summed per batch,
  averaged over the split's images; computed on every split (validation too: cheap).
- lpips (images, test only): per image, averaged likewise, inside ``lpips_scoring`` only, which
  ``bench.run.test_cell`` enters around the test evaluation; null when the AlexNet weights are
  missing (``bench.metrics.perceptual``). Trainer.test does not forward arguments, hence a
  context rather than a parameter.
- perplexity, usage: from one code histogram over the whole split.
- labels: acc, pixel_acc, miou (absent classes count 0 unless ``miou_absent="ignore"``).
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from bench import metrics
from bench.batches import eval_batches
from bench.running import RunningMean


@dataclass
class Evaluation:
    metrics: dict[str, float]
    histogram: torch.Tensor  # (K,) code counts over the split, on the CPU
    recon: torch.Tensor | None  # uint8 reconstructions (N, C, H, W) when asked for (FID)


_UNSET = object()
_LPIPS_NET: ContextVar = ContextVar("sqvae_bench_lpips_net", default=_UNSET)


@contextlib.contextmanager
def lpips_scoring(weights_path: str | None = None):
    """Within the block, every evaluation of image data also reports ``lpips``.

    Args:
        weights_path: the AlexNet weights (``bench.metrics.perceptual.lpips_weights_location``);
            where none are found, ``lpips`` is null and one warning per process says why.
    """
    token = _LPIPS_NET.set(metrics.load_lpips(weights_path))
    try:
        yield
    finally:
        _LPIPS_NET.reset(token)


class _ImageSums:
    """Per-image fidelity values of an image split, summed on the device: sse, psnr, ssim, lpips."""

    def __init__(self, device: torch.device, lpips_net=_UNSET):
        self.names = ("sse", "psnr", "ssim") + (() if lpips_net is _UNSET or lpips_net is None else ("lpips",))
        self.sums = {name: torch.zeros((), dtype=torch.float64, device=device) for name in self.names}
        self.lpips_net, self.unavailable = lpips_net, lpips_net is None

    def add(self, x: torch.Tensor, recon: torch.Tensor) -> None:
        """Add a batch: originals ``x`` and reconstructions ``recon`` (B, C, H, W), floats."""
        self.sums["sse"] += metrics.sse_per_image(x, recon).double().sum()
        clamped = recon.clamp(0, 1)
        self.sums["psnr"] += metrics.psnr_per_image(x, clamped).sum()
        self.sums["ssim"] += metrics.ssim_per_image(x, clamped).double().sum()
        if "lpips" in self.names:
            self.sums["lpips"] += metrics.lpips_per_image(x, clamped, self.lpips_net).double().sum()

    def means(self, n: int, dim: int) -> dict[str, float | None]:
        """Means over the ``n`` images of ``dim`` elements each; mse = sse / dim; lpips None when unavailable."""
        result = {name: float(total) / n for name, total in self.sums.items()}
        result["mse"] = result["sse"] / dim
        if self.unavailable:
            result["lpips"] = None
        return result


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    data: torch.Tensor,
    *,
    batch_size: int = 32,
    mode: str = "deterministic",
    precision: str = "fp32",
    keep_recon: bool = False,
    miou_absent: str = "zero",
    bn_train_mode: bool = False,
) -> Evaluation:
    """Evaluate ``model`` on a stored split ``data`` (on the model's device), in eval mode unless
    ``bn_train_mode`` (BatchNorm on batch statistics, updating its running averages: the official
    vMF trainer's validation, SPEC §6.8)."""
    was_training = model.training
    model.train(bn_train_mode)
    device = data.device
    terms = RunningMean("evaluation")
    histogram = torch.zeros(model.size_dict, dtype=torch.long, device=device)
    images = _ImageSums(device, _LPIPS_NET.get())
    classes = model.in_channels if model.kind == "labels" else 0
    confusion = torch.zeros((), dtype=torch.long, device=device)  # becomes (C, C + 1), see metrics.confusion_matrix
    recons = []
    for x in eval_batches(data, batch_size):
        with _autocast(device, precision):
            out = model(x, mode=mode, check_values=False)
        terms.add(out.terms)
        histogram += metrics.codes_to_histogram(out.indices, model.size_dict)
        if model.kind == "image":
            images.add(x, out.recon.float())
            if keep_recon:
                recons.append((out.recon.float().clamp(0, 1) * 255).round().to(torch.uint8))
        else:
            confusion = confusion + metrics.confusion_matrix(out.recon, x, classes)
            if keep_recon:
                recons.append(out.recon.to(torch.uint8))
    model.train(was_training)
    result = terms.means()
    result["perplexity_batch"] = result.pop("perplexity")
    counts = histogram.cpu()
    result["perplexity"] = float(metrics.histogram_to_perplexity(counts))
    result["usage"] = float(metrics.histogram_to_usage(counts))
    if model.kind == "image":
        result.update(images.means(data.shape[0], data[0].numel()))
    else:
        conf = confusion.cpu()
        result["miou"] = float(metrics.mean_iou(conf, absent=miou_absent))
        result["pixel_acc"] = float(metrics.pixel_accuracy(conf))
    return Evaluation(result, counts, torch.cat(recons) if keep_recon else None)
