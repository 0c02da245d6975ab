"""The package's one causal transformer, shared by the Trajectory Transformer and the Decision Transformer.

Read top to bottom: the two KV caches, the masks, rotary position embeddings, attention, MLP,
block, config, and the transformer itself. The transformer maps already-embedded tokens
``(B, T, n_embd)`` to hidden states of the same shape; each agent adds its own embeddings and
output heads around it (nanoGPT's layout).

Blocks are pre-norm, ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``, with a final ``ln_f`` on
the output: the residual stream itself is never normalised in place (the misplaced pre-norm
of the fast TT fork).

Attention is causal, optionally restricted to a sliding window of the last ``attn_window`` tokens
(Mistral-style). With a window, a token's hidden state depends only on tokens inside its window
(recursively, through the layers), so an incremental decode with a KV cache truncated to the
window gives exactly what a full recompute with the banded mask gives, however long the episode
runs, provided the token embeddings do not depend on absolute positions. Rotary position
embeddings (``GPTConfig.rope``) give positional information that depends on relative positions
only, so they keep that property.

Two caches:

- :class:`KVCache`: per-layer tensors that grow by concatenation and are cut to ``max_len``; simple,
  any mask can be passed with it.
- :class:`RingKVCache`: one preallocated ring buffer of ``window`` slots per layer, written in
  place, with a per-row record of which slots may be attended to; the mask is built by the
  cache itself. Rows are reordered with :meth:`RingKVCache.index_select`.
- :class:`ForkKVCache`: children of every row of a ring cache that share their parent's keys
  and values instead of copying them (beam search's expansion step), until the surviving
  children are turned back into a ring cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "GPTConfig",
    "GPT",
    "KVCache",
    "RingKVCache",
    "ForkKVCache",
    "causal_mask",
    "attention_mask",
    "rope_cos_sin",
    "apply_rope",
    "init_weights",
]


class KVCache:
    """Per-layer keys and values of the tokens decoded so far.

    ``k[l]``, ``v[l]``: ``(B, n_head, T_cached, head_dim)``. ``max_len`` truncates the cache to
    the last ``max_len`` tokens after every append (a sliding window of constant cost);
    ``None`` keeps everything. ``seen`` counts every token ever appended (the next token's
    position, used by rotary embeddings).
    """

    def __init__(self, n_layer: int, max_len: int | None = None) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.max_len = max_len
        self.seen = 0

    def __len__(self) -> int:
        return 0 if self.k[0] is None else int(self.k[0].shape[2])

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


class RingKVCache:
    """A preallocated sliding-window cache written in place: the last ``window`` tokens of every row.

    ``k``, ``v``: ``(n_layer, B, n_head, window, head_dim)``; the token of step ``s`` lives in
    slot ``s % window``. All rows advance together, one token per row per step (rows that have
    nothing to add pad with a token that is not attendable). ``attendable`` ``(B, window)`` says
    which slots a query may see: false for slots never written, for tokens of a finished episode
    (:meth:`forget`), and for tokens a model hides (the TT's value tokens). ``steps`` is the
    number of steps written, which is also the next token's position for rotary embeddings.

    The mask is built here, in :meth:`begin`, from the attendability of the new tokens:
    a query sees the attendable tokens among its last ``window`` positions (itself included);
    a query that would see nothing sees itself, so that no softmax row is empty. A single new
    token is written before attention and attends over the ring alone (the slot it overwrites
    is just outside its window); several new tokens attend over ``[ring, new]`` and are written
    afterwards. Inference only: attention dropout is not applied.

    Example:
        >>> cache = RingKVCache(n_layer=1, batch=2, n_head=1, head_dim=4, window=3)
        >>> cache.begin(2, torch.tensor([[True, True], [False, True]]))[:, 0].int().tolist()
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
        self._slots: int | torch.Tensor = 0
        self._next: torch.Tensor | None = None
        self._bias: torch.Tensor | None = None
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
        out._slots, out._next, out._bias, out._n = 0, None, None, 0
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

    def begin(self, n: int, attendable: torch.Tensor | None = None) -> torch.Tensor:
        """Start a forward of ``n`` new tokens; return its mask ``(B, 1, n, K)`` (``K`` keys, see above).

        ``attendable``: ``(B, n)`` or ``(n,)`` bools for the new tokens (``None``: all attendable).
        """
        B, W, s0 = self.batch_size, self.window, self.steps
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
            self._bias = torch.zeros(B, 1, 1, W, dtype=self.k.dtype, device=device).masked_fill_(
                ~query[:, None, None, :], float("-inf")
            )  # (B, 1, 1, W) additive mask, shared by the layers
            return query[:, None, None, :]  # (B, 1, 1, W)
        in_window = self.slot_steps()[None, :] > (s0 + torch.arange(n, device=device))[:, None] - W  # (n, W)
        ring = in_window[None] & self.attendable[:, None, :]  # (B, n, W)
        fresh = causal_mask(n, n, W, device)[None] & new[:, None, :]  # (B, n, n)
        mask = torch.cat([ring, fresh], dim=2)  # (B, n, W + n)
        empty = ~mask.any(-1)  # (B, n)
        diag = torch.arange(n, device=device)
        mask[:, diag, W + diag] |= empty
        m = min(n, W)
        slots = torch.remainder(s0 + torch.arange(n - m, n, device=device), W)  # (m,)
        att = self.attendable.clone()
        att[:, slots] = new[:, n - m :]
        self._slots, self._next, self._bias, self._n = slots, att, None, n
        return mask[:, None]  # (B, 1, n, W + n)

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's ``k, v`` ``(B, n_head, n, head_dim)`` of ``layer``; return what to attend to."""
        ck, cv = self.k[layer], self.v[layer]  # (B, n_head, W, head_dim), views into the buffers
        n = k.shape[2]
        if n == 1:
            ck[:, :, self._slots] = k[:, :, 0]
            cv[:, :, self._slots] = v[:, :, 0]
            return ck, cv
        full_k = torch.cat([ck, k], dim=2)  # (B, n_head, W + n, head_dim)
        full_v = torch.cat([cv, v], dim=2)
        m = min(n, self.window)
        ck[:, :, self._slots] = k[:, :, n - m :]
        cv[:, :, self._slots] = v[:, :, n - m :]
        return full_k, full_v

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention of the new queries ``(B, n_head, n, head_dim)`` over the cache; writes ``k, v``."""
        keys, values = self.append(layer, k, v)
        if k.shape[2] > 1:
            return F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)  # (B, n_head, n, head_dim)
        # one query per row: two small matmuls beat the fused CPU kernel several times over
        q = q * q.shape[-1] ** -0.5  # scaled here, where it is head_dim numbers rather than W
        scores = (q @ keys.transpose(-1, -2)).add_(self._bias)  # (B, n_head, 1, W)
        return scores.softmax(-1) @ values  # (B, n_head, 1, head_dim)

    def end(self) -> None:
        """Finish the forward started by :meth:`begin`."""
        assert self._next is not None, "RingKVCache.end() without begin()"
        self.attendable = self._next
        self.steps += self._n
        self._next, self._bias, self._n = None, None, 0


class ForkKVCache:
    """``n_children`` children of every row of a :class:`RingKVCache`, decoding one token at a time.

    Beam search copies every beam ``n_children`` times and then extends the copies differently.
    Instead of copying the parent's cache, the children keep only what they decoded since the
    fork (a small suffix buffer, ``(n_layer, P * n_children, n_head, max_suffix, head_dim)``) and
    attend over ``[parent's ring, own suffix]``: the queries of one parent's children are stacked
    and multiply the parent's keys in one matmul, so each parent's ring is read once for all its
    children. Child ``p * n_children + c`` is child ``c`` of parent row ``p``. :meth:`select` turns
    the chosen children back into a plain :class:`RingKVCache`.

    Example:
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

    def begin(self, n: int, attendable: torch.Tensor | None = None) -> None:
        """Start a forward of one new token per child (the mask is built inside :meth:`attend`)."""
        if n != 1:
            raise ValueError("a ForkKVCache decodes one token at a time")
        j = self.steps - self.fork_step
        if j >= self.max_suffix:
            raise ValueError(f"a ForkKVCache holds {self.max_suffix} tokens per child; select() before decoding more")
        new = torch.ones(self.batch_size, dtype=torch.bool, device=self.attendable.device)
        if attendable is not None:
            new = new & attendable.to(device=new.device, dtype=torch.bool).reshape(-1)
        self.attendable[:, j] = new
        # each child sees its parent's attendable slots still in its window, and its own attendable suffix
        P, W = self.parent.batch_size, self.window
        parent_ok = self.parent.attendable & (self.parent.slot_steps() > self.steps - W)[None]  # (P, W)
        own_ok = self.attendable[:, : j + 1].clone()  # (P * C, j + 1)
        own_ok[:, j] |= ~(own_ok.any(-1) | parent_ok.repeat_interleave(self.n_children, 0).any(-1))
        dtype, device = self.k.dtype, self.k.device
        self._parent_bias = torch.zeros(P, 1, 1, W, dtype=dtype, device=device).masked_fill_(
            ~parent_ok[:, None, None, :], float("-inf")
        )  # (P, 1, 1, W)
        self._own_bias = torch.zeros(P * self.n_children, 1, j + 1, dtype=dtype, device=device).masked_fill_(
            ~own_ok[:, None, :], float("-inf")
        )  # (P * C, 1, j + 1)
        self._n = 1
        return None

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: None) -> torch.Tensor:
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


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, base: float = 10000.0, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary-embedding ``cos, sin`` ``(..., T, head_dim // 2)`` for integer ``positions`` ``(..., T)``.

    Angles are computed in float64, so positions in the millions (a long-running env) rotate as
    accurately as position 0.

    Example:
        >>> cos, sin = rope_cos_sin(torch.arange(3), head_dim=4)
        >>> cos.shape, cos[0].tolist()
        (torch.Size([3, 2]), [1.0, 1.0])
    """
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim)
    angles = positions.to(torch.float64)[..., None] * inv_freq  # (..., T, head_dim // 2)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` ``(B, n_head, T, head_dim)`` by position (GPT-NeoX's half split)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-ops, except under autocast
    x1, x2 = x.chunk(2, dim=-1)  # (B, n_head, T, head_dim // 2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (B, n_head, T, head_dim)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be divisible by n_head"
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | RingKVCache | ForkKVCache | None = None,
        layer: int = 0,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        n_out: int | None = None,
    ) -> torch.Tensor:
        """Attention outputs ``(B, n_out or T, C)``: every token's keys and values enter ``cache``,
        queries are computed for the last ``n_out`` tokens only (``mask``'s query rows already cut)."""
        B, T, C = x.shape
        H = self.n_head
        q, k, v = self.c_attn.forward(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # (B, n_head, T, head_dim)
        if n_out is not None:
            q = q[:, :, T - n_out :]  # (B, n_head, n_out, head_dim)
        if rope is not None:
            cos, sin = rope
            k = apply_rope(k, cos, sin)
            q = apply_rope(q, cos[..., T - q.shape[2] :, :], sin[..., T - q.shape[2] :, :])
        if isinstance(cache, (RingKVCache, ForkKVCache)):
            y = cache.attend(layer, q, k, v, mask)  # (B, n_head, Q, head_dim)
        else:
            if cache is not None:
                k, v = cache.append(layer, k, v)  # (B, n_head, T_keys, head_dim)
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
            )  # (B, n_head, Q, head_dim)
        y = self.c_proj.forward(y.transpose(1, 2).reshape(B, q.shape[2], C))  # (B, Q, C)
        return self.resid_dropout(y) if self.training else y


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c_proj.forward(F.gelu(self.c_fc.forward(x)))
        return self.dropout(y) if self.training else y  # no module call at inference, where it is a no-op


class Block(nn.Module):
    """Pre-norm transformer block: normalise the branch input, never the residual stream.

    Blocks call their parts' ``forward`` directly rather than through ``nn.Module.__call__``:
    decoding one token runs them at tiny sizes, where the call machinery (hooks) costs as much as
    the arithmetic. Module hooks on the parts therefore do not fire.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: KVCache | RingKVCache | ForkKVCache | None,
        layer: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        n_out: int | None = None,
    ) -> torch.Tensor:
        """``(B, n_out or T, C)``: with ``n_out``, only the last ``n_out`` tokens go on (keys and values of all)."""
        y = self.attn.forward(self.ln_1.forward(x), mask, cache, layer, rope, n_out)
        x = (x if n_out is None else x[:, x.shape[1] - n_out :]) + y
        return x + self.mlp.forward(self.ln_2.forward(x))


@dataclass
class GPTConfig:
    n_layer: int = 4
    """Transformer blocks; the TT paper uses 4 for MuJoCo."""
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.1
    """Dropout on attention weights, residual branches and embeddings (TT and DT use 0.1)."""
    bias: bool = True
    attn_window: int | None = None
    """If set, each token attends to at most this many tokens (itself included): sliding-window
    attention, which makes KV-cached decoding exact when the cache slides."""
    rope: bool = False
    """Rotary position embeddings on queries and keys (relative positions only, so a sliding
    cache stays exact); off for models that embed positions themselves (the DT's timesteps)."""
    rope_base: float = 10000.0
    """Rotary base frequency (RoFormer's default)."""


class GPT(nn.Module):
    """A stack of pre-norm causal blocks over embedded tokens.

    ``forward(x, cache=None, mask=None, positions=None, attendable=None)``: ``x`` is
    ``(B, T, n_embd)``; returns ``(B, T, n_embd)`` after the final layer norm. With a ``cache``,
    ``x`` holds the new tokens only and attends to the cached ones too; the cache is updated in
    place. ``mask`` (bool, broadcastable to ``(B, n_head, T, T_keys)``, true = attend) replaces
    the default causal (windowed) mask, for example to hide left padding; ``attendable``
    ``(B, T)`` is the short way to hide keys (see :func:`attention_mask`), and the only way with a
    :class:`RingKVCache`. ``positions`` (``(T,)`` or ``(B, T)`` integers) feed rotary embeddings;
    by default they continue from the cache. ``n_out``: return ``(B, n_out, n_embd)``, the last
    ``n_out`` tokens only; the final block then computes nothing else (every token's keys and
    values still enter the cache), which is what decoding needs.

    Example:
        >>> gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=8, dropout=0.0)).eval()
        >>> x = torch.randn(1, 5, 8)
        >>> cache = KVCache(2)
        >>> step = torch.cat([gpt(x[:, i : i + 1], cache=cache) for i in range(5)], 1)
        >>> torch.allclose(step, gpt(x), atol=1e-5)
        True
        >>> rope = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=8, dropout=0.0, rope=True, attn_window=3)).eval()
        >>> ring = rope.new_ring_cache(batch=1)
        >>> step = torch.cat([rope(x[:, i : i + 1], cache=ring) for i in range(5)], 1)
        >>> torch.allclose(step, rope(x), atol=1e-5)
        True
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        assert not config.rope or (config.n_embd // config.n_head) % 2 == 0, "rotary embeddings need an even head_dim"
        self.config = config
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.apply(init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # GPT-2's scaled init of residual projections
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    def new_cache(self) -> KVCache:
        return KVCache(self.config.n_layer, self.config.attn_window)

    def new_ring_cache(self, batch: int) -> RingKVCache:
        """A :class:`RingKVCache` of ``attn_window`` slots for ``batch`` rows, on this model's device and dtype."""
        if self.config.attn_window is None:
            raise ValueError("a RingKVCache needs GPTConfig.attn_window (the number of slots)")
        p = self.ln_f.weight
        c = self.config
        return RingKVCache(c.n_layer, batch, c.n_head, c.n_embd // c.n_head, c.attn_window, p.device, p.dtype)

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | RingKVCache | ForkKVCache | None = None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attendable: torch.Tensor | None = None,
        n_out: int | None = None,
    ) -> torch.Tensor:
        T = x.shape[1]
        window = self.config.attn_window
        ring = isinstance(cache, (RingKVCache, ForkKVCache))
        start = 0 if cache is None else (cache.steps if ring else cache.seen)  # type: ignore[union-attr]
        if ring:
            if mask is not None:
                raise ValueError("a RingKVCache builds its own mask: pass `attendable` instead of `mask`")
            mask = cache.begin(T, attendable)  # type: ignore[union-attr]
        elif attendable is not None:
            if cache is not None or mask is not None:
                raise ValueError("`attendable` goes with a full forward or a RingKVCache; pass `mask` otherwise")
            mask = attention_mask(attendable, window)
        elif mask is None:
            t_k = T + (len(cache) if cache is not None else 0)
            if cache is None or T > 1 or window is not None:
                mask = causal_mask(T, t_k, window, x.device)
            # a single new token with a full-history cache sees everything: no mask needed
        if (
            not ring and mask is not None and mask.dtype == torch.bool and not self.training
            and not torch.is_autocast_enabled(x.device.type)
        ):
            # one additive mask for all layers (attention would convert a boolean one in each); not
            # in training or under autocast, where attention may run in another dtype than x's
            mask = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill_(~mask, float("-inf"))
        rope = None
        if self.config.rope:
            if positions is None:
                positions = torch.arange(start, start + T, device=x.device)
            rope = rope_cos_sin(positions, self.config.n_embd // self.config.n_head, self.config.rope_base, x.dtype)
            if positions.dim() == 2:
                rope = (rope[0][:, None], rope[1][:, None])  # (B, 1, T, head_dim // 2)
        if self.training:
            x = self.drop(x)
        if n_out is not None and n_out >= T:
            n_out = None  # every token is kept anyway
        for i, block in enumerate(self.h):
            keep = n_out if i == len(self.h) - 1 else None  # the final block computes the kept tokens only
            if keep is not None and mask is not None:
                mask = mask[..., T - keep :, :]  # the kept queries' rows
            x = block.forward(x, mask, cache, i, rope, keep)
        if ring:
            cache.end()  # type: ignore[union-attr]
        elif cache is not None:
            cache.seen += T  # type: ignore[union-attr]
        return self.ln_f.forward(x)


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation, shared by the agents' embeddings and heads."""
    if isinstance(module, nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
