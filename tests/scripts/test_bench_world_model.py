"""scripts/bench.py world-model --speed-only at a tiny size: the batched generation timed in this process and with
every sub-env in its own process, against one candidate at a time."""

from __future__ import annotations

import json
import os
from pathlib import Path

import gymnasium as gym

from tests.scripts._helpers import REPO

if "WorldModelFakeImage-v0" not in gym.registry:
    gym.register("WorldModelFakeImage-v0", entry_point="tests.fake_env:FakeEnv",
                 kwargs={"obs_kind": "image", "action_kind": "continuous", "episode_len": 6})


def test_world_model_speed_only_times_the_batched_generation_sync_and_async(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import world_model as bench
    args = bench.Args(env_id="WorldModelFakeImage-v0", work_dir=str(tmp_path / "work"), episodes=2, rollout_steps=6,
                      num_envs=2, vae_steps=2, memory_steps=2, kinds=("mdnrnn",), real_pop_size=3, speed_steps=5,
                      pop_size=2, n_samples=1, dream_horizon=4, vectorization="async", speed_only=True, section="t-wm")
    bench.main(args)
    results = json.loads((tmp_path / "work" / "results.json").read_text())
    speed = results["speed"]
    assert set(speed) == {"batched", "batched_async", "one_at_a_time", "dream"}
    assert speed["batched"]["env_steps"] == speed["batched_async"]["env_steps"] == speed["one_at_a_time"]["env_steps"]
    assert "eval" not in results and "search" not in results  # no controller was searched or evaluated
    text = Path(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read_text().split("<!-- bench:t-wm -->")[1]
    assert "3 sub-envs, each in its own process (async)" in text
    assert "with the sub-envs in their own processes (async" in text and "which this run measures above" in text
