"""scripts/rollouts.py and ``scripts/train.py world-model`` end to end at a tiny size (CarRacing-v3, headless)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tt_agents import load_agent
from tt_agents.checkpoint import read_checkpoint
from tt_agents.data import load_dataset

REPO = Path(__file__).resolve().parents[2]


def _run(args, env, cwd):
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_rollouts_then_train_stage_by_stage(tmp_path):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("DISPLAY", None)
    # run from another directory: no PYTHONPATH, no display
    out = _run([str(REPO / "scripts" / "rollouts.py"), "--episodes", "3", "--num-envs", "2", "--max-episode-steps",
                "6", "--dataset-id", "carracing/tiny-v0"], env, tmp_path)
    assert "carracing/tiny-v0: " in out
    os.environ["MINARI_DATASETS_PATH"] = env["MINARI_DATASETS_PATH"]
    try:
        ds = load_dataset("carracing/tiny-v0")
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    assert len(ds) >= 3 and ds.observation_space.shape == (64, 64, 3) and ds.metadata["env_id"] == "tt_agents/CarRacing-v3"
    actions = np.concatenate([np.asarray(e.actions) for e in ds])
    assert ds.action_space.contains(actions[0]) and np.abs(np.diff(actions[:5], axis=0)).max() < 0.5  # smooth

    run = tmp_path / "run"
    cmd = ["scripts/train.py", "world-model-tiny", "--dataset", "carracing/tiny-v0", "--run-dir", str(run), "--device",
           "cpu", "--train.no-progress", "--train.vae.steps", "3", "--train.memory.steps", "3",
           "--train.controller.steps", "2", "--agent.pop-size", "4", "--agent.n-samples", "2"]
    _run([*cmd, "--stage", "vae"], env, REPO)
    assert read_checkpoint(run / "checkpoints" / "last.zip").manifest["trainer"]["stages_done"] == {"vae": 3}
    out = _run(cmd, env, REPO)  # the rest, in order
    assert "generation 2: best" in out
    tr = read_checkpoint(run / "checkpoints" / "last.zip").manifest["trainer"]
    assert tr["stages_done"] == {"vae": 3, "memory": 3, "controller": 2}
    agent = load_agent(run / "final.zip", device="cpu")
    assert type(agent).__name__ == "WorldModelController" and agent.config.pop_size == 4
    assert (run / "fitness_curve.png").exists()


def test_rollouts_async_write_the_same_dataset_as_sync(tmp_path):
    """``--vectorization async`` (a process per sub-env, for many cores) records what sync records."""
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path / "store"), "OMP_NUM_THREADS": "1"}
    for mode in ("sync", "async"):
        _run([str(REPO / "scripts" / "rollouts.py"), "--episodes", "3", "--num-envs", "2", "--max-episode-steps", "5",
              "--vectorization", mode, "--dataset-id", f"carracing/{mode}-v0"], env, tmp_path)
    os.environ["MINARI_DATASETS_PATH"] = env["MINARI_DATASETS_PATH"]
    try:
        sync, asyn = load_dataset("carracing/sync-v0"), load_dataset("carracing/async-v0")
    finally:
        del os.environ["MINARI_DATASETS_PATH"]
    assert len(sync) == len(asyn) >= 3
    for a, b in zip(sync, asyn):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.rewards, b.rewards)
    assert asyn.metadata["rollouts"]["vectorization"] == "async"
