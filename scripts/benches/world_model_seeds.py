"""World Models over several seeds: does C searched on V + the trained M beat V only and V + an untrained M?

One ``world-model`` run is one seed: its rollouts, V, M, searches and evaluation tracks. This section pools
several such runs, made at the same budget (one per core, side by side), into one table: each seed's evaluation
return of the controllers searched in the real env on V only, on V + an untrained M and on V + each trained M,
and the per-seed differences, with their mean and standard error over seeds (the seed's whole pipeline is the
unit: the variation between seeds includes the rollouts, V, M and the search, not only the evaluation episodes).

    for s in 0 1 2 3; do
        python scripts/bench.py world-model --work-dir runs/wm-seeds/s$s --seed $s --kinds mdnrnn \\
            --no-dream-variants --real-generations 10 &
    done; wait
    python scripts/bench.py world-model-seeds --work-dirs runs/wm-seeds/s0 runs/wm-seeds/s1 runs/wm-seeds/s2 \\
        runs/wm-seeds/s3 --write

Runs whose settings differ (other than the seed, work dir, section and notes) are refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benches._common import markdown_table, write_section

PER_RUN = ("seed", "work_dir", "section", "notes", "reuse")  # settings that may differ between the pooled runs
V_ONLY, UNTRAINED = "real, V only", "real, V + untrained M (mdnrnn)"


@dataclass
class Args:
    work_dirs: tuple[str, ...] = ()
    """``scripts/bench.py world-model`` work dirs, one per seed, each with its controllers evaluated."""
    section: str = "world-model-seeds"
    notes: str = ""
    """Free text added to the section (what ran beside it)."""


def _load(work_dirs: tuple[str, ...]) -> list[dict[str, Any]]:
    if len(work_dirs) < 2:
        raise SystemExit(f"--work-dirs: give at least two runs (seeds) to pool, got {len(work_dirs)}")
    runs = []
    for d in work_dirs:
        path = Path(d) / "results.json"
        if not path.exists():
            raise SystemExit(f"--work-dirs: {d} has no results.json (run scripts/bench.py world-model there first)")
        r = json.loads(path.read_text())
        missing = [k for k in (V_ONLY, UNTRAINED) if k not in r.get("eval", {})]
        if "args" not in r or missing:
            raise SystemExit(f"--work-dirs: {d} is unfinished or from before its settings were recorded "
                             f"(missing: {', '.join(missing) or 'its settings'}); run its world-model bench to the end")
        runs.append(r)
    base = {k: v for k, v in runs[0]["args"].items() if k not in PER_RUN}
    for d, r in zip(work_dirs[1:], runs[1:]):
        other = {k: v for k, v in r["args"].items() if k not in PER_RUN}
        differ = sorted(k for k in set(base) | set(other) if base.get(k) != other.get(k))
        if differ:
            raise SystemExit(f"--work-dirs: {d} was run with other settings than {work_dirs[0]}: "
                             + ", ".join(f"{k} {other.get(k)!r} vs {base.get(k)!r}" for k in differ))
    seeds = [r["args"]["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--work-dirs: the runs must have different seeds, got {seeds}")
    return runs


def _mean_se(x: list[float], sign: bool = False) -> str:
    a = np.asarray(x, np.float64)
    return f"{a.mean():{'+' if sign else ''}.1f} ± {a.std(ddof=1) / np.sqrt(len(a)):.1f}"


def pooled(runs: list[dict[str, Any]]) -> tuple[list[list[Any]], list[str]]:
    """The table's rows (one per seed, then the mean ± standard error over seeds) and the verdict lines."""
    trained = [k for k in runs[0]["eval"] if k.startswith("real, V + trained M")]
    cols = [V_ONLY, UNTRAINED, *trained, "random policy"]
    rows, diffs = [], {(t, b): [] for t in trained for b in (V_ONLY, UNTRAINED)}
    for r in runs:
        ev = r["eval"]
        rows.append([r["args"]["seed"], *(f"{ev[c]['mean']:.1f}" if c in ev else "" for c in cols),
                     *(f"{ev[t]['mean'] - ev[b]['mean']:+.1f}" for t in trained for b in (V_ONLY, UNTRAINED))])
        for t in trained:
            for b in (V_ONLY, UNTRAINED):
                diffs[(t, b)].append(ev[t]["mean"] - ev[b]["mean"])
    rows.append([f"mean ± se ({len(runs)} seeds)",
                 *(_mean_se([r["eval"][c]["mean"] for r in runs if c in r["eval"]]) for c in cols),
                 *(_mean_se(diffs[(t, b)], sign=True) for t in trained for b in (V_ONLY, UNTRAINED))])
    lines = []
    for t in trained:
        parts, beats = [], True
        for b in (V_ONLY, UNTRAINED):
            d = np.asarray(diffs[(t, b)])
            se = d.std(ddof=1) / np.sqrt(len(d))
            beats &= bool(d.mean() > 2 * se)
            parts.append(f"{d.mean():+.1f} ± {se:.1f} against {b[6:]} (higher in {int((d > 0).sum())} of {len(d)} "
                         "seeds)")
        lines.append(f"- {t[6:]}: {'; '.join(parts)}: "
                     f"{'beats both (mean difference above 2 standard errors over seeds)' if beats else 'does not beat both by 2 standard errors over seeds'}.")
    return rows, lines


def main(args: Args) -> None:
    runs = _load(args.work_dirs)
    rows, verdict = pooled(runs)
    a = runs[0]["args"]
    trained = [k[6:] for k in runs[0]["eval"] if k.startswith("real, V + trained M")]
    headers = ["seed", "V only", "V + untrained M", *trained, "random",
               *(f"{t} - {b}" for t in trained for b in ("V only", "untrained M"))]
    s = runs[0].get("search", {}).get(V_ONLY, {})
    body = "\n".join([
        f"{len(runs)} runs of `scripts/bench.py world-model` on `{a['env_id']}`, one per seed ({', '.join(str(r['args']['seed']) for r in runs)}), "
        f"each its own rollouts, V, M, searches and evaluation tracks, at one budget: {a['episodes']} brownian "
        f"rollouts of {a['rollout_steps']} steps; V {a['vae_steps']} and M {a['memory_steps']} steps; each controller "
        f"searched by CMA-ES in the real env, {s.get('generations', a['real_generations'])} generations x "
        f"{a['real_pop_size']} candidates x {a['real_samples']} rollouts of up to {a['real_steps']} steps; evaluated "
        f"on {a['eval_episodes']} episodes of up to {a['eval_steps']} steps. Work dirs: "
        + ", ".join(f"`{d}`" for d in args.work_dirs) + ".", "",
        "Mean evaluation return per seed, and the differences of each trained M's controller against V only and "
        "against the untrained M; last row: mean ± standard error over seeds:", "",
        markdown_table(headers, rows), "",
        "Goal (issue 13: the trained M beats the untrained M and V only at the same budget):", "", *verdict, "",
        *([args.notes, ""] if args.notes else []),
    ])
    print(body)
    write_section(args.section, "World Models on CarRacing-v3 over seeds: trained M against V only and an untrained M",
                  body)
