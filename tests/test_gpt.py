"""The shared GPT and its caches: cached decoding (every cache) matches the full recompute, the cache protocol, rotary embeddings are shift-invariant."""

import pytest
import torch

from tt_agents.models.gpt import GPT, GPTConfig
from tt_agents.models.kv_cache import (
    Cache,
    KVCache,
    NoCache,
    PrefixKVCache,
    RingKVCache,
    SharedPrefixKVCache,
    attention_mask,
    causal_mask,
)

torch.set_num_threads(1)


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


@pytest.mark.parametrize("window", [None, 4])
def test_kv_cache_decode_matches_full_forward(window):
    gpt = _gpt(attn_window=window)
    x = torch.randn(3, 11, 16)
    cache = gpt.new_cache()
    out = torch.cat([gpt(x[:, i : i + 1], cache=cache) for i in range(11)], dim=1)
    torch.testing.assert_close(out, gpt(x), atol=1e-5, rtol=0)
    assert cache.seen == 11
    assert len(cache) == (11 if window is None else window)


def test_kv_cache_with_rope_continues_positions():
    gpt = _gpt(rope=True)
    x = torch.randn(2, 7, 16)
    cache = gpt.new_cache()
    first = gpt(x[:, :3], cache=cache)
    rest = torch.cat([gpt(x[:, i : i + 1], cache=cache) for i in range(3, 7)], dim=1)
    torch.testing.assert_close(torch.cat([first, rest], 1), gpt(x), atol=1e-5, rtol=0)
    branch = cache.index_select(torch.tensor([1, 0]))
    assert branch.seen == cache.seen == 7
    cache.truncate(5)
    assert cache.seen == 5 and len(cache) == 5


@pytest.mark.parametrize("chunks", [[1] * 23, [5, 1, 1, 9, 1, 6], [23], [2, 21]])
def test_ring_cache_matches_banded_full_forward(chunks):
    """Any split of a long sequence into appends gives the full forward's outputs, however far the window slides."""
    gpt = _gpt(rope=True, attn_window=6)
    x = torch.randn(3, 23, 16)
    ring = gpt.new_ring_cache(batch=3)
    outs, i = [], 0
    for n in chunks:
        outs.append(gpt(x[:, i : i + n], cache=ring))
        i += n
    torch.testing.assert_close(torch.cat(outs, 1), gpt(x), atol=1e-5, rtol=0)
    assert ring.steps == 23 and len(ring) == 6


def test_ring_cache_hidden_tokens_and_padding():
    """Hidden keys (padding, a model's hidden tokens) match the full forward with the same attendability."""
    gpt = _gpt(rope=True, attn_window=5)
    T = 17
    x = torch.randn(2, T, 16)
    attendable = torch.rand(2, T) > 0.3
    attendable[1, :4] = False  # a row whose first tokens are padding: they see only themselves
    ring = gpt.new_ring_cache(batch=2)
    out = torch.cat(
        [gpt(x[:, :4], cache=ring, attendable=attendable[:, :4])]
        + [gpt(x[:, i : i + 1], cache=ring, attendable=attendable[:, i : i + 1]) for i in range(4, T)],
        dim=1,
    )
    full = gpt(x, attendable=attendable)
    torch.testing.assert_close(out, full, atol=1e-5, rtol=0)
    assert torch.isfinite(out).all()


def test_ring_cache_forget_and_index_select():
    gpt = _gpt(rope=True, attn_window=4)
    x = torch.randn(2, 9, 16)
    ring = gpt.new_ring_cache(batch=2)
    gpt(x[:, :6], cache=ring)
    # a forgotten row continues as if its history were empty (up to the position offset, which rope ignores)
    ring.forget(torch.tensor([False, True]))
    after = gpt(x[:, 6:], cache=ring)
    alone = gpt(x[1:, 6:])
    torch.testing.assert_close(after[1:], alone, atol=1e-5, rtol=0)
    # index_select copies rows: decoding the copies equals decoding the originals
    ring2 = gpt.new_ring_cache(batch=2)
    gpt(x[:, :5], cache=ring2)
    copy = ring2.index_select(torch.tensor([1, 1, 0]))
    y = torch.randn(2, 1, 16)
    a = gpt(y[[1, 1, 0]], cache=copy)
    b = gpt(y, cache=ring2)
    torch.testing.assert_close(a, b[[1, 1, 0]], atol=1e-6, rtol=0)


def test_ring_cache_refuses_a_mask():
    gpt = _gpt(rope=True, attn_window=4)
    with pytest.raises(ValueError, match="attendable"):
        gpt(torch.randn(1, 2, 16), cache=gpt.new_ring_cache(1), mask=causal_mask(2, 2))


def test_rope_is_shift_invariant_at_large_positions():
    gpt = _gpt(rope=True, attn_window=8)
    x = torch.randn(2, 12, 16)
    base = gpt(x)
    far = gpt(x, positions=torch.arange(12) + 3_000_000)
    torch.testing.assert_close(far, base, atol=1e-5, rtol=0)


def test_attention_mask_never_leaves_a_row_empty():
    m = attention_mask(torch.tensor([[False, False, True, False]]), window=2)[0, 0]
    assert m.any(-1).all()
    assert m.tolist() == [
        [True, False, False, False],
        [False, True, False, False],
        [False, False, True, False],
        [False, False, True, False],
    ]


def test_ring_cache_dtype_and_device_follow_the_model():
    gpt = _gpt(rope=True, attn_window=3).double()
    ring = gpt.new_ring_cache(batch=2)
    assert ring.k.dtype == torch.float64 and isinstance(ring, RingKVCache)
    assert isinstance(_gpt().new_cache(), KVCache)


@torch.no_grad()  # inference-only caches
def test_shared_prefix_beams_match_copied_rings():
    """Beams over their env's context held once (forks, pruning, hidden tokens, a plan longer than the window,
    so the context leaves the window and the suffix ring wraps) decode exactly like full copies of the ring."""
    gpt = _gpt(rope=True, attn_window=5)
    ring = gpt.new_ring_cache(batch=2)
    attendable = torch.tensor([[True, False, True, True, True, False, True], [False, False, True, True, True, True, True]])
    gpt(torch.randn(2, 7, 16), cache=ring, attendable=attendable)
    shared, copies = SharedPrefixKVCache(ring), ring.index_select(torch.arange(2))
    torch.manual_seed(0)
    for children, n_fork, keep, n_plain in ((3, 2, 2, 3), (2, 2, 2, 4), (2, 1, 1, 0)):
        shared = shared.fork(children, max_delta=n_fork)
        copies = copies.index_select(torch.arange(copies.batch_size).repeat_interleave(children))
        for n in (n_fork, n_plain):
            for _ in range(n):
                x = torch.randn(shared.batch_size, 1, 16)
                hide = torch.rand(shared.batch_size, 1) > 0.7
                torch.testing.assert_close(gpt(x, cache=shared, attendable=~hide),
                                           gpt(x, cache=copies, attendable=~hide), atol=1e-5, rtol=0)
            if n == n_fork:  # prune: keep `keep` rows of each env
                per_env = shared.batch_size // 2
                index = torch.cat([torch.randperm(per_env)[:keep] + e * per_env for e in range(2)])
                shared, copies = shared.select(index), copies.index_select(index)
                assert shared.steps == copies.steps
    assert shared.steps - ring.steps > ring.window  # the plan outgrew the window


def test_fork_cache_matches_copied_rings():
    """Children sharing their parent's ring decode exactly like full copies, and select() hands back the copies."""
    gpt = _gpt(rope=True, attn_window=5)
    ring = gpt.new_ring_cache(batch=2)
    attendable = torch.tensor([[True, False, True, True, True, False, True], [False, False, True, True, True, True, True]])
    gpt(torch.randn(2, 7, 16), cache=ring, attendable=attendable)
    C = 3
    kids = ring.fork(C, max_suffix=4)
    copies = ring.index_select(torch.arange(2).repeat_interleave(C))
    for _ in range(4):
        x = torch.randn(2 * C, 1, 16)
        hide = torch.rand(2 * C, 1) > 0.7
        a = gpt(x, cache=kids, attendable=~hide)
        b = gpt(x, cache=copies, attendable=~hide)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="select"):
        gpt(torch.randn(2 * C, 1, 16), cache=kids)
    index = torch.tensor([5, 0, 0, 3])
    chosen, expected = kids.select(index), copies.index_select(index)
    assert chosen.steps == expected.steps == 11
    torch.testing.assert_close(chosen.k, expected.k, atol=1e-6, rtol=0)
    assert torch.equal(chosen.attendable, expected.attendable)
    y = torch.randn(4, 1, 16)
    torch.testing.assert_close(gpt(y, cache=chosen), gpt(y, cache=expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["full", "mask", "attendable", "kv", "ring"])
def test_n_out_gives_the_last_outputs_and_caches_every_token(kind):
    """``n_out`` keeps only the last outputs, equal to the full ones; caches still get every token's keys."""
    gpt = _gpt(rope=kind in ("attendable", "ring"), attn_window=5)
    x = torch.randn(2, 9, 16)
    if kind == "full":
        torch.testing.assert_close(gpt(x, n_out=2), gpt(x)[:, -2:], atol=1e-6, rtol=0)
    elif kind == "mask":
        mask = causal_mask(9, 9, 5) & (torch.arange(9) != 3)  # a hidden key
        torch.testing.assert_close(gpt(x, mask=mask, n_out=3), gpt(x, mask=mask)[:, -3:], atol=1e-6, rtol=0)
    elif kind == "attendable":
        att = torch.tensor([[True] * 9, [False, False] + [True] * 7])
        torch.testing.assert_close(gpt(x, attendable=att, n_out=1), gpt(x, attendable=att)[:, -1:], atol=1e-6, rtol=0)
    else:
        cache = gpt.new_cache() if kind == "kv" else gpt.new_ring_cache(batch=2)
        first = gpt(x[:, :6], cache=cache, n_out=1)  # keys and values of all six tokens are cached
        assert first.shape == (2, 1, 16)
        rest = torch.cat([gpt(x[:, i : i + 1], cache=cache) for i in range(6, 9)], 1)
        torch.testing.assert_close(torch.cat([first, rest], 1), gpt(x)[:, 5:], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- the cache protocol
class ListCache:
    """The smallest cache: keeps every key and value, builds a causal mask, knows nothing of the model."""

    def __init__(self) -> None:
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.seen = 0

    def begin(self, x, window, mask, attendable) -> int:
        self.n = x.shape[1]
        self.mask = causal_mask(self.n, self.seen + self.n, window)
        return self.seen

    def attend(self, layer, q, k, v, dropout=0.0):
        if layer == len(self.k):
            self.k.append(k[:, :, :0])
            self.v.append(v[:, :, :0])
        self.k[layer] = torch.cat([self.k[layer], k], 2)
        self.v[layer] = torch.cat([self.v[layer], v], 2)
        mask = self.mask[-q.shape[2] :]
        return torch.nn.functional.scaled_dot_product_attention(q, self.k[layer], self.v[layer], attn_mask=mask)

    def end(self) -> None:
        self.seen += self.n


def test_attention_calls_only_the_cache_protocol():
    """Any object with begin / attend / end decodes like the full forward: attention has one code path."""
    gpt = _gpt(rope=True, attn_window=4)
    x = torch.randn(2, 9, 16)
    cache = ListCache()
    assert isinstance(cache, Cache)
    out = torch.cat([gpt(x[:, :3], cache=cache), gpt(x[:, 3:7], cache=cache, n_out=2)[:, -1:]]
                    + [gpt(x[:, i : i + 1], cache=cache) for i in (7, 8)], 1)
    full = gpt(x)
    torch.testing.assert_close(out, torch.cat([full[:, :3], full[:, 6:]], 1), atol=1e-5, rtol=0)
    assert cache.seen == 9


def test_every_cache_follows_the_protocol_and_refuses_what_it_cannot_use():
    gpt = _gpt(rope=True, attn_window=4)
    ring = gpt.new_ring_cache(batch=2)
    caches = [NoCache(), gpt.new_cache(), PrefixKVCache(2, 4), ring, ring.fork(2)]
    assert all(isinstance(c, Cache) for c in caches)
    x = torch.randn(2, 3, 16)
    with pytest.raises(ValueError, match="not both"):
        gpt(x, mask=causal_mask(3, 3), attendable=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="attendable"):
        gpt(x, cache=gpt.new_cache(), attendable=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="attendable"):
        gpt(torch.randn(4, 1, 16), cache=ring.fork(2), mask=torch.ones(1, 1, dtype=torch.bool))
    with pytest.raises(ValueError, match="one token at a time"):
        gpt(torch.randn(4, 2, 16), cache=ring.fork(2))


def test_prefix_cache_attends_over_its_prefix():
    """Decoding behind a cached prefix equals the full forward over [prefix, tokens] with the same mask."""
    gpt = _gpt(attn_window=None)
    prefix, x = torch.randn(2, 4, 16), torch.randn(2, 5, 16)
    full_mask = causal_mask(9, 9)
    full_mask[4:, :4] = torch.tensor([True, False, True, True])  # a hidden prefix key
    encoded = KVCache(2)
    gpt(prefix, cache=encoded)
    cache = PrefixKVCache(2, None, encoded.k, encoded.v)
    out = torch.cat([gpt(x[:, i : i + 1], cache=cache, mask=full_mask[4 + i : 5 + i, : 5 + i]) for i in range(5)], 1)
    torch.testing.assert_close(out, gpt(torch.cat([prefix, x], 1), mask=full_mask)[:, 4:], atol=1e-5, rtol=0)
    assert len(cache) == 5
    with pytest.raises(ValueError, match="mask"):
        gpt(x[:, :1], cache=cache)


class BooleanMaskNoCache(NoCache):
    """A full forward that hands its boolean mask to attention in every layer (what attention then converts)."""

    def attend(self, layer, q, k, v, dropout=0.0):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=self.mask, dropout_p=dropout)


def test_training_forward_makes_its_boolean_mask_additive_without_changing_anything():
    """The mask made additive once per forward gives bit-identical outputs and gradients under dropout."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, dropout=0.1)).train()
    x = torch.randn(2, 7, 16)
    attendable = torch.tensor([[True] * 7, [False, True, True, False, True, True, True]])
    outs = []
    for cache in (None, BooleanMaskNoCache()):
        torch.manual_seed(1)
        y = gpt(x, cache=cache, attendable=attendable)
        grads = torch.autograd.grad(y.square().sum(), list(gpt.parameters()))
        outs.append((y, *grads))
    for a, b in zip(*outs):
        assert torch.equal(a, b)
