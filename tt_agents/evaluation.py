"""Evaluate an agent on a Gymnasium vector env: returns, standard error, normalized score, video.

The normalized score is D4RL's ``100 * (R - random) / (expert - random)``, with the reference
returns taken from the arguments, else from the agent's training data metadata
(``ref_min_score``, ``ref_max_score``, as Minari and ``scripts/collect.py`` record them).

Episodes are spread over the sub-envs as SB3's ``evaluate_policy`` does (each sub-env gets a
fixed share), so short episodes are not over-represented.

Defaults are those of ``scripts/eval.py``: 10 episodes on :data:`DEFAULT_N_ENVS` sub-envs, seed 0,
``deterministic=True`` (the agents' ``predict`` default: the most likely action, or the planner's
best plan; SB3's ``predict`` defaults to ``False``, but its ``evaluate_policy`` to ``True``, as here).
A video renders only sub-env 0, and only until its first episode ends.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from tt_agents.rollout import PolicyDriver, StepInfo, rollout
from tt_agents.utils import atomic_write_bytes

__all__ = ["DEFAULT_N_ENVS", "EvalResult", "evaluate", "normalized_score", "make_vec_env"]

DEFAULT_N_ENVS = 4
"""Sub-envs of an evaluation made from an env id or a factory, unless told otherwise (``scripts/eval.py`` too)."""


def normalized_score(ret: float, ref_min: float, ref_max: float) -> float:
    """``100 * (ret - ref_min) / (ref_max - ref_min)``.

    Example:
        >>> normalized_score(50.0, 0.0, 200.0)
        25.0
    """
    if ref_max == ref_min:
        raise ValueError(f"reference scores must differ, got min = max = {ref_min}")
    return 100.0 * (ret - ref_min) / (ref_max - ref_min)


@dataclass
class EvalResult:
    returns: list[float]
    lengths: list[int]
    mean_return: float
    stderr_return: float
    """Standard error of the mean return (sample std / sqrt(n))."""
    normalized_score: float | None = None
    normalized_stderr: float | None = None
    ref_min_score: float | None = None
    ref_max_score: float | None = None
    env_id: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_episodes(self) -> int:
        return len(self.returns)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_episodes"] = self.n_episodes
        return d

    def save_json(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        atomic_write_bytes(path, json.dumps(self.to_dict(), indent=1).encode())
        return path

    def __str__(self) -> str:
        s = f"return {self.mean_return:.2f} ± {self.stderr_return:.2f} over {self.n_episodes} episodes"
        if self.normalized_score is not None:
            s += f", normalized score {self.normalized_score:.1f} ± {self.normalized_stderr:.1f}"
        return s


def use_egl_when_headless() -> None:
    """Render MuJoCo offscreen with EGL on a Linux machine without a display, unless told otherwise.

    MuJoCo's default (GLFW) needs a display; without one every frame fails. An explicit
    ``MUJOCO_GL`` (``egl``, ``osmesa``, ``glfw``) is always respected.
    """
    if sys.platform.startswith("linux") and "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"


def make_vec_env(
    env: str | gym.Env | VectorEnv | Callable[[], gym.Env], n_envs: int = 1, render: bool = False,
    vectorization_mode: str = "sync",
) -> VectorEnv:
    """A vector env from an env id, an env, a factory, or a vector env (returned as it is).

    With ``render``, an env id's sub-env 0 alone is made with ``render_mode="rgb_array"`` (the video's;
    the others never render), in this process. ``vectorization_mode="async"`` makes an env id's sub-envs each
    in its own process (many cores, costly envs); it cannot render.
    """
    if isinstance(env, VectorEnv):
        return env
    if vectorization_mode not in ("sync", "async"):
        raise ValueError(f"vectorization_mode must be 'sync' or 'async', got {vectorization_mode!r}")
    if vectorization_mode != "sync" and (render or not isinstance(env, str)):
        raise ValueError("vectorization_mode='async' needs an env id and no video (only sub-env 0 renders, in this "
                         f"process); got {'a video' if render else type(env).__name__}")
    if render:
        use_egl_when_headless()
    if isinstance(env, str):
        if render:
            return gym.vector.SyncVectorEnv([lambda: gym.make(env, render_mode="rgb_array")]
                                            + [lambda: gym.make(env)] * (n_envs - 1))
        return gym.make_vec(env, num_envs=n_envs, vectorization_mode=vectorization_mode)
    if isinstance(env, gym.Env):
        if n_envs != 1:
            raise ValueError(f"got one env instance but n_envs={n_envs}; pass an env id or a factory to run several")
        return gym.vector.SyncVectorEnv([lambda: env])
    if callable(env):
        return gym.vector.SyncVectorEnv([env for _ in range(n_envs)])
    raise TypeError(f"cannot make a vector env from {env!r}: pass an env id, an Env, a VectorEnv or a factory")


def evaluate(
    agent: Any,
    env: str | gym.Env | VectorEnv | Callable[[], gym.Env],
    n_episodes: int = 10,
    n_envs: int | None = None,
    seed: int = 0,
    deterministic: bool = True,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    video_path: str | os.PathLike | None = None,
    json_path: str | os.PathLike | None = None,
    max_steps: int = 1_000_000,
    progress: bool = True,
    act: Any = None,
    vectorization_mode: str = "sync",
) -> EvalResult:
    """Run ``n_episodes`` episodes of ``agent`` on a vector env and summarise the returns.

    Args:
        agent: any :class:`tt_agents.Agent`, or anything with SB3's ``predict`` (one batched
            ``predict`` per step for all sub-envs, through :func:`tt_agents.rollout.rollout`).
        env: an env id (made with ``n_envs`` sub-envs), an Env, a factory, or a VectorEnv.
        n_episodes: episodes to complete in total.
        n_envs: sub-envs made from an env id or a factory (``None``: :data:`DEFAULT_N_ENVS`; an Env
            instance is one, a VectorEnv has its own).
        deterministic: the most likely action (or the best plan), as ``scripts/eval.py`` does by default.
        seed: sub-env ``i`` is reset with ``seed + i``.
        ref_min_score, ref_max_score: reference returns of the normalized score; default to the
            agent's training-data metadata when it has them.
        video_path: write the first episode of sub-env 0 there (``.mp4`` or ``.gif``); needs an
            env id (made with ``render_mode="rgb_array"``) or an env that renders ``rgb_array``.
        json_path: also write the result there as JSON.
        max_steps: a bound on vector steps, so that a never-ending env cannot hang the run.
        act: the agent's act-time settings for this evaluation (``None``: ``agent.act``), given
            to ``agent.initial_state(n_envs, act=act)``.
        vectorization_mode: ``"async"``: an env id's sub-envs each in its own process (the same episodes as
            ``"sync"``; no video).

    Example:
        >>> from tt_agents import BCPolicy
        >>> env = gym.make("CartPole-v1")
        >>> agent = BCPolicy(env.observation_space, env.action_space, device="cpu", seed=0)
        >>> res = evaluate(agent, "CartPole-v1", n_episodes=2, n_envs=2, progress=False,
        ...                ref_min_score=0.0, ref_max_score=500.0)
        >>> res.n_episodes, res.normalized_score is not None
        (2, True)
    """
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if video_path is not None and Path(video_path).suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"video_path must end in one of {VIDEO_SUFFIXES}, got {str(video_path)!r}")
    if n_envs is None:
        n_envs = 1 if isinstance(env, gym.Env) else DEFAULT_N_ENVS
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")
    env_id = env if isinstance(env, str) else None
    venv = make_vec_env(env, n_envs, render=video_path is not None, vectorization_mode=vectorization_mode)
    try:
        _check_spaces(agent, venv, env_id)
        first = (getattr(venv, "envs", None) or [None])[0]
        if video_path is not None and first is not None and getattr(first, "render_mode", "rgb_array") != "rgb_array":
            raise ValueError(f"video_path needs an env that renders: make sub-env 0 with render_mode='rgb_array' "
                             f"(it has render_mode={first.render_mode!r})")
    except Exception:
        if not isinstance(env, VectorEnv):
            venv.close()
        raise
    data_info = getattr(agent, "data_info", {}) or {}
    if ref_min_score is None:
        ref_min_score = data_info.get("ref_min_score")
    if ref_max_score is None:
        ref_max_score = data_info.get("ref_max_score")
    env_id = env_id or data_info.get("env_id")
    callback = _VideoRecorder(video_path) if video_path is not None else None
    try:
        res = rollout(venv, agent, n_episodes=n_episodes, seed=seed, deterministic=deterministic, act=act,
                      progress=progress, desc=f"eval {type(agent).__name__}", callback=callback, max_steps=max_steps)
    except RuntimeError as e:
        raise RuntimeError(f"evaluation did not finish {n_episodes} episodes within max_steps={max_steps}") from e
    finally:
        if not isinstance(env, VectorEnv):
            venv.close()
    returns, lengths = res.returns, res.lengths

    arr = np.asarray(returns, np.float64)
    stderr = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else 0.0
    result = EvalResult(
        returns=returns,
        lengths=lengths,
        mean_return=float(arr.mean()),
        stderr_return=stderr,
        ref_min_score=ref_min_score,
        ref_max_score=ref_max_score,
        env_id=env_id,
        seconds=res.seconds,
    )
    if ref_min_score is not None and ref_max_score is not None:
        result.normalized_score = normalized_score(result.mean_return, ref_min_score, ref_max_score)
        result.normalized_stderr = 100.0 * stderr / abs(ref_max_score - ref_min_score)
    if json_path is not None:
        result.save_json(json_path)
    return result


def _check_spaces(agent: Any, venv: VectorEnv, env_id: str | None) -> None:
    """Refuse an env whose spaces do not fit the agent before any episode is run (tt-agents agents only)."""
    from tt_agents.agent import Agent, _compatible, _single_space
    from tt_agents.spaces import SpaceMismatchError

    if not isinstance(agent, Agent):
        return
    checks = [("observation", agent.observation_space)]
    if getattr(agent.config, "action_field", "actions") == "actions":  # not an agent of latent actions
        checks.append(("action", agent.action_space))
    for what, mine in checks:
        theirs = _single_space(venv, what)
        if not _compatible(mine, theirs):
            trained = (getattr(agent, "data_info", {}) or {}).get("env_id")
            hint = f" (it was trained on {trained})" if trained else ""
            raise SpaceMismatchError(f"the env{f' {env_id}' if env_id else ''}'s {what} space {theirs} does not fit "
                                     f"the agent's {mine}{hint}: evaluate it on an env with its spaces")


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".gif")
"""What ``video_path`` may end in."""


class _VideoRecorder:
    """A rollout callback: sub-env 0's frames until its first episode ends, then the video file."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path, self.frames, self.recording = path, [], True

    def __call__(self, driver: PolicyDriver, step: StepInfo | None) -> None:
        if not self.recording:
            return
        if step is None or not step.done[0]:
            self.frames.append(_first_frame(driver.env))
            return
        self.recording = False
        if driver.tracker.mode == AutoresetMode.NEXT_STEP:  # the final state, reset only at the next step
            self.frames.append(_first_frame(driver.env))
        _write_video(self.frames, self.path)


def _first_frame(venv: VectorEnv) -> np.ndarray:
    """Sub-env 0's frame: only that env renders when the vector env exposes its envs (a SyncVectorEnv)."""
    envs = getattr(venv, "envs", None)
    frames = envs[0].render() if envs else venv.render()
    if frames is None:
        raise ValueError("video_path needs an env that renders: create it with render_mode='rgb_array'")
    frame = frames[0] if isinstance(frames, (tuple, list)) else frames
    return np.asarray(frame)


def _write_video(frames: list[np.ndarray], path: str | os.PathLike, fps: int = 30) -> None:
    """Write RGB ``frames`` to ``path``: a GIF (Pillow) or an H.264 video (PyAV's bundled FFmpeg).

    Frames are edge-padded to even sizes (H.264 with 4:2:0 colour needs them). The file is
    written next to ``path`` and renamed into place, so a crash never leaves half a video there.
    """
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if path.suffix.lower() == ".gif":
            iio.imwrite(tmp, np.stack(frames), plugin="pillow", duration=1000 / fps, loop=0)
        else:
            h, w = frames[0].shape[:2]
            pad = ((0, h % 2), (0, w % 2)) + ((0, 0),) * (frames[0].ndim - 2)
            video = np.stack([np.pad(f, pad, mode="edge") for f in frames])
            iio.imwrite(tmp, video, plugin="pyav", fps=fps, codec="libx264")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
