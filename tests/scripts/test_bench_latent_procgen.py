"""scripts/bench.py latent-actions on a Procgen game at a tiny size: collect.py's PPO expert and data in, a table out."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.scripts._helpers import REPO, run_script


def test_latent_actions_bench_on_procgen_from_collect_py(tmp_path, monkeypatch):
    store = tmp_path / "store"
    out = run_script("collect.py", "--env-id", "procgen/bigfish-v0", "--datasets", "expert", "--expert-steps", "300",
                     "--dataset-steps", "400", "--num-envs", "2", "--train-envs", "2", "--eval-episodes", "2",
                     "--n-checkpoints", "1", "--out-dir", str(tmp_path / "expert"), "--no-progress", store=store)
    assert out.returncode == 0, out.stderr[-3000:]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import latent_actions as bench

    tiny = dict(lam_steps=2, latent_bc_steps=2, decoder_steps=2, idm_steps=2, bc_steps=2, batch_size=4)
    args = bench.Args(env_id="procgen/bigfish-v0", expert_run=str(tmp_path / "expert"), dataset="procgen/bigfish/expert-v0",
                      transitions=300, work_dir=str(tmp_path / "work"), labels=(16, 128), seeds=(0, 1), eval_episodes=2,
                      cnn_channels=(4, 8), unet_channels=(4, 8), decoder_uses_obs=False, section="t", **tiny)
    bench.main(args)
    printed = Path(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read_text().split("<!-- bench:t -->")[-1]  # tests' own file
    assert "## Latent actions: Procgen bigfish, few labels, expert of 300 env steps" in printed
    assert "300 transitions, its first" in printed  # --transitions cut the data
    flat = " ".join(printed.split())  # the text is wrapped
    assert "an MLP fitted on 6000 random transitions' IDM latents" in flat  # the probes' text
    assert "| LatentActionPolicy | 16 | 2 |" in printed and " (0." in printed.split("| LatentActionPolicy | 16 | 2 |")[1]
    supervised = json.loads((tmp_path / "work" / "probe_supervised.json").read_text())
    assert 0 <= supervised["accuracy"] <= 1 and "For reference, VPT's IDM" in flat
    for name in ("LatentActionPolicy", "VPTPolicy", "BCPolicy"):
        assert printed.count(f"| {name} | 16 | 2 |") == 1 and printed.count(f"| {name} | 128 | 2 |") == 1
    expert = json.loads((tmp_path / "work" / "expert.json").read_text())
    assert expert["expert_steps"] >= 300 and expert["source"].startswith("PPO expert")
    # the agents' networks are the bench's widths, not LAPO's
    from tt_agents import load_agent

    agent = load_agent(tmp_path / "work" / "agents" / "latent_base_s0.zip", device="cpu")
    assert agent.config.lam.cnn_channels == (4, 8) and agent.config.lam.unet_channels == (4, 8)
    assert not agent.config.decoder_uses_obs
    with pytest.raises(ValueError, match="Procgen needs --dataset"):
        bench._dataset(bench.Args(env_id="procgen/bigfish-v0"), tmp_path)


def test_an_expert_trained_on_with_continue_from_reports_both_runs(tmp_path, monkeypatch):
    """An expert that collect.py --continue-from trained on from an earlier run's final.zip: the table's text gives
    the total steps, the first run's steps and time, and the continued training's time."""
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import latent_actions as bench

    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    (first / "summary.json").write_text(json.dumps({"expert_step": 2500, "train_seconds": 600.0}))
    # the continued run's summary from before summary.json named the zip: read from its training record
    (second / "summary.json").write_text(json.dumps({"expert_step": 7000, "train_seconds": 1800.0}))
    (second / "progress.json").write_text(json.dumps(
        {"done": {"train": {"expert_info": {"continued_from": str(first / "final.zip")}}}}))
    budget = bench._expert_budget(bench.Args(expert_run=str(second)))
    assert budget == {"expert_steps": 7000, "train_seconds": 1800.0,
                      "first_run": {"expert_steps": 2500, "train_seconds": 600.0}}
    text = bench._budget_text(budget, budget["train_seconds"])
    assert text == (" (2500 steps in a first run (about 10 min), then trained on from that run's final.zip with "
                    "--continue-from: about 30 min to its last evaluation)")
    assert bench._budget_text(bench._expert_budget(bench.Args(expert_run=str(first))), 600.0) == (
        " (about 10 min to its last evaluation)")
