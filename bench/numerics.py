"""The numerical path of a run: what, besides its config, decides its numbers bit for bit.

On the CPU, the intra-op thread count changes how reductions and matrix products are split, and so
the rounding: a run is reproducible only at a fixed thread count. Some kernels (the backward of the
codebook lookup, an index accumulate) are also non-deterministic across repeated runs unless
PyTorch's deterministic algorithms are on. ``numerics(threads, deterministic)`` pins both for the
duration of a run, whatever the calling process (a worker of ``--workers N``) had set, so the same
resolved config gives the same metrics on the CPU whatever ``--workers`` is and however often it runs.

On a GPU, ``deterministic`` also sets cuDNN's deterministic mode (benchmark off) and cuBLAS's
workspace (``CUBLAS_WORKSPACE_CONFIG=:4096:8``, honoured when set before the process first uses
cuBLAS, as in a worker). Operations without a deterministic implementation warn instead of failing
(``warn_only``), so a run never stops for it.

``record(...)`` lists every such setting (threads, device, precision, library versions, CPU kernel
set) for ``env.json`` and MLflow; ``changed(old, new)`` says which of them differ, so a cell resumed
under another numerical path says so instead of silently mixing two.
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import torch

# The record's keys that can change a run's numbers (others, e.g. host and commit, are for the reader).
NUMERIC_KEYS = ("torch", "numpy", "device_type", "gpu", "cpu_capability", "threads", "deterministic", "precision")


@contextlib.contextmanager
def numerics(threads: int, deterministic: bool = True):
    """Run the body with ``threads`` intra-op threads and (non-)deterministic algorithms; restore after."""
    saved = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[3], saved[4]


def _package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def record(device: torch.device, threads: int, deterministic: bool, precision: str) -> dict:
    """Everything that decides or describes a run's numerical path (see NUMERIC_KEYS)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "sqvae_bench": _package_version("sqvae-bench"),
        "git_commit": git_commit(),
        "host": socket.gethostname(),
        "device": str(device),
        "device_type": device.type,
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": threads,
        "deterministic": deterministic,
        "precision": precision,
    }


def changed(old: dict, new: dict) -> list[str]:
    """``"threads 1 -> 2"``-style lines for each numerical setting that differs between two records."""
    return [f"{key} {old.get(key)!r} -> {new.get(key)!r}" for key in NUMERIC_KEYS if old.get(key) != new.get(key)]
