"""The trajectory autoencoder's networks: latent trajectories that are sparse in time.

Per step ``t`` of a trajectory of (state, action) pairs, an encoder gives ``alpha_t``, the
probability that a new latent transition begins at ``t``, and a candidate latent ``g_t``. The latent
the decoder sees is *held* between transitions:

    held_t = alpha_t g_t + (1 - alpha_t) held_{t-1},  i.e.  held_t = sum_{j<=t} alpha_j g_j prod_{k=j+1..t} (1 - alpha_k)

(``alpha_0 = 1``: a window starts a segment). Read top to bottom: the hold in its three training
forms and the hard one used at inference, the encoder, the decoder, the latent dynamics, the prior,
then the whole network.

- ``soft``: the hold above with the encoder's alphas (a differentiable cumulative product).
- ``gumbel``: binary transitions sampled with a relaxed Bernoulli (logistic noise, temperature
  ``tau``), hard in the forward pass, the relaxed gradient in the backward (straight-through), as
  VTA (Kim et al. 2019) samples its boundaries.
- ``reinforce``: binary transitions sampled from Bernoulli(alpha) and held hard; alpha learns by the
  score function (REINFORCE) of the per-trajectory reconstruction loss, with a leave-one-out batch
  baseline (optional: the reference's later version had none).
- inference: ``alpha_t > 0.5`` starts a segment whose latent is ``g_t``.

The encoder is a transformer over the steps, bidirectional or causal, with *local* attention (each
step sees the steps within ``window`` of it) and a 1-d convolution in front for the order of
neighbouring steps, so one network reads a 64-step training window and a 2000-step episode alike
(no absolute positions to extrapolate). It is ``torch.nn.TransformerEncoder``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from tt_agents.models.bc import MLP, NatureCNN

__all__ = [
    "soft_hold",
    "hard_hold",
    "sample_gumbel_transitions",
    "sparsity_prior",
    "StepEncoder",
    "TrajectoryEncoder",
    "ActionDecoder",
    "LatentDynamics",
    "SwitchHead",
    "SegmentAutoencoder",
    "SwitchPolicy",
    "TrajectoryAutoencoderNet",
]

_EPS = 1e-6


# ----------------------------------------------------------------------------------------------
# the hold


def soft_hold(alpha: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``held_t = sum_{j<=t} alpha_j g_j prod_{k=j+1..t} (1 - alpha_k)`` for ``(B, T)`` alphas, ``(B, T, D)`` latents.

    Computed as a lower-triangular ``(T, T)`` weight matrix from cumulative sums of ``log(1 - alpha)``
    (one batched matmul instead of a T-step loop; exact up to alphas clamped to ``1 - 1e-6``). Pass
    ``alpha[:, 0] = 1`` so that every row's weights sum to one.
    """
    T = alpha.shape[1]
    log_keep = torch.log1p(-alpha.clamp(max=1 - _EPS))  # log(1 - alpha_k)
    c = torch.cumsum(log_keep, dim=1)  # C_t = sum_{k<=t} log(1 - alpha_k)
    diff = c[:, :, None] - c[:, None, :]  # (B, t, j): C_t - C_j = sum_{k=j+1..t} log(1 - alpha_k)
    lower = torch.ones(T, T, dtype=torch.bool, device=alpha.device).tril()
    w = torch.where(lower, diff, torch.full_like(diff, -math.inf)).exp() * alpha[:, None, :]
    return w @ g


def hard_hold(starts: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Hold ``g`` at each segment start: ``held_t = g_s`` with ``s`` the last start ``<= t``.

    ``starts`` is ``(B, T)`` bool (``starts[:, 0]`` is treated as true).
    """
    B, T = starts.shape
    starts = starts.clone()
    starts[:, 0] = True
    idx = torch.arange(T, device=g.device).expand(B, T)
    last = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values  # index of the segment's start
    return torch.gather(g, 1, last[..., None].expand(-1, -1, g.shape[-1]))


def sample_gumbel_transitions(logits: torch.Tensor, tau: float, generator: torch.Generator | None = None):
    """Binary transitions from a relaxed Bernoulli: hard values forward, the relaxed gradient backward.

    Returns ``(b, soft)``: ``b`` in {0, 1} (straight-through) and the relaxed sample.
    """
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    u = u.clamp(_EPS, 1 - _EPS)
    soft = torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / tau)
    hard = (soft > 0.5).to(soft.dtype)
    return hard + (soft - soft.detach()), soft  # exactly 0 or 1 forward (x - x == 0), the relaxed gradient back


def sparsity_prior(alpha: torch.Tensor, mask: torch.Tensor, target_rate: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's prior over transition probabilities: ``(binary, rate)`` terms.

    ``binary = mean alpha (1 - alpha)`` pushes alphas to 0 or 1; ``rate = (mean alpha - target)^2``
    pulls the fraction of steps that begin a transition to ``target_rate``. Means over the ``mask``
    (the steps that count: real steps, not a window's forced first one).
    """
    m = mask.to(alpha.dtype)
    n = m.sum().clamp(min=1)
    binary = (alpha * (1 - alpha) * m).sum() / n
    rate = ((alpha * m).sum() / n - target_rate) ** 2
    return binary, rate


# ----------------------------------------------------------------------------------------------
# parts


def _per_step(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply an MLP (which flattens all but the first dimension) to ``(..., F)`` features."""
    out = mlp(x.reshape(-1, x.shape[-1]))
    return out.reshape(*x.shape[:-1], out.shape[-1])


class StepEncoder(nn.Module):
    """A state (vector: MLP on the normalized state; image: Nature CNN) to ``out_dim`` features."""

    def __init__(self, obs_shape: tuple[int, ...], image: bool, out_dim: int, hidden: int) -> None:
        super().__init__()
        if image:
            self.net: nn.Module = NatureCNN(obs_shape, out_dim)  # type: ignore[arg-type]
        else:
            self.net = MLP(math.prod(obs_shape), (hidden,), out_dim)
        self.out_dim = out_dim

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """``(B, T, *obs_shape)`` -> ``(B, T, out_dim)``."""
        B, T = obs.shape[:2]
        return self.net(obs.reshape(B * T, *obs.shape[2:])).reshape(B, T, -1)


class TrajectoryEncoder(nn.Module):
    """Per-step transition logits and candidate latents from the (state, action) sequence.

    Args:
        in_dim: features per step (state features + action features).
        d_model, n_layers, n_heads: the transformer's sizes.
        latent_dim: size of the latents (``tanh``-bounded, so holding and blending keep their scale).
        window: each step attends to the steps within ``window`` of it.
        causal: see only the past (a step's alpha from steps ``<= t``) instead of both sides.
        conv_kernel: width of the convolution over neighbouring steps in front of the transformer.
    """

    def __init__(self, in_dim: int, d_model: int, n_layers: int, n_heads: int, latent_dim: int, window: int,
                 causal: bool, conv_kernel: int = 3, dropout: float = 0.0) -> None:
        super().__init__()
        self.causal, self.window, self.n_heads, self.k = causal, window, n_heads, conv_kernel
        self.inp = nn.Linear(in_dim, d_model)
        self.conv = nn.Conv1d(d_model, d_model, conv_kernel)
        layer = nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d_model)
        self.alpha_head = nn.Linear(d_model, 1)
        self.latent_head = nn.Linear(d_model, latent_dim)

    def attention_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``(B * heads, T, T)`` additive mask: local band (and causal), padded keys hidden, the diagonal always seen."""
        B, T = mask.shape
        i = torch.arange(T, device=mask.device)
        d = i[:, None] - i[None, :]  # query - key
        band = d.abs() <= self.window
        if self.causal:
            band = band & (d >= 0)
        allowed = band[None] & mask[:, None, :]
        allowed = allowed | torch.eye(T, dtype=torch.bool, device=mask.device)[None]
        out = torch.zeros(allowed.shape, device=mask.device).masked_fill(~allowed, -math.inf)
        return out.repeat_interleave(self.n_heads, dim=0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, T, in_dim)``, ``mask`` ``(B, T)`` bool -> ``(logits (B, T), latents (B, T, latent_dim))``."""
        h = self.inp(x) * mask[..., None]
        pad = (self.k - 1, 0) if self.causal else ((self.k - 1) // 2, self.k // 2)
        h = h + self.conv(F.pad(h.transpose(1, 2), pad)).transpose(1, 2)
        h = self.norm(self.transformer(h, mask=self.attention_mask(mask)))
        return self.alpha_head(h).squeeze(-1), torch.tanh(self.latent_head(h))


class ActionDecoder(nn.Module):
    """The low-level policy: (state features, held latent) -> action (logits, or a tanh action in [-1, 1])."""

    def __init__(self, state_dim: int, latent_dim: int, hidden: tuple[int, ...], n_out: int, discrete: bool) -> None:
        super().__init__()
        self.net = MLP(state_dim + latent_dim, hidden, n_out)
        self.discrete = discrete

    def forward(self, state: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
        out = _per_step(self.net, torch.cat([state, latent], -1))
        return out if self.discrete else torch.tanh(out)


class LatentDynamics(nn.Module):
    """Latent transitions: (previous segment's latent, state where the new one begins) -> the new latent.

    At an episode's first step the previous latent is a learned start vector. Also the high-level
    policy's choice of a new latent at act time.
    """

    def __init__(self, state_dim: int, latent_dim: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.start = nn.Parameter(torch.zeros(latent_dim))
        self.net = MLP(state_dim + latent_dim, hidden, latent_dim)

    def forward(self, prev: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return torch.tanh(_per_step(self.net, torch.cat([prev, state], -1)))


class SwitchHead(nn.Module):
    """The high-level policy's termination: (state features, held latent, steps since it began) -> logit of a new one."""

    def __init__(self, state_dim: int, latent_dim: int, hidden: tuple[int, ...], horizon: float) -> None:
        super().__init__()
        self.horizon = horizon
        self.net = MLP(state_dim + latent_dim + 1, hidden, 1)

    def forward(self, state: torch.Tensor, latent: torch.Tensor, since: torch.Tensor) -> torch.Tensor:
        age = (since.to(state.dtype) / self.horizon)[..., None]
        return _per_step(self.net, torch.cat([state, latent, age], -1)).squeeze(-1)


# ----------------------------------------------------------------------------------------------
# the whole network


class SegmentAutoencoder(nn.Module):
    """The ``autoencoder`` stage's network: state features, encoder, hold, decoder and latent dynamics.

    ``forward`` runs them all (so that the stage trains correctly under ``DistributedDataParallel``)
    and returns what the losses need.
    """

    def __init__(self, obs_shape: tuple[int, ...], image: bool, action_in: int, n_out: int, discrete: bool,
                 latent_dim: int, d_model: int, n_layers: int, n_heads: int, window: int, causal: bool,
                 conv_kernel: int, hidden: tuple[int, ...], predict_next_state: bool) -> None:
        super().__init__()
        h = hidden[-1] if hidden else 64
        self.state = StepEncoder(obs_shape, image, d_model, h)
        self.encoder = TrajectoryEncoder(d_model + action_in, d_model, n_layers, n_heads, latent_dim, window, causal,
                                         conv_kernel)
        self.decoder = ActionDecoder(d_model, latent_dim, hidden, n_out, discrete)
        self.dynamics = LatentDynamics(d_model, latent_dim, hidden)
        self.next_state = MLP(d_model + latent_dim + action_in, hidden, math.prod(obs_shape)) if predict_next_state else None

    def encode(self, obs: torch.Tensor, act_features: torch.Tensor, mask: torch.Tensor):
        """``(state features (B, T, d), logits (B, T), latents (B, T, D))``."""
        s = self.state(obs)
        logits, g = self.encoder(torch.cat([s, act_features], -1), mask)
        return s, logits, g

    def forward(self, obs: torch.Tensor, act_features: torch.Tensor, mask: torch.Tensor, episode_start: torch.Tensor,
                hold: str, tau: float = 0.5, fixed: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """One training pass over windows.

        Args:
            obs, act_features, mask: ``(B, T, ...)`` inputs (``mask``: real steps).
            episode_start: ``(B,)`` bool, the window begins at its episode's first step.
            hold: ``"soft"``, ``"gumbel"`` or ``"reinforce"`` (see the module's docstring).
            fixed: ``(B, T)`` bool transitions to use instead of the encoder's (the fixed-stride and
                every-step baselines); the alphas are then not used.

        Returns:
            ``alpha`` (the encoder's probabilities), ``b`` (the transitions held: alphas, straight-through
            or sampled bits; 1 at the window's first step), ``held``, ``decoded`` (the decoder's output),
            ``dyn_pred`` / ``dyn_target`` (latent dynamics at hard transitions, detached inputs and targets)
            and ``next_pred`` (normalized next states, when predicted).
        """
        B, T = mask.shape
        s, logits, g = self.encode(obs, act_features, mask)
        alpha = torch.sigmoid(logits.float())
        first = torch.zeros(B, T, dtype=torch.bool, device=mask.device)
        first[:, 0] = True
        one = torch.ones_like(alpha)
        if fixed is not None:
            b = (fixed | first).to(alpha.dtype)
            held = hard_hold(b.bool(), g)
        elif hold == "soft":
            b = torch.where(first, one, alpha)
            held = soft_hold(b, g)
        elif hold == "gumbel":
            b = torch.where(first, one, sample_gumbel_transitions(logits.float(), tau)[0])
            held = soft_hold(b, g)
        elif hold == "reinforce":
            b = torch.where(first, one, torch.bernoulli(alpha.detach()))
            held = hard_hold(b.bool(), g)
        else:
            raise ValueError(f"hold must be 'soft', 'gumbel' or 'reinforce', got {hold!r}")
        out = {"alpha": alpha, "b": b, "held": held, "decoded": self.decoder(s, held)}
        # latent dynamics across hard transitions (and from the start vector at an episode's first step)
        hard = ((alpha.detach() > 0.5) if fixed is None else fixed) & mask & ~first
        held_hard = hard_hold(hard | first, g.detach())
        prev = torch.cat([self.dynamics.start.expand(B, 1, -1), held_hard[:, :-1]], 1)
        use = (hard | (first & episode_start[:, None])) & mask
        out["dyn_pred"] = self.dynamics(prev[use], s.detach()[use])
        out["dyn_target"] = g.detach()[use]
        if self.next_state is not None:
            out["next_pred"] = _per_step(self.next_state, torch.cat([s, held, act_features], -1))
        return out


class SwitchPolicy(nn.Module):
    """The ``policy`` stage's network: its own state features and the switch head."""

    def __init__(self, obs_shape: tuple[int, ...], image: bool, latent_dim: int, d_model: int,
                 hidden: tuple[int, ...], horizon: float) -> None:
        super().__init__()
        self.state = StepEncoder(obs_shape, image, d_model, hidden[-1] if hidden else 64)
        self.switch = SwitchHead(d_model, latent_dim, hidden, horizon)

    def forward(self, obs: torch.Tensor, latent: torch.Tensor, age: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, T)`` that a new segment begins, for ``obs`` ``(B, T, ...)``, the latent held before and its age."""
        return self.switch(self.state(obs), latent, age)


class TrajectoryAutoencoderNet(nn.Module):
    """The whole network of :class:`tt_agents.TrajectoryAutoencoder`: ``autoencoder`` and ``policy`` (its two stages)."""

    def __init__(self, obs_shape: tuple[int, ...], image: bool, action_in: int, n_out: int, discrete: bool,
                 latent_dim: int, d_model: int, n_layers: int, n_heads: int, window: int, causal: bool,
                 conv_kernel: int, hidden: tuple[int, ...], predict_next_state: bool, horizon: float) -> None:
        super().__init__()
        self.discrete = discrete
        self.action_in = action_in
        self.autoencoder = SegmentAutoencoder(obs_shape, image, action_in, n_out, discrete, latent_dim, d_model,
                                              n_layers, n_heads, window, causal, conv_kernel, hidden,
                                              predict_next_state)
        self.policy = SwitchPolicy(obs_shape, image, latent_dim, d_model, hidden, horizon)

    def action_features(self, actions: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` ints -> one-hot; ``(B, T, A)`` scaled actions as they are."""
        if self.discrete:
            return F.one_hot(actions.long(), self.action_in).float()
        return actions.float()

    def encode(self, obs: torch.Tensor, actions: torch.Tensor, mask: torch.Tensor):
        """``(state features, logits, latents)`` for normalized ``obs`` ``(B, T, ...)`` and network-ready ``actions``."""
        return self.autoencoder.encode(obs, self.action_features(actions), mask)
