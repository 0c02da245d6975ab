"""LatentActionPolicy and VPTPolicy as agents (the shared harness, SB3), relabel into Minari, the wrappers, DT on latents."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from tests.agent_harness import check_agent
from tests.fake_env import make_dataset
from tests.latent.point_env import MOVES, PointEnv, collect
from tt_agents import DecisionTransformer, DTConfig, TrainConfig
from tt_agents.checkpoint import read_checkpoint
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.minari_io import EpisodeRecord, MinariWriter
from tt_agents.latent import LatentActionPolicy, VPTPolicy
from tt_agents.latent.relabel import _windows, relabel
from wrappers.action_logger import ActionLogger
from wrappers.latent import LatentActionRelabel, LatentActionSpace
from wrappers.reward import AddPreviousReward


@pytest.mark.parametrize(("cls", "obs_kind", "action_kind"), [  # both agents, both kinds of each (each run ~5 s)
    (LatentActionPolicy, "image", "continuous"),
    (VPTPolicy, "vector", "discrete"),
])
def test_harness(cls, obs_kind, action_kind, tmp_path):
    check_agent(lambda o, a: cls.from_preset("tiny", o, a, device="cpu", seed=0), obs_kind, action_kind, tmp_path)
    saved = {k.split(".")[0] for k in read_checkpoint(tmp_path / "agent.zip").tensors["model"]}
    assert saved == ({"lam", "policy", "decoder"} if cls is LatentActionPolicy else {"idm", "policy"})  # every stage


def _write(ds, path: Path, dataset_id: str, jpeg: bool = True) -> Path:
    with MinariWriter(dataset_id, ds.observation_space, ds.action_space, path=path, jpeg_encoding=jpeg,
                      metadata={"policy": "random"}, fsync=False) as w:
        w.write_episodes([EpisodeRecord(e.observations, e.actions, e.rewards, e.terminations, e.truncations,
                                        infos={"step": np.arange(len(e) + 1)}, seed=i)
                          for i, e in enumerate(ds)])
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "data").iterdir())}


def _assert_groups_identical(src: h5py.Group, dst: h5py.Group, skip: str = "extras") -> int:
    """Every dataset and attribute under ``src`` is stored identically under ``dst``; returns how many were compared."""
    n = 0
    assert dict(src.attrs) == dict(dst.attrs)
    for key, item in src.items():
        if key == skip:
            continue
        if isinstance(item, h5py.Group):
            n += _assert_groups_identical(item, dst[key], skip=None)
        else:
            a, b = item[()], dst[key][()]
            assert a.dtype == b.dtype and np.shape(a) == np.shape(b), key
            if a.dtype == object:  # variable-length JPEG frames
                assert all(x.tobytes() == y.tobytes() for x, y in zip(a, b)), key
            else:
                assert np.asarray(a).tobytes() == np.asarray(b).tobytes(), key
            n += 1
    return n


def test_relabel_adds_latents_and_keeps_every_other_field(vector_agent, vector_data, tmp_path):
    src = _write(vector_data, tmp_path / "point" / "random-v0", "point/random-v0")
    before = _digest(src)
    out = relabel(load_dataset(src), vector_agent, "point/random-latent-v0", path=tmp_path / "point" / "latent-v0",
                  episodes_per_batch=7, batch_size=100, progress=False)
    assert _digest(src) == before  # the source is never modified
    assert len(out) == len(vector_data) and out.metadata["relabeled_from"] == "point/random-v0"
    assert out.metadata["policy"] == "random"
    with h5py.File(src / "data" / "main_data.hdf5", "r") as f, h5py.File(tmp_path / "point" / "latent-v0" / "data" /
                                                                         "main_data.hdf5", "r") as g:
        compared = sum(_assert_groups_identical(f[k], g[k]) for k in f)
    assert compared == len(vector_data) * 6  # observations, actions, rewards, terminations, truncations, infos/step
    _, labels = vector_agent._relabeled(vector_data)
    z = np.concatenate([e.field("latent_actions") for e in out])
    codes = np.concatenate([e.field("latent_codes") for e in out])
    np.testing.assert_allclose(z, labels["latent_actions"], atol=1e-5)  # what the agent's relabel stage computed
    np.testing.assert_array_equal(codes, labels["latent_codes"])
    with pytest.raises(DatasetError, match="already exists"):
        relabel(src, vector_agent, "point/random-latent-v0", path=tmp_path / "point" / "latent-v0", progress=False)


def test_relabel_copies_jpeg_frames_without_re_encoding(tmp_path):
    ds = make_dataset("image", "discrete", n_episodes=2)
    agent = LatentActionPolicy.from_preset("tiny", ds.observation_space, ds.action_space, device="cpu", seed=0)
    src = _write(ds, tmp_path / "fake" / "img-v0", "fake/img-v0", jpeg=True)
    out = relabel(str(src), agent, "fake/img-latent-v0", path=tmp_path / "fake" / "img-latent-v0", progress=False)
    with h5py.File(src / "data" / "main_data.hdf5", "r") as f, h5py.File(tmp_path / "fake" / "img-latent-v0" /
                                                                         "data" / "main_data.hdf5", "r") as g:
        assert f["episode_0/observations"].shape[1:] != (64, 64, 3)  # stored as JPEG
        for k in f:
            _assert_groups_identical(f[k], g[k])
    np.testing.assert_array_equal(out[1].observations, load_dataset(src)[1].observations)


def test_relabel_in_memory_dataset(vector_agent, tmp_path):
    ds = collect("vector", "discrete", n_episodes=3, seed=5)
    out = relabel(ds, vector_agent, "point/mem-latent-v0", path=tmp_path / "mem", progress=False)
    for a, b in zip(ds, out):
        for name in ("observations", "actions", "rewards", "terminations", "truncations"):
            x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
            assert x.tobytes() == y.astype(x.dtype).tobytes(), name
        assert b.field("latent_actions").shape == (len(a), vector_agent.config.lam.latent_dim)


def test_relabel_wrapper_logs_what_relabel_computes(vector_agent, tmp_path):
    env = ActionLogger(LatentActionRelabel(PointEnv("vector", "discrete", episode_len=12), vector_agent),
                       "point/logged-v0", path=str(tmp_path / "logged"),
                       extra_spaces={"latent_actions": vector_agent.latent_space}, fsync=False)
    env.action_space.seed(0)
    for ep in range(2):
        env.reset(seed=ep)
        done = False
        while not done:
            *_, term, trunc, info = env.step(env.action_space.sample())
            assert info["latent_codes"].shape == (vector_agent.n_codes,)
            done = term or trunc
    env.close()
    logged = load_dataset(tmp_path / "logged")
    assert len(logged) == 2
    for ep in logged:  # the IDM on the logged episode's windows, as relabel computes them
        z, _ = vector_agent.infer_latents(ep.observations[_windows(ep.observations, 1)])
        np.testing.assert_allclose(ep.field("latent_actions"), z, atol=1e-5)


def test_latent_action_space_decodes_to_the_true_moves(vector_agent, vector_data):
    _, labels = vector_agent._relabeled(vector_data)
    actions = np.concatenate([e.actions for e in vector_data])
    env = LatentActionSpace(PointEnv("vector", "discrete"), vector_agent)
    assert env.action_space == vector_agent.latent_space
    obs, _ = env.reset(seed=0)
    for a in range(4):  # the mean latent of each true action moves the point that way
        z = labels["latent_actions"][actions == a].mean(0)
        nxt, *_, info = env.step(z)
        assert info["env_action"] == a
        np.testing.assert_allclose(nxt[:2] - obs[:2], 0.1 * MOVES[a], atol=1e-5)
        obs = nxt
    with pytest.raises(gym.error.ResetNeeded):
        LatentActionSpace(PointEnv("vector", "discrete"), vector_agent).step(z)


def test_ppo_acts_in_the_latent_space(vector_agent):
    from stable_baselines3 import PPO

    env = LatentActionSpace(PointEnv("vector", "discrete", episode_len=16), vector_agent)
    model = PPO("MlpPolicy", env, n_steps=32, batch_size=16, n_epochs=1, seed=0, device="cpu")
    model.learn(32)
    mean, _ = evaluate_policy(model, env, n_eval_episodes=2, warn=False)
    assert np.isfinite(mean)


def test_decision_transformer_over_latent_actions(vector_agent, vector_data, tmp_path):
    relabeled = relabel(vector_data, vector_agent, "point/dt-latent-v0", path=tmp_path / "dt", progress=False)
    dt = DecisionTransformer(vector_data.observation_space, vector_agent.latent_space,
                             DTConfig(context_len=4, n_layer=1, n_embd=16, action_field="latent_actions",
                                      return_scale=1.0), device="cpu", seed=0)
    result = dt.fit(relabeled, TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=3, progress=False))
    assert result.losses[-1] < result.losses[0]
    env = AddPreviousReward(LatentActionSpace(PointEnv("vector", "discrete", episode_len=8), vector_agent))
    obs, _ = env.reset(seed=0)
    z, state = dt.predict(obs)
    assert z.shape == vector_agent.latent_space.shape  # DT predicts a latent action ...
    *_, info = env.step(z)
    assert env.unwrapped.action_space.contains(info["env_action"])  # ... the decoder maps it to an env action
    mean, _ = evaluate_policy(dt, env, n_eval_episodes=1, warn=False)
    assert np.isfinite(mean)



class _MoveRight(gym.Wrapper):
    """PointEnv rewarded for moving right: the random data's clone gains nothing, the best policy 0.1 a step."""

    def step(self, action):
        x = self.env.unwrapped._pos[0]
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, float(self.env.unwrapped._pos[0] - x), terminated, truncated, info


def test_ppo_finetuning_trains_the_agents_own_networks(vector_agent, tmp_path):
    from tt_agents import load_agent
    from tt_agents.latent.finetune import finetune_ppo

    vector_agent.save(tmp_path / "pretrained.zip")
    agent = load_agent(tmp_path / "pretrained.zip")  # a copy: the session's agent stays as it is
    before = {k: v.clone() for k, v in agent.model.decoder.state_dict().items()}
    lam_before = {k: v.clone() for k, v in agent.model.lam.state_dict().items()}
    result = finetune_ppo(agent, lambda: _MoveRight(PointEnv("vector", "discrete", episode_len=16)), steps=2048,
                          n_envs=4, eval_episodes=8, progress=False,
                          ppo_kwargs=dict(n_steps=64, batch_size=64, n_epochs=4, learning_rate=1e-3))
    start, end = result.curve[0]["return"], result.curve[-1]["return"]
    assert start < 0.5 and end > 1.5  # the best is 1.6; measured by the agent's own predict (seen: -1.28 -> 1.6)
    assert any(not torch.equal(before[k], v) for k, v in agent.model.decoder.state_dict().items())
    assert all(torch.equal(lam_before[k], v) for k, v in agent.model.lam.state_dict().items())  # not PPO's part
    agent.save(tmp_path / "finetuned.zip")  # every stage still in the checkpoint, now fine-tuned
    again = load_agent(tmp_path / "finetuned.zip")
    obs = np.stack([PointEnv("vector", "discrete").reset(seed=s)[0] for s in range(8)])
    np.testing.assert_array_equal(again.predict(obs, deterministic=True)[0], agent.predict(obs, deterministic=True)[0])


def test_a_reloaded_agents_decoder_reads_only_its_labelled_transitions_latents(vector_agent, vector_data, tmp_path,
                                                                              monkeypatch):
    """Fitting the decoder after a reload labels the N labelled transitions with the IDM, not the whole dataset
    with the LAM (minutes for Procgen frames), and gets the latents the relabel stage gave them."""
    from tt_agents import load_agent

    _, labels = vector_agent._relabeled(vector_data)
    vector_agent.save(tmp_path / "agent.zip")
    agent = load_agent(tmp_path / "agent.zip", device="cpu")
    seen = []
    monkeypatch.setattr(type(agent), "_label_all", lambda *a, **k: pytest.fail("the whole dataset was relabeled"))
    infer = type(agent).infer_latents
    monkeypatch.setattr(type(agent), "infer_latents", lambda self, frames: seen.append(len(frames)) or infer(self, frames))
    agent.config.labels, agent.config.relabel_batch_size = 40, 16
    tr = agent._transitions(vector_data)
    np.testing.assert_allclose(agent._labelled_latents(vector_data, tr, 40), labels["latent_actions"][:40], atol=1e-5)
    assert seen == [16, 16, 8]  # the 40 labelled transitions, in batches
    agent.fit(vector_data, {"decoder": TrainConfig(steps=2, batch_size=8, progress=False)}, stage="decoder")
    assert seen == [16, 16, 8] * 2  # the decoder stage labelled them the same way
