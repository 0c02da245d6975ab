"""A checkpoint format users can trust: safetensors weights, JSON for everything else, no pickle.

A checkpoint is one uncompressed zip file (so that a save is a single atomic rename):

``manifest.json``
    ``format_version``, ``package_version``, ``kind`` (what wrote it), free JSON sections
    (config, spaces, preprocessing, trainer state ...) and, under ``payloads``, the name, size
    and sha256 of every other member.
``*.safetensors``
    tensors only (weights, optimizer moments, RNG states).

The zip comment (the last bytes of the file) is ``sha256:<hex>``, the digest of every byte before
it, so that any flipped or missing byte anywhere in the file, headers included, is detected.

:func:`write_checkpoint` writes to a temporary file in the target folder, fsyncs it and renames it
over the target, so a process killed during a save leaves the previous checkpoint untouched.
:func:`read_checkpoint` verifies sizes and checksums before anything is parsed, and turns every
kind of damage (truncation, flipped bytes, unknown versions, missing members) into
:class:`CheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from tt_agents._version import __version__
from tt_agents.utils import atomic_write_bytes

__all__ = [
    "CheckpointError",
    "Checkpoint",
    "FORMAT_VERSION",
    "write_checkpoint",
    "read_checkpoint",
    "atomic_write_bytes",
    "encode_checkpoint",
]

FORMAT_VERSION = 1
"""Bumped whenever the layout changes incompatibly; readers refuse newer versions."""

MANIFEST = "manifest.json"
_SEAL_PREFIX = b"sha256:"
_SEAL_LEN = len(_SEAL_PREFIX) + 64


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not fit: the message says which file and why."""


@dataclass
class Checkpoint:
    """The decoded contents of a checkpoint file."""

    manifest: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    """``payload name -> {tensor name -> tensor}``; payload names drop the ``.safetensors``."""


def _package_version() -> str:
    return __version__


def write_checkpoint(
    path: str | os.PathLike,
    kind: str,
    sections: dict[str, Any],
    tensors: dict[str, dict[str, torch.Tensor]],
) -> Path:
    """Atomically write a checkpoint.

    Args:
        path: the file to write (parents are created).
        kind: what wrote it, e.g. ``"agent"`` or ``"trainer"``.
        sections: JSON-able data stored in the manifest.
        tensors: ``payload name -> {tensor name -> tensor}``; each payload becomes one
            ``<name>.safetensors`` member.
    """
    path = Path(path)
    atomic_write_bytes(path, encode_checkpoint(kind, sections, tensors))
    return path


def encode_checkpoint(kind: str, sections: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]]) -> bytes:
    """The bytes of the checkpoint :func:`write_checkpoint` writes (to write one checkpoint to several files)."""
    payloads: dict[str, bytes] = {}
    for name, tdict in tensors.items():
        clean = {k: v.detach().cpu().contiguous() for k, v in tdict.items()}
        payloads[f"{name}.safetensors"] = st_save(clean)
    manifest = {
        "format": "tt-agents-checkpoint",
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "kind": kind,
        **sections,
        "payloads": {
            name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()} for name, data in payloads.items()
        },
    }
    members = {MANIFEST: json.dumps(manifest, indent=1, allow_nan=False).encode(), **payloads}
    return sealed_zip(members)


def sealed_zip(members: dict[str, bytes]) -> bytes:
    """An uncompressed zip of ``members`` whose comment is the sha256 of every byte before it."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.comment = _SEAL_PREFIX + b"0" * 64  # placeholder of the seal's length
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), data)  # reproducible bytes
    body = buf.getvalue()[:-_SEAL_LEN]
    return body + _SEAL_PREFIX + hashlib.sha256(body).hexdigest().encode()


def _check_members(path: Path, infos: list[zipfile.ZipInfo], file_size: int) -> None:
    """Refuse what :func:`write_checkpoint` never writes and what would make reading cost more than the file.

    Members are stored uncompressed (a compressed one could expand far beyond the file's size), each
    name once, and together no larger than the file (so the reader allocates a small multiple of it).
    """
    dup = sorted(n for n, k in Counter(i.filename for i in infos).items() if k > 1)
    if dup:
        raise CheckpointError(f"{path}: members listed more than once: {dup[:5]}; not a file tt-agents wrote")
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CheckpointError(
            f"{path}: compressed members {packed[:5]}; tt-agents checkpoints store every member uncompressed"
        )
    claimed = sum(i.file_size for i in infos)
    if claimed > file_size:
        raise CheckpointError(f"{path}: the members claim {claimed} bytes, more than the file's {file_size}")


def read_checkpoint(path: str | os.PathLike, kind: str | None = None) -> Checkpoint:
    """Read and verify a checkpoint written by :func:`write_checkpoint`.

    Whatever the file holds (also a validly sealed file crafted by someone else), reading runs no
    code, reads no other file and allocates a small multiple of the file's size at most.

    Raises:
        CheckpointError: missing file, not a checkpoint, truncated or corrupted, checksum
            mismatch, unknown or newer format version, a different ``kind`` than asked for, or
            members tt-agents never writes (compressed, duplicated).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file at {str(path)!r}")
    raw = path.read_bytes()
    body, seal = raw[:-_SEAL_LEN], raw[-_SEAL_LEN:]
    if len(raw) < _SEAL_LEN or not seal.startswith(_SEAL_PREFIX):
        raise CheckpointError(
            f"{path}: not a tt-agents checkpoint, or truncated (the file does not end with its sha256 seal)"
        )
    if hashlib.sha256(body).hexdigest().encode() != seal[len(_SEAL_PREFIX) :]:
        raise CheckpointError(f"{path}: checksum mismatch: the file is corrupted")
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            _check_members(path, zf.infolist(), len(raw))
            names = zf.namelist()
            if MANIFEST not in names:
                raise CheckpointError(f"{path}: not a tt-agents checkpoint (no {MANIFEST})")
            manifest = json.loads(zf.read(MANIFEST).decode("utf-8"))
            if not isinstance(manifest, dict) or manifest.get("format") != "tt-agents-checkpoint":
                raise CheckpointError(f"{path}: not a tt-agents checkpoint (bad manifest header)")
            version = manifest.get("format_version")
            if not isinstance(version, int) or version < 1:
                raise CheckpointError(f"{path}: unknown checkpoint format version {version!r}")
            if version > FORMAT_VERSION:
                raise CheckpointError(
                    f"{path}: checkpoint format version {version} is newer than this tt-agents "
                    f"({_package_version()}) reads (up to {FORMAT_VERSION}); upgrade tt-agents"
                )
            if kind is not None and manifest.get("kind") != kind:
                raise CheckpointError(f"{path}: expected a {kind!r} checkpoint, found {manifest.get('kind')!r}")
            declared = manifest.get("payloads")
            if not isinstance(declared, dict):
                raise CheckpointError(f"{path}: manifest lists no payloads")
            extra = sorted(set(names) - set(declared) - {MANIFEST})
            if extra:
                raise CheckpointError(f"{path}: members not listed in the manifest: {extra}")
            tensors: dict[str, dict[str, torch.Tensor]] = {}
            for name, info in declared.items():
                if name not in names:
                    raise CheckpointError(f"{path}: payload {name!r} is missing")
                if not name.endswith(".safetensors"):
                    raise CheckpointError(f"{path}: payload {name!r} is not a .safetensors file")
                data = zf.read(name)
                if len(data) != info.get("size") or hashlib.sha256(data).hexdigest() != info.get("sha256"):
                    raise CheckpointError(f"{path}: checksum mismatch in {name!r}: the file is corrupted")
                tensors[name[: -len(".safetensors")]] = st_load(data)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: corrupted or truncated checkpoint ({type(e).__name__}: {e})") from e
    except Exception as e:  # safetensors raises its own errors on malformed headers
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from e
    return Checkpoint(manifest=manifest, tensors=tensors)
