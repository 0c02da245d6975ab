"""The one rollout loop: any policy with SB3's ``predict`` on a Gymnasium vector env.

Used by :func:`tt_agents.evaluate`, ``scripts/collect.py`` (SB3 experts and the random policy)
and :class:`wrappers.VectorPlanner`, so every one of them handles the same cases the same way:

- **Autoreset modes.** ``NEXT_STEP`` (Gymnasium's default: the step after a sub-env's episode
  ends only resets it; that step is not a transition and is not counted) and ``SAME_STEP`` (the
  returned observation of a done sub-env already starts the next episode). ``DISABLED`` is
  refused: the loop cannot reset sub-envs behind the env's back.
- **Rewards.** A policy whose ``needs_reward`` is true gets ``{"observation": obs,
  "previous_reward": r}`` (the layout of :class:`wrappers.AddPreviousReward`; 0 at episode starts);
  every other policy, SB3's included, gets plain observations. Observations already in that
  layout pass through.
- **State.** ``predict(obs, state, episode_start, deterministic)`` as SB3's ``evaluate_policy``
  calls it; with ``act`` given, the first state is ``policy.initial_state(n_envs, act=act)``.
- **Quotas.** Episodes are spread over the sub-envs as SB3 does (sub-env ``i`` contributes
  ``(n_episodes + i) // n_envs``), so short episodes are not over-represented.

Example:
    >>> import gymnasium as gym
    >>> from tt_agents import BCPolicy
    >>> envs = gym.make_vec("CartPole-v1", num_envs=2)
    >>> agent = BCPolicy(envs.single_observation_space, envs.single_action_space, device="cpu", seed=0)
    >>> result = rollout(envs, agent, n_episodes=3, seed=0, progress=False)
    >>> len(result.returns), result.steps >= sum(result.lengths)  # steps also counts unfinished episodes
    (3, True)
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from tqdm.auto import tqdm

from tt_agents.spaces import REWARD_KEYS

__all__ = ["AutoresetTracker", "PolicyDriver", "RolloutResult", "StepInfo", "autoreset_mode", "rollout"]


def autoreset_mode(env: VectorEnv) -> AutoresetMode:
    """``env.metadata["autoreset_mode"]`` as an ``AutoresetMode``; Gymnasium's default, ``NEXT_STEP``, when absent.

    Example:
        >>> import gymnasium as gym
        >>> autoreset_mode(gym.make_vec("CartPole-v1", num_envs=1))
        <AutoresetMode.NEXT_STEP: 'NextStep'>
    """
    mode = env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)
    return mode if isinstance(mode, AutoresetMode) else AutoresetMode(mode)


class AutoresetTracker:
    """Which sub-envs start an episode with the current observation, and which next step only resets.

    The one piece of autoreset bookkeeping, shared by :func:`rollout`, :class:`PolicyDriver`
    (hence ``wrappers.VectorPlanner``) and ``wrappers.VectorActionLogger``.

    Args:
        env: the vector env whose ``metadata["autoreset_mode"]`` is followed.
        who: named in the error for a ``DISABLED`` env.
        allow_disabled: accept ``DISABLED`` (a done sub-env is idle until the caller resets it
            with ``reset(options={"reset_mask": ...})``, then :meth:`reset` with that mask);
            refused otherwise, since a policy loop cannot know when the caller resets.

    Attributes:
        episode_start: ``(n,)`` the current observation is the first of an episode.
        autoreset_step: ``(n,)`` (``NEXT_STEP`` only) the next step only resets the sub-env; its
            action is ignored and the step is no transition.

    Example:
        >>> import gymnasium as gym
        >>> tracker = AutoresetTracker(gym.make_vec("CartPole-v1", num_envs=2))  # NEXT_STEP
        >>> tracker.step(np.array([True, False]), np.array([False, False]))  # (counted, done)
        (array([ True,  True]), array([ True, False]))
        >>> tracker.step(np.array([False, False]), np.array([False, False]))  # sub-env 0 only resets
        (array([False,  True]), array([False, False]))
        >>> tracker.episode_start
        array([ True, False])
    """

    def __init__(self, env: VectorEnv, who: str = "the rollout loop", allow_disabled: bool = False) -> None:
        self.mode = autoreset_mode(env)
        if self.mode == AutoresetMode.DISABLED and not allow_disabled:
            raise ValueError(
                f"{who} needs an autoresetting vector env (NEXT_STEP or SAME_STEP); create it with "
                "gym.make_vec(..., vector_kwargs={'autoreset_mode': AutoresetMode.NEXT_STEP})"
            )
        n = env.num_envs
        self.episode_start = np.ones(n, dtype=bool)
        self.autoreset_step = np.zeros(n, dtype=bool)

    def reset(self, mask: Any = None) -> None:
        """The sub-envs in ``mask`` (all when ``None``) were reset: they start an episode."""
        rows = slice(None) if mask is None else np.asarray(mask, dtype=bool)
        self.episode_start[rows] = True
        self.autoreset_step[rows] = False

    def step(self, terminations: Any, truncations: Any) -> tuple[np.ndarray, np.ndarray]:
        """Account for one env step; returns ``(counted, done)``: which rows made a transition, which ended one."""
        counted = ~self.autoreset_step
        ended = np.logical_or(terminations, truncations)
        done = ended & counted
        if self.mode == AutoresetMode.NEXT_STEP:
            # rows that were done last step were reset by this step: they start an episode now
            self.episode_start = self.autoreset_step
            self.autoreset_step = done.copy()  # the caller may keep (or change) the returned done
        elif self.mode == AutoresetMode.SAME_STEP:
            # rows that ended this step already hold the new episode's first observation
            self.episode_start = ended
        else:  # DISABLED: nothing starts until the caller resets
            self.episode_start = np.zeros_like(ended)
        return counted, done


@dataclass
class StepInfo:
    """One vector step of a :class:`PolicyDriver`."""

    observations: Any
    rewards: np.ndarray
    terminations: np.ndarray
    truncations: np.ndarray
    info: dict[str, Any]
    actions: Any
    counted: np.ndarray
    """``(n,)`` rows whose step was a transition (not a pure reset step)."""
    done: np.ndarray
    """``(n,)`` rows whose episode ended with this step."""


class PolicyDriver:
    """A policy acting for every sub-env of a vector env: its state, episode starts and previous rewards.

    Args:
        env: the vector env (its single spaces must be the policy's).
        policy: anything with SB3's ``predict(obs, state=None, episode_start=None, deterministic=...)``.
        deterministic: passed to ``predict``.
        act: act-time settings of a tt-agents agent for this run (``policy.initial_state(n, act=act)``).
    """

    def __init__(self, env: VectorEnv, policy: Any, deterministic: bool = True, act: Any = None,
                 who: str = "the rollout loop") -> None:
        self.env, self.policy, self.deterministic, self.act = env, policy, deterministic, act
        self.tracker = AutoresetTracker(env, who)
        self.needs_reward = bool(getattr(policy, "needs_reward", False))
        n = env.num_envs
        self.state: Any = None
        self.obs: Any = None
        self.rewards = np.zeros(n, np.float32)

    def reset(self, seed: int | list[int] | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        obs, info = self.env.reset(seed=seed, options=options)
        self.obs = obs
        self.rewards[:] = 0.0
        self.tracker.reset()
        self.state = None if self.act is None else self.policy.initial_state(self.env.num_envs, act=self.act)
        return obs, info

    def policy_input(self) -> Any:
        """What ``predict`` gets: the observations, with the previous rewards for policies that use them."""
        if not self.needs_reward or (isinstance(self.obs, dict) and set(self.obs) == REWARD_KEYS):
            return self.obs
        return {"observation": self.obs, "previous_reward": self.rewards[:, None].copy()}

    def actions(self) -> Any:
        """The policy's actions for the current observations (one batched ``predict``)."""
        if self.obs is None:
            raise RuntimeError("act() called before reset(); call reset() first")
        actions, self.state = self.policy.predict(
            self.policy_input(), state=self.state, episode_start=self.tracker.episode_start.copy(),
            deterministic=self.deterministic,
        )
        return actions

    def step(self, actions: Any = None) -> StepInfo:
        """One env step with ``actions``, or the policy's when ``None``."""
        if actions is None:
            actions = self.actions()
        obs, rewards, terms, truncs, info = self.env.step(actions)
        counted, done = self.tracker.step(terms, truncs)
        self.obs = obs
        self.rewards = np.where(self.tracker.episode_start, 0.0, np.asarray(rewards, np.float32)).astype(np.float32)
        return StepInfo(obs, np.asarray(rewards), np.asarray(terms), np.asarray(truncs), info, actions, counted, done)


@dataclass
class RolloutResult:
    returns: list[float] = field(default_factory=list)
    """Returns of the episodes that finished within the quotas, in the order they finished."""
    lengths: list[int] = field(default_factory=list)
    steps: int = 0
    """Transitions taken (pure reset steps not included)."""
    seconds: float = 0.0


def rollout(
    env: VectorEnv,
    policy: Any,
    *,
    n_episodes: int | None = None,
    n_steps: int | None = None,
    seed: int | list[int] | None = 0,
    deterministic: bool = True,
    act: Any = None,
    progress: bool = True,
    desc: str | None = None,
    callback: Callable[[PolicyDriver, StepInfo | None], None] | None = None,
    max_steps: int = 1_000_000,
) -> RolloutResult:
    """Run ``policy`` on ``env`` until ``n_episodes`` episodes (per-sub-env quotas) or ``n_steps`` transitions.

    Args:
        env: an autoresetting vector env.
        policy: anything with SB3's ``predict`` (a tt-agents agent, an SB3 model or policy).
        n_episodes / n_steps: when to stop (exactly one of them).
        seed: passed to ``env.reset``.
        act: act-time settings of a tt-agents agent for this run.
        callback: called with ``(driver, None)`` after the reset and ``(driver, step)`` after every
            step (e.g. to record frames).
        max_steps: a bound on vector steps, so that a never-ending env cannot hang the run.

    Raises:
        RuntimeError: the episodes did not finish within ``max_steps``.
    """
    if (n_episodes is None) == (n_steps is None):
        raise ValueError("give exactly one of n_episodes and n_steps")
    if (n_episodes is not None and n_episodes < 1) or (n_steps is not None and n_steps < 1):
        raise ValueError(f"n_episodes and n_steps must be >= 1, got {n_episodes} and {n_steps}")
    driver = PolicyDriver(env, policy, deterministic, act)
    n = env.num_envs
    quota = np.array([(n_episodes + i) // n for i in range(n)]) if n_episodes is not None else None
    counts = np.zeros(n, dtype=np.int64)
    ep_ret = np.zeros(n, np.float64)
    ep_len = np.zeros(n, np.int64)
    result = RolloutResult()
    t0 = time.perf_counter()
    bar = tqdm(total=n_steps if n_steps is not None else n_episodes, unit="step" if n_steps else "ep",
               desc=desc or f"rollout {type(policy).__name__}", disable=not progress, dynamic_ncols=True)
    shown = -math.inf  # when the bar's step count was last shown (a planner may take seconds per step)
    driver.reset(seed=seed)
    if callback is not None:
        callback(driver, None)
    try:
        for vector_step in range(max_steps):
            if quota is not None and (counts >= quota).all():
                break
            step = driver.step()
            ep_ret += np.where(step.counted, step.rewards, 0.0)
            ep_len += step.counted
            k = int(step.counted.sum())
            result.steps += k
            for i in np.flatnonzero(step.done):
                if quota is None or counts[i] < quota[i]:
                    result.returns.append(float(ep_ret[i]))
                    result.lengths.append(int(ep_len[i]))
                    if quota is not None:
                        bar.update(1)
                        bar.set_postfix(mean_return=f"{np.mean(result.returns):.1f}")
                counts[i] += 1
                ep_ret[i], ep_len[i] = 0.0, 0
            if callback is not None:
                callback(driver, step)
            if n_steps is not None:
                bar.update(k)
                if result.steps >= n_steps:
                    break
            elif progress and time.perf_counter() - shown >= 1.0:
                shown = time.perf_counter()
                rate = (vector_step + 1) * n / (shown - t0)
                bar.set_postfix(env_steps=(vector_step + 1) * n, steps_per_s=f"{rate:.3g}",
                                mean_return=f"{np.mean(result.returns):.1f}" if result.returns else "-")
        else:
            raise RuntimeError(f"the rollout did not finish within max_steps={max_steps} vector steps")
    finally:
        bar.close()
    result.seconds = time.perf_counter() - t0
    return result
