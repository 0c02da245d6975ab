"""Exact checkpoint and resume of Stable-Baselines3 training (SAC, TD3, PPO), without pickle.

SB3's own ``model.save`` and ``save_replay_buffer`` pickle parts of the model and the whole buffer,
and restart the envs on load, so a resumed run neither reads safely nor continues the same run.
Here a training state is three plain files in one folder, written atomically:

- ``state.json``: step counters, the Python, NumPy and action-space RNG states, each env's reset
  record (below), and the caller's ``extra`` (JSON);
- ``arrays.npz``: the replay buffer, the last observation, NumPy's RNG key, each env's actions since
  its last reset (read with ``allow_pickle=False``);
- ``weights.pt``: the policy's and the optimizers' state dicts, SAC's entropy coefficient and
  torch's RNG state (read with ``torch.load(weights_only=True)``).

A checkpoint is taken at the start of a rollout (after the previous gradient steps, before the next
env step), so nothing is half done. The envs cannot be pickled mid-episode in general, so each is
wrapped in :class:`ReplayableEnv`, which keeps the RNG state its last ``reset`` drew from and the
actions stepped since; on resume a fresh env is reset from that RNG state and the actions are
stepped again, which brings a deterministic env (MuJoCo, classic control; Box2D inside
:class:`RebuildOnReset`) back to the same state — checked against the saved observation, and
refused if it differs. An env whose next episode depends on more than its reset RNG (Procgen: the
game's own RNG picks the next level) can say where it was itself: if the unwrapped env has
``get_state()`` (bytes) and ``set_state(bytes)``, the state at each reset is kept too (in
``arrays.npz``) and set again before the replay. The wrappers inside ``ReplayableEnv``
(a logger, ``Monitor``, the time limit) see the same steps again, so their partial episodes are
rebuilt as well.

Example:
    >>> import tempfile, gymnasium as gym
    >>> from stable_baselines3 import TD3
    >>> from stable_baselines3.common.logger import Logger
    >>> from stable_baselines3.common.vec_env import DummyVecEnv
    >>> make = lambda: DummyVecEnv([lambda: ReplayableEnv(gym.make("Pendulum-v1"))])
    >>> model = TD3("MlpPolicy", make(), learning_starts=50, seed=0)
    >>> model.set_logger(Logger(None, []))  # no statistics written (SB3's default logger makes a /tmp/SB3-* folder)
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     _ = model.learn(250, callback=ResumeCheckpoints(folder, every=100))  # checkpoints at steps 100 and 200
    ...     model2 = TD3("MlpPolicy", make(), learning_starts=50, seed=0)
    ...     load_training_state(model2, folder)["num_timesteps"]
    200
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from .utils import atomic_write_bytes, fsync_dir, fsync_file

__all__ = ["RebuildOnReset", "ReplayableEnv", "ResumeCheckpoints", "ResumeError", "latest_checkpoint",
           "load_training_state", "needs_rebuild", "save_training_state"]

FORMAT = "tt-agents-sb3-resume-1"
LATEST = "LATEST"


class ResumeError(ValueError):
    """A training state that cannot be resumed exactly (missing, of another run, or an env that does not replay)."""


# ----------------------------------------------------------------------------------------------
# envs that can be brought back


def _rng_state(env: gym.Env) -> dict[str, Any] | None:
    rng = getattr(env.unwrapped, "_np_random", None)
    return None if rng is None else rng.bit_generator.state


def _generator(state: dict[str, Any]) -> np.random.Generator:
    """A NumPy generator continuing from a ``bit_generator.state``."""
    bit_gen = getattr(np.random, state["bit_generator"])()
    bit_gen.state = state
    return np.random.Generator(bit_gen)


def _set_rng_state(env: gym.Env, state: dict[str, Any]) -> None:
    env.unwrapped.np_random = _generator(state)


def _has_state(env: gym.Env) -> bool:
    """The env can save and restore its whole state itself (``get_state`` / ``set_state``, bytes)."""
    return callable(getattr(env.unwrapped, "get_state", None)) and callable(getattr(env.unwrapped, "set_state", None))


class ReplayableEnv(gym.Wrapper):
    """Remembers how to bring the env back to where it is: its last reset and the actions since.

    Put it outside every wrapper whose state should be rebuilt on resume (loggers, ``Monitor``).
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._reset: dict[str, Any] | None = None
        self._actions: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        # the RNG state the reset draws from (a seed replaces it, so then the seed is enough)
        self._reset = {"seed": seed, "options": options, "rng": None if seed is not None else _rng_state(self.env)}
        self._actions = []
        out = self.env.reset(seed=seed, options=options)
        if _has_state(self.env):
            self._reset["state"] = self.env.unwrapped.get_state()  # where the episode starts, whatever led there
        return out

    def step(self, action: Any) -> Any:
        self._actions.append(np.array(action, copy=True))
        return self.env.step(action)

    def snapshot(self) -> tuple[dict[str, Any], np.ndarray]:
        """``(record, actions)``: the reset record (JSON-able but for its ``state``: the env's own bytes, where
        it has ``get_state``) and the actions since it, stacked."""
        if self._reset is None:
            raise ResumeError("the env was never reset, so there is nothing to bring back")
        if self._reset["seed"] is None and self._reset["rng"] is None and self._reset.get("state") is None:
            raise ResumeError("the env's last reset drew from an unseeded RNG; seed the first reset to resume")
        space = self.env.action_space
        acts = np.stack(self._actions) if self._actions else np.zeros((0, *space.shape), space.dtype)
        return dict(self._reset), acts

    def restore(self, record: dict[str, Any], actions: np.ndarray) -> Any:
        """Reset as recorded and step ``actions`` again; returns the observation reached."""
        if record["rng"] is not None:
            _set_rng_state(self.env, record["rng"])
        if record.get("state") is not None:
            if not _has_state(self.env):
                raise ResumeError("the checkpoint holds the env's own state, but this env has no set_state()")
            self.env.unwrapped.set_state(record["state"])  # the episode's start; the reset below keeps it
            obs, _ = self.reset(seed=None, options=record["options"])
        else:
            obs, _ = self.reset(seed=record["seed"], options=record["options"])
        for a in actions:
            obs, _, terminated, truncated, _ = self.step(a)
            if terminated or truncated:
                raise ResumeError("the env ended an episode while its saved steps were replayed: it is not "
                                  "deterministic given its reset RNG, so it cannot be resumed exactly")
        return obs


class RebuildOnReset(gym.Wrapper):
    """Builds a new env at every reset, drawing from the RNG state the old one had reached.

    Box2D keeps one world for an env's life, and how it solves contacts after a reset depends on the
    bodies it held before, so a fresh env replaying an episode reaches the same observations but not
    quite the same state, and the runs part later. An env rebuilt at every reset has no such history,
    so :class:`ReplayableEnv` brings it back exactly. (MuJoCo resets all of its state and needs none.)
    """

    def __init__(self, factory: Any) -> None:
        self._factory = factory
        super().__init__(factory())

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        state = _rng_state(self.env)
        self.env.close()
        self.env = self._factory()
        if seed is None and state is not None:
            _set_rng_state(self.env, state)
        return self.env.reset(seed=seed, options=options)


def needs_rebuild(env: gym.Env) -> bool:
    """Whether ``env`` keeps state across resets that a replay cannot rebuild (Box2D's world)."""
    return type(env.unwrapped).__module__.startswith("gymnasium.envs.box2d")


def _replayable(venv: Any) -> list[ReplayableEnv]:
    envs = getattr(venv, "envs", None)
    if envs is None or not all(isinstance(e, ReplayableEnv) for e in envs):
        raise ResumeError("resumable training needs a DummyVecEnv of ReplayableEnv-wrapped envs "
                          "(DummyVecEnv([lambda: ReplayableEnv(make_env()) ...]))")
    return envs


def _as_the_model_sees_it(venv: Any, obs: np.ndarray) -> np.ndarray:
    """One sub-env's observation after SB3's vector wrappers (``VecTransposeImage`` puts images channels
    first: the model's ``_last_obs`` is in that layout)."""
    from stable_baselines3.common.vec_env import VecTransposeImage, unwrap_vec_wrapper

    transpose = unwrap_vec_wrapper(venv, VecTransposeImage)
    return obs if transpose is None else transpose.transpose_observations(obs[None])[0]


# ----------------------------------------------------------------------------------------------
# the state


def _torch_vars(model: Any) -> dict[str, torch.nn.Module | torch.optim.Optimizer | torch.Tensor]:
    dicts, variables = model._get_torch_save_params()
    out: dict[str, Any] = {}
    for name in [*dicts, *variables]:
        obj = model
        for part in name.split("."):
            obj = getattr(obj, part)
        out[name] = obj
    return out


_BUFFER_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


def save_training_state(model: Any, folder: str | os.PathLike, extra: dict[str, Any] | None = None,
                        torch_rng: torch.Tensor | None = None) -> Path:
    """Write ``model``'s training state as ``folder/step_<n>`` and point ``folder/LATEST`` at it.

    ``torch_rng`` replaces the current torch RNG state in the checkpoint (see :class:`ResumeCheckpoints`).
    Older checkpoints in ``folder`` are removed once the new one is in place.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    envs = _replayable(model.env)
    name = f"step_{model.num_timesteps}"
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    arrays: dict[str, np.ndarray] = {}
    records = []
    for i, env in enumerate(envs):
        rec, acts = env.snapshot()
        state = rec.pop("state", None)
        if state is not None:
            arrays[f"env{i}_state"] = np.frombuffer(state, np.uint8)
            rec["state_sha256"] = hashlib.sha256(state).hexdigest()  # checked before the env parses it
        records.append(rec)
        arrays[f"env{i}_actions"] = acts
    np_state = np.random.get_state()
    arrays["numpy_key"] = np_state[1]
    arrays["last_obs"] = np.asarray(model._last_obs)
    arrays["last_episode_starts"] = np.asarray(model._last_episode_starts)
    buffer = getattr(model, "replay_buffer", None)
    buffer_meta = None
    if buffer is not None:
        n = buffer.buffer_size if buffer.full else buffer.pos
        for f in _BUFFER_FIELDS:
            if getattr(buffer, f, None) is not None:
                arrays[f"buffer_{f}"] = getattr(buffer, f)[:n]
        buffer_meta = {"pos": int(buffer.pos), "full": bool(buffer.full), "size": int(buffer.buffer_size)}
    state = {
        "format": FORMAT,
        "algo": type(model).__name__,
        "num_timesteps": int(model.num_timesteps),
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "episode_num": int(model._episode_num),
        "python_random": _to_json(random.getstate()),
        "numpy_random": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "action_space_rng": model.action_space.np_random.bit_generator.state,
        "envs": records,
        "buffer": buffer_meta,
        "extra": extra or {},
    }
    weights = {name: (obj.detach().clone() if isinstance(obj, torch.Tensor) else obj.state_dict())
               for name, obj in _torch_vars(model).items()}
    weights["__torch_rng__"] = torch.get_rng_state() if torch_rng is None else torch_rng
    torch.save(weights, tmp / "weights.pt")
    with open(tmp / "arrays.npz", "wb") as fh:
        np.savez(fh, **arrays)
    (tmp / "state.json").write_text(json.dumps(state, default=_json_default))
    for f in tmp.iterdir():
        fsync_file(f)
    final = folder / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(folder)
    atomic_write_bytes(folder / LATEST, name.encode())
    for old in folder.glob("step_*"):
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint ``folder/LATEST`` points at, or ``None`` if there is none."""
    pointer = Path(folder) / LATEST
    if not pointer.exists():
        return None
    path = Path(folder) / pointer.read_text().strip()
    return path if (path / "state.json").exists() else None


def load_training_state(model: Any, folder: str | os.PathLike) -> dict[str, Any]:
    """Bring a freshly built ``model`` (same class, arguments and env) to the state saved in ``folder``.

    Returns the saved state (its ``extra`` is the caller's). Train on with
    ``model.learn(total - state["num_timesteps"], reset_num_timesteps=False)``.

    Raises:
        ResumeError: no checkpoint, one of another algorithm, a buffer of another size, or envs that
            do not come back to the saved observation.
    """
    path = latest_checkpoint(folder)
    if path is None:
        raise ResumeError(f"no training checkpoint in {folder} (nothing to resume); start without --resume")
    state = json.loads((path / "state.json").read_text())
    if state.get("format") != FORMAT:
        raise ResumeError(f"{path} is not a training checkpoint of this version (format {state.get('format')!r})")
    if state["algo"] != type(model).__name__:
        raise ResumeError(f"{path} holds {state['algo']} training, not {type(model).__name__}")
    with np.load(path / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    weights = torch.load(path / "weights.pt", weights_only=True, map_location=model.device)
    for name, obj in _torch_vars(model).items():
        if isinstance(obj, torch.Tensor):
            with torch.no_grad():
                obj.copy_(weights[name])  # in place: the optimizer holds this very tensor
        else:
            obj.load_state_dict(weights[name])
    buffer = getattr(model, "replay_buffer", None)
    meta = state["buffer"]
    if (buffer is None) != (meta is None) or (meta is not None and meta["size"] != buffer.buffer_size):
        raise ResumeError(f"{path}: the replay buffer does not match the model's (size {meta and meta['size']})")
    if buffer is not None:
        for f in _BUFFER_FIELDS:
            if f"buffer_{f}" in arrays:
                src = arrays[f"buffer_{f}"]
                getattr(buffer, f)[: len(src)] = src
        buffer.pos, buffer.full = meta["pos"], meta["full"]
    envs = _replayable(model.env)
    if len(envs) != len(state["envs"]):
        raise ResumeError(f"{path} was saved with {len(state['envs'])} envs, the model has {len(envs)}")
    for i, (env, rec) in enumerate(zip(envs, state["envs"])):
        if f"env{i}_state" in arrays or "state_sha256" in rec:
            saved = arrays[f"env{i}_state"].tobytes() if f"env{i}_state" in arrays else b""
            # the env's own parser (Procgen's C++) gets only the bytes that were saved: a damaged file stops here
            # (checkpoints from before the hash was recorded have none to check)
            if "state_sha256" in rec and hashlib.sha256(saved).hexdigest() != rec["state_sha256"]:
                raise ResumeError(f"{path}: env {i}'s saved state is damaged or missing (its SHA-256 differs from "
                                  f"the one recorded); resume from an intact copy or start without --resume")
            rec = {**rec, "state": saved}
        obs = env.restore(rec, arrays[f"env{i}_actions"])
        if not np.array_equal(_as_the_model_sees_it(model.env, np.asarray(obs)), arrays["last_obs"][i]):
            raise ResumeError(f"env {i} did not come back to the saved observation after replaying its "
                              f"{len(arrays[f'env{i}_actions'])} steps: it is not deterministic given its "
                              "reset RNG, so this run cannot be resumed exactly")
    model._last_obs = arrays["last_obs"]
    model._last_episode_starts = arrays["last_episode_starts"]
    model.num_timesteps = state["num_timesteps"]
    model._episode_num = state["episode_num"]
    if hasattr(model, "_n_updates"):
        model._n_updates = state["n_updates"]
    model.action_space._np_random = _generator(state["action_space_rng"])
    name, pos, has_gauss, cached = state["numpy_random"]
    np.random.set_state((name, arrays["numpy_key"], pos, has_gauss, cached))
    random.setstate(_from_json(state["python_random"]))
    torch.set_rng_state(weights["__torch_rng__"])
    return state


def _to_json(x: Any) -> Any:
    return [_to_json(v) for v in x] if isinstance(x, tuple) else x


def _from_json(x: Any) -> Any:
    return tuple(_from_json(v) for v in x) if isinstance(x, list) else x


def _json_default(x: Any) -> Any:
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"cannot write {type(x).__name__} to state.json")


# ----------------------------------------------------------------------------------------------
# the callback


def _callback_base() -> type:
    from tt_agents.utils import import_sb3

    import_sb3()
    from stable_baselines3.common.callbacks import BaseCallback

    return BaseCallback


class ResumeCheckpoints(_callback_base()):  # type: ignore[misc]
    """Save the training state every ``every`` env steps (at the next rollout start), and on SIGINT/SIGTERM.

    Args:
        folder: where the checkpoints go (only the latest is kept).
        every: env steps between checkpoints; 0 checkpoints only on a signal.
        extra: called at each checkpoint; its dict is saved with it (the caller's own state).
        on_rollout_start: called at each rollout start before the checkpoint (e.g. evaluations), so
            that what it records is in the checkpoint taken at the same moment.
        handle_signals: on SIGINT or SIGTERM, checkpoint at the next rollout start and stop training
            (``self.interrupted`` is then the signal number).
    """

    def __init__(self, folder: str | os.PathLike, every: int, extra: Any = None, on_rollout_start: Any = None,
                 handle_signals: bool = False) -> None:
        super().__init__(verbose=0)
        self.folder, self.every = Path(folder), int(every)
        self.extra_fn, self.rollout_fn = extra, on_rollout_start
        self.handle_signals = handle_signals
        self.interrupted: int | None = None
        self._signal: int | None = None
        self._old_handlers: dict[int, Any] = {}
        self._pre_noise_rng: torch.Tensor | None = None
        self.last_saved: Path | None = None

    def _on_training_start(self) -> None:
        self.next = (self.model.num_timesteps // self.every + 1) * self.every if self.every > 0 else None
        # gSDE draws its noise matrix just before on_rollout_start: keep the RNG state from before it,
        # so that the resumed rollout draws the same matrix again
        owner = getattr(self.model, "actor", None) or self.model.policy
        if getattr(self.model, "use_sde", False) and not getattr(owner.reset_noise, "_tt_wrapped", False):
            original = owner.reset_noise

            def reset_noise(*a: Any, **k: Any) -> Any:
                self._pre_noise_rng = torch.get_rng_state()
                return original(*a, **k)

            reset_noise._tt_wrapped = True  # type: ignore[attr-defined]
            owner.reset_noise = reset_noise
        if self.handle_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._old_handlers[sig] = signal.signal(sig, self._on_signal)
                except ValueError:  # not the main thread
                    pass

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signal = signum

    def _on_rollout_start(self) -> None:
        if self.rollout_fn is not None:
            self.rollout_fn(self.model.num_timesteps)
        due = self.next is not None and self.model.num_timesteps >= self.next
        if due or self._signal is not None:
            self.save()
            while self.next is not None and self.next <= self.model.num_timesteps:
                self.next += self.every
        if self._signal is not None:
            self.interrupted = self._signal

    def save(self) -> Path:
        rng = self._pre_noise_rng if getattr(self.model, "use_sde", False) else None
        extra = self.extra_fn() if self.extra_fn is not None else {}
        self.last_saved = save_training_state(self.model, self.folder, extra, torch_rng=rng)
        return self.last_saved

    def _on_step(self) -> bool:
        return self.interrupted is None

    def _on_training_end(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)
        self._old_handlers = {}
