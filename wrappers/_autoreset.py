"""The autoreset mode a Gymnasium vector env declares, shared by the vector wrappers and scripts."""

from __future__ import annotations

from gymnasium.vector import AutoresetMode, VectorEnv


def autoreset_mode(env: VectorEnv) -> AutoresetMode:
    """``env.metadata["autoreset_mode"]`` as an ``AutoresetMode``; Gymnasium's default, ``NEXT_STEP``, when absent.

    Example:
        >>> import gymnasium as gym
        >>> autoreset_mode(gym.make_vec("CartPole-v1", num_envs=1))
        <AutoresetMode.NEXT_STEP: 'NextStep'>
    """
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    return mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)
