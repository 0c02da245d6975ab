"""The package's one causal transformer, shared by the Trajectory Transformer and the Decision Transformer.

Read top to bottom: rotary position embeddings, attention, MLP, block, config, and the
transformer itself. The transformer maps already-embedded tokens ``(B, T, n_embd)`` to hidden
states of the same shape; each agent adds its own embeddings and output heads around it
(nanoGPT's layout). The KV caches and the masks are in :mod:`tt_agents.models.kv_cache`.

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

Every forward goes through a cache (:class:`~tt_agents.models.kv_cache.NoCache` for a full
forward): the cache builds the forward's mask, and each layer's attention hands it the queries,
keys and values and gets the attention outputs back (one code path for every cache).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.models.kv_cache import Cache, KVCache, NoCache, RingKVCache

__all__ = ["rope_cos_sin", "apply_rope", "GPTConfig", "GPT", "init_weights"]


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
    """Rotate ``x`` ``(..., B, n_head, T, head_dim)`` by position (GPT-NeoX's half split)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # no-ops, except under autocast
    x1, x2 = x.chunk(2, dim=-1)  # (..., B, n_head, T, head_dim // 2) each
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., B, n_head, T, head_dim)


@functools.lru_cache(maxsize=4096)
def _rope_range(
    start: int, n: int, head_dim: int, base: float, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`rope_cos_sin` of positions ``start .. start + n - 1``, cached: a decode step asks for the same
    few positions again and again (beam search: every token of every search). Read-only tensors, made
    outside inference mode so that a training forward may use them too."""
    with torch.inference_mode(False), torch.no_grad():
        return rope_cos_sin(torch.arange(start, start + n, device=device), head_dim, base, dtype)


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
        cache: Cache,
        layer: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        n_out: int | None = None,
    ) -> torch.Tensor:
        """Attention outputs ``(B, n_out or T, C)``: every token's keys and values go to ``cache``,
        queries are computed for the last ``n_out`` tokens only."""
        B, T, C = x.shape
        H = self.n_head
        qkv = self.c_attn.forward(x).view(B, T, 3, H, C // H).permute(2, 0, 3, 1, 4)  # (3, B, n_head, T, head_dim)
        if rope is not None:  # queries and keys rotated in one go
            q, k = apply_rope(qkv[:2], *rope).unbind(0)  # (B, n_head, T, head_dim) each
            v = qkv[2]
        else:
            q, k, v = qkv.unbind(0)  # (B, n_head, T, head_dim) each
        if n_out is not None:
            q = q[:, :, T - n_out :]  # (B, n_head, n_out, head_dim)
        y = cache.attend(layer, q, k, v, self.dropout if self.training else 0.0)  # (B, n_head, Q, head_dim)
        y = y.transpose(1, 2).reshape(B, q.shape[2], C)  # (B, Q, n_head, head_dim) -> (B, Q, C)
        y = self.c_proj.forward(y)
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
        cache: Cache,
        layer: int,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        n_out: int | None = None,
    ) -> torch.Tensor:
        """``(B, n_out or T, C)``: with ``n_out``, only the last ``n_out`` tokens go on (keys and values of all)."""
        y = self.attn.forward(self.ln_1.forward(x), cache, layer, rope, n_out)
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

    ``forward(x, cache=None, mask=None, positions=None, attendable=None, n_out=None)``: ``x`` is
    ``(B, T, n_embd)``; returns ``(B, T, n_embd)`` after the final layer norm. With a ``cache``,
    ``x`` holds the new tokens only and attends to the cached ones too; the cache is updated in
    place. ``mask`` (bool or additive, broadcastable to ``(B, n_head, T, T_keys)``, true = attend)
    replaces the default causal (windowed) mask, for example to hide left padding; ``attendable``
    ``(B, T)`` is the short way to hide keys (see :func:`~tt_agents.models.kv_cache.attention_mask`),
    and the only way with a :class:`~tt_agents.models.kv_cache.RingKVCache`. ``positions`` (``(T,)``
    or ``(B, T)`` integers) feed rotary embeddings; by default they continue from the cache.
    ``n_out``: return ``(B, n_out, n_embd)``, the last ``n_out`` tokens only; the final block then
    computes nothing else (every token's keys and values still enter the cache), which is what
    decoding needs.

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
        """A :class:`~tt_agents.models.kv_cache.RingKVCache` of ``attn_window`` slots for ``batch`` rows,
        on this model's device and dtype."""
        if self.config.attn_window is None:
            raise ValueError("a RingKVCache needs GPTConfig.attn_window (the number of slots)")
        p = self.ln_f.weight
        c = self.config
        return RingKVCache(c.n_layer, batch, c.n_head, c.n_embd // c.n_head, c.attn_window, p.device, p.dtype)

    def forward(
        self,
        x: torch.Tensor,
        cache: Cache | None = None,
        mask: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
        attendable: torch.Tensor | None = None,
        n_out: int | None = None,
    ) -> torch.Tensor:
        T = x.shape[1]
        cache = NoCache() if cache is None else cache
        start = cache.begin(x, self.config.attn_window, mask, attendable)  # the cache builds the mask
        rope = None
        if self.config.rope:
            head_dim = self.config.n_embd // self.config.n_head
            if positions is None:  # the cache's positions: cached tables
                rope = _rope_range(start, T, head_dim, self.config.rope_base, x.dtype, x.device)
            else:
                rope = rope_cos_sin(positions, head_dim, self.config.rope_base, x.dtype)
            if positions is not None and positions.dim() == 2:
                rope = (rope[0][:, None], rope[1][:, None])  # (B, 1, T, head_dim // 2)
        if self.training:
            x = self.drop(x)
        keep = n_out if n_out is not None and n_out < T else None  # the final block computes the kept tokens only
        for i, block in enumerate(self.h):
            x = block.forward(x, cache, i, rope, keep if i == len(self.h) - 1 else None)
        cache.end()
        return self.ln_f.forward(x)


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation, shared by the agents' embeddings and heads."""
    if isinstance(module, nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
