"""World Models (Ha & Schmidhuber 2018) as torch modules, parts before the whole: V, the mixture head, M, C.

- :class:`ConvVAE` (V): 64x64 frames -> a 32-d latent. Encoder: 4 convs (32/64/128/256 channels,
  kernel 4, stride 2); decoder: fc 1024, then 4 transposed convs (kernels 5, 5, 6, 6). Loss:
  per-frame summed squared error plus KL, with the paper's KL tolerance (free bits).
- :func:`mixture_log_prob`: the log-density of a diagonal Gaussian mixture, computed with
  log-softmax and log-sum-exp on log-sigmas bounded by :func:`bound_log_sigma` (the widely used
  PyTorch port exponentiated densities first; its losses went negative or exploded).
- :class:`MixtureHead`: memory features -> per-dimension mixture weights, means and bounded
  log-sigmas (``(..., latent, K)`` each: every latent dimension has its own K weights, unlike the
  port, which shares one set across the 32 dimensions), a reward and a done logit.
- M, three interchangeable kinds, each mapping ``(z_t, a_t)`` sequences to the mixture over
  ``z_{t+1}``, with a ``step`` for one step at a time (acting, dream rollouts):

  * :class:`MDNRNN`: an LSTM (256 units in the paper) with the mixture head.
  * :class:`CausalTransformerMemory`: ``(z, a) -> linear d_model -> causal transformer (d_model 32,
    8 heads, 3 layers) -> mixture head``, learned positions over a window of ``context`` steps.
  * :class:`TraDEMemory`: the same transformer whose positions come from a GRU over the
    inputs (TraDE, Fakoor et al. 2020), trained by *penalized* maximum likelihood: NLL plus
    ``mmd_weight`` times the squared MMD (Gaussian kernels at several bandwidths) between samples
    of the model's next-latent mixture and the data's next latents, over a batch. Our choice for
    the samples: the component is drawn from the mixture weights (no gradient), the Gaussian part
    is reparameterized, so the MMD term trains means and sigmas and the NLL term alone trains the
    weights. The public TraDE fork implements the GRU positions only, without the MMD term.

  The transformer kinds act over a left-aligned window of the last ``context`` inputs (a row
  holding ``n`` steps reads its features at position ``n - 1``; causality makes the empty slots
  after it irrelevant), so a fresh row and a reset row are the same computation.
- :class:`Controller` (C): one linear layer from ``[z, h]`` to the actions (867 parameters for
  CarRacing's 32 + 256 -> 3), optionally with one hidden layer; :meth:`Controller.batched` runs a
  whole population of flat parameter vectors at once.
- :class:`WorldModel`: V, M and C in one module, as the agent checkpoints them.

Example:
    >>> import torch
    >>> m = MDNRNN(latent=4, action_dim=2, hidden=8, n_mixtures=3)
    >>> out, state = m(torch.zeros(2, 5, 4), torch.zeros(2, 5, 2))
    >>> out.logit_pi.shape, out.features.shape, state[0].shape
    (torch.Size([2, 5, 4, 3]), torch.Size([2, 5, 8]), torch.Size([1, 2, 8]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "ConvVAE",
    "Controller",
    "CausalTransformerMemory",
    "MDNRNN",
    "MEMORY_KINDS",
    "MixtureHead",
    "MixtureOutput",
    "TraDEMemory",
    "WorldModel",
    "bound_log_sigma",
    "memory_loss",
    "mixture_log_prob",
    "mmd2",
    "sample_mixture",
    "vae_loss",
]

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -7.0, 2.0
"""Bounds of the mixture's log-sigmas: sigma in [9e-4, 7.4]. Latents are N(0, 1)-ish, so 7.4 is
wide enough; the floor keeps the density of a collapsing component finite (the port's exploding
losses came from unbounded sigmas)."""

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


# ---------------------------------------------------------------------------------------- V
class ConvVAE(nn.Module):
    """The convolutional VAE of World Models, on ``(B, C, 64, 64)`` frames in [0, 1].

    Args:
        channels: frame channels (3 for RGB).
        latent: size of z (32 in the paper).
        widths: the encoder's 4 conv widths (32/64/128/256 in the paper); the decoder mirrors them,
            starting from an fc layer of ``4 * widths[-1]`` units (1024 in the paper).
    """

    def __init__(self, channels: int = 3, latent: int = 32, widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ConvVAE takes 4 conv widths (for 64x64 frames), got {widths}")
        self.channels, self.latent = channels, latent
        w = list(widths)
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, w[0], 4, 2), nn.ReLU(),  # 64 -> 31
            nn.Conv2d(w[0], w[1], 4, 2), nn.ReLU(),  # -> 14
            nn.Conv2d(w[1], w[2], 4, 2), nn.ReLU(),  # -> 6
            nn.Conv2d(w[2], w[3], 4, 2), nn.ReLU(),  # -> 2
        )
        flat = 4 * w[3]  # (w3, 2, 2) flattened: 1024 in the paper
        self.mu = nn.Linear(flat, latent)
        self.logvar = nn.Linear(flat, latent)
        self.fc = nn.Linear(latent, flat)
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(flat, w[2], 5, 2), nn.ReLU(),  # 1 -> 5
            nn.ConvTranspose2d(w[2], w[1], 5, 2), nn.ReLU(),  # -> 13
            nn.ConvTranspose2d(w[1], w[0], 6, 2), nn.ReLU(),  # -> 30
            nn.ConvTranspose2d(w[0], channels, 6, 2), nn.Sigmoid(),  # -> 64
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames ``(B, C, 64, 64)`` -> ``(mu, logvar)``, each ``(B, latent)``."""
        h = self.encoder(x).flatten(1)  # (B, 4 * w3)
        return self.mu(h), self.logvar(h).clamp(-10.0, 10.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``(B, latent)`` -> frames ``(B, C, 64, 64)`` in [0, 1]."""
        h = self.fc(z)[:, :, None, None]  # (B, 4 * w3, 1, 1)
        return self.decoder(h)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``(reconstruction, mu, logvar)``; ``noise`` (``(B, latent)``, default fresh N(0, 1)) draws z."""
        mu, logvar = self.encode(x)
        eps = torch.randn_like(mu) if noise is None else noise
        z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z), mu, logvar

    def loss(self, x: torch.Tensor, noise: torch.Tensor | None = None,
             kl_tolerance: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
        """:func:`vae_loss` of a forward pass on ``x``."""
        return vae_loss(x, *self(x, noise), kl_tolerance=kl_tolerance)


def vae_loss(x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
             kl_tolerance: float = 0.5) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed squared error per frame plus KL per frame, the KL floored at ``kl_tolerance * latent`` (free bits)."""
    rec = (recon - x).pow(2).flatten(1).sum(1).mean()
    kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(1)).mean()
    kl_floored = torch.clamp(kl, min=kl_tolerance * mu.shape[1])
    return rec + kl_floored, {"reconstruction": float(rec.detach()), "kl": float(kl.detach())}


# ------------------------------------------------------------------------------- the mixture
def bound_log_sigma(raw: torch.Tensor, low: float = LOG_SIGMA_MIN, high: float = LOG_SIGMA_MAX) -> torch.Tensor:
    """Squash raw outputs into ``[low, high]`` smoothly (a scaled tanh: gradients never vanish at a hard clamp).

    Example:
        >>> bound_log_sigma(torch.tensor([-1e9, 0.0, 1e9])).tolist()
        [-7.0, -2.5, 2.0]
    """
    mid, half = 0.5 * (high + low), 0.5 * (high - low)
    return mid + half * torch.tanh(raw / half)


def mixture_log_prob(x: torch.Tensor, logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Log-density of ``x`` under independent per-dimension Gaussian mixtures, in log space throughout.

    Args:
        x: ``(..., D)``.
        logit_pi, mu, log_sigma: ``(..., D, K)``: unnormalized log-weights, means and log-sigmas.

    Returns:
        ``(..., D)``: each dimension's log-density (sum over the last axis for the joint).

    Example:
        >>> x = torch.zeros(1, 1)
        >>> lp = mixture_log_prob(x, torch.zeros(1, 1, 2), torch.zeros(1, 1, 2), torch.zeros(1, 1, 2))
        >>> round(float(lp), 4)  # two equal standard normals at 0: -log(sqrt(2 pi))
        -0.9189
    """
    z = (x.unsqueeze(-1) - mu) * torch.exp(-log_sigma)  # (..., D, K) standardized distance
    log_normal = -0.5 * z.pow(2) - log_sigma - _HALF_LOG_2PI
    return torch.logsumexp(F.log_softmax(logit_pi, dim=-1) + log_normal, dim=-1)


def sample_mixture(logit_pi: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor, temperature: float = 1.0,
                   uniform: torch.Tensor | None = None, normal: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """One sample ``(..., D)`` per dimension, with the paper's temperature (weights ``softmax(logit / tau)``,
    sigmas times ``sqrt(tau)``). ``uniform`` and ``normal`` (``(..., D)`` each) fix the randomness (else drawn
    from ``generator``): the component is picked by inverse CDF of ``uniform``, so a sample is reproducible
    whatever the batch it is part of.
    """
    tau = max(float(temperature), 1e-6)
    if uniform is None:
        uniform = torch.rand(mu.shape[:-1], generator=generator, device=mu.device, dtype=mu.dtype)
    if normal is None:
        normal = torch.randn(mu.shape[:-1], generator=generator, device=mu.device, dtype=mu.dtype)
    cdf = torch.softmax(logit_pi / tau, dim=-1).cumsum(-1)  # (..., D, K)
    k = (cdf < uniform.unsqueeze(-1)).sum(-1).clamp(max=mu.shape[-1] - 1)  # (..., D)
    mu_k = mu.gather(-1, k.unsqueeze(-1)).squeeze(-1)
    sigma_k = log_sigma.gather(-1, k.unsqueeze(-1)).squeeze(-1).exp() * math.sqrt(tau)
    return mu_k + sigma_k * normal


@dataclass
class MixtureOutput:
    """What M predicts at every step: the next latent's mixture, the reward, the done logit, M's features."""

    logit_pi: torch.Tensor
    """``(B, T, D, K)``: per-dimension mixture logits."""
    mu: torch.Tensor
    """``(B, T, D, K)``."""
    log_sigma: torch.Tensor
    """``(B, T, D, K)``, bounded (see :func:`bound_log_sigma`)."""
    reward: torch.Tensor
    """``(B, T)``."""
    done_logit: torch.Tensor
    """``(B, T)``."""
    features: torch.Tensor
    """``(B, T, H)``: M's hidden features (the ``h`` C reads)."""


class MixtureHead(nn.Module):
    """Features ``(..., H)`` -> per-dimension mixture over the next latent, reward and done logit."""

    def __init__(self, features: int, latent: int, n_mixtures: int) -> None:
        super().__init__()
        self.latent, self.k = latent, n_mixtures
        self.proj = nn.Linear(features, 3 * latent * n_mixtures + 2)

    def forward(self, h: torch.Tensor) -> MixtureOutput:
        out = self.proj(h)
        D, K = self.latent, self.k
        mix = out[..., : 3 * D * K].unflatten(-1, (3, D, K))  # (..., 3, D, K)
        return MixtureOutput(mix[..., 0, :, :], mix[..., 1, :, :], bound_log_sigma(mix[..., 2, :, :]),
                             out[..., -2], out[..., -1], h)


# ---------------------------------------------------------------------------------------- M
class MDNRNN(nn.Module):
    """LSTM over ``[z_t, a_t]`` with a :class:`MixtureHead` for ``z_{t+1}``; state ``(h, c)``, each ``(1, B, H)``."""

    def __init__(self, latent: int = 32, action_dim: int = 3, hidden: int = 256, n_mixtures: int = 5) -> None:
        super().__init__()
        self.latent, self.action_dim, self.hidden = latent, action_dim, hidden
        self.feature_dim = hidden
        self.rnn = nn.LSTM(latent + action_dim, hidden, batch_first=True)
        self.head = MixtureHead(hidden, latent, n_mixtures)

    def forward(self, z: torch.Tensor, a: torch.Tensor, state: Any = None) -> tuple[MixtureOutput, Any]:
        """``z`` ``(B, T, D)``, ``a`` ``(B, T, A)`` -> the mixture at every step and the LSTM state after the last."""
        h, state = self.rnn(torch.cat([z, a], -1), state)  # (B, T, H)
        return self.head(h), state

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        zeros = torch.zeros(1, batch, self.hidden, device=device)
        return zeros, zeros.clone()

    def features_of(self, state: Any) -> torch.Tensor:
        """The ``h`` C reads from a state: ``(B, H)``."""
        return state[0][0]

    def step(self, z: torch.Tensor, a: torch.Tensor, state: Any) -> tuple[MixtureOutput, Any]:
        """One step: ``z`` ``(B, D)``, ``a`` ``(B, A)`` -> the mixture over ``z_{t+1}`` ``(B, 1, ...)`` and the new state."""
        return self(z[:, None], a[:, None], state)

    def reset_rows(self, state: Any, rows: torch.Tensor) -> Any:
        """The state with the rows where ``rows`` (``(B,)`` bool) is true set to a fresh start."""
        keep = (~rows).to(state[0].dtype)[None, :, None]
        return state[0] * keep, state[1] * keep


class _Block(nn.Module):
    """Pre-norm causal self-attention + MLP (nanoGPT's block, on ``F.scaled_dot_product_attention``)."""

    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        if d_model % n_head:
            raise ValueError(f"d_model {d_model} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=-1)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hd)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hd)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)
        return x + self.mlp(self.ln2(x))


class CausalTransformerMemory(nn.Module):
    """``(z, a) -> linear d_model -> causal transformer -> mixture head`` over windows of ``context`` steps.

    The state of one-step use is ``(tokens, n)``: the last inputs, left-aligned ``(B, context, D + A)``,
    and how many each row holds ``(B,)``.
    """

    def __init__(self, latent: int = 32, action_dim: int = 3, d_model: int = 32, n_head: int = 8, n_layer: int = 3,
                 n_mixtures: int = 5, context: int = 32) -> None:
        super().__init__()
        self.latent, self.action_dim, self.context = latent, action_dim, context
        self.feature_dim = d_model
        self.embed = nn.Linear(latent + action_dim, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(d_model)
        self.head = MixtureHead(d_model, latent, n_mixtures)
        self._positions(d_model)

    def _positions(self, d_model: int) -> None:
        self.pos = nn.Parameter(torch.zeros(1, self.context, d_model))
        nn.init.normal_(self.pos, std=0.02)

    def _encode_positions(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos[:, : x.shape[1]]

    def forward(self, z: torch.Tensor, a: torch.Tensor, state: Any = None) -> tuple[MixtureOutput, Any]:
        """``z`` ``(B, T, D)``, ``a`` ``(B, T, A)`` with ``T <= context`` -> the mixture at every step."""
        if z.shape[1] > self.context:
            raise ValueError(f"sequence of {z.shape[1]} steps is longer than the memory's context {self.context}")
        x = self._encode_positions(self.embed(torch.cat([z, a], -1)))  # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x)), None

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """``(tokens (B, context, D + A), n (B,), features (B, d_model))``, all empty."""
        tokens = torch.zeros(batch, self.context, self.latent + self.action_dim, device=device)
        return tokens, torch.zeros(batch, dtype=torch.long, device=device), torch.zeros(batch, self.feature_dim,
                                                                                         device=device)

    def features_of(self, state: Any) -> torch.Tensor:
        return state[2]

    def step(self, z: torch.Tensor, a: torch.Tensor, state: Any) -> tuple[MixtureOutput, Any]:
        tokens, n, _ = state
        full = n >= self.context
        tokens = torch.where(full[:, None, None], tokens.roll(-1, dims=1), tokens)  # drop the oldest of full rows
        n = torch.clamp(n + 1, max=self.context)
        rows = torch.arange(len(n), device=n.device)
        tokens = tokens.clone()
        tokens[rows, n - 1] = torch.cat([z, a], -1)
        out, _ = self(tokens[..., : self.latent], tokens[..., self.latent:])
        last = (n - 1)[:, None]

        def at_last(t: torch.Tensor) -> torch.Tensor:  # (B, T, ...) -> (B, 1, ...) at each row's last step
            idx = last.view(-1, 1, *([1] * (t.dim() - 2))).expand(-1, 1, *t.shape[2:])
            return t.gather(1, idx)

        picked = MixtureOutput(*(at_last(getattr(out, f)) for f in
                                 ("logit_pi", "mu", "log_sigma", "reward", "done_logit", "features")))
        return picked, (tokens, n, picked.features[:, 0])

    def reset_rows(self, state: Any, rows: torch.Tensor) -> Any:
        tokens, n, h = state
        keep = ~rows
        return tokens * keep[:, None, None].to(tokens.dtype), n * keep.long(), h * keep[:, None].to(h.dtype)


class TraDEMemory(CausalTransformerMemory):
    """TraDE: the causal transformer with positions from a GRU over the embedded inputs (no position table).

    Trained by :func:`memory_loss` with ``mmd_weight > 0`` (the paper's penalized maximum likelihood).
    """

    def _positions(self, d_model: int) -> None:
        self.pos_rnn = nn.GRU(d_model, d_model, batch_first=True)

    def _encode_positions(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pos_rnn(x)[0]  # (B, T, d_model): causal, so slots after a row's last step do not matter


MEMORY_KINDS = ("mdnrnn", "transformer", "trade")


def mmd2(x: torch.Tensor, y: torch.Tensor, bandwidths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> torch.Tensor:
    """Squared maximum mean discrepancy between samples ``x`` ``(N, D)`` and ``y`` ``(M, D)`` (biased estimate,
    a sum of Gaussian kernels at ``bandwidths`` relative to ``sqrt(D)``).

    Example:
        >>> x = torch.randn(64, 2, generator=torch.Generator().manual_seed(0))
        >>> float(mmd2(x, x)) == 0.0, float(mmd2(x, x + 3.0)) > 0.5
        (True, True)
    """
    xy = torch.cat([x, y])
    d2 = torch.cdist(xy, xy).pow(2) / x.shape[1]
    k = sum(torch.exp(-d2 / (2 * b * b)) for b in bandwidths)
    n = len(x)
    return k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()


def memory_loss(out: MixtureOutput, next_z: torch.Tensor, rewards: torch.Tensor, dones: torch.Tensor,
                mask: torch.Tensor, mmd_weight: float = 0.0, reward_weight: float = 1.0,
                done_weight: float = 1.0, generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """M's loss: the next latent's NLL (per dimension, averaged), reward MSE, done BCE, and for TraDE the MMD penalty.

    Args:
        out: M's outputs over ``(B, T)``.
        next_z: ``(B, T, D)`` the latents M should predict; ``rewards``, ``dones``, ``mask``: ``(B, T)``.
        mmd_weight: weight of ``mmd2(model samples, next_z)`` over the valid steps (0: plain maximum likelihood).
    """
    m = mask.float()
    denom = m.sum().clamp(min=1.0)
    nll = -(mixture_log_prob(next_z, out.logit_pi, out.mu, out.log_sigma).mean(-1) * m).sum() / denom
    rew = ((out.reward - rewards).pow(2) * m).sum() / denom
    done = (F.binary_cross_entropy_with_logits(out.done_logit, dones.float(), reduction="none") * m).sum() / denom
    loss = nll + reward_weight * rew + done_weight * done
    metrics = {"nll": float(nll.detach()), "reward_mse": float(rew.detach()), "done_bce": float(done.detach())}
    if mmd_weight > 0:
        valid = mask.reshape(-1)
        samples = sample_mixture(out.logit_pi.detach(), out.mu, out.log_sigma,
                                 generator=generator).reshape(-1, next_z.shape[-1])[valid]
        penalty = mmd2(samples, next_z.reshape(-1, next_z.shape[-1])[valid])
        loss = loss + mmd_weight * penalty
        metrics["mmd2"] = float(penalty.detach())
    return loss, metrics


# ---------------------------------------------------------------------------------------- C
class Controller(nn.Module):
    """``[z, h] -> actions``: one linear layer (the paper's), or one hidden tanh layer of ``hidden`` units.

    Outputs are raw: the agent squashes them with tanh (Box actions) or takes the argmax (Discrete).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 0) -> None:
        super().__init__()
        self.in_dim, self.out_dim, self.hidden = in_dim, out_dim, hidden
        if hidden > 0:
            self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, out_dim))
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def batched(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Row ``j`` of ``x`` ``(J, in)`` through the controller whose flat parameters (in
        ``parameters_to_vector`` order) are row ``j`` of ``params`` ``(J, n_params)`` -> ``(J, out)``."""
        shapes = [p.shape for p in self.parameters()]
        chunks = torch.split(params, [math.prod(s) for s in shapes], dim=1)
        h = x
        layers = list(zip(chunks[0::2], chunks[1::2], shapes[0::2]))
        for i, (w, b, shape) in enumerate(layers):
            h = torch.einsum("joi,ji->jo", w.view(-1, *shape), h) + b  # (J, out)
            if i < len(layers) - 1:
                h = torch.tanh(h)
        return h


# ------------------------------------------------------------------------------------ whole
class WorldModel(nn.Module):
    """V, M and C in one module (one checkpoint); ``memory_kind`` is one of :data:`MEMORY_KINDS`."""

    def __init__(self, channels: int, action_dim: int, latent: int = 32, vae_widths: tuple[int, ...] = (32, 64, 128, 256),
                 memory_kind: str = "mdnrnn", hidden: int = 256, n_mixtures: int = 5, d_model: int = 32,
                 n_head: int = 8, n_layer: int = 3, context: int = 32, controller_hidden: int = 0,
                 controller_uses_memory: bool = True, input_norm: bool = False) -> None:
        super().__init__()
        if memory_kind not in MEMORY_KINDS:
            raise ValueError(f"memory_kind must be one of {MEMORY_KINDS}, got {memory_kind!r}")
        self.vae = ConvVAE(channels, latent, vae_widths)
        if memory_kind == "mdnrnn":
            self.memory: nn.Module = MDNRNN(latent, action_dim, hidden, n_mixtures)
        else:
            cls = CausalTransformerMemory if memory_kind == "transformer" else TraDEMemory
            self.memory = cls(latent, action_dim, d_model, n_head, n_layer, n_mixtures, context)
        self.controller_uses_memory = controller_uses_memory
        in_dim = latent + (self.memory.feature_dim if controller_uses_memory else 0)
        self.controller = Controller(in_dim, action_dim, controller_hidden)
        self.input_norm = input_norm
        if input_norm:  # set by the controller stage from the dataset (WorldModelController._fit_input_norm)
            self.register_buffer("input_mean", torch.zeros(in_dim))
            self.register_buffer("input_std", torch.ones(in_dim))

    def controller_features(self, z: torch.Tensor, state: Any) -> torch.Tensor:
        """``[z, h]`` ``(B, in)`` as they are (``z`` alone for a controller on V only)."""
        if not self.controller_uses_memory:
            return z
        return torch.cat([z, self.memory.features_of(state)], -1)

    def controller_input(self, z: torch.Tensor, state: Any) -> torch.Tensor:
        """What C reads: :meth:`controller_features`, standardized per dimension where ``input_norm`` is set."""
        x = self.controller_features(z, state)
        return (x - self.input_mean) / self.input_std if self.input_norm else x
