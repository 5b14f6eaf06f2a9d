"""Metrics of sqvae-bench: pure functions in named stages, and the registry of metric names.

Each name a suite file or a table uses is registered with its direction (higher or lower is better),
an exact description, a display label, its table decimals, the data kinds it applies to (image /
labels) and whether tables show it by default, so tables bold winners and format cells without
lists of their own. Built-ins register through ``register_metric``, as a user would; registration
order is the tables' column order. Which perplexity and which "mse" the official
code reports is spelled out in SPEC §1.6; the mIoU convention in SPEC §1.4.

``compute_fid``, ``load_lpips`` and ``lpips_per_image`` are loaded on first use (torch-fidelity and
torchvision take seconds to import).
"""
from __future__ import annotations

from dataclasses import dataclass

from bench.metrics.codebook import codes_to_histogram, histogram_to_perplexity, histogram_to_usage
from bench.metrics.image import mse_to_psnr, psnr_per_image, ssim_per_image
from bench.metrics.reconstruction import sse_per_image
from bench.metrics.segmentation import confusion_matrix, iou_per_class, mean_iou, pixel_accuracy
from bench.registry import Registry


KINDS = ("image", "labels")


@dataclass(frozen=True)
class MetricInfo:
    """A reported metric.

    name: the registry name (suite files, metrics.json, MLflow ``test_<name>``).
    higher_is_better: its direction. description: its exact meaning. label: its table header.
    decimals: fixed decimals in tables; None: 4 significant digits of each value.
    kinds: the data kinds (``DataSpec.kind``) it is computed for.
    table: whether tables show it by default (where some cell reported it).
    """

    name: str
    higher_is_better: bool
    description: str
    label: str
    decimals: int | None = None
    kinds: tuple[str, ...] = KINDS
    table: bool = True

    def __post_init__(self):
        unknown = [kind for kind in self.kinds if kind not in KINDS]
        if unknown or not self.kinds:
            raise ValueError(f"metric {self.name!r}: kinds must be a non-empty subset of {KINDS}; got {self.kinds}")


METRICS: Registry[MetricInfo] = Registry("metric")


def register_metric(info: MetricInfo) -> MetricInfo:
    """Register a metric under ``info.name``.

    Raises:
        ValueError: the name is already registered.
    """
    return METRICS.register(info.name, info)


def table_metrics() -> list[str]:
    """The metrics tables show by default, in registration order."""
    return [name for name in METRICS.names() if METRICS.get(name).table]


def metrics_for(kind: str) -> list[str]:
    """The registered metrics computed for data of ``kind`` ("image" or "labels"), in registration order."""
    return [name for name in METRICS.names() if kind in METRICS.get(name).kinds]


IMAGE, LABELS = ("image",), ("labels",)
_BUILTIN_METRICS = (
    MetricInfo(
        "loss", False, "the model's training objective on the split (comparable within one dataset only)", "loss",
        table=False,
    ),
    MetricInfo("mse", False, "per-element MSE = sse / D (D = C×H×W)", "MSE", kinds=IMAGE),
    MetricInfo(
        "sse",
        False,
        "per-image sum of squared errors over C×H×W, pixels in [0,1]; the official code's 'mse'",
        "SSE/image",
        kinds=IMAGE,
    ),
    MetricInfo(
        "psnr",
        True,
        "PSNR in dB from each image's own MSE (data range 1; reconstruction clamped to [0,1]),"
        " 10·log10(1/MSE_i), averaged over images",
        "PSNR (dB)",
        decimals=2,
        kinds=IMAGE,
    ),
    MetricInfo(
        "ssim",
        True,
        "SSIM per image (torchmetrics; Gaussian window 11, σ 1.5; K1 0.01, K2 0.03; data range 1;"
        " reconstruction clamped to [0,1]), averaged over images",
        "SSIM",
        decimals=4,
        kinds=IMAGE,
    ),
    MetricInfo(
        "lpips",
        False,
        "LPIPS per image (torchmetrics, AlexNet, linear layers v0.1; gray repeated to RGB, images under 32 px"
        " resized to 32 px), averaged over test images; null without the AlexNet weights",
        "LPIPS",
        decimals=4,
        kinds=IMAGE,
    ),
    MetricInfo(
        "perplexity_batch",
        True,
        "batch-mean perplexity (B=32): arithmetic mean of the per-batch perplexities exp(-Σ p̄ log(p̄+1e-7));"
        " the official code's 'perplexity'",
        "batch-mean perplexity (B=32)",
        decimals=1,
    ),
    MetricInfo(
        "perplexity",
        True,
        "dataset-level perplexity: exp of the entropy of one code histogram over the whole split",
        "perplexity (split)",
        decimals=1,
    ),
    MetricInfo("usage", True, "codebook usage: codes used at least once over the split / K", "usage", decimals=3),
    MetricInfo(
        "fid",
        False,
        "Fréchet distance of torch-fidelity features (inception-v3-compat, 2048-d pool),"
        " reconstructions vs. the split",
        "FID",
        decimals=2,
        kinds=IMAGE,
    ),
    MetricInfo(
        "miou",
        True,
        "mean IoU over all classes, a class absent from prediction and label counting as 0 (official)",
        "mIoU",
        decimals=4,
        kinds=LABELS,
    ),
    MetricInfo("pixel_acc", True, "pixel accuracy: correct / labelled pixels over the split", "pixAcc", decimals=4,
               kinds=LABELS),
    MetricInfo("acc", True, "fraction of pixels with argmax = label", "acc", decimals=4, kinds=LABELS),
)
for _info in _BUILTIN_METRICS:
    register_metric(_info)
del _info


def __getattr__(name: str):
    if name == "compute_fid":
        from bench.metrics.fid import compute_fid

        return compute_fid
    if name in ("load_lpips", "lpips_per_image"):
        from bench.metrics import perceptual

        return getattr(perceptual, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "KINDS",
    "METRICS",
    "MetricInfo",
    "codes_to_histogram",
    "compute_fid",
    "confusion_matrix",
    "histogram_to_perplexity",
    "histogram_to_usage",
    "iou_per_class",
    "load_lpips",
    "lpips_per_image",
    "mean_iou",
    "metrics_for",
    "mse_to_psnr",
    "pixel_accuracy",
    "psnr_per_image",
    "register_metric",
    "sse_per_image",
    "ssim_per_image",
    "table_metrics",
]
