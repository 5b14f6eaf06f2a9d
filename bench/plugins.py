"""User extensions: modules named in ``$SQVAE_BENCH_PLUGINS`` (comma-separated, importable) are
imported by the CLI and by every worker process, so a model, dataset or metric that such a module
registers (``register_model``, ``register_dataset``, ``register_metric``) can be named in suites and
studies and runs in spawned workers too."""
from __future__ import annotations

import importlib
import os

from bench.errors import ConfigError

ENV_VAR = "SQVAE_BENCH_PLUGINS"


def load_plugins() -> list[str]:
    """Import every module of ``$SQVAE_BENCH_PLUGINS``; returns their names. ConfigError if one fails."""
    names = [n.strip() for n in os.environ.get(ENV_VAR, "").split(",") if n.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any import failure is the user's to fix
            raise ConfigError(f"${ENV_VAR}: cannot import {name!r}: {type(err).__name__}: {err}") from None
    return names
