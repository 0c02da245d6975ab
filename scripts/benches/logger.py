"""ActionLogger overhead per step: a logged vector env against the bare one, side by side in one run.

Both envs step the same actions; they alternate in chunks (bare, logged, bare, logged, ...) so that
the load of a shared machine weighs on both alike. The logged env writes every finished episode
to a Minari dataset (in a temporary folder) before the step that finished it returns.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from benches._common import markdown_table, write_section


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"
    """Gymnasium id of the env"""
    num_envs: int = 8
    """sub-envs of the (sync) vector env"""
    steps: int = 24_000
    """vector steps per variant"""
    chunk: int = 1000
    """vector steps per alternation (1000: each logged chunk writes one HalfCheetah episode per sub-env)"""
    fsync: bool = True
    """fsync every batch of finished episodes (the logger's default)"""
    seed: int = 0
    """seed of the envs and the actions"""


def main(args: Args) -> None:
    import gymnasium as gym
    import torch

    from wrappers.action_logger import VectorActionLogger

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MINARI_DATASETS_PATH"] = tmp
        bare = gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync")
        logged = VectorActionLogger(
            gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync"),
            "bench/logger-v0",
            fsync=args.fsync,
        )
        writer = logged.writer
        write_time = [0.0]
        original = writer.write_episodes

        def timed_write(episodes, metadata=None):  # time spent writing finished episodes, in the logged steps
            t0 = time.perf_counter()
            out = original(episodes, metadata)
            write_time[0] += time.perf_counter() - t0
            return out

        writer.write_episodes = timed_write
        rng = np.random.default_rng(args.seed)
        actions = rng.uniform(-1, 1, (args.chunk, *bare.action_space.shape)).astype(bare.action_space.dtype)
        bare.reset(seed=args.seed)
        logged.reset(seed=args.seed)
        t_bare, t_logged = [], []
        for _ in range(max(1, args.steps // args.chunk)):
            for env, times in ((bare, t_bare), (logged, t_logged)):
                t0 = time.perf_counter()
                for a in actions:
                    env.step(a)
                times.append(time.perf_counter() - t0)
        logged.close()
        bare.close()
        episodes, steps = writer.total_episodes, writer.total_steps
    n = len(t_bare) * args.chunk
    tb, tl = np.array(t_bare), np.array(t_logged)
    us = 1e6 / args.chunk
    overhead = (tl.sum() - tb.sum()) / tb.sum() * 100
    paired = np.median(tl / tb - 1) * 100
    rows = [
        ["bare vector env", f"{np.median(tb) * us:.1f}", f"{tb.sum() / n * 1e6:.1f}", "-"],
        ["VectorActionLogger", f"{np.median(tl) * us:.1f}", f"{tl.sum() / n * 1e6:.1f}", f"{overhead:+.2f}%"],
    ]
    body = (
        f"{args.env_id}, {args.num_envs} sub-envs (SyncVectorEnv, NEXT_STEP autoreset), {n} vector steps per variant "
        f"alternating in chunks of {args.chunk}; the logger wrote {episodes} episodes ({steps} steps) with "
        f"fsync={args.fsync}.\n\n"
        + markdown_table(["env", "median µs / vector step", "mean µs / vector step", "overhead (total time)"], rows)
        + f"\n\nOverhead, median over chunk pairs: {paired:+.2f}%. Time in HDF5 writes (inside the logged steps): "
        f"{write_time[0] / n * 1e6:.1f} µs per vector step ({write_time[0]:.2f} s in all). Goal: at most 5%."
    )
    write_section("logger", "ActionLogger overhead per step", body)
