"""The Decision Transformer network (Chen et al., 2021), with prompts and a sliding-window KV cache.

Read top to bottom: the IMPALA CNN for image observations, the config, and the model
(embeddings, the shared GPT, the action head, the training forward, the prompt encoder and the
one-step cached decode). The masks (:func:`~tt_agents.models.kv_cache.prompt_mask`,
:func:`~tt_agents.models.kv_cache.episode_mask`) and the prompt-prefixed KV cache
(:class:`~tt_agents.models.kv_cache.PrefixKVCache`) are in :mod:`tt_agents.models.kv_cache`.

**Tokens.** Step ``t`` of an episode is three tokens ``(R_t, s_t, a_t)``: the return-to-go, the
observation and the action. Each is embedded, added to a learned embedding of its timestep ``t``
and layer-normed. There is no positional embedding: nothing depends on where a token sits in
the sequence, so the attention window can slide. ``a_t`` is predicted from the hidden state of
``s_t``.

**Attention.** An episode token attends causally to the last ``attn_window`` (``3K``) episode
tokens, itself included (sliding-window attention, :mod:`tt_agents.models.gpt`), and to every
valid token of the prompt if there is one. Prompt tokens (demonstrations of the same task:
several trajectory segments, concatenated) attend causally to each other only, so the prompt is
encoded once. Padding tokens are hidden from every query and attend to themselves only, so that
no softmax row is empty.

**Constant-time inference.** The action ``a_{t-1}`` is not known when ``a_{t-1}`` is predicted, so
step ``t`` appends three tokens ``[a_{t-1}, R_t, s_t]`` to the cache and reads the action from
``s_t``. The cache holds the prompt's keys and values (fixed) and the last ``attn_window`` episode
tokens (sliding), so a step costs ``O(P + 3K)`` however long the episode runs, and equals the
training forward over the whole history with the same mask (see ``tests/test_dt.py``).

**Fixed-shape steps.** :class:`DTStepCache` is the agent's cache: one buffer of ``3P + 3(K + 1)``
slots per layer (the prompt, then a ring with room for one step more than the window, so the
step's three new tokens can be written before attention without overwriting a token any of
them may see), whose masks for each of the ring's ``K + 1`` phases are built once.
:meth:`DecisionTransformerNet.decode_step` is then a function of fixed-shape tensors with no
Python-level branching, which ``torch.compile`` takes whole (``DTStepCache(compile=True)``);
:meth:`DecisionTransformerNet.step` over a :class:`PrefixKVCache` is the simpler eager version
it is tested against.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.models import native as native_dt
from tt_agents.models.gpt import GPT, GPTConfig, init_weights
from tt_agents.models.kv_cache import KVCache, PrefixKVCache, SlotKVCache, episode_mask, prompt_mask
from tt_agents.models.static import maybe_compile

__all__ = [
    "ImpalaCNN",
    "DTNetConfig",
    "DecisionTransformerNet",
    "DTStepCache",
    "PrefixKVCache",  # the cache of `new_cache` and `step`, from tt_agents.models.kv_cache
]


# ----------------------------------------------------------------------------- IMPALA CNN
class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv1(F.relu(self.conv0(F.relu(x))))


class ConvSequence(nn.Module):
    """Convolution, 3x3 max pool with stride 2 (halves H and W, rounding up), two residual blocks."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.res0 = ResidualBlock(out_channels)
        self.res1 = ResidualBlock(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.conv(x), kernel_size=3, stride=2, padding=1)
        return self.res1(self.res0(x))


class ImpalaCNN(nn.Module):
    """The IMPALA encoder (Espeholt et al., 2018) for ``(N, H, W, C)`` uint8 frames, e.g. 64x64 Procgen.

    Example:
        >>> cnn = ImpalaCNN((64, 64, 3), channels=(4, 8), out_dim=16)
        >>> cnn(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)).shape
        torch.Size([2, 16])
    """

    def __init__(self, obs_shape: tuple[int, ...], channels: tuple[int, ...] = (16, 32, 32), out_dim: int = 256) -> None:
        super().__init__()
        h, w, c = obs_shape
        seqs = []
        for ch in channels:
            seqs.append(ConvSequence(c, ch))
            c, h, w = ch, (h + 1) // 2, (w + 1) // 2
        self.seqs = nn.Sequential(*seqs)
        self.fc = nn.Linear(c * h * w, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().permute(0, 3, 1, 2) / 255.0  # (N, C, H, W)
        x = self.seqs(x)  # (N, C', H', W')
        x = F.relu(x.flatten(1))  # (N, C' * H' * W')
        return F.relu(self.fc(x))


# ----------------------------------------------------------------------------- the model
@dataclass
class DTNetConfig:
    """The network's shape, filled in by :class:`~tt_agents.dt.DecisionTransformer` from its
    ``DTConfig`` (where the defaults and their reasons live) and the spaces."""

    obs_shape: tuple[int, ...]
    image: bool
    """Observations are uint8 ``(H, W, C)`` frames, encoded by the IMPALA CNN."""
    action_dim: int
    """Number of actions (discrete) or the flattened action size (continuous)."""
    head: str
    """``"categorical"`` (logits of discrete actions), ``"tanh"`` (bounded actions rescaled to
    [-1, 1]) or ``"linear"`` (unbounded continuous actions)."""
    context_len: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    max_timestep: int
    """Rows of the timestep embedding; later steps reuse the last row."""
    cnn_channels: tuple[int, ...]
    prompt: bool
    """Add a learned marker to prompt tokens (only prompted models have the parameter)."""

    @property
    def attn_window(self) -> int:
        """Each token attends to the last ``3K`` tokens: K steps of (R, s, a)."""
        return 3 * self.context_len


class DecisionTransformerNet(nn.Module):
    """Embeddings, the shared GPT and an action head.

    Inputs (a batch of ``B`` sequences of ``T`` steps):
        ``returns_to_go`` ``(B, T)`` (already divided by the return scale), ``observations``
        ``(B, T, *obs_shape)`` (normalised floats, or uint8 frames), ``actions`` ``(B, T, A)``
        floats in [-1, 1] or ``(B, T)`` integers, ``timesteps`` ``(B, T)`` integers, ``valid``
        ``(B, T)`` bools (false on padding).

    The head gives, per step, ``A`` logits (``"categorical"``) or an ``A``-dim action (``"tanh"``
    squashes it to [-1, 1]).

    Example:
        >>> cfg = DTNetConfig((3,), False, 2, "tanh", context_len=4, n_layer=1, n_head=1, n_embd=8, dropout=0.0,
        ...                   max_timestep=100, cnn_channels=(), prompt=False)
        >>> net = DecisionTransformerNet(cfg)
        >>> B, T = 2, 4
        >>> out = net(torch.zeros(B, T), torch.zeros(B, T, 3), torch.zeros(B, T, 2),
        ...           torch.arange(T).repeat(B, 1), torch.ones(B, T, dtype=torch.bool))
        >>> out.shape
        torch.Size([2, 4, 2])
    """

    def __init__(self, config: DTNetConfig) -> None:
        super().__init__()
        if config.head not in ("categorical", "tanh", "linear"):
            raise ValueError(f"head must be 'categorical', 'tanh' or 'linear', got {config.head!r}")
        self.config = config
        self.discrete = config.head == "categorical"
        C = config.n_embd
        self.gpt = GPT(
            GPTConfig(
                n_layer=config.n_layer, n_head=config.n_head, n_embd=C, dropout=config.dropout,
                attn_window=config.attn_window,
            )
        )
        self.embed_timestep = nn.Embedding(config.max_timestep, C)
        self.embed_return = nn.Linear(1, C)
        if config.image:
            self.embed_observation: nn.Module = ImpalaCNN(config.obs_shape, config.cnn_channels, C)
        else:
            self.embed_observation = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(config.obs_shape), C))
        if self.discrete:
            self.embed_action: nn.Module = nn.Embedding(config.action_dim, C)
        else:
            self.embed_action = nn.Linear(config.action_dim, C)
        self.embed_ln = nn.LayerNorm(C)
        self.head = nn.Linear(C, config.action_dim)
        for m in (self.embed_timestep, self.embed_return, self.embed_action, self.head):
            m.apply(init_weights)
        if not config.image:
            self.embed_observation.apply(init_weights)
        if config.prompt:
            self.prompt_marker = nn.Parameter(torch.randn(C) * 0.02)

    # ---- embeddings (they also run once per env step in :meth:`step`, with a handful of rows, where
    # ``nn.Module.__call__`` costs as much as the arithmetic: the modules' ``forward`` is called directly)
    def _time(self, timesteps: torch.Tensor) -> torch.Tensor:
        # steps past the table reuse its last entry (documented in DTConfig.max_timestep)
        return self.embed_timestep.forward(timesteps.long().clamp(0, self.config.max_timestep - 1))

    def _embed_observations(self, obs: torch.Tensor, n: int) -> torch.Tensor:
        return self.embed_observation.forward(obs.reshape(n, *self.config.obs_shape))  # (n, C)

    def _embed_actions(self, actions: torch.Tensor, lead: tuple[int, ...]) -> torch.Tensor:
        if self.discrete:
            return self.embed_action.forward(actions.long().reshape(lead))  # (*lead, C)
        return self.embed_action.forward(actions.float().reshape(*lead, self.config.action_dim))  # (*lead, C)

    def embed_steps(
        self, rtg: torch.Tensor, obs: torch.Tensor, actions: torch.Tensor, timesteps: torch.Tensor, prompt: bool = False
    ) -> torch.Tensor:
        """``(B, 3T, C)`` tokens ``R_0, s_0, a_0, R_1, ...`` of ``T`` steps, each plus its timestep's embedding."""
        B, T = timesteps.shape
        r = self.embed_return(rtg.float()[..., None])  # (B, T, C)
        s = self._embed_observations(obs, B * T).view(B, T, -1)  # (B, T, C)
        a = self._embed_actions(actions, (B, T))  # (B, T, C)
        x = torch.stack([r, s, a], dim=2) + self._time(timesteps)[:, :, None]  # (B, T, 3, C)
        x = x.reshape(B, 3 * T, -1)  # (B, 3T, C)
        if prompt:
            x = x + self.prompt_marker
        return self.embed_ln(x)

    # ---- training forward (and the full-recompute reference of the cached decode)
    def forward(
        self,
        returns_to_go: torch.Tensor,
        observations: torch.Tensor,
        actions: torch.Tensor,
        timesteps: torch.Tensor,
        valid: torch.Tensor,
        prompt: dict[str, torch.Tensor] | None = None,
        last_step_only: bool = False,
    ) -> torch.Tensor:
        """Action outputs ``(B, T, A)``, each read from its step's observation token.

        ``prompt``: the same five fields under the names ``returns_to_go``, ``observations``,
        ``actions``, ``timesteps``, ``valid``, each ``(B, P_steps, ...)``; prompted models only.
        ``last_step_only``: ``(B, A)``, the last step's output alone (the final block computes
        nothing else), what acting by recomputing needs.
        """
        B, T = timesteps.shape
        x = self.embed_steps(returns_to_go, observations, actions, timesteps)  # (B, 3T, C)
        valid3 = valid.repeat_interleave(3, dim=1)  # (B, 3T)
        if prompt is None:
            mask = episode_mask(None, valid3, 3 * T, self.config.attn_window)  # (B, 3T, 3T)
        else:
            p = self.embed_steps(
                prompt["returns_to_go"], prompt["observations"], prompt["actions"], prompt["timesteps"], prompt=True
            )  # (B, 3P, C)
            pvalid = prompt["valid"].repeat_interleave(3, dim=1)  # (B, 3P)
            P = pvalid.shape[1]
            top = torch.cat([prompt_mask(pvalid), pvalid.new_zeros(B, P, 3 * T)], dim=2)  # (B, 3P, 3P + 3T)
            bottom = episode_mask(pvalid, valid3, 3 * T, self.config.attn_window)  # (B, 3T, 3P + 3T)
            mask = torch.cat([top, bottom], dim=1)  # (B, 3P + 3T, 3P + 3T)
            x = torch.cat([p, x], dim=1)  # (B, 3P + 3T, C)
        if last_step_only:  # the last observation token and the action token after it
            h = self.gpt(x, mask=mask[:, None], n_out=2)  # (B, 2, C)
            return self.action_output(h[:, 0])  # (B, A)
        h = self.gpt(x, mask=mask[:, None])  # (B, 3P + 3T, C)
        h = h[:, -3 * T :].reshape(B, T, 3, -1)  # (B, T, 3, C)
        return self.action_output(h[:, :, 1])  # (B, T, A)

    def action_output(self, h: torch.Tensor) -> torch.Tensor:
        out = self.head.forward(h)
        return torch.tanh(out) if self.config.head == "tanh" else out

    # ---- inference
    def encode_prompt(self, prompt: dict[str, torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Keys and values of every layer for the prompt tokens, and their validity ``(N, 3P)``."""
        x = self.embed_steps(
            prompt["returns_to_go"], prompt["observations"], prompt["actions"], prompt["timesteps"], prompt=True
        )  # (N, 3P, C)
        pvalid = prompt["valid"].repeat_interleave(3, dim=1)  # (N, 3P)
        cache = KVCache(self.config.n_layer)
        self.gpt(x, cache=cache, mask=prompt_mask(pvalid)[:, None])
        return cache.k, cache.v, pvalid  # type: ignore[return-value]

    def new_cache(self, prefix_k: list[torch.Tensor] | None = None, prefix_v: list[torch.Tensor] | None = None) -> PrefixKVCache:
        return PrefixKVCache(self.config.n_layer, self.config.attn_window, prefix_k, prefix_v)

    def step(
        self,
        cache: PrefixKVCache,
        cached_valid: torch.Tensor,
        prompt_valid: torch.Tensor | None,
        prev_action: torch.Tensor,
        has_prev: torch.Tensor,
        rtg: torch.Tensor,
        obs: torch.Tensor,
        timestep: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step of ``B`` envs: append ``[a_{t-1}, R_t, s_t]``, return the action output.

        Args:
            cache: updated in place.
            cached_valid: ``(B, T_cached)`` which cached episode tokens belong to the current episodes.
            prompt_valid: ``(B, 3P)``, or ``None`` without a prompt.
            prev_action: ``(B, A)`` or ``(B,)``; ignored (and hidden) where ``has_prev`` is false.
            has_prev: ``(B,)`` bool, false on an episode's first step.
            rtg, timestep: ``(B,)``; obs: ``(B, *obs_shape)``.

        Returns:
            ``(B, A)`` action outputs, and the validity of the cached tokens after the append.
        """
        B = timestep.shape[0]
        a = self._embed_actions(prev_action, (B,))  # (B, C)
        r = self.embed_return.forward(rtg.float()[:, None])  # (B, C)
        s = self._embed_observations(obs, B)  # (B, C)
        # timesteps t - 1, t, t (a_{t-1} at t = 0 is hidden, and _time clamps it to 0)
        t = torch.stack([timestep - 1, timestep, timestep], dim=1)  # (B, 3)
        x = self.embed_ln.forward(torch.stack([a, r, s], dim=1) + self._time(t))  # (B, 3, C)
        valid = torch.cat([cached_valid, has_prev[:, None], has_prev.new_ones(B, 2)], dim=1)  # (B, T_cached + 3)
        mask = episode_mask(prompt_valid, valid, 3, self.config.attn_window)  # (B, 3, 3P + T_cached + 3)
        h = self.gpt(x, cache=cache, mask=mask[:, None], n_out=1)  # (B, 1, C): s_t's hidden state
        return self.action_output(h[:, 0]), valid[:, -self.config.attn_window :]

    def decode_step(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        valid: torch.Tensor,
        band: torch.Tensor,
        own: torch.Tensor,
        slots: torch.Tensor,
        is_ring: torch.Tensor,
        phase: torch.Tensor,
        prev_action: torch.Tensor,
        has_prev: torch.Tensor,
        rtg: torch.Tensor,
        obs: torch.Tensor,
        timestep: torch.Tensor,
        starts: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` as a function of fixed-shape tensors (the buffers and tables of a :class:`DTStepCache`).

        ``k``, ``v`` are written in place; returns the action outputs ``(B, A)`` and the new ``valid``.
        Every shape is fixed and nothing branches on tensor values, so ``torch.compile`` takes it whole.
        """
        B = timestep.shape[0]
        a = self._embed_actions(prev_action, (B,))  # (B, C)
        r = self.embed_return.forward(rtg.float()[:, None])  # (B, C)
        s = self._embed_observations(obs, B)  # (B, C)
        t = torch.stack([timestep - 1, timestep, timestep], dim=1)  # (B, 3)
        x = self.embed_ln.forward(torch.stack([a, r, s], dim=1) + self._time(t))  # (B, 3, C)
        slot = slots[phase][0]  # (3,); phase is (1,): indexing by it keeps the shapes static
        valid = valid & ~(starts[:, None] & is_ring[None])  # restarting envs forget their episode
        new = torch.stack([has_prev, torch.ones_like(has_prev), torch.ones_like(has_prev)], dim=1)  # (B, 3)
        valid = valid.index_copy(1, slot, new)  # (B, S)
        see = (band[phase] & valid[:, None, :]) | own[phase]  # (B, 3, S): always itself
        mask = torch.zeros(see.shape, dtype=x.dtype, device=x.device).masked_fill_(~see, float("-inf"))
        h = self.gpt(x, cache=SlotKVCache(k, v, slot, mask[:, None]), n_out=1)  # (B, 1, C): s_t's hidden state
        return self.action_output(h[:, 0]), valid


# ----------------------------------------------------------------------------- the fixed-shape step
class DTStepCache:
    """A DT decode cache of fixed shape, for ``B`` envs: prompt keys then a ring of ``3(K + 1)`` slots.

    ``k``, ``v``: ``(n_layer, B, n_head, 3P + 3(K + 1), head_dim)`` in ``dtype`` (float32, or
    bfloat16 / float16 to halve the bytes read per step: not exact, see benchmarks.md);
    ``valid`` ``(B, slots)``: which slots hold a token of the env's current episode (or of its
    prompt). Step ``s`` writes its three tokens at ring slots ``3 (s mod (K + 1)) + 0, 1, 2``;
    the tables ``band`` and ``own`` ``(K + 1, 3, slots)`` say, for each phase, which slots are in
    each new token's window and which slot is its own. ``compile``: run
    :meth:`DecisionTransformerNet.decode_step` through ``torch.compile`` (the first call compiles;
    where compilation is unavailable the eager step runs, with one warning). ``native``: run the
    step as one fused C function (:mod:`tt_agents.models.native`) where it applies (vector
    observations, float32 on a CPU, not with ``compile``); elsewhere, or where it cannot be built,
    the torch step runs.

    Example:
        >>> cfg = DTNetConfig((3,), False, 2, "tanh", context_len=2, n_layer=1, n_head=1, n_embd=8, dropout=0.0,
        ...                   max_timestep=10, cnn_channels=(), prompt=False)
        >>> net = DecisionTransformerNet(cfg).eval()
        >>> cache = DTStepCache(net, n_envs=2)
        >>> out = cache.step(torch.zeros(2, 2), torch.zeros(2, dtype=torch.bool), torch.zeros(2), torch.zeros(2, 3),
        ...                  torch.zeros(2, dtype=torch.long), torch.ones(2, dtype=torch.bool))
        >>> out.shape, cache.k.shape
        (torch.Size([2, 2]), torch.Size([1, 2, 1, 9, 8]))
    """

    def __init__(
        self,
        net: DecisionTransformerNet,
        n_envs: int,
        prefix_k: list[torch.Tensor] | None = None,
        prefix_v: list[torch.Tensor] | None = None,
        prompt_valid: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        native: bool = False,
    ) -> None:
        c = net.config
        p = net.head.weight
        P = 0 if prompt_valid is None else int(prompt_valid.shape[1])
        R = 3 * (c.context_len + 1)  # ring slots: the window (3K) and the step being written
        S = P + R
        H = c.n_head
        self.net = net
        self.k = torch.zeros(c.n_layer, n_envs, H, S, c.n_embd // H, dtype=dtype, device=p.device)
        self.v = torch.zeros_like(self.k)
        self.valid = torch.zeros(n_envs, S, dtype=torch.bool, device=p.device)
        if prompt_valid is not None and prefix_k is not None and prefix_v is not None:
            for layer in range(c.n_layer):
                self.k[layer, :, :, :P] = prefix_k[layer]  # (B, n_head, 3P, head_dim)
                self.v[layer, :, :, :P] = prefix_v[layer]
            self.valid[:, :P] = prompt_valid
        # per phase f: new token i at ring offset o = 3f + i; ring slot j (offset (j - 3f) mod R) holds a
        # token of its window when that offset is <= i (this step's tokens) or > i + 3 (the last K steps)
        phase = torch.arange(c.context_len + 1, device=p.device)[:, None, None]  # (F, 1, 1)
        i = torch.arange(3, device=p.device)[None, :, None]  # (1, 3, 1)
        j = torch.arange(R, device=p.device)[None, None, :]  # (1, 1, R)
        offset = torch.remainder(j - 3 * phase, R)  # (F, 1, R)
        ring = (offset <= i) | (offset > i + 3)  # (F, 3, R)
        self.band = torch.cat([torch.ones(len(ring), 3, P, dtype=torch.bool, device=p.device), ring], dim=2)
        self.own = torch.cat([torch.zeros(len(ring), 3, P, dtype=torch.bool, device=p.device), offset == i], dim=2)
        self.slots = P + 3 * phase[:, 0, 0, None] + torch.arange(3, device=p.device)  # (F, 3)
        self.is_ring = torch.arange(S, device=p.device) >= P  # (S,)
        # (1,) each, in storages of their own (views of one tensor would differ in storage offset: a recompile each)
        self._phases = [torch.tensor([f], device=p.device) for f in range(c.context_len + 1)]
        self.steps = 0
        self._step = maybe_compile(net.decode_step, "dt-step", p.device) if compile else net.decode_step
        self._native = None
        if native and not compile and native_dt.dt_step_supported(net, dtype):
            lib = native_dt.load()
            if lib is not None:
                self._native = native_dt.NativeDTStep(lib, net, self, n_envs)

    def step(
        self,
        prev_action: torch.Tensor,
        has_prev: torch.Tensor,
        rtg: torch.Tensor,
        obs: torch.Tensor,
        timestep: torch.Tensor,
        starts: torch.Tensor,
    ) -> torch.Tensor:
        """One step of every env (as :meth:`DecisionTransformerNet.step`); ``starts`` ``(B,)``: envs
        whose episode starts here (their cached episode tokens are hidden). Returns the action outputs."""
        f = self.steps % (self.net.config.context_len + 1)
        if self._native is not None and not self.net.training:  # (training: dropout, the torch step's)
            out = self._native(prev_action, has_prev, rtg, obs, timestep, starts, f)
            self.steps += 1
            return out
        phase = self._phases[f]  # (1,)
        out, self.valid = self._step(
            self.k, self.v, self.valid, self.band, self.own, self.slots, self.is_ring, phase,
            prev_action, has_prev, rtg, obs, timestep, starts,
        )
        self.steps += 1
        return out
