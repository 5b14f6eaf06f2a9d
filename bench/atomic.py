"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file the harness writes (JSON records, checkpoints, tables, pictures, caches) goes through
``atomic_write``: the content is written to a temporary file in the same folder, whose name carries
the process id so that two processes never share one (``.{name}.{pid}.tmp``), and then renamed over
the target. A process killed between the write and the rename leaves its temporary file behind;
``clean_stale_tmp`` removes those of processes that no longer run.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

TMP_PATTERN = re.compile(r"^\..+\.(\d+)\.tmp$")  # .{name}.{pid}.tmp


def tmp_path(path: Path, pid: int | None = None) -> Path:
    """The temporary file ``atomic_write`` uses for ``path`` in process ``pid`` (default: this one)."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}.tmp")


def atomic_write(path: str | Path, write: Callable[[Path], object]) -> Path:
    """Create the parent folders, call ``write(tmp)``, rename ``tmp`` onto ``path``; return ``path``.

    A ``write`` that raises leaves no temporary file behind and ``path`` untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists (ours or another user's)."""
    if pid <= 0:  # 0 and negative numbers address process groups, never one writer
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    except OverflowError:  # larger than any pid
        return False
    return True


def clean_stale_tmp(folder: str | Path) -> list[Path]:
    """Remove the ``atomic_write`` temporary files under ``folder`` (recursively) whose process is gone.

    A file of a live process (this one included) is kept: that process may still rename it.
    Returns: the files removed, sorted. A missing ``folder`` removes nothing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.rglob(".*.tmp")):
        match = TMP_PATTERN.match(path.name)
        if match and path.is_file() and not pid_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
