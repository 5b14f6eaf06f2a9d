"""FID through torch-fidelity, with an on-disk cache of the reference (real) statistics.

FID is new in sqvae-bench (SPEC §5: the paper reports none). The network and the Fréchet formula are
torch-fidelity's: any feature extractor registered with ``torch_fidelity.register_feature_extractor``
can be named, at its default FID layer ("2048" for the default ``inception-v3-compat``); statistics
and distance come from ``torch_fidelity.metric_fid``. This module only adds the stages around them:

    images (N,C,H,W) uint8 -> extract_features (batched) -> features_to_statistics -> statistics_to_fid

and a thin wrapper ``compute_fid`` that finds the weights, picks the device and caches the reference
statistics as .npz, keyed by the caller's key, the extractor and a hash of its weights file.

No download is ever attempted. Inception weights are looked up, in order, in the ``weights_path``
argument, the ``SQVAE_BENCH_INCEPTION_WEIGHTS`` environment variable, then torch hub's checkpoint
cache (where torch-fidelity itself would have downloaded them); the first of these that is set is
used. Where that file is missing, ``compute_fid`` returns None and warns once per process.
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import create_feature_extractor

from bench.atomic import atomic_write
from bench.errors import ConfigError
from bench.registry import unknown_name_message

INCEPTION_EXTRACTOR = "inception-v3-compat"
WEIGHTS_ENV_VAR = "SQVAE_BENCH_INCEPTION_WEIGHTS"
INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
INCEPTION_WEIGHTS_FILE = os.path.basename(urlparse(URL_INCEPTION_V3).path)

Statistics = dict[str, np.ndarray]  # {"mu": (F,), "sigma": (F, F)}, as torch-fidelity makes them


class FIDUnavailableWarning(UserWarning):
    """FID cannot be computed here (feature-extractor weights missing); it is recorded as None."""


_missing_weights_warned = False


# --- weights lookup -------------------------------------------------------------------------------

def hub_inception_weights_path() -> Path:
    """Where torch-fidelity's own download of the Inception weights lands: <hub dir>/checkpoints/<file>."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS_FILE


def inception_weights_location(weights_path: str | os.PathLike | None = None) -> tuple[str, Path]:
    """The Inception weights file to use and where its name came from, in lookup order:
    the ``weights_path`` argument, ``$SQVAE_BENCH_INCEPTION_WEIGHTS``, torch hub's checkpoint cache.

    Returns:
        (source description, path); the path may not exist.
    """
    if weights_path is not None:
        return "the weights_path argument", Path(weights_path)
    if os.environ.get(WEIGHTS_ENV_VAR):
        return f"${WEIGHTS_ENV_VAR}", Path(os.environ[WEIGHTS_ENV_VAR])
    return "torch hub's checkpoint cache", hub_inception_weights_path()


def _missing_weights_message(extractor: str, source: str, path: Path) -> str:
    message = (
        f"FID is unavailable (recorded as None): weights of feature extractor '{extractor}'"
        f" not found at {path} (from {source})."
    )
    if extractor == INCEPTION_EXTRACTOR:
        message += (
            f" Lookup order: the weights_path argument, ${WEIGHTS_ENV_VAR}, then {hub_inception_weights_path()}."
            f" To enable FID, download {INCEPTION_WEIGHTS_URL} on a machine with internet and either put the file"
            f" '{INCEPTION_WEIGHTS_FILE}' at {hub_inception_weights_path()} or set {WEIGHTS_ENV_VAR}=/path/to/it."
        )
    return message


def _warn_missing_weights_once(message: str) -> None:
    global _missing_weights_warned
    if not _missing_weights_warned:
        _missing_weights_warned = True
        warnings.warn(message, FIDUnavailableWarning, stacklevel=3)


@functools.lru_cache(maxsize=8)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def weights_tag(path: Path | None) -> str:
    """A short content hash of a weights file (memoised per process), or "noweights" for none."""
    if path is None:
        return "noweights"
    stat = path.stat()
    return _sha256_prefix(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


# --- stages ---------------------------------------------------------------------------------------

def build_extractor(name: str, weights_path: Path | None, device: torch.device) -> FeatureExtractorBase:
    """Instantiate a torch-fidelity feature extractor at its default FID layer, on ``device``.

    Raises:
        ConfigError: ``name`` is not registered with torch-fidelity.
    """
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        raise ConfigError(unknown_name_message("feature extractor", name, list(FEATURE_EXTRACTORS_REGISTRY)))
    layer = FEATURE_EXTRACTORS_REGISTRY[name].get_default_feature_layer_for_metric("fid")
    kwargs = {} if weights_path is None else {"feature_extractor_weights_path": str(weights_path)}
    extractor = create_feature_extractor(name, [layer], cuda=False, verbose=False, **kwargs)
    return extractor.to(device)


def _check_images(images: torch.Tensor, what: str) -> None:
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"{what} must be a uint8 tensor (N, 1 or 3, H, W); got {images.dtype} {tuple(images.shape)}")
    if images.shape[0] < 2:
        raise ValueError(f"{what} needs at least 2 images for a covariance; got {images.shape[0]}")


@torch.no_grad()
def extract_features(
    images: torch.Tensor, extractor: FeatureExtractorBase, batch_size: int, device: torch.device
) -> torch.Tensor:
    """Features (N, F) on the CPU of uint8 images (N, C, H, W); gray (C=1) is repeated to RGB."""
    chunks = []
    for start in range(0, images.shape[0], batch_size):
        batch = images[start : start + batch_size].to(device)
        batch = batch.repeat(1, 3, 1, 1) if batch.shape[1] == 1 else batch
        chunks.append(extractor(batch)[0].cpu())
    return torch.cat(chunks)


def features_to_statistics(features: torch.Tensor) -> Statistics:
    """Mean and covariance of (N, F) CPU features (torch-fidelity's ``fid_features_to_statistics``)."""
    return fid_features_to_statistics(features)


def statistics_to_fid(stats_fake: Statistics, stats_real: Statistics) -> float:
    """Fréchet distance of two Gaussians (torch-fidelity's ``fid_statistics_to_metric``)."""
    return float(fid_statistics_to_metric(stats_fake, stats_real, verbose=False)[KEY_METRIC_FID])


# --- reference-statistics cache -------------------------------------------------------------------

def reference_cache_path(cache_dir: Path, cache_key: str, extractor: str, tag: str) -> Path:
    """<cache_dir>/<cache_key>__<extractor>__<weights hash>.npz (unsafe characters replaced by '_')."""
    stem = "__".join(re.sub(r"[^A-Za-z0-9._=-]+", "_", part) for part in (cache_key, extractor, tag))
    return Path(cache_dir) / f"{stem}.npz"


def save_statistics(path: Path, stats: Statistics) -> None:
    """Write statistics as .npz atomically (bench.atomic)."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, mu=stats["mu"], sigma=stats["sigma"])

    atomic_write(path, write)


def load_statistics(path: Path) -> Statistics:
    with np.load(path) as data:
        return {"mu": data["mu"], "sigma": data["sigma"]}


def _reference_statistics(real, extract, cache_path: Path | None) -> Statistics:
    if cache_path is not None and cache_path.is_file():
        return load_statistics(cache_path)
    stats = features_to_statistics(extract(real))
    if cache_path is not None:
        save_statistics(cache_path, stats)
    return stats


# --- wrapper --------------------------------------------------------------------------------------

def _resolve_weights(extractor: str, weights_path) -> tuple[str, Path] | None:
    if extractor == INCEPTION_EXTRACTOR:
        return inception_weights_location(weights_path)
    return None if weights_path is None else ("the weights_path argument", Path(weights_path))


def compute_fid(
    fake: torch.Tensor,
    real: torch.Tensor,
    *,
    cache_dir: Path | None,
    cache_key: str | None,
    feature_extractor: str = INCEPTION_EXTRACTOR,
    weights_path: str | os.PathLike | None = None,
    batch_size: int = 256,
    device: torch.device | str | None = None,
) -> float | None:
    """FID between generated/reconstructed images and reference images.

    Args:
        fake: uint8 (N, 3, H, W) or gray (N, 1, H, W) images.
        real: uint8 reference images, same layout (N may differ).
        cache_dir: folder of cached reference statistics; None disables the cache.
        cache_key: names the reference set (dataset/split/size); None disables the cache.
        feature_extractor: any feature extractor registered with torch-fidelity.
        weights_path: weights file of the extractor; for Inception, overrides the lookup.
        batch_size: images per forward pass of the extractor.
        device: where features are extracted; default CUDA when available, else CPU.
    Returns:
        The FID, or None (with one FIDUnavailableWarning per process) when the weights are missing.
    Raises:
        ValueError: images are not uint8 (N, 1|3, H, W) with N >= 2.
        ConfigError: unknown feature extractor.
    """
    _check_images(fake, "fake")
    _check_images(real, "real")
    weights = _resolve_weights(feature_extractor, weights_path)
    if weights is not None and not weights[1].is_file():
        _warn_missing_weights_once(_missing_weights_message(feature_extractor, *weights))
        return None
    weights_file = None if weights is None else weights[1]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    extractor = build_extractor(feature_extractor, weights_file, device)
    extract = functools.partial(extract_features, extractor=extractor, batch_size=batch_size, device=device)
    cache_path = None
    if cache_dir is not None and cache_key is not None:
        cache_path = reference_cache_path(cache_dir, cache_key, feature_extractor, weights_tag(weights_file))
    stats_real = _reference_statistics(real, extract, cache_path)
    return statistics_to_fid(features_to_statistics(extract(fake)), stats_real)
