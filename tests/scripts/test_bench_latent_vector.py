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
    # the probe columns: R² of the actions from the latent (continuous actions), and of the latent from o_t
    meta = json.loads((tmp_path / "work" / "agents" / "latent_base_s0.json").read_text())
    assert set(meta["probe"]) == {"probe_r2", "latent_from_obs_r2"}
    row = section.split("| LatentActionPolicy | 16 | 2 |")[1].splitlines()[0]
    assert "R² " in row and "| action from latent (probe) | latent from o_t (R²) |" in section
    supervised = json.loads((tmp_path / "work" / "probe_supervised.json").read_text())
    assert set(supervised) == {"r2", "labels", "steps", "seconds"} and supervised["steps"] == 2
    assert f"VPT's IDM (VPTPolicy's network) trained with the labels of the first {supervised['labels']}" in section

    # a LatentActionPolicy variant beside the same baselines: VPT's and BC's results are taken, not recomputed
    import dataclasses

    import pytest

    other = dataclasses.replace(args, work_dir=str(tmp_path / "work2"), latent_shape=(2, 3), section="t-reuse",
                                reuse_baselines=str(tmp_path / "work"), notes="Beside work's baselines.")
    bench.main(other)
    for name in ("vpt_16_s0.json", "bc_16_s1.json", "expert.json"):
        a = (tmp_path / "work" / ("results" if name != "expert.json" else "") / name).read_text()
        assert (tmp_path / "work2" / ("results" if name != "expert.json" else "") / name).read_text() == a
    assert json.loads((tmp_path / "work2" / "agents" / "latent_base_s0.json").read_text())["probe"]
    text = open(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read().split("<!-- bench:t-reuse -->")[1]
    assert f"are those of `{(tmp_path / 'work').resolve()}`'s run" in text and "Beside work's baselines." in text
    with pytest.raises(SystemExit, match="differs in bc_steps"):
        bench.main(dataclasses.replace(other, work_dir=str(tmp_path / "work3"), bc_steps=3))


class _StubLAM:
    """What action_probe reads of a LatentActionPolicy, with a chosen IDM: ``latent(window) -> (B, d)``."""

    def __init__(self, action_space, latent):
        self.action_space, self._history, self.latent = action_space, 1, latent
        self.model = type("M", (), {})()
        # its latent policy "predicts" the latent as o_t itself: position, where the latent is a step
        self.model.policy = type("P", (), {"features": staticmethod(lambda o: o), "head": staticmethod(lambda f: f)})()

    def infer_latents(self, frames):
        return self.latent(frames), None

    def _obs(self, obs):
        import torch

        return torch.as_tensor(obs, dtype=torch.float32)


def _walk_dataset(discrete: bool, n_episodes: int = 8, length: int = 200, seed: int = 0):
    """Observations that integrate the actions: o_t+1 - o_t is the action (a one-hot of it when discrete)."""
    import gymnasium as gym
    import numpy as np

    from tt_agents.data import Episode, EpisodeDataset

    rng = np.random.default_rng(seed)
    eps = []
    for _ in range(n_episodes):
        if discrete:
            a = rng.integers(0, 4, length)
            steps = np.eye(4, dtype=np.float32)[a]
        else:
            a = rng.uniform(-1, 1, (length, 2)).astype(np.float32)
            steps = a
        obs = np.concatenate([np.zeros((1, steps.shape[1]), np.float32), np.cumsum(steps, 0)])
        eps.append(Episode(obs, a, np.zeros(length, np.float32), np.zeros(length, bool),
                           np.eye(1, length, length - 1, dtype=bool)[0]))
    obs_space = gym.spaces.Box(-1e4, 1e4, (steps.shape[1],), np.float32)
    act_space = gym.spaces.Discrete(4) if discrete else gym.spaces.Box(-1, 1, (2,), np.float32)
    return EpisodeDataset(eps, obs_space, act_space)


def test_action_probe_scores_a_latent_that_is_the_action_and_one_that_is_noise(monkeypatch):
    import numpy as np

    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import latent_actions as bench

    for discrete in (False, True):
        ds = _walk_dataset(discrete)
        diff = _StubLAM(ds.action_space, lambda w: np.asarray(w[:, 2] - w[:, 1], np.float32))  # the action itself
        rng = np.random.default_rng(1)
        noise = _StubLAM(ds.action_space, lambda w, rng=rng: rng.normal(size=w[:, 0].shape).astype(np.float32))
        good = bench.action_probe(diff, ds, n_fit=1000, n_test=400, steps=400)
        bad = bench.action_probe(noise, ds, n_fit=1000, n_test=400, steps=400)
        if discrete:
            assert good["probe_accuracy"] > 0.95 and bad["probe_accuracy"] < 0.4
            assert 0.15 < bad["probe_majority"] < 0.4  # 4 actions drawn uniformly
        else:
            assert good["probe_r2"] > 0.9 and bad["probe_r2"] < 0.1
        # o_t (a position) predicts none of a step drawn afresh every time
        assert good["latent_from_obs_r2"] < 0


def test_latent_actions_bench_fine_tunes_the_joint_decoders_agent(tmp_path, monkeypatch):
    """With ``--joint-decoder`` every label count has its own base agent (``latent_base_{n}_s{seed}.zip``): the
    online stage fine-tunes the one of ``--finetune-labels`` and the section gains its curve."""
    import gymnasium as gym
    from stable_baselines3 import TD3

    expert_dir = tmp_path / "expert"
    expert_dir.mkdir()
    TD3("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=10, policy_kwargs={"net_arch": [8]}, seed=0,
        device="cpu").learn(20).save(expert_dir / "expert.zip")
    monkeypatch.syspath_prepend(str(REPO / "scripts"))
    from benches import latent_actions as bench

    tiny = dict(lam_steps=2, latent_bc_steps=2, decoder_steps=2, idm_steps=2, bc_steps=2, batch_size=8)
    args = bench.Args(env_id="Pendulum-v1", expert_run=str(expert_dir), episodes=2, work_dir=str(tmp_path / "work"),
                      labels=(16,), seeds=(0,), eval_episodes=2, joint_decoder=True, finetune_steps=64,
                      finetune_labels=16, finetune_seeds=(0,), finetune_points=1, section="t-finetune", **tiny)
    bench.main(args)
    agents = tmp_path / "work" / "agents"
    assert (agents / "latent_base_16_s0.zip").exists() and not (agents / "latent_base_s0.zip").exists()
    result = json.loads((tmp_path / "work" / "results" / "finetune_16_64_s0.json").read_text())
    assert result["curve"][0]["step"] == 0 and result["curve"][-1]["step"] >= 64  # before and after PPO
    section = open(os.environ["TT_AGENTS_BENCHMARKS_MD"]).read().split("<!-- bench:t-finetune -->")[1]
    assert "Online fine-tuning (LAPO's stage 3" in section
