"""SIGINT and SIGTERM during training: the step finishes, a checkpoint is written, one line says how to resume, and
resuming ends with the weights of an uninterrupted run (issue item 3), in a gradient and in a search stage."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.fake_env import make_dataset
from tests.scripts._helpers import HOPPER, REPO, make_store, script_env
from tt_agents.checkpoint import read_checkpoint
from tt_agents.trainer import TrainConfig, TrainingInterrupted

# A BC agent whose steps can be slowed down (by an env var, so that the run config is the same at any speed),
# registered through the plugin variable as any user's agent would be.
PLUGIN = '''
import os, time
from tt_agents import BCPolicy, register_agent


@register_agent
class SlowBC(BCPolicy):
    """BC whose every step sleeps SLOW_BC_DELAY seconds."""

    cli_name = "slow-bc"

    def compute_loss(self, model, batch):
        time.sleep(float(os.environ.get("SLOW_BC_DELAY", "0")))
        return super().compute_loss(model, batch)
'''
STEPS = 100
ARGS = ["slow-bc", "--dataset", HOPPER, "--device", "cpu", "--seed", "1", "--train.steps", str(STEPS),
        "--train.log-every", "5", "--train.checkpoint-every", "1000", "--train.no-progress",
        "--agent.hidden-sizes", "16", "--train.batch-size", "8", "--train.warmup-steps", "5"]


def _start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _interrupt_after(proc: subprocess.Popen, metrics, step: int, sig: int) -> tuple[int, str]:
    """Send ``sig`` once ``metrics`` logs ``step``; return the exit code and stderr."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and any(json.loads(line)["step"] >= step for line in metrics.read_text().splitlines()
                                    if line.strip()):
            break
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=240)
    return proc.returncode, err


def _weights(path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path).tensors["model"]


def test_sigint_then_sigterm_checkpoint_and_the_printed_command_resumes_exactly(tmp_path):
    (tmp_path / "slow_plugin.py").write_text(PLUGIN)
    store = make_store(tmp_path)
    fast = script_env(store, PYTHONPATH=str(tmp_path), TT_AGENTS_PLUGINS="slow_plugin")
    slow = {**fast, "SLOW_BC_DELAY": "0.03"}
    script = str(REPO / "scripts" / "train.py")
    full = subprocess.run([sys.executable, script, *ARGS, "--run-dir", str(tmp_path / "full")], cwd=REPO, env=fast,
                          capture_output=True, text=True, timeout=300)
    assert full.returncode == 0, full.stderr[-3000:]

    run = tmp_path / "part"
    code, err = _interrupt_after(_start([sys.executable, script, *ARGS, "--run-dir", str(run)], slow),
                                 run / "metrics.jsonl", 10, signal.SIGINT)
    assert code == 130, err[-3000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    step = read_checkpoint(run / "checkpoints" / "last.zip").manifest["trainer"]["step"]
    assert 10 <= step < STEPS and f"after step {step} of {STEPS}" in lines[0], lines[0]
    assert f"checkpoint {run / 'checkpoints' / 'last.zip'}" in lines[0]
    assert not (run / "final.zip").exists()
    command = shlex.split(lines[0].split("resume with: ", 1)[1])
    assert command[:2] == [sys.executable, script] and "--run-dir" in command

    # the printed command resumes; interrupted again, by SIGTERM this time, it says the same
    code, err = _interrupt_after(_start(command, slow), run / "metrics.jsonl", step + 15, signal.SIGTERM)
    assert code == 143, err[-3000:]
    step2 = read_checkpoint(run / "checkpoints" / "last.zip").manifest["trainer"]["step"]
    assert step < step2 < STEPS and f"after step {step2} of {STEPS}" in err and "resume with: " in err, err
    done = subprocess.run(command, cwd=REPO, env=fast, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    expected, resumed = _weights(tmp_path / "full" / "final.zip"), _weights(run / "final.zip")
    assert expected.keys() == resumed.keys()
    for k in expected:
        torch.testing.assert_close(resumed[k], expected[k], rtol=1e-6, atol=1e-7, msg=k)
    logged = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(5, STEPS + 1, 5))  # every step once, despite two resumes


def test_a_search_stage_stops_on_sigint_with_a_checkpoint_and_resumes_exactly(tmp_path, monkeypatch):
    from tests.test_two_stage_agent import HeadSearch, TwoStageAgent

    ds = make_dataset("vector", "continuous", n_episodes=4)

    def configs(run):
        return {"encoder": TrainConfig(steps=6, batch_size=16, lr=3e-3, progress=False, run_dir=str(run)),
                "head": TrainConfig(steps=10, checkpoint_every=100, progress=False, run_dir=str(run))}

    def agent():
        return TwoStageAgent(ds.observation_space, ds.action_space, device="cpu", seed=0)

    full = agent()
    full.fit(ds, configs(tmp_path / "full"))

    step = HeadSearch.step

    def interrupted_step(self, i):  # Ctrl-C arrives during generation 4
        if i == 4:
            signal.raise_signal(signal.SIGINT)
        return step(self, i)

    monkeypatch.setattr(HeadSearch, "step", interrupted_step)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN when the suite runs in a background job
    with pytest.raises(TrainingInterrupted) as e:
        agent().fit(ds, configs(tmp_path / "part"))
    assert (e.value.stage, e.value.step, e.value.exit_code) == ("head", 5, 130)
    last = tmp_path / "part" / "checkpoints" / "last.zip"
    assert e.value.checkpoint == last and read_checkpoint(last).manifest["trainer"]["step"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # the trainer's handler is gone, the one before it is back
    monkeypatch.setattr(HeadSearch, "step", step)

    resumed = agent()
    resumed.fit(ds, configs(tmp_path / "part"))
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=0, atol=0, msg=k)
