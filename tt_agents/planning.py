"""Beam-search planning with a Trajectory Transformer, batched over every beam of every env.

- :class:`PlanConfig`: the search's hyperparameters (the paper's MuJoCo defaults).
- :class:`CachedContext`: rows of token history held as a KV ring cache (the fast path).
- :class:`ReferenceContext`: the same interface without a cache; every token recomputes the
  whole receptive field (the slow reference that the fast path must match).
- :func:`beam_plan`: the paper's beam search over ``n_envs`` contexts at once.

**The search** (Janner et al., 2021, Algorithm 1, as in the reference implementation). Every
env's context is forked into ``beam_width * n_expand`` candidates. For each of ``horizon``
transitions: (after the first) each of an env's ``beam_width`` beams is forked into
``n_expand`` candidates; action tokens are sampled (``k_act`` most likely / cumulative-probability
filter ``cdf_act``); the reward and value tokens are read greedily and their expectations under
the predicted distributions (bin centres weighted by probability) give each candidate's score,
``sum_k<t discount^k E[r_k] + discount^t E[V_t]`` (our ``V_t`` counts ``r_t``, see
:mod:`tt_agents.models.tt`); the best ``beam_width`` candidates of each env survive; then the
next observation is decoded (``k_obs = 1``: greedily). The plan with the best final score wins.

**Batching.** All rows of all envs advance together, one token per forward pass: one call of
the model per token for the whole ``n_envs * beam_width * n_expand`` batch, with the KV cache
kept across tokens. By default on a CPU (``PlanConfig.native``) each token is one fused C step
(:mod:`tt_agents.models.tt_native`): candidates hold indices into one buffer of keys and values,
so forking and pruning copy indices, and beams that share a past read the same entries. The torch
step (``native=False``; GPUs, float64 networks) keeps rows in rings: forked candidates share
their parent's ring (:class:`~tt_agents.models.kv_cache.ForkKVCache`) until pruning copies the
survivors' whole rings (context included); with ``PlanConfig.shared_prefix`` every beam attends
over its env's context, held once and never copied, and over the tokens it planned itself
(:class:`~tt_agents.models.kv_cache.SharedPrefixKVCache`, cascade attention: the queries of all of
an env's beams multiply its context's keys in one matmul, and pruning copies the survivors'
suffixes only; slower on a CPU: benchmarks.md). All of them give the same plans. Rows are ordered
env by env, so each env's candidates are a contiguous block.

**Randomness.** Sampling is Gumbel-max with uniform noise drawn per env from that env's own
generator (``deterministic=True``) or from torch's global generator. With per-env generators
an env's plan does not depend on which other envs share the batch.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

import torch

from tt_agents.models.kv_cache import KV_DTYPES, ForkKVCache, RingKVCache, SharedPrefixKVCache
from tt_agents.models.tt import TrajectoryTransformer
from tt_agents.models.tt_native import NativeContext, native_tt_step

__all__ = ["PlanConfig", "Plan", "CachedContext", "ReferenceContext", "Noise", "beam_plan", "filter_cdf", "top_k"]


@dataclass
class PlanConfig:
    """Beam-search hyperparameters (a TTPlanner's act-time settings); the defaults are the paper's for MuJoCo
    locomotion."""

    beam_width: int = 128
    """Beams kept per env after each transition (paper: 128; 32 is enough for HalfCheetah)."""
    horizon: int = 15
    """Transitions planned ahead (paper: 15; 5 for HalfCheetah)."""
    n_expand: int = 2
    """Candidates sampled from each beam per transition (paper: 2)."""
    k_obs: int | None = 1
    """Sample observation tokens among the ``k_obs`` most likely (1: greedy, the paper's choice)."""
    k_act: int | None = None
    """Sample action tokens among the ``k_act`` most likely (``None``: no top-k, the paper's choice)."""
    cdf_obs: float | None = None
    """Drop the least likely observation tokens holding less than this much probability in total."""
    cdf_act: float | None = 0.6
    """The same for action tokens (paper: 0.6, i.e. sample among the top 40% of the mass)."""
    discount: float = 0.99
    """Discount of predicted rewards and of the final value (paper: the training discount, 0.99)."""
    use_cache: bool = True
    """``False`` plans with the slow reference (no KV cache, every token recomputes its
    receptive field); same plans, for tests and benchmarks."""
    shared_prefix: bool = False
    """The torch step's beams attend over their env's context held once, plus their own planned suffix
    (cascade attention; pruning copies suffixes only). ``False``: forked candidates share their parent's
    ring and pruning copies whole rings. Same plans. Off by default: on a CPU it reads fewer
    bytes but runs more, smaller matmuls, and measured slower (benchmarks.md, "planning")."""
    kv_dtype: str = "float32"
    """Dtype of the beams' cached keys and values (``"float32"``: exact; ``"bfloat16"`` or
    ``"float16"`` halve the bytes; not exact: plans may differ from float32's; benchmarks.md,
    "planning", has their speed and deviation). The fused step (``native``) keeps float32 or
    bfloat16 entries; the torch step honours it with ``shared_prefix`` only (else float32)."""
    linear_dtype: str = "float32"
    """Dtype of the fused step's linear layers (``native``): ``"float32"`` (exact) or ``"bfloat16"``: their
    inputs and weights rounded to bfloat16, products summed in float32, about twice the float32 rate on CPUs
    with AVX512-BF16 (AMD Zen 4, Intel Sapphire Rapids and later); not exact (benchmarks.md: "planning" has
    its speed and deviation, "tt-precision" what it does to a trained planner's actions and returns). Where
    the CPU lacks AVX512-BF16, or the torch step runs, the linear layers stay in float32 (warned once)."""
    native: bool = True
    """Decode with the fused C step (:mod:`tt_agents.models.tt_native`: candidates hold indices into one
    key/value buffer instead of rings; forks and pruning copy indices) where it applies: a float32 network
    on a CPU, ``kv_dtype`` float32 (exact: the torch step's function, float32 rounding apart) or bfloat16,
    no ``shared_prefix``; it splits its rows among torch's intra-op threads. ``False``, or where no C
    compiler works, runs the torch step."""
    seed: int = 0
    """Seed of each env's sampling stream under ``deterministic=True`` (reset with the episode)."""

    def __post_init__(self) -> None:
        if self.beam_width < 1 or self.horizon < 1 or self.n_expand < 1:
            raise ValueError("beam_width, horizon and n_expand must be >= 1")
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {tuple(KV_DTYPES)}, got {self.kv_dtype!r}")
        if self.linear_dtype not in ("float32", "bfloat16"):
            raise ValueError(f"linear_dtype must be 'float32' or 'bfloat16', got {self.linear_dtype!r}")
        for name in ("cdf_obs", "cdf_act"):
            v = getattr(self, name)
            if v is not None and not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1) or None, got {v}")

    @classmethod
    def small(cls) -> PlanConfig:
        """The search of ``TT_PRESETS["small"]``: about a second per action on a CPU."""
        return cls(beam_width=16, horizon=5, n_expand=2)

    @classmethod
    def tiny(cls) -> PlanConfig:
        """For tests: a search of a few beams."""
        return cls(beam_width=3, horizon=2, n_expand=2)


@dataclass
class Plan:
    """The best plan of each env."""

    tokens: torch.Tensor
    """``(n_envs, horizon, transition_dim)``; step 0 starts with the current observation's tokens."""
    scores: torch.Tensor
    """``(n_envs,)`` the planner's estimate of the discounted return of each plan."""


# ----------------------------------------------------------------------------- contexts
class CachedContext:
    """Token history of ``n`` rows held as keys and values in a :class:`~tt_agents.models.kv_cache.RingKVCache`.

    Contexts made by :meth:`select` own their ring; when their rows are pruned again, the old
    ring's buffers are reused for the next copy (``spare``), so that a search allocates two rings
    in all rather than one per transition.
    """

    def __init__(
        self,
        model: TrajectoryTransformer,
        cache: RingKVCache | ForkKVCache | SharedPrefixKVCache,
        owned: bool = False,
        spare: RingKVCache | None = None,
        recycle: RingKVCache | None = None,
    ) -> None:
        self.model = model
        self.cache = cache
        self.owned = owned  # the ring belongs to the search (not an env's context): reusable once pruned
        self.spare = spare  # buffers to write the next selection into
        self.recycle = recycle  # a fork's parent ring, spare after the next selection

    @classmethod
    def empty(cls, model: TrajectoryTransformer, n_rows: int) -> CachedContext:
        return cls(model, model.new_cache(n_rows))

    def forget(self, rows: torch.Tensor) -> None:
        """Start the rows where ``rows`` ``(n,)`` is true afresh (a new episode)."""
        self.cache.forget(rows)  # type: ignore[union-attr]

    def append(self, tokens: torch.Tensor, start_dim: int, pad: torch.Tensor | None = None) -> torch.Tensor:
        """Append ``tokens`` ``(n, T)``; logits ``(n, n_bins)`` of the token after them."""
        return self.model.decode(tokens, self.cache, start_dim, pad)

    def select(self, index: torch.Tensor) -> CachedContext:
        """A context whose row ``i`` is a copy of row ``index[i]``."""
        ring = self.cache.index_select(index, self.spare)
        return CachedContext(self.model, ring, owned=True, spare=self.recycle)

    def fork(
        self, n_children: int, max_tokens: int, shared_prefix: bool = False, dtype: torch.dtype | None = None
    ) -> CachedContext:
        """Rows ``r * n_children + c``: ``n_children`` copies of each row that share its cache until :meth:`select`.

        ``shared_prefix``: an env's context (a ring) forks into beams that share it
        (:class:`~tt_agents.models.kv_cache.SharedPrefixKVCache`, their suffixes in ``dtype``);
        beams of a shared-prefix cache always fork that way.
        """
        cache = self.cache
        if isinstance(cache, RingKVCache) and shared_prefix:
            cache = SharedPrefixKVCache(cache, dtype=dtype)
        assert isinstance(cache, RingKVCache | SharedPrefixKVCache)
        fork = cache.fork(n_children, max_tokens)
        return CachedContext(self.model, fork, spare=self.spare, recycle=self.cache if self.owned else None)


class ReferenceContext:
    """Token history of ``n`` rows as token ids; every append reruns the network over the kept tokens.

    With ``window=False`` (the reference) it keeps the last :attr:`~TrajectoryTransformer.receptive_field`
    tokens and gives exactly the cached logits. With ``window=True`` it keeps, as the original
    planner does, only the whole transitions that fit in one attention window (at most
    ``attn_window - 1`` tokens): cheaper, but a different function once the history is longer
    than a window, so its plans differ from the cached ones (benchmarks only).
    """

    def __init__(
        self, model: TrajectoryTransformer, tokens: torch.Tensor, pad: torch.Tensor, start_dim: int, window: bool = False
    ) -> None:
        self.model = model
        self.tokens = tokens  # (n, L)
        self.pad = pad  # (n, L), true where nothing may attend (padding, finished episodes)
        self.start_dim = start_dim  # dimension of column 0
        self.window = window

    @classmethod
    def empty(cls, model: TrajectoryTransformer, n_rows: int, window: bool = False) -> ReferenceContext:
        device = model.head.device
        return cls(
            model,
            torch.zeros(n_rows, 0, dtype=torch.long, device=device),
            torch.zeros(n_rows, 0, dtype=torch.bool, device=device),
            0,
            window,
        )

    def forget(self, rows: torch.Tensor) -> None:
        self.pad = self.pad.clone()
        self.pad[rows] = True

    def append(self, tokens: torch.Tensor, start_dim: int, pad: torch.Tensor | None = None) -> torch.Tensor:
        L, td = self.tokens.shape[1], self.model.transition_dim
        if L == 0:
            self.start_dim = start_dim
        elif (self.start_dim + L) % td != start_dim:
            raise ValueError(f"appending dimension {start_dim} after dimension {(self.start_dim + L - 1) % td}")
        if pad is None:
            pad = torch.zeros_like(tokens, dtype=torch.bool)
        tokens = torch.cat([self.tokens, tokens], dim=1)  # (n, L + T)
        pad = torch.cat([self.pad, pad], dim=1)
        if self.window:  # whole transitions, as the original planner crops its input
            keep = self.model.gpt.config.attn_window - 1  # type: ignore[operator]
            drop = -(-max(0, tokens.shape[1] - keep) // td) * td
        else:
            drop = max(0, tokens.shape[1] - self.model.receptive_field)
        self.tokens, self.pad = tokens[:, drop:], pad[:, drop:]
        self.start_dim = (self.start_dim + drop) % td
        return self.model.last_logits(self.tokens, self.start_dim, self.pad if bool(self.pad.any()) else None)

    def select(self, index: torch.Tensor) -> ReferenceContext:
        return ReferenceContext(self.model, self.tokens[index], self.pad[index], self.start_dim, self.window)

    def fork(self, n_children: int, max_tokens: int, shared_prefix: bool = False, dtype=None) -> ReferenceContext:
        index = torch.arange(self.tokens.shape[0], device=self.tokens.device).repeat_interleave(n_children)
        return self.select(index)


Context = CachedContext | ReferenceContext


# ----------------------------------------------------------------------------- sampling
def filter_cdf(logits: torch.Tensor, cdf: float) -> torch.Tensor:
    """Remove (``-inf``) the least likely tokens whose probabilities sum to less than ``cdf``.

    Example:
        >>> logits = torch.tensor([[0.1, 0.2, 0.3, 0.4]]).log()
        >>> torch.isinf(filter_cdf(logits, 0.35)).tolist()  # 0.1 + 0.2 < 0.35: those two go
        [[True, True, False, False]]
    """
    probs = logits.softmax(-1)
    sorted_probs, order = probs.sort(dim=-1)  # ascending
    drop_sorted = sorted_probs.cumsum(-1) < cdf  # (n, V), never the most likely token
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (ties at the threshold kept too)."""
    kth = logits.topk(min(k, logits.shape[-1]), dim=-1).values[:, -1:]  # (n, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


class Noise:
    """Uniform noise for ``n_envs`` blocks of rows: from each env's generator, or the global one."""

    def __init__(self, n_envs: int, generators: list[torch.Generator] | None = None) -> None:
        if generators is not None and len(generators) != n_envs:
            raise ValueError(f"{len(generators)} generators for {n_envs} envs")
        self.n_envs = n_envs
        self.generators = generators

    def uniform(self, rows_per_env: int, n: int, like: torch.Tensor) -> torch.Tensor:
        """``(n_envs * rows_per_env, n)`` uniform in [0, 1), dtype and device of ``like``."""
        kw = {"dtype": like.dtype, "device": like.device}
        if self.generators is None:
            return torch.rand(self.n_envs * rows_per_env, n, **kw)
        return torch.cat([torch.rand(rows_per_env, n, generator=g, **kw) for g in self.generators])


def sample_tokens(
    logits: torch.Tensor, k: int | None, cdf: float | None, noise: Noise, rows_per_env: int
) -> torch.Tensor:
    """Tokens ``(n,)`` sampled from ``logits`` ``(n, V)`` after the top-k and cumulative filters."""
    if k == 1:
        return logits.argmax(-1)
    if cdf is not None:
        logits = filter_cdf(logits, cdf)
    if k is not None:
        logits = top_k(logits, k)
    u = noise.uniform(rows_per_env, logits.shape[-1], logits)  # (n, V)
    return (logits - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max


# ----------------------------------------------------------------------------- the search
@functools.cache
def _warn_float32_linear(why: str) -> None:
    warnings.warn(f"PlanConfig(linear_dtype='bfloat16'): {why}, so the linear layers run in float32",
                  RuntimeWarning, stacklevel=4)


def beam_plan(
    model: TrajectoryTransformer,
    context: Context,
    logits: torch.Tensor,
    observation_tokens: torch.Tensor,
    config: PlanConfig,
    noise: Noise,
) -> Plan:
    """Plan for ``n_envs`` envs at once.

    Args:
        model: the network (in eval mode).
        context: one row per env holding its history up to the current observation's tokens
            (not modified: the search works on copies).
        logits: ``(n_envs, n_bins)`` the model's prediction of each env's first action token.
        observation_tokens: ``(n_envs, obs_dim)`` the current observations' tokens.
        config: the search's hyperparameters.
        noise: where sampling noise comes from.

    Returns:
        The best plan of every env.
    """
    E = logits.shape[0]
    B, X, H = config.beam_width, config.n_expand, config.horizon
    D, A, td = model.observation_dim, model.action_dim, model.transition_dim
    device = logits.device
    env_base = torch.arange(E, device=device)[:, None]  # (E, 1)
    centres = model.centres.to(logits.dtype)  # (td, n_bins)

    # every env's context forks into B * X candidates; later, every beam into X
    kv_dtype = None if config.kv_dtype == "float32" else KV_DTYPES[config.kv_dtype]  # None: the model's (exact)
    step = None
    if config.native and isinstance(context, CachedContext) and isinstance(context.cache, RingKVCache):
        if not config.shared_prefix and config.kv_dtype in ("float32", "bfloat16"):
            step = native_tt_step(model)
    linear_bf16 = config.linear_dtype == "bfloat16"
    if linear_bf16 and (step is None or not step.bf16_linear):
        _warn_float32_linear("the torch step runs" if step is None else "this CPU has no AVX512-BF16")
        linear_bf16 = False
    if step is not None:  # the fused C step: candidates hold indices into one buffer of keys and values
        dtype = torch.bfloat16 if config.kv_dtype == "bfloat16" else torch.float32
        ctx: Context | NativeContext = step.start(context.cache, E * B * X, dtype, linear_bf16).fork(B * X)
    else:
        ctx = context.fork(B * X, A + 1, config.shared_prefix, kv_dtype)
    logits = logits.repeat_interleave(B * X, dim=0)  # (E * B * X, n_bins)
    plan = torch.zeros(E * B * X, H, td, dtype=torch.long, device=device)
    plan[:, 0, :D] = observation_tokens.repeat_interleave(B * X, dim=0)
    ret = torch.zeros(E * B * X, dtype=logits.dtype, device=device)  # discounted expected rewards so far
    for t in range(H):
        if t > 0:  # X candidates from each beam: row b * X + x of each env's block
            ctx = ctx.fork(X, A + 1)
            logits, plan, ret = (z.repeat_interleave(X, dim=0) for z in (logits, plan, ret))
        for a in range(A):
            tok = sample_tokens(logits, config.k_act, config.cdf_act, noise, B * X)  # (E * B * X,)
            plan[:, t, D + a] = tok
            logits = ctx.append(tok[:, None], D + a)
        reward = logits.softmax(-1) @ centres[model.reward_dim]  # (E * B * X,) expected reward
        tok = logits.argmax(-1)
        plan[:, t, model.reward_dim] = tok
        logits = ctx.append(tok[:, None], model.reward_dim)
        value = logits.softmax(-1) @ centres[model.value_dim]  # expected value of the rest of the episode
        plan[:, t, model.value_dim] = logits.argmax(-1)
        score = ret + config.discount**t * value
        ret = ret + config.discount**t * reward
        # keep the best B of each env's B * X candidates
        best = score.view(E, B * X).topk(B, dim=-1).indices  # (E, B)
        index = (best + env_base * (B * X)).reshape(-1)  # (E * B,)
        ctx = ctx.select(index)
        plan, ret, score = plan[index], ret[index], score[index]
        if t == H - 1:
            break
        logits = ctx.append(plan[:, t, model.value_dim, None], model.value_dim)
        for d in range(D):
            tok = sample_tokens(logits, config.k_obs, config.cdf_obs, noise, B)  # (E * B,)
            plan[:, t + 1, d] = tok
            logits = ctx.append(tok[:, None], d)
    winner = (score.view(E, B).argmax(-1) + env_base[:, 0] * B)  # (E,)
    return Plan(tokens=plan[winner], scores=score[winner])
