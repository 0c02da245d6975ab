"""Record every episode an env produces into a Minari-format dataset.

Episodes are buffered in memory, per sub-env, in preallocated columns (one row per step, one
column per sub-env), and written to the dataset's HDF5 file when they finish, before ``step``
returns. How durable a finished episode then is depends on ``durability``
(:mod:`tt_agents.data.durability`): ``"process-crash"`` (the default) hands it to the operating
system before ``step`` returns, without ``fsync``, so a crash or ``SIGKILL`` of the process loses
no finished episode (only the one in progress); ``"power-loss"`` also fsyncs the files on a
background thread, one ``fsync`` for every episode written since the last (group commit), so that
finished episodes survive a power loss too once ``sync()`` returns (``close()`` waits for it), and
the env loop never waits for the disk. The dataset lives in Minari's local store
(``$MINARI_DATASETS_PATH``, default ``~/.minari/datasets``) and opens with ``minari.load_dataset``
and :func:`tt_agents.data.load_dataset`; see :mod:`tt_agents.data.minari_io` for the format.

Each episode holds its ``T + 1`` observations (the last included), ``T`` actions, rewards,
terminations and truncations, optionally the infos (``record_infos=True``: the reset info, then
each step's info; only keys present at every step, with numeric values, are kept), and the extra
per-step fields declared in ``extra_spaces`` (latent actions, plans, ...), given before each step
with :meth:`ActionLogger.log_extras` or, failing that, taken from the step's ``info``.

An episode cut short by ``reset()`` or ``close()`` is written with its last step marked truncated
(Minari's convention) or dropped with ``unfinished="discard"``. Appending to an existing dataset
checks its spaces, env spec and extra fields and raises
:class:`~tt_agents.data.minari_io.DatasetMismatchError` on a mismatch.

- :class:`ActionLogger`: wraps a Gymnasium ``Env``.
- :class:`VectorActionLogger`: wraps a Gymnasium ``VectorEnv``; no autoreset step is ever
  recorded as a transition, in every autoreset mode (``NEXT_STEP``, ``SAME_STEP``, ``DISABLED``).
- :class:`MissingExtraError`: a declared extra field was not given for a step.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper

from tt_agents.data.durability import Durability, GroupCommitter, check_durability, fsync_dataset
from tt_agents.data.minari_io import (
    DatasetMismatchError,
    EpisodeRecord,
    MinariWriter,
    flatten_space,
    get_leaf,
    nest_leaves,
)
from tt_agents.rollout import AutoresetTracker

__all__ = ["ActionLogger", "MissingExtraError", "VectorActionLogger"]

Unfinished = Literal["truncate", "discard"]


class MissingExtraError(RuntimeError):
    """A declared extra field was given neither by ``log_extras`` nor in the step's info."""


def _unbatch_info(info: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s info from a vector env's batched info (``key`` + ``_key`` mask pairs)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if k.startswith("_") or k in ("final_obs", "final_info"):
            continue
        mask = info.get(f"_{k}")
        if mask is not None and not mask[i]:
            continue
        if isinstance(v, Mapping):
            out[k] = _unbatch_info(v, i)
        else:
            try:
                out[k] = v[i]
            except (TypeError, IndexError, KeyError):
                continue
    return out


def _stack_infos(infos: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack ``T + 1`` info dicts into arrays; keys missing at some step or not numeric are dropped."""
    out: dict[str, Any] = {}
    for k, first in infos[0].items():
        values = [d.get(k) for d in infos]
        if any(v is None for v in values):
            continue
        if isinstance(first, Mapping):
            if all(isinstance(v, Mapping) for v in values):
                sub = _stack_infos(values)
                if sub:
                    out[k] = sub
            continue
        try:
            arr = np.asarray(values)
        except ValueError:
            continue
        if arr.dtype.kind in "biuf" and arr.shape[:1] == (len(infos),):
            out[k] = arr
    return out


class _Recorder:
    """Episodes in progress of ``n`` sub-envs, buffered in columns of shape ``(rows, n, *leaf_shape)``.

    Row ``r`` holds the observation before step ``r`` and that step's action, reward, flags and
    extras. Each sub-env's current episode spans rows ``start[i]..row``; ``start[i] == -1`` means
    no episode is in progress. Rows before ``min(start)`` are dropped when the columns fill up.
    """

    def __init__(
        self,
        writer: MinariWriter,
        n: int,
        batched: bool,
        record_infos: bool,
        unfinished: Unfinished,
    ) -> None:
        self.writer = writer
        self.n = n
        self.batched = batched
        self.record_infos = record_infos
        self.unfinished = unfinished
        self.committer: GroupCommitter | None = None  # durability="power-loss": the background fsyncs
        self.cap = 64
        self.obs_leaves = flatten_space(writer.observation_space)
        self.act_leaves = flatten_space(writer.action_space)
        self.extra_leaves = {k: flatten_space(s) for k, s in writer.extra_spaces.items()}

        def cols(leaves: list) -> list[np.ndarray]:
            return [np.zeros((self.cap, n, *s.shape), dtype=s.dtype) for _, s in leaves]

        self.obs = cols(self.obs_leaves)
        self.act = cols(self.act_leaves)
        self.extras = {k: cols(leaves) for k, leaves in self.extra_leaves.items()}
        self.rew = np.zeros((self.cap, n), np.float64)
        self.term = np.zeros((self.cap, n), bool)
        self.trunc = np.zeros((self.cap, n), bool)
        self.row = 0
        self.start = np.full(n, -1, dtype=np.int64)
        self.seeds: list[int | None] = [None] * n
        self.infos: list[list[dict]] = [[] for _ in range(n)]
        self.seen_seeds: set[int] = set()
        self._seeds_committed: set[int] = set()

    # -- columns -------------------------------------------------------------------------------

    def _all(self) -> list[np.ndarray]:
        return [*self.obs, *self.act, *(c for cs in self.extras.values() for c in cs), self.rew, self.term, self.trunc]

    def _set_all(self, arrays: list[np.ndarray]) -> None:
        k = 0
        for group in (self.obs, self.act, *self.extras.values()):
            for j in range(len(group)):
                group[j] = arrays[k]
                k += 1
        self.rew, self.term, self.trunc = arrays[k:]

    def ensure(self, rows_ahead: int) -> None:
        """Make room for rows ``row .. row + rows_ahead - 1``, dropping rows no episode needs."""
        if self.row + rows_ahead <= self.cap:
            return
        active = self.start[self.start >= 0]
        lo = int(active.min()) if len(active) else self.row
        used = self.row + 1 - lo
        cap = self.cap
        while used + rows_ahead > cap // 2:  # keep at most half full after compaction: amortized O(1)
            cap *= 2
        new = []
        for a in self._all():
            b = a if cap == self.cap else np.zeros((cap, *a.shape[1:]), dtype=a.dtype)
            b[:used] = a[lo : self.row + 1]
            new.append(b)
        self._set_all(new)
        self.cap = cap
        self.start[self.start >= 0] -= lo
        self.row -= lo

    def put_obs(self, obs: Any, mask: np.ndarray | None = None, row: int | None = None) -> None:
        r = self.row if row is None else row
        for (path, _), col in zip(self.obs_leaves, self.obs):
            v = get_leaf(obs, path)
            if not self.batched:
                col[r, 0] = v
            elif mask is None:
                col[r] = v
            else:
                col[r, mask] = np.asarray(v)[mask]

    def put_step(self, action: Any, reward: Any, term: Any, trunc: Any, extras: Mapping[str, Any]) -> None:
        r = self.row
        for (path, _), col in zip(self.act_leaves, self.act):
            col[r] = get_leaf(action, path)
        for name, leaves in self.extra_leaves.items():
            for (path, _), col in zip(leaves, self.extras[name]):
                col[r] = get_leaf(extras[name], path)
        self.rew[r] = reward
        self.term[r] = term
        self.trunc[r] = trunc

    # -- episodes ------------------------------------------------------------------------------

    def begin(self, i: int, row: int, seed: int | None, info: dict | None) -> None:
        self.start[i] = row
        self.seeds[i] = seed
        if seed is not None:
            self.seen_seeds.add(int(seed))
        if self.record_infos:
            self.infos[i] = [info or {}]

    def in_progress(self, i: int) -> int:
        """Steps recorded so far in sub-env ``i``'s episode (0 when none is in progress)."""
        return self.row - int(self.start[i]) if self.start[i] >= 0 else 0

    def add_info(self, i: int, info: dict) -> None:
        if self.record_infos and self.start[i] >= 0:
            self.infos[i].append(info)

    def take(self, i: int, end: int, final_obs: Any = None, cut: bool = False) -> EpisodeRecord:
        """Sub-env ``i``'s episode of rows ``start..end``; its last observation is ``final_obs`` or row ``end + 1``."""
        s = int(self.start[i])
        if final_obs is None:
            obs = {p: col[s : end + 2, i].copy() for (p, _), col in zip(self.obs_leaves, self.obs)}
        else:
            obs = {
                p: np.concatenate([col[s : end + 1, i], np.asarray(get_leaf(final_obs, p), dtype=col.dtype)[None]])
                for (p, _), col in zip(self.obs_leaves, self.obs)
            }
        acts = {p: col[s : end + 1, i].copy() for (p, _), col in zip(self.act_leaves, self.act)}
        extras = {
            k: nest_leaves({p: col[s : end + 1, i].copy() for (p, _), col in zip(leaves, self.extras[k])})
            for k, leaves in self.extra_leaves.items()
        }
        trunc = self.trunc[s : end + 1, i].copy()
        term = self.term[s : end + 1, i].copy()
        if cut and len(trunc):
            trunc[-1] = not term[-1]
        infos = None
        if self.record_infos:
            infos = _stack_infos(self.infos[i][: end - s + 2]) if self.infos[i] else None
            self.infos[i] = []
        record = EpisodeRecord(
            observations=nest_leaves(obs),
            actions=nest_leaves(acts),
            rewards=self.rew[s : end + 1, i].copy(),
            terminations=term,
            truncations=trunc,
            infos=infos,
            extras=extras,
            seed=self.seeds[i],
        )
        self.start[i] = -1
        self.seeds[i] = None
        return record

    def cut(self, i: int) -> EpisodeRecord | None:
        """End sub-env ``i``'s episode in progress early (reset/close): truncated record, or None to drop."""
        steps = self.in_progress(i)
        if steps == 0 or self.unfinished == "discard":
            self.start[i] = -1
            self.infos[i] = []
            return None
        return self.take(i, self.row - 1, cut=True)

    def commit(self, records: list[EpisodeRecord]) -> None:
        """Write finished episodes, with the reset seeds seen so far in the metadata, in one commit."""
        meta = None
        if self.seen_seeds != self._seeds_committed:
            old = set(self.writer.metadata.get("seeds") or [])
            meta = {"seeds": sorted(old | self.seen_seeds)}
            self._seeds_committed = set(self.seen_seeds)
        if records or meta:
            self.writer.write_episodes(records, metadata=meta)
            if records and self.committer is not None:
                self.committer.written(self.writer.total_episodes)


def _make_writer(
    dataset_id: str | MinariWriter,
    observation_space: gym.Space,
    action_space: gym.Space,
    env_spec: EnvSpec | None,
    extra_spaces: Mapping[str, gym.Space] | None,
    metadata: Mapping[str, Any] | None,
    kwargs: dict[str, Any],
) -> MinariWriter:
    if isinstance(dataset_id, MinariWriter):
        w = dataset_id
        problems = []
        if w.observation_space != observation_space:
            problems.append(f"observation_space: writer has {w.observation_space}, env has {observation_space}")
        if w.action_space != action_space:
            problems.append(f"action_space: writer has {w.action_space}, env has {action_space}")
        if set(w.extra_spaces) != set(extra_spaces or {}):
            problems.append(
                f"extra_spaces: writer has {sorted(w.extra_spaces)}, logger has {sorted(extra_spaces or {})}"
            )
        if problems:
            raise DatasetMismatchError("the shared writer does not match this env: " + "; ".join(problems))
        if metadata:
            w.update_metadata(metadata)
        return w
    return MinariWriter(
        dataset_id,
        observation_space,
        action_space,
        env_spec=env_spec,
        extra_spaces=extra_spaces,
        metadata=metadata,
        **kwargs,
    )


def _writer_options(
    path: str | None, jpeg_encoding: bool, durability: str, fsync: bool | None, overwrite: bool
) -> dict[str, Any]:
    """The MinariWriter options of a logger; ``fsync=True`` (the old default) fsyncs before ``step`` returns."""
    check_durability(durability)
    return dict(path=path, jpeg_encoding=jpeg_encoding, fsync=bool(fsync), overwrite=overwrite)


def _committer(writer: MinariWriter, durability: str, fsync: bool | None) -> GroupCommitter | None:
    return GroupCommitter(writer.data_path) if durability == "power-loss" and not fsync else None


def _close_logger(rec: _Recorder, records: list[EpisodeRecord]) -> None:
    """Commit the last records, wait for their group commit (``"power-loss"``), release the dataset."""
    try:
        rec.commit(records)
    finally:
        if rec.committer is not None:
            committer, rec.committer = rec.committer, None
            committer.close()
        rec.writer.close()


def _check_unfinished(unfinished: str) -> None:
    if unfinished not in ("truncate", "discard"):
        raise ValueError(f"unfinished must be 'truncate' or 'discard', got {unfinished!r}")


class ActionLogger(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Record every episode of ``env`` into the Minari-format dataset ``dataset_id``.

    Args:
        env: the env to record.
        dataset_id: ``namespace/name-vN`` in the local store, or a :class:`MinariWriter` shared by
            several loggers (e.g. the sub-envs of an SB3 ``DummyVecEnv``).
        path: the dataset's folder instead of the local store's.
        record_infos: also record the infos (slower; numeric keys present at every step).
        extra_spaces: extra per-step fields to record, by name, with their spaces.
        metadata: dataset metadata such as ``algorithm_name``, ``policy``, ``ref_min_score``.
        jpeg_encoding: JPEG-encode image observations as Minari does (lossy; ``False``: raw).
        unfinished: what ``reset()``/``close()`` do with an episode in progress: ``"truncate"``
            writes it with its last step truncated, ``"discard"`` drops it.
        durability: ``"process-crash"`` (default): a finished episode is handed to the OS before
            ``step`` returns, so a crash or SIGKILL loses none; ``"power-loss"``: also fsynced on
            a background thread in groups (``sync()`` waits for it), see :mod:`tt_agents.data.durability`.
        fsync: ``True`` fsyncs before ``step`` returns (the env loop waits on the disk: the
            old default, kept for callers that pass it); ``None``/``False``: as ``durability`` says.
        overwrite: replace an existing dataset instead of appending to it.

    Raises:
        DatasetMismatchError: the dataset exists with other spaces, env spec or extra fields.

    Example:
        >>> import tempfile
        >>> folder = tempfile.mkdtemp() + "/cartpole/demo-v0"  # default: the local Minari store
        >>> env = ActionLogger(gym.make("CartPole-v1"), "cartpole/demo-v0", path=folder, fsync=False)
        >>> obs, _ = env.reset(seed=0)
        >>> done = False
        >>> while not done:
        ...     obs, r, term, trunc, _ = env.step(env.action_space.sample())
        ...     done = term or trunc
        >>> env.writer.total_episodes
        1
    """

    def __init__(
        self,
        env: gym.Env,
        dataset_id: str | MinariWriter,
        *,
        path: str | None = None,
        record_infos: bool = False,
        extra_spaces: Mapping[str, gym.Space] | None = None,
        metadata: Mapping[str, Any] | None = None,
        jpeg_encoding: bool = True,
        unfinished: Unfinished = "truncate",
        durability: Durability = "process-crash",
        fsync: bool | None = None,
        overwrite: bool = False,
    ) -> None:
        _check_unfinished(unfinished)
        gym.utils.RecordConstructorArgs.__init__(
            self,
            dataset_id=dataset_id if isinstance(dataset_id, str) else dataset_id.dataset_id,
            record_infos=record_infos,
            jpeg_encoding=jpeg_encoding,
            unfinished=unfinished,
        )
        gym.Wrapper.__init__(self, env)
        self.writer = _make_writer(
            dataset_id,
            env.observation_space,
            env.action_space,
            env.spec,
            extra_spaces,
            metadata,
            _writer_options(path, jpeg_encoding, durability, fsync, overwrite),
        )
        self.durability = durability
        self._rec = _Recorder(self.writer, 1, batched=False, record_infos=record_infos, unfinished=unfinished)
        self._rec.committer = _committer(self.writer, durability, fsync)
        self._pending: dict[str, Any] = {}

    def log_extras(self, **values: Any) -> None:
        """Give the extra fields of the next ``step`` (one value per declared name)."""
        unknown = set(values) - set(self.writer.extra_spaces)
        if unknown:
            raise KeyError(f"extras {sorted(unknown)} were not declared; declared: {sorted(self.writer.extra_spaces)}")
        self._pending.update(values)

    def update_metadata(self, **metadata: Any) -> None:
        """Add or change dataset metadata (e.g. reference scores once they are known)."""
        self.writer.update_metadata(metadata)

    def sync(self) -> int:
        """Wait until every finished episode survives a power loss; returns how many are committed.

        With ``durability="power-loss"`` it waits for the background group commit; otherwise it
        fsyncs the dataset now (in this thread).
        """
        if self._rec.committer is not None:
            return self._rec.committer.sync()
        fsync_dataset(self.writer.data_path)
        return self.writer.total_episodes

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        rec = self._rec
        record = rec.cut(0)
        obs, info = self.env.reset(seed=seed, options=options)
        rec.row = 0
        rec.put_obs(obs)
        rec.begin(0, 0, seed, info)
        rec.commit([record] if record is not None else [])
        self._pending = {}
        return obs, info

    def step(self, action: Any) -> tuple[Any, Any, bool, bool, dict[str, Any]]:
        rec = self._rec
        if rec.start[0] < 0:
            # stepping a finished episode without reset: the env (or OrderEnforcing) decides; record nothing
            return self.env.step(action)
        rec.ensure(2)
        obs, reward, terminated, truncated, info = self.env.step(action)
        try:
            extras = _extras(self.writer.extra_spaces, self._pending, info)
        except MissingExtraError:
            rec.start[0] = -1  # the episode has a step without its extras: drop it, record from the next reset
            raise
        finally:
            self._pending = {}
        rec.put_step(action, reward, terminated, truncated, extras)
        rec.put_obs(obs, row=rec.row + 1)
        rec.add_info(0, info)
        rec.row += 1
        if terminated or truncated:
            rec.commit([rec.take(0, rec.row - 1)])
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        record = self._rec.cut(0)
        _close_logger(self._rec, [record] if record is not None else [])
        super().close()


def _missing(name: str, n: int | None) -> MissingExtraError:
    return MissingExtraError(
        f"extra field {name!r} was not given for this step: call log_extras({name}=...) before step(), "
        f"or have the env put it in info[{name!r}]"
        + ("" if n is None else f" (a batch of {n} values, one per sub-env)")
    )


def _extras(spaces: Mapping[str, gym.Space], pending: Mapping[str, Any], info: Mapping[str, Any]) -> dict:
    out = {}
    for name in spaces:
        if name in pending:
            out[name] = pending[name]
        elif name in info:
            out[name] = info[name]
        else:
            raise _missing(name, None)
    return out


def _vector_extras(
    spaces: Mapping[str, gym.Space],
    pending: Mapping[str, Any],
    info: Mapping[str, Any],
    needed: np.ndarray,
    same_step_done: np.ndarray | None,
) -> dict:
    """Batched extras from ``log_extras`` or the batched info (the final info of sub-envs a SAME_STEP reset)."""
    out = {}
    final = info.get("final_info", {}) if same_step_done is not None else {}
    for name in spaces:
        if name in pending:
            out[name] = pending[name]
            continue
        if name not in info and name not in final:
            raise _missing(name, len(needed))
        n = len(needed)
        value = np.array(info[name]) if name in info else None
        have = np.asarray(info.get(f"_{name}", np.ones(n, bool) if name in info else np.zeros(n, bool)), bool).copy()
        if same_step_done is not None and same_step_done.any():
            have &= ~same_step_done
            if name in final:
                fmask = np.asarray(final.get(f"_{name}", np.ones(n, bool)), bool) & same_step_done
                if value is None:
                    value = np.zeros_like(np.asarray(final[name]))
                value[fmask] = np.asarray(final[name])[fmask]
                have |= fmask
        if not np.all(have[needed]):
            raise _missing(name, n)
        out[name] = value
    return out


def _single_env_spec(env: VectorEnv) -> EnvSpec | None:
    """The spec of one sub-env of a vector env (without make_vec's vector arguments)."""
    envs = getattr(env.unwrapped, "envs", None)
    if envs:
        spec = getattr(envs[0], "spec", None)
        if spec is not None:
            return spec
    spec = getattr(env, "spec", None) or getattr(env.unwrapped, "spec", None)
    if spec is None:
        return None
    spec = copy.deepcopy(spec)
    kwargs = dict(spec.kwargs)
    for k in ("num_envs", "vectorization_mode", "vector_kwargs", "wrappers"):
        kwargs.pop(k, None)
    if "max_episode_steps" in kwargs:
        spec.max_episode_steps = kwargs.pop("max_episode_steps")
    spec.kwargs = kwargs
    return spec


class VectorActionLogger(VectorWrapper):
    """Record every episode of every sub-env of a vector env into one Minari-format dataset.

    Episodes are written in the order they finish. Each autoreset mode is handled so that no
    autoreset step becomes a transition: ``NEXT_STEP`` (the step after a done only resets that
    sub-env), ``SAME_STEP`` (the last observation is ``info["final_obs"]``) and ``DISABLED``
    (a done sub-env is idle until ``reset(options={"reset_mask": ...})``). The mode is read from
    ``env.metadata["autoreset_mode"]`` (Gymnasium's default, ``NEXT_STEP``, when absent).

    Args:
        env: the vector env.
        dataset_id, path, record_infos, extra_spaces, metadata, jpeg_encoding, unfinished, durability, fsync,
            overwrite: as for :class:`ActionLogger`; extras are given batched, ``(num_envs, ...)``.
        env_spec: the spec recorded in the dataset; default: one sub-env's spec.

    Example:
        >>> import tempfile
        >>> envs = VectorActionLogger(
        ...     gym.make_vec("CartPole-v1", num_envs=2), "cartpole/vec-v0", path=tempfile.mkdtemp(), fsync=False
        ... )
        >>> _ = envs.reset(seed=0)
        >>> for _ in range(100):
        ...     _ = envs.step(envs.action_space.sample())
        >>> envs.writer.total_episodes > 0
        True
    """

    def __init__(
        self,
        env: VectorEnv,
        dataset_id: str | MinariWriter,
        *,
        path: str | None = None,
        record_infos: bool = False,
        extra_spaces: Mapping[str, gym.Space] | None = None,
        metadata: Mapping[str, Any] | None = None,
        jpeg_encoding: bool = True,
        unfinished: Unfinished = "truncate",
        durability: Durability = "process-crash",
        fsync: bool | None = None,
        overwrite: bool = False,
        env_spec: EnvSpec | None = None,
    ) -> None:
        _check_unfinished(unfinished)
        super().__init__(env)
        self._tracker = AutoresetTracker(env, allow_disabled=True)  # which rows start, which steps only reset
        self.autoreset_mode = self._tracker.mode
        meta = {"autoreset_mode": self.autoreset_mode.value, **(metadata or {})}
        self.writer = _make_writer(
            dataset_id,
            env.single_observation_space,
            env.single_action_space,
            env_spec if env_spec is not None else _single_env_spec(env),
            extra_spaces,
            meta,
            _writer_options(path, jpeg_encoding, durability, fsync, overwrite),
        )
        self.durability = durability
        self._rec = _Recorder(self.writer, env.num_envs, batched=True, record_infos=record_infos, unfinished=unfinished)
        self._rec.committer = _committer(self.writer, durability, fsync)
        self._pending: dict[str, Any] = {}

    log_extras = ActionLogger.log_extras
    update_metadata = ActionLogger.update_metadata
    sync = ActionLogger.sync

    @property
    def steps_in_progress(self) -> int:
        """Steps recorded in episodes not yet finished (not yet on disk)."""
        return sum(self._rec.in_progress(i) for i in range(self.num_envs))

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        rec, n = self._rec, self.num_envs
        mask = None if options is None else options.get("reset_mask")
        targets = np.ones(n, bool) if mask is None else np.asarray(mask, dtype=bool)
        records = [r for i in np.flatnonzero(targets) if (r := rec.cut(int(i))) is not None]
        obs, info = self.env.reset(seed=seed, options=options)
        if mask is None:
            rec.row = 0
            rec.put_obs(obs)
        else:
            rec.ensure(1)
            rec.put_obs(obs, mask=targets)
        seeds: list[int | None]
        if seed is None:
            seeds = [None] * n
        elif isinstance(seed, int):
            seeds = [seed + i for i in range(n)]
        else:
            seeds = list(seed)
        for i in np.flatnonzero(targets):
            rec.begin(int(i), rec.row, seeds[i], _unbatch_info(info, int(i)) if rec.record_infos else None)
        self._tracker.reset(targets)
        self._pending = {}
        rec.commit(records)
        return obs, info

    def step(self, actions: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        rec = self._rec
        if rec.row + 2 > rec.cap:
            rec.ensure(2)
        obs, rewards, terminations, truncations, info = self.env.step(actions)
        dones = np.asarray(terminations, dtype=bool) | np.asarray(truncations, dtype=bool)
        self._tracker.step(terminations, truncations)
        extras = {}
        if self.writer.extra_spaces:
            same_step = dones if self.autoreset_mode is AutoresetMode.SAME_STEP else None
            try:
                extras = _vector_extras(self.writer.extra_spaces, self._pending, info, rec.start >= 0, same_step)
            except MissingExtraError:
                # these episodes have a step without its extras: drop them, record from each sub-env's next episode
                rec.start[:] = -1
                raise
            finally:
                self._pending = {}
        self._pending = {}
        r = rec.row
        rec.put_step(actions, rewards, terminations, truncations, extras)
        rec.put_obs(obs, row=r + 1)
        rec.row = r + 1
        if rec.record_infos:
            self._add_infos(r, dones, info)
        if dones.any() or self._tracker.episode_start.any():
            self._end_episodes(r, dones, info)
        elif rec.seen_seeds != rec._seeds_committed:
            rec.commit([])
        return obs, rewards, terminations, truncations, info

    def _add_infos(self, r: int, dones: np.ndarray, info: dict[str, Any]) -> None:
        rec = self._rec
        for i in np.flatnonzero(rec.start >= 0):
            i = int(i)
            if self.autoreset_mode is AutoresetMode.SAME_STEP and dones[i]:
                rec.add_info(i, _unbatch_info(info.get("final_info", {}), i))
            else:
                rec.add_info(i, _unbatch_info(info, i))

    def _end_episodes(self, r: int, dones: np.ndarray, info: dict[str, Any]) -> None:
        """Write the episodes that ended at step row ``r`` and start the ones that began after it."""
        rec, mode = self._rec, self.autoreset_mode
        finished = np.flatnonzero(dones & (rec.start >= 0))
        records = []
        if mode is AutoresetMode.SAME_STEP:
            final_obs = info.get("final_obs")
            if len(finished) and final_obs is None:
                raise RuntimeError(
                    "the vector env declares autoreset_mode SAME_STEP but gave no info['final_obs'] for a done sub-env"
                )
            for i in finished:
                records.append(rec.take(int(i), r, final_obs=final_obs[i]))
            # every sub-env that ended (recorded or not) returned its new episode's first observation
            for i in np.flatnonzero(self._tracker.episode_start):
                rec.begin(int(i), r + 1, None, _unbatch_info(info, int(i)) if rec.record_infos else None)
        else:
            for i in finished:
                records.append(rec.take(int(i), r))
            if mode is AutoresetMode.NEXT_STEP:
                # sub-envs reset by this step: their new episode starts at the observation just returned
                for i in np.flatnonzero(self._tracker.episode_start):
                    rec.begin(int(i), r + 1, None, _unbatch_info(info, int(i)) if rec.record_infos else None)
        rec.commit(records)

    def close(self, **kwargs: Any) -> None:
        rec = self._rec
        records = [r for i in range(self.num_envs) if (r := rec.cut(i)) is not None]
        _close_logger(rec, records)
        super().close(**kwargs)
