"""The SB3 experts behind the D4RL-kind datasets: return curves, budgets, wall time, dataset sizes.

Reads what ``scripts/collect.py`` recorded in each ``--out-dir`` (``progress.json``: every finished
phase; a run still training: its last resumable checkpoint's curve; ``summary.json`` once done) and
writes one table per run. It measures nothing itself: the figures are collect.py's own, from the
evaluations it made as it saved each medium candidate (``--eval-episodes`` episodes on an 8-env
vector env, the policy sampling as in the datasets).

Example:
    python scripts/bench.py experts --runs /work/data/runs/collect-halfcheetah-td3 --write
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from benches._common import markdown_table, write_section


@dataclass
class Args:
    runs: tuple[str, ...] = ()
    """collect.py --out-dir folders."""
    notes: str = ""
    """Free text appended to the section."""


def _curve(run: Path) -> tuple[list[dict], str]:
    progress = json.loads((run / "progress.json").read_text())
    if "train" in progress["done"]:
        return progress["done"]["train"]["curve"], "finished"
    latest = run / "resume" / "LATEST"
    if latest.exists():
        state = json.loads((run / "resume" / latest.read_text().strip() / "state.json").read_text())
        return state["extra"]["collect"]["curve"], f"training, checkpointed at step {state['num_timesteps']}"
    return [], "not started"


def main(args: Args) -> None:
    if not args.runs:
        raise SystemExit("pass --runs: collect.py --out-dir folders")
    body = []
    for folder in args.runs:
        run = Path(folder)
        progress = json.loads((run / "progress.json").read_text())
        a = progress["args"]
        curve, status = _curve(run)
        net = a.get("net_arch") or "RL Zoo's"
        head = (f"**{a['env_id']}**, {a['algo'].upper()} (networks {net}), budget {a['expert_steps']} env steps "
                f"({status}); each point: {a['eval_episodes']} episodes\n\n")
        rows = [[c["step"], f"{c['return']:.0f}", f"{c['seconds'] / 60:.0f}"] for c in curve]
        table = markdown_table(["env steps", "return", "wall min"], rows) if rows else "(no evaluation yet)"
        lines = [head + table]
        summary = run / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            ds_rows = [[k, v["episodes"], v["steps"], f"{v['mean_return']:.1f}" if v.get("mean_return") is not None
                        else "-"] for k, v in s["datasets"].items()]
            info = progress["done"]["train"]["expert_info"]
            expert = f"the {info.get('checkpoint', 'final')} policy, step {info.get('step', a['expert_steps'])}"
            if info.get("checkpoint") == "best":
                expert += f" (evaluated {info['eval_return']:.0f}; the final policy {info['final_eval_return']:.0f})"
            phases = [v for k, v in progress["done"].items() if k not in ("train", "all")]
            whole = (f"whole run {s['total_seconds'] / 3600:.2f} h" if all("seconds" in v for v in phases) else
                     "whole run not recorded (a resumed run of a collect.py that did not yet time each phase)")
            lines.append(f"\nExpert: {expert}. Reference returns (over the datasets' finished episodes): random "
                         f"{s['ref_min_score']:.1f}, expert {s['ref_max_score']:.1f}; medium checkpoint at step "
                         f"{s['medium_checkpoint_step']}; training {s['train_seconds'] / 3600:.2f} h, {whole}.\n\n"
                         + markdown_table(["dataset", "episodes", "steps", "mean return"], ds_rows))
        else:
            done = {k: v for k, v in progress["done"].items() if k != "train"}
            if done:
                lines.append("\nDatasets finished so far: " + ", ".join(
                    f"{k} ({v['stats']['steps']} steps)" for k, v in done.items()))
        body.append("\n".join(lines) + "\n")
    text = "\n".join(body)
    print(text)
    write_section("experts", "Experts for the D4RL-kind datasets (collect.py)",
                  text + (f"\n{args.notes}" if args.notes else ""))
