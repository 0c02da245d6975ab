"""Behaviour cloning networks: an observation encoder (MLP for vectors, CNN for images) and a head.

Read top to bottom: the image encoder, the vector encoder, the policy network.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["NatureCNN", "MLP", "BCNet"]


class NatureCNN(nn.Module):
    """The DQN encoder (Mnih et al., 2015) for ``(B, H, W, C)`` uint8 frames, scaled to [0, 1] inside."""

    def __init__(self, obs_shape: tuple[int, int, int], out_dim: int = 256) -> None:
        super().__init__()
        h, w, c = obs_shape
        self.convs = nn.Sequential(
            nn.Conv2d(c, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            n = self.convs(torch.zeros(1, c, h, w)).shape[1]
        self.fc = nn.Sequential(nn.Linear(n, out_dim), nn.ReLU())
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().permute(0, 3, 1, 2) / 255.0  # (B, C, H, W)
        return self.fc(self.convs(x))


class MLP(nn.Module):
    def __init__(self, in_dim: int, hidden: tuple[int, ...], out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = in_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU()]
            d = h
        if out_dim is not None:
            layers.append(nn.Linear(d, out_dim))
            d = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1).float())


class BCNet(nn.Module):
    """Encoder then a linear head: action logits (discrete) or a tanh-squashed action (continuous)."""

    def __init__(
        self, obs_shape: tuple[int, ...], image: bool, hidden: tuple[int, ...], n_out: int, discrete: bool
    ) -> None:
        super().__init__()
        if image:
            self.encoder: nn.Module = NatureCNN(obs_shape, hidden[-1] if hidden else 256)  # type: ignore[arg-type]
        else:
            self.encoder = MLP(math.prod(obs_shape), hidden)
        self.head = nn.Linear(self.encoder.out_dim, n_out)  # type: ignore[arg-type]
        self.discrete = discrete

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        out = self.head(self.encoder(obs))
        return out if self.discrete else torch.tanh(out)
