"""Evaluate a saved agent: ``python scripts/eval.py --checkpoint runs/tt/final.zip [options]``.

Runs episodes on a Gymnasium vector env (one batched ``predict`` per step for all sub-envs),
prints the mean return with its standard error and the normalized score
``100 * (R - random) / (expert - random)``; optionally writes a video and a JSON result.
The env and the reference scores default to what the agent's training data recorded.

The agent's act-time settings (a TT's search, a DT's target return) default to those saved in
the checkpoint and can be changed for this evaluation only, e.g. ``--act.beam-width 32
--act.horizon 5`` for a TTPlanner or ``--act.target-return 3600`` for a DecisionTransformer
(``--checkpoint X --help`` lists them); the checkpoint itself is not changed.

The defaults are :func:`tt_agents.evaluate`'s. A user error (a missing checkpoint, an env whose
spaces do not fit the agent) prints one line and exits 2; ``--debug`` shows its traceback.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Any, Literal

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import UsageError, check_device, documented, documented_value, run, undocumented  # noqa: E402

from tt_agents import load_agent  # noqa: E402
from tt_agents.checkpoint import CheckpointError, read_checkpoint  # noqa: E402
from tt_agents.evaluation import DEFAULT_N_ENVS, VIDEO_SUFFIXES, evaluate  # noqa: E402
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
    n_envs: int = DEFAULT_N_ENVS
    """Sub-envs of the vector env."""
    vectorization: Literal["sync", "async"] = "sync"
    """``async``: each sub-env in its own process (many cores, costly envs such as CarRacing); the same episodes
    as ``sync``. ``--video`` needs ``sync`` (only sub-env 0 renders, in this process)."""
    seed: int = 0
    """Sub-env i is reset with seed + i."""
    deterministic: bool = True
    """Take the most likely action (a TT: its best plan); --no-deterministic samples from the policy."""
    ref_min_score: float | None = None
    """Return of a random policy (default: from the training data's metadata)."""
    ref_max_score: float | None = None
    """Return of an expert (default: from the training data's metadata)."""
    video: str | None = None
    """Write the first episode of sub-env 0 to this .mp4 or .gif."""
    reconstruction_video: str | None = None
    """WorldModelController only: act for one more episode (reset with --seed) and write it to this .mp4 or .gif
    as real frames | V's reconstructions | M's predicted next frames, side by side."""
    json_out: str | None = None
    """Write the result as JSON."""
    device: str = "auto"
    """'auto' uses CUDA when present; 'cpu', 'cuda' or 'cuda:N'."""
    progress: bool = True
    """Show the evaluation's progress bar."""
    debug: bool = False
    """Show the full traceback of an error (also TT_AGENTS_DEBUG=1)."""


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
    return make_dataclass("Args", [("act", documented(type(act)), field(default_factory=lambda: documented_value(act)))],
                          bases=(Args,))


def check_options(args: Args) -> None:
    """Every check that needs neither the agent nor an env (raises UsageError)."""
    if not Path(args.checkpoint).is_file():
        raise UsageError(f"--checkpoint {args.checkpoint}: no such file; pass a file written by agent.save() or "
                         "training (runs/<name>/final.zip, runs/<name>/checkpoints/last.zip)")
    check_device(args.device)
    if args.n_episodes < 1:
        raise UsageError(f"--n-episodes must be >= 1, got {args.n_episodes}")
    if args.n_envs < 1:
        raise UsageError(f"--n-envs must be >= 1, got {args.n_envs}")
    if args.video is not None and Path(args.video).suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"--video {args.video}: the file must end in one of {', '.join(VIDEO_SUFFIXES)}")
    if args.video is not None and args.vectorization != "sync":
        raise UsageError(f"--video needs --vectorization sync (only sub-env 0 renders, in this process); got "
                         f"--vectorization {args.vectorization}")
    if args.reconstruction_video is not None and Path(args.reconstruction_video).suffix.lower() not in VIDEO_SUFFIXES:
        raise UsageError(f"--reconstruction-video {args.reconstruction_video}: the file must end in one of "
                         f"{', '.join(VIDEO_SUFFIXES)}")


def main(args: Args) -> None:
    check_options(args)
    agent = load_agent(args.checkpoint, device=args.device)
    env_id = args.env_id or agent.data_info.get("env_id")
    if env_id is None:
        raise UsageError(f"{args.checkpoint} does not record its env; pass --env-id")
    if args.reconstruction_video is not None and not hasattr(agent, "episode_reconstruction_video"):
        raise UsageError(f"--reconstruction-video needs a WorldModelController checkpoint; {args.checkpoint} holds a "
                         f"{type(agent).__name__}")
    env: Any = env_id
    if hasattr(agent, "make_env"):  # an agent that adapts the env to itself (a world model resizes the frames)
        env = agent.make_env(env_id, args.n_envs, args.vectorization,
                             **({"render_mode": "rgb_array"} if args.video is not None else {}))
    res = evaluate(agent, env, n_episodes=args.n_episodes, n_envs=args.n_envs, seed=args.seed,
                   deterministic=args.deterministic, ref_min_score=args.ref_min_score,
                   ref_max_score=args.ref_max_score, video_path=args.video, json_path=args.json_out,
                   act=undocumented(args.act) if getattr(args, "act", None) is not None else None,
                   progress=args.progress, vectorization_mode=args.vectorization)
    if env is not env_id:
        env.close()
    print(f"{type(agent).__name__} on {env_id}: {res}")
    if args.reconstruction_video is not None:
        path = agent.episode_reconstruction_video(env_id, args.reconstruction_video, seed=args.seed,
                                                  deterministic=args.deterministic)
        print(f"real | V's reconstruction | M's prediction: {path}")


def evaluate_defaults() -> dict[str, Any]:
    """:func:`tt_agents.evaluate`'s defaults for the options both have (the options here must agree with them)."""
    params = inspect.signature(evaluate).parameters
    out = {k: params[k].default for k in ("n_episodes", "seed", "deterministic", "progress")}
    out["n_envs"] = DEFAULT_N_ENVS  # evaluate's None: DEFAULT_N_ENVS for an env id
    return out


def _checkpoint_in(argv: list[str]) -> str | None:
    for i, a in enumerate(argv):
        if a == "--checkpoint" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--checkpoint="):
            return a.partition("=")[2]
    return None


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv

    def go() -> None:
        path = _checkpoint_in(argv)
        main(tyro.cli(args_class(saved_act(path) if path and Path(path).is_file() else None), args=argv))

    run(go, argv)


if __name__ == "__main__":
    cli()
