"""The package's one causal transformer, shared by the Trajectory Transformer and the Decision Transformer.

Read top to bottom: the KV cache, attention, MLP, block, config, and the transformer itself.
The transformer maps already-embedded tokens ``(B, T, n_embd)`` to hidden states of the same
shape; each agent adds its own embeddings and output heads around it (nanoGPT's layout).

Blocks are pre-norm, ``x = x + attn(ln_1(x)); x = x + mlp(ln_2(x))``, with a final ``ln_f`` on
the output: the residual stream itself is never normalised in place (the misplaced pre-norm
of the fast TT fork).

Attention is causal, optionally restricted to a sliding window of the last ``attn_window``
tokens (Mistral-style). With a window, a token's hidden state depends only on tokens inside its
window, so an incremental decode with a KV cache truncated to the window gives exactly what a
full recompute with the banded mask gives, however long the episode runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["GPTConfig", "GPT", "KVCache", "causal_mask"]


class KVCache:
    """Per-layer keys and values of the tokens decoded so far.

    ``k[l]``, ``v[l]``: ``(B, n_head, T_cached, head_dim)``. ``max_len`` truncates the cache to
    the last ``max_len`` tokens after every append (a sliding window of constant cost);
    ``None`` keeps everything.
    """

    def __init__(self, n_layer: int, max_len: int | None = None) -> None:
        self.k: list[torch.Tensor | None] = [None] * n_layer
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.max_len = max_len

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
        return out

    def truncate(self, length: int) -> None:
        """Keep the first ``length`` cached tokens (drop what was decoded after them)."""
        self.k = [None if k is None else k[:, :, :length] for k in self.k]
        self.v = [None if v is None else v[:, :, :length] for v in self.v]


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
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, head_dim)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, head_dim)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, n_head, T, head_dim)
        if cache is not None:
            k, v = cache.append(layer, k, v)  # (B, n_head, T_cached + T, head_dim)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, n_head, T, head_dim)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-norm transformer block: normalise the branch input, never the residual stream."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, cache: KVCache | None, layer: int) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask, cache, layer)
        x = x + self.mlp(self.ln_2(x))
        return x


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


class GPT(nn.Module):
    """A stack of pre-norm causal blocks over embedded tokens.

    ``forward(x, cache=None, mask=None)``: ``x`` is ``(B, T, n_embd)``; returns ``(B, T, n_embd)``
    after the final layer norm. With a ``cache``, ``x`` holds the new tokens only and attends to
    the cached ones too; the cache is updated in place. ``mask`` (bool, broadcastable to
    ``(B, n_head, T, T_cached + T)``, true = attend) replaces the default causal (windowed) mask,
    for example to hide left padding.

    Example:
        >>> gpt = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=8, dropout=0.0)).eval()
        >>> x = torch.randn(1, 5, 8)
        >>> cache = KVCache(2)
        >>> step = torch.cat([gpt(x[:, i : i + 1], cache=cache) for i in range(5)], 1)
        >>> torch.allclose(step, gpt(x), atol=1e-5)
        True
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
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

    def forward(
        self,
        x: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        T = x.shape[1]
        if mask is None:
            t_k = T + (len(cache) if cache is not None else 0)
            if cache is None or T > 1 or self.config.attn_window is not None:
                mask = causal_mask(T, t_k, self.config.attn_window, x.device)
            # a single new token with a full-history cache sees everything: no mask needed
        x = self.drop(x)
        for i, block in enumerate(self.h):
            x = block(x, mask, cache, i)
        return self.ln_f(x)


def init_weights(module: nn.Module) -> None:
    """GPT-2 initialisation, shared by the agents' embeddings and heads."""
    if isinstance(module, nn.Linear):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            torch.nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
