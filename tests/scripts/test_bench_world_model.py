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


def test_env_step_ms_times_gymnasiums_car_racing_and_ours(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import world_model as bench
    ms = bench.env_step_ms(bench.CAR_RACING, steps=3, rounds=2, seed=0)
    assert set(ms) == {"CarRacing-v3", "tt_agents/CarRacing-v3"} and all(0 < v < 1e4 for v in ms.values())


def test_world_model_cores_runs_the_pipeline_in_one_command_over_torchrun_ranks(tmp_path, monkeypatch, capfd):
    """scripts/bench.py world-model-cores at a tiny size on CarRacing-v3 with 2 processes: async rollouts, V, M,
    C searched over 2 torchrun ranks, an async evaluation, the section; a second call finds every phase done."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import world_model_cores as bench
    args = bench.Args(work_dir=str(tmp_path / "work"), cores=2, preset="world-model-tiny", episodes=2,
                      rollout_steps=5, vae_steps=2, memory_steps=2, generations=2, pop_size=4, n_samples=1,
                      search_steps=5, eval_episodes=2, device="cpu")
    results = bench.main(args)
    assert list(results["seconds"]) == ["rollouts", "vae", "memory", "controller", "eval"]
    out = capfd.readouterr().out
    # one line per stage: under torchrun only rank 0 reports (and would evaluate)
    assert out.count("trained WorldModelController") == 3 and out.count("EpisodeDataset(") == 3
    rows = [json.loads(line) for line in (tmp_path / "work" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["stage"] == "controller"] == [1, 2]  # every generation, once
    assert json.loads((tmp_path / "work" / "eval.json").read_text())["n_episodes"] == 2
    text = Path(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read_text().split("<!-- bench:world-model-cores -->")[1]
    assert "| real, V + trained M (mdnrnn), 2 ranks |" in text and "2 gen x 4 x 1 rollouts of <= 5 steps" in text
    assert "| C: CMA-ES, torchrun ranks | 2 |" in text and "on cpu" in text

    again = bench.main(args)  # every phase finished: nothing reruns
    assert again["seconds"] == results["seconds"]
    assert not [line for line in capfd.readouterr().out.splitlines() if line.startswith("+ ")]  # no phase's command
    import pytest

    with pytest.raises(SystemExit, match="holds a run with other settings"):
        bench.main(bench.Args(**{**vars(args), "generations": 3}))


def _fake_run(path: Path, seed: int, returns: dict[str, float], **changes) -> str:
    """A finished world-model run's results.json: its settings and its evaluations (mean returns)."""
    from benches import world_model as bench

    args = {**bench.dataclasses.asdict(bench.Args(work_dir=str(path), seed=seed)), **changes}
    ev = {k: {"mean": v, "stderr": 1.0, "std": 4.0, "n": 20, "seconds": 1.0, "steps": 1000} for k, v in returns.items()}
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({"args": args, "eval": ev}))
    return str(path)


def test_world_model_seeds_pools_runs_and_refuses_mismatched_ones(tmp_path, monkeypatch, capsys):
    import pytest

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import world_model_seeds as seeds

    v, u, t, rnd = "real, V only", "real, V + untrained M (mdnrnn)", "real, V + trained M (mdnrnn)", "random policy"
    dirs = [_fake_run(tmp_path / f"s{s}", s, {v: -30 + s, u: -40 + s, t: 100 + 10 * s, rnd: -33})
            for s in range(3)]
    seeds.main(seeds.Args(work_dirs=tuple(dirs), section="t-seeds"))
    text = Path(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read_text().split("<!-- bench:t-seeds -->")[1]
    assert "| mean ± se (3 seeds) | -29.0 ± 0.6 | -39.0 ± 0.6 | 110.0 ± 5.8 | -33.0 ± 0.0 | +139.0 ± 5.2 |" in text
    assert "(higher in 3 of 3 seeds)" in text and "beats both (mean difference above 2 standard errors" in text
    # a trained M that is sometimes worse: not met
    bad = [_fake_run(tmp_path / f"b{s}", s, {v: 0.0, u: 0.0, t: (50.0 if s else -60.0), rnd: 0.0}) for s in range(3)]
    seeds.main(seeds.Args(work_dirs=tuple(bad), section="t-seeds2"))
    assert "does not beat both" in capsys.readouterr().out
    other = _fake_run(tmp_path / "other", 7, {v: 0.0, u: 0.0, t: 1.0}, real_generations=99)
    with pytest.raises(SystemExit, match="real_generations 99 vs"):
        seeds.main(seeds.Args(work_dirs=(dirs[0], other)))
    with pytest.raises(SystemExit, match="different seeds"):
        seeds.main(seeds.Args(work_dirs=(dirs[0], _fake_run(tmp_path / "dup", 0, {v: 0.0, u: 0.0, t: 1.0}))))
    with pytest.raises(SystemExit, match="no results.json"):
        seeds.main(seeds.Args(work_dirs=(dirs[0], str(tmp_path / "none"))))
