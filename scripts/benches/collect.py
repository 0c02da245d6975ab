"""Wall time of scripts/collect.py making a Hopper-v5 ``medium`` dataset (expert training included).

Runs ``scripts/collect.py --datasets medium`` as a subprocess into a temporary Minari store, so the
figure is the whole script: training the SAC expert with checkpoints, evaluating the random
policy, the expert and every checkpoint, and rolling out the medium dataset through
``VectorActionLogger``. A full D4RL-size run trains the expert for 1M steps; ``--expert-steps``
says how many this run trained, and the section records it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benches._common import markdown_table, write_section

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """Gymnasium id of the env"""
    expert_steps: int = 1_000_000
    """expert training budget (D4RL / RL Zoo: 1M); lower it where a full run does not fit the machine"""
    dataset_steps: int = 100_000
    """transitions in the medium dataset"""
    num_envs: int = 8
    """sub-envs of the rollout vector env"""
    n_checkpoints: int = 10
    """checkpoints evaluated as medium candidates"""
    eval_episodes: int = 5
    """episodes per evaluation"""
    seed: int = 0
    """seed of the run"""


def main(args: Args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable,
            "scripts/collect.py",
            "--env-id", args.env_id,
            "--datasets", "medium",
            "--expert-steps", str(args.expert_steps),
            "--dataset-steps", str(args.dataset_steps),
            "--num-envs", str(args.num_envs),
            "--n-checkpoints", str(args.n_checkpoints),
            "--eval-episodes", str(args.eval_episodes),
            "--seed", str(args.seed),
            "--out-dir", str(Path(tmp) / "out"),
            "--no-progress",
        ]  # fmt: skip
        env = {**os.environ, "MINARI_DATASETS_PATH": str(Path(tmp) / "store"), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"collect.py failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        summary = json.loads((Path(tmp) / "out" / "summary.json").read_text())
        dataset_id = next(iter(summary["datasets"]))
        meta = json.loads((Path(tmp) / "store" / dataset_id / "data" / "metadata.json").read_text())
        checkpoint_returns = meta["policy"].get("checkpoint_returns", {})
    stats = summary["datasets"][dataset_id]
    train = summary["train_seconds"]
    rows = [
        ["collect.py, whole run", f"{wall:.1f}"],
        [f"of which SAC expert training ({args.expert_steps} env steps)", f"{train:.1f}"],
        ["of which the rest (evaluations, checkpoints, medium rollout and logging)", f"{wall - train:.1f}"],
    ]
    full = (
        "This is the full D4RL budget."
        if args.expert_steps >= 1_000_000
        else f"The expert trained for {args.expert_steps} steps, not D4RL's 1M: a full run does not fit this "
        f"shared 2-core machine. Not measured, only extrapolated from this run's training rate "
        f"({args.expert_steps / train:.0f} env steps/s): 1M steps would take about {1e6 / (args.expert_steps / train) / 3600:.1f} h."
    )
    body = (
        f"`scripts/collect.py --env-id {args.env_id} --datasets medium --expert-steps {args.expert_steps} "
        f"--dataset-steps {args.dataset_steps} --num-envs {args.num_envs}`, one torch thread. Dataset {dataset_id}: "
        f"{stats['episodes']} episodes, {stats['steps']} steps, mean return {stats['mean_return']:.1f}; "
        f"reference scores {summary['ref_min_score']:.1f} (random) and {summary['ref_max_score']:.1f} (expert); "
        f"medium checkpoint at {summary['medium_checkpoint_step']} steps, chosen from these checkpoints' evaluation "
        f"returns (steps: return): {', '.join(f'{k}: {v:.1f}' for k, v in checkpoint_returns.items())}.\n\n"
        + markdown_table(["what", "wall seconds"], rows)
        + f"\n\n{full}"
    )
    write_section("collect", f"collect.py wall time: {args.env_id} medium, {args.dataset_steps} steps", body)
