"""ActionLogger / VectorActionLogger: what the env produced is what the dataset holds, durably, in every mode."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import gymnasium as gym
import h5py
import minari
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from tests.fake_env import FakeEnv
from tt_agents.data import load_dataset
from tt_agents.data.minari_io import DatasetMismatchError, dataset_path
from wrappers import ActionLogger, VectorActionLogger
from wrappers.action_logger import MissingExtraError

REPO = Path(__file__).resolve().parents[2]


class DictObs(gym.ObservationWrapper):
    """FakeEnv's vector observation as a Dict with a discrete part."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = gym.spaces.Dict({"state": env.observation_space, "sign": gym.spaces.Discrete(2)})

    def observation(self, obs):
        return {"state": obs, "sign": int(obs[0] > 0)}


class StepInfo(gym.Wrapper):
    """Puts the step count and a 'plan' (an extra field) into info."""

    def reset(self, **kwargs):
        self.t = 0
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "t": 0, "x": 0.0}

    def step(self, action):
        self.t += 1
        obs, r, term, trunc, info = self.env.step(action)
        return obs, r, term, trunc, {**info, "t": self.t, "x": 0.5 * self.t, "plan": np.full(3, self.t, np.float32)}


def fake(obs_kind="vector", action_kind="continuous", episode_len=6, max_steps=None, dict_obs=False, infos=False):
    env = FakeEnv(obs_kind, action_kind, episode_len=episode_len)
    if max_steps is not None:
        env = gym.wrappers.TimeLimit(env, max_steps)
    if dict_obs:
        env = DictObs(env)
    if infos:
        env = StepInfo(env)
    return env


def run_episodes(env: gym.Env, n: int, seed: int = 0) -> list[dict]:
    """Play ``n`` episodes, recording what the env returned."""
    env.action_space.seed(seed)
    out = []
    for k in range(n):
        obs, _ = env.reset(seed=seed + k)
        ep = {"obs": [obs], "act": [], "rew": [], "term": [], "trunc": []}
        done = False
        while not done:
            a = env.action_space.sample()
            obs, r, term, trunc, _ = env.step(a)
            for key, v in zip(("obs", "act", "rew", "term", "trunc"), (obs, a, r, term, trunc)):
                ep[key].append(v)
            done = term or trunc
        out.append(ep)
    return out


def stack(values):
    if isinstance(values[0], dict):
        return {k: np.stack([v[k] for v in values]) for k in values[0]}
    return np.stack(values)


def assert_same(minari_ep, ep, exact=True):
    obs = stack(ep["obs"])
    if isinstance(obs, dict):
        for k in obs:
            np.testing.assert_array_equal(minari_ep.observations[k], obs[k])
    elif exact:
        np.testing.assert_array_equal(minari_ep.observations, obs)
    else:  # JPEG
        assert np.abs(minari_ep.observations.astype(int) - obs).mean() < 4
    np.testing.assert_array_equal(minari_ep.actions, np.stack(ep["act"]))
    np.testing.assert_array_equal(minari_ep.rewards, np.array(ep["rew"]))
    np.testing.assert_array_equal(minari_ep.terminations, np.array(ep["term"]))
    np.testing.assert_array_equal(minari_ep.truncations, np.array(ep["trunc"]))


# ----------------------------------------------------------------------------------------------
# single env


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.filterwarnings("ignore:.*Not able to test alternative render modes")
@pytest.mark.parametrize(
    "kind",
    [dict(), dict(obs_kind="image", action_kind="discrete"), dict(dict_obs=True, action_kind="discrete")],
    ids=["vector-box", "image-discrete", "dict-discrete"],
)
def test_passes_gymnasium_and_sb3_env_checkers(kind):
    check_env(ActionLogger(fake(**kind), "tests/check-gym-v0", fsync=False))
    sb3_check_env(ActionLogger(fake(**kind), "tests/check-sb3-v0", fsync=False), warn=False)
    assert minari.load_dataset("tests/check-gym-v0").total_episodes > 0


@pytest.mark.parametrize(
    ("kind", "exact"),
    [
        (dict(max_steps=4), True),
        (dict(action_kind="discrete"), True),
        (dict(dict_obs=True), True),
        (dict(obs_kind="image", action_kind="discrete"), False),
    ],
    ids=["box-truncated", "discrete", "dict", "image-jpeg"],
)
def test_minari_reads_exactly_what_the_env_produced(kind, exact):
    env = ActionLogger(fake(**kind), "tests/single-v0", fsync=False, metadata={"algorithm_name": "random"})
    played = run_episodes(env, 3)
    env.close()
    ds = minari.load_dataset("tests/single-v0")
    assert ds.total_episodes == 3 and ds.spec.env_spec is None
    for mep, ep in zip(ds.iterate_episodes(), played, strict=True):
        assert_same(mep, ep, exact)
    ours = load_dataset("tests/single-v0")
    assert ours.metadata["algorithm_name"] == "random" and ours.lengths.tolist() == [len(e["rew"]) for e in played]


def test_image_observations_raw_are_lossless():
    env = ActionLogger(fake(obs_kind="image", action_kind="discrete"), "tests/raw-v0", jpeg_encoding=False, fsync=False)
    played = run_episodes(env, 2)
    for ep, p in zip(load_dataset("tests/raw-v0"), played):
        np.testing.assert_array_equal(ep.observations, np.stack(p["obs"]))


def test_env_spec_seeds_and_infos_are_recorded():
    env = ActionLogger(fake(infos=True), "tests/infos-v0", record_infos=True, fsync=False)
    played = run_episodes(env, 2, seed=7)
    ds = minari.load_dataset("tests/infos-v0")
    ep = next(ds.iterate_episodes())
    T = len(played[0]["rew"])
    np.testing.assert_array_equal(ep.infos["t"], np.arange(T + 1))  # the reset info, then each step's
    np.testing.assert_allclose(ep.infos["x"], 0.5 * np.arange(T + 1))
    assert "plan" not in ep.infos  # absent from the reset info: dropped
    assert [m["seed"] for m in ds.storage.get_episode_metadata([0, 1])] == [7, 8]
    assert load_dataset("tests/infos-v0").metadata["seeds"] == [7, 8]
    made = ActionLogger(gym.make("CartPole-v1", max_episode_steps=20), "tests/spec-v0", fsync=False)
    run_episodes(made, 1)
    spec = minari.load_dataset("tests/spec-v0").spec.env_spec
    assert (spec.id, spec.max_episode_steps) == ("CartPole-v1", 20)
    assert load_dataset("tests/spec-v0").metadata["env_id"] == "CartPole-v1"


def test_extras_from_log_extras_or_info():
    space = gym.spaces.Box(-10, 10, (3,), np.float32)
    env = ActionLogger(fake(infos=True), "tests/extras-v0", extra_spaces={"latent": space, "plan": space}, fsync=False)
    env.reset(seed=0)
    latents = []
    for t in range(6):
        latents.append(np.full(3, -t, np.float32))
        env.log_extras(latent=latents[-1])
        env.step(env.action_space.sample())
    ep = load_dataset("tests/extras-v0")[0]
    np.testing.assert_array_equal(ep.extras["latent"], np.stack(latents))
    np.testing.assert_array_equal(ep.extras["plan"][:, 0], np.arange(1, 7))  # from info["plan"]
    env.reset()
    with pytest.raises(MissingExtraError, match=r"extra field 'latent' was not given .* log_extras\(latent=...\)"):
        env.step(env.action_space.sample())
    with pytest.raises(KeyError, match="not declared"):
        env.log_extras(other=1)
    env.reset()  # the episode that lacked a step's extras was dropped; recording goes on
    for _ in range(6):
        env.log_extras(latent=np.zeros(3, np.float32))
        env.step(env.action_space.sample())
    assert load_dataset("tests/extras-v0").lengths.tolist() == [6, 6]


@pytest.mark.parametrize("unfinished", ["truncate", "discard"])
def test_episode_cut_by_reset_or_close(unfinished):
    env = ActionLogger(fake(episode_len=10), "tests/cut-v0", unfinished=unfinished, fsync=False)
    env.reset(seed=0)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.reset()  # cuts the episode after 3 steps
    env.reset()  # nothing to cut
    env.step(env.action_space.sample())
    env.close()  # cuts after 1 step
    if unfinished == "discard":
        assert not dataset_path("tests/cut-v0").joinpath("data", "main_data.hdf5").exists() or (
            load_dataset("tests/cut-v0").total_steps == 0
        )
        return
    ds = load_dataset("tests/cut-v0")
    assert ds.lengths.tolist() == [3, 1]
    for ep in ds:
        assert ep.truncations[-1] and not ep.terminations.any()


def test_append_continues_and_mismatch_is_refused():
    run_episodes(ActionLogger(gym.make("CartPole-v1", max_episode_steps=20), "tests/app-v0", fsync=False), 2)
    run_episodes(ActionLogger(gym.make("CartPole-v1", max_episode_steps=20), "tests/app-v0", fsync=False), 1, seed=5)
    ds = minari.load_dataset("tests/app-v0")
    assert ds.total_episodes == 3 and [e.id for e in ds.iterate_episodes()] == [0, 1, 2]
    with pytest.raises(DatasetMismatchError, match=r"env_spec.max_episode_steps: dataset has 20, new data has 30"):
        ActionLogger(gym.make("CartPole-v1", max_episode_steps=30), "tests/app-v0")
    with pytest.raises(
        DatasetMismatchError, match=r"observation_space: dataset has Box.*new data has Box\(-10.0, 10.0"
    ):
        ActionLogger(fake(), "tests/app-v0")
    with pytest.raises(DatasetMismatchError, match=r"extra_spaces: dataset has \[\], new data has \['z'\]"):
        ActionLogger(
            gym.make("CartPole-v1", max_episode_steps=20), "tests/app-v0", extra_spaces={"z": gym.spaces.Discrete(2)}
        )
    assert minari.load_dataset("tests/app-v0").total_episodes == 3


def test_uncommitted_episode_is_invisible_then_removed():
    """A process that dies between writing an episode and committing it leaves an invisible group."""
    run_episodes(ActionLogger(fake(), "tests/crash-v0", fsync=False), 2)
    main = dataset_path("tests/crash-v0") / "data" / "main_data.hdf5"
    with h5py.File(main, "a") as f:
        f.copy(f["episode_1"], f, name="episode_2")
    with pytest.warns(UserWarning, match="1 episode group.* beyond total_episodes=2 are ignored"):
        assert len(load_dataset("tests/crash-v0")) == 2
    assert minari.load_dataset("tests/crash-v0").total_episodes == 2
    run_episodes(ActionLogger(fake(), "tests/crash-v0", fsync=False), 1)
    assert len(load_dataset("tests/crash-v0")) == 3  # the stale group was replaced


KILL_CHILD = textwrap.dedent(
    """
    import sys, time
    import gymnasium as gym, numpy as np
    from wrappers import ActionLogger

    env = ActionLogger(gym.make("Hopper-v5"), "hopper/killed-v0")
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    done, t, ret = 0, 0, 0.0
    while True:
        _, r, term, trunc, _ = env.step(rng.uniform(-1, 1, 3).astype(np.float32))
        t, ret = t + 1, ret + r
        if term or trunc:
            print(f"DONE {done} {t} {ret!r}", flush=True)
            done, t, ret = done + 1, 0, 0.0
            env.reset()
        elif done >= 3 and t == 3:
            print("MID", flush=True)
            time.sleep(120)  # killed here, 3 steps into the 4th episode
    """
)


def test_sigkill_mid_episode_keeps_every_finished_episode(tmp_path, monkeypatch):
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    finished = []
    try:
        for line in proc.stdout:
            if line.startswith("DONE"):
                _, k, length, ret = line.split()
                finished.append((int(length), float(ret)))
            elif line.startswith("MID"):
                os.kill(proc.pid, signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(finished) == 3
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    ds = load_dataset("hopper/killed-v0")  # validated: shapes, NaN, totals
    assert [(len(ep), pytest.approx(ep.total_return, rel=1e-5)) for ep in ds] == finished
    for ep in ds:
        assert ep.terminations[-1] or ep.truncations[-1]
    assert minari.load_dataset("hopper/killed-v0").total_episodes == 3
    with h5py.File(tmp_path / "hopper/killed-v0/data/main_data.hdf5", "r") as f:
        assert sorted(f.keys()) == ["episode_0", "episode_1", "episode_2"]  # nothing of the 4th episode


# ----------------------------------------------------------------------------------------------
# vector env


def vector_fakes(mode: AutoresetMode, long: bool = False, **kw) -> SyncVectorEnv:
    # sub-envs whose episodes end at different steps, one of them by truncation, one long (the buffer grows)
    fns = [
        lambda: fake(episode_len=3, **kw),
        lambda: fake(episode_len=5, **kw),
        lambda: fake(episode_len=9, max_steps=4, **kw),
        lambda: fake(episode_len=150, **kw),
    ][: 4 if long else 3]
    return SyncVectorEnv(fns, autoreset_mode=mode)


def play_vector(envs, mode: AutoresetMode, steps: int, seed: int = 0, extras=None) -> list[dict]:
    """Step ``envs`` and track each sub-env's episodes from what it returned, Gymnasium's semantics."""
    n = envs.num_envs
    envs.action_space.seed(seed)
    obs, _ = envs.reset(seed=seed)
    pick = lambda x, i: {k: v[i] for k, v in x.items()} if isinstance(x, dict) else x[i]  # noqa: E731
    current = [{"obs": [pick(obs, i)], "act": [], "rew": [], "term": [], "trunc": []} for i in range(n)]
    finished = []
    autoreset = np.zeros(n, bool)
    for t in range(steps):
        a = envs.action_space.sample()
        if extras is not None:
            envs.log_extras(**extras(t))
        obs, r, term, trunc, info = envs.step(a)
        for i in range(n):
            if autoreset[i]:  # NEXT_STEP: this step only reset sub-env i
                current[i] = {"obs": [pick(obs, i)], "act": [], "rew": [], "term": [], "trunc": []}
                continue
            ep = current[i]
            ep["act"].append(a[i])
            ep["rew"].append(r[i])
            ep["term"].append(term[i])
            ep["trunc"].append(trunc[i])
            if term[i] or trunc[i]:
                ep["obs"].append(info["final_obs"][i] if mode is AutoresetMode.SAME_STEP else pick(obs, i))
                finished.append(ep)
                current[i] = None  # NEXT_STEP: until the next step resets it; DISABLED: until reset()
                if mode is AutoresetMode.SAME_STEP:
                    current[i] = {"obs": [pick(obs, i)], "act": [], "rew": [], "term": [], "trunc": []}
            else:
                ep["obs"].append(pick(obs, i))
        done = np.asarray(term) | np.asarray(trunc)
        autoreset = done if mode is AutoresetMode.NEXT_STEP else np.zeros(n, bool)
        if mode is AutoresetMode.DISABLED and done.any():
            obs, _ = envs.reset(options={"reset_mask": done})
            for i in np.flatnonzero(done):
                current[i] = {"obs": [pick(obs, i)], "act": [], "rew": [], "term": [], "trunc": []}
    envs.close()
    for ep in current:  # cut by close(): written truncated
        if ep is not None and ep["rew"]:
            ep["trunc"][-1] = not ep["term"][-1]
            finished.append(ep)
    return finished


@pytest.mark.parametrize("mode", list(AutoresetMode), ids=lambda m: m.value)
def test_vector_no_autoreset_step_is_recorded(mode):
    envs = VectorActionLogger(vector_fakes(mode, long=True), "tests/vec-v0", fsync=False)
    played = play_vector(envs, mode, steps=320)
    ds = minari.load_dataset("tests/vec-v0")
    assert ds.total_episodes == len(played)
    for mep, ep in zip(ds.iterate_episodes(), played, strict=True):
        assert_same(mep, ep)
    lengths = [len(e) for e in ds.iterate_episodes()]
    assert set(lengths[:-4]) <= {3, 4, 5, 150}  # finished episodes have the sub-envs' own lengths, nothing more
    assert lengths.count(150) == 2
    assert load_dataset("tests/vec-v0").metadata["autoreset_mode"] == mode.value


def test_vector_dict_obs_infos_and_extras_same_step():
    mode = AutoresetMode.SAME_STEP
    envs = VectorActionLogger(
        vector_fakes(mode, dict_obs=True, infos=True),
        "tests/vecdict-v0",
        record_infos=True,
        extra_spaces={"z": gym.spaces.Discrete(100), "plan": gym.spaces.Box(-99, 99, (3,), np.float32)},
        fsync=False,
    )
    played = play_vector(envs, mode, steps=12, extras=lambda t: {"z": np.full(3, t)})
    ds = minari.load_dataset("tests/vecdict-v0")
    for mep, ep in zip(ds.iterate_episodes(), played, strict=True):
        assert_same(mep, ep)
        T = len(ep["rew"])
        np.testing.assert_array_equal(mep.infos["t"], np.arange(T + 1))  # reset info, then the final info too
    ours = load_dataset("tests/vecdict-v0")
    first = ours[0]  # sub-env 0's first episode: steps 0..2
    np.testing.assert_array_equal(first.extras["z"], [0, 1, 2])
    np.testing.assert_array_equal(first.extras["plan"][:, 0], [1, 2, 3])


def test_vector_halfcheetah_dataset_holds_exactly_what_the_env_produced():
    mode = AutoresetMode.NEXT_STEP
    envs = VectorActionLogger(gym.make_vec("HalfCheetah-v5", num_envs=3, max_episode_steps=30), "cheetah/test-v0")
    played = play_vector(envs, mode, steps=75)
    ds = minari.load_dataset("cheetah/test-v0")
    eps = list(ds.iterate_episodes())
    assert [len(e) for e in eps] == [30] * 6 + [13] * 3  # 2 x 30 steps finished per sub-env, then 13 cut by close
    for mep, ep in zip(eps, played, strict=True):
        assert_same(mep, ep)
        assert mep.truncations[-1] and not mep.terminations.any()
    spec = ds.spec.env_spec
    assert (spec.id, spec.max_episode_steps, spec.kwargs) == ("HalfCheetah-v5", 30, {})
    assert load_dataset("cheetah/test-v0").total_steps == 3 * (60 + 13)


def test_vector_shared_writer_and_bad_extras():
    envs = VectorActionLogger(vector_fakes(AutoresetMode.NEXT_STEP), "tests/vec2-v0", fsync=False)
    other = VectorActionLogger(vector_fakes(AutoresetMode.NEXT_STEP), envs.writer)
    assert other.writer is envs.writer
    with pytest.raises(DatasetMismatchError, match="the shared writer does not match"):
        ActionLogger(fake(action_kind="discrete"), envs.writer)
    envs_x = VectorActionLogger(
        vector_fakes(AutoresetMode.NEXT_STEP), "tests/vec3-v0", extra_spaces={"z": gym.spaces.Discrete(2)}, fsync=False
    )
    envs_x.reset(seed=0)
    with pytest.raises(MissingExtraError, match=r"a batch of 3 values"):
        envs_x.step(envs_x.action_space.sample())


def counting_fsync(monkeypatch, delay: float = 0.0) -> list[int]:
    """Replace os.fsync by one that counts its calls (and takes ``delay`` seconds, a slow disk)."""
    import time

    calls: list[int] = []
    real = os.fsync

    def fsync(fd):
        calls.append(fd)
        time.sleep(delay)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def test_default_durability_hands_episodes_to_the_os_without_fsync(monkeypatch):
    calls = counting_fsync(monkeypatch)
    env = ActionLogger(fake(episode_len=3), "tests/os-v0")
    assert env.durability == "process-crash"
    run_episodes(env, 3)
    assert env.writer.total_episodes == 3 and calls == []  # committed (on the OS's side) with no fsync
    env.close()
    assert minari.load_dataset("tests/os-v0").total_episodes == 3


@pytest.mark.parametrize("vector", [False, True])
def test_power_loss_durability_group_commits_in_the_background(monkeypatch, vector):
    """A slow fsync: episodes that end meanwhile share the next one, and the env loop does not wait for it."""
    import time

    calls = counting_fsync(monkeypatch, delay=0.05)
    if vector:
        env = VectorActionLogger(SyncVectorEnv([lambda: fake(episode_len=2)] * 2), "tests/power-v0",
                                 durability="power-loss")
        env.reset(seed=0)
        t0 = time.perf_counter()
        for _ in range(12):
            env.step(env.action_space.sample())
    else:
        env = ActionLogger(fake(episode_len=2), "tests/power-v0", durability="power-loss")
        t0 = time.perf_counter()
        run_episodes(env, 12)
    looped = time.perf_counter() - t0
    committer = env._rec.committer
    n = env.writer.total_episodes
    assert n >= 8 and env.sync() == n  # sync() waits until every finished episode is fsynced
    assert 1 <= committer.fsyncs < n  # several episodes per fsync
    assert looped < 0.05 * 3 * n  # the loop did not wait for one fsync group per episode
    env.close()
    assert len(calls) >= 3 and minari.load_dataset("tests/power-v0").total_episodes == n
    with pytest.raises(ValueError, match="durability must be one of"):
        ActionLogger(fake(), "tests/power-v1", durability="fsync")
