"""Tests of bench.metrics: reconstruction, codebook, segmentation and the metric registry.

Three ways (STYLE item 7): known answers on constructed inputs, agreement with numpy/scipy on the
formula, and invariance to batching.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

import bench.metrics as metrics
from bench.errors import ConfigError
from bench.metrics import (
    METRICS,
    MetricInfo,
    codes_to_histogram,
    confusion_matrix,
    histogram_to_perplexity,
    histogram_to_usage,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    register_metric,
    sse_per_image,
)
from bench.registry import Registry
from sqvae.quantizer import batch_perplexity

# --- reconstruction -------------------------------------------------------------------------------


def test_sse_by_hand():
    x = torch.zeros(2, 3, 1, 2)  # D = 6
    x_hat = torch.zeros(2, 3, 1, 2)
    x_hat[0, 0, 0, 0] = 0.5
    x_hat[0, 2, 0, 1] = 1.0  # image 0: 0.25 + 1.0
    x_hat[1] = 0.1  # image 1: 6 × 0.01
    assert sse_per_image(x, x_hat).tolist() == pytest.approx([1.25, 0.06])


def test_sse_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        sse_per_image(torch.zeros(2, 1, 2, 2), torch.zeros(2, 1, 2, 3))


# --- codebook -------------------------------------------------------------------------------------


def test_perplexity_known_answers():
    assert histogram_to_perplexity(torch.full((16,), 5.0)) == pytest.approx(16.0, rel=1e-12)
    single = torch.zeros(16, dtype=torch.float64)
    single[3] = 40
    assert histogram_to_perplexity(single) == pytest.approx(1.0, rel=1e-12)


def test_perplexity_matches_scipy_entropy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = rng.integers(0, 50, size=64).astype(np.float64)
        counts[rng.choice(64, 10, replace=False)] = 0  # unused codes: 0·log 0 = 0
        expected = math.exp(scipy.stats.entropy(counts))
        assert histogram_to_perplexity(counts) == pytest.approx(expected, rel=1e-12)


def test_perplexity_rejects_empty_histogram():
    with pytest.raises(ValueError):
        histogram_to_perplexity(np.zeros(4))


def test_usage_on_constructed_histograms():
    assert histogram_to_usage(np.array([0, 3, 0, 1])) == 0.5
    assert histogram_to_usage(np.ones(8)) == 1.0
    assert histogram_to_usage(np.eye(1, 8)[0]) == 1 / 8


def test_histogram_counts_and_range():
    counts = codes_to_histogram(torch.tensor([[0, 2], [2, 2]]), 4)
    assert counts.dtype == torch.int64
    assert counts.tolist() == [1, 0, 3, 0]
    with pytest.raises(ValueError, match="0..3"):
        codes_to_histogram(torch.tensor([4]), 4)


def test_histogram_invariant_to_batching():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (10, 7, 7), generator=g)
    whole = codes_to_histogram(codes, 16)
    per_batch = sum(codes_to_histogram(b, 16) for b in codes.split(3))
    assert torch.equal(whole, per_batch)
    assert histogram_to_perplexity(per_batch) == histogram_to_perplexity(whole)


def test_official_batch_perplexity_matches_numpy_formula():
    g = torch.Generator().manual_seed(1)
    soft = torch.softmax(torch.randn(5, 32, generator=g, dtype=torch.float64), dim=-1)
    hard = codes_to_histogram(torch.randint(0, 32, (100,), generator=g), 32)
    hard = (hard / hard.sum()).double()
    for p in (*soft, hard):  # the model's ``perplexity`` term, one batch's average assignment each
        p_np = p.numpy()
        expected = np.exp(-np.sum(p_np * np.log(p_np + 1e-7)))
        assert float(batch_perplexity(p)) == pytest.approx(expected, rel=1e-12)


def test_batch_mean_perplexity_is_below_dataset_perplexity():
    # Batch 1 uses only code 0, batch 2 only code 1 (SPEC §1.6: the per-batch value is capped).
    batches = [torch.tensor([0, 0, 0, 0]), torch.tensor([1, 1, 1, 1])]
    per_batch = [float(batch_perplexity(codes_to_histogram(b, 2).double() / 4)) for b in batches]
    assert np.mean(per_batch) == pytest.approx(1.0, abs=1e-6)
    dataset = sum(codes_to_histogram(b, 2) for b in batches)
    assert histogram_to_perplexity(dataset) == pytest.approx(2.0, rel=1e-12)


# --- segmentation ---------------------------------------------------------------------------------

# C = 4 real classes; class 3 is absent from both maps; 4 is the padding class (SPEC §1.4).
GT = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 1, 1], [2, 2, 0, 0]])
PRED = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 4], [2, 0, 1, 1], [2, 2, 0, 4]])
# Hand count: rows gt 0..3, columns pred 0..3 then "outside 0..C-1".
HAND_CONF = [[4, 1, 0, 0, 1], [0, 5, 0, 0, 1], [1, 0, 3, 0, 0], [0, 0, 0, 0, 0]]
# I = (4, 5, 3, 0); #gt = (6, 6, 4, 0); #pred = (5, 6, 3, 0); U = (7, 7, 4, 0)
HAND_IOU = [4 / 7, 5 / 7, 3 / 4, 0.0]


def test_confusion_matrix_by_hand():
    conf = confusion_matrix(PRED, GT, 4)
    assert conf.dtype == torch.int64
    assert conf.tolist() == HAND_CONF


def test_iou_and_miou_by_hand_with_absent_class():
    conf = confusion_matrix(PRED, GT, 4)
    assert iou_per_class(conf).tolist() == pytest.approx(HAND_IOU, rel=1e-12)
    assert mean_iou(conf) == pytest.approx(sum(HAND_IOU) / 4, rel=1e-12)  # absent class counts as 0
    ignored = iou_per_class(conf, absent="ignore")
    assert torch.isnan(ignored[3]) and ignored[:3].tolist() == pytest.approx(HAND_IOU[:3])
    assert mean_iou(conf, absent="ignore") == pytest.approx(sum(HAND_IOU[:3]) / 3, rel=1e-12)


def test_pixel_accuracy_by_hand():
    # 12 correct of 16 labelled; the 2 padding predictions are labelled and wrong.
    assert pixel_accuracy(confusion_matrix(PRED, GT, 4)) == pytest.approx(12 / 16, rel=1e-12)


def test_ground_truth_outside_range_is_ignored():
    gt = torch.tensor([[0, 4], [255, 1]])
    pred = torch.tensor([[0, 1], [1, 1]])
    conf = confusion_matrix(pred, gt, 4)
    assert conf.sum() == 2
    assert iou_per_class(conf).tolist()[:2] == pytest.approx([1.0, 1.0])
    assert pixel_accuracy(conf) == pytest.approx(1.0)


def test_square_matrix_accepted():
    conf = confusion_matrix(PRED, GT, 4)[:, :4]  # a plain (C, C) matrix, no padding column
    assert pixel_accuracy(conf) == pytest.approx(12 / 14)


def _official_style_reference(pred: np.ndarray, gt: np.ndarray, c: int):
    """numpy on the formula of SPEC §1.4: per-class areas counted separately over labelled pixels."""
    inter = np.array([np.sum((pred == k) & (gt == k)) for k in range(c)], dtype=np.float64)
    area_pred = np.array([np.sum(pred == k) for k in range(c)], dtype=np.float64)
    area_gt = np.array([np.sum(gt == k) for k in range(c)], dtype=np.float64)
    iou = inter / (area_pred + area_gt - inter + 2.220446049250313e-16)
    return iou.mean(), inter.sum() / gt.size


def test_miou_and_pixel_accuracy_match_numpy_reference_and_batching():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 18, size=(6, 16, 16))  # class 18 of 19 never occurs
    pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, 20, size=gt.shape))  # 19 = padding
    conf = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(gt), 19)
    miou_ref, acc_ref = _official_style_reference(pred, gt, 19)
    assert mean_iou(conf) == pytest.approx(miou_ref, rel=1e-12)
    assert pixel_accuracy(conf) == pytest.approx(acc_ref, rel=1e-12)
    batched = sum(confusion_matrix(torch.from_numpy(p), torch.from_numpy(g), 19) for p, g in zip(pred, gt))
    assert torch.equal(batched, conf)


def test_invalid_absent_names_choices():
    conf = confusion_matrix(PRED, GT, 4)
    for fn in (iou_per_class, mean_iou):
        with pytest.raises(ValueError, match="'zero', 'ignore'"):
            fn(conf, absent="nan")


# --- registry -------------------------------------------------------------------------------------


def test_registered_metrics_and_directions():
    lower = {"loss", "sse", "mse", "fid", "lpips"}
    higher = {"perplexity_batch", "perplexity", "usage", "miou", "pixel_acc", "acc", "psnr", "ssim"}
    assert set(METRICS.names()) == lower | higher
    for name in METRICS:
        assert METRICS.get(name).higher_is_better == (name in higher)
        assert METRICS.get(name).name == name
    assert METRICS.get("sse").description == (
        "per-image sum of squared errors over C×H×W, pixels in [0,1]; the official code's 'mse'"
    )
    assert METRICS.get("perplexity_batch").description.startswith("batch-mean perplexity (B=32)")


def test_unknown_metric_suggests_name():
    with pytest.raises(ConfigError, match="did you mean 'miou'"):
        METRICS.get("mious")


def test_register_metric(monkeypatch):
    monkeypatch.setattr(metrics, "METRICS", Registry("metric"))
    info = register_metric(MetricInfo("bits", False, "bits per dim", "bpd"))
    assert metrics.METRICS.get("bits") is info
    with pytest.raises(ValueError, match="already registered"):
        register_metric(info)
