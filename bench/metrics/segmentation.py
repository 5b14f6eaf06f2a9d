"""Segmentation metrics for label maps: confusion matrix, IoU, mIoU, pixel accuracy (SPEC §1.4).

The official metric (third_party/semseg.py) accumulates, per class c in 0..C−1 over a whole split,
I_c = #(pred = c ∧ gt = c) and U_c = #pred_c + #gt_c − I_c, where label values outside 0..C−1 fall
outside its histogram range. A predicted padding class (index C, e.g. 19 for CelebAMask-HQ) is thus
left out of #pred but its pixel still counts in #gt of its true class and as labelled, not correct,
in pixAcc. A square matrix cannot hold such pixels, so ``confusion_matrix`` returns (C, C+1): rows are
the true class, columns the predicted class, and the last column counts predictions outside
0..C−1. Pixels whose ground truth lies outside 0..C−1 are unlabelled and left out entirely.

IoU_c = I_c / (U_c + 2.22e-16); mIoU is the plain mean over all C classes, a class absent from both
pred and gt counting as 0 (``absent="zero"``, the official convention) or being left out of the mean
(``absent="ignore"``).
"""
from __future__ import annotations

import torch

from bench.metrics.counting import count_indices

OFFICIAL_EPS = 2.220446049250313e-16  # np.spacing(1), added to every denominator by the official code
ABSENT_CHOICES = ("zero", "ignore")


def confusion_matrix(pred: torch.Tensor, gt: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Count (true class, predicted class) pairs over the pixels of label maps.

    Args:
        pred: integer label map of any shape (e.g. (B, H, W) argmax over channels).
        gt: integer label map of the same shape.
        num_classes: C, the number of real classes (19 for CelebAMask-HQ; not the padded 20).
    Returns:
        (C, C+1) int64 on the device of ``gt``: entry [t, p] counts pixels with gt = t and pred = p;
        column C counts pixels with gt = t and a prediction outside 0..C−1 (e.g. the padding class).
        Pixels with gt outside 0..C−1 are ignored. Matrices of batches add up.
    Raises:
        ValueError: shapes differ.
    """
    pred, gt = torch.as_tensor(pred), torch.as_tensor(gt)
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must share one shape; got {tuple(pred.shape)} and {tuple(gt.shape)}")
    pred, gt = pred.reshape(-1).long().to(gt.device), gt.reshape(-1).long()
    pred = torch.where((pred >= 0) & (pred < num_classes), pred, torch.full_like(pred, num_classes))
    cells = num_classes * (num_classes + 1)
    # unlabelled pixels go to one extra bin, dropped below: no mask, so no sync with an accelerator
    flat = torch.where((gt >= 0) & (gt < num_classes), gt * (num_classes + 1) + pred, torch.full_like(gt, cells))
    return count_indices(flat, cells + 1)[:cells].reshape(num_classes, num_classes + 1)


def _areas(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(I_c, #gt_c, #pred_c), float64, from a (C, C+1) or a square (C, C) confusion matrix."""
    conf = torch.as_tensor(conf)
    c = conf.shape[0]
    if conf.dim() != 2 or conf.shape[1] not in (c, c + 1):
        raise ValueError(f"confusion matrix must have shape (C, C+1) or (C, C); got {tuple(conf.shape)}")
    conf = conf.to(torch.float64)
    square = conf[:, :c]
    return torch.diagonal(square), conf.sum(dim=1), square.sum(dim=0)


def _check_absent(absent: str) -> None:
    if absent not in ABSENT_CHOICES:
        raise ValueError(f"absent must be one of {', '.join(map(repr, ABSENT_CHOICES))}; got {absent!r}")


def iou_per_class(conf: torch.Tensor, absent: str = "zero") -> torch.Tensor:
    """IoU_c = I_c / (U_c + 2.22e-16) for every class.

    Args:
        conf: (C, C+1) matrix from ``confusion_matrix`` (a square (C, C) one is accepted too).
        absent: "zero" (official): a class absent from pred and gt has IoU 0; "ignore": it is NaN.
    Returns:
        (C,) float64 tensor.
    Raises:
        ValueError: bad matrix shape or an ``absent`` other than "zero" / "ignore".
    """
    _check_absent(absent)
    inter, gt_area, pred_area = _areas(conf)
    union = gt_area + pred_area - inter
    iou = inter / (union + OFFICIAL_EPS)
    if absent == "ignore":
        iou = torch.where(union > 0, iou, torch.full_like(iou, float("nan")))
    return iou


def mean_iou(conf: torch.Tensor, absent: str = "zero") -> float:
    """mIoU: the mean of ``iou_per_class`` over all C classes ("zero", official) or over the classes
    present in pred or gt ("ignore"; NaN when none is present).

    Raises:
        ValueError: as ``iou_per_class``.
    """
    iou = iou_per_class(conf, absent)
    if absent == "ignore":
        iou = iou[~torch.isnan(iou)]
        if iou.numel() == 0:
            return float("nan")
    return float(iou.mean())


def pixel_accuracy(conf: torch.Tensor) -> float:
    """pixAcc = correct / (labelled + 2.22e-16), labelled = pixels with gt in 0..C−1 (official).

    Raises:
        ValueError: bad matrix shape.
    """
    inter, gt_area, _ = _areas(conf)
    return float(inter.sum() / (gt_area.sum() + OFFICIAL_EPS))
