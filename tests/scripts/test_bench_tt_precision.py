"""scripts/bench.py tt-precision at a tiny size: a saved TTPlanner, every precision mode's returns and actions."""

from __future__ import annotations

import os

import pytest

from tests.scripts._helpers import REPO


@pytest.mark.filterwarnings("ignore:PlanConfig\\(linear_dtype='bfloat16'\\)")  # a CPU without AVX512-BF16 warns
def test_tt_precision_bench_compares_each_mode_with_float32(tmp_path, monkeypatch):
    import gymnasium as gym

    from tt_agents import TTPlanner

    env = gym.make("Pendulum-v1")
    agent = TTPlanner.from_preset("tiny", env.observation_space, env.action_space, device="cpu", seed=0)
    agent.save(tmp_path / "tt.zip")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import tt_precision as bench

    repo_md = (REPO / "benchmarks.md").read_bytes()
    bench.main(bench.Args(checkpoint=str(tmp_path / "tt.zip"), env_id="Pendulum-v1", search="2x1", episodes=2,
                          max_steps=6, agree_steps=5))
    assert (REPO / "benchmarks.md").read_bytes() == repo_md
    section = open(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read().split("<!-- bench:tt-precision -->")[1]
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in section.splitlines()
            if line.startswith("| ") and not line.startswith("| mode")}
    assert set(rows) == {"float32", "float32-torch", "kv-bf16", "linear-bf16", "both"}
    assert rows["float32"][4] == "-"  # float32 against itself: no agreement figures
    for mode in ("float32-torch", "kv-bf16", "linear-bf16", "both"):
        assert 0.0 <= float(rows[mode][4]) <= 1.0 and float(rows[mode][6].strip(" |")) <= 4.0  # actions in [-2, 2]
    assert all(len(r[2].split(" / ")) == 2 for r in rows.values())  # two episodes per mode
