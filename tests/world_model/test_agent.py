"""WorldModelController: the shared harness (SB3's evaluate_policy included) for each M kind, the checkpoint's
stages, stateful acting, and what it refuses."""

from __future__ import annotations

import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.agent_harness import check_agent
from tests.fake_env import make_dataset
from tt_agents import SpaceMismatchError, TrainConfig
from tt_agents.checkpoint import read_checkpoint
from tt_agents.evaluation import evaluate
from tt_agents.world_model.agent import WorldModelConfig, WorldModelController, WorldModelState
from tt_agents.world_model.frames import ResizeFrames
from wrappers.planning import VectorPlanner

TINY = WorldModelController.presets["tiny"].config


def _make(kind: str = "mdnrnn", **kw):
    return lambda o, a: WorldModelController(o, a, dataclasses.replace(TINY, memory_kind=kind, log_generations=False,
                                                                      **kw), device="cpu", seed=0)


@pytest.mark.parametrize(("kind", "action_kind"), [("mdnrnn", "continuous"), ("transformer", "discrete")])
def test_harness(kind, action_kind, tmp_path):
    """The two M families (recurrent state, transformer window); TraDE acts through the transformer's code."""
    agent = check_agent(_make(kind), "image", action_kind, tmp_path)
    assert type(agent.model.memory).__name__ == {"mdnrnn": "MDNRNN", "transformer": "CausalTransformerMemory"}[kind]



def test_checkpoint_holds_every_stage(tmp_path):
    ds = make_dataset("image", "continuous", n_episodes=3)
    agent = _make()(ds.observation_space, ds.action_space)
    cfg = TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False, run_dir=str(tmp_path), log_every=1,
                      keep_checkpoints=True)  # checkpoint_every 1000: the controller stage checkpoints every generation
    agent.fit(ds, cfg)
    assert read_checkpoint(tmp_path / "checkpoints" / "step_1.zip").manifest["trainer"]["stage"] == "controller"
    ckpt = read_checkpoint(tmp_path / "checkpoints" / "last.zip")
    assert ckpt.manifest["trainer"]["stages_done"] == {"vae": 2, "memory": 2, "controller": 2}
    assert "history" in ckpt.manifest["trainer"]["search"]  # the CMA-ES state of the last stage
    names = set(read_checkpoint(tmp_path / "final.zip").tensors["model"])
    assert {n.split(".")[0] for n in names} == {"vae", "memory", "controller"}
    assert (tmp_path / "fitness_curve.png").stat().st_size > 0
    loaded = WorldModelController.load(tmp_path / "final.zip", device="cpu")
    for k, v in agent.model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[k], v, rtol=0, atol=0)


@pytest.mark.parametrize("uses_memory", [True, False])
def test_controller_input_norm_standardizes_what_c_reads(uses_memory, tmp_path):
    """Set when the controller stage starts: C's inputs over the dataset have mean 0 and std 1 per dimension
    (M stepped on the dataset's actions), predict applies it, and the checkpoint keeps it."""
    ds = make_dataset("image", "continuous", n_episodes=3)
    agent = _make(controller_input_norm=True, controller_uses_memory=uses_memory)(ds.observation_space,
                                                                                   ds.action_space)
    agent.fit(ds, TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False))
    model = agent.model
    assert not torch.equal(model.input_std, torch.ones_like(model.input_std))
    with torch.no_grad():
        xs = []
        for ep in ds:
            z = agent.encode(np.asarray(ep.observations)[: len(ep)])[0]
            state = model.memory.initial_state(1)
            for t in range(len(z)):
                xs.append(model.controller_input(z[t: t + 1], state))
                _, state = model.memory.step(z[t: t + 1], agent.memory_actions(np.asarray(ep.actions)[t: t + 1]),
                                             state)
        x = torch.cat(xs)
    wide = model.input_std > 1e-3  # dimensions that vary at all
    torch.testing.assert_close(x.mean(0), torch.zeros_like(x[0]), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False)[wide], torch.ones_like(x[0])[wide], atol=1e-4, rtol=0)
    agent.save(tmp_path / "wm.zip")
    loaded = WorldModelController.load(tmp_path / "wm.zip", device="cpu")
    torch.testing.assert_close(loaded.model.input_mean, model.input_mean, rtol=0, atol=0)
    obs = np.asarray(ds[0].observations[:2])
    np.testing.assert_allclose(loaded.predict(obs)[0], agent.predict(obs)[0], rtol=0, atol=1e-6)


def test_state_carries_memory_and_resets_per_env():
    ds = make_dataset("image", "continuous", n_episodes=1)
    agent = _make(controller_hidden=8)(ds.observation_space, ds.action_space)
    torch.manual_seed(1)
    for p in agent.model.controller.parameters():
        p.data.normal_()  # a controller that reads h strongly
    frames = np.stack([ds[0].observations[3], ds[0].observations[3]])
    state = None
    for t in range(3):
        _, state = agent.predict(np.stack([ds[0].observations[t]] * 2), state=state)
    a, state2 = agent.predict(frames, state=state, episode_start=np.array([False, True]))
    fresh, _ = agent.predict(frames[:1])
    assert not np.allclose(a[0], a[1])  # the continuing env's h differs from the reset one's
    np.testing.assert_allclose(a[1], fresh[0], atol=1e-6)
    torch.testing.assert_close(state2.z[0], state2.z[1])  # same frame, same latent
    with pytest.raises(ValueError, match="state holds 2 envs"):
        agent.predict(frames[:1], state=state2)


def test_resizes_frames_and_refuses_other_spaces():
    box = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    agent = WorldModelController(gym.spaces.Box(0, 255, (96, 96, 3), np.uint8), box, TINY, device="cpu", seed=0)
    action, _ = agent.predict(np.zeros((96, 96, 3), np.uint8))
    assert action.shape == (3,) and agent.frames(np.zeros((2, 96, 96, 3), np.uint8)).shape == (2, 3, 64, 64)
    with pytest.raises(SpaceMismatchError, match="pixel observations"):
        WorldModelController(gym.spaces.Box(-1.0, 1.0, (4,), np.float32), box, TINY, device="cpu")
    with pytest.raises(SpaceMismatchError, match="Box or a Discrete"):
        WorldModelController(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), gym.spaces.MultiDiscrete([2, 2]), TINY,
                             device="cpu")
    with pytest.raises(ValueError, match="exceeds the transformer's context"):
        WorldModelController(gym.spaces.Box(0, 255, (64, 64, 3), np.uint8), box,
                             WorldModelConfig(memory_kind="transformer", context=4, sequence_len=8), device="cpu")


gym.register("WorldModelFakeImage96-v0", entry_point="tests.world_model.test_agent:_fake_96")


def _fake_96():
    """The fake image env at 96x96 (CarRacing's size), so the agent's resizing is on the path."""
    from tests.fake_env import make_env

    env = ResizeFrames(make_env("image", "continuous", episode_len=5), 96, 96)
    return env


def _fake_64():
    from tests.fake_env import make_env

    return make_env("image", "continuous", episode_len=5)


gym.register("WorldModelFakeImage64-v0", entry_point="tests.world_model.test_agent:_fake_64")


def test_evaluate_and_vector_planner_on_a_resized_env():
    ds = make_dataset("image", "continuous", n_episodes=2)
    agent = _make()(ds.observation_space, ds.action_space)
    envs = agent.make_env("WorldModelFakeImage96-v0", 2)  # 96x96 frames resized to the agent's 64x64
    assert envs.single_observation_space == agent.observation_space
    res = evaluate(agent, envs, n_episodes=3, progress=False)
    assert res.n_episodes == 3 and np.isfinite(res.mean_return)
    planner = VectorPlanner(agent.make_env("WorldModelFakeImage96-v0", 2), agent)
    planner.reset(seed=0)
    starts = []
    for _ in range(8):  # past the 5-step episodes' autoresets
        _, _, _, _, info = planner.step()
        assert agent.action_space.contains(info["actions"][0])
        starts.append(info["episode_start"].copy())
    assert isinstance(planner.state, WorldModelState) and planner.state.z.shape == (2, TINY.latent)
    assert np.array(starts)[:, 0].any()  # an episode began again and the agent's state row was reset


def test_side_by_side_reconstruction_video(tmp_path):
    ds = make_dataset("image", "continuous", n_episodes=1, episode_len=4)
    agent = _make()(ds.observation_space, ds.action_space)
    ep = ds[0]
    strip = agent.reconstructions(np.asarray(ep.observations), np.asarray(ep.actions))
    assert strip.shape == (5, 64, 192, 3) and strip.dtype == np.uint8
    np.testing.assert_array_equal(strip[:, :, :64], np.asarray(ep.observations))  # the real frames, unchanged
    assert strip[0, :, 128:].max() == 0 and strip[1:, :, 128:].max() > 0  # M predicts from the second frame on
    path = agent.reconstruction_video(np.asarray(ep.observations), np.asarray(ep.actions), tmp_path / "wm.gif")
    assert path.stat().st_size > 0


def test_eval_script_writes_the_side_by_side_video(tmp_path):
    """scripts/eval.py --reconstruction-video: one more episode, as real | V(real) | M's prediction."""
    from PIL import Image

    from tests.scripts._helpers import load_script

    ds = make_dataset("image", "continuous", n_episodes=1)
    agent = _make()(ds.observation_space, ds.action_space)
    agent.save(tmp_path / "wm.zip")
    ev = load_script("eval")
    path = tmp_path / "side.gif"
    ev.main(ev.Args(checkpoint=str(tmp_path / "wm.zip"), env_id="WorldModelFakeImage64-v0", n_episodes=1, n_envs=1,
                    device="cpu", progress=False, reconstruction_video=str(path)))
    with Image.open(path) as gif:
        assert gif.size == (3 * 64, 64) and gif.n_frames == 6  # a 5-step episode: its 6 frames
    # an env of 96x96 frames (as CarRacing's): eval.py evaluates on the agent's own env, resized to V's 64x64
    resized = tmp_path / "resized.gif"
    ev.main(ev.Args(checkpoint=str(tmp_path / "wm.zip"), env_id="WorldModelFakeImage96-v0", n_episodes=1, n_envs=1,
                    device="cpu", progress=False, reconstruction_video=str(resized)))
    with Image.open(resized) as gif:
        assert gif.size == (3 * 64, 64) and gif.n_frames == 6
    with pytest.raises(ev.UsageError, match="must end in one of"):
        ev.check_options(ev.Args(checkpoint=str(tmp_path / "wm.zip"), reconstruction_video=str(tmp_path / "x.avi")))
