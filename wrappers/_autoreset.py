"""The autoreset mode a Gymnasium vector env declares (one definition: :func:`tt_agents.rollout.autoreset_mode`)."""

from tt_agents.rollout import autoreset_mode

__all__ = ["autoreset_mode"]
