"""Train an agent on a logged dataset: ``python scripts/train.py <agent> --dataset SOURCE [options]``.

``SOURCE`` is a Minari dataset id in the local store (``MINARI_DATASETS_PATH``), the path of a
Minari dataset folder, or a D4RL-format HDF5 file. The run directory gets checkpoints
(``checkpoints/last.zip``, resumed automatically), ``final.zip``, TensorBoard logs,
``metrics.jsonl`` and ``training_curve.png``; with ``--eval-episodes N`` the trained agent is
evaluated on the dataset's env and ``eval.json`` is written.

Examples:
    python scripts/train.py bc --dataset hopper/medium-v0 --train.steps 5000
    python scripts/train.py tt --dataset hopper/medium-v0 --preset small
    torchrun --nproc_per_node 2 scripts/train.py bc --dataset hopper/medium-v0
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tt_agents import BCConfig, BCPolicy, TrainConfig  # noqa: E402
from tt_agents.data import load_dataset  # noqa: E402
from tt_agents.evaluation import evaluate  # noqa: E402


@dataclass
class Common:
    dataset: str
    """Minari dataset id, Minari dataset folder, or D4RL-format HDF5 file."""
    run_dir: str | None = None
    """Where checkpoints and logs go (default: runs/<agent>-<dataset>)."""
    device: str = "auto"
    """'auto' uses CUDA when present."""
    seed: int = 0
    """Seeds the model's initialisation and the data stream."""
    eval_episodes: int = 0
    """Episodes to evaluate the trained agent on the dataset's env afterwards (0: skip)."""
    eval_envs: int = 4
    """Sub-envs of the evaluation vector env."""


@dataclass
class BCArgs(Common):
    """Behaviour cloning (MLP for vectors, CNN for images)."""

    agent: BCConfig = field(default_factory=BCConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=5000, batch_size=256, lr=1e-3))


def agent_for(args: Any, dataset: Any) -> Any:
    """Build the agent that ``args`` describes, for the dataset's spaces."""
    obs, act = dataset.observation_space, dataset.action_space
    if isinstance(args, BCArgs):
        return BCPolicy(obs, act, args.agent, device=args.device, seed=args.seed)
    for name, (cls, _) in EXTRA_AGENTS.items():
        if type(args).__name__ == f"{name.upper()}Args":
            return cls(obs, act, args.agent, device=args.device, seed=args.seed)
    raise TypeError(f"no agent for {type(args).__name__}")


EXTRA_AGENTS: dict[str, tuple[type, type]] = {}
SUBCOMMANDS: dict[str, type] = {"bc": BCArgs}


def main(args: Any) -> None:
    name = next(k for k, v in SUBCOMMANDS.items() if isinstance(args, v))
    dataset = load_dataset(args.dataset)
    print(dataset)
    run_dir = args.run_dir or str(Path("runs") / f"{name}-{args.dataset.replace('/', '_').strip('._')}")
    train = dataclasses.replace(args.train, run_dir=run_dir, seed=args.seed, device=args.device)
    agent = agent_for(args, dataset)
    result = agent.fit(dataset, train)
    print(f"trained {type(agent).__name__}: final loss {result.final_loss:.4f} in {result.seconds:.0f} s; "
          f"agent saved to {Path(run_dir) / 'final.zip'}")
    if args.eval_episodes > 0 and agent.data_info.get("env_id"):
        res = evaluate(agent, agent.data_info["env_id"], n_episodes=args.eval_episodes, n_envs=args.eval_envs,
                       seed=args.seed, json_path=Path(run_dir) / "eval.json")
        print(res)


def _register_sequence_agents() -> None:
    """Add the TT and DT subcommands when their modules are present."""
    try:
        from tt_agents.tt import TTConfig, TTPlanner
    except ImportError:
        pass
    else:

        @dataclass
        class TTArgs(Common):
            """Trajectory Transformer (discretized GPT + beam-search planning)."""

            agent: TTConfig = field(default_factory=TTConfig)
            train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20000, batch_size=256))

        EXTRA_AGENTS["tt"] = (TTPlanner, TTConfig)
        SUBCOMMANDS["tt"] = TTArgs
    try:
        from tt_agents.dt import DecisionTransformer, DTConfig
    except ImportError:
        pass
    else:

        @dataclass
        class DTArgs(Common):
            """Decision Transformer (return-conditioned, optionally prompted)."""

            agent: DTConfig = field(default_factory=DTConfig)
            train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20000, batch_size=64, lr=1e-4))

        EXTRA_AGENTS["dt"] = (DecisionTransformer, DTConfig)
        SUBCOMMANDS["dt"] = DTArgs


_register_sequence_agents()

if __name__ == "__main__":
    from typing import Union

    union = Union[tuple(Annotated[v, tyro.conf.subcommand(k)] for k, v in SUBCOMMANDS.items())]  # type: ignore
    main(tyro.cli(union))
