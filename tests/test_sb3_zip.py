"""tt_agents.sb3_zip: SB3 zips read with nothing unpickled, the same model as SB3's own load."""

from __future__ import annotations

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fake_env import FakeEnv
from tt_agents.sb3_zip import SB3ZipError, load_sb3_zip, sb3_algo_of_zip
from tt_agents.utils import import_sb3


def _model(algo: str, env, **kw):
    import_sb3()
    import stable_baselines3 as sb3

    policy = "CnnPolicy" if env.observation_space.shape == (64, 64, 3) else "MlpPolicy"
    extra = dict(n_steps=8, batch_size=8) if algo == "ppo" else dict(learning_starts=0, buffer_size=100)
    if policy == "CnnPolicy" and algo != "ppo":
        extra["optimize_memory_usage"] = False
    return getattr(sb3, algo.upper())(policy, env, seed=0, device="cpu", **extra, **kw)


def _same(a, b, env) -> None:
    obs = np.stack([env.observation_space.sample() for _ in range(4)])
    np.testing.assert_array_equal(a.predict(obs, deterministic=True)[0], b.predict(obs, deterministic=True)[0])
    sa, sb = a.policy.state_dict(), b.policy.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("algo, obs_kind, action_kind", [("ppo", "vector", "discrete"), ("ppo", "image", "discrete"),
                                                         ("sac", "vector", "continuous"), ("td3", "vector", "continuous")])
def test_the_same_model_as_sb3s_load(tmp_path, algo, obs_kind, action_kind):
    env = FakeEnv(obs_kind, action_kind)
    model = _model(algo, env)
    model.learn(16)
    model.save(tmp_path / "m.zip")
    assert sb3_algo_of_zip(tmp_path / "m.zip") == algo
    mine = load_sb3_zip(tmp_path / "m.zip", env.observation_space, env.action_space, device="cpu")
    theirs = type(model).load(tmp_path / "m.zip", device="cpu")
    assert type(mine) is type(model) and mine.num_timesteps == model.num_timesteps
    _same(mine, theirs, env)


class _Payload:
    """Unpickling this creates a file: the proof that a loader ran a pickle."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _rewrite(path: Path, out: Path, change) -> None:
    with zipfile.ZipFile(path) as z:
        items = {n: z.read(n) for n in z.namelist()}
    data = json.loads(items["data"])
    change(data)
    items["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(out, "w") as z:
        for n, b in items.items():
            z.writestr(n, b)


def test_a_pickle_in_the_zip_is_never_run(tmp_path):
    env = FakeEnv("vector", "discrete")
    _model("ppo", env).save(tmp_path / "m.zip")
    marker = tmp_path / "ran"

    def plant(data):
        data["lr_schedule"][":serialized:"] = base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()

    _rewrite(tmp_path / "m.zip", tmp_path / "bad.zip", plant)
    import stable_baselines3 as sb3

    try:
        sb3.PPO.load(tmp_path / "bad.zip", device="cpu")
    except Exception:  # noqa: BLE001  (what SB3 does with the payload's return value does not matter here)
        pass
    assert marker.exists()  # the test's premise: the planted pickle does run when SB3 unpickles
    marker.unlink()
    model = load_sb3_zip(tmp_path / "bad.zip", env.observation_space, env.action_space, device="cpu")
    assert not marker.exists() and model.num_timesteps == 0


def test_pickled_settings_it_cannot_replace_are_refused_by_name(tmp_path):
    env = FakeEnv("vector", "discrete")
    _model("ppo", env, policy_kwargs=dict(activation_fn=torch.nn.GELU, net_arch=[8])).save(tmp_path / "m.zip")
    with pytest.raises(SB3ZipError, match="policy_kwargs are pickled"):
        load_sb3_zip(tmp_path / "m.zip", env.observation_space, env.action_space, device="cpu")
    pk = dict(activation_fn=torch.nn.GELU, net_arch=[8])
    mine = load_sb3_zip(tmp_path / "m.zip", env.observation_space, env.action_space, policy_kwargs=pk, device="cpu")
    import stable_baselines3 as sb3

    _same(mine, sb3.PPO.load(tmp_path / "m.zip", device="cpu"), env)

    def add(data):
        data["my_setting"] = {":type:": "<class 'object'>", ":serialized:": "AAAA"}

    _rewrite(tmp_path / "m.zip", tmp_path / "extra.zip", add)
    with pytest.raises(SB3ZipError, match="its my_setting is pickled"):
        load_sb3_zip(tmp_path / "extra.zip", env.observation_space, env.action_space, policy_kwargs=pk, device="cpu")


def test_spaces_that_do_not_fit_are_refused(tmp_path):
    env = FakeEnv("vector", "discrete")
    _model("ppo", env).save(tmp_path / "m.zip")
    other = FakeEnv("image", "continuous")
    with pytest.raises(SB3ZipError, match="shape"):
        load_sb3_zip(tmp_path / "m.zip", other.observation_space, env.action_space, device="cpu")
    with pytest.raises(SB3ZipError, match="action space"):
        load_sb3_zip(tmp_path / "m.zip", env.observation_space, other.action_space, device="cpu")
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(SB3ZipError, match="not an SB3 model"):
        load_sb3_zip(tmp_path / "x.zip", env.observation_space, env.action_space)
