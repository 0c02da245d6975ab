"""Deprecated alias of :mod:`tt_agents.envs.procgen` (Procgen is an environment, not a wrapper); kept for one release."""

import warnings

from tt_agents.envs.procgen import *  # noqa: F403
from tt_agents.envs.procgen import ENV_NAMES, ProcgenEnv, ProcgenVectorEnv  # noqa: F401

warnings.warn(
    "wrappers.procgen moved to tt_agents.envs.procgen; import ProcgenEnv and ProcgenVectorEnv from tt_agents.envs",
    DeprecationWarning,
    stacklevel=2,
)
