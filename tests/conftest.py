"""Shared fixtures of the suite and CLI tests: tiny suite files and a way to call the CLI.

The tiny suite trains on 128 generated ``shapes`` images at 28 px with a 16 x 16 codebook and one
residual block, so a cell takes a second or two on one CPU core.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

SHAPES_OPTIONS = {"size": 28, "n_train": 128, "n_val": 32, "n_test": 32}
TINY_MODEL_OPTIONS = {"size_dict": 16, "dim_dict": 16, "num_rb": 1}
TINY_SUITE = {
    "name": "tiny",
    "datasets": {"shapes": {"options": SHAPES_OPTIONS, "model_options": TINY_MODEL_OPTIONS}},
    "models": ["vqvae", "sqvae-gauss-1"],
    "seeds": [0, 1],
    "train": {"epochs": 1, "max_steps": 8, "log_every": 2},
}
DELETE = object()  # a patch value that removes the key

# Settings of every CLI call: no tracking server from the caller's shell (the default is a sqlite
# database inside --output), and OpenMP threads that sleep rather than spin while they wait: on a
# small shared machine, spinning threads make a one-worker run (two threads) ten times slower.
ENV_UNSET = ("MLFLOW_TRACKING_URI",)
ENV_SET = {"OMP_WAIT_POLICY": "PASSIVE"}


def patched(base: dict, patch: dict) -> dict:
    """``base`` deep-merged with ``patch``; a ``DELETE`` value removes the key."""
    merged = copy.deepcopy(base)
    for key, value in patch.items():
        if value is DELETE:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = patched(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def write_suite(path: Path, patch: dict | None = None, base: dict = TINY_SUITE) -> Path:
    """Write ``base`` deep-merged with ``patch`` as YAML to ``path``; returns the resolved path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(patched(base, patch or {}), sort_keys=False))
    return path.resolve()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@contextlib.contextmanager
def cli_environment():
    """``ENV_UNSET`` removed and ``ENV_SET`` set in os.environ (workers inherit it), then restored."""
    saved = {key: os.environ.get(key) for key in (*ENV_UNSET, *ENV_SET)}
    for key in ENV_UNSET:
        os.environ.pop(key, None)
    os.environ.update(ENV_SET)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run_main(args: list, cwd: Path) -> CliResult:
    """``bench.cli.main(args)`` in this process, in ``cwd``, with its output captured."""
    from bench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with cli_environment(), contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_env() -> dict[str, str]:
    """The environment of a CLI subprocess (see ``ENV_UNSET``, ``ENV_SET``)."""
    env = {k: v for k, v in os.environ.items() if k not in ENV_UNSET}
    return {**env, **ENV_SET}


def cli_command(args: list) -> list[str]:
    return [sys.executable, "-m", "bench.cli", *map(str, args)]


def run_subprocess(args: list, cwd: Path, timeout: float = 120) -> CliResult:
    """``python -m bench.cli args`` in a subprocess, in ``cwd``."""
    done = subprocess.run(cli_command(args), cwd=cwd, env=cli_env(), capture_output=True, text=True, timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr)


@pytest.fixture
def tiny_suite(tmp_path) -> Path:
    """The tiny suite (two models, two seeds, 8 steps) written to tmp_path/tiny.yaml."""
    return write_suite(tmp_path / "tiny.yaml")
