"""Train an agent on a logged dataset: ``python scripts/train.py <agent> --dataset SOURCE [options]``.

``SOURCE`` is a Minari dataset id in the local store (``MINARI_DATASETS_PATH``), the path of a
Minari dataset folder, or a D4RL-format HDF5 file. The run directory gets checkpoints
(``checkpoints/last.zip``, resumed automatically), ``final.zip``, TensorBoard logs,
``metrics.jsonl`` and ``training_curve.png``; with ``--eval-episodes N`` the trained agent is
evaluated on the dataset's env and ``eval.json`` is written.

The subcommands come from the agent registry (:mod:`tt_agents.registry`): one per agent and
preset (``tt`` is the paper's preset, ``tt-small`` the small one, ...), so an agent registered
anywhere (``TT_AGENTS_PLUGINS=my.module``) appears here without touching this file. Agents with
several stages train them all in order, or one with ``--stage NAME``; each stage's optimizer
settings are ``--train.<stage>.*``.

Examples:
    python scripts/train.py bc --dataset hopper/expert-v0 --train.steps 5000
    python scripts/train.py tt-small --dataset hopper/expert-v0 --train.steps 3000
    torchrun --nproc_per_node 2 scripts/train.py bc --dataset hopper/expert-v0
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tt_agents import TrainConfig  # noqa: E402
from tt_agents.data import load_dataset  # noqa: E402
from tt_agents.evaluation import evaluate  # noqa: E402
from tt_agents.registry import agent_classes  # noqa: E402

RUN_FIELDS = ("run_dir", "seed", "device")
"""TrainConfig fields given once for the whole run, as top-level options."""
STAGE_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "betas", "warmup_steps", "min_lr_ratio", "grad_clip")
"""TrainConfig fields each stage of a multi-stage agent sets for itself."""


@dataclass
class Common:
    dataset: str
    """Minari dataset id, Minari dataset folder, or D4RL-format HDF5 file."""
    run_dir: str | None = None
    """Where checkpoints and logs go (default: runs/<subcommand>-<dataset>)."""
    device: str = "auto"
    """'auto' uses CUDA when present."""
    seed: int = 0
    """Seeds the model's initialisation and the data stream."""
    eval_episodes: int = 0
    """Episodes to evaluate the trained agent on the dataset's env afterwards (0: skip)."""
    eval_envs: int = 4
    """Sub-envs of the evaluation vector env."""


def _fields_of(cls: type, names: tuple[str, ...] | None, exclude: tuple[str, ...], defaults: Any) -> list:
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or (names is not None and f.name not in names):
            continue
        out.append((f.name, hints[f.name], field(default=getattr(defaults, f.name))))
    return out


def _train_options(agent_cls: type, stage_names: list[str], train: Any) -> tuple[type, Any]:
    """The ``--train`` group of an agent: TrainConfig less the run fields, per stage if it has several."""
    if len(stage_names) == 1:
        default = train if isinstance(train, TrainConfig) else train[stage_names[0]]
        cls = make_dataclass(f"{agent_cls.__name__}Train", _fields_of(TrainConfig, None, RUN_FIELDS, default))
        return cls, cls(**{k: getattr(default, k) for k in cls.__dataclass_fields__})
    run_default = train if isinstance(train, TrainConfig) else TrainConfig()
    stage_cls = make_dataclass(f"{agent_cls.__name__}StageTrain", _fields_of(TrainConfig, STAGE_FIELDS, (), run_default))
    per_stage = {n: train if isinstance(train, TrainConfig) else train.get(n, TrainConfig()) for n in stage_names}
    stage_fields = [(n, stage_cls, field(default_factory=lambda c=per_stage[n]: stage_cls(
        **{k: getattr(c, k) for k in STAGE_FIELDS}))) for n in stage_names]
    run_fields = _fields_of(TrainConfig, None, RUN_FIELDS + STAGE_FIELDS, run_default)
    cls = make_dataclass(f"{agent_cls.__name__}Train", stage_fields + run_fields)
    return cls, cls()


def subcommands() -> dict[str, tuple[type, Any, Any]]:
    """``name -> (agent class, Args dataclass, default Args)`` for every registered agent and preset."""
    out = {}
    for agent_cls in agent_classes().values():
        presets = agent_cls.presets or {"default": None}
        cli = agent_cls.cli_name or agent_cls.__name__.lower()
        names = list(agent_cls.stage_names)
        for i, (pname, preset) in enumerate(presets.items()):
            config = preset.config if preset is not None else agent_cls.config_class()
            train = preset.train if preset is not None else TrainConfig()
            train_cls, train_default = _train_options(agent_cls, names, train)
            stage_type = Optional[Literal[tuple(names)]] if len(names) > 1 else Optional[str]  # type: ignore[misc]  # noqa: UP045
            fields = [
                ("agent", type(config), field(default_factory=lambda c=config: dataclasses.replace(c))),
                ("train", train_cls, field(default_factory=lambda t=train_default: dataclasses.replace(t))),
                ("stage", stage_type, field(default=None)),
            ]
            if agent_cls.act_class is not None:  # the act-time settings saved as the checkpoint's default
                act = preset.act if preset is not None and preset.act is not None else agent_cls.act_class()
                fields.append(("act", agent_cls.act_class, field(default_factory=lambda a=act: dataclasses.replace(a))))
            args_cls = make_dataclass(f"{agent_cls.__name__}Args", fields, bases=(Common,))
            args_cls.__doc__ = " ".join(filter(None, [(agent_cls.__doc__ or "").strip().splitlines()[0],
                                                      preset.description if preset is not None else ""]))
            out[cli if i == 0 else f"{cli}-{pname}"] = (agent_cls, args_cls, args_cls(
                dataset=tyro.MISSING, agent=config, train=train_default))
    return out


def train_configs(args: Any, run_dir: str) -> TrainConfig | dict[str, TrainConfig]:
    """The TrainConfig(s) the parsed options describe."""
    run = {"run_dir": run_dir, "seed": args.seed, "device": args.device}
    opts = dataclasses.asdict(args.train)
    stage_opts = {k: v for k, v in opts.items() if isinstance(v, dict)}
    if not stage_opts:
        return TrainConfig(**opts, **run)
    common = {k: v for k, v in opts.items() if k not in stage_opts}
    return {name: TrainConfig(**common, **o, **run) for name, o in stage_opts.items()}


def main(name: str, agent_cls: type, args: Any) -> None:
    dataset = load_dataset(args.dataset)
    print(dataset)
    run_dir = args.run_dir or str(Path("runs") / f"{name}-{args.dataset.replace('/', '_').strip('._')}")
    agent = agent_cls(dataset.observation_space, dataset.action_space, args.agent, device=args.device, seed=args.seed,
                      act=getattr(args, "act", None))
    result = agent.fit(dataset, train_configs(args, run_dir), stage=args.stage)
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


if __name__ == "__main__":
    commands = subcommands()
    union = Union[  # type: ignore[valid-type]
        tuple(Annotated[args_cls, tyro.conf.subcommand(k, default=default, description=args_cls.__doc__)]
              for k, (_, args_cls, default) in commands.items())
    ]
    parsed = tyro.cli(union)
    for k, (agent_cls, args_cls, _) in commands.items():
        if type(parsed) is args_cls:
            main(k, agent_cls, parsed)
            break
