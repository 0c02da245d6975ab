"""The fused C decode step of the DT (tt_agents.models.native) against the torch step it replaces."""

import numpy as np
import pytest
import torch

from tt_agents.models import native
from tt_agents.models.dt import DecisionTransformerNet, DTNetConfig, DTStepCache

HAS_COMPILER = native._compiler() is not None
needs_compiler = pytest.mark.skipif(not HAS_COMPILER, reason="no C compiler: "
                                    "test_without_a_compiler_the_torch_step_runs covers that case")


def make_net(head: str, prompt: bool = False, seed: int = 0, n_embd: int = 32, n_head: int = 2) -> DecisionTransformerNet:
    torch.manual_seed(seed)
    action_dim = 4 if head == "categorical" else 3
    cfg = DTNetConfig((5,), False, action_dim, head, context_len=3, n_layer=3, n_head=n_head, n_embd=n_embd,
                      dropout=0.0, max_timestep=20, cnn_channels=(), prompt=prompt)
    net = DecisionTransformerNet(cfg).eval()
    with torch.no_grad():  # weights far from GPT-2's tiny init, so that every part of the step matters
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return net


def inputs(net, n_envs: int, t: int, rng: torch.Generator):
    B = n_envs
    if net.discrete:
        prev = torch.randint(0, net.config.action_dim, (B,), generator=rng)
    else:
        prev = torch.rand((B, net.config.action_dim), generator=rng) * 2 - 1
    starts = torch.rand((B,), generator=rng) < 0.15
    has_prev = ~starts & (torch.rand((B,), generator=rng) < 0.9)
    timestep = torch.randint(0, 30, (B,), generator=rng)  # past the table too (the last row is reused)
    return (prev, has_prev, torch.randn((B,), generator=rng), torch.randn((B, 5), generator=rng), timestep, starts)


def caches(net, n_envs, prompt):
    prefix = {}
    if prompt:
        P = 4
        fields = {"returns_to_go": torch.randn(n_envs, P), "observations": torch.randn(n_envs, P, 5),
                  "timesteps": torch.arange(P).repeat(n_envs, 1), "valid": torch.ones(n_envs, P, dtype=torch.bool)}
        fields["actions"] = (torch.randint(0, 4, (n_envs, P)) if net.discrete else torch.rand(n_envs, P, 3))
        fields["valid"][1, :2] = False  # a shorter prompt
        k, v, pvalid = net.encode_prompt(fields)
        prefix = dict(prefix_k=k, prefix_v=v, prompt_valid=pvalid)
    return DTStepCache(net, n_envs, native=True, **prefix), DTStepCache(net, n_envs, native=False, **prefix)


@needs_compiler
@pytest.mark.parametrize(("head", "prompt", "n_embd", "n_head"), [
    ("tanh", False, 32, 2), ("categorical", False, 32, 2), ("linear", False, 32, 2), ("tanh", True, 32, 2),
    ("categorical", True, 32, 2), ("tanh", False, 24, 3),  # widths that leave part of a 32-column tile
])
def test_fused_step_equals_the_torch_step(head, prompt, n_embd, n_head):
    """Every output, the cache's keys and values and its validity, over 4 laps of the ring with restarts."""
    net = make_net(head, prompt, n_embd=n_embd, n_head=n_head)
    rng = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        fused, ref = caches(net, 5, prompt)
        assert fused._native is not None and ref._native is None
        for t in range(4 * (net.config.context_len + 1) + 1):
            x = inputs(net, 5, t, rng)
            torch.testing.assert_close(fused.step(*x), ref.step(*x), atol=1e-5, rtol=0)
            assert torch.equal(fused.valid, ref.valid)
        torch.testing.assert_close(fused.k, ref.k, atol=1e-5, rtol=0)
        torch.testing.assert_close(fused.v, ref.v, atol=1e-5, rtol=0)


@needs_compiler
def test_weights_changed_between_steps_are_seen():
    """Training in place (the packed copies are remade) and a replaced parameter tensor."""
    net = make_net("tanh")
    rng = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        fused, ref = caches(net, 2, False)
        for t in range(3):
            x = inputs(net, 2, t, rng)
            torch.testing.assert_close(fused.step(*x), ref.step(*x), atol=1e-5, rtol=0)
    with torch.no_grad():
        net.gpt.h[1].mlp.c_fc.weight.mul_(1.5)  # an optimizer's in-place update
        net.head.weight.data = net.head.weight.data * -1.0  # a new tensor behind the same parameter
    with torch.inference_mode():
        x = inputs(net, 2, 3, rng)
        torch.testing.assert_close(fused.step(*x), ref.step(*x), atol=1e-5, rtol=0)
    with torch.no_grad():  # tensors the step reads where they are (not packed copies): seen without a repack
        net.gpt.h[0].ln_1.weight.mul_(-2.0)
        net.gpt.h[2].attn.c_attn.bias.add_(0.5)
        net.embed_timestep.weight.mul_(3.0)
    with torch.inference_mode():
        x = inputs(net, 2, 4, rng)
        out = fused.step(*x)
        torch.testing.assert_close(out, ref.step(*x), atol=1e-5, rtol=0)


@needs_compiler
def test_a_discrete_action_out_of_range_is_refused():
    net = make_net("categorical")
    with torch.inference_mode():
        fused, _ = caches(net, 2, False)
        x = list(inputs(net, 2, 0, torch.Generator().manual_seed(0)))
        x[0] = torch.tensor([1, 7])
        valid, k = fused.valid.clone(), fused.k.clone()
        with pytest.raises(ValueError, match=r"in \[0, 4\), got \[1, 7\]"):
            fused.step(*x)
        assert torch.equal(fused.valid, valid) and torch.equal(fused.k, k)  # refused before anything changed


@needs_compiler
def test_the_library_is_built_once_per_source_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("TT_AGENTS_CACHE", str(tmp_path))
    native._build()
    built = list((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"
    mtime = built[0].stat().st_mtime_ns
    native._build()  # found, not rebuilt; no temporary files left behind
    assert [p.name for p in (tmp_path / "native").iterdir()] == [built[0].name]
    assert built[0].stat().st_mtime_ns == mtime


def test_without_a_compiler_the_torch_step_runs(monkeypatch):
    """No compiler: one warning, then the torch step, with the same outputs; the agent's predict works."""
    import gymnasium as gym

    from tt_agents.dt import DecisionTransformer, DTConfig

    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    net = make_net("tanh")
    with torch.inference_mode(), pytest.warns(RuntimeWarning, match="fused DT and TT steps are unavailable"):
        fused, ref = caches(net, 2, False)
    assert fused._native is None
    rng = torch.Generator().manual_seed(3)
    with torch.inference_mode():
        x = inputs(net, 2, 0, rng)
        torch.testing.assert_close(fused.step(*x), ref.step(*x), atol=0, rtol=0)
    agent = DecisionTransformer(gym.spaces.Box(-1, 1, (5,), np.float32), gym.spaces.Box(-1, 1, (3,), np.float32),
                                DTConfig(context_len=2, n_layer=1, n_head=1, n_embd=8), device="cpu", seed=0)
    obs = {"observation": np.zeros((2, 5), np.float32), "previous_reward": np.zeros((2, 1), np.float32)}
    actions, state = agent.predict(obs)
    assert actions.shape == (2, 3) and state.cache._native is None


def test_pack_lays_out_tiles_of_32_columns():
    w = torch.randn(70, 9)  # 3 tiles, the last one padded
    p = native.pack(w)
    assert p.shape == (3, 9, 32)
    torch.testing.assert_close(p[1, :, 5], w[32 + 5])
    assert torch.equal(p[2, :, 6:], torch.zeros(9, 26))


@needs_compiler
def test_the_agent_acts_through_the_fused_step_by_default_and_not_where_it_does_not_apply():
    import dataclasses

    import gymnasium as gym

    from tt_agents.dt import DecisionTransformer, DTConfig

    obs = {"observation": np.zeros((2, 5), np.float32), "previous_reward": np.zeros((2, 1), np.float32)}
    agent = DecisionTransformer(gym.spaces.Box(-1, 1, (5,), np.float32), gym.spaces.Box(-1, 1, (3,), np.float32),
                                DTConfig(context_len=2, n_layer=1, n_head=1, n_embd=8), device="cpu", seed=0)
    assert agent.predict(obs)[1].cache._native is not None
    for act in ({"native": False}, {"kv_dtype": "bfloat16"}):
        state = agent.initial_state(2, act=dataclasses.replace(agent.act, **act))
        assert agent.predict(obs, state)[1].cache._native is None


@needs_compiler
def test_a_network_made_under_inference_mode_acts():
    """Its parameters are inference tensors, which keep no version counter."""
    with torch.inference_mode():
        net = make_net("tanh")
        fused, ref = caches(net, 2, False)
        x = inputs(net, 2, 0, torch.Generator().manual_seed(4))
        torch.testing.assert_close(fused.step(*x), ref.step(*x), atol=1e-5, rtol=0)


@needs_compiler
def test_a_deep_copied_state_continues_like_the_original():
    import copy

    net = make_net("tanh")
    rng = torch.Generator().manual_seed(5)
    with torch.inference_mode():
        fused, _ = caches(net, 2, False)
        for t in range(3):
            fused.step(*inputs(net, 2, t, rng))
        twin = copy.deepcopy(fused)
        assert twin._native is not None and twin._native.cache is twin and twin.k.data_ptr() != fused.k.data_ptr()
        for t in range(3, 8):
            x = inputs(net, 2, t, rng)
            torch.testing.assert_close(twin.step(*x), fused.step(*x), atol=0, rtol=0)
