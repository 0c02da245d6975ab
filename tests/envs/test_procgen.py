"""Procgen adapter: Gymnasium and SB3 env checkers, gym3-to-Gymnasium episode semantics, seeding, logging."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import minari
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tt_agents.data import load_dataset
from tt_agents.envs import ProcgenEnv, ProcgenVectorEnv
from wrappers import VectorActionLogger

REPO = Path(__file__).resolve().parents[2]


def test_import_is_quiet():
    out = subprocess.run(
        [sys.executable, "-c", "from tt_agents.envs import ProcgenEnv; ProcgenEnv('coinrun').reset(seed=0); import procgen"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "Gym has been unmaintained" not in out.stderr + out.stdout


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
def test_passes_gymnasium_and_sb3_env_checkers():
    env = gym.make("procgen/coinrun-v0", distribution_mode="easy", render_mode="rgb_array")
    check_env(env.unwrapped)
    check_env(env)
    frame = env.render()
    assert frame.shape == (512, 512, 3) and frame.dtype == np.uint8
    sb3_check_env(ProcgenEnv("coinrun", distribution_mode="easy"), warn=False)


def test_spaces_and_registration():
    env = gym.make("procgen/bigfish-v0", distribution_mode="easy")
    assert env.observation_space == gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    assert env.action_space == gym.spaces.Discrete(15)
    envs = gym.make_vec("procgen/bigfish-v0", num_envs=3, vectorization_mode="vector_entry_point", num_threads=0)
    assert isinstance(envs.unwrapped, ProcgenVectorEnv)
    assert envs.metadata["autoreset_mode"] is AutoresetMode.SAME_STEP
    obs, info = envs.reset(seed=0)
    assert obs.shape == (3, 64, 64, 3) and obs.dtype == np.uint8 and info["level_seed"].shape == (3,)
    with pytest.raises(ValueError, match="unknown procgen game 'pong'"):
        ProcgenVectorEnv("pong")
    with pytest.raises(ValueError, match=r"actions must be 3 integers in 0..14"):
        envs.step(np.array([0, 1, 15]))


def _play(envs, steps, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        out.append(envs.step(rng.integers(0, 15, envs.num_envs)))
    return out


def test_seeding_is_reproducible():
    a = ProcgenVectorEnv("bigfish", 2, distribution_mode="easy", num_threads=0)
    b = ProcgenVectorEnv("bigfish", 2, distribution_mode="easy", num_threads=0)
    oa, _ = a.reset(seed=3)
    ob, _ = b.reset(seed=3)
    np.testing.assert_array_equal(oa, ob)
    for (o1, r1, t1, u1, _), (o2, r2, t2, u2, _) in zip(_play(a, 150, 0), _play(b, 150, 0)):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1 | u1, t2 | u2)
    oc, _ = b.reset(seed=4)
    assert not np.array_equal(oa, oc)


def test_episode_ends_map_to_gymnasium_same_step():
    envs = ProcgenVectorEnv("bigfish", 4, distribution_mode="easy", num_threads=0)
    obs, _ = envs.reset(seed=0)
    lengths = np.zeros(4, int)
    ended = 0
    for o, _, term, trunc, info in _play(envs, 300, 1):
        lengths += 1
        done = term | trunc
        if done.any():
            assert info["_final_obs"].tolist() == done.tolist()
            for i in np.flatnonzero(done):
                # the terminal frame does not exist: final_obs is the frame before the last step
                np.testing.assert_array_equal(info["final_obs"][i], obs[i])
                assert info["final_info"]["episode_length"][i] == lengths[i]
                ended += 1
            lengths[done] = 0
        assert not (term & trunc).any()
        obs = o
    assert ended > 0  # random bigfish fish get eaten within ~50 steps


def test_time_limit_is_a_truncation():
    envs = ProcgenVectorEnv("maze", 2, distribution_mode="easy", num_threads=0)  # maze's limit: 500 steps
    envs.reset(seed=0)
    truncated = 0
    for t, (_, _, term, trunc, _) in enumerate(_play(envs, 500, 2)):
        for i in np.flatnonzero(term | trunc):
            assert trunc[i] == (t == 499)  # ended at the time limit: truncated; earlier (cheese found): terminated
            truncated += int(trunc[i])
    assert truncated >= 1 and envs._timeout == 500


def test_forced_reset_starts_new_levels():
    envs = ProcgenVectorEnv("bigfish", 2, distribution_mode="easy", num_threads=0)
    _, info = envs.reset(seed=0)
    _play(envs, 5, 0)
    _, info2 = envs.reset()
    assert not np.array_equal(info["level_seed"], info2["level_seed"])
    (_, _, term, trunc, _), *_ = _play(envs, 1, 0)
    assert not (term | trunc).any()
    with pytest.raises(ValueError, match="cannot reset only some sub-envs"):
        envs.reset(options={"reset_mask": np.array([True, False])})


def test_get_state_and_set_state_continue_exactly_across_episode_ends():
    """A fresh env (other seed) set to a saved state steps on exactly as the original did, through the
    episode ends after it (the level sequence is in the state) and the time-limit count."""
    a = ProcgenVectorEnv("bigfish", 3, distribution_mode="easy", num_levels=50, num_threads=0)
    a.reset(seed=1)
    _play(a, 40, 0)
    saved, obs_a, steps_a = a.get_state(), a._obs.copy(), a._ep_len.copy()
    after = _play(a, 200, 5)
    b = ProcgenVectorEnv("bigfish", 3, distribution_mode="easy", num_levels=50, num_threads=0)
    obs_b, info = b.set_state(saved)
    np.testing.assert_array_equal(obs_b, obs_a)
    np.testing.assert_array_equal(b._ep_len, steps_a)  # the time limit counts on from where it was
    ends = 0
    for (o1, r1, t1, u1, _), (o2, r2, t2, u2, _) in zip(after, _play(b, 200, 5)):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(u1, u2)
        ends += int((t1 | u1).sum())
    assert ends > 0  # the replay crossed episode ends, where the next level comes from the game's own RNG
    with pytest.raises(ValueError, match="takes 3 states"):
        b.set_state(saved[:2])
    with pytest.raises(gym.error.ResetNeeded):
        ProcgenVectorEnv("bigfish", 1, distribution_mode="easy", num_threads=0).get_state()


def test_single_env_state_after_an_episode_end():
    env = ProcgenEnv("bigfish", distribution_mode="easy")
    env.reset(seed=0)
    rng = np.random.default_rng(0)
    while not any(env.step(int(rng.integers(15)))[2:4]):
        pass
    with pytest.raises(gym.error.ResetNeeded, match="reset"):
        env.get_state()  # between an episode's end and the reset after it
    start, _ = env.reset()
    saved = env.get_state()
    other = ProcgenEnv("bigfish", distribution_mode="easy")
    obs, _ = other.set_state(saved)
    np.testing.assert_array_equal(obs, start)
    np.testing.assert_array_equal(other.reset()[0], start)  # a reset right after keeps an episode start
    for _ in range(30):
        a = int(rng.integers(15))
        np.testing.assert_array_equal(env.step(a)[0], other.step(a)[0])


def test_single_env_terminal_step_and_next_level():
    env = ProcgenEnv("bigfish", distribution_mode="easy")
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(2000):
        prev = obs
        obs, r, term, trunc, info = env.step(int(rng.integers(15)))
        if term or trunc:
            break
    assert term or trunc
    np.testing.assert_array_equal(obs, prev)  # the frame before the end stands in for the unrendered terminal frame
    with pytest.raises(gym.error.ResetNeeded):
        env.step(0)
    first, info = env.reset()
    assert info["level_seed"] != 0 and not np.array_equal(first, obs)


def test_vector_logger_records_gym3_episodes_without_autoreset_steps():
    envs = VectorActionLogger(
        gym.make_vec("procgen/bigfish-v0", num_envs=3, vectorization_mode="vector_entry_point", num_threads=0),
        "procgen/bigfish/test-v0",
        fsync=False,
    )
    envs.reset(seed=0)
    lengths = []
    for _, _, term, trunc, info in _play(envs, 200, 3):
        done = term | trunc
        lengths += info["final_info"]["episode_length"][done].tolist() if done.any() else []
    envs.close()
    ds = minari.load_dataset("procgen/bigfish/test-v0")  # JPEG frames, decoded by Minari itself
    eps = list(ds.iterate_episodes())
    assert [len(e) for e in eps[: len(lengths)]] == lengths
    assert sum(len(e) for e in eps) == 3 * 200
    ours = load_dataset("procgen/bigfish/test-v0")
    assert ours.metadata["env_id"] == "procgen/bigfish-v0" and ours.metadata["autoreset_mode"] == "SameStep"
    assert ours[0].observations.shape == (lengths[0] + 1, 64, 64, 3)


def test_the_old_wrappers_procgen_module_still_works_with_a_deprecation_warning():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    import wrappers.procgen\nexcept DeprecationWarning as e:\n    print('warned:', e)\n"
        "warnings.simplefilter('ignore', DeprecationWarning)\n"
        "import wrappers.procgen as old, tt_agents.envs.procgen as new, wrappers\n"
        "assert old.ProcgenEnv is new.ProcgenEnv and wrappers.ProcgenVectorEnv is new.ProcgenVectorEnv\n"
        "print('same classes')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "warned: wrappers.procgen moved to tt_agents.envs.procgen" in proc.stdout and "same classes" in proc.stdout
