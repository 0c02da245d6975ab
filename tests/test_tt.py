"""TTPlanner: the discretizer, the network, cached planning against the reference, and the agent harness."""

import dataclasses
import re
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.evaluation import evaluate_policy

from tests.agent_harness import check_agent
from tests.fake_env import make_dataset, make_env
from tt_agents import SpaceMismatchError, TrainConfig
from tt_agents.models import native
from tt_agents.models.gpt import GPTConfig
from tt_agents.models.tt import Discretizer, TrajectoryTransformer
from tt_agents.planning import PlanConfig, filter_cdf, top_k
from tt_agents.tt import TT_PRESETS, TTConfig, TTPlanner, TTState
from tt_agents.utils import config_from_dict, config_to_dict
from wrappers.reward import AddPreviousReward

torch.set_num_threads(1)

OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


# ----------------------------------------------------------------------------- discretizer
@pytest.mark.parametrize("strategy", ["quantile", "uniform"])
def test_discretizer_round_trip(strategy):
    rng = np.random.default_rng(0)
    data = np.concatenate([rng.normal(size=(500, 2)), rng.exponential(size=(500, 1)), np.ones((500, 1))], 1)
    d = Discretizer.fit(data, n_bins=20, strategy=strategy)
    tokens = d.discretize(data)
    assert tokens.shape == data.shape and tokens.min() >= 0 and tokens.max() <= 19
    width = np.diff(d.thresholds, axis=0).max(0)
    assert np.all(np.abs(d.reconstruct(tokens) - data).max(0) <= width + 1e-9)
    if strategy == "quantile":  # roughly equal counts per bin
        counts = np.bincount(tokens[:, 0], minlength=20)
        assert counts.min() >= 15 and counts.max() <= 35
    back = Discretizer.from_json(d.to_json())
    np.testing.assert_array_equal(back.thresholds, d.thresholds)
    assert back.strategy == strategy
    assert np.all(d.discretize(np.full((1, 4), 1e9)) == 19) and np.all(d.discretize(np.full((1, 4), -1e9)) == 0)


def test_discretizer_refuses_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        Discretizer.fit(np.array([[0.0], [np.nan]]))
    with pytest.raises(ValueError, match="strategy"):
        Discretizer.fit(np.zeros((3, 1)), strategy="kmeans")


def test_torch_tokenize_matches_numpy_discretize():
    rng = np.random.default_rng(1)
    d = Discretizer.fit(rng.normal(size=(300, 7)).astype(np.float32), n_bins=10)
    model = _model(obs_dim=3, act_dim=2, n_bins=10)
    model.set_discretizer(d)
    obs, act, rew, val = (rng.normal(size=s).astype(np.float32) for s in [(4, 5, 3), (4, 5, 2), (4, 5), (4, 5)])
    tokens = model.tokenize(*(torch.as_tensor(a) for a in (obs, act, rew, val)))
    joined = np.concatenate([obs, act, rew[..., None], val[..., None]], -1).reshape(4, -1, 7)
    np.testing.assert_array_equal(tokens.numpy().reshape(4, 5, 7), d.discretize(joined))


# ----------------------------------------------------------------------------- network
def _model(obs_dim=3, act_dim=2, n_bins=11, context=2, n_layer=2, seed=0) -> TrajectoryTransformer:
    torch.manual_seed(seed)
    td = obs_dim + act_dim + 2
    gpt = GPTConfig(n_layer=n_layer, n_head=2, n_embd=16, dropout=0.0, rope=True, attn_window=context * td)
    return TrajectoryTransformer(obs_dim, act_dim, n_bins, gpt).eval()


def test_cached_logits_match_uncached():
    """Token by token through the ring cache, far past the window, equals recomputing the receptive field."""
    model = _model()
    td = model.transition_dim
    tokens = torch.randint(0, 11, (4, 9 * td + 3))
    full = model(tokens)  # (B, T, V): the training forward
    cache = model.new_cache(4)
    first = model.decode(tokens[:, :td], cache, 0)
    torch.testing.assert_close(first, full[:, td - 1], atol=1e-5, rtol=0)
    for i in range(td, tokens.shape[1]):
        cached = model.decode(tokens[:, i : i + 1], cache, i % td)
        lo = max(0, i + 1 - model.receptive_field)
        reference = model.last_logits(tokens[:, lo : i + 1], lo % td)
        torch.testing.assert_close(cached, reference, atol=1e-5, rtol=0)
        torch.testing.assert_close(cached, full[:, i], atol=1e-5, rtol=0)


def test_value_tokens_are_hidden_from_later_tokens():
    model = _model()
    td = model.transition_dim
    tokens = torch.randint(0, 11, (1, 3 * td))
    changed = tokens.clone()
    changed[0, td - 1] = (changed[0, td - 1] + 3) % 11  # the first value token
    a, b = model(tokens), model(changed)
    assert not torch.allclose(a[0, td - 1], b[0, td - 1])  # its own output (next observation) changes
    torch.testing.assert_close(a[0, td:], b[0, td:], atol=1e-6, rtol=0)  # nothing after it does


def test_loss_weights_and_mask():
    model = _model(n_bins=5)
    logits = torch.randn(2, 6, 5)
    targets = torch.randint(0, 5, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    loss, kinds = model.loss(logits, targets, mask, target_start_dim=2, weights=(1.0, 5.0, 2.0, 3.0))
    ce = torch.nn.functional.cross_entropy(logits.reshape(12, 5), targets.reshape(12), reduction="none").view(2, 6)
    w = torch.tensor([1.0, 5.0, 5.0, 2.0, 3.0, 1.0])  # target dims 2..7 of a 7-dim transition: o a a r v o
    expected = (ce * w * mask).sum() / mask.sum()
    torch.testing.assert_close(loss, expected)
    assert set(kinds) == {"ce_observation", "ce_action", "ce_reward", "ce_value"}


# ----------------------------------------------------------------------------- sampling filters
def test_filters():
    logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
    assert torch.isinf(filter_cdf(logits, 0.65)).tolist() == [[True, True, True, False]]
    assert torch.isinf(filter_cdf(logits, 0.35)).tolist() == [[True, True, False, False]]
    assert torch.isinf(filter_cdf(logits, 0.0)).sum() == 0
    assert torch.isinf(top_k(logits, 2)).tolist() == [[True, True, False, False]]


# ----------------------------------------------------------------------------- planning
def _agent(use_cache=True, beam=4, horizon=4, double=True, seed=0, **plan) -> TTPlanner:
    cfg = TTConfig(n_bins=12, n_layer=2, n_head=2, n_embd=16, dropout=0.0, context_transitions=2)
    act = PlanConfig(beam_width=beam, horizon=horizon, n_expand=2, use_cache=use_cache, **plan)
    agent = TTPlanner(OBS, ACT, cfg, device="cpu", seed=seed, act=act)
    with torch.no_grad():  # sharper predictions than a fresh init, so that plans differ from step to step
        for p in agent.model.parameters():
            if p.dim() > 1:
                p.mul_(20)
    if double:  # float64: the two planners agree to ~1e-15, so no sampled token can flip
        agent.model.double()
    return agent


def _twin(agent: TTPlanner, **plan) -> TTPlanner:
    twin = TTPlanner(OBS, ACT, agent.config, device="cpu", act=dataclasses.replace(agent.act, **plan))
    twin.model.to(next(agent.model.parameters()).dtype)
    twin.model.load_state_dict(agent.model.state_dict())
    twin._set_discretizer(agent.discretizer)
    return twin


def _inputs(n_steps=10, n_envs=3, seed=0):
    rng = np.random.default_rng(seed)
    for t in range(n_steps):
        obs = rng.uniform(-1, 1, (n_envs, 3)).astype(np.float32)
        rew = rng.uniform(-1, 1, (n_envs, 1)).astype(np.float32)
        starts = np.zeros(n_envs, bool) if t else np.ones(n_envs, bool)
        if t == 5:
            starts[1] = True  # one env starts a new episode while the others go on
        yield (obs if t % 3 == 2 else {"observation": obs, "previous_reward": rew}), starts


@pytest.mark.parametrize("shared_prefix", [True, False], ids=["shared-prefix", "forked-rings"])
def test_cached_and_reference_planning_return_the_same_plans(shared_prefix):
    fast = _agent(use_cache=True, shared_prefix=shared_prefix)
    slow = _twin(fast, use_cache=False)
    s_fast = s_slow = None
    for obs, starts in _inputs(n_steps=9):
        a_fast, s_fast = fast.predict(obs, state=s_fast, episode_start=starts)
        a_slow, s_slow = slow.predict(obs, state=s_slow, episode_start=starts)
        torch.testing.assert_close(s_fast.last_plan.tokens, s_slow.last_plan.tokens, rtol=0, atol=0)
        torch.testing.assert_close(s_fast.last_plan.scores, s_slow.last_plan.scores, atol=1e-10, rtol=0)
        np.testing.assert_array_equal(a_fast, a_slow)
    # and the plans were not trivial: different actions across envs and steps
    assert len({tuple(a) for a in a_fast}) > 1


def test_batched_plans_do_not_depend_on_the_other_envs():
    agent = _agent()
    states = [None] * 3
    s_batch = None
    for obs, starts in _inputs(n_steps=6):
        a_batch, s_batch = agent.predict(obs, state=s_batch, episode_start=starts)
        for i in range(3):
            o = {k: v[i : i + 1] for k, v in obs.items()} if isinstance(obs, dict) else obs[i : i + 1]
            a_i, states[i] = agent.predict(o, state=states[i], episode_start=starts[i : i + 1])
            np.testing.assert_array_equal(a_i[0], a_batch[i])


def test_plan_layout_and_scores():
    agent = _agent(beam=3, horizon=3)
    obs = np.array([[0.1, -0.5, 0.9]], np.float32)
    _, state = agent.predict(obs)
    plan = state.last_plan
    assert plan.tokens.shape == (1, 3, agent.model.transition_dim)
    np.testing.assert_array_equal(plan.tokens[0, 0, :3].numpy(), agent.discretizer.subset(0, 3).discretize(obs)[0])
    assert torch.isfinite(plan.scores).all()
    assert isinstance(state, TTState) and state.pending.shape == (1, 4)


def test_deterministic_predict_is_reproducible_and_stochastic_is_not_fixed():
    agent = _agent(double=False)
    obs = np.random.default_rng(3).uniform(-1, 1, (2, 3)).astype(np.float32)
    a1, _ = agent.predict(obs)
    a2, _ = agent.predict(obs)
    np.testing.assert_array_equal(a1, a2)
    torch.manual_seed(0)
    draws = {agent.predict(obs, deterministic=False)[0].tobytes() for _ in range(6)}
    assert len(draws) > 1


def test_without_rewards_the_context_gets_the_predicted_reward():
    agent = _agent()
    obs = np.zeros((1, 3), np.float32)
    _, state = agent.predict(obs)
    predicted = state.last_plan.tokens[0, 0, agent.model.reward_dim].item()
    reward = agent.discretizer.subset(5, 6).reconstruct(np.array([[predicted]]))  # its bin centre, (1, 1)
    twin = _copy_state(agent, state)
    a_plain, _ = agent.predict(obs, state=state)  # no reward given: the predicted one fills the context
    a_given, _ = agent.predict({"observation": obs, "previous_reward": reward.astype(np.float32)}, state=twin)
    np.testing.assert_array_equal(a_plain, a_given)


def _copy_state(agent: TTPlanner, state: TTState) -> TTState:
    out = TTState(agent, state.n_envs)
    out.context = state.context.select(torch.arange(state.n_envs))
    out.pending = state.pending.clone()
    out.has_pending = state.has_pending.copy()
    for g, h in zip(out.generators, state.generators):
        g.set_state(h.get_state())
    return out


def test_wrong_state_is_refused_unless_starting_afresh():
    agent = _agent()
    _, state = agent.predict(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="state"):
        agent.predict(np.zeros((3, 3), np.float32), state=state, episode_start=np.zeros(3, bool))
    _, fresh = agent.predict(np.zeros((3, 3), np.float32), state=state, episode_start=np.ones(3, bool))
    assert fresh.n_envs == 3


# ----------------------------------------------------------------------------- agent
def test_harness_vector_continuous(tmp_path):
    check_agent(lambda o, a: TTPlanner(o, a, TTConfig.tiny(), device="cpu", seed=0, act=PlanConfig.tiny()), "vector", "continuous", tmp_path)


@pytest.mark.parametrize(
    "obs_space, act_space, match",
    [
        (gym.spaces.Box(0, 255, (8, 8, 3), np.uint8), ACT, "flat Box observation"),
        (OBS, gym.spaces.Discrete(3), "discrete actions are not supported"),
        (gym.spaces.Discrete(4), ACT, "flat Box observation"),
    ],
)
def test_unsupported_spaces_are_refused(obs_space, act_space, match):
    with pytest.raises(SpaceMismatchError, match=match):
        TTPlanner(obs_space, act_space, TTConfig.tiny(), device="cpu", act=PlanConfig.tiny())


def test_evaluate_policy_with_and_without_rewards_and_a_gymnasium_loop():
    ds = make_dataset("vector", "continuous", n_episodes=3)
    agent = TTPlanner(ds.observation_space, ds.action_space, TTConfig.tiny(), device="cpu", seed=0,
                      act=PlanConfig.tiny())
    agent.fit(ds, TrainConfig(steps=5, batch_size=4, warmup_steps=1, progress=False))
    for env in (make_env(episode_len=5), AddPreviousReward(make_env(episode_len=5))):
        mean, std = evaluate_policy(agent, env, n_eval_episodes=2, warn=False)
        assert np.isfinite(mean) and np.isfinite(std)
    env = make_env(episode_len=6)
    obs, _ = env.reset(seed=0)
    state, done, steps = None, False, 0
    while not done:
        action, state = agent.predict(obs, state=state, episode_start=np.array([steps == 0]))
        assert env.action_space.contains(action)
        obs, _, term, trunc, _ = env.step(action)
        done, steps = term or trunc, steps + 1
    assert steps == 6


def test_fit_sets_bins_and_checkpoint_round_trip(tmp_path):
    ds = make_dataset("vector", "continuous", n_episodes=3)
    agent = TTPlanner(ds.observation_space, ds.action_space, TTConfig.tiny(), device="cpu", seed=0,
                      act=PlanConfig.tiny())
    agent.fit(ds, TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False))
    # value bins include the termination penalty (every fake episode terminates)
    assert agent.discretizer.thresholds[0, -1] < -50
    agent.act = PlanConfig(beam_width=2, horizon=3)
    loaded = TTPlanner.load(agent.save(tmp_path / "tt"), device="cpu")
    np.testing.assert_array_equal(loaded.discretizer.thresholds, agent.discretizer.thresholds)
    assert loaded.config == agent.config and loaded.act == agent.act
    torch.testing.assert_close(loaded.model.thresholds, agent.model.thresholds)


def test_training_lowers_the_loss():
    ds = make_dataset("vector", "continuous", n_episodes=6)
    agent = TTPlanner(ds.observation_space, ds.action_space, TTConfig.tiny(), device="cpu", seed=0,
                      act=PlanConfig.tiny())
    result = agent.fit(ds, TrainConfig(steps=120, batch_size=16, lr=3e-3, warmup_steps=5, progress=False))
    assert np.mean(result.losses[-10:]) < 0.8 * np.mean(result.losses[:10])


def test_planning_picks_the_rewarding_action():
    """One-step episodes with random actions and reward 1 - |a - 0.5|: the search should find a near 0.5."""
    from tt_agents.data import Episode, EpisodeDataset

    rng = np.random.default_rng(0)
    episodes = []
    for i in range(1500):
        a = rng.uniform(-1, 1, (1, 1)).astype(np.float32)
        episodes.append(
            Episode(rng.uniform(-1, 1, (2, 1)).astype(np.float32), a, (1 - np.abs(a[:, 0] - 0.5)).astype(np.float32),
                    np.zeros(1, bool), np.ones(1, bool), id=i)
        )
    space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    ds = EpisodeDataset(episodes, space, space)
    cfg = TTConfig(n_bins=20, n_layer=1, n_head=2, n_embd=32, dropout=0.0, sequence_transitions=2,
                   context_transitions=2)
    agent = TTPlanner(space, space, cfg, device="cpu", seed=0, act=PlanConfig(beam_width=8, horizon=1, n_expand=4))
    agent.fit(ds, TrainConfig(steps=300, batch_size=64, lr=3e-3, warmup_steps=10, progress=False))
    actions, _ = agent.predict(rng.uniform(-1, 1, (32, 1)).astype(np.float32))
    assert np.abs(actions - 0.5).mean() < 0.25  # a uniformly random action is 0.625 away on average


def test_presets_and_config_json():
    assert TTConfig.paper() == TTConfig()
    c = TTConfig()
    assert (c.n_layer, c.n_head, c.n_embd, c.n_bins, c.sequence_transitions, c.context_transitions) == (4, 4, 128, 100, 10, 5)
    assert (c.action_weight, c.reward_weight, c.value_weight, c.termination_penalty) == (5.0, 1.0, 1.0, -100.0)
    p = PlanConfig()  # the paper's search: the act-time default of a TTPlanner
    assert (p.beam_width, p.horizon, p.n_expand, p.k_obs, p.k_act, p.cdf_obs, p.cdf_act) == (128, 15, 2, 1, None, None, 0.6)
    assert set(TT_PRESETS) >= {"paper", "small"}
    small = TTConfig.small()
    assert config_from_dict(TTConfig, config_to_dict(small)) == small
    with pytest.raises(ValueError):
        TTConfig(n_embd=30, n_head=4)


def test_planning_benchmark_runs_at_a_tiny_size(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from benches import planning as bench

    bench.main(bench.Args(searches=("2x2",), n_envs=(1, 2), repeats=1, modes=("recompute",), full_reference=("2x2",),
                          warmup_steps=2, obs_dim=3, action_dim=2, write=False,
                          variants=("forked-rings", "fused", "shared-prefix"), variant_rounds=1, peak_repeats=1))
    out = capsys.readouterr().out
    assert "lowest / 1-env cache at peak" in out and "GFLOP/s" in out
    for variant in ("fused", "shared-prefix"):  # the same plans as the torch step's forked rings
        assert re.search(rf"\| 2 \| 2 \| 2 \| {variant} \| [\d.e-]+ \| [\d.]+ \| yes \|", out)
    assert "cache / torch step" in out
    assert "attention GB/s" in out and "linear / 1-env linear" in out
    # the 2-env row's note: what the linear layers and attention alone cost against the whole 1-env call
    note = re.search(r"2x2 \(the torch step\): .* take (\d+)% of the 1-env call.* would still cost ([\d.]+)x", out)
    assert note is not None and 0 < int(note.group(1)) <= 100 and float(note.group(2)) > 0


@pytest.mark.skipif(native._compiler() is None, reason="no C compiler: the fused step it measures cannot be built")
def test_fused_step_anatomy_benchmark_runs_at_a_tiny_size(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    from benches import tt_step as bench

    bench.main(bench.Args(rows=(4,), repeats=2, plans=("2x2",), plan_repeats=1, obs_dim=3, action_dim=2, write=False))
    out = capsys.readouterr().out
    step = re.search(r"\| 4 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out)
    assert step is not None and all(float(v) > 0 for v in step.groups())
    plan = re.search(r"\| 2 \| 2 \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", out)
    assert plan is not None and float(plan.group(2)) > 0 and float(plan.group(3)) > 0


def test_reduced_precision_beams_plan_close_to_float32():
    """A bfloat16 cache of the beams (shared-prefix mode) is not exact, but scores its plans within bf16's error."""
    fast = _agent(use_cache=True, shared_prefix=True, double=False)
    low = _twin(fast, kv_dtype="bfloat16")
    obs = np.random.default_rng(1).uniform(-1, 1, (2, 3)).astype(np.float32)
    _, s_fast = fast.predict(obs)
    _, s_low = low.predict(obs)
    assert s_low.last_plan.tokens.shape == s_fast.last_plan.tokens.shape
    assert torch.isfinite(s_low.last_plan.scores).all()
    with pytest.raises(ValueError, match="kv_dtype"):
        PlanConfig(kv_dtype="int8")
