"""Where agent classes are registered, so that a checkpoint names its class and no code is loaded.

- The package's own agents are listed in :data:`BUILTIN_AGENTS` (class name -> module) and imported
  on first use, so ``load_agent`` finds them without any import by the user.
- Any other agent registers itself with the :func:`register_agent` decorator in its own file; to
  make it visible to the command-line scripts without touching them, name its module in the
  ``TT_AGENTS_PLUGINS`` environment variable (comma-separated modules, imported by
  :func:`agent_classes`) or in an installed package's ``tt_agents.agents`` entry point group.

Example:
    >>> from tt_agents.registry import agent_class
    >>> agent_class("BCPolicy").__name__
    'BCPolicy'
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any, TypeVar

__all__ = ["AGENT_REGISTRY", "BUILTIN_AGENTS", "PLUGINS_ENV", "register_agent", "agent_class", "agent_classes"]

BUILTIN_AGENTS: dict[str, str] = {
    "BCPolicy": "tt_agents.bc",
    "DecisionTransformer": "tt_agents.dt",
    "LatentActionPolicy": "tt_agents.latent.agents",
    "TTPlanner": "tt_agents.tt",
    "TrajectoryAutoencoder": "tt_agents.autoencoder",
    "VPTPolicy": "tt_agents.latent.agents",
    "WorldModelController": "tt_agents.world_model.agent",
}
"""The package's agents: class name -> the module that defines (and registers) it."""

PLUGINS_ENV = "TT_AGENTS_PLUGINS"
"""Environment variable naming extra modules that register agents (comma-separated)."""

AGENT_REGISTRY: dict[str, type] = {}
"""Agent classes registered so far, by class name (see :func:`agent_classes` for all of them)."""

T = TypeVar("T", bound=type)


def register_agent(cls: T) -> T:
    """Class decorator: make ``cls`` loadable by name (``load_agent``) and visible to the scripts.

    Raises:
        ValueError: another class is registered under the same name.
    """
    other = AGENT_REGISTRY.get(cls.__name__)
    if other is not None and other is not cls and (other.__module__, other.__qualname__) != (
        cls.__module__,
        cls.__qualname__,
    ):
        raise ValueError(f"two agent classes are named {cls.__name__}: {other.__module__} and {cls.__module__}")
    AGENT_REGISTRY[cls.__name__] = cls
    return cls


def _import_plugins() -> None:
    for module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
        importlib.import_module(module)
    for ep in entry_points(group="tt_agents.agents"):
        ep.load()


def agent_class(name: str) -> Any:
    """The registered agent class called ``name`` (importing the package's own agents as needed).

    Raises:
        KeyError: no agent of that name; the message lists the known ones.
    """
    if name not in AGENT_REGISTRY and name in BUILTIN_AGENTS:
        importlib.import_module(BUILTIN_AGENTS[name])
    if name not in AGENT_REGISTRY:
        known = agent_classes()
        if name not in known:
            raise KeyError(f"unknown agent class {name!r}; known: {sorted(known)}")
    return AGENT_REGISTRY[name]


def agent_classes() -> dict[str, Any]:
    """Every agent class: the package's, those already registered, and the plugins'."""
    for module in BUILTIN_AGENTS.values():
        importlib.import_module(module)
    _import_plugins()
    return dict(AGENT_REGISTRY)
