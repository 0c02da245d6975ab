"""scripts/bench.py latent-actions on a vector env at a tiny size: an SB3 expert in, a table out, with a continuous
latent (``--quantizer none``); and no test's benchmark run lands in the repo's benchmarks.md."""

from __future__ import annotations

import json
import os

from tests.scripts._helpers import REPO


def test_latent_actions_bench_with_a_continuous_latent(tmp_path, monkeypatch):
    import gymnasium as gym
    from stable_baselines3 import TD3

    expert_dir = tmp_path / "expert"
    expert_dir.mkdir()
    TD3("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=10, policy_kwargs={"net_arch": [8]}, seed=0,
        device="cpu").learn(20).save(expert_dir / "expert.zip")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import latent_actions as bench

    repo_md = (REPO / "benchmarks.md").read_bytes()
    tiny = dict(lam_steps=2, latent_bc_steps=2, decoder_steps=2, idm_steps=2, bc_steps=2, batch_size=8)
    args = bench.Args(env_id="Pendulum-v1", expert_run=str(expert_dir), episodes=2, work_dir=str(tmp_path / "work"),
                      labels=(16,), seeds=(0, 1), eval_episodes=2, quantizer="none", latent_shape=(1, 6),
                      section="t-vector", **tiny)
    bench.main(args)
    written = open(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read()
    assert "<!-- bench:t-vector -->" in written and (REPO / "benchmarks.md").read_bytes() == repo_md
    section = written.split("<!-- bench:t-vector -->")[1]
    assert "TD3 expert trained by scripts/collect.py" in section
    assert "MLP LAM, 1 tokens x 6 dims, continuous (no quantizer)" in section
    assert "latent 1 tokens x 6 dims, continuous (no quantizer)" in section.splitlines()[1]  # the title says so
    # no codes, so no perplexity: "-" in the latent rows, none recorded
    assert "| LatentActionPolicy | 16 | 2 |" in section and "| - |" in section.split("| LatentActionPolicy | 16")[1]
    result = json.loads((tmp_path / "work" / "results" / "latent_16_s0.json").read_text())
    assert "perplexity" not in result
    from tt_agents import load_agent

    agent = load_agent(tmp_path / "work" / "agents" / "latent_base_s0.zip", device="cpu")
    assert agent.config.lam.quantizer == "none" and agent.config.lam.latent_dim == 6
