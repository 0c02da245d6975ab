"""The Trajectory Transformer network (Janner, Li and Levine, 2021) and its discretizer.

Read top to bottom: the per-dimension discretizer, then the model (token embeddings, the shared
GPT, per-dimension output heads, the training forward and loss, the cached decode and its
full-recompute reference).

**Tokens.** A transition ``t`` is ``obs_dim + act_dim + 2`` tokens: every observation dimension,
every action dimension, the reward ``r_t`` and the value ``V_t`` (the discounted return from
``t`` on, termination penalty included), each discretized into ``n_bins`` bins of its own
dimension. A token of dimension ``d`` with bin ``i`` is embedded as row ``d * n_bins + i`` of one
embedding table (the paper's offsets), and the hidden state of a token of dimension ``d`` is
read by head ``d``, which predicts the next token (of dimension ``d + 1``, cyclically).

**Attention.** As in the reference implementation, no token attends to a value token: values in
the context are the model's own guesses at plan time, so hiding them keeps training and
planning alike. Unlike the reference, which gives the token at index ``i`` of its (at most
``block_size``-token) input a learned position embedding and crops the input to the last few
transitions before every forward pass, positions enter through rotary embeddings (relative
positions only) and each token attends to the last ``context_transitions * transition_dim``
tokens (a sliding window). A token's hidden state is then a function of the window behind it
alone, wherever the window sits, so the keys and values of past tokens never go stale: they are
computed once, kept in a :class:`~tt_agents.models.kv_cache.RingKVCache`, and reused by every later
token, across beam-search steps and across env steps. The reference planner recomputes the
same function without a cache (:meth:`TrajectoryTransformer.last_logits`) over the last
:attr:`TrajectoryTransformer.receptive_field` tokens, which is exact: a token's output at the
last layer cannot depend on anything older.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.models.gpt import GPT, GPTConfig, init_weights
from tt_agents.models.kv_cache import ForkKVCache, RingKVCache

__all__ = ["STRATEGIES", "Discretizer", "TrajectoryTransformer"]

STRATEGIES = ("quantile", "uniform")


# ----------------------------------------------------------------------------- discretizer
class Discretizer:
    """Per-dimension bins: bin ``i`` of dimension ``d`` is ``[thresholds[i, d], thresholds[i + 1, d])``.

    Values below the first or above the last threshold fall into the edge bins; a token is
    reconstructed to its bin's centre. Thresholds are float32 numbers (kept as float64), so the
    torch discretization of training batches and the numpy one of observations agree exactly.

    Args:
        thresholds: ``(n_bins + 1, dim)``, non-decreasing down each column.
        strategy: how they were fitted (``"quantile"``: equal counts per bin, the paper's
            default; ``"uniform"``: equal widths), for the record.

    Example:
        >>> d = Discretizer.fit(np.arange(10.0)[:, None], n_bins=2, strategy="uniform")
        >>> d.discretize(np.array([[0.0], [4.4], [4.6], [99.0]])).ravel().tolist()
        [0, 0, 1, 1]
        >>> d.reconstruct(np.array([[0], [1]])).ravel().tolist()
        [2.25, 6.75]
    """

    def __init__(self, thresholds: np.ndarray, strategy: str = "quantile") -> None:
        thresholds = np.asarray(thresholds, dtype=np.float64)
        if thresholds.ndim != 2 or thresholds.shape[0] < 2:
            raise ValueError(f"thresholds must be (n_bins + 1, dim) with n_bins >= 1, got {thresholds.shape}")
        if not np.all(np.isfinite(thresholds)) or np.any(np.diff(thresholds, axis=0) < 0):
            raise ValueError("thresholds must be finite and non-decreasing down each column")
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        self.thresholds = thresholds
        self.strategy = strategy

    @property
    def n_bins(self) -> int:
        return self.thresholds.shape[0] - 1

    @property
    def dim(self) -> int:
        return self.thresholds.shape[1]

    @property
    def centres(self) -> np.ndarray:
        """``(n_bins, dim)`` bin centres, what a token is reconstructed to."""
        return (self.thresholds[:-1] + self.thresholds[1:]) / 2

    @classmethod
    def fit(cls, data: np.ndarray, n_bins: int = 100, strategy: str = "quantile") -> Discretizer:
        """Bins of every column of ``data`` ``(N, dim)``: quantiles (as the paper) or equal widths."""
        data = np.asarray(data, dtype=np.float64)
        if data.ndim != 2 or len(data) == 0:
            raise ValueError(f"need a non-empty (N, dim) array to fit bins, got shape {data.shape}")
        if not np.all(np.isfinite(data)):
            raise ValueError("cannot fit bins on data with NaN or infinite values")
        if strategy == "quantile":
            index = np.linspace(0, len(data) - 1, n_bins + 1).astype(np.int64)
            thresholds = np.sort(data, axis=0)[index]  # (n_bins + 1, dim)
        elif strategy == "uniform":
            low, high = data.min(0), data.max(0)
            return cls.uniform(low, high, n_bins)
        else:
            raise ValueError(f"unknown strategy {strategy!r}; choose one of {STRATEGIES}")
        return cls(thresholds.astype(np.float32).astype(np.float64), strategy)

    @classmethod
    def uniform(cls, low: np.ndarray, high: np.ndarray, n_bins: int = 100) -> Discretizer:
        """Equal-width bins from ``low`` to ``high`` (a constant column gets a unit-wide range)."""
        low = np.asarray(low, np.float64)
        high = np.asarray(high, np.float64)
        high = np.where(high - low < 1e-6, low + 1.0, high)
        thresholds = low + (high - low) * np.linspace(0.0, 1.0, n_bins + 1)[:, None]  # (n_bins + 1, dim)
        thresholds = np.maximum.accumulate(thresholds.astype(np.float32).astype(np.float64), axis=0)
        return cls(thresholds, "uniform")

    def discretize(self, x: np.ndarray) -> np.ndarray:
        """Tokens ``(..., dim)`` int64 of values ``x`` ``(..., dim)``."""
        x = np.asarray(x, dtype=np.float64)
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected values with {self.dim} dimensions in the last axis, got shape {x.shape}")
        out = np.empty(x.shape, dtype=np.int64)
        for d in range(self.dim):
            out[..., d] = np.searchsorted(self.thresholds[:, d], x[..., d], side="right") - 1
        return np.clip(out, 0, self.n_bins - 1)

    def reconstruct(self, tokens: np.ndarray) -> np.ndarray:
        """Bin centres ``(..., dim)`` of ``tokens`` ``(..., dim)``."""
        tokens = np.clip(np.asarray(tokens, dtype=np.int64), 0, self.n_bins - 1)
        return np.take_along_axis(self.centres, tokens.reshape(-1, self.dim), axis=0).reshape(tokens.shape)

    def subset(self, start: int, stop: int) -> Discretizer:
        """The bins of dimensions ``start:stop``."""
        return Discretizer(self.thresholds[:, start:stop], self.strategy)

    def to_json(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "thresholds": self.thresholds.T.tolist()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Discretizer:
        return cls(np.asarray(data["thresholds"], dtype=np.float64).T, data["strategy"])


# ----------------------------------------------------------------------------- the model
class TrajectoryTransformer(nn.Module):
    """Token embeddings, the shared GPT and one output head per transition dimension.

    Args:
        observation_dim, action_dim: sizes of the flat observation and action vectors.
        n_bins: the vocabulary of every dimension.
        gpt: the transformer's config; ``rope`` must be on and ``attn_window`` set (the number
            of tokens a token attends to, ``context_transitions * transition_dim``).

    Example:
        >>> gpt = GPTConfig(n_layer=1, n_head=2, n_embd=8, dropout=0.0, rope=True, attn_window=8)
        >>> model = TrajectoryTransformer(2, 1, n_bins=5, gpt=gpt).eval()
        >>> tokens = torch.randint(0, 5, (3, 2 * model.transition_dim))
        >>> model(tokens).shape
        torch.Size([3, 10, 5])
    """

    def __init__(self, observation_dim: int, action_dim: int, n_bins: int, gpt: GPTConfig) -> None:
        super().__init__()
        if not gpt.rope or gpt.attn_window is None:
            raise ValueError("the Trajectory Transformer needs a GPTConfig with rope=True and attn_window set")
        self.observation_dim = observation_dim
        self.action_dim = action_dim
        self.transition_dim = observation_dim + action_dim + 2
        self.reward_dim = self.transition_dim - 2
        self.value_dim = self.transition_dim - 1
        self.n_bins = n_bins
        self.tok_emb = nn.Embedding(self.transition_dim * n_bins, gpt.n_embd)
        self.tok_emb.weight._no_weight_decay = True  # type: ignore[attr-defined]  # as the paper: embeddings not decayed
        self.gpt = GPT(gpt)
        self.head = nn.Parameter(torch.empty(self.transition_dim, gpt.n_embd, n_bins))  # (td, C, n_bins), no bias
        init_weights(self.tok_emb)
        nn.init.normal_(self.head, mean=0.0, std=0.02)
        # bins, set from the agent's discretizer (JSON preprocessing, so not saved with the weights)
        self.register_buffer("thresholds", torch.zeros(self.transition_dim, n_bins + 1), persistent=False)
        self.register_buffer("centres", torch.zeros(self.transition_dim, n_bins), persistent=False)

    @property
    def receptive_field(self) -> int:
        """Tokens a last-layer output can depend on: ``n_layer * (attn_window - 1) + 1``."""
        c = self.gpt.config
        return c.n_layer * (c.attn_window - 1) + 1  # type: ignore[operator]

    def set_discretizer(self, discretizer: Discretizer) -> None:
        if discretizer.dim != self.transition_dim or discretizer.n_bins != self.n_bins:
            raise ValueError(
                f"the discretizer has {discretizer.dim} dimensions of {discretizer.n_bins} bins, the model "
                f"{self.transition_dim} of {self.n_bins}"
            )
        # float32 values whatever the model's dtype, so a float64 copy of a model plans like the original
        self.thresholds.copy_(torch.as_tensor(discretizer.thresholds.T.astype(np.float32)))
        self.centres.copy_(torch.as_tensor(discretizer.centres.T.astype(np.float32)))

    def tokenize(
        self, observations: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        """Tokens ``(B, K * transition_dim)`` of ``K`` transitions: ``(B, K, obs_dim)``, ``(B, K, act_dim)``, ``(B, K)``, ``(B, K)``."""
        B, K = rewards.shape
        x = torch.cat(
            [observations.reshape(B, K, -1), actions.reshape(B, K, -1), rewards[..., None], values[..., None]], dim=-1
        ).to(self.thresholds.dtype)  # (B, K, td)
        flat = x.reshape(B * K, self.transition_dim).T.contiguous()  # (td, B * K)
        tokens = torch.searchsorted(self.thresholds, flat, right=True) - 1  # (td, B * K)
        tokens = tokens.clamp_(0, self.n_bins - 1)
        return tokens.T.reshape(B, K * self.transition_dim)  # (B, K * td)

    def dims(self, start_dim: int, n: int) -> torch.Tensor:
        """Dimension index ``(n,)`` of ``n`` consecutive tokens, the first of dimension ``start_dim``."""
        return (start_dim + torch.arange(n, device=self.head.device)) % self.transition_dim

    def _embed(self, tokens: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
        return self.tok_emb(tokens + dims * self.n_bins)  # (B, T, C)

    def _heads(self, h: torch.Tensor, start_dim: int) -> torch.Tensor:
        """Logits ``(B, T, n_bins)`` of hidden states ``(B, T, C)``, each through its own dimension's head."""
        B, T, C = h.shape
        td = self.transition_dim
        right = (-(start_dim + T)) % td
        h = F.pad(h, (0, 0, start_dim, right))  # (B, start_dim + T + right, C)
        h = h.view(B, -1, td, C)  # (B, K, td, C)
        logits = torch.einsum("bktc,tcv->bktv", h, self.head)  # (B, K, td, n_bins)
        return logits.reshape(B, -1, self.n_bins)[:, start_dim : start_dim + T]  # (B, T, n_bins)

    def forward(self, tokens: torch.Tensor, start_dim: int = 0) -> torch.Tensor:
        """Training forward: logits ``(B, T, n_bins)``; position ``i`` predicts token ``i + 1``.

        ``tokens`` ``(B, T)``, the first of dimension ``start_dim``; rotary positions ``0..T-1``.
        """
        T = tokens.shape[1]
        dims = self.dims(start_dim, T)  # (T,)
        x = self._embed(tokens, dims)  # (B, T, C)
        attendable = (dims != self.value_dim)[None]  # (1, T): value tokens are hidden from every query
        h = self.gpt(x, positions=torch.arange(T, device=x.device), attendable=attendable)  # (B, T, C)
        return self._heads(h, start_dim)

    def loss(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor,
        target_start_dim: int,
        weights: tuple[float, float, float, float],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Weighted cross-entropy over valid targets, and the mean cross-entropy of each token type.

        Args:
            logits: ``(B, T, n_bins)``; targets, mask: ``(B, T)``, the first target of dimension
                ``target_start_dim``.
            weights: of observation, action, reward and value tokens (the paper: 1, 5, 1, 1).

        The weighted sum is divided by the number of valid targets (the paper divides by all
        targets, padding included, which only rescales the loss).
        """
        B, T, V = logits.shape
        ce = F.cross_entropy(logits.float().reshape(B * T, V), targets.reshape(B * T), reduction="none")
        ce = ce.view(B, T)  # (B, T)
        dims = self.dims(target_start_dim, T)  # (T,)
        kind = torch.zeros_like(dims)  # 0 observation, 1 action, 2 reward, 3 value
        kind[dims >= self.observation_dim] = 1
        kind[dims == self.reward_dim] = 2
        kind[dims == self.value_dim] = 3
        w = torch.tensor(weights, dtype=ce.dtype, device=ce.device)[kind]  # (T,)
        m = mask.to(ce.dtype)  # (B, T)
        n_valid = m.sum().clamp_min(1.0)
        loss = (ce * w * m).sum() / n_valid
        per_kind = {}
        for i, name in enumerate(("ce_observation", "ce_action", "ce_reward", "ce_value")):
            mk = m * (kind == i).to(ce.dtype)
            per_kind[name] = (ce.detach() * mk).sum() / mk.sum().clamp_min(1.0)
        return loss, per_kind

    # ---- planning
    def new_cache(self, batch: int) -> RingKVCache:
        return self.gpt.new_ring_cache(batch)

    def decode(
        self, tokens: torch.Tensor, cache: RingKVCache | ForkKVCache, start_dim: int, pad: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Append ``tokens`` ``(B, n)`` (the first of dimension ``start_dim``) to ``cache``; logits ``(B, n_bins)`` of the last.

        ``pad`` ``(B, n)``: tokens that only keep rows aligned; nothing attends to them.
        """
        n = tokens.shape[1]
        dims = self.dims(start_dim, n)  # (n,)
        x = self._embed(tokens, dims)  # (B, n, C)
        attendable = dims != self.value_dim  # (n,)
        if pad is not None:
            attendable = attendable[None] & ~pad  # (B, n)
        h = self.gpt(x, cache=cache, attendable=attendable, n_out=1)  # (B, 1, C)
        return h[:, -1] @ self.head[(start_dim + n - 1) % self.transition_dim]  # (B, n_bins)

    def last_logits(self, tokens: torch.Tensor, start_dim: int, pad: torch.Tensor | None = None) -> torch.Tensor:
        """The reference of :meth:`decode`: recompute the whole sequence ``(B, T)``; logits ``(B, n_bins)`` of the last token.

        Exact when ``T`` covers the :attr:`receptive_field` (or the whole history, if shorter).
        """
        T = tokens.shape[1]
        dims = self.dims(start_dim, T)  # (T,)
        x = self._embed(tokens, dims)  # (B, T, C)
        attendable = (dims != self.value_dim)[None]  # (1, T)
        if pad is not None:
            attendable = attendable & ~pad  # (B, T)
        h = self.gpt(x, positions=torch.arange(T, device=x.device), attendable=attendable, n_out=1)  # (B, 1, C)
        return h[:, -1] @ self.head[(start_dim + T - 1) % self.transition_dim]  # (B, n_bins)
