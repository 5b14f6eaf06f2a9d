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

Unreadable files (a kill mid-write on a filesystem without atomic rename, a disk filling up, an
edit by hand) raise ``StoreError`` naming the file, never a bare ``JSONDecodeError``. What each
command does with them:

- ``run`` (``recover_status``): the user wants the suite finished, and the file is a record of a
  cell that can be redone. A status.json that cannot be read, or a metrics.json of a completed cell
  that cannot be read, is moved aside to ``<name>.corrupt-<time>`` (nothing is lost), a warning
  names both paths, and the cell runs again (resuming from its checkpoint when it has one).
- ``table`` and ``show`` (``load_cells``, ``read_status``): they only read, and a table silently
  missing a cell's numbers would mislead, so they stop (exit 2) naming the file and how to recover.

A kill between a write and its rename leaves a hidden ``.{name}.{pid}.tmp``; ``clean_stale_tmp``
(from bench.atomic, which names those files) removes those of dead processes when a run folder is opened.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.atomic import atomic_write, clean_stale_tmp  # noqa: F401 - run folders are cleaned through the store
from bench.errors import StoreError

STATUSES = ("running", "completed", "failed")
CELLS = "cells"
STATUS, METRICS = "status.json", "metrics.json"
RECOVER = "run the suite again to redo that cell (`sqvae-bench run` moves the file aside), or restore the file"


def write_json(path: Path, obj) -> None:
    """Write JSON atomically (bench.atomic)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n"
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path, expect: type | None = dict, hint: str = RECOVER):
    """The JSON value stored at ``path``.

    Args:
        path: the file.
        expect: the type the value must have (default a JSON object); None accepts any value.
        hint: what the user can do, appended to the error message ("" for none).
    Raises:
        StoreError: the file is missing or unreadable, is not valid JSON (e.g. truncated), or holds
            a value of another type; the message names the file.
    """
    path = Path(path)
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise _store_error(path, "is missing", hint) from None
    except OSError as error:
        raise _store_error(path, f"cannot be read ({error.strerror})", hint) from None
    except ValueError as error:  # JSONDecodeError, or bytes that are not UTF-8
        raise _store_error(path, f"is not valid JSON (truncated?): {str(error).splitlines()[0]}", hint) from None
    if expect is not None and not isinstance(value, expect):
        raise _store_error(path, f"holds a JSON {type(value).__name__}, not the {expect.__name__} expected", hint)
    return value


def _store_error(path: Path, problem: str, hint: str) -> StoreError:
    return StoreError(f"{path} {problem}" + (f"; {hint}" if hint else ""))


def cell_dir(output: Path, cell_id: str) -> Path:
    return Path(output) / CELLS / cell_id


def read_status(folder: Path, hint: str = RECOVER) -> dict:
    """The record in ``folder``/status.json; {"status": "pending"} when there is none.

    Raises: StoreError if the file cannot be read or its "status" is not one of ``STATUSES``
        (``hint`` as ``read_json``).
    """
    path = Path(folder) / STATUS
    if not path.exists():
        return {"status": "pending"}
    record = read_json(path, hint=hint)
    if record.get("status") not in STATUSES:
        raise _store_error(path, f"has status {record.get('status')!r}, not one of {', '.join(STATUSES)}", hint)
    return record


def recover_status(folder: Path, warn=None) -> dict:
    """The status of a cell as ``run`` sees it: what cannot be read is set aside and the cell redone.

    An unreadable status.json is moved to ``status.json.corrupt-<time>`` and the cell counts as
    pending. A completed cell whose metrics.json is missing or unreadable has that file moved aside
    likewise and is marked failed (with the reason), so it runs again. Each move is reported once
    through ``warn`` (default: a "sqvae-bench: warning:" line on stderr).

    Returns: the status record, as ``read_status``.
    """
    warn = warn or _warn
    folder = Path(folder)
    try:
        record = read_status(folder, hint="")
    except StoreError as error:
        warn(f"{error}; moved it to {set_aside(folder / STATUS).name} and will run the cell again")
        return {"status": "pending"}
    if record["status"] != "completed":
        return record
    try:
        read_json(folder / METRICS, hint="")
    except StoreError as error:
        moved = f"moved it to {set_aside(folder / METRICS).name} and " if (folder / METRICS).exists() else ""
        warn(f"{error}; {moved}will run the cell again")
        return write_status(folder, "failed", reason=f"{METRICS} of the completed cell could not be read")
    return record


def set_aside(path: Path) -> Path:
    """Rename ``path`` to ``<name>.corrupt-<YYYYmmdd-HHMMSS>`` (a number added if taken); return the new path."""
    stem = f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}"
    target, n = path.with_name(stem), 1
    while target.exists():
        target, n = path.with_name(f"{stem}-{n}"), n + 1
    path.rename(target)
    return target


def _warn(message: str) -> None:
    print(f"sqvae-bench: warning: {message}", file=sys.stderr)


def write_status(folder: Path, status: str, **fields) -> dict:
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}; got {status!r}")
    record = {**read_status(folder), **fields, "status": status, "updated": time.time()}
    write_json(folder / STATUS, record)
    return record


@dataclass(frozen=True)
class CellRecord:
    """A cell as read back from its folder."""

    cell_id: str
    folder: Path
    info: dict  # config.json
    status: dict  # status.json
    metrics: dict | None  # metrics.json, completed cells only


def load_cells(output: Path) -> list[CellRecord]:
    """Every cell folder under ``output`` (sorted by id); folders without a config.json are skipped.

    Raises: StoreError naming the first config.json, status.json or metrics.json that cannot be read.
    """
    records = []
    root = Path(output) / CELLS
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not (folder / "config.json").exists():
            continue
        metrics_path = folder / METRICS
        records.append(CellRecord(folder.name, folder, read_json(folder / "config.json"), read_status(folder),
                                  read_json(metrics_path) if metrics_path.exists() else None))
    return records
