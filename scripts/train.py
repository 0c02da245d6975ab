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

A run directory belongs to one run: run again with the same options, it resumes (a larger
``--train.steps`` continues training); with other settings it is refused, naming the options that
differ; ``--overwrite`` starts it over. Ctrl-C (or SIGTERM) finishes the step, writes a checkpoint
and prints the command that resumes it (exit code 130, 143 for SIGTERM). A user error (missing
dataset, bad option value) prints one line and exits 2; ``--debug`` shows its traceback.

Examples:
    python scripts/train.py bc --dataset hopper/expert-v0 --train.steps 5000
    python scripts/train.py tt-small --dataset hopper/expert-v0 --train.steps 3000
    torchrun --nproc_per_node 2 scripts/train.py bc --dataset hopper/expert-v0
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import sys
import typing
from dataclasses import dataclass, field, make_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import tyro

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _cli import (  # noqa: E402
    UsageError,
    annotate,
    check_device,
    clean_help,
    documented,
    documented_value,
    field_docs,
    run,
    undocumented,
)

from tt_agents import TrainConfig  # noqa: E402
from tt_agents.data import load_dataset  # noqa: E402
from tt_agents.evaluation import DEFAULT_N_ENVS, evaluate  # noqa: E402
from tt_agents.registry import agent_classes  # noqa: E402
from tt_agents.trainer import TrainingInterrupted, check_run_dir, run_config  # noqa: E402

RUN_FIELDS = ("run_dir", "seed", "device", "overwrite")
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
    """'auto' uses CUDA when present; 'cpu', 'cuda', 'cuda:N' (under torchrun each rank takes its local GPU)."""
    seed: int = 0
    """Seeds the model's initialisation and the data stream."""
    overwrite: bool = False
    """Start over in a --run-dir that holds an earlier run (its checkpoints, logs and final.zip are deleted
    first); without it such a run is resumed, or refused if its settings differ."""
    eval_episodes: int = 0
    """Episodes to evaluate the trained agent on the dataset's env afterwards (0: skip)."""
    eval_envs: int = DEFAULT_N_ENVS
    """Sub-envs of the evaluation vector env (scripts/eval.py's and evaluate()'s default)."""
    debug: bool = False
    """Show the full traceback of an error (also TT_AGENTS_DEBUG=1)."""


def _fields_of(cls: type, names: tuple[str, ...] | None, exclude: tuple[str, ...], defaults: Any) -> list:
    """``make_dataclass`` fields copied from ``cls``, with ``cls``'s field docstrings as their help."""
    out = []
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude or (names is not None and f.name not in names):
            continue
        out.append((f.name, annotate(hints[f.name], docs.get(f.name)), field(default=getattr(defaults, f.name))))
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


def cost_line(name: str, figures: dict[str, dict]) -> str:
    """What benchmarks.md measured for subcommand ``name`` (``""`` if it has not been measured)."""
    f = figures.get(name)
    if not f:
        return ""
    return (f"Measured (benchmarks.md, presets: a shared 2-core CPU, Hopper-v5's spaces): {f['parameters']:,} "
            f"parameters, {f['steps_per_s']:.3g} train steps/s, {f['s_per_action']:.3g} s per action.")


def subcommands() -> dict[str, tuple[type, Any, Any]]:
    """``name -> (agent class, Args dataclass, default Args)`` for every registered agent and preset."""
    from benches.presets import measured

    figures = measured()
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
            stage_help = (f"Train only this stage (its earlier ones must be trained already); default: all of "
                          f"{', '.join(names)}, in order.")
            fields = [
                ("agent", documented(type(config)), field(default_factory=lambda c=config: documented_value(c))),
                ("train", train_cls, field(default_factory=lambda t=train_default: dataclasses.replace(t))),
                ("stage", annotate(stage_type, stage_help), field(default=None)),
            ]
            if agent_cls.act_class is not None:  # the act-time settings saved as the checkpoint's default
                act = preset.act if preset is not None and preset.act is not None else agent_cls.act_class()
                fields.append(("act", documented(agent_cls.act_class),
                               field(default_factory=lambda a=act: documented_value(a))))
            args_cls = make_dataclass(f"{agent_cls.__name__}Args", fields, bases=(Common,))
            name = cli if i == 0 else f"{cli}-{pname}"
            args_cls.__doc__ = clean_help(" ".join(filter(None, [
                (agent_cls.__doc__ or "").strip().splitlines()[0],
                f"Preset {pname!r}: {preset.description.rstrip('.')}." if preset is not None else "",
                cost_line(name, figures)])))
            out[name] = (agent_cls, args_cls, args_cls(
                dataset=tyro.MISSING, agent=documented_value(config), train=train_default))
    return out


def train_configs(args: Any, run_dir: str) -> TrainConfig | dict[str, TrainConfig]:
    """The TrainConfig(s) the parsed options describe."""
    run = {"run_dir": run_dir, "seed": args.seed, "device": args.device, "overwrite": args.overwrite}
    opts = dataclasses.asdict(args.train)
    stage_opts = {k: v for k, v in opts.items() if isinstance(v, dict)}
    if not stage_opts:
        return TrainConfig(**opts, **run)
    common = {k: v for k, v in opts.items() if k not in stage_opts}
    return {name: TrainConfig(**common, **o, **run) for name, o in stage_opts.items()}


def default_run_dir(name: str, dataset: str) -> str:
    """``runs/<subcommand>-<dataset>``, the run directory without ``--run-dir``."""
    return str(Path("runs") / f"{name}-{dataset.replace('/', '_').strip('._')}")


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run: the same options, less those that would start it over."""
    drop = {"--overwrite", "--train.no-resume", "--debug"}
    args = [a for a in argv if a not in drop]
    if os.environ.get("TORCHELASTIC_RUN_ID") is not None:  # under torchrun
        return shlex.join(["torchrun", "--nproc_per_node", os.environ.get("LOCAL_WORLD_SIZE", "1"), sys.argv[0], *args])
    return shlex.join([sys.executable, sys.argv[0], *args])


def act_of(args: Any) -> Any:
    """The act-time settings the options describe (``None`` for agents without any)."""
    act = getattr(args, "act", None)
    return undocumented(act) if act is not None else None


def check_options(agent_cls: type, args: Any, run_dir: str) -> TrainConfig | dict[str, TrainConfig]:
    """Every check that needs no data, before the dataset is loaded (raises UsageError or TrainConfigError)."""
    check_device(args.device)
    if args.eval_episodes < 0:
        raise UsageError(f"--eval-episodes must be >= 0 (0 skips the evaluation), got {args.eval_episodes}")
    if args.eval_envs < 1:
        raise UsageError(f"--eval-envs must be >= 1, got {args.eval_envs}")
    configs = train_configs(args, run_dir)
    per_stage = configs if isinstance(configs, dict) else {agent_cls.stage_names[0]: configs}
    for stage, cfg in per_stage.items():
        cfg.check("--train" if len(per_stage) == 1 else f"--train.{stage}")
    stages = [args.stage] if args.stage is not None else list(agent_cls.stage_names)
    current = run_config(agent_cls.__name__, undocumented(args.agent), act_of(args), None, per_stage)
    cfg = next(iter(per_stage.values()))
    check_run_dir(run_dir, current, stages, cfg.resume, cfg.overwrite)
    return configs


def main(name: str, agent_cls: type, args: Any, argv: list[str]) -> None:
    run_dir = args.run_dir or default_run_dir(name, args.dataset)
    configs = check_options(agent_cls, args, run_dir)
    progress = next(iter(configs.values())).progress if isinstance(configs, dict) else configs.progress
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 speaks for the run (and evaluates)
    dataset = load_dataset(args.dataset)
    if rank0:
        print(dataset)
    agent = agent_cls(dataset.observation_space, dataset.action_space, undocumented(args.agent), device=args.device,
                      seed=args.seed, act=act_of(args))
    try:
        result = agent.fit(dataset, configs, stage=args.stage)
    except TrainingInterrupted as e:
        if not rank0:
            raise SystemExit(e.exit_code) from None
        if e.checkpoint is None:
            print(f"{e}", file=sys.stderr)
        else:
            print(f"interrupted after step {e.step} of {e.steps}" + (f" of stage {e.stage!r}" if args.stage or len(
                agent_cls.stage_names) > 1 else "") + f"; checkpoint {e.checkpoint}; resume with: "
                  f"{resume_command(argv)}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    if not rank0:
        return
    final = Path(run_dir) / "final.zip"
    if not result.losses:
        steps_option = "--train.steps" if len(agent_cls.stage_names) == 1 else f"--train.{result.stage}.steps"
        print(f"{run_dir} is already trained to {result.steps} steps: nothing to do ({final}; ask for more "
              f"{steps_option} to continue, or --overwrite to start over)")
    else:
        print(f"trained {type(agent).__name__}: final loss {result.final_loss:.4f} in {result.seconds:.0f} s; "
              f"agent saved to {final}")
    if args.eval_episodes > 0:
        env_id = agent.data_info.get("env_id")
        if env_id is None:
            print("the dataset records no env id: skipping evaluation (use scripts/eval.py --env-id ...)")
            return
        res = evaluate(agent, env_id, n_episodes=args.eval_episodes, n_envs=args.eval_envs,
                       seed=args.seed, json_path=Path(run_dir) / "eval.json", progress=progress)
        print(res)


def parser_type(commands: dict[str, tuple[type, Any, Any]]) -> Any:
    """The tyro type of the command line: one subcommand per agent and preset."""
    return Union[  # type: ignore[valid-type]
        tuple(Annotated[args_cls, tyro.conf.subcommand(k, default=default, description=args_cls.__doc__)]
              for k, (_, args_cls, default) in commands.items())
    ]


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv

    def go() -> None:
        commands = subcommands()
        parsed = tyro.cli(parser_type(commands), args=argv)
        for k, (agent_cls, args_cls, _) in commands.items():
            if type(parsed) is args_cls:
                main(k, agent_cls, parsed, argv)
                break

    run(go, argv)


if __name__ == "__main__":
    cli()
