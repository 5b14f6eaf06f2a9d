"""bench.evaluate: the split-level reductions against numpy on the model's own outputs, and their
invariance to the evaluation batch size."""
import numpy as np
import pytest
import torch

from bench.batches import to_model_input
from bench.data import load_dataset
from bench.evaluate import evaluate
from bench.models import build_model

DATA = {"size": 32, "n_train": 16, "n_val": 16, "n_test": 70}
MODEL = {"size_dict": 16, "dim_dict": 16, "num_rb": 1}


def untrained(model: str, dataset: str):
    splits = load_dataset(dataset, **DATA)
    torch.manual_seed(0)
    return build_model(model, splits.spec, MODEL).eval(), splits.test


def reference_outputs(model, data):
    """The whole split in one forward pass (eval mode: BatchNorm uses running statistics)."""
    x = to_model_input(data)
    with torch.no_grad():
        out = model(x, mode="deterministic")
    return x.numpy(), out.recon.numpy(), out.indices.numpy()


def perplexity_np(codes: np.ndarray, k: int) -> float:
    p = np.bincount(codes.ravel(), minlength=k) / codes.size
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


@pytest.mark.parametrize("model", ["sqvae-gauss-1", "vqvae"])
def test_image_metrics_equal_numpy_over_the_split_for_any_batch_size(model):
    net, test = untrained(model, "shapes")
    x, recon, codes = reference_outputs(net, test)
    sse = ((x.astype(np.float64) - recon) ** 2).reshape(len(x), -1).sum(1)
    for batch_size in (7, 32, 70):  # 70 / 7 and 70 / 32: full, partial and single batches
        got = evaluate(net, test, batch_size=batch_size).metrics
        assert got["sse"] == pytest.approx(sse.mean(), rel=1e-5)
        assert got["mse"] == pytest.approx(sse.mean() / x[0].size, rel=1e-5)
        assert got["perplexity"] == pytest.approx(perplexity_np(codes, 16), rel=1e-9)
        assert got["usage"] == len(np.unique(codes)) / 16


def test_batch_mean_perplexity_is_the_mean_of_official_per_batch_values():
    net, test = untrained("vqvae", "shapes")
    _, _, codes = reference_outputs(net, test)
    per_batch = []
    for start in range(0, len(codes), 32):
        p = np.bincount(codes[start:start + 32].ravel(), minlength=16) / codes[start:start + 32].size
        per_batch.append(np.exp(-np.sum(p * np.log(p + 1e-7))))
    got = evaluate(net, test, batch_size=32).metrics
    assert got["perplexity_batch"] == pytest.approx(np.mean(per_batch), rel=1e-5)


def test_label_metrics_equal_numpy_over_the_split():
    net, test = untrained("sqvae-vmf", "shapes-labels")
    y, pred, _ = reference_outputs(net, test)
    got = evaluate(net, test, batch_size=32).metrics
    assert got["pixel_acc"] == pytest.approx(np.mean(pred == y), rel=1e-9)
    ious = []
    for c in range(4):  # official: every class, an absent one counting 0
        inter = np.sum((pred == c) & (y == c))
        union = np.sum(pred == c) + np.sum(y == c) - inter
        ious.append(inter / (union + 2.220446049250313e-16))
    assert got["miou"] == pytest.approx(np.mean(ious), rel=1e-9)
    assert "mse" not in got and "acc" in got
