"""Attention masks and KV caches of the shared GPT (:mod:`tt_agents.models.gpt`).

Read top to bottom: the masks, the protocol every cache follows, then the caches.

**The protocol.** Attention has one code path: whatever the forward (a training forward, a
decode step), it hands each layer's queries, keys and values to the forward's cache and gets the
attention outputs back. A forward of ``n`` new tokens is

- ``position = cache.begin(x, window, mask, attendable)``: once, before the first layer; the cache
  builds (or checks, or refuses) the mask for these tokens and returns the position of the first
  (rotary embeddings continue from the cache);
- ``y = cache.attend(layer, q, k, v, dropout)``: once per layer; the cache keeps ``k, v`` (or not)
  and returns attention of ``q`` over every key it holds; ``q`` may have fewer rows than ``n``
  (the last rows only, see ``GPT.forward``'s ``n_out``);
- ``cache.end()``: once, after the last layer.

Caches:

- :class:`NoCache`: a full forward (training, the reference recompute): keeps nothing.
- :class:`KVCache`: per-layer tensors that grow by concatenation and are cut to ``max_len``;
  simple, any mask can be passed with it. :class:`PrefixKVCache` puts a fixed prefix (the DT's
  encoded prompt) before it.
- :class:`RingKVCache`: one preallocated ring buffer of ``window`` slots per layer, written in
  place, with a per-row record of which slots may be attended to; the mask is built by the
  cache itself. Rows are reordered with :meth:`RingKVCache.index_select`.
- :class:`ForkKVCache`: children of every row of a ring cache that share their parent's keys
  and values instead of copying them (beam search's expansion step), until the surviving
  children are turned back into a ring cache.
- :class:`SlotKVCache`: fixed-shape buffers written in place at slots the caller gives, attended
  over whole with a mask the caller builds: no Python-level state or branching, so a decode step
  through it is a function of fixed-shape tensors that ``torch.compile`` can take whole (the DT's
  :class:`~tt_agents.models.dt.DTStepCache`).
- :class:`SharedPrefixKVCache`: beams of an env attend over the env's context, held once, and
  over their own planned suffix (cascade attention, the prefix-sharing of LLM serving); pruning
  copies suffixes only.

Boolean masks (true = attend) become additive ones (``0`` or ``-inf``) once per forward, in the
attention's dtype, and serve every layer (attention would otherwise convert one in each).
"""

from __future__ import annotations

import functools
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F

__all__ = [
    "KV_DTYPES",
    "causal_mask",
    "attention_mask",
    "prompt_mask",
    "episode_mask",
    "Cache",
    "NoCache",
    "KVCache",
    "PrefixKVCache",
    "RingKVCache",
    "ForkKVCache",
    "SlotKVCache",
    "SharedPrefixKVCache",
]


KV_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes a decode cache may hold its keys and values in, by name (the act settings' ``kv_dtype``)."""


# ----------------------------------------------------------------------------- masks
def causal_mask(t_q: int, t_k: int, window: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Boolean ``(t_q, t_k)`` mask, true where attention is allowed.

    The queries are the last ``t_q`` of ``t_k`` positions. Query ``i`` (absolute position
    ``t_k - t_q + i``) sees keys at positions ``<=`` its own and, with a window, ``>`` its own
    minus ``window``.

    Example:
        >>> causal_mask(2, 3).int().tolist()
        [[1, 1, 0], [1, 1, 1]]
        >>> causal_mask(3, 3, window=2).int().tolist()
        [[1, 0, 0], [1, 1, 0], [0, 1, 1]]
    """
    q = torch.arange(t_k - t_q, t_k, device=device)[:, None]
    k = torch.arange(t_k, device=device)[None, :]
    allowed = k <= q
    if window is not None:
        allowed &= k > q - window
    return allowed


def attention_mask(attendable: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """``(B, 1, T, T)`` mask of a full forward: causal (banded), attendable keys, self if nothing else.

    ``attendable`` ``(B, T)``: which tokens later queries may see (false for padding and hidden
    tokens). A query with no attendable key in its window sees itself, so no softmax row is empty.

    Example:
        >>> attention_mask(torch.tensor([[False, True, False]]))[0, 0].int().tolist()
        [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    """
    B, T = attendable.shape
    mask = causal_mask(T, T, window, attendable.device)[None] & attendable[:, None, :]  # (B, T, T)
    diag = torch.arange(T, device=attendable.device)
    mask[:, diag, diag] |= ~mask.any(-1)
    return mask[:, None]  # (B, 1, T, T)


def prompt_mask(prompt_valid: torch.Tensor) -> torch.Tensor:
    """``(B, P, P)`` mask of the DT's prompt queries over prompt keys: causal, valid keys, and always itself.

    Example:
        >>> prompt_mask(torch.tensor([[False, True, True]])).int().tolist()
        [[[1, 0, 0], [0, 1, 0], [0, 1, 1]]]
    """
    P = prompt_valid.shape[1]
    causal = causal_mask(P, P, device=prompt_valid.device)  # (P, P)
    itself = causal_mask(P, P, window=1, device=prompt_valid.device)  # (P, P), the diagonal
    return (causal[None] & prompt_valid[:, None, :]) | itself[None]  # (B, P, P)


@functools.lru_cache(maxsize=64)
def _bands(n_query: int, n_keys: int, window: int | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The banded causal mask and the diagonal of ``n_query`` queries over ``n_keys`` keys.

    Cached: a decode step asks for the same shapes every step (read-only tensors, never written).
    """
    return causal_mask(n_query, n_keys, window, device), causal_mask(n_query, n_keys, 1, device)


def episode_mask(prompt_valid: torch.Tensor | None, valid: torch.Tensor, n_query: int, window: int | None) -> torch.Tensor:
    """``(B, Q, P + E)`` mask of the DT's episode queries over ``[prompt keys, episode keys]``.

    Args:
        prompt_valid: ``(B, P)`` valid prompt tokens, or ``None`` without a prompt (``P = 0``).
        valid: ``(B, E)`` valid episode tokens; the queries are the last ``n_query`` of them.
        n_query: ``Q``.
        window: each query sees the episode keys among its last ``window`` positions (itself
            included); positions count padding too, which keeps the band aligned when rows of a
            batch start their episodes at different times.

    Example:
        >>> episode_mask(None, torch.tensor([[False, True, True, True]]), 2, window=2).int().tolist()
        [[[0, 1, 1, 0], [0, 0, 1, 1]]]
    """
    B, E = valid.shape
    band, itself = _bands(n_query, E, window, valid.device)  # (Q, E) each
    mask = (band[None] & valid[:, None, :]) | itself[None]  # (B, Q, E)
    if prompt_valid is None:
        return mask
    to_prompt = prompt_valid[:, None, :].expand(B, n_query, prompt_valid.shape[1])  # (B, Q, P)
    return torch.cat([to_prompt, mask], dim=2)  # (B, Q, P + E)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``0`` where ``mask`` is true, ``-inf`` elsewhere (what attention makes of a boolean mask)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _as_additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A boolean ``mask`` made additive in ``dtype`` (the queries', under autocast too); others as they are."""
    return _additive(mask, dtype) if mask is not None and mask.dtype == torch.bool else mask


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout: float) -> torch.Tensor:
    """Attention of ``q`` ``(B, n_head, Q, head_dim)`` over ``k, v``, with the last ``Q`` query rows of ``mask``."""
    if mask is not None and mask.shape[-2] > q.shape[2]:
        mask = mask[..., mask.shape[-2] - q.shape[2] :, :]  # the kept queries' rows
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (B, n_head, Q, head_dim)


# ----------------------------------------------------------------------------- the protocol
@runtime_checkable
class Cache(Protocol):
    """What ``GPT.forward`` and its attention call on a cache (see the module docstring)."""

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        """Start a forward of the new tokens ``x`` ``(B, n, C)``; return the position of the first.

        ``window``: the model's attention window (``None``: unbounded), for masks the cache builds.
        ``mask``: bool or additive, broadcastable to ``(B, n_head, n, keys)``, or ``None``: causal.
        ``attendable``: ``(B, n)`` or ``(n,)`` which new tokens later queries may see.
        """
        ...

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        """Attention outputs ``(B, n_head, Q, head_dim)`` of the last ``Q`` new tokens' queries;
        ``k, v`` ``(B, n_head, n, head_dim)`` are every new token's."""
        ...

    def end(self) -> None:
        """Finish the forward started by :meth:`begin`."""
        ...


# ----------------------------------------------------------------------------- the caches
class NoCache:
    """The cache of a full forward: it keeps nothing, the queries attend over the forward's own keys.

    ``mask`` replaces the default causal (windowed) mask; ``attendable`` is the short way to
    hide keys (see :func:`attention_mask`).
    """

    def __init__(self) -> None:
        self.mask: torch.Tensor | None = None

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        if attendable is not None:
            if mask is not None:
                raise ValueError("pass either `mask` or `attendable`, not both")
            mask = attention_mask(attendable, window)  # (B, 1, T, T)
        elif mask is None:
            mask = causal_mask(x.shape[1], x.shape[1], window, x.device)  # (T, T)
        self.mask = mask
        return 0

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        self.mask = _as_additive(self.mask, q.dtype)  # once per forward, for every layer
        return _sdpa(q, k, v, self.mask, dropout)

    def end(self) -> None:
        self.mask = None


class KVCache:
    """Per-layer keys and values of the tokens decoded so far.

    ``k[l]``, ``v[l]``: ``(B, n_head, T_cached, head_dim)``. ``max_len`` truncates the cache to
    the last ``max_len`` tokens after every append (a sliding window of constant cost);
    ``None`` keeps everything. ``seen`` counts every token ever appended (the next token's
    position, used by rotary embeddings). Any mask over ``[cached, new]`` keys may be passed
    with it (default: causal, banded by the model's window).
    """

    def __init__(self, n_layer: int, max_len: int | None = None) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.max_len = max_len
        self.seen = 0
        self.mask: torch.Tensor | None = None
        self._n = 0

    def __len__(self) -> int:
        return 0 if self.k[0] is None else int(self.k[0].shape[2])

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        if attendable is not None:
            raise ValueError("`attendable` goes with a full forward or a RingKVCache; pass `mask` with a KVCache")
        n = x.shape[1]
        if mask is None and (n > 1 or window is not None):
            mask = causal_mask(n, n + len(self), window, x.device)  # (n, T_cached + n)
        # (a single new token with a full-history cache sees everything: no mask needed)
        self.mask, self._n = mask, n
        return self.seen

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add this step's ``k, v`` to layer ``layer``; return the full keys and values to attend to."""
        pk, pv = self.k[layer], self.v[layer]
        if pk is not None:
            k = torch.cat([pk, k], dim=2)  # (B, n_head, T_cached + T_new, head_dim)
            v = torch.cat([pv, v], dim=2)
        full_k, full_v = k, v
        if self.max_len is not None and k.shape[2] > self.max_len:
            k, v = k[:, :, -self.max_len :], v[:, :, -self.max_len :]
        self.k[layer], self.v[layer] = k, v
        return full_k, full_v

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        keys, values = self.append(layer, k, v)  # (B, n_head, T_keys, head_dim)
        self.mask = _as_additive(self.mask, q.dtype)  # once per forward, for every layer
        return _sdpa(q, keys, values, self.mask, dropout)

    def end(self) -> None:
        self.seen += self._n
        self.mask, self._n = None, 0

    def index_select(self, index: torch.Tensor) -> KVCache:
        """A cache whose batch row ``i`` is row ``index[i]`` of this one (beam reordering, expansion)."""
        out = KVCache(len(self.k), self.max_len)
        out.k = [None if k is None else k.index_select(0, index) for k in self.k]
        out.v = [None if v is None else v.index_select(0, index) for v in self.v]
        out.seen = self.seen
        return out

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` cached tokens (drop what was decoded after them)."""
        self.seen -= max(0, len(self) - length)
        self.k = [None if k is None else k[:, :, :length] for k in self.k]
        self.v = [None if v is None else v[:, :, :length] for v in self.v]


class PrefixKVCache(KVCache):
    """A sliding :class:`KVCache` of episode tokens behind a fixed prefix (the DT's encoded prompt).

    Appends slide only the episode part (``max_len`` tokens kept); attention sees
    ``[prefix, cached, new]``, so a mask covers the prefix's keys too. ``len()`` counts the
    episode part only.
    """

    def __init__(
        self,
        n_layer: int,
        max_len: int | None,
        prefix_k: list[torch.Tensor] | None = None,
        prefix_v: list[torch.Tensor] | None = None,
    ) -> None:
        super().__init__(n_layer, max_len)
        self.prefix_k = prefix_k
        self.prefix_v = prefix_v

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        if mask is None and self.prefix_k is not None:
            raise ValueError("a PrefixKVCache with a prefix needs a `mask` over [prefix, cached, new] keys")
        return super().begin(x, window, mask, attendable)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = super().append(layer, k, v)  # (B, n_head, T_cached + T_new, head_dim)
        if self.prefix_k is None or self.prefix_v is None:
            return k, v
        k = torch.cat([self.prefix_k[layer], k], dim=2)  # (B, n_head, P + T_cached + T_new, head_dim)
        v = torch.cat([self.prefix_v[layer], v], dim=2)
        return k, v


class RingKVCache:
    """A preallocated sliding-window cache written in place: the last ``window`` tokens of every row.

    ``k``, ``v``: ``(n_layer, B, n_head, window, head_dim)``; the token of step ``s`` lives in
    slot ``s % window``. All rows advance together, one token per row per step (rows that have
    nothing to add pad with a token that is not attendable). ``attendable`` ``(B, window)`` says
    which slots a query may see: false for slots never written, for tokens of a finished episode
    (:meth:`forget`), and for tokens a model hides (the TT's value tokens). ``steps`` is the
    number of steps written, which is also the next token's position for rotary embeddings.

    The mask is built here, in :meth:`begin`, from the attendability of the new tokens (a mask
    passed in is refused): a query sees the attendable tokens among its last ``window`` positions
    (itself included); a query that would see nothing sees itself, so that no softmax row is
    empty. A single new token is written before attention and attends over the ring alone (the
    slot it overwrites is just outside its window); several new tokens attend over
    ``[ring, new]`` and are written afterwards. Inference only: attention dropout is not applied.

    Example:
        >>> cache = RingKVCache(n_layer=1, batch=2, n_head=1, head_dim=4, window=3)
        >>> _ = cache.begin(torch.zeros(2, 2, 4), 3, None, torch.tensor([[True, True], [False, True]]))
        >>> cache.mask[:, 0].int().tolist()
        [[[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]], [[0, 0, 0, 1, 0], [0, 0, 0, 0, 1]]]
    """

    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_head: int,
        head_dim: int,
        window: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.window = window
        self.k = torch.zeros(n_layer, batch, n_head, window, head_dim, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.attendable = torch.zeros(batch, window, dtype=torch.bool, device=device)
        self.steps = 0
        self._reset()

    def _reset(self) -> None:
        """No forward under way."""
        self.mask: torch.Tensor | None = None  # (B, 1, 1, W) additive for one new token, else (B, 1, n, W + n)
        self._slots: int | torch.Tensor = 0  # where the new tokens go
        self._next: torch.Tensor | None = None  # ``attendable`` after the forward
        self._n = 0

    def __len__(self) -> int:
        return min(self.steps, self.window)

    @property
    def batch_size(self) -> int:
        return int(self.k.shape[1])

    def forget(self, rows: torch.Tensor) -> None:
        """Hide every cached token of the rows where ``rows`` (``(B,)`` bool) is true (a new episode)."""
        self.attendable[rows] = False

    def index_select(self, index: torch.Tensor, out: RingKVCache | None = None) -> RingKVCache:
        """A cache whose row ``i`` is row ``index[i]`` of this one (a copy).

        ``out``: a cache of the right shape whose buffers to overwrite (no fresh allocation: beam
        search ping-pongs between two); never this cache itself.
        """
        n_layer, _, H, W, D = self.k.shape
        if out is None or out.k.shape != (n_layer, len(index), H, W, D) or out.k.dtype != self.k.dtype:
            out = RingKVCache.__new__(RingKVCache)
            out.k = self.k.index_select(1, index)  # (n_layer, len(index), n_head, window, head_dim)
            out.v = self.v.index_select(1, index)
        else:
            assert out.k.data_ptr() != self.k.data_ptr(), "index_select into itself"
            torch.index_select(self.k, 1, index, out=out.k)
            torch.index_select(self.v, 1, index, out=out.v)
        out.window, out.steps = self.window, self.steps
        out.attendable = self.attendable.index_select(0, index)  # (len(index), window)
        out._reset()
        return out

    def fork(self, n_children: int, max_suffix: int | None = None) -> ForkKVCache:
        """Give every row ``n_children`` children that share its cache (see :class:`ForkKVCache`).

        ``max_suffix``: how many tokens the children may decode before :meth:`ForkKVCache.select`
        (default: the window).
        """
        return ForkKVCache(self, n_children, max_suffix)

    def slot_steps(self) -> torch.Tensor:
        """``(window,)`` the step whose token each slot holds (negative: never written)."""
        W, s0 = self.window, self.steps
        return s0 - W + torch.remainder(torch.arange(W, device=self.attendable.device) - s0, W)

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        if mask is not None:
            raise ValueError("a RingKVCache builds its own mask: pass `attendable` instead of `mask`")
        B, n, W, s0 = self.batch_size, x.shape[1], self.window, self.steps
        device = self.attendable.device
        if attendable is None:
            new = torch.ones(B, n, dtype=torch.bool, device=device)
        else:
            new = attendable.to(device=device, dtype=torch.bool).expand(B, n)  # (B, n)
        if n == 1:
            slot = s0 % W
            att = self.attendable.clone()
            att[:, slot] = new[:, 0]
            query = att.clone()  # (B, W)
            query[:, slot] |= ~att.any(-1)  # nothing to see: see itself
            self._slots, self._next, self._n = slot, att, 1
            self.mask = _additive(query[:, None, None, :], self.k.dtype)  # (B, 1, 1, W)
            return s0
        in_window = self.slot_steps()[None, :] > (s0 + torch.arange(n, device=device))[:, None] - W  # (n, W)
        ring = in_window[None] & self.attendable[:, None, :]  # (B, n, W)
        fresh = causal_mask(n, n, W, device)[None] & new[:, None, :]  # (B, n, n)
        query = torch.cat([ring, fresh], dim=2)  # (B, n, W + n)
        empty = ~query.any(-1)  # (B, n)
        diag = torch.arange(n, device=device)
        query[:, diag, W + diag] |= empty
        m = min(n, W)
        slots = torch.remainder(s0 + torch.arange(n - m, n, device=device), W)  # (m,)
        att = self.attendable.clone()
        att[:, slots] = new[:, n - m :]
        self._slots, self._next, self._n = slots, att, n
        self.mask = query[:, None]  # (B, 1, n, W + n), made additive by the first layer
        return s0

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        """Attention of the new queries ``(B, n_head, Q, head_dim)`` over the cache; writes ``k, v``."""
        ck, cv = self.k[layer], self.v[layer]  # (B, n_head, W, head_dim), views into the buffers
        n = k.shape[2]
        if n == 1:
            ck[:, :, self._slots] = k[:, :, 0]
            cv[:, :, self._slots] = v[:, :, 0]
            # one query per row: two small matmuls beat the fused CPU kernel several times over
            q = q * q.shape[-1] ** -0.5  # scaled here, where it is head_dim numbers rather than W
            scores = (q @ ck.transpose(-1, -2)).add_(self.mask)  # (B, n_head, 1, W)
            return scores.softmax(-1) @ cv  # (B, n_head, 1, head_dim)
        keys = torch.cat([ck, k], dim=2)  # (B, n_head, W + n, head_dim)
        values = torch.cat([cv, v], dim=2)
        m = min(n, self.window)
        ck[:, :, self._slots] = k[:, :, n - m :]
        cv[:, :, self._slots] = v[:, :, n - m :]
        self.mask = _as_additive(self.mask, q.dtype)
        return _sdpa(q, keys, values, self.mask, 0.0)  # (B, n_head, Q, head_dim)

    def end(self) -> None:
        assert self._next is not None, "RingKVCache.end() without begin()"
        self.attendable = self._next
        self.steps += self._n
        self._reset()


class ForkKVCache:
    """``n_children`` children of every row of a :class:`RingKVCache`, decoding one token at a time.

    Beam search copies every beam ``n_children`` times and then extends the copies differently.
    Instead of copying the parent's cache, the children keep only what they decoded since the
    fork (a small suffix buffer, ``(n_layer, P * n_children, n_head, max_suffix, head_dim)``) and
    attend over ``[parent's ring, own suffix]``: the queries of one parent's children are stacked
    and multiply the parent's keys in one matmul, so each parent's ring is read once for all its
    children. Child ``p * n_children + c`` is child ``c`` of parent row ``p``. :meth:`select` turns
    the chosen children back into a plain :class:`RingKVCache`. Inference only, like the ring.

    Example:
        >>> from tt_agents.models.gpt import GPT, GPTConfig
        >>> gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, dropout=0.0, rope=True, attn_window=4)).eval()
        >>> ring = gpt.new_ring_cache(batch=1)
        >>> _ = gpt(torch.randn(1, 6, 8), cache=ring)
        >>> kids = ring.fork(3)
        >>> y = gpt(torch.randn(3, 1, 8), cache=kids)
        >>> kids.select(torch.tensor([2, 0])).steps
        7
    """

    def __init__(self, parent: RingKVCache, n_children: int, max_suffix: int | None = None) -> None:
        self.parent = parent
        self.n_children = n_children
        self.window = parent.window
        self.fork_step = parent.steps
        self.steps = parent.steps
        n_layer, P, H, W, D = parent.k.shape
        self.max_suffix = max_suffix or W
        n = P * n_children
        self.k = torch.empty(n_layer, n, H, self.max_suffix, D, dtype=parent.k.dtype, device=parent.k.device)
        self.v = torch.empty_like(self.k)
        self.attendable = torch.zeros(n, self.max_suffix, dtype=torch.bool, device=parent.k.device)
        self._n = 0

    @property
    def batch_size(self) -> int:
        return int(self.k.shape[1])

    def __len__(self) -> int:
        return min(self.steps, self.window)

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        """Start a forward of one new token per child: the additive masks over the parent and the suffix."""
        if mask is not None:
            raise ValueError("a ForkKVCache builds its own mask: pass `attendable` instead of `mask`")
        if x.shape[1] != 1:
            raise ValueError("a ForkKVCache decodes one token at a time")
        j = self.steps - self.fork_step
        if j >= self.max_suffix:
            raise ValueError(f"a ForkKVCache holds {self.max_suffix} tokens per child; select() before decoding more")
        new = torch.ones(self.batch_size, dtype=torch.bool, device=self.attendable.device)
        if attendable is not None:
            new = new & attendable.to(device=new.device, dtype=torch.bool).reshape(-1)
        self.attendable[:, j] = new
        # each child sees its parent's attendable slots still in its window, and its own attendable suffix
        W = self.window
        parent_ok = self.parent.attendable & (self.parent.slot_steps() > self.steps - W)[None]  # (P, W)
        own_ok = self.attendable[:, : j + 1].clone()  # (P * C, j + 1)
        own_ok[:, j] |= ~(own_ok.any(-1) | parent_ok.repeat_interleave(self.n_children, 0).any(-1))
        self._parent_bias = _additive(parent_ok[:, None, None, :], self.k.dtype)  # (P, 1, 1, W)
        self._own_bias = _additive(own_ok[:, None, :], self.k.dtype)  # (P * C, 1, j + 1)
        self._n = 1
        return self.steps

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        """Attention of one query per child ``(P * C, n_head, 1, head_dim)`` over its parent and its suffix."""
        j = self.steps - self.fork_step
        N, H, _, D = q.shape
        P, C = self.parent.batch_size, self.n_children
        self.k[layer, :, :, j] = k[:, :, 0]
        self.v[layer, :, :, j] = v[:, :, 0]
        q = q * D**-0.5  # scaled once, before both products
        q_par = q.view(P, C, H, D).transpose(1, 2)  # (P, H, C, D): the children's queries, by parent
        s_par = (q_par @ self.parent.k[layer].transpose(-1, -2)).add_(self._parent_bias)  # (P, H, C, W)
        own_k, own_v = self.k[layer, :, :, : j + 1], self.v[layer, :, :, : j + 1]  # (P * C, H, j + 1, D)
        s_own = q @ own_k.transpose(-1, -2)  # (P * C, H, 1, j + 1)
        s_own = s_own.add_(self._own_bias[:, None]).view(P, C, H, j + 1).transpose(1, 2)  # (P, H, C, j + 1)
        p = torch.cat([s_par, s_own], dim=-1).softmax(-1)  # (P, H, C, W + j + 1)
        W = self.window
        y = p[..., :W] @ self.parent.v[layer]  # (P, H, C, D)
        y = y.transpose(1, 2).reshape(N, H, 1, D)  # (P * C, H, 1, D)
        p_own = p[..., W:].transpose(1, 2).reshape(N, H, 1, j + 1)  # (P * C, H, 1, j + 1)
        return y + p_own @ own_v  # (P * C, H, 1, D)

    def end(self) -> None:
        self.steps += self._n
        self._n = 0

    def select(self, index: torch.Tensor, out: RingKVCache | None = None) -> RingKVCache:
        """A :class:`RingKVCache` whose row ``i`` is child ``index[i]``: its parent's ring plus its suffix.

        ``out``: as in :meth:`RingKVCache.index_select`.
        """
        out = self.parent.index_select(torch.div(index, self.n_children, rounding_mode="floor"), out)
        n = self.steps - self.fork_step
        m = min(n, self.window)
        if m:
            slots = torch.remainder(self.fork_step + torch.arange(n - m, n, device=index.device), self.window)
            out.k[:, :, :, slots] = self.k[:, index, :, n - m : n]  # (n_layer, len(index), H, m, D)
            out.v[:, :, :, slots] = self.v[:, index, :, n - m : n]
            out.attendable[:, slots] = self.attendable[index, n - m : n]
        out.steps = self.steps
        return out

    def index_select(self, index: torch.Tensor, out: RingKVCache | None = None) -> RingKVCache:
        return self.select(index, out)


class SlotKVCache:
    """Keys and values in fixed-shape buffers, written at given slots, attended over whole.

    ``k``, ``v``: ``(n_layer, B, n_head, S, head_dim)`` buffers (updated in place); ``slots``
    ``(n,)``: where the forward's ``n`` new tokens go; ``mask`` ``(B, 1, Q, S)`` additive (``0`` or
    ``-inf``): what each of the ``Q`` kept queries may see, the new tokens' slots included. The
    new keys are written before attention, so a slot they overwrite must hold a token no query
    of this forward may see (the caller sizes the buffer for it: one token per step for a ring
    of ``window`` slots, ``window + n`` slots for ``n`` tokens per step). Nothing here depends on
    Python values that change from step to step, which is what lets ``torch.compile`` take a
    whole decode step through it. Inference only.

    Example:
        >>> k = torch.zeros(1, 1, 1, 3, 2); v = torch.zeros_like(k)
        >>> mask = torch.tensor([0.0, float("-inf"), 0.0]).view(1, 1, 1, 3)
        >>> cache = SlotKVCache(k, v, torch.tensor([2]), mask)
        >>> y = cache.attend(0, torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2), torch.ones(1, 1, 1, 2))
        >>> k[0, 0, 0, 2].tolist(), y.shape
        ([1.0, 1.0], torch.Size([1, 1, 1, 2]))
    """

    def __init__(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor, mask: torch.Tensor) -> None:
        self.k, self.v, self.slots, self.mask = k, v, slots, mask

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        if mask is not None or attendable is not None:
            raise ValueError("a SlotKVCache takes its mask when it is made")
        return 0  # positions are the caller's (rotary embeddings get them explicitly)

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        ck, cv = self.k[layer], self.v[layer]  # (B, n_head, S, head_dim), views into the buffers
        ck.index_copy_(2, self.slots, k.to(ck.dtype))
        cv.index_copy_(2, self.slots, v.to(cv.dtype))
        q = q * q.shape[-1] ** -0.5
        mask = self.mask[..., self.mask.shape[-2] - q.shape[2] :, :]  # the kept queries' rows
        scores = q @ ck.to(q.dtype).transpose(-1, -2) + mask  # (B, n_head, Q, S)
        return scores.softmax(-1) @ cv.to(q.dtype)  # (B, n_head, Q, head_dim)

    def end(self) -> None:
        pass


class SharedPrefixKVCache:
    """Beam-search rows of ``E`` envs: each env's context held once, each beam's planned suffix, each child's delta.

    Beam search plans ``R`` beams per env from the env's context (the ``prefix``, a
    :class:`RingKVCache` of ``E`` rows, read only). A beam's keys are the prefix's followed by the
    tokens the beam itself planned (its *suffix*, ``(n_layer, E * R, n_head, window, head_dim)``,
    a ring: suffix token ``i`` in slot ``i % window``). Attention of a query is the softmax over
    ``[its env's prefix, its beam's suffix]`` (cascade attention, the prefix-sharing of LLM
    serving): the queries of an env's beams are stacked and multiply the env's prefix keys in one
    matmul, so every decoded token reads ``E * window + E * R * len(suffix)`` keys instead of
    ``E * R * window``, and the prefix is never copied.

    :meth:`fork` gives every beam ``n_children`` children that share its suffix and keep only what
    they decode afterwards (a *delta* of at most ``max_delta`` tokens); their queries are stacked
    per beam over the beam's suffix, as over the prefix. :meth:`select` keeps some rows (beams or
    children) as the beams of a new cache: it copies their suffix (the filled part only: pruning
    copies suffixes, never a context) and appends their delta.

    Row order is env by env (``e * R * C + r * C + c`` for child ``c`` of beam ``r`` of env ``e``).
    One new token per row per forward; the mask rule is :class:`RingKVCache`'s (attendable tokens
    in the window; a query that would see nothing sees itself). Inference only.

    Example:
        >>> from tt_agents.models.gpt import GPT, GPTConfig
        >>> gpt = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=8, dropout=0.0, rope=True, attn_window=4)).eval()
        >>> ring = gpt.new_ring_cache(batch=1)
        >>> _ = gpt(torch.randn(1, 6, 8), cache=ring)
        >>> beams = SharedPrefixKVCache(ring).fork(3, max_delta=2)
        >>> y = gpt(torch.randn(3, 1, 8), cache=beams)
        >>> kept = beams.select(torch.tensor([2, 0]))
        >>> kept.batch_size, kept.steps, kept.n_suffix
        (2, 7, 1)
    """

    def __init__(
        self,
        prefix: RingKVCache,
        rows_per_env: int = 1,
        k: torch.Tensor | None = None,
        v: torch.Tensor | None = None,
        attendable: torch.Tensor | None = None,
        n_suffix: int = 0,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.prefix = prefix
        self.window = prefix.window
        self.n_env = prefix.batch_size
        self.rows_per_env = rows_per_env  # beams per env
        self.fork_step = prefix.steps  # the position of suffix token 0
        self.n_suffix = n_suffix
        self.steps = prefix.steps + n_suffix
        n_layer, _, H, W, D = prefix.k.shape
        self.dtype = dtype or prefix.k.dtype
        N = self.n_env * rows_per_env
        if k is None or v is None or attendable is None:
            k = torch.empty(n_layer, N, H, W, D, dtype=self.dtype, device=prefix.k.device)
            v = torch.empty_like(k)
            attendable = torch.zeros(N, W, dtype=torch.bool, device=prefix.k.device)
        self.k, self.v, self.attendable = k, v, attendable  # the beams' suffixes
        self.n_children = 0  # 0: not forked, new tokens go to the suffix; else children per beam
        self.dk: torch.Tensor | None = None  # (n_layer, N * C, n_head, max_delta, head_dim): the children's deltas
        self.dv: torch.Tensor | None = None
        self.d_attendable: torch.Tensor | None = None
        self.n_delta = 0
        self._n = 0

    @property
    def batch_size(self) -> int:
        beams = self.n_env * self.rows_per_env
        return beams * self.n_children if self.n_children else beams

    def __len__(self) -> int:
        return min(self.steps, self.window)

    def fork(self, n_children: int, max_delta: int) -> SharedPrefixKVCache:
        """A view whose rows are ``n_children`` children of each beam, sharing the prefix and the beam's suffix."""
        if self.n_children:
            raise ValueError("fork() of a forked SharedPrefixKVCache: select() first")
        out = SharedPrefixKVCache(
            self.prefix, self.rows_per_env, self.k, self.v, self.attendable, self.n_suffix, self.dtype
        )
        n_layer, N, H, W, D = self.k.shape
        out.n_children = n_children
        out.dk = torch.empty(n_layer, N * n_children, H, max_delta, D, dtype=self.dtype, device=self.k.device)
        out.dv = torch.empty_like(out.dk)
        out.d_attendable = torch.zeros(N * n_children, max_delta, dtype=torch.bool, device=self.k.device)
        return out

    def select(self, index: torch.Tensor, out: SharedPrefixKVCache | None = None) -> SharedPrefixKVCache:
        """The beams of a new cache: row ``i`` is row ``index[i]`` of this one (its suffix and delta copied).

        ``index`` must keep the same number of rows for every env, env by env. ``out``: a cache
        whose suffix buffers to overwrite (beam search ping-pongs between two); never this one.
        """
        C = max(self.n_children, 1)
        beam = torch.div(index, C, rounding_mode="floor") if self.n_children else index  # (M,)
        M = len(index)
        n_layer, _, H, W, D = self.k.shape
        if out is not None and out.k.shape == (n_layer, M, H, W, D) and out.k.dtype == self.dtype:
            assert out.k.data_ptr() != self.k.data_ptr(), "select into itself"
            k, v, att = out.k, out.v, out.attendable
        else:
            k = torch.empty(n_layer, M, H, W, D, dtype=self.dtype, device=self.k.device)
            v, att = torch.empty_like(k), torch.zeros(M, W, dtype=torch.bool, device=self.k.device)
        L = min(self.n_suffix, W)  # the filled slots
        if L:
            torch.index_select(self.k[:, :, :, :L], 1, beam, out=k[:, :, :, :L])
            torch.index_select(self.v[:, :, :, :L], 1, beam, out=v[:, :, :, :L])
        att[:, :L] = self.attendable[beam, :L]
        att[:, L:] = False
        n = self.n_suffix
        if self.n_children and self.n_delta:
            d = self.n_delta
            assert self.dk is not None and self.dv is not None and self.d_attendable is not None
            slots = torch.remainder(n + torch.arange(d, device=index.device), W)  # (d,)
            k[:, :, :, slots] = self.dk[:, index, :, :d]  # (n_layer, M, H, d, D)
            v[:, :, :, slots] = self.dv[:, index, :, :d]
            att[:, slots] = self.d_attendable[index, :d]
            n += d
        return SharedPrefixKVCache(self.prefix, M // self.n_env, k, v, att, n, self.dtype)

    def index_select(self, index: torch.Tensor, out: SharedPrefixKVCache | None = None) -> SharedPrefixKVCache:
        return self.select(index, out)

    def begin(
        self, x: torch.Tensor, window: int | None, mask: torch.Tensor | None, attendable: torch.Tensor | None
    ) -> int:
        """Start a forward of one new token per row: the additive masks over prefix, suffix and delta."""
        if mask is not None:
            raise ValueError("a SharedPrefixKVCache builds its own mask: pass `attendable` instead of `mask`")
        if x.shape[1] != 1:
            raise ValueError("a SharedPrefixKVCache decodes one token at a time")
        device, W = self.attendable.device, self.window
        new = torch.ones(self.batch_size, dtype=torch.bool, device=device)
        if attendable is not None:
            new = new & attendable.to(device=device, dtype=torch.bool).reshape(-1)
        j = self.n_suffix + self.n_delta  # the new token's index in the plan (position fork_step + j)
        lowest = j - W  # plan indices <= lowest are outside the new token's window
        # prefix: its env's attendable slots still in the window (none once the plan is a window long)
        self._use_prefix = self.fork_step - 1 > self.fork_step + lowest
        if self._use_prefix:
            pre_ok = self.prefix.attendable & (self.prefix.slot_steps() > self.fork_step + lowest)[None]  # (E, W)
        else:
            pre_ok = None
        # the beam's suffix: its first L slots, slot s holding plan token s + W * ((last - s) // W)
        if self.n_children:  # the new token goes to the child's delta
            last = self.n_suffix - 1  # the beam's last suffix token
            d = self.n_delta
            assert self.d_attendable is not None
            if d >= self.d_attendable.shape[1]:
                raise ValueError(f"a forked SharedPrefixKVCache holds {d} tokens per child; select() before more")
            self.d_attendable[:, d] = new
            own_ok = self.d_attendable[:, : d + 1].clone()  # (N * C, d + 1): the delta is inside the window
            self._slot = d
        else:  # the new token goes to the suffix ring, written before attention
            last = self.n_suffix
            self._slot = self.n_suffix % W
            self.attendable[:, self._slot] = new
            own_ok = None
        L = min(last + 1, W)
        s = torch.arange(L, device=device)
        token = s + W * torch.div(last - s, W, rounding_mode="floor")  # (L,)
        suf_ok = self.attendable[:, :L] & (token > lowest)[None]  # (N, L)
        # nothing to see: see itself (RingKVCache's rule)
        C = max(self.n_children, 1)
        seen = suf_ok.any(-1).repeat_interleave(C) if suf_ok.shape[1] else torch.zeros_like(new)
        if pre_ok is not None:
            seen = seen | pre_ok.any(-1).repeat_interleave(self.batch_size // self.n_env)
        if own_ok is not None:
            own_ok[:, -1] |= ~(seen | own_ok.any(-1))
        else:
            suf_ok = suf_ok.clone()
            suf_ok[:, self._slot] |= ~seen
        dt = torch.promote_types(self.dtype, torch.float32)  # the queries' dtype (a float64 model's, or float32)
        self._pre_bias = None if pre_ok is None else _additive(pre_ok[:, None, None, :], dt)  # (E, 1, 1, W)
        self._suf_bias = _additive(suf_ok[:, None, None, :], dt)  # (N, 1, 1, L)
        self._own_bias = None if own_ok is None else _additive(own_ok[:, None, None, :], dt)  # (N * C, 1, 1, d + 1)
        self._L = L
        self._n = 1
        return self.steps

    def attend(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0
    ) -> torch.Tensor:
        """Attention of one query per row ``(rows, n_head, 1, head_dim)`` over prefix, suffix and delta."""
        Nq, H, _, D = q.shape
        E, C = self.n_env, max(self.n_children, 1)
        N = Nq // C  # beams
        L = self._L
        if self.n_children:
            assert self.dk is not None and self.dv is not None
            self.dk[layer, :, :, self._slot] = k[:, :, 0]
            self.dv[layer, :, :, self._slot] = v[:, :, 0]
        else:
            self.k[layer, :, :, self._slot] = k[:, :, 0]
            self.v[layer, :, :, self._slot] = v[:, :, 0]
        q = q * D**-0.5
        scores = []  # each part's, in its own matmul layout, as (E, H, beams per env, C, keys)
        if self._pre_bias is not None:
            q_env = q.reshape(E, Nq // E, H, D).transpose(1, 2)  # (E, H, rows per env, D)
            s = (q_env @ self.prefix.k[layer].to(q.dtype).transpose(-1, -2)).add_(self._pre_bias)  # (E, H, Nq/E, W)
            scores.append(s.view(E, H, N // E, C, -1))
        if L:
            q_beam = q.reshape(N, C, H, D).transpose(1, 2)  # (N, H, C, D): a beam's children's queries
            s = (q_beam @ self.k[layer, :, :, :L].to(q.dtype).transpose(-1, -2)).add_(self._suf_bias)  # (N, H, C, L)
            scores.append(s.view(E, N // E, H, C, L).transpose(1, 2))  # (E, H, beams per env, C, L)
        if self.n_children:
            d = self._slot + 1
            assert self.dk is not None and self._own_bias is not None
            s = (q @ self.dk[layer, :, :, :d].to(q.dtype).transpose(-1, -2)).add_(self._own_bias)  # (Nq, H, 1, d)
            scores.append(s.view(E, N // E, C, H, d).permute(0, 3, 1, 2, 4))  # (E, H, beams per env, C, d)
        p = torch.cat(scores, dim=-1).softmax(-1)  # (E, H, beams per env, C, keys)
        at = 0
        y = None
        if self._pre_bias is not None:
            W = self.window
            pp = p[..., :W].reshape(E, H, Nq // E, W)  # (E, H, rows per env, W)
            y = (pp @ self.prefix.v[layer].to(q.dtype)).view(E, H, N // E, C, D)
            at = W
        if L:
            ps = p[..., at : at + L].transpose(1, 2).reshape(N, H, C, L).contiguous()  # (N, H, C, L)
            ys = (ps @ self.v[layer, :, :, :L].to(q.dtype)).view(E, N // E, H, C, D).transpose(1, 2)
            y = ys if y is None else y + ys
            at += L
        if self.n_children:
            d = self._slot + 1
            assert self.dv is not None
            pd = p[..., at : at + d].permute(0, 2, 3, 1, 4).reshape(Nq, H, 1, d).contiguous()  # (Nq, H, 1, d)
            yd = (pd @ self.dv[layer, :, :, :d].to(q.dtype)).view(E, N // E, C, H, D).permute(0, 3, 1, 2, 4)
            y = yd if y is None else y + yd
        assert y is not None
        return y.permute(0, 2, 3, 1, 4).reshape(Nq, H, 1, D)  # (rows, H, 1, D)

    def end(self) -> None:
        if self.n_children:
            self.n_delta += self._n
        else:
            self.n_suffix += self._n
        self.steps += self._n
        self._n = 0
