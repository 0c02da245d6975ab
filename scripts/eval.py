"""Evaluate a saved agent: ``python scripts/eval.py --checkpoint runs/tt/final.zip [options]``.

Runs episodes on a Gymnasium vector env (one batched ``predict`` per step for all sub-envs),
prints the mean return with its standard error and the normalized score
``100 * (R - random) / (expert - random)``; optionally writes a video and a JSON result.
The env and the reference scores default to what the agent's training data recorded.

The agent's act-time settings (a TT's search, a DT's target return) default to those saved in
the checkpoint and can be changed for this evaluation only, e.g. ``--act.beam-width 32
--act.horizon 5`` for a TTPlanner or ``--act.target-return 3600`` for a DecisionTransformer
(``--checkpoint X --help`` lists them); the checkpoint itself is not changed.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tt_agents import load_agent  # noqa: E402
from tt_agents.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from tt_agents.evaluation import evaluate  # noqa: E402
from tt_agents.registry import agent_class  # noqa: E402
from tt_agents.utils import config_from_dict  # noqa: E402


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


def saved_act(checkpoint: str) -> Any:
    """The act-time settings saved in ``checkpoint`` (``None`` for agents without any)."""
    info = read_checkpoint(checkpoint).manifest.get("agent")
    if not isinstance(info, dict):
        raise CheckpointError(f"{checkpoint}: the checkpoint holds no agent")
    cls = agent_class(info.get("class"))
    if cls.act_class is None:
        return None
    info = cls._upgrade_agent_section(dict(info))
    return config_from_dict(cls.act_class, info["act"], "act") if "act" in info else cls.act_class()


def args_class(act: Any) -> type:
    """``Args``, with an ``act`` group of the checkpoint's act-time settings (their saved values as defaults)."""
    if act is None:
        return Args
    return make_dataclass("Args", [("act", type(act), field(default_factory=lambda: dataclasses.replace(act)))],
                          bases=(Args,))


def main(args: Args) -> None:
    agent = load_agent(args.checkpoint, device=args.device)
    env_id = args.env_id or agent.data_info.get("env_id")
    if env_id is None:
        raise SystemExit(f"{args.checkpoint} does not record its env; pass --env-id")
    res = evaluate(agent, env_id, n_episodes=args.n_episodes, n_envs=args.n_envs, seed=args.seed,
                   deterministic=args.deterministic, ref_min_score=args.ref_min_score,
                   ref_max_score=args.ref_max_score, video_path=args.video, json_path=args.json_out,
                   act=getattr(args, "act", None))
    print(f"{type(agent).__name__} on {env_id}: {res}")


def _checkpoint_in(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--checkpoint" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--checkpoint="):
            return a.partition("=")[2]
    return None


if __name__ == "__main__":
    path = _checkpoint_in(sys.argv[1:])
    main(tyro.cli(args_class(saved_act(path) if path and Path(path).exists() else None)))
