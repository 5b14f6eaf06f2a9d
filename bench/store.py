"""The results store: one self-describing folder per cell, written atomically.

<output>/cells/<cell_id>/
    config.json    {"cell_id", "suite", "dataset", "model", "seed", "config": RunConfig.to_dict()}
    status.json    {"status": "running" | "completed" | "failed", "reason", "traceback",
                    "started", "finished", "seconds", "attempts"}
    metrics.json   what run_cell returned (completed cells only)
    env.json       versions of python, torch and sqvae-bench, git commit, device, host
    checkpoint.pt, best.pt   trainer state (resume) and the best model
    images/        recon_grid.png, codebook_usage.png, curves.png
Tables and summaries are rebuilt from these folders alone (``load_cells``).
"""
from __future__ import annotations

import json
import platform
import socket
import subprocess
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch

from bench.atomic import atomic_write

STATUSES = ("running", "completed", "failed")
CELLS = "cells"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (bench.atomic)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path):
    return json.loads(path.read_text())


def cell_dir(output: Path, cell_id: str) -> Path:
    return Path(output) / CELLS / cell_id


def read_status(folder: Path) -> dict:
    path = folder / "status.json"
    return read_json(path) if path.exists() else {"status": "pending"}


def write_status(folder: Path, status: str, **fields) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}; got {status!r}")
    record = {**read_status(folder), **fields, "status": status, "updated": time.time()}
    write_json(folder / "status.json", record)
    return record


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def environment(device: str) -> dict:
    try:
        package = version("sqvae-bench")
    except PackageNotFoundError:
        package = None
    return {"python": platform.python_version(), "torch": torch.__version__, "sqvae_bench": package,
            "git_commit": git_commit(), "device": device, "host": socket.gethostname(),
            "gpu": torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else None}


@dataclass(frozen=True)
class CellRecord:
    """A cell as read back from its folder."""

    cell_id: str
    folder: Path
    info: dict  # config.json
    status: dict  # status.json
    metrics: dict | None  # metrics.json, completed cells only


def load_cells(output: Path) -> list[CellRecord]:
    """Every cell folder under ``output`` (sorted by id); folders without a config.json are skipped."""
    records = []
    root = Path(output) / CELLS
    for folder in sorted(root.iterdir()) if root.exists() else []:
        if not (folder / "config.json").exists():
            continue
        metrics_path = folder / "metrics.json"
        records.append(CellRecord(folder.name, folder, read_json(folder / "config.json"), read_status(folder),
                                  read_json(metrics_path) if metrics_path.exists() else None))
    return records
