"""The main job, end to end on embedded defaults: ``python scripts/demo.py``.

1. Train a Stable-Baselines3 SAC expert on a MuJoCo task and log its rollouts into Minari datasets
   (``scripts/collect.py``): ``random`` and ``expert``, which give the reference scores, and the
   dataset the agents learn from (``expert`` by default).
2. Train every agent on that dataset through the same ``agent.fit`` call: BC, the Decision
   Transformer and the Trajectory Transformer (TTPlanner).
3. Evaluate each on a vector env (one batched ``predict`` per step for all sub-envs) and print a
   score table with D4RL-style normalized scores; write ``results.json`` and ``results.md``.

Everything goes under ``--out-dir`` (datasets in ``<out-dir>/datasets`` unless
``MINARI_DATASETS_PATH`` is set). Steps already done (datasets, trained agents) are reused when
the demo is run again. The defaults fit in about 15 minutes on 2 CPU cores; they are far below
the papers' budgets, so the scores show the pipeline working, not the papers' numbers (see
benchmarks.md for those runs).

Ctrl-C (or SIGTERM) while an agent trains writes its checkpoint; the same command resumes there.
A user error prints one line and exits 2 (``--debug`` shows the traceback).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _cli import check_device, run  # noqa: E402

from tt_agents import TrainConfig  # noqa: E402
from tt_agents.evaluation import DEFAULT_N_ENVS  # noqa: E402
from tt_agents.trainer import TrainingInterrupted  # noqa: E402


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """MuJoCo task the expert is trained on and the agents are evaluated on."""
    out_dir: str = "runs/demo"
    """Where datasets, runs and results go."""
    expert_steps: int = 15_000
    """SAC training steps of the expert (RL Zoo uses 1M; this is a quick, weak expert)."""
    dataset: str = "expert"
    """The dataset the agents learn from: expert, medium, medium-replay or random. With this quick expert,
    medium-replay holds only a few thousand near-random steps; benchmarks.md has runs on larger ones."""
    dataset_steps: int = 10_000
    """Transitions in the rolled-out datasets (random, expert, medium)."""
    max_episode_steps: int = 400
    """Time limit of the env, in collection and evaluation."""
    agents: tuple[str, ...] = ("bc", "dt", "tt")
    """Which agents to train and evaluate (subcommand names of scripts/train.py)."""
    bc_steps: int = 2000
    dt_steps: int = 1500
    tt_steps: int = 3000
    """Optimizer steps of each agent."""
    eval_episodes: int = 4
    """Evaluation episodes per agent, spread over --eval-envs sub-envs."""
    eval_envs: int = DEFAULT_N_ENVS
    seed: int = 0
    device: str = "auto"
    """'auto' uses CUDA when present."""
    debug: bool = False
    """Show the full traceback of an error (also TT_AGENTS_DEBUG=1)."""


def collect(args: Args, store: Path) -> dict:
    import collect as collect_script

    from tt_agents.data import DatasetError, load_dataset

    namespace = collect_script.default_namespace(args.env_id)
    kinds = tuple(dict.fromkeys(("random", "expert", args.dataset)))
    wanted = [f"{namespace}/{k}-v0" for k in kinds]
    try:
        datasets = {k: load_dataset(i) for k, i in zip(kinds, wanted)}
        print(f"reusing datasets {wanted} in {store}")
        return datasets
    except DatasetError:  # not made yet
        pass
    cargs = collect_script.Args(
        env_id=args.env_id,
        datasets=kinds,
        expert_steps=args.expert_steps,
        dataset_steps=args.dataset_steps,
        num_envs=4,
        max_episode_steps=args.max_episode_steps,
        n_checkpoints=5,
        eval_episodes=3,
        seed=args.seed,
        out_dir=str(Path(args.out_dir) / "expert"),
        overwrite=True,
        device="cpu",
        torch_threads=max(1, torch.get_num_threads()),
    )
    collect_script.main(cargs)
    return {k: load_dataset(i) for k, i in zip(kinds, wanted)}


DEMO_PRESETS = ("cpu", "small")
"""The preset each agent trains with here: the first of these it has, else its first preset."""


def make_agent(name: str, dataset, steps: int | None, device: str = "auto", seed: int = 0):
    """An untrained agent for the dataset's spaces and the TrainConfig it trains with (CPU-sized presets).

    ``name`` is an agent's subcommand name in the registry (``bc``, ``dt``, ``tt``, or a plugin's).
    """
    from tt_agents.registry import agent_classes

    classes = {c.cli_name or c.__name__.lower(): c for c in agent_classes().values()}
    if name not in classes:
        raise ValueError(f"unknown agent {name!r}: choose from {', '.join(sorted(classes))}")
    agent_cls = classes[name]
    preset_name = next((p for p in DEMO_PRESETS if p in agent_cls.presets), next(iter(agent_cls.presets), None))
    if preset_name is None:
        config, train = agent_cls.config_class(), TrainConfig()
    else:
        config, train = agent_cls.presets[preset_name].config, agent_cls.presets[preset_name].train
    if steps is not None:
        train = ({k: dataclasses.replace(v, steps=steps) for k, v in train.items()} if isinstance(train, dict)
                 else dataclasses.replace(train, steps=steps))
    return agent_cls(dataset.observation_space, dataset.action_space, config, device=device, seed=seed), train


def train_and_evaluate(name: str, dataset, steps: int | None, run_dir: Path, env_fn, ref_min: float, ref_max: float,
                       eval_episodes: int, eval_envs: int, device: str = "auto", seed: int = 0) -> dict:
    """Train agent ``name`` (or reuse ``run_dir/final.zip``), evaluate it, and return a score-table row."""
    from tt_agents import load_agent
    from tt_agents.evaluation import evaluate

    final = run_dir / "final.zip"
    if final.exists():
        agent, train_s = load_agent(final, device=device), 0.0
        print(f"reusing {final}")
    else:
        agent, train = make_agent(name, dataset, steps, device, seed)
        run = {"run_dir": str(run_dir), "seed": seed, "checkpoint_every": 500}
        train = ({k: dataclasses.replace(v, **run) for k, v in train.items()} if isinstance(train, dict)
                 else dataclasses.replace(train, **run))
        t0 = time.perf_counter()
        agent.fit(dataset, train)
        train_s = time.perf_counter() - t0
    res = evaluate(agent, env_fn, n_episodes=eval_episodes, n_envs=eval_envs, seed=seed + 1000,
                   ref_min_score=ref_min, ref_max_score=ref_max, json_path=run_dir / "eval.json")
    print(f"{name}: {res}")
    return {"agent": name, "return": res.mean_return, "stderr": res.stderr_return, "normalized": res.normalized_score,
            "normalized_stderr": res.normalized_stderr, "train_steps": steps, "train_s": train_s,
            "eval_s": res.seconds, "episodes": res.n_episodes}


def dataset_row(name: str, dataset, ref_min: float, ref_max: float) -> dict:
    """The dataset's own average return, as a score-table row."""
    from tt_agents.evaluation import normalized_score

    returns = dataset.returns()
    stderr = float(np.std(returns, ddof=1) / np.sqrt(len(returns))) if len(returns) > 1 else 0.0
    return {"agent": name, "return": float(np.mean(returns)), "stderr": stderr,
            "normalized": normalized_score(float(np.mean(returns)), ref_min, ref_max),
            "normalized_stderr": 100 * stderr / abs(ref_max - ref_min), "train_steps": 0, "train_s": 0.0,
            "eval_s": 0.0, "episodes": len(returns)}


def score_table(rows: list[dict]) -> str:
    lines = ["| agent | return | normalized score | train steps | train s | eval s |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['agent']} | {r['return']:.1f} ± {r['stderr']:.1f} | {r['normalized']:.1f} ± "
                     f"{r['normalized_stderr']:.1f} | {r['train_steps']} | {r['train_s']:.0f} | {r['eval_s']:.0f} |")
    return "\n".join(lines)


def main(args: Args) -> list[dict]:
    check_device(args.device)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    store = Path(os.environ.setdefault("MINARI_DATASETS_PATH", str((out / "datasets").resolve())))
    t_start = time.perf_counter()
    datasets = collect(args, store)
    train_ds = datasets[args.dataset]
    # the reference returns collect.py recorded: finished episodes of the random policy and of the expert
    ref_min, ref_max = (float(train_ds.metadata[k]) for k in ("ref_min_score", "ref_max_score"))
    print(f"\ntraining on {train_ds}\nreference returns: random {ref_min:.1f}, expert {ref_max:.1f}\n")
    steps = {"bc": args.bc_steps, "dt": args.dt_steps, "tt": args.tt_steps}  # other agents: their preset's
    rows = [dataset_row(f"dataset ({args.dataset})", train_ds, ref_min, ref_max)]
    for name in args.agents:
        rows.append(train_and_evaluate(name, train_ds, steps.get(name), out / name, lambda: _make_env(args), ref_min,
                                       ref_max, args.eval_episodes, args.eval_envs, args.device, args.seed))
    text = score_table(rows)
    print(f"\n{args.env_id}, trained on {args.dataset} ({train_ds.total_steps} steps), "
          f"{args.eval_episodes} evaluation episodes each:\n\n{text}\n")
    print(f"total time {time.perf_counter() - t_start:.0f} s; results in {out / 'results.json'}")
    (out / "results.md").write_text(text + "\n")
    (out / "results.json").write_text(json.dumps({"args": dataclasses.asdict(args), "rows": rows}, indent=1))
    return rows


def _make_env(args: Args):
    import gymnasium as gym

    return gym.make(args.env_id, max_episode_steps=args.max_episode_steps)


def cli(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv

    def go() -> None:
        try:
            main(tyro.cli(Args, args=argv))
        except TrainingInterrupted as e:
            print(f"interrupted after step {e.step} of {e.steps}; checkpoint {e.checkpoint}; resume with: "
                  f"{' '.join([sys.executable, sys.argv[0], *argv])}", file=sys.stderr)
            raise SystemExit(e.exit_code) from None

    run(go, argv)


if __name__ == "__main__":
    cli()
