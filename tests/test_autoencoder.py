"""TrajectoryAutoencoder: the hold, the scores, switch-point recovery on known data, the agent, datasets, figures."""

from __future__ import annotations

import json

import minari
import numpy as np
import pytest
import torch

from tests.agent_harness import check_agent
from tests.fake_env import make_dataset
from tt_agents import TrainConfig, load_agent
from tt_agents.autoencoder import (
    TAEConfig,
    TrajectoryAutoencoder,
    boundary_f1,
    plot_segments,
    segment_dataset,
)
from tt_agents.data import load_dataset
from tt_agents.data.writer import EpisodeRecord, MinariWriter
from tt_agents.envs.switching import SwitchingPointMass, SwitchingPolicy, switching_dataset
from tt_agents.models.autoencoder import hard_hold, sample_gumbel_transitions, soft_hold, sparsity_prior


# ---------------------------------------------------------------------------------------------- the hold
def test_soft_hold_is_the_cumulative_product_recurrence():
    torch.manual_seed(0)
    alpha = torch.rand(3, 9)
    alpha[:, 0] = 1
    alpha[1, 4] = 1.0  # a hard transition inside
    alpha[2, 1], alpha[2, 2:] = 1.0, 0.0  # a hard start at step 1, nothing new after it
    g = torch.randn(3, 9, 5)
    held, ref = soft_hold(alpha, g), []
    prev = torch.zeros(3, 5)
    for t in range(9):
        prev = alpha[:, t, None] * g[:, t] + (1 - alpha[:, t, None]) * prev
        ref.append(prev)
    torch.testing.assert_close(held, torch.stack(ref, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(held[2, 2:], g[2, 1].expand(7, 5), atol=1e-5, rtol=1e-5)


def test_hard_hold_keeps_each_segments_first_latent():
    g = torch.arange(6.0).view(1, 6, 1)
    starts = torch.tensor([[False, False, True, False, True, True]])  # step 0 counts as a start anyway
    assert hard_hold(starts, g).flatten().tolist() == [0, 0, 2, 2, 4, 5]


def test_gumbel_transitions_are_binary_forward_and_pass_gradients_back():
    logits = torch.zeros(4, 50, requires_grad=True)
    b, soft = sample_gumbel_transitions(logits, tau=0.5, generator=torch.Generator().manual_seed(0))
    assert set(b.detach().unique().tolist()) <= {0.0, 1.0}
    assert 0.3 < float(b.detach().mean()) < 0.7  # logits 0: probability one half
    (b * torch.arange(50.0)).sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_sparsity_prior_terms():
    alpha = torch.tensor([[1.0, 0.5, 0.0, 0.0]])
    mask = torch.tensor([[False, True, True, True]])
    binary, rate = sparsity_prior(alpha, mask, target_rate=0.5)
    assert float(binary) == pytest.approx(0.25 / 3)
    assert float(rate) == pytest.approx((0.5 / 3 - 0.5) ** 2)


# ---------------------------------------------------------------------------------------------- scores
def test_boundary_f1_matches_each_true_switch_once_within_the_tolerance():
    true = np.zeros(20, bool)
    true[[0, 5, 10, 15]] = True
    assert boundary_f1(true, true)["f1"] == 1.0
    shifted = np.zeros(20, bool)
    shifted[[0, 6, 11, 16]] = True  # each switch one step late
    assert boundary_f1(shifted, true, tolerance=1)["f1"] == 1.0
    assert boundary_f1(shifted, true, tolerance=0)["f1"] == 0.0
    both = true.copy()
    both[[6]] = True  # two predictions near one true switch: one matches, one is a false positive
    r = boundary_f1(both, true)
    assert (r["matched"], r["predicted"], r["true"]) == (3, 4, 3)
    assert r["precision"] == pytest.approx(0.75) and r["recall"] == 1.0


def test_the_switching_env_and_policy_record_their_switches():
    env = SwitchingPointMass(episode_len=100)
    policy = SwitchingPolicy(env.action_space, 3, 30, seed=1)
    lengths, run = [], 0
    for t in range(100):
        a, start = policy.act()
        if start and t:
            lengths.append(run)
            run = 0
        run += 1
    assert lengths and min(lengths) >= 3 and max(lengths) <= 30
    ds = switching_dataset(n_episodes=3, episode_len=60, seed=2)
    for ep in ds:
        s = ep.extras["segment_start"]
        assert s[0] and np.all(np.any(ep.actions[1:] != ep.actions[:-1], axis=1) == s[1:])


# ---------------------------------------------------------------------------------------------- learning
def _small(hold: str = "soft", **kw) -> TAEConfig:
    return TAEConfig(latent_dim=4, d_model=32, n_layers=1, n_heads=2, window=8, hidden_sizes=(64,), context_len=32,
                     hold=hold, target_segment_length=16.5, **kw)


def _pooled_f1(agent, episodes) -> tuple[float, float]:
    res = [boundary_f1(agent.encode(e).starts, e.extras["segment_start"], tolerance=1) for e in episodes]
    m, p, t = (sum(r[k] for r in res) for k in ("matched", "predicted", "true"))
    return 2 * m / (p + t), p / t


def test_alphas_recover_known_switch_points(tmp_path):
    """Piecewise-constant actions with durations 3-30: F1 >= 0.9 at +-1 step, count within 20%."""
    torch.manual_seed(0)
    train = switching_dataset(n_episodes=32, episode_len=120, seed=0)
    test = switching_dataset(n_episodes=8, episode_len=120, seed=1)
    agent = TrajectoryAutoencoder(train.observation_space, train.action_space, _small(), device="cpu", seed=0)
    cfg = TrainConfig(steps=600, batch_size=32, lr=1e-2, warmup_steps=20, progress=False)
    agent.fit(train, {"autoencoder": cfg, "policy": TrainConfig(steps=1, progress=False)})
    f1, ratio = _pooled_f1(agent, test)
    assert f1 >= 0.9, f1
    assert 0.8 <= ratio <= 1.2, ratio
    # the held latents keep the actions: the decoder rebuilds them from (state, latent) alone
    err = np.mean([np.mean((agent.reconstruct(e) - e.actions) ** 2) for e in test])
    spread = np.mean([np.var(e.actions) for e in test])
    assert err < 0.05 * spread, (err, spread)


@pytest.mark.parametrize("hold", ["gumbel", "reinforce"])
def test_other_holds_train_and_reach_the_encoder(hold):
    ds = switching_dataset(n_episodes=6, episode_len=40, seed=0)
    agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, _small(hold), device="cpu", seed=0)
    before = agent.model.autoencoder.encoder.alpha_head.weight.detach().clone()
    r = agent.fit(ds, {"autoencoder": TrainConfig(steps=5, batch_size=8, progress=False),
                       "policy": TrainConfig(steps=1, progress=False)})
    assert np.all(np.isfinite(r.stages["autoencoder"].losses))
    assert not torch.equal(before, agent.model.autoencoder.encoder.alpha_head.weight)  # alpha learns


def test_fixed_stride_baseline_uses_its_stride():
    ds = switching_dataset(n_episodes=4, episode_len=30, seed=0)
    agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, _small(fixed_stride=5), device="cpu", seed=0)
    agent.fit(ds, {"autoencoder": TrainConfig(steps=3, batch_size=4, progress=False),
                   "policy": TrainConfig(steps=1, progress=False)})
    enc = agent.encode(ds[0])
    assert np.flatnonzero(enc.starts).tolist() == [0, 5, 10, 15, 20, 25]
    with pytest.raises(ValueError, match="fixed_stride must be >= 0"):
        TrajectoryAutoencoder(ds.observation_space, ds.action_space, _small(fixed_stride=-1), device="cpu")


# ---------------------------------------------------------------------------------------------- the agent
@pytest.mark.parametrize("obs_kind,action_kind", [("vector", "continuous"), ("vector", "discrete"),
                                                  ("image", "discrete")])
def test_harness(obs_kind, action_kind, tmp_path):
    check_agent(lambda o, a: TrajectoryAutoencoder(o, a, TAEConfig.tiny(), device="cpu", seed=0), obs_kind,
                action_kind, tmp_path)


def test_encode_is_the_same_in_chunks_and_segments_cover_the_episode():
    ds = switching_dataset(n_episodes=2, episode_len=150, seed=3)
    agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, _small(), device="cpu", seed=0)
    agent.fit(ds, {"autoencoder": TrainConfig(steps=2, batch_size=4, progress=False),
                   "policy": TrainConfig(steps=1, progress=False)})
    whole, chunked = agent.encode(ds[0]), agent.encode(ds[0], chunk=17)
    np.testing.assert_allclose(chunked.alphas, whole.alphas, atol=1e-5)
    np.testing.assert_allclose(chunked.latents, whole.latents, atol=1e-5)
    assert whole.segments[0].start == 0 and whole.segments[-1].end == 150
    assert all(a.end == b.start for a, b in zip(whole.segments, whole.segments[1:]))
    for seg in whole.segments:
        np.testing.assert_array_equal(whole.latents[seg.start:seg.end], np.broadcast_to(seg.latent, (seg.end - seg.start, 4)))
    with pytest.raises(ValueError, match="encode needs"):
        agent.encode((np.zeros((3, 4), np.float32), np.zeros((5, 2), np.float32)))


def test_policy_holds_a_latent_and_switches_on_its_own():
    torch.manual_seed(0)
    ds = switching_dataset(n_episodes=16, episode_len=80, seed=0)
    agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, _small(), device="cpu", seed=0)
    agent.fit(ds, {"autoencoder": TrainConfig(steps=150, batch_size=16, lr=1e-2, progress=False),
                   "policy": TrainConfig(steps=100, batch_size=16, lr=1e-2, progress=False)})
    env = SwitchingPointMass(episode_len=80)
    obs, _ = env.reset(seed=0)
    state, latents = None, []
    for _ in range(80):
        _, state = agent.predict(obs, state=state)
        latents.append(state.latent[0].copy())
        obs, *_ = env.step(np.zeros(2, np.float32))
    changes = int(np.sum(np.any(np.diff(np.stack(latents), axis=0) != 0, axis=1)))
    assert 1 <= changes <= 40  # it holds latents over several steps and still switches
    assert state.age[0] < 80


# ---------------------------------------------------------------------------------------------- datasets and figures
def _write(path, ds):
    w = MinariWriter("switching/continuous-v0", ds.observation_space, ds.action_space, path=path, fsync=False)
    w.write_episodes([EpisodeRecord(e.observations, e.actions, e.rewards, e.terminations, e.truncations)
                      for e in ds])
    w.close()


def test_segment_dataset_writes_segment_start_and_latent_per_step(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = switching_dataset(n_episodes=3, episode_len=25, seed=0)
    _write(tmp_path / "switching" / "continuous-v0", ds)
    agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, TAEConfig.tiny(), device="cpu", seed=0)
    agent.fit(ds, TrainConfig(steps=2, batch_size=4, progress=False))
    out = segment_dataset("switching/continuous-v0", agent, "switching/segmented-v0", progress=False)
    seg = load_dataset("switching/segmented-v0")
    for src, e in zip(ds, seg):
        enc = agent.encode(src)
        np.testing.assert_array_equal(e.extras["segment_start"], enc.starts.astype(np.int64))
        np.testing.assert_allclose(e.extras["latent"], enc.latents)
        np.testing.assert_array_equal(e.actions, src.actions)
    meta = json.loads((out / "data" / "metadata.json").read_text())
    assert meta["segmented_by"] == "TrajectoryAutoencoder" and meta["derived_from"] == "switching/continuous-v0"
    assert minari.load_dataset("switching/segmented-v0").total_episodes == 3


def test_training_saves_the_alphas_figure_and_the_checkpoint_holds_both_stages(tmp_path):
    ds = make_dataset("vector", "continuous", n_episodes=3, episode_len=12)
    agent = TrajectoryAutoencoder(ds.observation_space, ds.action_space, TAEConfig.tiny(), device="cpu", seed=0)
    cfg = TrainConfig(steps=4, batch_size=4, checkpoint_every=2, progress=False, run_dir=str(tmp_path / "run"))
    agent.fit(ds, {"autoencoder": cfg, "policy": TrainConfig(steps=2, progress=False, run_dir=str(tmp_path / "run"))})
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    assert figures == ["alphas.png", "alphas_0000002.png", "alphas_0000004.png"]
    assert (tmp_path / "run" / "figures" / "alphas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = load_agent(agent.save(tmp_path / "tae"), device="cpu")
    for name, w in agent.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[name], w)
    assert {k.split(".")[0] for k in loaded.model.state_dict()} == {"autoencoder", "policy"}
    enc = loaded.encode(ds[0])
    png = plot_segments(ds[0].actions, enc.starts, tmp_path / "segments.png", true_starts=enc.starts)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_refuses_what_it_cannot_model():
    import gymnasium as gym

    from tt_agents import SpaceMismatchError

    box = gym.spaces.Box(-1, 1, (3,), np.float32)
    with pytest.raises(SpaceMismatchError, match="bounded Box"):
        TrajectoryAutoencoder(box, gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), TAEConfig.tiny())
    with pytest.raises(ValueError, match="target_segment_length must be >= 1"):
        TrajectoryAutoencoder(box, box, TAEConfig(target_segment_length=0.5))
