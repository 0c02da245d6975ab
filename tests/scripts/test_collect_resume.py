"""Resumable expert training: an SB3 run checkpointed and resumed (after SIGKILL or Ctrl-C) is the same run.

The learner itself (tt_agents.sb3_resume) on Pendulum with TD3, SAC with gSDE and PPO, and
scripts/collect.py killed mid-training and resumed, whose four datasets must equal an uninterrupted
run's field for field.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
import torch

import tt_agents.envs.procgen  # noqa: F401  (registers procgen/* ids)
from tests.scripts._helpers import load_script, run_script
from tt_agents.data import load_dataset
from tt_agents.sb3_resume import ReplayableEnv, ResumeCheckpoints, ResumeError, load_training_state

pytest.importorskip("stable_baselines3")
from stable_baselines3 import PPO, SAC, TD3  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402


def _build(cls, n_envs: int = 1, env_id: str = "Pendulum-v1", **kw):
    venv = DummyVecEnv([lambda: ReplayableEnv(Monitor(gym.make(env_id))) for _ in range(n_envs)])
    venv.seed(0)
    return cls("MlpPolicy", venv, seed=0, device="cpu", policy_kwargs=dict(net_arch=[16, 16]), **kw)


CASES = {
    "td3-hopper": (TD3, dict(learning_starts=40, env_id="Hopper-v5")),  # MuJoCo: short random episodes
    "sac-gsde-train-freq-8": (SAC, dict(learning_starts=50, use_sde=True, train_freq=8, gradient_steps=8)),
    "ppo-2-envs-gsde": (PPO, dict(n_steps=32, batch_size=32, n_envs=2, use_sde=True, sde_sample_freq=4)),
    # Procgen: the level after an episode's end comes from the game's own RNG, not the reset's (its state is saved)
    "ppo-procgen-bigfish": (PPO, dict(n_steps=32, batch_size=32, n_envs=2, n_epochs=1, env_id="procgen/bigfish-v0")),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_learner_is_the_uninterrupted_one_bit_for_bit(tmp_path, case):
    cls, kw = CASES[case]
    total = 230
    torch.set_num_threads(1)
    whole = _build(cls, **kw)
    whole.learn(total)
    # a run that checkpoints at 90 (mid-episode for Pendulum's 200-step episodes) and dies at ~170
    _build(cls, **kw).learn(170, callback=ResumeCheckpoints(tmp_path, every=90))
    resumed = _build(cls, **kw)
    state = load_training_state(resumed, tmp_path)
    assert 90 <= state["num_timesteps"] < 170
    if case == "ppo-procgen-bigfish":  # an env came back to a level its reset RNG alone would not give
        assert any(rec["seed"] is None for rec in state["envs"])
    resumed.learn(total - state["num_timesteps"], reset_num_timesteps=False)
    assert resumed.num_timesteps == whole.num_timesteps
    a, b = whole.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(whole._last_obs, resumed._last_obs)


def test_ctrl_c_saves_a_checkpoint_and_stops_and_the_resume_is_exact(tmp_path):
    cls, kw = CASES["td3-hopper"]
    torch.set_num_threads(1)
    whole = _build(cls, **kw)
    whole.learn(200)

    def interrupt(step: int) -> None:
        if step == 110:
            os.kill(os.getpid(), signal.SIGINT)  # delivered to the callback's handler, not KeyboardInterrupt

    cb = ResumeCheckpoints(tmp_path, every=0, on_rollout_start=interrupt, handle_signals=True)
    before = signal.getsignal(signal.SIGINT)
    stopped = _build(cls, **kw)
    stopped.learn(200, callback=cb)
    assert cb.interrupted == signal.SIGINT and stopped.num_timesteps < 200
    assert signal.getsignal(signal.SIGINT) == before  # the handler it found is back
    resumed = _build(cls, **kw)
    state = load_training_state(resumed, tmp_path)
    assert state["num_timesteps"] == 110
    resumed.learn(200 - state["num_timesteps"], reset_num_timesteps=False)
    a, b = whole.policy.state_dict(), resumed.policy.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_missing_checkpoint_and_another_algorithm(tmp_path):
    with pytest.raises(ResumeError, match="no training checkpoint"):
        load_training_state(_build(TD3, learning_starts=10), tmp_path)
    _build(TD3, learning_starts=10).learn(60, callback=ResumeCheckpoints(tmp_path, every=30))
    with pytest.raises(ResumeError, match="holds TD3 training, not SAC"):
        load_training_state(_build(SAC, learning_starts=10), tmp_path)


# ----------------------------------------------------------------------------------------------
# collect.py


# Box2D (rebuilt at each reset: its world's history would part the runs), with RL Zoo's SAC settings for
# BipedalWalker (gSDE, 64 env steps then 64 gradient steps)
TINY = ["--env-id", "BipedalWalker-v3", "--max-episode-steps", "40", "--net-arch", "16", "16", "--expert-steps", "600",
        "--checkpoint-every", "150", "--n-checkpoints", "3", "--eval-episodes", "2", "--dataset-steps", "200",
        "--num-envs", "2", "--namespace", "walker", "--no-progress"]
KINDS = ("random", "medium", "medium-replay", "expert")


def _fields(path: Path) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path / "data" / "main_data.hdf5", "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
    return out


def _metadata(path: Path) -> dict:
    text = (path / "data" / "metadata.json").read_text()
    meta = json.loads(text.replace("out-a", "out").replace("out-b", "out"))  # the runs' own folders
    for k in ("collect_args", "dataset_size"):
        meta.pop(k, None)
    for point in meta["expert_return_curve"]:
        point.pop("seconds")  # wall time
    return meta


def test_collect_killed_mid_training_resumes_to_the_same_datasets(tmp_path, monkeypatch):
    collect = load_script("collect")
    # uninterrupted, in this process
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "a"))
    import tyro

    collect.main(tyro.cli(collect.Args, args=[*TINY, "--out-dir", str(tmp_path / "out-a")]))
    # SIGKILLed at env step 420 (after the checkpoint at the rollout start at 320, mid-episode, with
    # training-log episodes written past it), then resumed
    store_b = tmp_path / "b"
    out_b = ["--out-dir", str(tmp_path / "out-b")]
    killed = run_script("collect.py", *TINY, *out_b, store=store_b, TT_COLLECT_SIGKILL_AT_STEP="420")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    progress = json.loads((tmp_path / "out-b" / "progress.json").read_text())
    assert progress["started"] == ["train"] and progress["done"] == {}  # training comes first
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store_b))
    with pytest.raises(collect.UsageError, match="--expert-steps 600 -> 700"):
        collect.main(tyro.cli(collect.Args, args=[*TINY, "--expert-steps", "700", *out_b, "--resume"]))
    collect.main(tyro.cli(collect.Args, args=[*TINY, *out_b, "--resume"]))
    for kind in KINDS:
        a, b = tmp_path / "a" / "walker" / f"{kind}-v0", store_b / "walker" / f"{kind}-v0"
        ds = load_dataset(str(b))
        assert ds.metadata["env_id"] == "BipedalWalker-v3" and ds.metadata["policy"]["name"]
        assert ds.metadata["algorithm_name"].startswith("SAC") or kind == "random"
        assert minari.load_dataset(str(b)).total_steps == ds.total_steps  # Minari reads what collect.py wrote
        assert kind == "medium-replay" or 200 <= ds.total_steps < 202
        fa, fb = _fields(a), _fields(b)
        assert sorted(fa) == sorted(fb) and len(fa) >= 5
        for name in fa:
            np.testing.assert_array_equal(fa[name], fb[name], err_msg=f"{kind}: {name}")
        ma, mb = _metadata(a), _metadata(b)
        assert ma == mb
        assert [p["step"] for p in ma["expert_return_curve"]] == [200, 400]  # the medium candidates
    assert not (tmp_path / "out-b" / "resume").exists()  # the training state goes once the run is done
    with pytest.raises(collect.UsageError, match="nothing to resume"):
        collect.main(tyro.cli(collect.Args, args=[*TINY, *out_b, "--resume"]))


def test_a_damaged_env_state_is_refused_before_the_env_reads_it(tmp_path):
    cls, kw = CASES["ppo-procgen-bigfish"]
    torch.set_num_threads(1)
    _build(cls, **kw).learn(70, callback=ResumeCheckpoints(tmp_path, every=64))
    step = next(tmp_path.glob("step_*"))
    with np.load(step / "arrays.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    assert arrays["env0_state"].size > 1000  # Procgen's own serialization of the game
    arrays["env0_state"] = arrays["env0_state"].copy()
    arrays["env0_state"][100] ^= 1  # one bit, as a disk error would
    with open(step / "arrays.npz", "wb") as fh:
        np.savez(fh, **arrays)
    with pytest.raises(ResumeError, match="env 0's saved state is damaged"):
        load_training_state(_build(cls, **kw), tmp_path)
