"""One evaluation pass of a model over a split, reduced to the named metrics of bench.metrics.

Per-batch values stay on the device and are summed there; the host reads them once at the end.
- loss, recon, latent: means over batches (the official reduction; drives LR decay and selection).
- perplexity_batch: mean of per-batch perplexities at the evaluation batch size (official, SPEC §1.6).
- sse, mse: exact means over the split's images (the official code weights a last partial batch
  like a full one; with 10,000 test images at B = 32 the difference is below 0.1%).
- perplexity, usage: from one code histogram over the whole split.
- labels: acc, pixel_acc, miou (absent classes count 0 unless ``miou_absent="ignore"``).
"""
from __future__ import annotations

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
    sse_sum = torch.zeros((), dtype=torch.float64, device=device)
    classes = model.in_channels if model.kind == "labels" else 0
    confusion = torch.zeros((), dtype=torch.long, device=device)  # becomes (C, C + 1), see metrics.confusion_matrix
    recons = []
    for x in eval_batches(data, batch_size):
        with _autocast(device, precision):
            out = model(x, mode=mode, check_values=False)
        terms.add(out.terms)
        histogram += metrics.codes_to_histogram(out.indices, model.size_dict)
        if model.kind == "image":
            sse_sum += metrics.sse_per_image(x, out.recon.float()).double().sum()
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
        n = data.shape[0]
        result["sse"] = float(sse_sum) / n
        result["mse"] = result["sse"] / data[0].numel()
    else:
        conf = confusion.cpu()
        result["miou"] = float(metrics.mean_iou(conf, absent=miou_absent))
        result["pixel_acc"] = float(metrics.pixel_accuracy(conf))
    return Evaluation(result, counts, torch.cat(recons) if keep_recon else None)
