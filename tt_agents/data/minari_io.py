"""Read and write the Minari on-disk format with h5py and JSON only (no pickle, no jax, any Minari version).

A Minari dataset ``namespace/name-vN`` lives in ``$MINARI_DATASETS_PATH/namespace/name-vN/data/``
(``~/.minari/datasets`` when the variable is unset) as two files:

- ``metadata.json``: ``dataset_id``, ``minari_version``, ``total_episodes``, ``total_steps``,
  ``data_format`` (``"hdf5"``), the spaces as Minari's space JSON, ``env_spec`` (Gymnasium's
  ``EnvSpec.to_json()``), reference scores and free-form keys.
- ``main_data.hdf5``: one group ``episode_{i}`` per episode holding ``observations`` (``T + 1``
  rows), ``actions``, ``rewards``, ``terminations``, ``truncations`` (``T`` rows) and an
  ``infos`` group; Dict spaces are groups of their keys, Tuple spaces groups of ``_index_{i}``.
  Image spaces (``uint8`` Box, ``H, W >= 32``, bounds 0..255) are JPEG-encoded when the
  metadata's ``jpeg_encoding`` is true or absent, as Minari does.

What this module adds, ignored by Minari's own reader: extra per-step fields in an ``extras``
group of each episode (``T`` rows each, spaces in the metadata key ``extra_spaces``), and the
metadata keys ``env_id`` (the env spec's id), ``seeds`` (given to ``reset``) and ``policy``.

Durability: :class:`MinariWriter` opens the HDF5 file only while it writes finished episodes,
flushes and ``fsync``s it, and only then commits the new episode count by atomically replacing
``metadata.json``. Readers trust ``metadata.json``: an episode written but not yet committed when
a process died is invisible and is removed on the next append. A process killed while it is not
writing (mid-episode) therefore loses only the episodes it had not finished; a kill during the
milliseconds of the write itself can leave the HDF5 file damaged, as with any HDF5 writer.

- :class:`MinariWriter`: create or append to a dataset, one batch of finished episodes at a time.
- :class:`EpisodeRecord`: one finished episode, as the writer takes it.
- :class:`MinariReader`: open a dataset folder, check its structure, read episodes.
- :func:`serialize_space`, :func:`deserialize_space`: Minari's space JSON, parsed without eval.
- :func:`flatten_space`, :func:`get_leaf`, :func:`nest_leaves`, :func:`is_jpeg_space`: the
  array leaves of Dict/Tuple spaces and values, and Minari's rule for image spaces.
- :func:`datasets_root`, :func:`dataset_path`, :func:`parse_dataset_id`: the local store.
- :class:`DatasetMismatchError`: appending data that does not match the dataset on disk.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np

from tt_agents.data.episodes import DatasetError, Episode

__all__ = [
    "DatasetMismatchError",
    "EpisodeRecord",
    "MinariReader",
    "MinariWriter",
    "dataset_path",
    "datasets_root",
    "deserialize_space",
    "flatten_space",
    "get_leaf",
    "is_jpeg_space",
    "nest_leaves",
    "open_hdf5",
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
# spaces


def serialize_space(space: gym.Space) -> dict[str, Any]:
    """Minari's JSON description of a space (as a dict; ``json.dumps`` it for metadata.json).

    Example:
        >>> serialize_space(gym.spaces.Discrete(3))
        {'type': 'Discrete', 'dtype': 'int64', 'start': 0, 'n': 3}
    """
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "dtype": str(space.dtype),
            "shape": list(space.shape),
            "low": space.low.tolist(),
            "high": space.high.tolist(),
        }
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "dtype": "int64", "start": int(space.start), "n": int(space.n)}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {
            "type": "MultiDiscrete",
            "dtype": str(space.dtype),
            "nvec": space.nvec.tolist(),
            "start": space.start.tolist(),
        }
    if isinstance(space, gym.spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.isscalar(n) else list(n)}
    if isinstance(space, gym.spaces.Dict):
        return {"type": "Dict", "subspaces": {k: serialize_space(s) for k, s in space.spaces.items()}}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "subspaces": [serialize_space(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Text):
        return {
            "type": "Text",
            "max_length": space.max_length,
            "min_length": space.min_length,
            "charset": space.characters,
        }
    raise TypeError(
        f"cannot serialize {type(space).__name__} spaces in the Minari format; supported: "
        "Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple, Text"
    )


def deserialize_space(desc: str | Mapping[str, Any]) -> gym.Space:
    """Parse Minari's space JSON (a string or a parsed dict) into a Gymnasium space.

    Example:
        >>> deserialize_space('{"type": "Box", "dtype": "float32", "shape": [2], "low": [-1, -1], "high": [1, 1]}')
        Box(-1.0, 1.0, (2,), float32)
    """
    if isinstance(desc, str):
        try:
            desc = json.loads(desc)
        except json.JSONDecodeError as e:
            raise DatasetError(f"space description is not valid JSON ({e}): {desc[:200]!r}") from None
    if not isinstance(desc, Mapping) or "type" not in desc:
        raise DatasetError(f"space description must be a JSON object with a 'type', got {desc!r:.200}")
    kind = desc["type"]
    try:
        if kind == "Box":
            dtype = np.dtype(desc["dtype"])
            shape = tuple(int(s) for s in desc["shape"])
            low = np.array(desc["low"], dtype=np.float64 if dtype.kind == "f" else None)
            high = np.array(desc["high"], dtype=np.float64 if dtype.kind == "f" else None)
            return gym.spaces.Box(low=low.astype(dtype), high=high.astype(dtype), shape=shape, dtype=dtype)
        if kind == "Discrete":
            return gym.spaces.Discrete(n=int(desc["n"]), start=int(desc.get("start", 0)))
        if kind == "MultiDiscrete":
            return gym.spaces.MultiDiscrete(
                nvec=desc["nvec"], dtype=desc.get("dtype", "int64"), start=desc.get("start")
            )
        if kind == "MultiBinary":
            return gym.spaces.MultiBinary(n=desc["n"])
        if kind == "Dict":
            return gym.spaces.Dict({k: deserialize_space(v) for k, v in desc["subspaces"].items()})
        if kind == "Tuple":
            return gym.spaces.Tuple(tuple(deserialize_space(v) for v in desc["subspaces"]))
        if kind == "Text":
            return gym.spaces.Text(
                max_length=int(desc["max_length"]), min_length=int(desc["min_length"]), charset=desc["charset"]
            )
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"malformed {kind} space description ({type(e).__name__}: {e}): {desc!r:.300}") from None
    raise DatasetError(
        f"unknown space type {kind!r}; supported: Box, Discrete, MultiDiscrete, MultiBinary, Dict, Tuple, Text"
    )


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
            img = np.asarray(Image.open(io.BytesIO(np.asarray(raw, dtype=np.uint8).tobytes())), dtype=np.uint8)
            out[t] = img.reshape(shape)
        except Exception as e:  # PIL raises many types on bad bytes
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
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, default=_json_default)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
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


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serializable: {obj!r:.100}")


class MinariWriter:
    """Create a Minari dataset, or append to one, a batch of finished episodes at a time.

    Args:
        dataset_id: ``namespace/name-vN``.
        observation_space, action_space: the spaces of one (unbatched) env.
        path: the dataset's folder (holding ``data/``); default: ``dataset_path(dataset_id)`` in the
            local store (``$MINARI_DATASETS_PATH``).
        env_spec: the env's ``EnvSpec`` (or its JSON), recorded so ``recover_environment`` works.
        extra_spaces: spaces of extra per-step fields (latent actions, plans, ...), by name.
        metadata: more metadata (``algorithm_name``, ``ref_min_score``, ``policy``, ...).
        jpeg_encoding: JPEG-encode image spaces as Minari does (lossy; any Minari >= 0.5.3 reads it).
            ``False`` stores them raw (lossless; Minari >= 0.5.4 reads it).
        fsync: ``fsync`` the files after each batch, so committed episodes survive a power loss too.
        overwrite: delete an existing dataset at ``path`` instead of appending to it.

    Raises:
        DatasetMismatchError: appending with other spaces, env spec or extra fields.

    Example:
        >>> import tempfile
        >>> w = MinariWriter("demo/random-v0", gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(2),
        ...                  path=tempfile.mkdtemp() + "/demo/random-v0", fsync=False)
        >>> w.write_episodes([EpisodeRecord(np.zeros((3, 2), np.float32), np.array([0, 1]), np.ones(2),
        ...                                 np.array([False, True]), np.zeros(2, bool))])
        [0]
        >>> w.total_episodes, w.total_steps
        (1, 2)
    """

    def __init__(
        self,
        dataset_id: str,
        observation_space: gym.Space,
        action_space: gym.Space,
        *,
        path: str | os.PathLike | None = None,
        env_spec: gym.envs.registration.EnvSpec | str | None = None,
        extra_spaces: Mapping[str, gym.Space] | None = None,
        metadata: Mapping[str, Any] | None = None,
        jpeg_encoding: bool = True,
        fsync: bool = True,
        overwrite: bool = False,
    ) -> None:
        parse_dataset_id(dataset_id)
        self.dataset_id = dataset_id
        self.path = Path(path) if path is not None else dataset_path(dataset_id)
        self.data_path = self.path / "data"
        self.observation_space = observation_space
        self.action_space = action_space
        self.extra_spaces = dict(extra_spaces or {})
        self.jpeg_encoding = bool(jpeg_encoding)
        self.fsync = fsync
        self._obs_leaves = flatten_space(observation_space)
        self._act_leaves = flatten_space(action_space)
        self._extra_leaves = {k: flatten_space(s) for k, s in self.extra_spaces.items()}
        for name in self.extra_spaces:
            if not re.fullmatch(r"[\w.-]+", name):
                raise ValueError(f"extra field name {name!r} must be letters, digits, '_', '.' or '-'")
        bad = _RESERVED_KEYS.intersection(metadata or {})
        if bad:
            raise ValueError(f"metadata keys {sorted(bad)} are set by the writer; remove them from metadata=")
        self._jpeg_paths = {
            "observations": {p for p, s in self._obs_leaves if self.jpeg_encoding and is_jpeg_space(s)},
            "actions": {p for p, s in self._act_leaves if self.jpeg_encoding and is_jpeg_space(s)},
        }
        spec_json = _env_spec_json(env_spec)
        meta_file = self.data_path / METADATA_FILE
        if overwrite and self.path.exists():
            shutil.rmtree(self.path)
        if meta_file.exists():
            self._metadata = self._open_existing(spec_json)
            if metadata:
                self.update_metadata(metadata)
        else:
            self._metadata = self._create(spec_json, metadata or {})

    # -- creation / appending -----------------------------------------------------------------

    def _create(self, spec_json: str | None, metadata: Mapping[str, Any]) -> dict[str, Any]:
        self.data_path.mkdir(parents=True, exist_ok=True)
        self._write_namespace_metadata()
        raw_images = not self.jpeg_encoding and any(
            is_jpeg_space(s) for _, s in [*self._obs_leaves, *self._act_leaves]
        )
        meta: dict[str, Any] = {
            "total_episodes": 0,
            "total_steps": 0,
            "data_format": "hdf5",
            "observation_space": json.dumps(serialize_space(self.observation_space)),
            "action_space": json.dumps(serialize_space(self.action_space)),
        }
        if spec_json is not None:
            meta["env_spec"] = spec_json
            meta["env_id"] = json.loads(spec_json).get("id")
        meta.update(
            {
                "dataset_id": self.dataset_id,
                "minari_version": _MINARI_VERSION_RAW_IMAGES if raw_images else _MINARI_VERSION,
                "jpeg_encoding": self.jpeg_encoding,
                "dataset_size": 0.0,
                "extra_spaces": {k: json.dumps(serialize_space(s)) for k, s in self.extra_spaces.items()},
            }
        )
        meta.update(metadata)
        # The HDF5 file first, then the metadata that makes the folder a dataset.
        with h5py.File(self.data_path / MAIN_FILE, "w"):
            pass
        _atomic_write_json(self.data_path / METADATA_FILE, meta, self.fsync)
        return meta

    def _write_namespace_metadata(self) -> None:
        # Minari lists namespaces by a namespace_metadata.json in each namespace folder.
        root = datasets_root().resolve()
        folder = self.path.parent.resolve()
        ns = parse_dataset_id(self.dataset_id)[0]
        for _ in range(len(ns.split("/")) if ns else 0):
            if folder == root or root not in folder.parents:
                break
            f = folder / "namespace_metadata.json"
            if not f.exists():
                f.write_text("{}")
            folder = folder.parent

    def _open_existing(self, spec_json: str | None) -> dict[str, Any]:
        reader = MinariReader(self.path)
        meta = reader.metadata
        problems = []
        if meta.get("dataset_id") != self.dataset_id:
            problems.append(f"dataset_id: dataset has {meta.get('dataset_id')!r}, new data has {self.dataset_id!r}")
        for name, new in (("observation_space", self.observation_space), ("action_space", self.action_space)):
            old = json.loads(meta[name]) if isinstance(meta.get(name), str) else meta.get(name)
            if old != serialize_space(new):
                problems.append(f"{name}: dataset has {deserialize_space(old)}, new data has {new}")
        old_extras = {k: json.loads(v) for k, v in (meta.get("extra_spaces") or {}).items()}
        new_extras = {k: serialize_space(s) for k, s in self.extra_spaces.items()}
        if old_extras != new_extras:
            problems.append(f"extra_spaces: dataset has {sorted(old_extras)}, new data has {sorted(new_extras)}")
        old_jpeg = bool(meta.get("jpeg_encoding", True))
        if old_jpeg != self.jpeg_encoding:
            problems.append(f"jpeg_encoding: dataset has {old_jpeg}, new data has {self.jpeg_encoding}")
        problems += _spec_diff(meta.get("env_spec"), spec_json)
        if problems:
            raise DatasetMismatchError(
                f"cannot append to the dataset at {self.path}: it does not match the new data:\n  - "
                + "\n  - ".join(problems)
                + "\nlog into a new dataset id (e.g. bump the version -vN), or pass overwrite=True to replace it"
            )
        # Remove episodes written but never committed by a process that died between the two steps.
        committed = int(meta["total_episodes"])
        try:
            with h5py.File(self.data_path / MAIN_FILE, "a") as f:
                stale = [k for k in f.keys() if k.startswith("episode_") and int(k[8:]) >= committed]
                for k in stale:
                    del f[k]
        except OSError as e:
            raise DatasetError(
                f"cannot open {self.data_path / MAIN_FILE} to append to it: {e}; the file is damaged "
                "(was a writer killed while writing?) — log into a new dataset id or pass overwrite=True"
            ) from None
        return meta

    # -- properties ------------------------------------------------------------------------------

    @property
    def total_episodes(self) -> int:
        return int(self._metadata["total_episodes"])

    @property
    def total_steps(self) -> int:
        return int(self._metadata["total_steps"])

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the committed metadata.json."""
        return json.loads(json.dumps(self._metadata, default=_json_default))

    def update_metadata(self, metadata: Mapping[str, Any]) -> None:
        """Add or change metadata keys (not the ones the writer owns) and commit them atomically."""
        bad = _RESERVED_KEYS.intersection(metadata)
        if bad:
            raise ValueError(f"metadata keys {sorted(bad)} are set by the writer and cannot be updated")
        new = {**self._metadata, **metadata}
        _atomic_write_json(self.data_path / METADATA_FILE, new, self.fsync)
        self._metadata = json.loads(json.dumps(new, default=_json_default))

    # -- writing ---------------------------------------------------------------------------------

    def write_episodes(self, episodes: Sequence[EpisodeRecord], metadata: Mapping[str, Any] | None = None) -> list[int]:
        """Write finished episodes and commit them (with ``metadata`` updates, if any); returns their ids.

        When this returns, the episodes are on disk (and ``fsync``ed if ``fsync``) and counted in
        metadata.json; no later crash can lose them.

        Raises:
            ValueError: an episode whose arrays do not match the spaces or each other.
        """
        episodes = [e for e in episodes if len(e) > 0]
        if metadata:
            bad = _RESERVED_KEYS.intersection(metadata)
            if bad:
                raise ValueError(f"metadata keys {sorted(bad)} are set by the writer and cannot be updated")
        if not episodes:
            if metadata:
                self.update_metadata(metadata)
            return []
        for ep in episodes:
            self._check(ep)
        first = self.total_episodes
        main = self.data_path / MAIN_FILE
        with h5py.File(main, "a") as f:
            for k, ep in enumerate(episodes):
                self._write_group(f.create_group(f"episode_{first + k}"), first + k, ep)
        self._commit(len(episodes), sum(len(e) for e in episodes), metadata)
        return list(range(first, first + len(episodes)))

    def _commit(self, episodes: int, steps: int, metadata: Mapping[str, Any] | None = None) -> None:
        """Make the episodes just written durable, then count them in metadata.json (atomically)."""
        main = self.data_path / MAIN_FILE
        if metadata:
            self._metadata.update(json.loads(json.dumps(metadata, default=_json_default)))
        if self.fsync:
            fd = os.open(main, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._metadata["total_episodes"] = self.total_episodes + episodes
        self._metadata["total_steps"] = self.total_steps + steps
        self._metadata["dataset_size"] = round(main.stat().st_size / 1e6, 1)
        _atomic_write_json(self.data_path / METADATA_FILE, self._metadata, self.fsync)

    def copy_episodes(self, source: str | os.PathLike, indices: Sequence[int]) -> list[int]:
        """Append episodes of another dataset (same spaces), copying their HDF5 groups byte for byte.

        Nothing is decoded and re-encoded, so JPEG frames lose nothing more. Returns the new ids.

        Raises:
            DatasetMismatchError: the source's spaces, extra fields or image encoding differ.
        """
        reader = MinariReader(source)
        problems = []
        if reader.observation_space != self.observation_space or reader.action_space != self.action_space:
            problems.append(
                f"spaces: source has {reader.observation_space} / {reader.action_space}, "
                f"this dataset {self.observation_space} / {self.action_space}"
            )
        if set(reader.extra_spaces) != set(self.extra_spaces):
            problems.append(
                f"extra fields: source has {sorted(reader.extra_spaces)}, this dataset {sorted(self.extra_spaces)}"
            )
        if reader.jpeg_encoding != self.jpeg_encoding:
            problems.append(f"jpeg_encoding: source has {reader.jpeg_encoding}, this dataset {self.jpeg_encoding}")
        if problems:
            raise DatasetMismatchError(f"cannot copy episodes from {source}: " + "; ".join(problems))
        indices = [int(i) for i in indices]
        if not indices:
            return []
        first = self.total_episodes
        steps = 0
        main = self.data_path / MAIN_FILE
        with reader.open() as src, h5py.File(main, "a") as dst:
            for k, i in enumerate(indices):
                steps += reader._check_structure(src, i)
                src.copy(src[f"episode_{i}"], dst, name=f"episode_{first + k}")
                dst[f"episode_{first + k}"].attrs["id"] = first + k
        self._commit(len(indices), steps)
        return list(range(first, first + len(indices)))

    def _check(self, ep: EpisodeRecord) -> None:
        T = len(ep)
        problems = []
        for name, value, n in (("terminations", ep.terminations, T), ("truncations", ep.truncations, T)):
            if np.shape(value) != (n,):
                problems.append(f"{name} has shape {np.shape(value)}, expected ({n},)")
        for name, value, leaves, n in (
            ("observations", ep.observations, self._obs_leaves, T + 1),
            ("actions", ep.actions, self._act_leaves, T),
            *((f"extras[{k!r}]", ep.extras.get(k), self._extra_leaves[k], T) for k in self.extra_spaces),
        ):
            if value is None:
                problems.append(f"{name} is missing")
                continue
            for path, space in leaves:
                try:
                    shape = np.shape(get_leaf(value, path))
                except (KeyError, IndexError, TypeError):
                    problems.append(f"{name}{list(path)} is missing")
                    continue
                if shape != (n, *space.shape):
                    problems.append(
                        f"{name}{list(path) if path else ''} has shape {shape}, expected {(n, *space.shape)}"
                    )
        unknown = set(ep.extras) - set(self.extra_spaces)
        if unknown:
            problems.append(f"extras {sorted(unknown)} were not declared in extra_spaces {sorted(self.extra_spaces)}")
        if problems:
            raise ValueError(
                f"episode of {T} steps does not match the dataset {self.dataset_id!r}: " + "; ".join(problems)
            )

    def _write_group(self, g: h5py.Group, episode_id: int, ep: EpisodeRecord) -> None:
        rewards = np.asarray(ep.rewards, dtype=np.float64)
        _set_attr(g, "id", np.int64(episode_id))
        _set_attr(g, "total_steps", np.int64(len(rewards)))
        if ep.seed is not None:
            _set_attr(g, "seed", np.int64(ep.seed))
        _set_attr(g, "rewards_sum", np.float64(rewards.sum()))  # checked on load: rewards altered after writing
        for k, v in ep.attrs.items():
            g.attrs[k] = v
        self._write_leaves(g, "observations", ep.observations, self._obs_leaves)
        self._write_leaves(g, "actions", ep.actions, self._act_leaves)
        _new_dataset(g, "rewards", rewards)
        _new_dataset(g, "terminations", np.asarray(ep.terminations, dtype=bool))
        _new_dataset(g, "truncations", np.asarray(ep.truncations, dtype=bool))
        info_group = g.create_group("infos")
        if ep.infos:
            _write_info(info_group, ep.infos)
        if self.extra_spaces:
            xg = g.create_group("extras")
            for name, leaves in self._extra_leaves.items():
                self._write_leaves(xg, name, ep.extras[name], leaves)

    def _write_leaves(self, g: h5py.Group, name: str, value: Any, leaves: list[tuple[LeafPath, gym.Space]]) -> None:
        jpeg = self._jpeg_paths.get(name, set())
        for path, space in leaves:
            parent = g
            names = [name, *(_h5name(p) for p in path)]
            for n in names[:-1]:
                parent = parent.require_group(n)
            arr = np.asarray(get_leaf(value, path))
            if path in jpeg:
                frames = _encode_jpeg(np.asarray(arr, dtype=np.uint8))
                if len({len(f) for f in frames}) == 1:
                    parent.create_dataset(names[-1], data=np.stack(frames))
                else:
                    obj = np.empty(len(frames), dtype=object)
                    obj[:] = frames
                    parent.create_dataset(names[-1], data=obj, dtype=h5py.vlen_dtype(np.uint8))
            else:
                _new_dataset(parent, names[-1], arr.astype(space.dtype, copy=False))


def _new_dataset(parent: h5py.Group, name: str, arr: np.ndarray) -> None:
    """``parent.create_dataset(name, data=arr)`` through h5py's low-level API (half the cost per episode)."""
    arr = np.ascontiguousarray(arr)
    tid = h5py.h5t.py_create(arr.dtype, logical=True)
    sid = h5py.h5s.create_simple(arr.shape) if arr.shape else h5py.h5s.create(h5py.h5s.SCALAR)
    dset = h5py.h5d.create(parent.id, name.encode(), tid, sid)
    if arr.size:
        dset.write(h5py.h5s.ALL, h5py.h5s.ALL, arr)


def _set_attr(obj: h5py.Group, name: str, value: np.generic) -> None:
    """``obj.attrs[name] = value`` (a new numeric scalar) through h5py's low-level API."""
    arr = np.asarray(value)
    attr = h5py.h5a.create(obj.id, name.encode(), h5py.h5t.py_create(arr.dtype), h5py.h5s.create(h5py.h5s.SCALAR))
    attr.write(arr)


def _write_info(g: h5py.Group, infos: Mapping[str, Any]) -> None:
    for k, v in infos.items():
        if isinstance(v, Mapping):
            _write_info(g.create_group(k), v)
        else:
            arr = np.asarray(v)
            if arr.dtype.kind in "US":
                g.create_dataset(k, data=arr.astype(object), dtype=h5py.string_dtype())
            elif arr.dtype.kind in "biuf":
                g.create_dataset(k, data=arr)


# ----------------------------------------------------------------------------------------------
# reading


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """Open an HDF5 file for reading; a damaged or truncated file raises a DatasetError saying so."""
    try:
        return h5py.File(path, "r")
    except OSError as e:
        hint = (
            "the file is shorter than its header says (truncated: an interrupted copy or download?); "
            "copy or download it again"
            if "truncated" in str(e)
            else "the file is damaged or not HDF5; copy or regenerate it"
        )
        raise DatasetError(f"cannot read {path}: {e}; {hint}") from None


def _read_info(node: h5py.Group | h5py.Dataset) -> Any:
    if isinstance(node, h5py.Group):
        return {k: _read_info(v) for k, v in node.items()}
    if node.dtype.kind == "O" or h5py.check_string_dtype(node.dtype) is not None:
        # newer Minari stores infos as JSON strings, one per step
        values = [v.decode() if isinstance(v, bytes) else v for v in node[()]]
        try:
            return [json.loads(v) for v in values]
        except (TypeError, json.JSONDecodeError):
            return values
    return node[()]


class MinariReader:
    """Read a Minari dataset folder (any Minari version's HDF5 layout) with h5py and JSON.

    Args:
        path: the dataset folder (holding ``data/``) or its ``data/`` folder.

    Raises:
        DatasetError: no metadata.json, malformed metadata, or an unreadable HDF5 file.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        if (path / METADATA_FILE).exists() and not (path / "data" / METADATA_FILE).exists():
            data = path
        else:
            data = path / "data"
        meta_file = data / METADATA_FILE
        if not meta_file.exists():
            raise DatasetError(
                f"{path} is not a Minari dataset folder: {meta_file} does not exist "
                "(pass the folder that holds data/metadata.json, or a dataset id in $MINARI_DATASETS_PATH)"
            )
        try:
            self.metadata: dict[str, Any] = json.loads(meta_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DatasetError(f"{meta_file} is not valid JSON ({e}); the dataset's metadata is damaged") from None
        self.data_path = data
        self.file = data / MAIN_FILE
        missing = [
            k for k in ("total_episodes", "total_steps", "observation_space", "action_space") if k not in self.metadata
        ]
        if missing:
            raise DatasetError(f"{meta_file} lacks the keys {missing}; it is not a Minari dataset's metadata")
        fmt = self.metadata.get("data_format", "hdf5")
        if fmt != "hdf5":
            raise DatasetError(
                f"{path}: data_format {fmt!r} is not supported (only 'hdf5'); convert it with Minari "
                "to an hdf5 dataset first"
            )
        if not self.file.exists():
            raise DatasetError(f"{path}: {self.file} does not exist; the dataset's data file is missing")
        self.observation_space = deserialize_space(self.metadata["observation_space"])
        self.action_space = deserialize_space(self.metadata["action_space"])
        self.extra_spaces = {k: deserialize_space(v) for k, v in (self.metadata.get("extra_spaces") or {}).items()}
        self.jpeg_encoding = bool(self.metadata.get("jpeg_encoding", True))
        self.total_episodes = int(self.metadata["total_episodes"])
        self._obs_leaves = flatten_space(self.observation_space)
        self._act_leaves = flatten_space(self.action_space)
        self._extra_leaves = {k: flatten_space(s) for k, s in self.extra_spaces.items()}

    @property
    def env_spec(self) -> dict[str, Any] | None:
        spec = self.metadata.get("env_spec")
        if spec is None:
            return None
        try:
            return json.loads(spec) if isinstance(spec, str) else dict(spec)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{self.data_path}: env_spec in metadata.json is not valid JSON ({e})") from None

    def open(self) -> h5py.File:
        """Open the HDF5 file for reading (see :func:`open_hdf5`)."""
        return open_hdf5(self.file)

    def lengths(self, f: h5py.File) -> np.ndarray:
        """Steps of every committed episode, from the HDF5 headers; checks each episode's structure.

        Raises:
            DatasetError: a missing episode or field, or fields whose lengths or shapes disagree.
        """
        out = np.zeros(self.total_episodes, dtype=np.int64)
        for i in range(self.total_episodes):
            out[i] = self._check_structure(f, i)
        return out

    def _where(self, i: int) -> str:
        return f"episode {i} (group episode_{i} of {self.file})"

    def _check_structure(self, f: h5py.File, i: int) -> int:
        where = self._where(i)
        g = f.get(f"episode_{i}")
        if not isinstance(g, h5py.Group):
            raise DatasetError(
                f"{where} is missing: metadata.json says total_episodes={self.total_episodes} but the file "
                f"holds {sum(1 for k in f.keys() if k.startswith('episode_'))} episode groups; the data file is "
                "incomplete — regenerate the dataset"
            )
        for k in ("rewards", "terminations", "truncations"):
            if not isinstance(g.get(k), h5py.Dataset):
                raise DatasetError(f"{where}: the field {k!r} is missing")
        T = int(g["rewards"].shape[0]) if g["rewards"].ndim == 1 else -1
        if T < 0:
            raise DatasetError(f"{where}: rewards has shape {g['rewards'].shape}, expected (T,)")
        for k in ("terminations", "truncations"):
            if g[k].shape != (T,):
                raise DatasetError(f"{where}: {k} has shape {g[k].shape} but rewards has {T} steps; expected ({T},)")
        checks = [
            ("observations", g, self._obs_leaves, T + 1, self.jpeg_encoding),
            ("actions", g, self._act_leaves, T, self.jpeg_encoding),
        ]
        if self.extra_spaces:
            xg = g.get("extras")
            if not isinstance(xg, h5py.Group):
                raise DatasetError(
                    f"{where}: the group 'extras' is missing (metadata declares {sorted(self.extra_spaces)})"
                )
            checks += [(k, xg, leaves, T, False) for k, leaves in self._extra_leaves.items()]
        for name, parent, leaves, n, jpeg in checks:
            for path, space in leaves:
                key = "/".join([name, *(_h5name(p) for p in path)])
                ds = parent.get(key)
                label = key if parent is g else f"extras/{key}"
                if not isinstance(ds, h5py.Dataset):
                    raise DatasetError(f"{where}: the field {label!r} is missing")
                encoded = jpeg and is_jpeg_space(space) and ds.shape[1:] != space.shape
                expected = (n,) if encoded else (n, *space.shape)
                got = ds.shape[:1] if encoded else ds.shape
                if got != expected:
                    what = "T + 1" if name == "observations" else "T"
                    raise DatasetError(
                        f"{where}: {label} has shape {ds.shape}, expected {(n, *space.shape)} "
                        f"({what} rows for T={T} steps, each of the space's shape {space.shape})"
                    )
        attr = g.attrs.get("total_steps")
        if attr is not None and int(attr) != T:
            raise DatasetError(f"{where}: attribute total_steps={int(attr)} but the episode holds {T} steps")
        return T

    def _read_leaves(
        self, parent: h5py.Group, name: str, leaves: list[tuple[LeafPath, gym.Space]], jpeg: bool, where: str
    ) -> Any:
        out = {}
        for path, space in leaves:
            ds = parent["/".join([name, *(_h5name(p) for p in path)])]
            if jpeg and is_jpeg_space(space) and ds.shape[1:] != space.shape:
                out[path] = _decode_jpeg(ds[()], space.shape, f"{where}, {name}")
            else:
                out[path] = ds[()]
        return nest_leaves(out)

    def read_episode(self, f: h5py.File, i: int) -> Episode:
        """Read episode ``i`` from the open file ``f`` (structure checked, values not validated)."""
        where = self._where(i)
        self._check_structure(f, i)
        g = f[f"episode_{i}"]
        try:
            extras = {}
            if self.extra_spaces:
                xg = g["extras"]
                extras = {k: self._read_leaves(xg, k, leaves, False, where) for k, leaves in self._extra_leaves.items()}
            return Episode(
                observations=self._read_leaves(g, "observations", self._obs_leaves, self.jpeg_encoding, where),
                actions=self._read_leaves(g, "actions", self._act_leaves, self.jpeg_encoding, where),
                rewards=np.asarray(g["rewards"][()], dtype=np.float32),
                terminations=np.asarray(g["terminations"][()], dtype=bool),
                truncations=np.asarray(g["truncations"][()], dtype=bool),
                extras=extras,
                id=i,
            )
        except OSError as e:
            raise DatasetError(f"{where}: cannot read its data ({e}); the file is damaged — regenerate it") from None

    def read_infos(self, f: h5py.File, i: int) -> dict[str, Any]:
        """The recorded infos of episode ``i`` (``{}`` when none were recorded)."""
        node = f[f"episode_{i}"].get("infos")
        return {} if node is None else _read_info(node)

    def episode_attrs(self, f: h5py.File, i: int) -> dict[str, Any]:
        return dict(f[f"episode_{i}"].attrs)

    def iter_episodes(self, indices: Iterable[int] | None = None) -> Iterator[Episode]:
        """Read episodes one by one (one open file for all)."""
        with self.open() as f:
            for i in range(self.total_episodes) if indices is None else indices:
                yield self.read_episode(f, i)
