"""Random-policy rollouts of a pixel env into a Minari dataset, for World Models' V and M.

The policy is World Models' *brownian* random policy: each sub-env's action starts as a uniform
sample and then moves by ``sqrt(dt) * sigma * N(0, 1)`` per step, clipped to the action space,
so the car drives smooth random paths instead of jittering in place (Discrete actions: a uniform
action held for a geometric number of steps, mean ``1 / dt``). Sub-envs of a vector env step
together (in this process, or each in its own: ``--vectorization async``) and every finished episode
is written by :class:`wrappers.VectorActionLogger` as it ends; frames are resized to ``--size``
(64x64 for V) before they are logged. Nothing needs a display or ``PYTHONPATH``: run it from anywhere.

The default env, ``tt_agents/CarRacing-v3``, is gymnasium's CarRacing-v3 drawing the same frames in about half
the time per step (:mod:`tt_agents.envs.car_racing`); ``--env-id CarRacing-v3`` gives gymnasium's own.

Example (the README's CPU-sized pipeline starts with this):
    python scripts/rollouts.py --episodes 16 --num-envs 4 --max-episode-steps 300
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import gymnasium as gym
import numpy as np
import tyro
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tt_agents.world_model.frames import ResizeFrames  # noqa: E402
from wrappers.action_logger import VectorActionLogger  # noqa: E402


@dataclass
class Args:
    env_id: str = "tt_agents/CarRacing-v3"
    """A Gymnasium id with uint8 (H, W, C) frames as observations (default: CarRacing-v3's frames, drawn faster)."""
    dataset_id: str | None = None
    """Minari id of the dataset; default: {env name in lower case}/brownian-v0, e.g. carracing/brownian-v0."""
    episodes: int = 16
    """Episodes to record (at least; sub-envs finishing together may add a few)."""
    num_envs: int = 4
    """Sub-envs of the vector env."""
    vectorization: Literal["sync", "async"] = "sync"
    """``async``: each sub-env in its own process (one per core on a many-core machine); the same dataset as
    ``sync``, since each sub-env is seeded alike."""
    max_episode_steps: int | None = None
    """Cut episodes at this many steps (default: the env's own limit, 1000 for CarRacing)."""
    size: int = 64
    """Frames are resized to size x size (0: keep the env's)."""
    sigma: float = 1.0
    """Scale of the brownian policy's steps."""
    dt: float = 1 / 50
    """Time step of the brownian policy (World Models' random rollouts use 1/50)."""
    seed: int = 0
    path: str | None = None
    """Dataset store (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)."""
    overwrite: bool = False
    """Replace an existing dataset of that id."""


class BrownianPolicy:
    """Smooth random actions for ``n`` sub-envs (see the module docstring)."""

    def __init__(self, space: gym.Space, n: int, sigma: float, dt: float, seed: int) -> None:
        self.space, self.n, self.sigma, self.dt = space, n, sigma, dt
        self.rng = np.random.default_rng(seed)
        self.discrete = isinstance(space, gym.spaces.Discrete)
        if not (self.discrete or (isinstance(space, gym.spaces.Box) and np.all(np.isfinite(space.low))
                                  and np.all(np.isfinite(space.high)))):
            raise ValueError(f"the brownian policy needs a bounded Box or a Discrete action space, got {space}")
        self.actions = self._fresh(n)

    def _fresh(self, k: int) -> np.ndarray:
        if self.discrete:
            return self.rng.integers(0, self.space.n, size=k)
        return self.rng.uniform(self.space.low, self.space.high, size=(k, *self.space.shape)).astype(self.space.dtype)

    def __call__(self, starts: np.ndarray) -> np.ndarray:
        """The next actions; rows where ``starts`` is true begin a new path."""
        if starts.any():
            self.actions[starts] = self._fresh(int(starts.sum()))
        if self.discrete:
            switch = self.rng.random(self.n) < self.dt
            self.actions = np.where(switch, self._fresh(self.n), self.actions)
        else:
            step = np.sqrt(self.dt) * self.sigma * self.rng.standard_normal(self.actions.shape)
            self.actions = np.clip(self.actions + step, self.space.low, self.space.high).astype(self.space.dtype)
        return self.actions.copy()


def dataset_id_for(env_id: str) -> str:
    """``CarRacing-v3 -> carracing/brownian-v0`` (and ``tt_agents/CarRacing-v3`` too)."""
    return f"{env_id.split('/')[-1].split('-')[0].lower()}/brownian-v0"


def main(args: Args) -> str:
    dataset_id = args.dataset_id or dataset_id_for(args.env_id)
    kwargs = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
    probe = gym.make(args.env_id, **kwargs)
    space = probe.observation_space
    probe.close()
    if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
        raise SystemExit(f"{args.env_id} has observations {space}, not uint8 (H, W, C) frames")
    wrappers = [lambda e: ResizeFrames(e, args.size, args.size)] if args.size and space.shape[:2] != (
        args.size, args.size) else []
    envs = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode=args.vectorization, wrappers=wrappers,
                        **kwargs)
    meta = {"env_id": args.env_id, "algorithm_name": "brownian random policy", "rollouts": asdict(args)}
    logger = VectorActionLogger(envs, dataset_id, path=args.path, metadata=meta, overwrite=args.overwrite)
    policy = BrownianPolicy(envs.single_action_space, args.num_envs, args.sigma, args.dt, args.seed)
    t0, steps = time.perf_counter(), 0
    try:
        logger.reset(seed=args.seed)
        starts = np.ones(args.num_envs, bool)
        with tqdm(total=args.episodes, desc=f"rollouts of {args.env_id}", unit="episode") as bar:
            while logger.writer.total_episodes < args.episodes:
                _, _, term, trunc, _ = logger.step(policy(starts))
                starts = np.asarray(term) | np.asarray(trunc)
                steps += args.num_envs
                bar.update(logger.writer.total_episodes - bar.n)
    finally:
        logger.close()
    took = time.perf_counter() - t0
    print(f"{dataset_id}: {logger.writer.total_episodes} episodes, {steps} env steps in {took:.0f} s "
          f"({steps / max(took, 1e-9):.0f} steps/s)")
    return dataset_id


if __name__ == "__main__":
    main(tyro.cli(Args))
