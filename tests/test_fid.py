"""Tests of bench.metrics.fid with a small deterministic feature extractor registered in torch-fidelity.

The FID of compute_fid is checked against scipy's Fréchet distance on the same features; the cache,
the weights lookup and the missing-weights path are checked without any Inception weights.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
import torch_fidelity
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from bench.errors import ConfigError
from bench.metrics import fid
from bench.metrics.fid import (
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    WEIGHTS_ENV_VAR,
    FIDUnavailableWarning,
    compute_fid,
    inception_weights_location,
)

EXTRACTOR = "sqvae-bench-test-random-projection"


class RandomProjectionExtractor(FeatureExtractorBase):
    """Fixed random projection (seed 0) of 8×8 average-pooled, centred pixels to 16 features."""

    images_seen = 0  # counts every image passed through any instance

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(3 * 8 * 8, 16, generator=g) / (3 * 8 * 8) ** 0.5)

    def forward(self, x):
        assert x.dtype == torch.uint8 and x.shape[1] == 3
        RandomProjectionExtractor.images_seen += x.shape[0]
        pooled = F.adaptive_avg_pool2d(x.float() / 255 - 0.5, 8).flatten(1)
        return (pooled @ self.proj,)

    @staticmethod
    def get_provided_features_list():
        return ("proj",)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return "proj"

    @staticmethod
    def can_be_compiled():
        return False


if EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    torch_fidelity.register_feature_extractor(EXTRACTOR, RandomProjectionExtractor)


def _images(seed: int, n: int = 64, channels: int = 3, high: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, high, (n, channels, 16, 16), generator=g, dtype=torch.uint8)


def _scipy_fid(fake: torch.Tensor, real: torch.Tensor) -> float:
    extractor = RandomProjectionExtractor(EXTRACTOR, ["proj"])
    f1, f2 = (extractor(x)[0].double().numpy() for x in (fake, real))
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _fid(fake, real, **kwargs):
    kwargs.setdefault("cache_dir", None)
    kwargs.setdefault("cache_key", None)
    return compute_fid(fake, real, feature_extractor=EXTRACTOR, device="cpu", **kwargs)


@pytest.fixture
def offline(monkeypatch):
    """Fail the test on any attempt to download Inception weights; reset the once-per-process warning."""

    def refuse(*args, **kwargs):
        raise AssertionError("compute_fid attempted a download")

    monkeypatch.setattr(torch_fidelity.feature_extractor_inceptionv3, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(fid, "_missing_weights_warned", False)


def test_fid_matches_scipy_frechet_distance():
    fake, real = _images(1, high=200), _images(2)
    expected = _scipy_fid(fake, real)
    assert expected > 0.1
    assert _fid(fake, real) == pytest.approx(expected, rel=1e-6)


def test_fid_of_identical_sets_is_zero():
    x = _images(3)
    assert _fid(x, x.clone()) == pytest.approx(0.0, abs=1e-8)


def test_fid_invariant_to_batch_size():
    fake, real = _images(1, high=200), _images(2)
    assert _fid(fake, real, batch_size=5) == pytest.approx(_fid(fake, real), rel=1e-6)


def test_gray_images_are_repeated_to_rgb():
    gray, real = _images(4, channels=1), _images(2)
    assert _fid(gray, real) == pytest.approx(_fid(gray.repeat(1, 3, 1, 1), real), rel=1e-12)


def test_reference_statistics_cached_and_reused(tmp_path):
    fake, real = _images(1, high=200), _images(2, n=48)
    start = RandomProjectionExtractor.images_seen
    first = _fid(fake, real, cache_dir=tmp_path, cache_key="cifar10/test/48")
    assert RandomProjectionExtractor.images_seen - start == 64 + 48
    cached = list(tmp_path.iterdir())
    assert len(cached) == 1 and cached[0].suffix == ".npz" and EXTRACTOR in cached[0].name

    start = RandomProjectionExtractor.images_seen
    second = _fid(fake, real, cache_dir=tmp_path, cache_key="cifar10/test/48")
    assert RandomProjectionExtractor.images_seen - start == 64  # only the fake images
    assert second == pytest.approx(first, rel=1e-12)
    assert list(tmp_path.iterdir()) == cached  # no temporary files left behind


def test_cache_keyed_by_weights_file_and_key(tmp_path):
    fake, real = _images(1), _images(2)
    weights_a, weights_b = tmp_path / "a.pth", tmp_path / "b.pth"
    weights_a.write_bytes(b"weights A")
    weights_b.write_bytes(b"weights B")
    cache = tmp_path / "cache"
    for weights, key in ((weights_a, "k1"), (weights_b, "k1"), (weights_a, "k2"), (weights_a, "k1")):
        _fid(fake, real, cache_dir=cache, cache_key=key, weights_path=weights)
    assert len(list(cache.iterdir())) == 3


def test_unknown_extractor_is_config_error():
    with pytest.raises(ConfigError, match="did you mean 'inception-v3-compat'"):
        compute_fid(_images(1), _images(2), cache_dir=None, cache_key=None, feature_extractor="inception-v3-compa")


def test_bad_images_rejected():
    with pytest.raises(ValueError, match="uint8"):
        _fid(_images(1).float(), _images(2))


def test_weights_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)
    hub_file = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    assert inception_weights_location() == ("torch hub's checkpoint cache", hub_file)
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "env.pth"))
    assert inception_weights_location()[1] == tmp_path / "env.pth"
    assert inception_weights_location(tmp_path / "arg.pth")[1] == tmp_path / "arg.pth"


def test_found_weights_are_passed_to_the_extractor(tmp_path, monkeypatch, offline):
    weights = tmp_path / INCEPTION_WEIGHTS_FILE
    weights.write_bytes(b"not really inception")
    monkeypatch.setenv(WEIGHTS_ENV_VAR, str(weights))
    seen = []

    def fake_build(name, weights_path, device):
        seen.append((name, weights_path))
        return RandomProjectionExtractor(EXTRACTOR, ["proj"])

    monkeypatch.setattr(fid, "build_extractor", fake_build)
    assert compute_fid(_images(1), _images(2), cache_dir=None, cache_key=None, device="cpu") is not None
    assert seen == [("inception-v3-compat", weights)]


@pytest.mark.parametrize("where", ["env", "hub"])
def test_missing_inception_weights_give_none_and_one_warning(tmp_path, monkeypatch, offline, where):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    if where == "env":
        monkeypatch.setenv(WEIGHTS_ENV_VAR, str(tmp_path / "missing.pth"))
        looked_at = tmp_path / "missing.pth"
    else:
        monkeypatch.delenv(WEIGHTS_ENV_VAR, raising=False)
        looked_at = tmp_path / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [compute_fid(_images(1), _images(2), cache_dir=tmp_path, cache_key="k") for _ in range(2)]
    assert results == [None, None]
    fid_warnings = [w for w in caught if issubclass(w.category, FIDUnavailableWarning)]
    assert len(fid_warnings) == 1
    message = str(fid_warnings[0].message)
    for part in ("FID is unavailable", str(looked_at), INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_URL, WEIGHTS_ENV_VAR):
        assert part in message
    assert not list(tmp_path.glob("*.npz"))
