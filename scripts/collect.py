"""Collect D4RL-style datasets with an SB3 expert: ``random``, ``medium``, ``medium-replay``, ``expert``.

Trains an expert with Stable-Baselines3 (SAC or TD3 for continuous control, PPO for discrete
actions and pixels, RL Zoo hyperparameters), or loads one from a ``.zip``, and rolls policies out
through :class:`wrappers.VectorActionLogger` on a vector env into Minari datasets in the local
store (``$MINARI_DATASETS_PATH``), with ids ``{namespace}/{kind}-v{version}``:

- ``random``: a uniform random policy.
- ``expert``: the trained expert.
- ``medium``: the training checkpoint whose return is closest to a third of the way from the
  random policy's return to the expert's (D4RL's "medium": about a third of the expert).
- ``medium-replay``: every episode the expert's training collected up to that checkpoint (its
  replay buffer, for SAC/TD3).

Every dataset's metadata records ``ref_min_score`` (the random policy's mean return) and
``ref_max_score`` (the expert's), the collecting policy, the seeds and these arguments. The
expert (``expert.zip``: the final policy, ``final.zip``, or with ``--expert-checkpoint best`` the
best-evaluated policy of the training) and the medium policy (``medium.zip``) are saved in ``--out-dir``, and
SB3's training statistics in ``--out-dir/tensorboard`` (``tensorboard --logdir OUT/tensorboard``).

The expert's training, the long part, checkpoints its whole state in ``--out-dir/resume`` every
``--checkpoint-every`` env steps and on Ctrl-C/SIGTERM; after a crash, the same command with ``--resume``
continues the run (training from its checkpoint, then the datasets not yet finished) to the same datasets
an uninterrupted run writes (``tt_agents/sb3_resume.py``).

Example (a tiny run; a real one uses the defaults, ~1M expert steps):
    python scripts/collect.py --env-id Hopper-v5 --expert-steps 2000 --dataset-steps 1000
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import tyro
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _cli import UsageError, run  # noqa: E402

DATASET_KINDS = ("random", "medium", "medium-replay", "expert")
_KILL_ENV = "TT_COLLECT_SIGKILL_AT_STEP"


@dataclass
class Args:
    env_id: str = "Hopper-v5"
    """Gymnasium id: Hopper-v5, HalfCheetah-v5, Walker2d-v5, BipedalWalker-v3, CarRacing-v3, procgen/coinrun-v0, ..."""
    datasets: tuple[str, ...] = DATASET_KINDS
    """which datasets to make: any of random, medium, medium-replay, expert"""
    namespace: str | None = None
    """ids are {namespace}/{kind}-v{version}; default from env_id: hopper, bipedalwalker, procgen/coinrun, ..."""
    version: int = 0
    """dataset version (the -vN of the ids)"""
    algo: Literal["auto", "sac", "td3", "ppo", "scripted"] = "auto"
    """expert algorithm; auto: SAC for Box actions on vectors, PPO for discrete actions or images (or --expert-zip's);
    Meta-World tasks (``metaworld/<task>-v3``): its V3 scripted policy (``scripted``), trained nothing"""
    expert_steps: int = 1_000_000
    """expert training budget in env steps (RL Zoo: 1M for MuJoCo SAC); tiny values make test runs"""
    expert_zip: str | None = None
    """load the expert from this SB3 .zip instead of training one"""
    continue_from: str | None = None
    """train the expert on from this SB3 .zip (its weights, optimizer state and step count) up to --expert-steps,
    e.g. a finished run's final.zip trained further; as SB3's load + learn(reset_num_timesteps=False), read without
    unpickling anything. The hyperparameters are this run's (pass the arguments the zip was trained with)"""
    medium_zip: str | None = None
    """load the medium policy from this SB3 .zip (needed for 'medium' when --expert-zip is given)"""
    dataset_steps: int = 1_000_000
    """transitions in each of random, medium and expert (rounded up to a multiple of --num-envs)"""
    num_envs: int = 8
    """sub-envs of the vector env the datasets are rolled out on"""
    vectorization: Literal["sync", "async"] = "sync"
    """Gymnasium vectorization of MuJoCo/Box2D envs (Procgen always uses its own batched env)"""
    net_arch: tuple[int, ...] | None = None
    """hidden layers of the expert's networks (e.g. 256 256); default RL Zoo's (SAC/PPO: SB3's, TD3: 400 300)"""
    train_envs: int | None = None
    """envs the expert trains on; default RL Zoo's (1 for SAC/TD3, 8 for CarRacing PPO, 64 for Procgen PPO)"""
    expert_checkpoint: Literal["final", "best"] = "final"
    """which trained policy is the expert: the final one (D4RL's), or the best-evaluated of the training checkpoints
    and the final one (RL Zoo's best_model: for returns that swing late in training, as TD3's on Hopper); may
    change on --resume until a dataset that depends on the expert (expert, medium, medium-replay) is finished"""
    medium_fraction: float = 1 / 3
    """medium's target return: random + medium_fraction * (expert - random)"""
    n_checkpoints: int = 10
    """training checkpoints evaluated as medium candidates (their returns are the expert's return curve)"""
    checkpoint_every: int = 25_000
    """env steps between resumable training-state checkpoints in --out-dir/resume (0: only on Ctrl-C/SIGTERM)"""
    resume: bool = False
    """continue the interrupted run in --out-dir (same arguments): training from its last checkpoint, datasets
    from the first unfinished one; the result is the same as an uninterrupted run's"""
    eval_episodes: int = 5
    """episodes per evaluation (checkpoints, and reference scores when a rollout finished no episode)"""
    deterministic: bool = False
    """roll out the SB3 policies' mean actions instead of sampling them (also in evaluations)"""
    max_episode_steps: int | None = None
    """override the env's time limit (MuJoCo/Box2D; Procgen games keep their own)"""
    procgen_distribution_mode: str = "easy"
    """Procgen distribution mode"""
    procgen_num_levels: int = 200
    """Procgen levels the expert trains and datasets are collected on (0: unlimited; the benchmark's: 200)"""
    seed: int = 0
    """master seed (each dataset and evaluation derives its own from it)"""
    out_dir: str | None = None
    """folder for expert.zip, medium.zip, summary.json; default runs/collect/{namespace}"""
    keep_intermediate: bool = False
    """keep the training checkpoints and the full training log in --out-dir"""
    overwrite: bool = False
    """replace datasets that already exist (otherwise an existing dataset is an error)"""
    progress: bool = True
    """show progress bars (with time left)"""
    device: str = "auto"
    """torch device of the SB3 models"""
    torch_threads: int = 1
    """torch CPU threads"""


# ----------------------------------------------------------------------------------------------
# hyperparameters (RL Zoo's, without its observation wrappers: the datasets hold the env's own observations)


def _lin(start: float) -> Callable[[float], float]:
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * start

    return schedule


def zoo_hyperparameters(algo: str, env_id: str) -> dict[str, Any]:
    """RL Zoo's hyperparameters for ``algo`` on ``env_id`` (its MuJoCo defaults for unknown continuous envs)."""
    name = env_id.split("/")[-1]
    if algo == "sac":
        if name.startswith("BipedalWalker"):
            return dict(
                learning_rate=7.3e-4,
                buffer_size=300_000,
                batch_size=256,
                ent_coef="auto",
                gamma=0.98,
                tau=0.02,
                train_freq=64,
                gradient_steps=64,
                learning_starts=10_000,
                use_sde=True,
                policy_kwargs=dict(log_std_init=-3, net_arch=[400, 300]),
            )
        return dict(learning_starts=10_000)
    if algo == "td3":
        return dict(
            learning_starts=10_000,
            learning_rate=1e-3,
            batch_size=256,
            train_freq=1,
            gradient_steps=1,
            policy_kwargs=dict(net_arch=[400, 300]),
            action_noise_std=0.1,
        )
    if env_id.startswith("procgen/"):  # the Procgen paper's PPO settings (not its reward normalization or IMPALA CNN)
        return dict(
            n_envs=64,
            n_steps=256,
            batch_size=2048,
            n_epochs=3,
            learning_rate=5e-4,
            gamma=0.999,
            gae_lambda=0.95,
            clip_range=0.2,
            ent_coef=0.01,
            vf_coef=0.5,
            max_grad_norm=0.5,
        )
    if name.startswith("CarRacing"):
        return dict(
            n_envs=8,
            n_steps=512,
            batch_size=128,
            n_epochs=10,
            learning_rate=1e-4,
            linear_lr=True,
            gamma=0.99,
            gae_lambda=0.95,
            clip_range=0.2,
            ent_coef=0.0,
            vf_coef=0.5,
            max_grad_norm=0.5,
            use_sde=True,
            sde_sample_freq=4,
            policy_kwargs=dict(
                log_std_init=-2, ortho_init=False, activation_fn="gelu", net_arch=dict(pi=[256], vf=[256])
            ),
        )
    return dict(
        n_envs=8,
        n_steps=32,
        batch_size=256,
        n_epochs=20,
        learning_rate=1e-3,
        linear_lr=True,
        gamma=0.98,
        gae_lambda=0.8,
    )


def fit_budget(algo: str, hp: dict[str, Any], expert_steps: int, train_envs: int | None) -> dict[str, Any]:
    """Shrink budget-dependent hyperparameters so that tiny runs still train (derived, recorded in metadata)."""
    hp = dict(hp)
    if algo in ("sac", "td3"):
        hp["learning_starts"] = min(hp.get("learning_starts", 100), max(1, expert_steps // 10))
        hp["n_envs"] = train_envs or 1
    else:
        hp["n_envs"] = train_envs or hp.get("n_envs", 8)
        hp["n_steps"] = max(8, min(hp.get("n_steps", 2048), expert_steps // hp["n_envs"]))
        hp["batch_size"] = min(hp.get("batch_size", 64), hp["n_steps"] * hp["n_envs"])
    return hp


# ----------------------------------------------------------------------------------------------
# envs


def is_procgen(env_id: str) -> bool:
    return env_id.startswith("procgen/")


def default_namespace(env_id: str) -> str:
    """``Hopper-v5`` -> ``hopper``; ``procgen/coinrun-v0`` -> ``procgen/coinrun``."""
    return re.sub(r"-v\d+$", "", env_id).lower().replace("_", "-")


def _procgen_kwargs(args: Args) -> dict[str, Any]:
    # datasets are collected on the levels the expert trained on, as in Procgen offline-RL benchmarks
    return dict(distribution_mode=args.procgen_distribution_mode, num_levels=args.procgen_num_levels)


def is_metaworld(env_id: str) -> bool:
    return env_id.startswith("metaworld/")


def _metaworld_env(args: Args, index: int = 0) -> gym.Env:
    """``metaworld/reach-v3`` -> Meta-World's MT1 env of that task; it draws a goal at every reset from its own
    sampler, seeded with ``--seed`` + ``index`` (each sub-env its own goals)."""
    try:
        import metaworld  # noqa: F401  (registers Meta-World/*)
    except ImportError:
        raise UsageError(f"{args.env_id} needs Meta-World, which pins mujoco 3.3.0: install it in its own "
                         "environment (bash scripts/install.sh --metaworld)") from None
    kw = {} if args.max_episode_steps is None else {"max_episode_steps": args.max_episode_steps}
    return gym.make("Meta-World/MT1", env_name=args.env_id.split("/", 1)[1], seed=args.seed + index, **kw)


def make_env(args: Args) -> gym.Env:
    """One env, for SB3 training."""
    if is_metaworld(args.env_id):
        return _metaworld_env(args)
    if is_procgen(args.env_id):
        import tt_agents.envs.procgen  # noqa: F401  (registers procgen/* ids)

        return gym.make(args.env_id, **_procgen_kwargs(args))
    return gym.make(args.env_id, max_episode_steps=args.max_episode_steps)


def make_vec(args: Args, num_envs: int) -> gym.vector.VectorEnv:
    """The vector env datasets are rolled out on (Procgen: its own batched env; others: Gymnasium's)."""
    if is_procgen(args.env_id):
        import tt_agents.envs.procgen  # noqa: F401

        return gym.make_vec(
            args.env_id,
            num_envs=num_envs,
            vectorization_mode="vector_entry_point",
            num_threads=0,
            **_procgen_kwargs(args),
        )
    if is_metaworld(args.env_id):
        vec = gym.vector.AsyncVectorEnv if args.vectorization == "async" else gym.vector.SyncVectorEnv
        return vec([lambda i=i: _metaworld_env(args, i) for i in range(num_envs)])
    return gym.make_vec(
        args.env_id, num_envs=num_envs, vectorization_mode=args.vectorization, max_episode_steps=args.max_episode_steps
    )


# ----------------------------------------------------------------------------------------------
# rollouts


class RandomPolicy:
    """Uniform random actions, with SB3's ``predict`` (so that it runs through the same rollout loop)."""

    def __init__(self, venv: gym.vector.VectorEnv, seed: int) -> None:
        self.space = venv.action_space
        self.space.seed(seed)

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False):
        return self.space.sample(), state


class ScriptedPolicy:
    """Meta-World's V3 scripted policy of a task, with SB3's ``predict`` (one row per sub-env)."""

    def __init__(self, task: str) -> None:
        from metaworld.policies import ENV_POLICY_MAP

        if task not in ENV_POLICY_MAP:
            raise UsageError(f"Meta-World has no scripted policy for {task!r}; its tasks: {sorted(ENV_POLICY_MAP)}")
        self.policy = ENV_POLICY_MAP[task]()
        self.name = type(self.policy).__name__

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False):
        return np.stack([self.policy.get_action(o) for o in np.asarray(obs)]).astype(np.float32), state


# ----------------------------------------------------------------------------------------------
# SB3


def _algo_class(algo: str) -> Any:
    from stable_baselines3 import PPO, SAC, TD3

    return {"sac": SAC, "td3": TD3, "ppo": PPO}[algo]


def algo_of_zip(path: str) -> str:
    """The SB3 algorithm a .zip was saved by, read from its JSON ``data`` entry (nothing unpickled)."""
    from tt_agents.sb3_zip import SB3ZipError, sb3_algo_of_zip

    try:
        algo = sb3_algo_of_zip(path)
    except SB3ZipError as e:
        raise UsageError(f"{e}; pass --algo") from None
    if algo not in ("sac", "td3", "ppo"):
        raise UsageError(f"{path} was saved by {algo.upper()}; this script's experts are SAC, TD3 or PPO")
    return algo


def policy_kwargs_of(hp: dict[str, Any]) -> dict[str, Any]:
    """The SB3 ``policy_kwargs`` of these hyperparameters (``"gelu"`` as the class)."""
    pk = dict(hp.get("policy_kwargs") or {})
    if pk.get("activation_fn") == "gelu":
        pk["activation_fn"] = torch.nn.GELU
    return pk


def load_model(path: str | Path, algo: str, observation_space: gym.Space, action_space: gym.Space,
               hp: dict[str, Any], device: str) -> Any:
    """An SB3 policy from its .zip with nothing in it unpickled (:func:`tt_agents.sb3_zip.load_sb3_zip`), for an env
    with these spaces; ``hp`` gives the ``policy_kwargs`` where the zip holds them pickled (CarRacing's GELU)."""
    from tt_agents.sb3_zip import SB3ZipError, load_sb3_zip

    try:
        return load_sb3_zip(path, observation_space, action_space, algo, policy_kwargs=policy_kwargs_of(hp),
                            device=device)
    except SB3ZipError as e:
        raise UsageError(str(e)) from None


def build_model(algo: str, hp: dict[str, Any], venv: Any, args: Args) -> Any:
    from stable_baselines3.common.noise import NormalActionNoise

    kw = {k: v for k, v in hp.items() if k not in ("n_envs", "linear_lr", "action_noise_std")}
    if hp.get("linear_lr"):
        kw["learning_rate"] = _lin(hp["learning_rate"])
    if "action_noise_std" in hp:
        dim = venv.action_space.shape[-1]
        kw["action_noise"] = NormalActionNoise(np.zeros(dim), hp["action_noise_std"] * np.ones(dim))
    pk = policy_kwargs_of(hp)
    if pk:
        kw["policy_kwargs"] = pk
    image = len(venv.observation_space.shape) == 3
    policy = "CnnPolicy" if image else "MlpPolicy"
    return _algo_class(algo)(policy, venv, seed=args.seed, device=args.device, verbose=0, **kw)


def continue_training_from(model: Any, path: str) -> None:
    """Load an SB3 .zip's policy and optimizer state (``set_parameters``: ``torch.load(weights_only=True)``) and its
    step and update counts (plain JSON) into ``model``, so that ``learn(reset_num_timesteps=False)`` trains on from
    it as SB3's ``load`` + ``learn`` would; nothing in the zip is unpickled. (``main`` checked its budget.)"""
    data = _zip_data(path)
    try:
        model.set_parameters(path, exact_match=True, device=model.device)
    except (RuntimeError, ValueError) as e:
        raise UsageError(f"--continue-from {path} does not fit this run's {type(model).__name__} ({e}); pass the "
                         "hyperparameters (--net-arch, --train-envs) the zip was trained with") from None
    model.num_timesteps = int(data.get("num_timesteps", 0))
    model._n_updates = int(data.get("_n_updates", 0))


def _zip_data(path: str) -> dict[str, Any]:
    """An SB3 zip's JSON data (nothing unpickled); not an SB3 zip: a usage error."""
    from tt_agents.sb3_zip import SB3ZipError, sb3_zip_data

    try:
        return sb3_zip_data(path)
    except SB3ZipError as e:
        raise UsageError(str(e)) from None


def train_expert(
    args: Args,
    algo: str,
    hp: dict[str, Any],
    out_dir: Path,
    train_log: Any | None,
    evaluate: Callable[[Any, int, str], float],
) -> tuple[Any, list[tuple[int, Path]], list[dict[str, Any]]]:
    """Train the expert, resumably; returns it, the checkpoints ``(env steps, path)`` saved along the way
    (the medium candidates) and the return curve (each candidate's evaluation).

    The training state is checkpointed every ``--checkpoint-every`` env steps and on Ctrl-C/SIGTERM
    into ``out_dir/resume`` (:mod:`tt_agents.sb3_resume`: exact, no pickle); with ``--resume`` the
    run continues from it to the same expert, checkpoints and training log as an uninterrupted run.
    """
    from stable_baselines3.common.callbacks import BaseCallback, CallbackList
    from stable_baselines3.common.logger import configure
    from stable_baselines3.common.monitor import Monitor
    from stable_baselines3.common.vec_env import DummyVecEnv

    from tt_agents.sb3_resume import (
        RebuildOnReset,
        ReplayableEnv,
        ResumeCheckpoints,
        latest_checkpoint,
        load_training_state,
        needs_rebuild,
    )
    from wrappers.action_logger import ActionLogger

    def thunk() -> gym.Env:
        env = make_env(args)
        if needs_rebuild(env):  # Box2D: a world without history, so that a resume replays it exactly
            env.close()
            env = RebuildOnReset(lambda: make_env(args))
        if train_log is not None:
            env = ActionLogger(env, train_log, unfinished="discard")
        return ReplayableEnv(Monitor(env))  # outermost: a resume replays the steps through the logger too

    venv = DummyVecEnv([thunk for _ in range(hp["n_envs"])])
    venv.seed(args.seed)
    model = build_model(algo, hp, venv, args)
    if args.continue_from:
        continue_training_from(model, args.continue_from)
    # SB3's training statistics (losses, fps, episode returns) as TensorBoard events in the run's folder; a resumed
    # run adds an events file beside the first. (Without a logger of its own SB3 makes an empty /tmp/SB3-* folder
    # at every learn().)
    model.set_logger(configure(str(out_dir / "tensorboard"), ["tensorboard"]))
    ckpt_dir = out_dir / "checkpoints"
    resume_dir = out_dir / "resume"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    every = max(1, args.expert_steps // max(1, args.n_checkpoints))
    run: dict[str, Any] = {"saved": [], "curve": [], "next": (model.num_timesteps // every + 1) * every}
    if args.resume and latest_checkpoint(resume_dir) is not None:
        state = load_training_state(model, resume_dir)
        run = state["extra"]["collect"]
        if train_log is not None:
            train_log.truncate_episodes(run["train_log_episodes"])
        print(f"resumed training at step {model.num_timesteps} from {latest_checkpoint(resume_dir)}", file=sys.stderr)
    elif resume_dir.exists():
        shutil.rmtree(resume_dir)
    bar = tqdm(total=args.expert_steps, initial=model.num_timesteps, desc=f"train {algo.upper()} expert",
               disable=not args.progress, dynamic_ncols=True)

    class Candidates(BaseCallback):
        """Saves and evaluates the medium candidates, every ``every`` env steps, and draws the bar."""

        def _on_step(self) -> bool:
            step = self.num_timesteps
            bar.update(step - bar.n)
            if step >= run["next"] and step < args.expert_steps:
                path = ckpt_dir / f"step_{step}.zip"
                model.save(path)
                # evaluated with training's RNGs set aside, so that the curve changes nothing in the run
                np_state = np.random.get_state()
                with torch.random.fork_rng():
                    ret = evaluate(model, args.seed + 4000 + len(run["saved"]), f"evaluate step {step}")
                np.random.set_state(np_state)
                run["saved"].append([step, str(path)])
                run["curve"].append({"step": step, "return": ret, "seconds": round(time.perf_counter() - t0, 1)})
                bar.set_postfix(eval_return=f"{ret:.0f}")
                while run["next"] <= step:
                    run["next"] += every
            if kill_at is not None and step >= kill_at:  # tests: a crash mid-run
                os.kill(os.getpid(), signal.SIGKILL)
            return True

    def extra() -> dict[str, Any]:
        return {"collect": {**run, "train_log_episodes": train_log.total_episodes if train_log is not None else 0}}

    kill_at = int(os.environ[_KILL_ENV]) if os.environ.get(_KILL_ENV) else None
    cb = ResumeCheckpoints(resume_dir, args.checkpoint_every, extra=extra, handle_signals=True)
    t0 = time.perf_counter() - (run["curve"][-1]["seconds"] if run["curve"] else 0.0)
    try:
        model.learn(total_timesteps=args.expert_steps - model.num_timesteps, callback=CallbackList([Candidates(), cb]),
                    reset_num_timesteps=False)
    finally:
        bar.close()
    if cb.interrupted is not None:
        print(f"interrupted: the training state at step {model.num_timesteps} is saved in {resume_dir}; "
              "run the same command with --resume to continue", file=sys.stderr)
        raise SystemExit(130)
    venv.close()
    return model, [(int(s), Path(p)) for s, p in run["saved"]], run["curve"]


def choose_expert(args: Args, load: Callable[[Path], Any], out_dir: Path, checkpoints: list[tuple[int, Path]],
                  curve: list[dict[str, Any]], evaluate: Callable[[Any, int, str], float]) -> dict[str, Any]:
    """Copy the expert that ``--expert-checkpoint`` names to ``out_dir/expert.zip`` (the final policy is
    ``out_dir/final.zip``); what was chosen, for the expert's metadata. ``best`` evaluates the final policy like
    the checkpoints (its own seed) and takes the highest return, the final one on a tie."""
    final = out_dir / "final.zip"
    if args.expert_checkpoint == "final":
        shutil.copyfile(final, out_dir / "expert.zip")
        return {"checkpoint": "final", "step": args.expert_steps}
    final_return = evaluate(load(final),
                            args.seed + 4000 + len(checkpoints), "evaluate final policy")
    returns = {int(point["step"]): float(point["return"]) for point in curve}  # each checkpoint's evaluation
    step, path, ret = args.expert_steps, final, final_return
    for st, p in checkpoints:
        if returns.get(st, -np.inf) > ret:
            step, path, ret = st, p, returns[st]
    shutil.copyfile(path, out_dir / "expert.zip")
    return {"checkpoint": "best", "step": step, "eval_return": ret, "final_eval_return": final_return}


# ----------------------------------------------------------------------------------------------
# main


def _mean(xs: list[float]) -> float | None:
    return float(np.mean(xs)) if xs else None


# may differ between a run and its --resume (expert_checkpoint: checked against the finished datasets in main)
_NOT_COMPARED = ("resume", "progress", "overwrite", "expert_checkpoint")


class Progress:
    """What a run has finished, in ``--out-dir/progress.json`` (written atomically), for ``--resume``.

    ``started`` lists phases (training, each dataset) begun and not finished: a resumed run redoes
    those from their start (training from its last checkpoint); ``done`` holds each finished
    phase's results, which a resumed run takes as they are.
    """

    def __init__(self, path: Path, args: Args) -> None:
        from tt_agents.utils import atomic_write_bytes

        self.path, self._write = path, atomic_write_bytes
        compared = {k: v for k, v in json.loads(json.dumps(asdict(args))).items() if k not in _NOT_COMPARED}
        self.args = compared
        self.done: dict[str, Any] = {}
        self.started: list[str] = []
        self._t0: dict[str, float] = {}
        if not args.resume:
            return
        if not path.exists():
            raise UsageError(f"--resume: {path} does not exist, so there is no run in {path.parent} to continue; "
                             "drop --resume (or pass the --out-dir of the interrupted run)")
        saved = json.loads(path.read_text())
        diff = sorted(k for k in set(compared) | set(saved["args"]) if compared.get(k) != saved["args"].get(k))
        if diff:
            changes = ", ".join(f"--{k.replace('_', '-')} {saved['args'].get(k)!r} -> {compared.get(k)!r}"
                                for k in diff)
            raise UsageError(f"--resume needs the interrupted run's arguments; these differ: {changes}")
        if "all" in saved["done"]:
            raise UsageError(f"the run in {path.parent} finished; there is nothing to resume (drop --resume)")
        self.done, self.started = saved["done"], saved["started"]

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"args": self.args, "started": self.started, "done": self.done}
        self._write(self.path, json.dumps(body, indent=1, default=str).encode())

    def start(self, phase: str) -> None:
        if phase not in self.started:
            self.started.append(phase)
        self._t0[phase] = time.perf_counter()
        self.save()

    def finish(self, phase: str, result: dict[str, Any]) -> None:
        """Record ``phase`` as done with its ``result`` and its wall seconds (a phase runs in one process: an
        unfinished one restarts; training, resumed across processes, brings its own ``seconds``)."""
        if phase in self._t0:
            result = {"seconds": round(time.perf_counter() - self._t0[phase], 1), **result}
        self.done[phase] = result
        self.started = [p for p in self.started if p != phase]
        self.save()


def main(args: Args) -> dict[str, Any]:
    from tt_agents.data.minari_io import MinariReader, MinariWriter, dataset_path
    from tt_agents.rollout import rollout
    from tt_agents.utils import import_sb3
    from wrappers.action_logger import VectorActionLogger

    import_sb3()  # quiet: no notice about the old gym on stderr
    torch.set_num_threads(args.torch_threads)
    kinds = list(dict.fromkeys(args.datasets))
    bad = [k for k in kinds if k not in DATASET_KINDS]
    if bad:
        raise UsageError(f"unknown datasets {bad}; choose from {DATASET_KINDS}")
    if args.expert_zip and "medium-replay" in kinds:
        raise UsageError(
            "medium-replay is the training log of the expert, so it needs a trained expert: drop --expert-zip "
            "or drop medium-replay from --datasets"
        )
    if args.medium_zip and "medium-replay" in kinds:
        raise UsageError(
            "medium-replay is cut at the trained medium checkpoint: drop --medium-zip or medium-replay"
        )
    if args.expert_zip and "medium" in kinds and not args.medium_zip:
        raise UsageError("with --expert-zip, 'medium' needs --medium-zip (no training checkpoints exist)")
    if args.algo not in (("auto", "scripted") if is_metaworld(args.env_id) else ("auto", "sac", "td3", "ppo")):
        raise UsageError(f"--algo {args.algo} with {args.env_id}: the scripted experts are Meta-World's "
                         "(metaworld/<task>), and Meta-World's experts are its scripted policies (--algo scripted or "
                         "auto)")
    if is_metaworld(args.env_id):
        trained = [k for k in kinds if k in ("medium", "medium-replay")]
        if trained or args.expert_zip or args.continue_from:
            raise UsageError(f"Meta-World's expert is its scripted policy (nothing is trained): make random and "
                             f"expert only (not {trained}), without --expert-zip or --continue-from")
    if args.continue_from:  # all checked before anything is written
        if args.expert_zip:
            raise UsageError("--continue-from trains an expert and --expert-zip loads one: pass one of them")
        if not Path(args.continue_from).is_file():
            raise UsageError(f"--continue-from {args.continue_from} does not exist: pass an SB3 .zip (a run's "
                             "final.zip)")
        steps = int(_zip_data(args.continue_from).get("num_timesteps", 0))
        if steps >= args.expert_steps:
            raise UsageError(
                f"--continue-from {args.continue_from} was trained for {steps} env steps already; pass --expert-steps "
                f"above {steps} (the total budget, counted from the start of its training)"
            )
        if "medium-replay" in kinds:
            raise UsageError(
                "medium-replay is the whole training log, and --continue-from's run logs only the steps after the "
                "zip's: drop medium-replay from --datasets (or train from scratch)"
            )
    if is_procgen(args.env_id) and args.max_episode_steps is not None:
        warnings.warn("--max-episode-steps is ignored for Procgen (each game has its own time limit)", stacklevel=1)
    namespace = args.namespace or default_namespace(args.env_id)
    ids = {k: f"{namespace}/{k}-v{args.version}" for k in kinds}
    out_dir = Path(args.out_dir or Path("runs") / "collect" / namespace)
    progress = Progress(out_dir / "progress.json", args)
    for kind, dataset_id in ids.items():
        if kind in progress.done or kind in progress.started:
            continue  # --resume: kept as finished, or rewritten from its start
        if dataset_path(dataset_id).exists() and not args.overwrite:
            raise UsageError(
                f"dataset {dataset_id} already exists at {dataset_path(dataset_id)}; pass --overwrite"
            )
    out_dir.mkdir(parents=True, exist_ok=True)
    progress.save()

    probe = make_vec(args, 1)
    obs_space, act_space = probe.single_observation_space, probe.single_action_space
    probe.close()
    image = len(getattr(obs_space, "shape", ()) or ()) == 3
    algo = args.algo
    if is_metaworld(args.env_id):
        algo = "scripted"
    elif algo == "auto":
        if args.expert_zip or args.continue_from:
            algo = algo_of_zip(args.expert_zip or args.continue_from)
        else:
            algo = "ppo" if image or not isinstance(act_space, gym.spaces.Box) else "sac"
    if algo in ("sac", "td3") and not isinstance(act_space, gym.spaces.Box):
        raise UsageError(
            f"{algo.upper()} needs continuous (Box) actions, {args.env_id} has {act_space}; use --algo ppo"
        )
    hp = {} if algo == "scripted" else fit_budget(algo, zoo_hyperparameters(algo, args.env_id), args.expert_steps,
                                                   args.train_envs)
    if args.net_arch:
        hp["policy_kwargs"] = {**hp.get("policy_kwargs", {}), "net_arch": list(args.net_arch)}

    def load(path: str | Path, which: str = algo) -> Any:  # an SB3 zip, nothing in it unpickled
        return load_model(path, which, obs_space, act_space, hp, args.device)
    common = {
        "author": ["tt-agents scripts/collect.py"],
        "code_permalink": "scripts/collect.py",
        "collect_args": asdict(args),
    }
    stats: dict[str, dict[str, Any]] = {}

    def collect(kind: str, model: Any, seed: int, policy: dict[str, Any]) -> list[float]:
        if kind in progress.done:  # --resume: finished before the interruption
            stats[kind] = progress.done[kind]["stats"]
            return progress.done[kind]["returns"]
        progress.start(kind)
        venv = make_vec(args, args.num_envs)
        logger = VectorActionLogger(
            venv,
            ids[kind],
            overwrite=True,  # checked above: a new dataset, --overwrite, or this run's own unfinished one
            metadata={
                **common,
                "algorithm_name": policy["name"],
                "policy": policy,
                "description": f"{kind} dataset of {args.env_id}, collected by scripts/collect.py",
            },
        )
        res = rollout(logger, RandomPolicy(logger, seed) if model is None else model, n_steps=args.dataset_steps,
                      seed=seed, deterministic=args.deterministic, desc=f"collect {ids[kind]}", progress=args.progress)
        returns = [float(r) for r in res.returns]
        logger.close()
        stats[kind] = {
            "episodes": logger.writer.total_episodes,
            "steps": logger.writer.total_steps,
            "finished_returns": len(returns),
            "mean_return": _mean(returns),
        }
        logger.writer.close()
        progress.finish(kind, {"stats": stats[kind], "returns": returns})
        return returns

    def evaluate(model: Any, seed: int, desc: str, random_seed: int = 0) -> float:
        """Mean return of an SB3 model (``None``: the random policy, seeded with ``random_seed``) over ``--eval-episodes``."""
        venv = make_vec(args, args.num_envs)
        policy = RandomPolicy(venv, random_seed) if model is None else model
        res = rollout(venv, policy, n_episodes=args.eval_episodes, seed=seed, deterministic=args.deterministic,
                      desc=desc, progress=args.progress)
        venv.close()
        return float(np.mean(res.returns))

    # 1. the expert (trained first, the long part: resumable, with checkpoints and the training log; or loaded)
    checkpoints: list[tuple[int, Path]] = []
    curve: list[dict[str, Any]] = []
    train_log_path = out_dir / "train-log"
    t_train = 0.0
    if "train" in progress.done:  # --resume after training had finished
        done = progress.done["train"]
        checkpoints = [(int(st), Path(p)) for st, p in done["checkpoints"]]
        curve, t_train, expert_info = done["curve"], done["seconds"], done["expert_info"]
        chosen = expert_info.get("checkpoint", "final")  # runs from before --expert-checkpoint: the final policy
        if args.expert_checkpoint != chosen:
            made = [k for k in ("expert", "medium", "medium-replay") if k in progress.done]
            if made:
                raise UsageError(
                    f"--expert-checkpoint {chosen} -> {args.expert_checkpoint}: the {', '.join(made)} dataset(s) of "
                    f"this run were made with its {chosen} expert; keep --expert-checkpoint {chosen}, or start a new run"
                )
            if not (out_dir / "final.zip").exists():  # runs from before --expert-checkpoint: expert.zip is the final
                shutil.copyfile(out_dir / "expert.zip", out_dir / "final.zip")
            expert_info.update(choose_expert(args, load, out_dir, checkpoints, curve, evaluate))
            progress.done["train"]["expert_info"] = expert_info
            progress.save()
        elif chosen == "final" and (out_dir / "final.zip").exists():  # a stop between a switch's copy and its save
            shutil.copyfile(out_dir / "final.zip", out_dir / "expert.zip")
        expert = load(out_dir / "expert.zip")
    elif algo == "scripted":
        expert = ScriptedPolicy(args.env_id.split("/", 1)[1])
        expert_info = {"name": f"Meta-World {expert.name}", "algorithm": "scripted", "policy_class": expert.name}
    elif args.expert_zip:
        expert = load(args.expert_zip)
        expert_info = {"name": f"{algo.upper()}-expert", "algorithm": algo.upper(), "zip": str(args.expert_zip)}
    else:
        train_log = None
        if "medium-replay" in kinds:
            if train_log_path.exists() and not (args.resume and "train" in progress.started):
                shutil.rmtree(train_log_path)
            spec_env = make_env(args)
            train_log = MinariWriter(
                f"{namespace}/train-log-v{args.version}",
                obs_space,
                act_space,
                path=train_log_path,
                fsync=False,  # a staging file: medium-replay copies from it once training is done
                env_spec=spec_env.spec,
            )
            spec_env.close()
        progress.start("train")
        expert, checkpoints, curve = train_expert(args, algo, hp, out_dir, train_log, evaluate)
        if train_log is not None:
            train_log.close()
        t_train = float(curve[-1]["seconds"]) if curve else 0.0  # wall time up to the last evaluation
        expert.save(out_dir / "final.zip")
        expert_info = {
            "name": f"{algo.upper()}-expert",
            "algorithm": algo.upper(),
            "trained_steps": args.expert_steps,
            "hyperparameters": {k: (v if not callable(v) else repr(v)) for k, v in hp.items()},
            **({"continued_from": str(args.continue_from)} if args.continue_from else {}),
            "zip": str(out_dir / "expert.zip"),
            **choose_expert(args, load, out_dir, checkpoints, curve, evaluate),
        }
        # the model in hand is the final policy; a checkpoint saved at the last step holds the same weights
        if expert_info["step"] != args.expert_steps:
            expert = load(out_dir / "expert.zip")
        progress.finish("train", {"checkpoints": [[st, str(p)] for st, p in checkpoints], "curve": curve,
                                  "seconds": t_train, "expert_info": expert_info})
    expert_info["deterministic"] = args.deterministic

    # 2. the random policy: ref_min_score
    random_returns = collect("random", None, args.seed, {"name": "uniform-random"}) if "random" in kinds else []
    ref_min = _mean(random_returns)
    if ref_min is None:
        ref_min = evaluate(None, args.seed + 3000, "evaluate random policy", random_seed=args.seed + 1)

    # 3. the expert's data: ref_max_score
    expert_returns = collect("expert", expert, args.seed + 1000, expert_info) if "expert" in kinds else []
    ref_max = _mean(expert_returns)
    if ref_max is None:
        ref_max = evaluate(expert, args.seed + 3001, "evaluate expert")

    # 4. medium: the checkpoint closest to a third of the way from random to expert
    medium_step = None
    if "medium" in kinds or "medium-replay" in kinds:
        if args.medium_zip:
            medium = load(args.medium_zip, algo_of_zip(args.medium_zip) if args.algo == "auto" else algo)
            medium_info = {"name": "medium", "zip": str(args.medium_zip)}
        else:
            if not checkpoints:
                raise UsageError(
                    "training saved no checkpoint to pick 'medium' from; raise --n-checkpoints or --expert-steps"
                )
            target = ref_min + args.medium_fraction * (ref_max - ref_min)
            scores = [float(c["return"]) for c in curve]  # each checkpoint was evaluated as it was saved
            best = int(np.argmin([abs(s - target) for s in scores]))
            medium_step, medium_path = checkpoints[best]
            medium = load(medium_path)
            shutil.copyfile(medium_path, out_dir / "medium.zip")
            medium_info = {
                "name": f"{algo.upper()}-medium",
                "algorithm": algo.upper(),
                "trained_steps": medium_step,
                "eval_return": scores[best],
                "target_return": target,
                "checkpoint_returns": {str(s): r for (s, _), r in zip(checkpoints, scores)},
                "zip": str(out_dir / "medium.zip"),
            }
        medium_info["deterministic"] = args.deterministic
        if "medium" in kinds:
            collect("medium", medium, args.seed + 2000, medium_info)

    # 5. medium-replay: the training episodes up to the medium checkpoint
    if "medium-replay" in kinds and "medium-replay" in progress.done:
        stats["medium-replay"] = progress.done["medium-replay"]["stats"]
    elif "medium-replay" in kinds:
        progress.start("medium-replay")
        reader = MinariReader(train_log_path)
        with reader.open() as f:
            lengths = reader.lengths(f)
        ends = np.cumsum(lengths)
        n_eps = max(1, int(np.searchsorted(ends, medium_step, side="right"))) if len(lengths) else 0
        if n_eps == 0:
            raise UsageError(
                "the expert's training finished no episode, so medium-replay would be empty; raise --expert-steps"
            )
        writer = MinariWriter(
            ids["medium-replay"],
            obs_space,
            act_space,
            env_spec=reader.metadata.get("env_spec"),
            overwrite=True,  # checked above, as for the others
            metadata={
                **common,
                "algorithm_name": f"{algo.upper()}-training",
                "policy": {
                    **medium_info,
                    "name": f"{algo.upper()}-training",
                    "replay_of": "the expert's training up to the medium checkpoint",
                },
                "description": f"medium-replay dataset of {args.env_id}: the first {n_eps} episodes of the expert's training",
            },
        )
        writer.copy_episodes(train_log_path, range(n_eps))
        with reader.open() as f:
            rets = [float(np.sum(f[f"episode_{i}"]["rewards"][()])) for i in range(n_eps)]
        stats["medium-replay"] = {
            "episodes": writer.total_episodes,
            "steps": writer.total_steps,
            "mean_return": _mean(rets),
        }
        writer.close()
        progress.finish("medium-replay", {"stats": stats["medium-replay"]})

    # 6. reference scores in every dataset
    n_avg = len(expert_returns) or args.eval_episodes
    for kind in kinds:
        spec = MinariReader(dataset_path(ids[kind])).metadata.get("env_spec")
        with MinariWriter(ids[kind], obs_space, act_space, env_spec=spec) as writer:
            writer.update_metadata(
                {"ref_min_score": ref_min, "ref_max_score": ref_max, "num_episodes_average_score": n_avg,
                 "expert_return_curve": curve}
            )
    if not args.keep_intermediate:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        shutil.rmtree(train_log_path, ignore_errors=True)
    shutil.rmtree(out_dir / "resume", ignore_errors=True)
    progress.finish("all", {})
    summary = {
        "env_id": args.env_id,
        "algo": algo,
        "datasets": {ids[k]: stats[k] for k in kinds},
        "ref_min_score": ref_min,
        "ref_max_score": ref_max,
        "medium_checkpoint_step": medium_step,
        "expert_zip": expert_info.get("zip"),
        "expert_checkpoint": expert_info.get("checkpoint"),
        "expert_step": expert_info.get("step"),
        "continued_from": expert_info.get("continued_from"),
        "expert_return_curve": curve,
        "train_seconds": round(t_train, 2),
        # training (across resumed processes) and every dataset phase, each timed where it ran
        "total_seconds": round(t_train + sum(float(v.get("seconds", 0.0)) for k, v in progress.done.items()
                                             if k != "train"), 2),
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(json.dumps(summary, indent=2, default=str))
    return summary


if __name__ == "__main__":
    run(lambda: main(tyro.cli(Args)))  # a user error: one line on stderr, exit code 2 (scripts/_cli.py)
