"""Small shared helpers: device selection, seeding, dataclass configs to and from JSON, atomic file writes."""

from __future__ import annotations

import dataclasses
import os
import random
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

__all__ = ["resolve_device", "set_seed", "config_to_dict", "config_from_dict", "atomic_write_bytes", "fsync_dir", "fsync_file",
           "import_sb3"]

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` is ``cuda`` when a GPU is visible, else ``cpu``; anything else is passed to torch.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from e


def set_seed(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A dataclass config as JSON-able data (tuples become lists)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"expected a dataclass config, got {type(config).__name__}")
    return dataclasses.asdict(config)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return config_from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        for arg in typing.get_args(tp):
            if arg is not type(None) and dataclasses.is_dataclass(arg) and isinstance(value, dict):
                return config_from_dict(arg, value, where)
        return value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if origin is list and isinstance(value, list):
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(arg, v, where) for v in value]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def config_from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Re-create a dataclass config from :func:`config_to_dict` output; unknown keys are an error.

    Example:
        >>> @dataclasses.dataclass
        ... class C:
        ...     a: int = 1
        ...     b: tuple[int, int] = (2, 3)
        >>> config_from_dict(C, {"a": 5, "b": [1, 2]})
        C(a=5, b=(1, 2))
    """
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown fields {unknown} for {cls.__name__}; known: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def fsync_file(path: str | os.PathLike, missing_ok: bool = False) -> None:
    """Flush file (or folder) ``path`` to the disk; errors are raised (``missing_ok``: a path that does not exist
    is skipped)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of folder ``path`` (a rename into it) durable; a no-op where folders cannot be synced."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one.

    The bytes go to a temporary file in the same folder, which is renamed over ``path``. With
    ``fsync`` (the default) the file and the rename are also flushed to the disk, so they survive
    a power loss, not only a killed process.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     atomic_write_bytes(f"{d}/a.json", b"{}").read_bytes()
        b'{}'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if fsync:
        fsync_dir(path.parent)
    return path


def import_sb3() -> None:
    """Import Stable-Baselines3 without the notice it prints on stderr when the old ``gym`` is installed
    (procgen's gym3 brings it); later imports of SB3 modules are then silent."""
    import contextlib
    import io
    import warnings

    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import stable_baselines3.common.vec_env  # noqa: F401
