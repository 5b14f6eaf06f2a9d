"""Checks of a run's inputs that can fail before anything is created or run.

``run`` (and ``run --dry-run``) call these after the suite is loaded and before the output folder,
the lock, MLflow or any worker exists, so a bad option or missing data is one ``ConfigError`` or
``DataError`` message and exit code 2 with nothing left behind. None of them writes to disk, except
``check_datasets`` with ``download=True``, which fetches a missing downloadable dataset into the
data root (once, here in the main process, so workers never download).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

import torch

from bench.data import check_dataset
from bench.errors import ConfigError
from bench.registry import did_you_mean

if TYPE_CHECKING:
    from bench.run import RunConfig

DEVICE_FORMS = ("auto", "cpu", "cuda", "cuda:N", "mps")
_CUDA = re.compile(r"cuda(?::(\d+))?")


def check_execution(device: str, output: str | Path, results: str | Path, counts: dict[str, int]) -> None:
    """What every command that runs cells checks first: ``counts`` (option -> value) are >= 1, the
    device exists, the output and table folders can be written."""
    for name, value in counts.items():
        if value < 1:
            raise ConfigError(f"{name} must be >= 1; got {value}")
    check_device(device)
    check_output_dir(output)
    check_results_dir(results)


def check_output_dir(path: str | Path) -> None:
    """Raise ConfigError unless ``--output`` is a folder this process can write in, or can create.

    Raises: ConfigError if the path is a file, or if it (or, when it does not exist yet, its nearest
        existing ancestor) is not a writable folder.
    """
    _check_writable_folder(Path(path), "--output")


def check_results_dir(path: str | Path) -> None:
    """Raise ConfigError unless ``--results`` (the table folder) is writable or creatable; as ``check_output_dir``."""
    _check_writable_folder(Path(path), "--results")


def _check_writable_folder(path: Path, option: str) -> None:
    try:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{option} {path} is a file, not a folder")
        existing = nearest_existing(path)
    except OSError as error:  # e.g. a parent folder that cannot be searched
        raise ConfigError(f"{option} {path}: cannot check it ({error.strerror})") from None
    if existing == path:
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(f"{option} {path}: no permission to write in this folder")
    elif not existing.is_dir():
        raise ConfigError(f"{option} {path}: cannot create it: {existing} is a file")
    elif not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot create it: no permission to write in {existing}")


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest ancestor that does (the working folder at worst)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path.cwd()


def check_device(name: str) -> None:
    """Raise ConfigError unless ``--device`` names a device this machine has.

    Valid: auto, cpu, cuda, cuda:N (N below the number of visible GPUs), mps (where available).
    """
    if name in ("auto", "cpu"):
        return
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps: no Apple GPU is available (torch.backends.mps.is_available() is False); "
                              "use --device cpu or auto")
        return
    match = _CUDA.fullmatch(name)
    if match is None:
        raise ConfigError(f"--device {name!r} is not a device{did_you_mean(name, list(DEVICE_FORMS))}; valid: "
                          f"{', '.join(DEVICE_FORMS)} (N counts the visible GPUs from 0)")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is visible (torch.cuda.is_available() is False); "
                          "use --device cpu or auto")
    count = torch.cuda.device_count()
    if match.group(1) is not None and int(match.group(1)) >= count:
        raise ConfigError(f"--device {name}: only {count} CUDA GPU{'' if count == 1 else 's'} visible "
                          f"(cuda:0 to cuda:{count - 1})")


def check_datasets(configs: Iterable[RunConfig], root: str | Path | None = None, download: bool = False) -> None:
    """Check once per distinct (dataset, options) that the data of ``configs`` is present and readable.

    Reads file names, headers and sizes only (``bench.data.check_dataset``); generated datasets
    need nothing. With ``download``, a missing dataset that can be downloaded is fetched first.
    Args:
        configs: the RunConfig of each selected cell (``[cell.config for cell in cells]``).
        root: the data root (``--data-root``); None: $SQVAE_BENCH_DATA, else ./data.
        download: ``--download``.
    Raises: DataError naming the dataset, the paths looked at and how to get the files.
    """
    seen = set()
    for config in configs:
        key = (config.dataset, json.dumps(config.data_options, sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            check_dataset(config.dataset, root=root, download=download, **config.data_options)
