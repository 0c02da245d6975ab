"""How durable a logged episode is, and the background group commit that makes it survive power loss.

Two levels, named for what they promise (SQLite's WAL with ``synchronous=NORMAL`` vs ``FULL``
draws the same line):

- ``"process-crash"`` (the loggers' default): when the step that ends an episode returns, the
  episode has been written to the dataset's files and counted in ``metadata.json``, i.e. handed
  to the operating system. A crash or a ``SIGKILL`` of the process loses no finished episode; a
  power loss or a kernel crash may lose the episodes the OS had not yet written to the disk.
- ``"power-loss"``: the same, and in addition the files are fsynced by a background thread
  (:class:`GroupCommitter`): one ``fsync`` covers every episode written since the previous one
  (group commit), and the env loop never waits for the disk. An episode survives a power loss
  once the group commit after it has finished: :meth:`GroupCommitter.sync` (the loggers'
  ``sync()``) waits for that, and ``close()`` does.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Literal

from tt_agents.data.minari_format import MAIN_FILE, METADATA_FILE
from tt_agents.utils import fsync_file

__all__ = ["DURABILITY_LEVELS", "Durability", "GroupCommitter", "fsync_dataset"]

Durability = Literal["process-crash", "power-loss"]
DURABILITY_LEVELS: tuple[str, ...] = ("process-crash", "power-loss")


def check_durability(durability: str) -> None:
    if durability not in DURABILITY_LEVELS:
        raise ValueError(f"durability must be one of {DURABILITY_LEVELS}, got {durability!r}")


def fsync_dataset(data_path: Path) -> None:
    """``fsync`` a dataset's episode file, its ``metadata.json`` and their folder (the metadata's renames)."""
    for name in (MAIN_FILE, METADATA_FILE, None):
        fsync_file(data_path if name is None else data_path / name, missing_ok=True)


class GroupCommitter:
    """fsyncs a dataset on a background thread, once for all the episodes written since the last time.

    The logger calls :meth:`written` with the number of episodes committed so far after each
    write (it returns at once); the thread wakes, fsyncs the files, and records that many
    episodes as durable. Episodes that end while an ``fsync`` is under way wait for the next one,
    which covers them all: under a slow disk, the number of ``fsync`` calls falls, not the env's
    speed. ``fsyncs`` counts the calls, ``durable_episodes`` what the last one covered. An error in
    the thread (a full disk, an I/O error) is raised by the next :meth:`written` or :meth:`sync`.

    Example:
        >>> import tempfile
        >>> committer = GroupCommitter(Path(tempfile.mkdtemp()))
        >>> committer.written(3)
        >>> committer.sync()
        3
        >>> committer.close()
    """

    def __init__(self, data_path: Path) -> None:
        self.data_path = data_path
        self.durable_episodes = 0
        self.fsyncs = 0
        self._requested = 0
        self._error: BaseException | None = None
        self._stop = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"GroupCommitter({data_path})", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._requested <= self.durable_episodes and not self._stop:
                    self._cond.wait()
                if self._requested <= self.durable_episodes:  # stopping, nothing left
                    return
                n = self._requested
            try:
                fsync_dataset(self.data_path)
            except OSError as e:
                with self._cond:
                    self._error = e
                    self._cond.notify_all()
                return
            with self._cond:
                self.fsyncs += 1
                self.durable_episodes = max(self.durable_episodes, n)
                self._cond.notify_all()

    def _raise(self) -> None:
        if self._error is not None:
            raise OSError(f"the background fsync of {self.data_path} failed: {self._error}") from self._error

    def written(self, total_episodes: int) -> None:
        """``total_episodes`` are committed (handed to the OS): make them durable soon. Never waits."""
        with self._cond:
            self._raise()
            if total_episodes > self._requested:
                self._requested = total_episodes
                self._cond.notify_all()

    def sync(self) -> int:
        """Wait until every episode reported to :meth:`written` is durable; returns how many are."""
        with self._cond:
            while self.durable_episodes < self._requested and self._error is None and self._thread.is_alive():
                self._cond.wait()
            self._raise()
            return self.durable_episodes

    def close(self) -> None:
        """:meth:`sync`, then stop the thread."""
        try:
            self.sync()
        finally:
            with self._cond:
                self._stop = True
                self._cond.notify_all()
            self._thread.join()
