"""Frames at the size V reads: :func:`resize_frames` (antialiased bilinear, in torch) and :class:`ResizeFrames`.

Gymnasium's ``ResizeObservation`` needs OpenCV, which this package does not depend on; torch's
``interpolate`` with ``antialias=True`` gives the same kind of downsampling.

Example:
    >>> import numpy as np
    >>> resize_frames(np.zeros((2, 96, 96, 3), np.uint8), 64, 64).shape
    (2, 64, 64, 3)
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["ResizeFrames", "resize_frames", "frames_to_tensor"]


def frames_to_tensor(frames: np.ndarray | torch.Tensor, height: int = 64, width: int = 64,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 frames ``(N, H, W, C)`` -> float ``(N, C, height, width)`` in [0, 1], resized if needed."""
    x = torch.as_tensor(frames, device=device)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (N, C, H, W)
    if tuple(x.shape[2:]) != (height, width):
        x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
    return x


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 frames ``(N, H, W, C)`` -> uint8 ``(N, height, width, C)``."""
    x = frames_to_tensor(frames, height, width)
    return (x * 255.0).round_().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (N, height, width, C)


class ResizeFrames(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """Resize an env's uint8 ``(H, W, C)`` frames to ``(height, width, C)``.

    Raises:
        ValueError: the env's observations are not uint8 frames.
    """

    def __init__(self, env: gym.Env, height: int = 64, width: int = 64) -> None:
        space = env.observation_space
        if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8 and len(space.shape) == 3):
            raise ValueError(f"ResizeFrames needs uint8 (H, W, C) frames, got {space}")
        gym.utils.RecordConstructorArgs.__init__(self, height=height, width=width)
        gym.ObservationWrapper.__init__(self, env)
        self.height, self.width = height, width
        self.observation_space = gym.spaces.Box(0, 255, (height, width, space.shape[2]), np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        return resize_frames(np.asarray(observation)[None], self.height, self.width)[0]
