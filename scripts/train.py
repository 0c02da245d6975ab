"""Train an agent on a logged dataset: ``python scripts/train.py <agent> --dataset SOURCE [options]``.

``SOURCE`` is a Minari dataset id in the local store (``MINARI_DATASETS_PATH``), the path of a
Minari dataset folder, or a D4RL-format HDF5 file. The run directory gets checkpoints
(``checkpoints/last.zip``, resumed automatically), ``final.zip``, TensorBoard logs,
``metrics.jsonl`` and ``training_curve.png``; with ``--eval-episodes N`` the trained agent is
evaluated on the dataset's env and ``eval.json`` is written.

Examples:
    python scripts/train.py bc --dataset hopper/medium-v0 --train.steps 5000
    python scripts/train.py tt-small --dataset hopper/medium-v0 --train.steps 3000
    torchrun --nproc_per_node 2 scripts/train.py bc --dataset hopper/medium-v0
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tt_agents import BCConfig, BCPolicy, TrainConfig  # noqa: E402
from tt_agents.data import load_dataset  # noqa: E402
from tt_agents.dt import DT_PRESETS, DecisionTransformer, DTConfig  # noqa: E402
from tt_agents.evaluation import evaluate  # noqa: E402
from tt_agents.tt import TT_PRESETS, TTConfig, TTPlanner  # noqa: E402


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


@dataclass
class TTArgs(Common):
    """Trajectory Transformer (discretized GPT + beam-search planning)."""

    agent: TTConfig = field(default_factory=TTConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=20000, batch_size=256))


@dataclass
class DTArgs(Common):
    """Decision Transformer (return-conditioned, optionally few-shot prompted)."""

    agent: DTConfig = field(default_factory=DTConfig)
    train: TrainConfig = field(default_factory=lambda: DT_PRESETS["paper"].train)


SUBCOMMANDS: dict[str, Any] = {
    # name: the Args instance whose values are the subcommand's defaults (every option stays overridable)
    "bc": BCArgs(dataset=tyro.MISSING),
    "tt": TTArgs(dataset=tyro.MISSING, agent=TT_PRESETS["paper"]()),
    **{f"tt-{k}": TTArgs(dataset=tyro.MISSING, agent=TT_PRESETS[k]()) for k in TT_PRESETS if k != "paper"},
    "dt": DTArgs(dataset=tyro.MISSING, agent=DT_PRESETS["paper"].config, train=DT_PRESETS["paper"].train),
    **{f"dt-{k}": DTArgs(dataset=tyro.MISSING, agent=p.config, train=p.train) for k, p in DT_PRESETS.items()
       if k != "paper"},
}
"""Subcommands: the agents with the papers' settings (``bc``, ``tt``, ``dt``) and with the presets of
``TT_PRESETS`` and ``DT_PRESETS`` (``tt-small``, ``tt-tiny``, ``dt-cpu``)."""


def build(args: Any, dataset: Any) -> tuple[Any, TrainConfig]:
    """The agent that ``args`` describes, for the dataset's spaces, and its training settings."""
    obs, act = dataset.observation_space, dataset.action_space
    for args_cls, agent_cls in ((BCArgs, BCPolicy), (TTArgs, TTPlanner), (DTArgs, DecisionTransformer)):
        if isinstance(args, args_cls):
            return agent_cls(obs, act, args.agent, device=args.device, seed=args.seed), args.train
    raise TypeError(f"no agent for {type(args).__name__}")


def main(args: Any) -> None:
    name = type(args).__name__.removesuffix("Args").lower()
    dataset = load_dataset(args.dataset)
    print(dataset)
    run_dir = args.run_dir or str(Path("runs") / f"{name}-{args.dataset.replace('/', '_').strip('._')}")
    agent, train = build(args, dataset)
    train = dataclasses.replace(train, run_dir=run_dir, seed=args.seed, device=args.device)
    result = agent.fit(dataset, train)
    print(f"trained {type(agent).__name__}: final loss {result.final_loss:.4f} in {result.seconds:.0f} s; "
          f"agent saved to {Path(run_dir) / 'final.zip'}")
    if args.eval_episodes > 0:
        env_id = agent.data_info.get("env_id")
        if env_id is None:
            print("the dataset records no env id: skipping evaluation (use scripts/eval.py --env-id ...)")
            return
        res = evaluate(agent, env_id, n_episodes=args.eval_episodes, n_envs=args.eval_envs,
                       seed=args.seed, json_path=Path(run_dir) / "eval.json")
        print(res)


def _describe(name: str, args: Any) -> str:
    doc = (type(args).__doc__ or "").strip()
    if name == "bc":
        return doc
    return f"{doc} Defaults: the {name.partition('-')[2] or 'paper'} preset."


if __name__ == "__main__":
    union = Union[  # type: ignore[valid-type]
        tuple(Annotated[type(v), tyro.conf.subcommand(k, default=v, description=_describe(k, v))]
              for k, v in SUBCOMMANDS.items())
    ]
    main(tyro.cli(union))
