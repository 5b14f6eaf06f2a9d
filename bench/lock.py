"""One sqvae-bench process per output folder: an advisory ``fcntl`` lock on ``<output>/.lock``.

The kernel holds the lock for the life of the open file, so taking it is atomic (two processes
started together: exactly one gets it) and a process that dies for any reason (SIGKILL included)
releases it: there is no stale lock to take over. The file also holds the holder's pid and command
line, so the second process can say who has the folder.
"""
from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

from bench.errors import ConfigError

LOCK_NAME = ".lock"


class OutputLock:
    """``with OutputLock(output):`` holds the folder's lock; see the module docstring."""

    def __init__(self, output: Path):
        self.path = Path(output) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = self._lock_file()
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {' '.join(sys.argv)}\n".encode())
        self._fd = fd
        return self

    def _lock_file(self) -> int:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise ConfigError(
                f"{self.path.parent} is in use by another sqvae-bench process ({holder}); wait for it to end or "
                f"choose another --output. The lock is released when that process ends; if no such process is "
                f"running (a filesystem without working locks), remove {self.path} by hand") from None
        except OSError as err:  # e.g. a filesystem without flock support
            os.close(fd)
            raise ConfigError(f"cannot lock {self.path}: {err.strerror}; use a local --output folder") from None
        return fd

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still locked, so no one holds a removed file's lock
        finally:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> str:
    text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    pid, _, command = text.partition(" ")
    if not pid.isdigit():
        return "pid unknown"
    return f"pid {pid}: {command}" if command else f"pid {pid}"
