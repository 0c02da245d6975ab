"""Evaluate a saved agent: ``python scripts/eval.py --checkpoint runs/tt/final.zip [options]``.

Runs episodes on a Gymnasium vector env (one batched ``predict`` per step for all sub-envs),
prints the mean return with its standard error and the normalized score
``100 * (R - random) / (expert - random)``; optionally writes a video and a JSON result.
The env and the reference scores default to what the agent's training data recorded.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tt_agents import load_agent  # noqa: E402
from tt_agents.evaluation import evaluate  # noqa: E402


@dataclass
class Args:
    checkpoint: str
    """A file written by agent.save() or by training (final.zip, checkpoints/last.zip)."""
    env_id: str | None = None
    """Gymnasium env id (default: the env of the agent's training data)."""
    n_episodes: int = 10
    """Episodes in total, spread over the sub-envs."""
    n_envs: int = 4
    """Sub-envs of the vector env."""
    seed: int = 0
    """Sub-env i is reset with seed + i."""
    deterministic: bool = True
    ref_min_score: float | None = None
    """Return of a random policy (default: from the training data's metadata)."""
    ref_max_score: float | None = None
    """Return of an expert (default: from the training data's metadata)."""
    video: str | None = None
    """Write the first episode of sub-env 0 to this .mp4 or .gif."""
    json_out: str | None = None
    """Write the result as JSON."""
    device: str = "auto"


def main(args: Args) -> None:
    agent = load_agent(args.checkpoint, device=args.device)
    env_id = args.env_id or agent.data_info.get("env_id")
    if env_id is None:
        raise SystemExit(f"{args.checkpoint} does not record its env; pass --env-id")
    res = evaluate(agent, env_id, n_episodes=args.n_episodes, n_envs=args.n_envs, seed=args.seed,
                   deterministic=args.deterministic, ref_min_score=args.ref_min_score,
                   ref_max_score=args.ref_max_score, video_path=args.video, json_path=args.json_out)
    print(f"{type(agent).__name__} on {env_id}: {res}")


if __name__ == "__main__":
    main(tyro.cli(Args))
