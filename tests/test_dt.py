"""DecisionTransformer: the shared harness, cached vs full-recompute inference, returns-to-go, training."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from tests.agent_harness import check_agent
from tests.fake_env import ACTION_KINDS, OBS_KINDS, make_dataset, make_env
from tt_agents import TrainConfig
from tt_agents.data import Episode, EpisodeDataset
from tt_agents.dt import DT_PRESETS, DecisionTransformer, DTConfig, MissingRewardError
from tt_agents.spaces import SpaceMismatchError
from wrappers.reward import AddPreviousReward

TINY = DTConfig(context_len=3, n_layer=1, n_head=1, n_embd=16, cnn_channels=(4, 8))


@pytest.mark.parametrize("obs_kind", OBS_KINDS)
@pytest.mark.parametrize("action_kind", ACTION_KINDS)
def test_harness(obs_kind, action_kind, tmp_path):
    check_agent(lambda o, a: DecisionTransformer(o, a, TINY, device="cpu", seed=0), obs_kind, action_kind, tmp_path)


def record_outputs(agent):
    """Record the network's action outputs of every predict call (the cached step's, or the recompute's)."""
    outputs = []
    for name in ("_step_cached", "_step_recompute"):
        original = getattr(agent, name)

        def wrapped(*args, original=original):
            out = original(*args)
            outputs.append(out)
            return out

        setattr(agent, name, wrapped)
    return outputs


def rollout(agent, inference, n_envs, n_steps, resets=(), seed=0, prompt=None, **act):
    """Deterministic actions and network outputs on random inputs, with env 1 restarting at ``resets``;
    ``act``: act-time settings of the state (e.g. ``native=False``, the torch step)."""
    import dataclasses

    rng = np.random.default_rng(seed)
    outputs = record_outputs(agent)
    state = agent.initial_state(n_envs, act=dataclasses.replace(agent.act, **act), prompt=prompt, inference=inference)
    actions = []
    for t in range(n_steps):
        space = agent.observation_space
        if space.dtype == np.uint8:
            obs = rng.integers(0, 256, size=(n_envs, *space.shape), dtype=np.uint8)
        else:
            obs = rng.uniform(-1, 1, size=(n_envs, *space.shape)).astype(space.dtype)
        reward = rng.normal(size=(n_envs, 1)).astype(np.float32)
        starts = np.zeros(n_envs, bool)
        if t in resets:
            starts[1] = True
        a, state = agent.predict({"observation": obs, "previous_reward": reward}, state, starts)
        actions.append(a)
    del agent._step_cached, agent._step_recompute
    return np.stack(actions), torch.stack(outputs)


@pytest.mark.parametrize("action_kind", ACTION_KINDS)
def test_cached_inference_matches_full_recompute(action_kind):
    """Over 3K steps (the window slides) and with one env restarting mid-way, at every step."""
    env = make_env("vector", action_kind)
    cfg = DTConfig(context_len=4, n_layer=3, n_head=2, n_embd=16)
    agent = DecisionTransformer(env.observation_space, env.action_space, cfg, device="cpu", seed=0)
    agent.target_return = 3.0
    K, n_steps = cfg.context_len, 3 * cfg.context_len + 5
    resets = (5, 9)  # env 1 restarts twice, so its episode runs out of step with the others
    a_cache, out_cache = rollout(agent, "cache", 3, n_steps, resets)  # the fused C step, where it builds
    a_full, out_full = rollout(agent, "recompute", 3, n_steps, resets)
    torch.testing.assert_close(out_cache, out_full, atol=1e-5, rtol=0)
    _, out_torch = rollout(agent, "cache", 3, n_steps, resets, native=False)  # the torch step
    torch.testing.assert_close(out_torch, out_full, atol=1e-5, rtol=0)
    if action_kind == "discrete":
        np.testing.assert_array_equal(a_cache, a_full)
    else:
        np.testing.assert_allclose(a_cache, a_full, atol=1e-5)
    # the original DT evaluation (last K steps only) agrees until the window slides, then differs
    _, out_window = rollout(agent, "window", 3, n_steps, resets)
    torch.testing.assert_close(out_window[:K, 0], out_cache[:K, 0], atol=1e-5, rtol=0)
    assert not torch.allclose(out_window[2 * K :, 0], out_cache[2 * K :, 0], atol=1e-5)


def test_cached_inference_matches_full_recompute_on_images():
    env = make_env("image", "discrete")
    cfg = DTConfig(context_len=2, n_layer=2, n_head=1, n_embd=16, cnn_channels=(4,))
    agent = DecisionTransformer(env.observation_space, env.action_space, cfg, device="cpu", seed=0)
    _, out_cache = rollout(agent, "cache", 2, 7, resets=(4,))
    _, out_full = rollout(agent, "recompute", 2, 7, resets=(4,))
    torch.testing.assert_close(out_cache, out_full, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prompted", [False, True])
def test_last_step_only_is_the_full_forwards_last_output(prompted):
    """The recompute path computes the last step's output alone; it equals the training forward's."""
    from tt_agents.models.dt import DecisionTransformerNet, DTNetConfig

    torch.manual_seed(0)
    net = DecisionTransformerNet(DTNetConfig((3,), False, 2, "tanh", 4, 2, 1, 16, 0.0, 100, (), prompted)).eval()
    B, T = 2, 6

    def fields(steps):
        valid = torch.ones(B, steps, dtype=torch.bool)
        valid[1, :2] = False  # left padding
        return (torch.randn(B, steps), torch.randn(B, steps, 3), torch.rand(B, steps, 2) * 2 - 1,
                torch.arange(steps).repeat(B, 1), valid)

    names = ("returns_to_go", "observations", "actions", "timesteps", "valid")
    prompt = dict(zip(names, fields(3))) if prompted else None
    x = fields(T)
    with torch.no_grad():
        full = net(*x, prompt=prompt)[:, -1]
        last = net(*x, prompt=prompt, last_step_only=True)
    torch.testing.assert_close(last, full, atol=1e-6, rtol=0)


def test_returns_to_go_start_at_the_target_and_subtract_previous_rewards():
    env = make_env("vector", "continuous")
    agent = DecisionTransformer(env.observation_space, env.action_space, TINY, device="cpu", seed=0)
    agent.target_return = 10.0
    obs = np.zeros((2, 4), np.float32)

    def step(state, rewards, starts=None):
        _, state = agent.predict({"observation": obs, "previous_reward": np.array(rewards, np.float32)[:, None]},
                                 state, starts)
        return state

    state = step(None, [5.0, 5.0])  # the reward given with the first observation is ignored
    assert state.returns_to_go.tolist() == [10.0, 10.0]
    state = step(state, [1.0, 2.0])
    state = step(state, [0.5, -1.0])
    assert state.returns_to_go.tolist() == [8.5, 9.0] and state.timesteps.tolist() == [2, 2]
    state = step(state, [1.0, 1.0], starts=np.array([False, True]))
    assert state.returns_to_go.tolist() == [7.5, 10.0] and state.timesteps.tolist() == [3, 0]
    state = agent.initial_state(2, target_return=-4.0)
    assert step(state, [0.0, 0.0]).returns_to_go.tolist() == [-4.0, -4.0]


def test_predict_without_previous_reward_says_to_wrap_the_env():
    env = make_env("vector", "discrete")
    agent = DecisionTransformer(env.observation_space, env.action_space, TINY, device="cpu", seed=0)
    obs, _ = env.reset(seed=0)
    with pytest.raises(MissingRewardError, match="AddPreviousReward"):
        agent.predict(obs)
    with pytest.raises(MissingRewardError, match="AddPreviousReward"):
        evaluate_policy(agent, make_env("vector", "discrete"), n_eval_episodes=1, warn=False)
    mean, _ = evaluate_policy(agent, AddPreviousReward(make_env("vector", "discrete")), n_eval_episodes=2, warn=False)
    assert np.isfinite(mean)


def return_conditioned_dataset(n_episodes=8, T=6, seed=0):
    """Episodes of a constant action: action 1 earns 1 per step, action 0 earns nothing."""
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_episodes):
        a = i % 2
        episodes.append(Episode(rng.normal(size=(T + 1, 4)).astype(np.float32), np.full(T, a, np.int64),
                                np.full(T, float(a), np.float32), np.r_[np.zeros(T - 1, bool), True],
                                np.zeros(T, bool), id=i))
    return EpisodeDataset(episodes, gym.spaces.Box(-10, 10, (4,), np.float32), gym.spaces.Discrete(2))


def test_dt_follows_the_target_return():
    ds = return_conditioned_dataset()
    cfg = DTConfig(context_len=3, n_layer=1, n_head=1, n_embd=32, dropout=0.0)
    agent = DecisionTransformer(ds.observation_space, ds.action_space, cfg, device="cpu", seed=0)
    agent.fit(ds, TrainConfig(steps=150, batch_size=32, lr=3e-3, warmup_steps=10, progress=False))
    assert agent.return_scale == 6.0 and agent.target_return == 6.0  # fitted: the best return
    obs = {"observation": np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32),
           "previous_reward": np.zeros((8, 1), np.float32)}
    high, _ = agent.predict(obs, agent.initial_state(8, target_return=6.0))
    low, _ = agent.predict(obs, agent.initial_state(8, target_return=0.0))
    assert high.tolist() == [1] * 8 and low.tolist() == [0] * 8


def test_action_field_trains_on_latent_actions_with_their_own_space():
    ds = make_dataset("vector", "continuous", n_episodes=3)
    for ep in ds:
        ep.extras["latent_actions"] = (np.arange(len(ep)) % 5).astype(np.int64)
    latent_space = gym.spaces.Discrete(5)
    cfg = DTConfig(context_len=3, n_layer=1, n_embd=16, action_field="latent_actions")
    agent = DecisionTransformer(ds.observation_space, latent_space, cfg, device="cpu", seed=0)
    result = agent.fit(ds, TrainConfig(steps=3, batch_size=4, warmup_steps=1, progress=False))
    assert np.all(np.isfinite(result.losses))
    obs, _ = make_env("vector", "continuous").reset(seed=0)
    a, _ = agent.predict({"observation": obs, "previous_reward": np.zeros(1, np.float32)})
    assert latent_space.contains(int(a))
    wrong = DecisionTransformer(ds.observation_space, gym.spaces.Box(-1, 1, (3,)), cfg, device="cpu")
    with pytest.raises(SpaceMismatchError, match="latent_actions"):
        wrong.fit(ds, TrainConfig(steps=1, progress=False))


def test_unbounded_box_actions_use_a_linear_head():
    space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    agent = DecisionTransformer(gym.spaces.Box(-1, 1, (4,), np.float32), space, TINY, device="cpu", seed=0)
    assert agent.model.config.head == "linear"
    a, _ = agent.predict({"observation": np.zeros(4, np.float32), "previous_reward": np.zeros(1, np.float32)})
    assert a.shape == (2,) and np.all(np.isfinite(a))


def test_episodes_longer_than_the_timestep_table():
    env = make_env("vector", "discrete")
    cfg = DTConfig(context_len=2, n_layer=1, n_embd=8, max_timestep=4)
    agent = DecisionTransformer(env.observation_space, env.action_space, cfg, device="cpu", seed=0)
    state = None
    for _ in range(10):
        a, state = agent.predict({"observation": np.zeros(4, np.float32), "previous_reward": np.ones(1, np.float32)},
                                 state)
    assert state.timesteps.tolist() == [9]


def test_bad_configs_and_states_are_refused():
    obs_space, act_space = gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3)
    with pytest.raises(ValueError, match="context_len"):
        DecisionTransformer(obs_space, act_space, DTConfig(context_len=0), device="cpu")
    with pytest.raises(SpaceMismatchError):
        DecisionTransformer(obs_space, gym.spaces.MultiDiscrete([2, 2]), TINY, device="cpu")
    agent = DecisionTransformer(obs_space, act_space, TINY, device="cpu")
    with pytest.raises(ValueError, match="inference"):
        agent.initial_state(1, inference="fast")
    obs = {"observation": np.zeros((2, 4), np.float32), "previous_reward": np.zeros((2, 1), np.float32)}
    with pytest.raises(ValueError, match="state is for 3 envs"):
        agent.predict(obs, agent.initial_state(3))


def test_presets_build():
    for name, preset in DT_PRESETS.items():
        agent = DecisionTransformer(gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3), preset.config,
                                    device="cpu")
        assert preset.train.steps > 0, name
        assert agent.model.config.attn_window == 3 * preset.config.context_len


def test_longer_training_sequences_train_under_the_sliding_window():
    ds = make_dataset("vector", "discrete", n_episodes=2)
    cfg = DTConfig(context_len=2, n_layer=1, n_embd=8, train_context_len=6)
    agent = DecisionTransformer(ds.observation_space, ds.action_space, cfg, device="cpu", seed=0)
    assert agent.make_sampler(ds, 4, 0, 0, 1).sample(0)["observations"].shape == (4, 6, 4)
    assert np.all(np.isfinite(agent.fit(ds, TrainConfig(steps=2, batch_size=4, progress=False)).losses))


def test_benchmark_script_runs_at_a_tiny_size(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from benches import dt as bench

    bench.main(bench.Args(context_len=2, n_envs=(2,), scaling_context_lens=(), steps=2, repeats=1, image_envs=(),
                          train_steps=1, batch_size=4, write=False, variants=("torch", "native", "bfloat16")))
    out = capsys.readouterr().out
    assert "recompute / cache" in out and "speed-up over the torch step" in out


def test_compiled_and_reduced_precision_steps(monkeypatch):
    """The compiled step traces whole (no graph break, no recompile) and acts as the eager one; without
    compilation the eager step runs (one warning); a bfloat16 cache stays close to float32."""
    import dataclasses

    monkeypatch.setenv("TT_AGENTS_COMPILE_BACKEND", "eager")  # dynamo's tracing, without code generation
    env = make_env("vector", "continuous")
    agent = DecisionTransformer(env.observation_space, env.action_space, TINY, device="cpu", seed=0)
    agent.target_return = 3.0

    def actions(**act):  # actions, not recorded network outputs: a recording hook would be traced too
        agent.act = dataclasses.replace(agent.act, **act)
        rng = np.random.default_rng(0)
        state, out = agent.initial_state(3), []
        for t in range(9):
            obs = rng.uniform(-1, 1, size=(3, *env.observation_space.shape)).astype(np.float32)
            starts = np.array([False, t == 4, False])
            x = {"observation": obs, "previous_reward": rng.normal(size=(3, 1)).astype(np.float32)}
            a, state = agent.predict(x, state, starts)
            out.append(a)
        return np.stack(out)

    eager = actions()
    np.testing.assert_allclose(actions(compile=True), eager, atol=1e-5, rtol=0)

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="running it eagerly"):
        np.testing.assert_allclose(actions(compile=True), eager, atol=1e-5, rtol=0)
    assert 0 < np.abs(actions(compile=False, kv_dtype="bfloat16") - eager).max() < 0.05
