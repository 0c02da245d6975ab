"""HDF5 files as the dataset loaders open them: nothing outside the file is read, memory stays bounded.

HDF5 can point outside itself: an external link names another HDF5 file, raw external storage makes a
dataset's bytes those of any file, and a virtual dataset maps other files' values. The loaders
(:func:`tt_agents.data.load_dataset` for Minari and D4RL files) refuse such files unless the user
opts in (``allow_external=True``, or ``TT_AGENTS_ALLOW_HDF5_EXTERNAL=1`` in the environment).

HDF5 can also claim more data than it holds (a dataset of a billion rows whose chunks were never
written, or compressed a thousandfold): the loaders add up what they would decode from the headers
and refuse a file that would take more than :data:`MAX_EXPANSION` times its size (plus
:data:`SLACK_BYTES`) before reading any value.

- :func:`open_hdf5`: open a file for reading, refusing damage and indirections with :class:`DatasetError`.
- :func:`check_decoded_size`: the memory bound.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from tt_agents.data.episodes import DatasetError

__all__ = ["ALLOW_EXTERNAL_ENV", "MAX_EXPANSION", "SLACK_BYTES", "check_decoded_size", "open_hdf5"]

ALLOW_EXTERNAL_ENV = "TT_AGENTS_ALLOW_HDF5_EXTERNAL"
"""Set to ``1`` to read HDF5 files whose data lives in other files (external links, external storage,
virtual datasets); by default such files are refused, since loading them reads files the user never named."""

MAX_EXPANSION = 128
"""How many times its file's size a load may decode (JPEG-coded flat frames reach ~85x, raw data 1x)."""

SLACK_BYTES = 64 << 20
"""Decoded bytes always allowed on top of ``MAX_EXPANSION`` times the file's size (small files)."""

_checked: dict[tuple[str, int, int], None] = {}  # files found free of indirections, by (path, mtime, size)


def _indirections(f: h5py.File) -> list[str]:
    """The objects of ``f`` that point outside it: external links, external raw storage, virtual datasets."""
    found: list[str] = []
    seen: set[int] = set()
    todo: list[tuple[h5py.Group, str]] = [(f, "")]  # a stack, not recursion: nesting depth is the file's to choose
    while todo:
        group, prefix = todo.pop()
        for name in group:
            path = f"{prefix}/{name}"
            link = group.get(name, getlink=True)
            if isinstance(link, h5py.ExternalLink):
                found.append(f"{path} (external link to {link.filename}:{link.path})")
                continue
            if isinstance(link, h5py.SoftLink):
                continue  # a path inside this file; its target is visited where it lives
            obj = group[name]
            addr = h5py.h5o.get_info(obj.id).addr
            if addr in seen:  # hard links may make cycles
                continue
            seen.add(addr)
            if isinstance(obj, h5py.Group):
                todo.append((obj, path))
            elif isinstance(obj, h5py.Dataset):
                if obj.is_virtual:
                    found.append(
                        f"{path} (virtual dataset over {sorted({s.file_name for s in obj.virtual_sources()})})"
                    )
                elif obj.external:
                    found.append(f"{path} (raw storage in {[e[0] for e in obj.external]})")
    return found


def open_hdf5(path: str | os.PathLike, allow_external: bool | None = None) -> h5py.File:
    """Open an HDF5 file for reading; a damaged or truncated file raises a DatasetError saying so.

    A file whose data lives in other files (external links, external raw storage, virtual datasets)
    is refused with :class:`DatasetError` naming the objects, unless ``allow_external`` (default:
    the ``TT_AGENTS_ALLOW_HDF5_EXTERNAL=1`` environment variable) opts in.
    """
    try:
        f = h5py.File(path, "r", locking=False)  # a reader never blocks the dataset's writer (nor Minari's)
    except OSError as e:
        hint = (
            "the file is shorter than its header says (truncated: an interrupted copy or download?); "
            "copy or download it again"
            if "truncated" in str(e)
            else "the file is damaged or not HDF5; copy or regenerate it"
        )
        raise DatasetError(f"cannot read {path}: {e}; {hint}") from None
    if allow_external is None:
        allow_external = os.environ.get(ALLOW_EXTERNAL_ENV) == "1"
    if not allow_external:
        st = os.stat(path)
        key = (str(Path(path).resolve()), st.st_mtime_ns, st.st_size)
        if key not in _checked:  # lazy loading reopens the file per episode: scan it once per version
            try:
                found = _indirections(f)
            except (OSError, KeyError, RuntimeError) as e:  # broken links, damaged object headers
                f.close()
                raise DatasetError(f"cannot read {path}: {e}; the file is damaged or not HDF5") from None
            if found:
                f.close()
                raise DatasetError(
                    f"{path} points outside itself: {'; '.join(found[:5])}"
                    + (f" and {len(found) - 5} more" if len(found) > 5 else "")
                    + ". Loading it would read files you did not name; if you trust it, pass allow_external=True "
                    f"to load_dataset or set {ALLOW_EXTERNAL_ENV}=1"
                )
            _checked[key] = None
    return f


def check_decoded_size(path: str | os.PathLike, nbytes: int, max_bytes: int | None = None) -> None:
    """Refuse a load that would decode ``nbytes`` from the file at ``path`` if that is beyond its bound.

    Args:
        path: the HDF5 file.
        nbytes: what the load would hold in memory, added up from the headers.
        max_bytes: the bound; default ``MAX_EXPANSION`` times the file's size plus ``SLACK_BYTES``.

    Raises:
        DatasetError: naming the file, the claimed size and the bound.
    """
    size = os.path.getsize(path)
    limit = MAX_EXPANSION * size + SLACK_BYTES if max_bytes is None else int(max_bytes)
    if nbytes > limit:
        raise DatasetError(
            f"{path}: its headers claim {nbytes:,} bytes of data, {nbytes / max(size, 1):,.0f} times the file's "
            f"{size:,} bytes (at most {limit:,} are read): a damaged or crafted file whose datasets were never "
            "written or are compressed beyond belief; if you trust it, pass max_bytes= to load_dataset"
        )
