"""The fused C decode step of the TT's beam search (tt_agents.models.tt_native) against the torch step."""

import dataclasses
import threading

import gymnasium as gym
import numpy as np
import pytest
import torch

from tt_agents import planning
from tt_agents.models import native, tt_native
from tt_agents.models.gpt import GPTConfig
from tt_agents.models.tt import TrajectoryTransformer
from tt_agents.planning import CachedContext, PlanConfig
from tt_agents.tt import TTConfig, TTPlanner

torch.set_num_threads(1)
needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C compiler: "
                                    "test_without_a_compiler_plans_run_the_torch_step covers that case")

# the bfloat16 linear layers' tests run where the CPU has AVX512-BF16 (this project's CI machine does);
# test_bfloat16_linear_layers_fall_back_to_float32 runs everywhere
HAS_BF16 = bool(native._compiler() is not None and native.load() is not None and native.load().tt_bf16_linear())
OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
ACT = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)


def make_model(n_head: int, n_embd: int, context: int = 2, seed: int = 0) -> TrajectoryTransformer:
    torch.manual_seed(seed)
    td = 3 + 2 + 2
    gpt = GPTConfig(n_layer=2, n_head=n_head, n_embd=n_embd, dropout=0.0, rope=True, attn_window=context * td)
    model = TrajectoryTransformer(3, 2, 11, gpt).eval()
    with torch.no_grad():  # far from GPT-2's tiny init, so that every part of the step matters
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(5)
    return model


@needs_compiler
@pytest.mark.parametrize(("n_head", "n_embd"), [(2, 16), (2, 64), (4, 128), (1, 24)],
                         ids=["head-dim-8", "head-dim-32", "paper-width", "head-dim-24"])
def test_fused_step_equals_the_torch_step_through_forks_and_prunings(n_head, n_embd):
    """Logits within 1e-5 of the torch step (forked rings) at every token, through forks, prunings that keep
    some rows twice and drop others, value tokens (hidden from later ones), and histories past the window.
    Head dims 8 and 32 take the vector paths (two ways of summing the values), 24 the plain C one."""
    model = make_model(n_head, n_embd)
    td, E = model.transition_dim, 2
    gen = torch.Generator().manual_seed(1)
    history = torch.randint(0, 11, (E, 3 * td + 3), generator=gen)
    ring = model.new_cache(E)
    with torch.no_grad():
        model.decode(history, ring, 0)
        step = tt_native.native_tt_step(model)
        fused = step.start(ring, E * 6)
        ref = CachedContext(model, ring)
        dim = history.shape[1] % td
        for _ in range(4):
            fused, ref = fused.fork(3), ref.fork(3, td + 1)
            for _ in range(td - 1):
                tok = torch.randint(0, 11, (fused.idx.shape[0], 1), generator=gen)
                torch.testing.assert_close(fused.append(tok, dim), ref.append(tok, dim), atol=1e-5, rtol=0)
                dim = (dim + 1) % td
            index = torch.randint(0, fused.idx.shape[0], (E * 2,), generator=gen)  # duplicates and dropped rows
            fused, ref = fused.select(index), ref.select(index)


@needs_compiler
def test_bfloat16_entries_stay_within_bfloat16_error():
    """``kv_dtype="bfloat16"``: keys and values kept in bfloat16 (half the bytes). Not exact: the logits move by
    bfloat16's rounding (2^-9 relative), and no more."""
    model = make_model(4, 128)
    td = model.transition_dim
    gen = torch.Generator().manual_seed(2)
    ring = model.new_cache(2)
    with torch.no_grad():
        model.decode(torch.randint(0, 11, (2, 2 * td), generator=gen), ring, 0)
        low = tt_native.native_tt_step(model).start(ring, 8, torch.bfloat16)
        assert low.search.k.dtype == torch.bfloat16
        exact = tt_native.native_tt_step(model).start(ring, 8)  # this thread's float32 buffers, separate
        ref = CachedContext(model, ring)
        low, exact, ref = low.fork(2), exact.fork(2), ref.fork(2, td)
        worst = scale = 0.0
        for j in range(td - 1):
            tok = torch.randint(0, 11, (4, 1), generator=gen)
            a, b, r = low.append(tok, j), exact.append(tok, j), ref.append(tok, j)
            torch.testing.assert_close(b, r, atol=1e-5, rtol=0)
            worst, scale = max(worst, float((a - r).abs().max())), max(scale, float(r.abs().max()))
    assert 1e-5 < worst < 2e-2 * scale  # really rounded, and only by bfloat16's error
    with pytest.raises(ValueError, match="float32 or bfloat16"):
        tt_native.native_tt_step(model).start(ring, 8, torch.float16)


@needs_compiler
def test_fused_plans_equal_the_torch_plans():
    """A float32 planner plans the same with the fused step as with the torch step (forked rings), episode
    starts included; its default is the fused step."""
    cfg = TTConfig(n_bins=12, n_layer=2, n_head=2, n_embd=32, dropout=0.0, context_transitions=2)
    plan = PlanConfig(beam_width=4, horizon=3, n_expand=2)
    assert plan.native
    fused = TTPlanner(OBS, ACT, cfg, device="cpu", seed=0, act=plan)
    with torch.no_grad():  # sharper predictions than a fresh init, so that plans differ from step to step
        for p in fused.model.parameters():
            if p.dim() > 1:
                p.mul_(20)
    ref = TTPlanner(OBS, ACT, cfg, device="cpu", act=dataclasses.replace(plan, native=False))
    ref.model.load_state_dict(fused.model.state_dict())
    ref._set_discretizer(fused.discretizer)
    calls = []
    real = tt_native._Search.__call__
    tt_native._Search.__call__ = lambda self, *a: calls.append(1) or real(self, *a)  # type: ignore[method-assign]
    try:
        rng = np.random.default_rng(0)
        s_f = s_r = None
        actions = set()
        for t in range(8):
            obs = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
            starts = np.array([t == 0, t in (0, 4), t == 0])
            a_f, s_f = fused.predict(obs, state=s_f, episode_start=starts)
            n_fused = len(calls)
            a_r, s_r = ref.predict(obs, state=s_r, episode_start=starts)
            assert len(calls) == n_fused > 0  # the default ran the fused step, native=False did not
            torch.testing.assert_close(s_f.last_plan.tokens, s_r.last_plan.tokens, rtol=0, atol=0)
            torch.testing.assert_close(s_f.last_plan.scores, s_r.last_plan.scores, atol=1e-5, rtol=0)
            np.testing.assert_array_equal(a_f, a_r)
            actions |= {tuple(a) for a in a_f}
        assert len(actions) > 3  # the plans were not trivial
    finally:
        tt_native._Search.__call__ = real  # type: ignore[method-assign]


def warm_ring(model: TrajectoryTransformer, rows: int):
    """A ring of ``rows`` rows holding 9 random tokens each (a little more than a transition)."""
    ring = model.new_cache(rows)
    with torch.no_grad():
        model.decode(torch.randint(0, 11, (rows, 9)), ring, 0)
    return ring


@needs_compiler
@pytest.mark.parametrize("linear_bf16", [False, True][:1 + HAS_BF16], ids=["float32", "bfloat16-linear"][:1 + HAS_BF16])
def test_the_same_logits_from_any_number_of_threads(linear_bf16):
    """With torch's intra-op threads above 1 the fused step splits its rows among threads (OpenMP, where the
    library has it); every output is computed the same way whatever the split: equal to the last bit (the
    bfloat16 linear layers too, where the CPU has them)."""
    model = make_model(2, 64)
    ring = warm_ring(model, 2)
    out = {}
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            gen = torch.Generator().manual_seed(0)
            with torch.no_grad():
                ctx = tt_native.native_tt_step(model).start(ring, 160, linear_bf16=linear_bf16).fork(80)
                assert ctx.search.threads == threads
                logits = []
                for j in range(12):
                    logits.append(ctx.append(torch.randint(0, 11, (160, 1), generator=gen), (2 + j) % 7))
                    if j == 5:
                        ctx = ctx.select(torch.randint(0, 160, (160,), generator=gen))
            out[threads] = torch.stack(logits)
    finally:
        torch.set_num_threads(1)
    assert torch.equal(out[1], out[2]) and torch.equal(out[1], out[3])


@needs_compiler
def test_changed_weights_are_seen_by_the_next_search():
    model = make_model(2, 16)
    ring = warm_ring(model, 1)
    with torch.no_grad():
        before = tt_native.native_tt_step(model).start(ring, 2).append(torch.tensor([[3]]), 2)
        model.gpt.h[1].mlp.c_fc.weight.mul_(2)  # in place, as an optimizer step does
        after = tt_native.native_tt_step(model).start(ring, 2).append(torch.tensor([[3]]), 2)
        ref = CachedContext(model, ring).fork(1, 1).append(torch.tensor([[3]]), 2)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, ref, atol=1e-5, rtol=0)


@needs_compiler
def test_an_out_of_range_token_is_refused_before_anything_changes():
    model = make_model(2, 16)
    ring = warm_ring(model, 2)
    with torch.no_grad():
        ctx = tt_native.native_tt_step(model).start(ring, 2)
        idx = ctx.idx.clone()
        with pytest.raises(ValueError, match=r"tokens must be in \[0, 11\), got \[3, 11\]"):
            ctx.append(torch.tensor([[3], [11]]), 2)
    assert torch.equal(ctx.idx, idx) and ctx.steps == ring.steps


@needs_compiler
def test_threads_plan_with_one_network_at_once():
    """Each thread searches in its own buffers: concurrent searches with one network plan as they do alone."""
    agent = TTPlanner(OBS, ACT, TTConfig(n_bins=12, n_layer=2, n_head=2, n_embd=32, dropout=0.0,
                                         context_transitions=2), device="cpu", seed=0,
                      act=PlanConfig(beam_width=8, horizon=3, n_expand=2))
    obs = [np.random.default_rng(i).uniform(-1, 1, (2, 3)).astype(np.float32) for i in range(4)]
    alone = [agent.predict(o)[0] for o in obs]
    out: dict[int, np.ndarray] = {}

    def run(i: int) -> None:
        for _ in range(3):
            out[i] = agent.predict(obs[i])[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for i in range(4):
        np.testing.assert_array_equal(out[i], alone[i])


@needs_compiler
def test_a_network_is_freed_with_its_fused_step():
    """The fused steps are kept per network, weakly: a network no longer used is freed, and its step with it."""
    import gc
    import weakref

    model = make_model(2, 16)
    with torch.no_grad():
        tt_native.native_tt_step(model).start(warm_ring(model, 1), 4).append(torch.tensor([[3]]), 2)
    assert model in tt_native._steps
    alive = weakref.ref(model)
    del model
    gc.collect()
    assert alive() is None


def test_without_a_compiler_plans_run_the_torch_step(monkeypatch):
    monkeypatch.setattr(native, "_lib", None)
    monkeypatch.setattr(native, "_failed", None)
    monkeypatch.setattr(native, "_compiler", lambda: None)
    agent = TTPlanner(OBS, ACT, TTConfig(n_bins=12, n_layer=1, n_head=2, n_embd=16, dropout=0.0,
                                         context_transitions=2), device="cpu", seed=0, act=PlanConfig.tiny())
    with pytest.warns(RuntimeWarning, match="fused DT and TT steps are unavailable"):
        actions, state = agent.predict(np.zeros((2, 3), np.float32))
    assert actions.shape == (2, 2) and tt_native.native_tt_step(agent.model) is None
    ref = TTPlanner(OBS, ACT, agent.config, device="cpu", act=dataclasses.replace(agent.act, native=False))
    ref.model.load_state_dict(agent.model.state_dict())
    ref._set_discretizer(agent.discretizer)
    np.testing.assert_array_equal(ref.predict(np.zeros((2, 3), np.float32))[0], actions)


def test_where_the_fused_step_does_not_apply():
    model = make_model(2, 16)
    assert tt_native.tt_step_supported(model)
    assert not tt_native.tt_step_supported(model.double())
    model.float().train()
    assert not tt_native.tt_step_supported(model)  # dropout: the torch step's


def bf16_linear_twin(model: TrajectoryTransformer) -> TrajectoryTransformer:
    """A torch copy of ``model`` that computes what ``linear_dtype="bfloat16"`` promises: every linear layer's
    (and the heads') inputs and weights rounded to bfloat16, products summed in float32."""
    twin = TrajectoryTransformer(model.observation_dim, model.action_dim, model.n_bins, model.gpt.config).eval()
    twin.load_state_dict(model.state_dict())
    def rnd(t):
        return t.bfloat16().float()
    with torch.no_grad():
        twin.head.copy_(rnd(twin.head))
        for m in twin.modules():
            if isinstance(m, torch.nn.Linear):  # the model calls .forward itself: wrapped, not hooked
                m.weight.copy_(rnd(m.weight))
                m.forward = (lambda f: lambda x: f(rnd(x)))(m.forward)
    f = twin.gpt.ln_f.forward
    twin.gpt.ln_f.forward = lambda x: rnd(f(x))  # the heads' input
    return twin


@needs_compiler
@pytest.mark.parametrize(("n_head", "n_embd"), [(4, 128), (2, 40)][:2 * HAS_BF16], ids=["paper-width", "partial-tiles"][:2 * HAS_BF16])
def test_bfloat16_linear_layers_compute_the_rounded_network(n_head, n_embd):
    """``linear_dtype="bfloat16"``: the fused step's logits equal a torch network whose linear layers round their
    inputs and weights to bfloat16, and differ from the float32 network's by bfloat16's rounding. One step from
    the same history at each dimension (the two sum in different orders: an input that lands on a rounding
    boundary may round the other way, which a longer run would carry on in its cache). Width 40 leaves the
    output tiles part-filled and odd input pairs."""
    model = make_model(n_head, n_embd)
    td, E = model.transition_dim, 2
    gen = torch.Generator().manual_seed(3)
    twin = bf16_linear_twin(model)
    step = tt_native.native_tt_step(model)
    assert step.bf16_linear
    dev, off, scale = [], [], 0.0
    with torch.no_grad():
        for n in range(2 * td, 3 * td):  # histories ending at each dimension
            history = torch.randint(0, 11, (E, n), generator=gen)
            ring = twin.new_cache(E)
            twin.decode(history, ring, 0)  # keys and values as the rounded network makes them
            low, ref, exact = step.start(ring, E * 8, linear_bf16=True).fork(8), CachedContext(twin, ring).fork(8, 1), \
                CachedContext(model, ring).fork(8, 1)
            tok = torch.randint(0, 11, (E * 8, 1), generator=gen)
            a, r, x = low.append(tok, n % td), ref.append(tok, n % td), exact.append(tok, n % td)
            dev.append((a - r).abs().amax(1))
            off.append((a - x).abs().amax(1))
            scale = max(scale, float(r.abs().max()))
    dev, off = torch.cat(dev), torch.cat(off)
    # the rounded network's function, row by row (about one in ten rows of the paper's width has an input that
    # rounds the other way: 4 layers x ~900 rounded inputs, float32 sums 1e-7 apart, bfloat16 steps 4e-3 apart)
    assert (dev < 1e-5 * scale).float().mean() > 0.75
    assert dev.max() < 1e-2 * scale
    assert off.median() > 1e-3 * scale  # really rounded: far from float32's


@needs_compiler
def test_bfloat16_linear_layers_fall_back_to_float32(monkeypatch):
    """Where the CPU has no AVX512-BF16 (here: pretended), ``linear_dtype="bfloat16"`` plans as float32 does,
    with a warning; the fused step refuses such a search outright."""
    cfg = TTConfig(n_bins=12, n_layer=2, n_head=2, n_embd=32, dropout=0.0, context_transitions=2)
    plan = PlanConfig(beam_width=4, horizon=2, n_expand=2)
    fp32 = TTPlanner(OBS, ACT, cfg, device="cpu", seed=0, act=plan)
    low = TTPlanner(OBS, ACT, cfg, device="cpu", seed=0, act=dataclasses.replace(plan, linear_dtype="bfloat16"))
    low.model.load_state_dict(fp32.model.state_dict())
    low._set_discretizer(fp32.discretizer)
    step = tt_native.native_tt_step(low.model)
    monkeypatch.setattr(step, "weights_bf16", None)  # what a build without AVX512-BF16 holds
    assert not step.bf16_linear
    obs = np.random.default_rng(0).uniform(-1, 1, (2, 3)).astype(np.float32)
    a, s_a = fp32.predict(obs)
    planning._warn_float32_linear.cache_clear()  # warned once per reason and process
    with pytest.warns(RuntimeWarning, match="linear layers run in float32"):
        b, s_b = low.predict(obs)
    np.testing.assert_array_equal(a, b)
    torch.testing.assert_close(s_a.last_plan.scores, s_b.last_plan.scores, rtol=0, atol=0)
    with pytest.raises(ValueError, match="AVX512-BF16"):
        step.start(warm_ring(low.model, 1), 4, linear_bf16=True)
    with pytest.raises(ValueError, match="linear_dtype"):
        PlanConfig(linear_dtype="float16")
