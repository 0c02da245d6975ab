"""evaluate() and VectorPlanner: episode accounting in both autoreset modes, scores, video, JSON."""

from __future__ import annotations

import json
import os
import sys

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode

from tests.fake_env import FakeEnv, make_dataset
from tt_agents import Agent, BCPolicy, TrainConfig
from tt_agents.evaluation import evaluate, normalized_score
from wrappers.planning import VectorPlanner


class RecordingAgent(Agent):
    """Acts 1.0 always and records what predict saw (to check episode_start and rewards)."""

    needs_reward = True

    def _build_model(self):
        import torch.nn as nn

        self.calls = []
        return nn.Linear(1, 1)

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        self.calls.append((observation.copy(), None if previous_reward is None else previous_reward.copy(),
                           episode_start.copy()))
        return np.ones((len(observation), *self.action_space.shape), np.float32), state


def _fake_factory(lens):
    return [lambda n=n: FakeEnv("vector", "continuous", episode_len=n) for n in lens]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP])
def test_episode_accounting_in_both_autoreset_modes(mode):
    venv = gym.vector.SyncVectorEnv(_fake_factory([3, 5]), autoreset_mode=mode)
    env = FakeEnv()
    agent = RecordingAgent(env.observation_space, env.action_space, device="cpu")
    res = evaluate(agent, venv, n_episodes=4, progress=False)
    assert sorted(res.lengths) == [3, 3, 5, 5]
    # with the constant action the return is deterministic per episode length and seed
    starts = np.stack([c[2] for c in agent.calls])
    assert starts[0].all()
    # every episode start is seen exactly once per episode (first call, then after each reset)
    assert starts[:, 0].sum() >= 2 and starts[:, 1].sum() >= 2
    # rewards passed at an episode start are 0, otherwise the env's last reward (> 0 here)
    for _obs, rew, st in agent.calls:
        assert np.all(rew[st] == 0)


def test_planner_refuses_disabled_autoreset():
    venv = gym.vector.SyncVectorEnv(_fake_factory([3]), autoreset_mode=AutoresetMode.DISABLED)
    env = FakeEnv()
    with pytest.raises(ValueError, match="autoreset"):
        VectorPlanner(venv, RecordingAgent(env.observation_space, env.action_space, device="cpu"))


def test_normalized_score_from_training_metadata_video_and_json(tmp_path):
    ds = make_dataset("vector", "continuous", n_episodes=2)
    agent = BCPolicy(ds.observation_space, ds.action_space, device="cpu", seed=0)
    agent.fit(ds, TrainConfig(steps=2, batch_size=4, progress=False))
    agent = type(agent).load(agent.save(tmp_path / "a"), device="cpu")  # metadata survives a round trip
    assert agent.data_info["ref_max_score"] == 10.0
    res = evaluate(agent, lambda: FakeEnv(render_mode="rgb_array"), n_episodes=3, n_envs=2, progress=False,
                   video_path=tmp_path / "ep.gif", json_path=tmp_path / "res.json")
    assert res.normalized_score == pytest.approx(normalized_score(res.mean_return, 0.0, 10.0))
    assert res.stderr_return >= 0 and res.n_episodes == 3
    assert (tmp_path / "ep.gif").stat().st_size > 0
    saved = json.loads((tmp_path / "res.json").read_text())
    assert saved["n_episodes"] == 3 and saved["returns"] == res.returns
    with pytest.raises(ValueError, match="differ"):
        normalized_score(1.0, 2.0, 2.0)


def test_progress_bar_shows_env_steps_before_any_episode_ends(capsys):
    venv = gym.vector.SyncVectorEnv(_fake_factory([4, 4]))
    env = FakeEnv()
    agent = RecordingAgent(env.observation_space, env.action_space, device="cpu")
    evaluate(agent, venv, n_episodes=2, progress=True)
    err = capsys.readouterr().err
    assert "env_steps=2" in err and "mean_return=-" in err  # shown at the first step, before any return


@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_videos_read_back_frame_for_frame(tmp_path, suffix):
    import imageio.v3 as iio

    from tt_agents.evaluation import _write_video

    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (128, 128, 128)]
    frames = [np.full((37, 51, 3), c, np.uint8) for c in colours]  # odd sizes: H.264 needs even ones
    path = tmp_path / "sub" / f"clip{suffix}"
    _write_video(frames, path)
    back = iio.imread(path, plugin="pyav" if suffix == ".mp4" else "pillow", index=None)
    assert back.shape[0] == len(frames)
    assert back.shape[1:3] == ((38, 52) if suffix == ".mp4" else (37, 51))  # padded to even, or as given
    for got, colour in zip(back, colours):
        assert np.abs(got[:37, :51, :3].astype(int).mean(axis=(0, 1)) - colour).max() < 8
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no partial file left behind


def test_evaluate_refuses_a_video_format_it_cannot_write(tmp_path):
    env = FakeEnv()
    agent = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0)
    with pytest.raises(ValueError, match=r"\.mp4.*clip\.avi"):
        evaluate(agent, lambda: FakeEnv(render_mode="rgb_array"), n_episodes=1, video_path=tmp_path / "clip.avi")
    assert not list(tmp_path.iterdir())


def test_headless_rendering_defaults_to_egl_and_respects_the_user(monkeypatch):
    from tt_agents.evaluation import make_vec_env

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.setenv("DISPLAY", ":0")
    make_vec_env(lambda: FakeEnv(render_mode="rgb_array"), render=True).close()
    assert "MUJOCO_GL" not in os.environ  # a display: MuJoCo's own default
    monkeypatch.delenv("DISPLAY")
    make_vec_env(lambda: FakeEnv(), render=False).close()
    assert "MUJOCO_GL" not in os.environ  # no rendering asked for: nothing changed
    make_vec_env(lambda: FakeEnv(render_mode="rgb_array"), render=True).close()
    assert os.environ["MUJOCO_GL"] == ("egl" if sys.platform.startswith("linux") else os.environ["MUJOCO_GL"])
    monkeypatch.setenv("MUJOCO_GL", "osmesa")
    make_vec_env(lambda: FakeEnv(render_mode="rgb_array"), render=True).close()
    assert os.environ["MUJOCO_GL"] == "osmesa"


def test_hopper_video_headless(tmp_path, monkeypatch):
    import imageio.v3 as iio

    pytest.importorskip("mujoco")
    monkeypatch.delenv("DISPLAY", raising=False)
    env = gym.make("Hopper-v5")
    agent = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0)
    res = evaluate(agent, "Hopper-v5", n_episodes=1, progress=False, video_path=tmp_path / "hopper.mp4")
    video = iio.imread(tmp_path / "hopper.mp4", plugin="pyav")
    assert video.shape == (res.lengths[0] + 1, 480, 480, 3)  # the first frame, then one per step
    assert video.std() > 5  # a scene, not a blank frame


def test_async_sub_envs_need_an_env_id_and_no_video():
    from tt_agents.evaluation import make_vec_env

    with pytest.raises(ValueError, match="needs an env id and no video"):
        make_vec_env(lambda: FakeEnv(), n_envs=2, vectorization_mode="async")
    with pytest.raises(ValueError, match="needs an env id and no video"):
        make_vec_env("CartPole-v1", n_envs=2, render=True, vectorization_mode="async")
    with pytest.raises(ValueError, match="'sync' or 'async', got 'threads'"):
        make_vec_env("CartPole-v1", vectorization_mode="threads")
    venv = make_vec_env("CartPole-v1", n_envs=2, vectorization_mode="async")
    assert isinstance(venv, gym.vector.AsyncVectorEnv)
    venv.close()
