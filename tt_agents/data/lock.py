"""One writer per dataset: an exclusive OS lock held by a dataset's writer for its whole life.

The lock is an ``flock`` on a small file beside the dataset's folder (``.<name>.writer-lock``, so that
``overwrite`` cannot delete it while it is held, and Minari never takes it for a dataset). The file
says who holds it (pid, host, since when); the OS drops the lock when its process dies, so a killed
writer never blocks the next one.

- :class:`WriterLock`: take the lock (or raise :class:`DatasetError` naming the holder), release it.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not a POSIX system: writers take no lock
    fcntl = None  # type: ignore[assignment]

from tt_agents.data.episodes import DatasetError

__all__ = ["WriterLock", "lock_path"]


def lock_path(dataset_path: Path) -> Path:
    """The lock file of the dataset folder ``dataset_path``, beside it."""
    return dataset_path.parent / f".{dataset_path.name}.writer-lock"


class WriterLock:
    """Hold the writer's lock on the dataset at ``dataset_path`` until :meth:`release`.

    Raises:
        DatasetError: another writer (of this process or another) holds it; names the dataset and the holder.
    """

    def __init__(self, dataset_path: Path, dataset_id: str) -> None:
        self.path = lock_path(dataset_path)
        self._fd: int | None = None
        if fcntl is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 300, 0).decode(errors="replace").strip()
            os.close(fd)
            raise DatasetError(
                f"dataset {dataset_id} at {dataset_path} is being written by another writer "
                f"({holder or 'holder unknown'}); a dataset has one writer at a time: wait for it to close, "
                "or log into another dataset id"
            ) from None
        os.ftruncate(fd, 0)
        holder = f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let other writers in (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
