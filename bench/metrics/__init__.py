"""Metrics of sqvae-bench: pure functions in named stages, and the registry of metric names.

Each name a suite file or a table uses is registered with its direction (higher or lower is better),
an exact description and a display label, so tables bold winners without special cases. Built-ins
register through ``register_metric``, as a user would. Which perplexity and which "mse" the official
code reports is spelled out in SPEC §1.6; the mIoU convention in SPEC §1.4.

``compute_fid`` is loaded on first use (torch-fidelity takes seconds to import).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.metrics.codebook import codes_to_histogram, histogram_to_perplexity, histogram_to_usage
from bench.metrics.reconstruction import sse_per_image
from bench.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from bench.registry import Registry


@dataclass(frozen=True)
class MetricInfo:
    """A reported metric: its registry name, direction, exact meaning and table label."""

    name: str
    higher_is_better: bool
    description: str
    label: str


METRICS: Registry[MetricInfo] = Registry("metric")


def register_metric(info: MetricInfo) -> MetricInfo:
    """Register a metric under ``info.name``.

    Raises:
        ValueError: the name is already registered.
    """
    return METRICS.register(info.name, info)


_BUILTIN_METRICS = (
    MetricInfo(
        "loss", False, "the model's training objective on the split (comparable within one dataset only)", "loss"
    ),
    MetricInfo(
        "sse",
        False,
        "per-image sum of squared errors over C×H×W, pixels in [0,1]; the official code's 'mse'",
        "SSE/image",
    ),
    MetricInfo("mse", False, "per-element MSE = sse / D (D = C×H×W)", "MSE"),
    MetricInfo(
        "perplexity_batch",
        True,
        "batch-mean perplexity (B=32): arithmetic mean of the per-batch perplexities exp(-Σ p̄ log(p̄+1e-7));"
        " the official code's 'perplexity'",
        "batch-mean perplexity (B=32)",
    ),
    MetricInfo(
        "perplexity",
        True,
        "dataset-level perplexity: exp of the entropy of one code histogram over the whole split",
        "perplexity (split)",
    ),
    MetricInfo("usage", True, "codebook usage: codes used at least once over the split / K", "usage"),
    MetricInfo(
        "fid",
        False,
        "Fréchet distance of torch-fidelity features (inception-v3-compat, 2048-d pool),"
        " reconstructions vs. the split",
        "FID",
    ),
    MetricInfo(
        "miou",
        True,
        "mean IoU over all classes, a class absent from prediction and label counting as 0 (official)",
        "mIoU",
    ),
    MetricInfo("pixel_acc", True, "pixel accuracy: correct / labelled pixels over the split", "pixAcc"),
    MetricInfo("acc", True, "fraction of pixels with argmax = label", "acc"),
)
for _info in _BUILTIN_METRICS:
    register_metric(_info)
del _info


def __getattr__(name: str):
    if name == "compute_fid":
        from bench.metrics.fid import compute_fid

        return compute_fid
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "METRICS",
    "MetricInfo",
    "codes_to_histogram",
    "compute_fid",
    "confusion_matrix",
    "histogram_to_perplexity",
    "histogram_to_usage",
    "iou_per_class",
    "mean_iou",
    "pixel_accuracy",
    "register_metric",
    "sse_per_image",
]
