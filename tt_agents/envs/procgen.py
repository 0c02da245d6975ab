"""Procgen games as Gymnasium envs, over Procgen's own batched env (``procgen.ProcgenGym3Env``).

Observations are ``Box(0, 255, (64, 64, 3), uint8)`` frames, actions ``Discrete(15)``. All the
sub-envs of :class:`ProcgenVectorEnv` run in one Procgen env (C++, its own thread pool), not one
process per env.

How gym3's semantics map onto Gymnasium's:

- gym3 resets a game inside the step that ends it: the observation that step returns is already
  the first frame of the next level, and ``first`` is set. Procgen never renders the frame of the
  terminal state, so **the true last observation of an episode does not exist**. Both envs here
  use the observation *before* the last step in its place: ``info["final_obs"]`` of the vector
  env, and the observation the single env's terminal ``step`` returns. (Nothing is bootstrapped
  from past a termination; for truncations it is one frame stale.)
- :class:`ProcgenVectorEnv` therefore autoresets in ``SAME_STEP`` mode (declared in
  ``metadata["autoreset_mode"]``): the step that ends an episode returns the next episode's first
  observation, with ``info["final_obs"]`` and ``info["final_info"]`` for the sub-envs that ended.
- An episode that ends because it reached the game's time limit (1000 steps in most games, read
  from the game's state) is ``truncated``; one that ends by death or by completing the level is
  ``terminated``. ``info["prev_level_complete"]`` says whether the level was completed.
- ``reset()`` mid-episode forces a new level on every sub-env (Procgen's ``action == -1``);
  ``reset(seed=s)`` rebuilds the Procgen env with ``rand_seed=s``, so the sequence of levels
  and everything after is reproducible. Procgen seeds all its sub-envs from that one seed.
- ``get_state()`` / ``set_state()`` save and restore the games exactly (Procgen's own
  serialization: the level, the RNGs that pick the next levels, the episode so far; about 20 KB a
  game), so a run can continue where it was (``tt_agents.sb3_resume`` does, for resumed training).

Gymnasium ids ``procgen/{game}-v0`` are registered on import (with ``vector_entry_point``, so
``gym.make_vec("procgen/coinrun-v0", num_envs=64, vectorization_mode="vector_entry_point")``
gives a :class:`ProcgenVectorEnv`); ``gym.make("tt_agents.envs.procgen:procgen/coinrun-v0")`` imports
this module first. Importing ``procgen`` prints the old ``gym`` package's deprecation notice;
this module silences it.

- :class:`ProcgenEnv`: one game as a Gymnasium ``Env``.
- :class:`ProcgenVectorEnv`: ``num_envs`` games as a native Gymnasium ``VectorEnv``.
"""

from __future__ import annotations

import contextlib
import io
import struct
import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.error import ResetNeeded
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

__all__ = ["ENV_NAMES", "ProcgenEnv", "ProcgenVectorEnv"]

ENV_NAMES = (
    "bigfish",
    "bossfight",
    "caveflyer",
    "chaser",
    "climber",
    "coinrun",
    "dodgeball",
    "fruitbot",
    "heist",
    "jumper",
    "leaper",
    "maze",
    "miner",
    "ninja",
    "plunder",
    "starpilot",
)
DISTRIBUTION_MODES = ("easy", "hard", "extreme", "memory", "exploration")
OBSERVATION_SPACE = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
ACTION_SPACE = gym.spaces.Discrete(15)
_DEFAULT_TIMEOUT = 1000


def _procgen():
    """Import procgen without the old gym package's notice on stderr and its warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        import procgen
    return procgen


def _read_timeout(env: Any, env_name: str) -> int:
    """The game's time limit, read from Procgen's serialized state (it varies: 500 to 6000 steps)."""
    try:
        b = env.get_state()[0]
        off = 0

        def i32() -> int:
            nonlocal off
            v = struct.unpack_from("<i", b, off)[0]
            off += 4
            return v

        def string() -> bytes:
            nonlocal off
            n = i32()
            off += n
            return b[off - n : off]

        i32()  # serialization version
        name = string().decode()
        for _ in range(12 + 5):  # game options, grid_step, level seed range, game_type, game_n
            i32()
        for _ in range(2):  # the two random generators
            i32()
            string()
        off += 4 * 4  # reward, done, level_complete, action
        timeout = i32()
        if name == env_name and 0 < timeout < 10**7:
            return timeout
    except (struct.error, UnicodeDecodeError, IndexError):
        pass
    warnings.warn(
        f"could not read the time limit of procgen game {env_name!r}; assuming {_DEFAULT_TIMEOUT} steps "
        "(episodes that end at that length are marked truncated)",
        stacklevel=3,
    )
    return _DEFAULT_TIMEOUT


class ProcgenVectorEnv(VectorEnv):
    """``num_envs`` Procgen games as one Gymnasium ``VectorEnv`` (SAME_STEP autoreset).

    Args:
        env_name: the game, one of :data:`ENV_NAMES`.
        num_envs: games stepped together.
        num_levels: how many distinct levels (0: unlimited).
        start_level: the first level's seed; levels are ``start_level .. start_level + num_levels - 1``.
        distribution_mode: ``"easy"``, ``"hard"``, ``"extreme"``, ``"memory"`` or ``"exploration"``.
        render_mode: ``"rgb_array"`` to render 512x512 frames (``render()``), or ``None``.
        num_threads: Procgen's threads for stepping the games (0: the calling thread).
        **options: other Procgen options (``use_backgrounds``, ``paint_vel_info``,
            ``use_sequential_levels``, ``center_agent``, ``use_monochrome_assets``, ...).

    Example:
        >>> envs = ProcgenVectorEnv("coinrun", num_envs=2, distribution_mode="easy", num_threads=0)
        >>> obs, info = envs.reset(seed=0)
        >>> obs.shape, envs.metadata["autoreset_mode"]
        ((2, 64, 64, 3), <AutoresetMode.SAME_STEP: 'SameStep'>)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15, "autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(
        self,
        env_name: str = "coinrun",
        num_envs: int = 1,
        *,
        num_levels: int = 0,
        start_level: int = 0,
        distribution_mode: str = "hard",
        render_mode: str | None = None,
        num_threads: int = 4,
        **options: Any,
    ) -> None:
        if env_name not in ENV_NAMES:
            raise ValueError(f"unknown procgen game {env_name!r}; choose one of {', '.join(ENV_NAMES)}")
        if distribution_mode not in DISTRIBUTION_MODES:
            raise ValueError(f"distribution_mode must be one of {DISTRIBUTION_MODES}, got {distribution_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if num_envs < 1 or num_levels < 0 or start_level < 0:
            raise ValueError(
                f"need num_envs >= 1, num_levels >= 0, start_level >= 0; got {num_envs}, {num_levels}, {start_level}"
            )
        self.env_name = env_name
        self.num_envs = num_envs
        self.num_levels = num_levels
        self.start_level = start_level
        self.distribution_mode = distribution_mode
        self.render_mode = render_mode
        self.num_threads = num_threads
        self.options = options
        self.single_observation_space = OBSERVATION_SPACE
        self.single_action_space = ACTION_SPACE
        self.observation_space = batch_space(OBSERVATION_SPACE, num_envs)
        self.action_space = batch_space(ACTION_SPACE, num_envs)
        self._env: Any = None
        self._timeout = _DEFAULT_TIMEOUT
        self._ep_len = np.zeros(num_envs, dtype=np.int64)
        self._obs = np.zeros((num_envs, *OBSERVATION_SPACE.shape), np.uint8)
        self._info: list[dict[str, Any]] = []

    def _create(self, rand_seed: int) -> None:
        procgen = _procgen()
        kwargs = dict(self.options)
        if self.distribution_mode != "exploration":
            kwargs.update(num_levels=self.num_levels, start_level=self.start_level)
        self._env = procgen.ProcgenGym3Env(
            num=self.num_envs,
            env_name=self.env_name,
            distribution_mode=self.distribution_mode,
            rand_seed=int(rand_seed),
            num_threads=self.num_threads,
            render_mode=self.render_mode,
            **kwargs,
        )
        self._timeout = _read_timeout(self._env, self.env_name)

    def _observe(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reward, ob, first = self._env.observe()
        self._info = self._env.get_info()
        return np.array(ob["rgb"], dtype=np.uint8), np.asarray(reward, dtype=np.float64), np.asarray(first, dtype=bool)

    def _infos(self) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        if not self._info:
            return infos
        ones = np.ones(self.num_envs, dtype=bool)
        for key, dtype in (("level_seed", np.int64), ("prev_level_seed", np.int64), ("prev_level_complete", bool)):
            if key in self._info[0]:
                infos[key] = np.array([d[key] for d in self._info], dtype=dtype)
                infos[f"_{key}"] = ones.copy()
        return infos

    def reset(
        self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start new episodes in every sub-env; ``seed`` (one int) rebuilds Procgen with ``rand_seed=seed``."""
        if options and "reset_mask" in options:
            raise ValueError(
                "ProcgenVectorEnv cannot reset only some sub-envs (Procgen steps all of them together); "
                "it autoresets them itself (SAME_STEP)"
            )
        if isinstance(seed, (list, tuple)):
            if len(set(seed)) == 1 or all(s == seed[0] + i for i, s in enumerate(seed)):
                seed = seed[0]
            else:
                raise TypeError(
                    f"ProcgenVectorEnv takes one int seed (Procgen seeds all its sub-envs from one rand_seed), got {seed}"
                )
        if seed is not None:
            self._np_random, self._np_random_seed = seeding.np_random(int(seed))
            self._create(int(seed))
        elif self._env is None:
            self._create(int(self.np_random.integers(2**31 - 1)))
        elif self._ep_len.any():
            self._env.act(np.full(self.num_envs, -1, dtype=np.int32))  # Procgen's forced reset
        self._ep_len[:] = 0
        self._obs, _, _ = self._observe()
        return self._obs.copy(), self._infos()

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        if self._env is None:
            raise ResetNeeded("Cannot call env.step() before calling env.reset()")
        actions = np.asarray(actions)
        if actions.shape != (self.num_envs,) or not np.all((actions >= 0) & (actions < ACTION_SPACE.n)):
            raise ValueError(
                f"actions must be {self.num_envs} integers in 0..{ACTION_SPACE.n - 1} (shape ({self.num_envs},)), "
                f"got {actions!r:.200}"
            )
        self._env.act(actions.astype(np.int32))
        previous = self._obs
        obs, reward, first = self._observe()
        self._ep_len += 1
        infos = self._infos()
        complete = infos.get("prev_level_complete", np.zeros(self.num_envs, bool))
        truncated = first & (self._ep_len >= self._timeout) & ~complete
        terminated = first & ~truncated
        if first.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(first):
                final_obs[i] = previous[i]  # the terminal frame is never rendered; see the module docstring
            infos["final_obs"], infos["_final_obs"] = final_obs, first.copy()
            final_info = {k: v for k, v in infos.items() if k in ("prev_level_seed", "prev_level_complete")}
            final_info = {**final_info, **{f"_{k}": first.copy() for k in final_info}}
            final_info["episode_length"] = np.where(first, self._ep_len, 0)
            final_info["_episode_length"] = first.copy()
            infos["final_info"], infos["_final_info"] = final_info, first.copy()
            self._ep_len[first] = 0
        self._obs = obs
        return obs.copy(), reward, terminated, truncated, infos

    def get_state(self) -> list[bytes]:
        """Each game's whole state: its step count in the episode, then Procgen's serialization of the game."""
        if self._env is None:
            raise ResetNeeded("Cannot call env.get_state() before calling env.reset()")
        return [struct.pack("<q", int(n)) + bytes(s) for n, s in zip(self._ep_len, self._env.get_state())]

    def set_state(self, states: list[bytes]) -> tuple[np.ndarray, dict[str, Any]]:
        """Bring every game back to a ``get_state()``; returns the observations and infos there (what the
        following steps continue from, exactly as they did after the ``get_state()``)."""
        if len(states) != self.num_envs or not all(isinstance(s, bytes) and len(s) > 8 for s in states):
            raise ValueError(f"set_state takes {self.num_envs} states from get_state() (bytes), got {len(states)} "
                             f"of types {sorted({type(s).__name__ for s in states})}")
        if self._env is None:
            self._create(0)  # its seed does not matter: the states replace the games and their RNGs
        self._env.set_state([s[8:] for s in states])
        self._ep_len[:] = [struct.unpack("<q", s[:8])[0] for s in states]
        self._obs, _, _ = self._observe()
        return self._obs.copy(), self._infos()

    def render(self) -> tuple[np.ndarray, ...] | None:
        if self.render_mode != "rgb_array" or not self._info:
            return None
        return tuple(np.asarray(d["rgb"]) for d in self._info)

    def close_extras(self, **kwargs: Any) -> None:
        self._env = None


class ProcgenEnv(gym.Env, gym.utils.RecordConstructorArgs):
    """One Procgen game as a Gymnasium ``Env`` (a :class:`ProcgenVectorEnv` of one game).

    The step that ends an episode returns the observation before it (the terminal frame is never
    rendered); the next ``reset()`` (without a seed) returns the first frame of the level Procgen
    has already started, without skipping a level.

    Args:
        env_name, num_levels, start_level, distribution_mode, render_mode, num_threads, **options:
            as for :class:`ProcgenVectorEnv`.

    Example:
        >>> env = ProcgenEnv("coinrun", distribution_mode="easy")
        >>> obs, info = env.reset(seed=0)
        >>> obs.shape, env.action_space
        ((64, 64, 3), Discrete(15))
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 15}

    def __init__(
        self,
        env_name: str = "coinrun",
        *,
        num_levels: int = 0,
        start_level: int = 0,
        distribution_mode: str = "hard",
        render_mode: str | None = None,
        num_threads: int = 0,
        **options: Any,
    ) -> None:
        gym.utils.RecordConstructorArgs.__init__(
            self,
            env_name=env_name,
            num_levels=num_levels,
            start_level=start_level,
            distribution_mode=distribution_mode,
            render_mode=render_mode,
            num_threads=num_threads,
            **options,
        )
        self._vec = ProcgenVectorEnv(
            env_name,
            1,
            num_levels=num_levels,
            start_level=start_level,
            distribution_mode=distribution_mode,
            render_mode=render_mode,
            num_threads=num_threads,
            **options,
        )
        self.observation_space = OBSERVATION_SPACE
        self.action_space = ACTION_SPACE
        self.render_mode = render_mode
        self._next: tuple[np.ndarray, dict[str, Any]] | None = None  # the level Procgen already started

    @staticmethod
    def _unbatch(infos: dict[str, Any]) -> dict[str, Any]:
        """Sub-env 0's numeric infos (without the vector env's final_obs / final_info)."""
        return {
            k: v[0].item() for k, v in infos.items() if not k.startswith("_") and k not in ("final_obs", "final_info")
        }

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        if seed is None and self._next is not None:
            obs, info = self._next
        else:
            obs, infos = self._vec.reset(seed=seed if seed is not None else self._seed_for_vec())
            obs, info = obs[0], self._unbatch(infos)
        self._next = None
        return obs, info

    def _seed_for_vec(self) -> int | None:
        # an unseeded first reset draws Procgen's seed from this env's np_random (itself seedable)
        return int(self.np_random.integers(2**31 - 1)) if self._vec._env is None else None

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._next is not None:
            raise ResetNeeded("Cannot call env.step() after the episode ended; call env.reset() first")
        obs, reward, terminated, truncated, infos = self._vec.step(np.asarray([action]))
        info = self._unbatch(infos)
        if terminated[0] or truncated[0]:
            self._next = (obs[0], info)
            final_info = infos["final_info"]
            info = {**info, **{k: v[0].item() for k, v in final_info.items() if not k.startswith("_")}}
            return infos["final_obs"][0], float(reward[0]), bool(terminated[0]), bool(truncated[0]), info
        return obs[0], float(reward[0]), False, False, info

    def get_state(self) -> bytes:
        """The game's whole state (see :meth:`ProcgenVectorEnv.get_state`), mid-episode; not between an
        episode's end and the ``reset()`` after it."""
        if self._next is not None:
            raise ResetNeeded("the episode ended: call env.reset() before env.get_state()")
        return self._vec.get_state()[0]

    def set_state(self, state: bytes) -> tuple[np.ndarray, dict[str, Any]]:
        """Bring the game back to a ``get_state()``; returns the observation and info there. A ``reset()``
        without a seed right after it keeps that state when it was taken at an episode's start (as
        ``tt_agents.sb3_resume.ReplayableEnv`` takes it), and starts a new level otherwise."""
        obs, infos = self._vec.set_state([state])
        self._next = None
        return obs[0], self._unbatch(infos)

    def render(self) -> np.ndarray | None:
        frames = self._vec.render()
        return None if frames is None else frames[0]

    def close(self) -> None:
        self._vec.close()
        super().close()


def _register() -> None:
    for name in ENV_NAMES:
        env_id = f"procgen/{name}-v0"
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="tt_agents.envs.procgen:ProcgenEnv",
                vector_entry_point="tt_agents.envs.procgen:ProcgenVectorEnv",
                kwargs={"env_name": name},
            )


_register()
