"""Minari's on-disk format, the parts the reader and the writer share (h5py and JSON only, no pickle).

The store layout (dataset ids and folders), Minari's space JSON, the array leaves of Dict/Tuple
spaces, JPEG coding of image leaves (Minari's rule: :func:`is_jpeg_space`) and the JSON helpers of
``metadata.json``. The format itself is described in :mod:`tt_agents.data.minari_io`.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import tt_agents.spaces as spaces
from tt_agents.data.episodes import DatasetError
from tt_agents.spaces import serialize_space
from tt_agents.utils import atomic_write_bytes

__all__ = [
    "DatasetMismatchError",
    "EpisodeRecord",
    "dataset_path",
    "datasets_root",
    "deserialize_space",
    "flatten_space",
    "get_leaf",
    "is_jpeg_space",
    "nest_leaves",
    "parse_dataset_id",
    "serialize_space",
]

MAIN_FILE = "main_data.hdf5"
METADATA_FILE = "metadata.json"
# The oldest Minari whose reader reads what we write; 0.5.4 when images are stored raw.
_MINARI_VERSION = "0.5.3"
_MINARI_VERSION_RAW_IMAGES = "0.5.4"
_RESERVED_KEYS = frozenset(
    {
        "total_episodes",
        "total_steps",
        "data_format",
        "observation_space",
        "action_space",
        "env_spec",
        "dataset_id",
        "minari_version",
        "jpeg_encoding",
        "dataset_size",
        "extra_spaces",
    }
)
_DATASET_ID_RE = re.compile(r"^(?:(?P<namespace>[-_\w][-_\w/]*[-_\w]+)/)?(?P<name>[-_\w]+?)(?:-v(?P<version>\d+))$")


class DatasetMismatchError(DatasetError):
    """New data does not match the dataset it is appended to (spaces, env spec or extra fields)."""


# ----------------------------------------------------------------------------------------------
# the local store


def datasets_root() -> Path:
    """The local Minari store: ``$MINARI_DATASETS_PATH``, else ``~/.minari/datasets``."""
    root = os.environ.get("MINARI_DATASETS_PATH")
    return Path(root) if root else Path.home() / ".minari" / "datasets"


def parse_dataset_id(dataset_id: str) -> tuple[str | None, str, int]:
    """Split a Minari id ``(namespace/)name-vN`` into ``(namespace, name, version)``.

    Example:
        >>> parse_dataset_id("hopper/medium-v0")
        ('hopper', 'medium', 0)
    """
    m = _DATASET_ID_RE.fullmatch(dataset_id)
    if m is None:
        raise ValueError(
            f"malformed dataset id {dataset_id!r}: ids look like 'namespace/name-vN', e.g. 'hopper/medium-v0'"
        )
    return m.group("namespace"), m.group("name"), int(m.group("version"))


def dataset_path(dataset_id: str) -> Path:
    """Folder of dataset ``dataset_id`` in the local store (it holds ``data/``)."""
    parse_dataset_id(dataset_id)
    return datasets_root() / dataset_id


# ----------------------------------------------------------------------------------------------
# spaces: Minari's space JSON is the package's one format, in tt_agents.spaces


def deserialize_space(desc: str | Mapping[str, Any]) -> gym.Space:
    """:func:`tt_agents.spaces.deserialize_space`, raising :class:`DatasetError` on a bad description.

    Example:
        >>> deserialize_space('{"type": "Box", "dtype": "float32", "shape": [2], "low": [-1, -1], "high": [1, 1]}')
        Box(-1.0, 1.0, (2,), float32)
    """
    try:
        return spaces.deserialize_space(desc)
    except spaces.SpaceFormatError as e:
        raise DatasetError(str(e)) from None


def is_jpeg_space(space: gym.Space) -> bool:
    """Minari's rule for spaces stored as JPEG: uint8 Box ``(H, W[, C])``, ``H, W >= 32``, bounds 0..255."""
    return (
        isinstance(space, gym.spaces.Box)
        and len(space.shape) in (2, 3)
        and space.shape[0] >= 32
        and space.shape[1] >= 32
        and space.dtype == np.uint8
        and bool(np.all(space.low == 0))
        and bool(np.all(space.high == 255))
    )


LeafPath = tuple  # a leaf's path in a nested space: str keys (Dict) and int indices (Tuple)


def flatten_space(space: gym.Space, prefix: LeafPath = ()) -> list[tuple[LeafPath, gym.Space]]:
    """The array leaves of a (nested Dict / Tuple) space, as ``(path, space)`` in a fixed order.

    Raises:
        TypeError: for spaces that are not arrays (Text, Graph, Sequence, ...).

    Example:
        >>> s = gym.spaces.Dict({"a": gym.spaces.Discrete(2), "b": gym.spaces.Box(0, 1, (3,))})
        >>> [p for p, _ in flatten_space(s)]
        [('a',), ('b',)]
    """
    if isinstance(space, gym.spaces.Dict):
        return [leaf for k, s in space.spaces.items() for leaf in flatten_space(s, (*prefix, k))]
    if isinstance(space, gym.spaces.Tuple):
        return [leaf for i, s in enumerate(space.spaces) for leaf in flatten_space(s, (*prefix, i))]
    if isinstance(space, (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary)):
        return [(prefix, space)]
    raise TypeError(
        f"{type(space).__name__} spaces cannot be stored as arrays; supported: Box, Discrete, MultiDiscrete, "
        "MultiBinary and Dict/Tuple of them (convert the space with a Gymnasium observation/action wrapper)"
    )


def get_leaf(value: Any, path: LeafPath) -> Any:
    """The leaf at ``path`` of a nested dict/tuple value (the value itself for the empty path)."""
    for p in path:
        value = value[p]
    return value


def _h5name(p: str | int) -> str:
    return f"_index_{p}" if isinstance(p, int) else p


def nest_leaves(leaves: Mapping[LeafPath, Any]) -> Any:
    """Rebuild a nested dict/tuple value from its leaves keyed by path (the inverse of :func:`get_leaf`).

    Example:
        >>> nest_leaves({("a",): 1, ("b", 0): 2})
        {'a': 1, 'b': (2,)}
    """
    if () in leaves:
        return leaves[()]
    heads: dict[Any, dict[LeafPath, Any]] = {}
    for path, v in leaves.items():
        heads.setdefault(path[0], {})[path[1:]] = v
    if all(isinstance(h, int) for h in heads):
        return tuple(nest_leaves(heads[i]) for i in sorted(heads))
    return {k: nest_leaves(sub) for k, sub in heads.items()}


# ----------------------------------------------------------------------------------------------
# images


def _encode_jpeg(frames: np.ndarray) -> list[np.ndarray]:
    from PIL import Image

    out = []
    for f in frames:
        img = f[..., 0] if f.ndim == 3 and f.shape[-1] == 1 else f
        buf = io.BytesIO()
        try:
            Image.fromarray(img).save(buf, format="JPEG")
        except (OSError, TypeError, ValueError) as e:
            raise ValueError(
                f"cannot JPEG-encode frames of shape {f.shape}: {e}; pass jpeg_encoding=False to store them raw"
            ) from None
        out.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    return out


def _decode_jpeg(data: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(data), *shape), dtype=np.uint8)
    for t, raw in enumerate(data):
        try:
            img = Image.open(io.BytesIO(np.asarray(raw, dtype=np.uint8).tobytes()))
            size, mode = img.size, img.mode  # from the header, before anything is decoded
        except Exception as e:  # PIL raises many types on bad bytes
            raise DatasetError(f"{where}, step {t}: cannot decode the JPEG frame ({type(e).__name__}: {e})") from None
        channels = {"L": 1, "RGB": 3}.get(mode)
        if img.format != "JPEG" or size != (shape[1], shape[0]) or channels != (shape[2] if len(shape) == 3 else 1):
            raise DatasetError(
                f"{where}, step {t}: the frame is a {size[0]}x{size[1]} {img.format} image of mode {mode}, "
                f"expected a JPEG of the space's shape {shape}"
            )
        try:
            out[t] = np.asarray(img, dtype=np.uint8).reshape(shape)
        except Exception as e:
            raise DatasetError(f"{where}, step {t}: cannot decode the JPEG frame ({type(e).__name__}: {e})") from None
    return out


# ----------------------------------------------------------------------------------------------
# writing


@dataclass
class EpisodeRecord:
    """One finished episode, ready to be written (see :meth:`MinariWriter.write_episodes`).

    Attributes:
        observations: ``T + 1`` observations: an array, or a dict/tuple of arrays for Dict/Tuple spaces.
        actions: ``T`` actions, same convention.
        rewards, terminations, truncations: ``(T,)`` arrays.
        infos: optional dict of ``T + 1``-row arrays (the reset info, then each step's info).
        extras: extra per-step fields, ``T`` rows each.
        seed: the seed the episode's reset was given, if any.
        attrs: extra HDF5 attributes of the episode group.
    """

    observations: Any
    actions: Any
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    infos: Mapping[str, Any] | None = None
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    seed: int | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rewards)


def _env_spec_json(env_spec: gym.envs.registration.EnvSpec | str | None) -> str | None:
    if env_spec is None or isinstance(env_spec, str):
        return env_spec
    try:
        return env_spec.to_json()
    except (TypeError, ValueError) as e:
        warnings.warn(
            f"env spec {env_spec.id!r} is not JSON-serializable ({e}); the dataset will not record it",
            stacklevel=3,
        )
        return None


_SPEC_KEYS = ("id", "entry_point", "kwargs", "max_episode_steps", "additional_wrappers")


def _spec_diff(old: str | None, new: str | None) -> list[str]:
    if old is None and new is None:
        return []
    if old is None or new is None:
        return [
            f"env_spec: dataset has {'none' if old is None else 'one'}, new data has {'none' if new is None else 'one'}"
        ]
    a, b = json.loads(old), json.loads(new)
    return [
        f"env_spec.{k}: dataset has {a.get(k)!r}, new data has {b.get(k)!r}" for k in _SPEC_KEYS if a.get(k) != b.get(k)
    ]


def _atomic_write_json(path: Path, obj: Any, fsync: bool) -> None:
    atomic_write_bytes(path, json.dumps(obj, default=_json_default).encode(), fsync=fsync)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serializable: {obj!r:.100}")
