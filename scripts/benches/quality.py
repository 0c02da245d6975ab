"""Scores on logged MuJoCo data: TT, DT and BC side by side with the dataset's own average.

Trains each agent on each dataset (made by ``scripts/collect.py``; ids in the local Minari store,
``MINARI_DATASETS_PATH``) with the CPU-sized presets of ``scripts/demo.py``, evaluates it on a
vector env, and writes D4RL-style normalized scores, ``100 * (R - random) / (expert - random)``,
with the reference returns that ``collect.py`` recorded in the dataset's metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import gymnasium as gym

from benches._common import write_section


@dataclass
class Args:
    datasets: tuple[str, ...] = ("hopper/medium-replay-v0", "hopper/medium-v0")
    """Minari ids in the local store (make them with scripts/collect.py)."""
    agents: tuple[str, ...] = ("bc", "dt", "tt")
    bc_steps: int = 10_000
    dt_steps: int = 10_000
    tt_steps: int = 10_000
    """Optimizer steps of each agent (the papers train for 100k+ on a GPU)."""
    eval_episodes: int = 10
    eval_envs: int = 10
    """Sub-envs of the evaluation vector env (TT plans for all of them in one batched search)."""
    max_episode_steps: int | None = None
    """Override the env's time limit (default: the env's own, 1000 for Hopper)."""
    out_dir: str = "runs/quality"
    """Runs are reused when their final.zip exists, so an interrupted benchmark resumes."""
    device: str = "auto"
    seed: int = 0
    notes: str = ""
    """Free text appended to the section (how the datasets were made)."""


def main(args: Args) -> None:
    from demo import dataset_row, score_table, train_and_evaluate

    from tt_agents.data import load_dataset

    steps = {"bc": args.bc_steps, "dt": args.dt_steps, "tt": args.tt_steps}
    body, results = [], {}
    for ds_id in args.datasets:
        ds = load_dataset(ds_id)
        env_id, ref_min, ref_max = (ds.metadata.get(k) for k in ("env_id", "ref_min_score", "ref_max_score"))
        if env_id is None or ref_min is None or ref_max is None:
            raise SystemExit(f"{ds_id} records no env id or reference scores: make it with scripts/collect.py")
        kwargs = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
        env_fn = lambda: gym.make(env_id, **kwargs)  # noqa: B023
        rows = [dataset_row("dataset average", ds, ref_min, ref_max)]
        for name in args.agents:
            run = Path(args.out_dir) / ds_id.replace("/", "_") / name
            rows.append(train_and_evaluate(name, ds, steps[name], run, env_fn, ref_min, ref_max,
                                           args.eval_episodes, args.eval_envs, args.device, args.seed))
        results[ds_id] = rows
        body.append(f"**{ds_id}** ({len(ds)} episodes, {ds.total_steps} steps; reference returns: random "
                    f"{ref_min:.1f}, expert {ref_max:.1f}; {args.eval_episodes} evaluation episodes per agent on "
                    f"{env_id})\n\n{score_table(rows)}\n")
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    (Path(args.out_dir) / "quality.json").write_text(json.dumps({"args": asdict(args), "results": results}, indent=1))
    presets = ("Presets (scripts/demo.py `make_agent`): BC MLP 256x256; DT `DT_PRESETS['cpu']`; "
               "TT `TT_PRESETS['small']` with its beam search.")
    write_section("quality", "Quality: TT, DT and BC on logged Hopper data",
                  "\n".join(body) + f"\n{presets}\n\n{args.notes}".rstrip())
