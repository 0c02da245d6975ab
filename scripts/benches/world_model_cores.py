"""World Models on a many-core machine, in one command: rollouts, V, M, C by CMA-ES over one rank per core.

    python scripts/bench.py world-model-cores --write

runs the whole pipeline at a larger budget than the `world-model` sections, each phase a script a user
would run, and records it:

1. brownian random rollouts of CarRacing-v3 (``tt_agents/CarRacing-v3``, rollouts.py's default: the same
   frames, drawn faster), one process per core (``scripts/rollouts.py --vectorization async``);
2. V, then M (``scripts/train.py <preset> --stage vae``, ``--stage memory``), on the GPU when there is one;
3. C: CMA-ES in the real env, the population's rollouts split over one ``torchrun`` rank per core (gloo on
   the CPU; every rank holds the same CMA-ES state and gathers every fitness);
4. C evaluated on full episodes, one process per sub-env (``scripts/eval.py --vectorization async``).

Every phase resumes where it stopped when the command is run again (the rollouts are redone only if they
did not finish; training resumes from its checkpoints). The defaults are sized for about 10 minutes on 16
cores: an estimate from this repository's 2-core figures (gymnasium's CarRacing-v3 steps at about 150 per
second per core), not a measurement.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benches._common import markdown_table, write_section

REPO = Path(__file__).resolve().parents[2]
DATASET = "carracing/cores-v0"


@dataclass
class Args:
    work_dir: str = "runs/bench-world-model-cores"
    """The dataset store, the run (checkpoints, metrics, final.zip) and the phases' results."""
    cores: int | None = None
    """Processes of the rollouts, the search (torchrun ranks) and the evaluation (default: every core)."""
    preset: str = "world-model"
    """``scripts/train.py`` subcommand: ``world-model`` (the paper's sizes), ``world-model-cpu``, ``world-model-tiny``."""
    episodes: int = 256
    """Random rollouts for V and M."""
    rollout_steps: int = 300
    vae_steps: int = 5000
    memory_steps: int = 5000
    memory_kind: str = "mdnrnn"
    generations: int = 10
    pop_size: int = 64
    """CMA-ES candidates per generation (the paper's 64)."""
    n_samples: int = 4
    """Rollouts per candidate (the paper: 16)."""
    search_steps: int = 300
    """Longest rollout of the search (full CarRacing episodes: 1000)."""
    eval_episodes: int = 100
    """Full episodes of the evaluation (the paper: 100)."""
    device: str = "auto"
    """V and M's device (the search and the evaluation run on the CPU cores)."""
    seed: int = 0
    notes: str = ""
    """Free text added to the section."""


def _cores(args: Args) -> int:
    return args.cores or os.cpu_count() or 1


def _env(work: Path) -> dict[str, str]:
    return {**os.environ, "MINARI_DATASETS_PATH": str(work / "store"), "OMP_NUM_THREADS": "1"}


def _run(cmd: list[str], work: Path) -> float:
    """Run one phase's command (its output passes through); its wall seconds."""
    print("+ " + " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=_env(work))
    if proc.returncode != 0:
        raise SystemExit(f"error: this phase failed (exit code {proc.returncode}): {' '.join(cmd)}; run the same "
                         "bench command again to resume it")
    return time.perf_counter() - t0


def _train_cmd(args: Args, work: Path, stage: str, device: str) -> list[str]:
    per_rank = math.ceil(args.pop_size * args.n_samples / _cores(args))  # each rank's rollouts step together
    return ["scripts/train.py", args.preset, "--dataset", DATASET, "--run-dir", str(work / "run"), "--stage", stage,
            "--device", device, "--seed", str(args.seed), "--train.no-progress",
            "--train.vae.steps", str(args.vae_steps), "--train.memory.steps", str(args.memory_steps),
            "--train.controller.steps", str(args.generations), "--train.log-every", "1",
            "--agent.memory-kind", args.memory_kind,
            "--agent.controller-env", "dataset", "--agent.pop-size", str(args.pop_size),
            "--agent.n-samples", str(args.n_samples), "--agent.max-episode-steps", str(args.search_steps),
            "--agent.eval-envs", str(per_rank)]


def phases(args: Args, work: Path) -> dict[str, list[str]]:
    """Each phase's command, in order."""
    py, cores = sys.executable, _cores(args)
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(cores)]
    return {
        "rollouts": [py, "scripts/rollouts.py", "--episodes", str(args.episodes), "--num-envs", str(cores),
                     "--vectorization", "async", "--max-episode-steps", str(args.rollout_steps), "--dataset-id",
                     DATASET, "--seed", str(args.seed), "--overwrite"],
        "vae": [py, *_train_cmd(args, work, "vae", args.device)],
        "memory": [py, *_train_cmd(args, work, "memory", args.device)],
        "controller": [*torchrun, *_train_cmd(args, work, "controller", "cpu")],
        "eval": [py, "scripts/eval.py", "--checkpoint", str(work / "run" / "final.zip"), "--n-episodes",
                 str(args.eval_episodes), "--n-envs", str(min(cores, args.eval_episodes)), "--vectorization", "async",
                 "--device", "cpu", "--no-progress", "--json-out", str(work / "eval.json")],
    }


def main(args: Args) -> dict[str, Any]:
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("args") not in (None, {k: v for k, v in vars(args).items() if k != "notes"}):
        raise SystemExit(f"error: {work} holds a run with other settings ({results['args']}); pass another "
                         "--work-dir, or delete it to start over")
    results["args"] = {k: v for k, v in vars(args).items() if k != "notes"}
    results.setdefault("seconds", {})
    for name, cmd in phases(args, work).items():
        if name in results["seconds"]:
            continue  # finished in an earlier call
        results["seconds"][name] = _run(cmd, work)
        results_path.write_text(json.dumps(results, indent=1))
    _write(args, work, results)
    return results


def _write(args: Args, work: Path, results: dict[str, Any]) -> None:
    ev = json.loads((work / "eval.json").read_text())
    rows = [json.loads(line) for line in (work / "run" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    gens = [r for r in rows if "best" in r and "mean" in r]
    ret = np.asarray(ev["returns"], np.float64)
    cores = _cores(args)
    secs = results["seconds"]
    device = args.device
    if device == "auto":  # as train.py resolves it
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    budget = (f"{args.generations} gen x {args.pop_size} x {args.n_samples} rollouts of <= {args.search_steps} "
              "steps")
    table = markdown_table(
        ["controller", "return (mean +- std)", "C's search budget", "search fitness, first -> last generation mean"],
        [[f"real, V + trained M ({args.memory_kind}), {cores} ranks",
          f"{ret.mean():.1f} +- {ret.std():.1f} (stderr {ret.std(ddof=1) / np.sqrt(len(ret)):.1f}, n={len(ret)})"
          if len(ret) > 1 else f"{ret.mean():.1f} (n=1)", budget,
          f"{gens[0]['mean']:.2f} -> {gens[-1]['mean']:.2f}" if gens else "-"],
         ["paper (100 trials)", "906 +- 21 (V only 632 +- 251)", "", ""],
         ["PyTorch port", "860 +- 120 (untrained MDN-RNN 870 +- 120)", "", ""]])
    phase_table = markdown_table(["phase", "processes", "seconds"],
                                 [["rollouts (async sub-envs)", cores, secs["rollouts"]],
                                  ["V", 1, secs["vae"]], ["M", 1, secs["memory"]],
                                  ["C: CMA-ES, torchrun ranks", cores, secs["controller"]],
                                  [f"evaluation ({args.eval_episodes} full episodes, async sub-envs)",
                                   min(cores, args.eval_episodes), secs["eval"]]])
    body = "\n\n".join(filter(None, [
        f"The whole pipeline in one command on {cores} processes: {args.episodes} brownian rollouts of "
        f"{args.rollout_steps} steps; `scripts/train.py {args.preset}` V {args.vae_steps} steps and M "
        f"({args.memory_kind}) {args.memory_steps} steps on {device}; C searched in the real env ({budget}, "
        f"each generation's rollouts split over {cores} torchrun ranks on the CPU); evaluated on "
        f"{args.eval_episodes} full episodes (deterministic).",
        table, phase_table, args.notes]))
    write_section("world-model-cores", "World Models on CarRacing-v3 on a many-core machine (one command)", body)
