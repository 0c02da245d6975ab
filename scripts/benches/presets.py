"""What each preset costs on this machine: parameters, training steps/s, planning seconds per action.

For every ``scripts/train.py`` subcommand asked for (an agent and one of its presets), on Hopper-v5's
spaces (the checked-in Minari fixture ``tests/data/minari``: 11-dim observations, 3-dim actions,
real episodes): the parameter count, training throughput at the preset's own batch size and
settings over a short budget (``steps`` optimizer steps after ``warmup`` untimed ones; the figure
is steps per second of the timed ones, median over ``rounds``), the time the preset's default step
budget would take at that rate, and the seconds one ``predict`` takes for one env with the preset's
act-time settings (median of ``actions`` calls after one warm call, mid-episode contexts for the
sequence models). Untrained weights: the cost of a step or a plan does not depend on their values.

The figures land in the preset table of README and, machine-readable, in benchmarks.md, from which
``scripts/train.py <preset> --help`` quotes them.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benches._common import markdown_table, write_section
from tt_agents import TrainConfig
from tt_agents.data import load_dataset

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "data" / "minari"
DATASET = "fixtures/hopper/random-v0"
JSON_MARK = "presets-json:"
"""benchmarks.md holds the figures as one HTML comment ``<!-- presets-json: {...} -->`` for train.py's help."""


@dataclass
class Args:
    presets: tuple[str, ...] = ("bc", "dt-cpu", "dt", "tt-tiny", "tt-small", "tt")
    """scripts/train.py subcommands to measure (one-stage agents)."""
    steps: int = 6
    """Timed optimizer steps per round (a short budget: the paper's TT takes seconds per step on a CPU)."""
    warmup: int = 2
    """Untimed steps before them (allocation, first-call overheads)."""
    rounds: int = 2
    """Rounds of timed steps; the median is reported."""
    actions: int = 3
    """Timed predict calls per preset (after one warm call)."""
    threads: int = 0
    """torch threads (0: as many as this process may use)."""


def _parameters(agent) -> int:
    return sum(p.numel() for p in agent.model.parameters())


def _steps_per_s(agent_cls, config, act, train: TrainConfig, dataset, args: Args) -> float:
    """Median steps/s of ``args.rounds`` rounds of ``args.steps`` steps, each after ``args.warmup`` untimed ones."""
    rates = []
    for r in range(args.rounds):
        agent = agent_cls(dataset.observation_space, dataset.action_space, config, device="cpu", seed=r, act=act)
        cfg = replace(train, steps=args.warmup + args.steps, run_dir=None, progress=False, device="cpu",
                      log_every=10**9, seed=r)
        times: list[float] = []
        stage = agent.stages()[0]
        inner = stage.loss

        def timed(module, batch, inner=inner, times=times):  # the start of every step's forward pass
            times.append(time.perf_counter())
            return inner(module, batch)

        stage.loss = timed
        agent.stages = lambda stage=stage: [stage]  # the trainer gets this (instrumented) stage
        agent.fit(dataset, cfg)
        times.append(time.perf_counter())
        rates.append(args.steps / (times[-1] - times[args.warmup]))
    return statistics.median(rates)


def _seconds_per_action(agent, dataset, args: Args) -> float:
    """Median seconds of one ``predict`` for one env, mid-episode (a context of 20 steps of a real episode)."""
    ep = max(dataset, key=len)
    state = agent.initial_state(1) if hasattr(agent, "initial_state") else None
    obs = ep.observations
    warm = min(len(ep) - 1, 20)
    needs_reward = type(agent).__name__ in ("DecisionTransformer", "TTPlanner")  # as AddPreviousReward gives them

    def call(t: int, st):
        o = {"observation": obs[t][None], "previous_reward": ep.rewards[t - 1: t] if t else [0.0]} if needs_reward \
            else obs[t][None]
        start = [t == 0]
        _, st = agent.predict(o, st, episode_start=start)
        return st

    for t in range(warm):
        state = call(t, state)
    times = []
    for i in range(args.actions + 1):
        t0 = time.perf_counter()
        state = call(warm + (i % 2), state) if warm + 1 < len(ep) else call(warm, state)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def measure(name: str, agent_cls, config, act, train, dataset, args: Args) -> dict:
    agent = agent_cls(dataset.observation_space, dataset.action_space, config, device="cpu", seed=0, act=act)
    agent.fit(dataset, replace(train, steps=1, run_dir=None, progress=False, device="cpu"))  # fitted preprocessing
    agent.model.eval()
    row = {"preset": name, "agent": agent_cls.__name__, "parameters": _parameters(agent),
           "batch_size": train.batch_size, "default_steps": train.steps}
    row["steps_per_s"] = _steps_per_s(agent_cls, config, act, train, dataset, args)
    row["default_hours"] = train.steps / row["steps_per_s"] / 3600
    with torch.inference_mode():
        row["s_per_action"] = _seconds_per_action(agent, dataset, args)
    return row


def main(args: Args) -> list[dict]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import train as train_script

    if args.threads:
        torch.set_num_threads(args.threads)
    store = Path(tempfile.mkdtemp(prefix="bench-presets-store-"))
    try:
        shutil.copytree(FIXTURE, store / "store")
        os.environ["MINARI_DATASETS_PATH"] = str(store / "store")
        dataset = load_dataset(DATASET)
    finally:
        shutil.rmtree(store, ignore_errors=True)
    commands = train_script.subcommands()
    rows = []
    for name in args.presets:
        if name not in commands:
            raise SystemExit(f"error: no train.py subcommand {name!r}; choose from {', '.join(commands)}")
        agent_cls, _, default = commands[name]
        if len(agent_cls.stage_names) > 1:
            raise SystemExit(f"error: {name} has several stages ({agent_cls.stage_names}); this bench times one")
        config = train_script.undocumented(default.agent)
        act = train_script.act_of(default)
        train = train_script.train_configs(default, run_dir="")
        train = train if isinstance(train, TrainConfig) else next(iter(train.values()))
        row = measure(name, agent_cls, config, act, train, dataset, args)
        print(f"{name}: {row['parameters']:,} parameters, {row['steps_per_s']:.3g} steps/s at batch "
              f"{row['batch_size']} ({row['default_steps']} steps: {row['default_hours']:.2g} h), "
              f"{row['s_per_action']:.3g} s per action", flush=True)
        rows.append(row)
    table = markdown_table(
        ["preset", "agent", "parameters", "batch", "train steps/s", "default steps", "default steps take",
         "planning s/action (1 env)"],
        [[r["preset"], r["agent"], f"{r['parameters']:,}", r["batch_size"], f"{r['steps_per_s']:.3g}",
          r["default_steps"], _duration(r["default_hours"]), f"{r['s_per_action']:.3g}"] for r in rows])
    figures = {r["preset"]: {k: r[k] for k in ("parameters", "steps_per_s", "s_per_action")} for r in rows}
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    body = (f"Hopper-v5's spaces (11-dim observations, 3-dim actions), CPU, {torch.get_num_threads()} torch threads, "
            f"load average at the end {load} (other jobs shared the cores: the figures are lower bounds); "
            f"{args.steps} timed steps per round after {args.warmup} untimed, median of {args.rounds} rounds; "
            f"planning: median of {args.actions} predict calls for one env mid-episode, untrained weights.\n\n"
            f"{table}\n\n<!-- {JSON_MARK} {json.dumps(figures)} -->")
    write_section("presets", "Presets: parameters, training steps/s and planning time", body)
    return rows


def _duration(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    return f"{hours * 60:.0f} min" if hours < 1 else f"{hours:.1f} h"


def measured(path: Path | None = None) -> dict[str, dict]:
    """The figures of the last recorded run (``{}`` if benchmarks.md has none), for train.py's help."""
    from benches._common import BENCHMARKS_MD

    try:
        text = (path or BENCHMARKS_MD).read_text()
    except OSError:
        return {}
    start = text.find(f"<!-- {JSON_MARK}")
    if start < 0:
        return {}
    end = text.find("-->", start)
    try:
        return json.loads(text[start + len(f"<!-- {JSON_MARK}"):end])
    except json.JSONDecodeError:
        return {}
