"""One writer per dataset: a second writer is refused at construction; a killed writer's lock dies with it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import gymnasium as gym
import pytest

from tests.data.helpers import ACT_SPACE, OBS_SPACE, write_minari
from tt_agents.data import DatasetError, load_dataset
from tt_agents.data.writer import MinariWriter

REPO = Path(__file__).resolve().parents[2]

_LOGGER = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, {repo!r})
    from tests.wrappers.test_action_logger import fake
    from wrappers import ActionLogger
    env = ActionLogger(fake(episode_len=3), "tests/locked-v0", fsync=False)
    print("holding", flush=True)
    env.reset(seed=0)
    for t in range({steps}):
        _, _, term, trunc, _ = env.step(env.action_space.sample())
        if term or trunc:
            env.reset()
        time.sleep(0.01)
    env.close()
    print("done", env.writer.total_episodes, flush=True)
    """
)


def test_a_second_writer_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    first = write_minari(tmp_path / "ds")
    with pytest.raises(DatasetError, match=rf"dataset tests/small-v0 at .* is being written by another writer "
                                           rf"\(pid {os.getpid()} on "):
        MinariWriter("tests/small-v0", OBS_SPACE, ACT_SPACE, path=tmp_path / "ds", fsync=False)
    first.close()
    with MinariWriter("tests/small-v0", OBS_SPACE, ACT_SPACE, path=tmp_path / "ds", fsync=False) as second:
        assert second.total_episodes == 3  # appends to what the first wrote


def _start_logger(store: Path, steps: int) -> subprocess.Popen:
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store)}
    proc = subprocess.Popen([sys.executable, "-c", _LOGGER.format(repo=str(REPO), steps=steps)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding", proc.stderr.read()[-2000:]
    return proc


def test_loggers_of_another_process_are_refused_while_the_first_keeps_writing(tmp_path, monkeypatch):
    from tests.wrappers.test_action_logger import fake
    from wrappers import ActionLogger, VectorActionLogger

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    proc = _start_logger(tmp_path, steps=150)
    for _ in range(5):  # tried while the first is between its episode writes
        with pytest.raises(DatasetError, match=rf"tests/locked-v0 .* another writer \(pid {proc.pid} on "):
            ActionLogger(fake(), "tests/locked-v0", fsync=False)
        venv = gym.vector.SyncVectorEnv([lambda: fake()] * 2)
        with pytest.raises(DatasetError, match="another writer"):
            VectorActionLogger(venv, "tests/locked-v0", fsync=False)
        time.sleep(0.1)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert out.split() == ["done", "50"]  # 150 steps of 3-step episodes: the first writer was never disturbed
    assert len(load_dataset("tests/locked-v0")) == 50
    ActionLogger(fake(), "tests/locked-v0", fsync=False).close()  # free again once it closed


def test_a_writer_after_a_killed_writer_is_allowed(tmp_path, monkeypatch):
    from tests.wrappers.test_action_logger import fake
    from wrappers import ActionLogger

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    proc = _start_logger(tmp_path, steps=100_000)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    env = ActionLogger(fake(episode_len=3), "tests/locked-v0", fsync=False)  # the OS dropped the lock
    before = env.writer.total_episodes
    env.reset(seed=1)
    for _ in range(3):
        env.step(env.action_space.sample())
    env.close()
    assert env.writer.total_episodes == before + 1 and len(load_dataset("tests/locked-v0")) == before + 1
