"""Checkpoints: no code runs on load, damage is always our own error, saves are atomic."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.fake_env import make_env
from tt_agents import BCConfig, BCPolicy, CheckpointError, load_agent
from tt_agents.checkpoint import FORMAT_VERSION, read_checkpoint, sealed_zip, write_checkpoint
from tt_agents.spaces import space_to_json

REPO = Path(__file__).resolve().parents[1]


def _agent(seed=0):
    env = make_env("vector", "continuous")
    return BCPolicy(env.observation_space, env.action_space, BCConfig(hidden_sizes=(8,)), device="cpu", seed=seed)


def _rewrite(path: Path, mutate) -> None:
    """Rewrite a checkpoint zip with ``mutate(members: dict[str, bytes])`` applied."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    mutate(members)
    path.write_bytes(sealed_zip(members))  # re-sealed, so that the inner checks are reached


class Boom:
    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


MARKER = "/tmp/tt_agents_pickle_was_executed"


def test_pickle_payload_is_never_executed(tmp_path):
    if os.path.exists(MARKER):
        os.unlink(MARKER)
    path = _agent().save(tmp_path / "a.zip")
    evil = pickle.dumps(Boom())

    def add_pickle(m):  # replace the weights by a pickle, with a matching checksum in the manifest
        import hashlib

        manifest = json.loads(m["manifest.json"])
        m["model.safetensors"] = evil
        manifest["payloads"]["model.safetensors"] = {"size": len(evil), "sha256": hashlib.sha256(evil).hexdigest()}
        m["manifest.json"] = json.dumps(manifest).encode()
        m["data.pkl"] = evil

    _rewrite(path, add_pickle)
    with pytest.raises(CheckpointError):
        load_agent(path, device="cpu")
    # and a torch.save-style file is refused too
    (tmp_path / "raw.pkl").write_bytes(evil)
    with pytest.raises(CheckpointError):
        load_agent(tmp_path / "raw.pkl", device="cpu")
    assert not os.path.exists(MARKER)


def _damage_cases(data: bytes):
    n = len(data)
    for cut in (0, 1, 10, n // 3, n // 2, n - 30, n - 1):
        yield f"truncated at {cut}", data[:cut]
    rng = np.random.default_rng(0)
    for pos in list(rng.integers(0, n, 25)) + [n // 2, 40, n - 10]:
        b = bytearray(data)
        b[pos] ^= 0xFF
        yield f"flipped byte {pos}", bytes(b)


def test_every_truncation_or_flipped_byte_raises_our_error(tmp_path):
    path = _agent().save(tmp_path / "a.zip")
    data = path.read_bytes()
    for what, damaged in _damage_cases(data):
        p = tmp_path / "damaged.zip"
        p.write_bytes(damaged)
        t0 = time.monotonic()
        with pytest.raises(CheckpointError):
            load_agent(p, device="cpu")
            pytest.fail(f"{what}: loaded without error")
        assert time.monotonic() - t0 < 10, what


def test_version_and_manifest_checks(tmp_path):
    path = _agent().save(tmp_path / "a.zip")

    def set_version(v):
        def f(m):
            man = json.loads(m["manifest.json"])
            man["format_version"] = v
            m["manifest.json"] = json.dumps(man).encode()

        return f

    for v, msg in ((FORMAT_VERSION + 1, "newer"), ("x", "unknown"), (0, "unknown")):
        p = tmp_path / f"v{v}.zip"
        p.write_bytes(path.read_bytes())
        _rewrite(p, set_version(v))
        with pytest.raises(CheckpointError, match=msg):
            load_agent(p, device="cpu")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_agent(tmp_path / "missing.zip")


def test_missing_and_extra_weights_are_refused(tmp_path):
    agent = _agent()
    sd = agent.model.state_dict()
    sections = agent.checkpoint_sections()
    missing = dict(list(sd.items())[1:])
    write_checkpoint(tmp_path / "missing.zip", "agent", sections, {"model": missing})
    with pytest.raises(CheckpointError, match="missing"):
        load_agent(tmp_path / "missing.zip", device="cpu")
    extra = {**sd, "surprise": torch.zeros(3)}
    write_checkpoint(tmp_path / "extra.zip", "agent", sections, {"model": extra})
    with pytest.raises(CheckpointError, match="surprise"):
        load_agent(tmp_path / "extra.zip", device="cpu")
    shaped = {k: (torch.zeros(7) if i == 0 else v) for i, (k, v) in enumerate(sd.items())}
    write_checkpoint(tmp_path / "shape.zip", "agent", sections, {"model": shaped})
    with pytest.raises(CheckpointError, match="shape"):
        load_agent(tmp_path / "shape.zip", device="cpu")


def test_round_trip_keeps_config_and_preprocessing(tmp_path):
    agent = _agent()
    agent.normalizer.mean = np.arange(4, dtype=np.float32)
    path = agent.save(tmp_path / "a")
    assert path.suffix == ".zip"
    back = BCPolicy.load(tmp_path / "a", device="cpu")
    assert back.config == agent.config
    np.testing.assert_array_equal(back.normalizer.mean, agent.normalizer.mean)
    ckpt = read_checkpoint(path)
    assert ckpt.manifest["package_version"]
    assert all(len(p["sha256"]) == 64 for p in ckpt.manifest["payloads"].values())


def test_spaces_are_stored_in_minaris_format(tmp_path):
    agent = _agent()
    manifest = read_checkpoint(agent.save(tmp_path / "a.zip")).manifest
    assert manifest["agent"]["observation_space"] == space_to_json(agent.observation_space)
    assert manifest["agent"]["observation_space"]["type"] == "Box" and "dtype" in manifest["agent"]["action_space"]
    assert BCPolicy.load(tmp_path / "a.zip", device="cpu").observation_space == agent.observation_space


def _sealed(tmp_path: Path, name: str, write) -> Path:
    """A zip made by ``write(zf)``, sealed like a checkpoint (so only the inner checks can refuse it)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        write(zf)
    with zipfile.ZipFile(buf) as zf:
        members = [(i, zf.read(i.filename)) for i in zf.infolist()]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicated names, on purpose
        zf.comment = b"sha256:" + b"0" * 64
        for info, data in members:
            zf.writestr(info, data, compress_type=info.compress_type)
    body = out.getvalue()[:-71]
    path = tmp_path / name
    path.write_bytes(body + b"sha256:" + hashlib.sha256(body).hexdigest().encode())
    return path


def test_crafted_zips_are_refused_before_any_member_is_expanded(tmp_path, monkeypatch):
    agent_path = _agent().save(tmp_path / "a.zip")
    with zipfile.ZipFile(agent_path) as zf:
        good = {n: zf.read(n) for n in zf.namelist()}
    bomb = bytes(64 << 20)  # 64 MiB of zeros deflate to ~64 KiB

    def deflated(zf):
        manifest = json.loads(good["manifest.json"])
        manifest["payloads"]["model.safetensors"] = {"size": len(bomb), "sha256": hashlib.sha256(bomb).hexdigest()}
        zf.writestr("manifest.json", json.dumps(manifest))
        zf.writestr("model.safetensors", bomb, compress_type=zipfile.ZIP_DEFLATED)

    def duplicated(zf):
        for n, data in good.items():
            zf.writestr(n, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("model.safetensors", good["model.safetensors"])

    read = []
    real_read = zipfile.ZipFile.read
    monkeypatch.setattr(
        zipfile.ZipFile, "read", lambda self, name, pwd=None: read.append(name) or real_read(self, name)
    )
    for name, write, message in (
        ("deflated.zip", deflated, "compressed members"),
        ("duplicated.zip", duplicated, "members listed more than once"),
    ):
        path = _sealed(tmp_path, name, write)
        assert path.stat().st_size < 1 << 20
        read.clear()
        with pytest.raises(CheckpointError, match=f"{name}: {message}"):
            read_checkpoint(path)
        assert read == [], f"{name}: members were read before the file was refused"
        with pytest.raises(CheckpointError, match=name):
            load_agent(path, device="cpu")


_SAVER = """
import sys, torch
sys.path.insert(0, {repo!r})
torch.set_num_threads(1)
from tests.test_checkpoint import _agent
agent = _agent(seed=1)
big = torch.nn.Linear(2000, 2000)  # make every save take a while
agent.model.add_module("big", big)
print("ready", flush=True)
while True:
    agent.save({path!r})
"""


def test_sigkill_during_save_leaves_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "agent.zip"
    _agent(seed=0).save(path)
    before = path.read_bytes()
    proc = subprocess.Popen(
        [sys.executable, "-c", _SAVER.format(repo=str(REPO), path=str(path))], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.5)  # several saves are under way or done by now
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # whatever is at the path is a whole checkpoint: the old one or a complete new one
    ckpt = read_checkpoint(path)
    assert "model" in ckpt.tensors
    assert path.read_bytes() == before or "big.weight" in ckpt.tensors["model"]
    leftovers = [p for p in tmp_path.iterdir() if p.name != "agent.zip"]
    assert all(p.name.endswith(".tmp") for p in leftovers)
