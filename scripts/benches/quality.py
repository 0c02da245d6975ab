"""Scores on D4RL-kind MuJoCo data: TT, DT and BC over several seeds, beside the TT paper's table.

Trains each agent on each dataset (made by ``scripts/collect.py``: ids in the local Minari store,
``MINARI_DATASETS_PATH``) once per seed with the CPU-sized presets of ``scripts/demo.py``,
evaluates it on a vector env (TT plans for all sub-envs in one batched search), and reports
D4RL-style normalized scores, ``100 * (R - random) / (expert - random)``, as the mean over seeds
with its standard error. Two normalizations: with the reference returns collect.py measured for
these datasets (the datasets' own), and with D4RL's (the paper's), which compare with the paper's
numbers only as far as the datasets are alike.

Every run lives in ``--out-dir/<dataset>/<agent>/seed_<k>``: training resumes from its last
checkpoint, and a finished evaluation (``eval.json`` with the same settings) is reused, so an
interrupted benchmark picks up where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np

from benches._common import markdown_table, write_section

PAPER = {
    ("hopper", "medium"): {"bc": 63.9, "dt": 67.6, "tt": 61.1},
    ("hopper", "medium-replay"): {"bc": 27.6, "dt": 82.7, "tt": 91.5},
    ("halfcheetah", "medium"): {"bc": 43.1, "dt": 42.6, "tt": 46.9},
    ("halfcheetah", "medium-replay"): {"bc": 4.3, "dt": 36.6, "tt": 41.9},
}
"""The Trajectory Transformer paper's Table 1 (D4RL v2 datasets, D4RL-normalized scores)."""

D4RL_REF = {"Hopper": (-20.272305, 3234.3), "HalfCheetah": (-280.178953, 12135.0), "Walker2d": (1.629008, 4592.3)}
"""D4RL's reference returns (random, expert) per env, for the paper-comparable normalization."""

PAPER_SEARCH = {"Hopper": (128, 15), "HalfCheetah": (32, 5)}
"""The TT paper's beam width and horizon per env (HalfCheetah needs only the short search)."""


@dataclass
class Args:
    datasets: tuple[str, ...] = (
        "halfcheetah-td3/medium-v0", "halfcheetah-td3/medium-replay-v0", "hopper-td3/medium-v0",
        "hopper-td3/medium-replay-v0",
    )
    """Minari ids in the local store (make them with scripts/collect.py)."""
    agents: tuple[str, ...] = ("bc", "dt", "tt")
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds of every agent (the table reports the mean and its standard error over them)."""
    bc_steps: int = 10_000
    dt_steps: int = 10_000
    tt_steps: int = 10_000
    """Optimizer steps of each agent (the papers train for 100k+ on a GPU)."""
    tt_seeds: tuple[int, ...] | None = None
    """TT's seeds (default: ``--seeds``); TT trains about 10x slower than DT on a CPU."""
    tt_datasets: tuple[str, ...] | None = None
    """The datasets TT runs on (default: all of ``--datasets``)."""
    tt_search: str = "paper"
    """TT's search: "paper" (beam 128 horizon 15 on Hopper, 32 x 5 on HalfCheetah), or "BxH" for every env."""
    eval_episodes: int = 8
    """Evaluation episodes per seed."""
    eval_envs: int = 8
    """Sub-envs of the evaluation vector env (TT plans for all of them in one batched search)."""
    max_episode_steps: int | None = None
    """Override the env's time limit (default: the env's own, 1000 for Hopper and HalfCheetah)."""
    only_finished: bool = False
    """Report only the runs whose evaluation is already on disk, and train nothing (a partial table: each row says
    how many seeds it holds; agents with none are left out)."""
    out_dir: str = "runs/quality"
    device: str = "auto"
    notes: str = ""
    """Free text appended to the section (how the datasets were made)."""


def search_for(env_id: str, spec: str) -> tuple[int, int]:
    """``(beam width, horizon)`` of TT on ``env_id`` under ``--tt-search``."""
    if spec == "paper":
        name = env_id.split("-")[0]
        return PAPER_SEARCH.get(name, (128, 15))
    try:
        beam, horizon = (int(x) for x in spec.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--tt-search {spec!r}: use 'paper' or BEAMxHORIZON such as 32x5") from None
    return beam, horizon


def run_one(name: str, ds, steps: int, seed: int, run_dir: Path, env_fn, search: tuple[int, int] | None,
            args: Args) -> dict | None:
    """Train (resuming) and evaluate one agent at one seed; reuses a finished evaluation (``None``: none, and
    ``--only-finished``)."""
    from demo import make_agent

    from tt_agents import load_agent
    from tt_agents.evaluation import evaluate

    settings = {"episodes": args.eval_episodes, "envs": args.eval_envs, "search": search, "steps": steps,
                "max_episode_steps": args.max_episode_steps}
    done = run_dir / "quality_eval.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if saved["settings"] == json.loads(json.dumps(settings)):
            return saved["result"]
    if args.only_finished:
        return None
    final = run_dir / "final.zip"
    t0 = time.perf_counter()
    if final.exists():
        agent = load_agent(final, device=args.device)
        train_s = json.loads((run_dir / "train_seconds.json").read_text())["seconds"] if (
            run_dir / "train_seconds.json").exists() else float("nan")
    else:
        agent, train = make_agent(name, ds, steps, args.device, seed)
        run = {"run_dir": str(run_dir), "seed": seed, "checkpoint_every": 500}
        train = ({k: dataclasses.replace(v, **run) for k, v in train.items()} if isinstance(train, dict)
                 else dataclasses.replace(train, **run))
        agent.fit(ds, train)
        train_s = time.perf_counter() - t0  # this process's share (a resumed run's earlier share is not counted)
        (run_dir / "train_seconds.json").write_text(json.dumps({"seconds": train_s}))
    if search is not None:
        agent.act = dataclasses.replace(agent.act, beam_width=search[0], horizon=search[1])
    res = evaluate(agent, env_fn, n_episodes=args.eval_episodes, n_envs=args.eval_envs, seed=10_000 + 100 * seed,
                   json_path=run_dir / "eval.json")
    result = {"agent": name, "seed": seed, "mean_return": res.mean_return, "returns": list(map(float, res.returns)),
              "train_steps": steps, "train_s": train_s, "eval_s": res.seconds}
    done.write_text(json.dumps({"settings": settings, "result": result}, indent=1))
    print(f"{run_dir}: return {res.mean_return:.1f} (train {train_s:.0f} s, eval {res.seconds:.0f} s)")
    return result


def norm(r: float, ref: tuple[float, float]) -> float:
    return 100.0 * (r - ref[0]) / (ref[1] - ref[0])


def mean_se(xs: list[float]) -> tuple[float, float]:
    xs = [x for x in xs if x == x]
    if not xs:
        return float("nan"), float("nan")
    return float(np.mean(xs)), (float(np.std(xs, ddof=1) / np.sqrt(len(xs))) if len(xs) > 1 else float("nan"))


def fmt(m: float, se: float) -> str:
    return f"{m:.1f} ± {se:.1f}" if se == se else f"{m:.1f}"


def main(args: Args) -> dict:
    from tt_agents.data import load_dataset

    steps = {"bc": args.bc_steps, "dt": args.dt_steps, "tt": args.tt_steps}
    body, results, summary = [], {}, []
    for ds_id in args.datasets:
        ds = load_dataset(ds_id)
        env_id, ref_min, ref_max = (ds.metadata.get(k) for k in ("env_id", "ref_min_score", "ref_max_score"))
        if env_id is None or ref_min is None or ref_max is None:
            raise SystemExit(f"{ds_id} records no env id or reference scores: make it with scripts/collect.py")
        own = (float(ref_min), float(ref_max))
        d4rl = D4RL_REF.get(env_id.split("-")[0])
        kind = ds_id.split("/")[-1].rsplit("-v", 1)[0]
        paper = PAPER.get((env_id.split("-")[0].lower(), kind), {})
        kwargs = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
        env_fn = lambda: gym.make(env_id, **kwargs)  # noqa: B023
        search = search_for(env_id, args.tt_search)
        data_returns = ds.returns()
        rows = [["dataset average", "-", "-", fmt(*mean_se([norm(r, own) for r in data_returns])),
                 fmt(*mean_se([norm(r, d4rl) for r in data_returns])) if d4rl else "-", "-", "-", "-", "-"]]
        per_agent = {}
        agents = [a for a in args.agents if a != "tt" or args.tt_datasets is None or ds_id in args.tt_datasets]
        for name in agents:
            seeds = args.tt_seeds if name == "tt" and args.tt_seeds is not None else args.seeds
            runs = [r for s in seeds if (r := run_one(name, ds, steps[name], s, Path(args.out_dir) /
                                                      ds_id.replace("/", "_") / name / f"seed_{s}", env_fn,
                                                      search if name == "tt" else None, args)) is not None]
            if not runs:
                continue
            means = [r["mean_return"] for r in runs]
            own_m = mean_se([norm(m, own) for m in means])
            d4_m = mean_se([norm(m, d4rl) for m in means]) if d4rl else (float("nan"), float("nan"))
            per_agent[name] = {"runs": runs, "own": own_m, "d4rl": d4_m}
            rows.append([name, len(runs), " / ".join(f"{m:.0f}" for m in means), fmt(*own_m), fmt(*d4_m) if d4rl else "-",
                         paper.get(name, "-"), steps[name], f"{np.nanmean([r['train_s'] for r in runs]):.0f}",
                         f"{np.mean([r['eval_s'] for r in runs]):.0f}"])
        results[ds_id] = per_agent
        summary.append((ds_id, env_id, kind, per_agent, paper))
        search_note = f"; TT search: beam {search[0]}, horizon {search[1]}" if "tt" in per_agent else ""
        body.append(
            f"**{ds_id}** ({len(ds)} episodes, {ds.total_steps} steps; reference returns measured by collect.py: "
            f"random {own[0]:.1f}, expert {own[1]:.1f}; {args.eval_episodes} episodes per seed on "
            f"{env_id}{search_note})\n\n"
            + markdown_table(["agent", "seeds", "return per seed", "normalized (own refs)", "normalized (D4RL refs)",
                              "paper (D4RL)", "train steps", "train s / seed", "eval s / seed"], rows) + "\n")
    # the goals of the paper's ordering
    goals = []
    for ds_id, _env_id, kind, per_agent, _paper in summary:
        s = {k: per_agent[k]["own"][0] for k in ("bc", "dt", "tt") if k in per_agent}
        missing = f"; {', '.join(k.upper() for k in ('bc', 'dt', 'tt') if k not in s)} not run" if len(s) < 3 else ""
        met = "met by the agents run" if missing else "met"
        if kind == "medium-replay" and "bc" in s and len(s) > 1:
            seq = [k for k in ("tt", "dt") if k in s]
            ok = all(s[k] >= 2 * s["bc"] for k in seq)
            goals.append(f"- {ds_id}: {', '.join(f'{k.upper()} {s[k]:.1f}' for k in seq)} vs 2 x BC {2 * s['bc']:.1f}: "
                         f"{met if ok else 'NOT met'} (goal: TT and DT at least 2x BC{missing})")
        elif kind == "medium" and len(s) > 1:
            spread = max(s.values()) - min(s.values())
            goals.append(f"- {ds_id}: spread {spread:.1f} points: {met if spread <= 10 else 'NOT met'} "
                         f"(goal: all three within 10 points{missing})")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "quality.json").write_text(json.dumps({"args": asdict(args), "results": results},
                                                                indent=1, default=str))
    presets = ("Presets (scripts/demo.py `make_agent`): BC MLP 256x256; DT `DT_PRESETS['cpu']`; "
               "TT `TT_PRESETS['small']` with the search above. Scores are means over seeds ± their standard error.")
    text = "\n".join(body) + ("\nGoals (own-reference scores):\n\n" + "\n".join(goals) + "\n" if goals else "")
    print(text)
    write_section("quality", "Quality: TT, DT and BC on D4RL-kind MuJoCo data, beside the TT paper",
                  text + f"\n{presets}\n\n{args.notes}".rstrip())
    return results
