"""What recording a video costs an evaluation: env steps/s of ``evaluate`` with and without ``video_path``.

The same agent (an untrained BCPolicy for Hopper-v5: the cost of acting is negligible, so the figures are the
env's and the recorder's), the same episodes (seeded, a time limit of ``max_episode_steps``) on ``n_envs``
sub-envs; with a video only sub-env 0 renders, and only during its first episode (MuJoCo offscreen, EGL on a
headless Linux), and the frames are encoded to H.264 at the end. Best of ``rounds`` for each side.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym

from benches._common import markdown_table, write_section
from tt_agents import BCPolicy, evaluate


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    n_envs: int = 4
    n_episodes: int = 8
    max_episode_steps: int = 200
    rounds: int = 2
    """Rounds of each side; the fastest is reported."""


def _run(agent, args: Args, video: Path | None) -> tuple[float, int]:
    t0 = time.perf_counter()
    mode = "rgb_array" if video is not None else None  # only sub-env 0 renders, and only while recording
    res = evaluate(agent, lambda: gym.make(args.env_id, max_episode_steps=args.max_episode_steps, render_mode=mode),
                   n_episodes=args.n_episodes, n_envs=args.n_envs, progress=False, video_path=video)
    return time.perf_counter() - t0, sum(res.lengths)


def main(args: Args) -> dict:
    from tt_agents.evaluation import use_egl_when_headless

    use_egl_when_headless()
    env = gym.make(args.env_id)
    agent = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0)
    rows, figures = [], {}
    with tempfile.TemporaryDirectory() as d:
        for name, video in (("no video", None), ("video (.mp4)", Path(d) / "ep.mp4")):
            best = min(_run(agent, args, video) for _ in range(args.rounds))
            figures[name] = best[1] / best[0]
            rows.append([name, best[1], f"{best[0]:.2f}", f"{figures[name]:.0f}"])
            print(f"{name}: {best[1]} env steps in {best[0]:.2f} s ({figures[name]:.0f} steps/s)", flush=True)
    ratio = figures["no video"] / figures["video (.mp4)"]
    print(f"a video costs {ratio:.2f}x the evaluation without one")
    body = (f"{args.env_id}, {args.n_episodes} episodes of at most {args.max_episode_steps} steps on {args.n_envs} "
            f"sub-envs, an untrained BCPolicy; best of {args.rounds} rounds.\n\n"
            + markdown_table(["evaluation", "env steps", "seconds", "env steps/s"], rows)
            + f"\n\nWith a video the evaluation takes {ratio:.2f}x as long.")
    write_section("video", "Evaluation with and without a video", body)
    return figures
