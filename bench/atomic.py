"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the harness writes (JSON records, checkpoints, tables, pictures, caches) goes through
``atomic_write``: the content is written to a temporary file in the same folder, whose name carries
the process id so that two processes never share one, and then renamed over the target.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Create the parent folders, call ``write(tmp)``, rename ``tmp`` onto ``path``; return ``path``.

    A ``write`` that raises leaves no temporary file behind and ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
