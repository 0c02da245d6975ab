"""C's training: CMA-ES on a toy task, its errors and exact resume, dream and real-env evaluation, a SIGKILL in the
middle of a generation, and 2 gloo ranks against 1."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from tests.fake_env import make_dataset
from tt_agents import TrainConfig, load_agent
from tt_agents.checkpoint import read_checkpoint
from tt_agents.world_model.agent import WorldModelController
from tt_agents.world_model.controller import (
    CMAESSearch,
    CMAStoppedError,
    EnvEvaluator,
    dream_returns,
    split_jobs,
)

REPO = Path(__file__).resolve().parents[2]
TINY = dataclasses.replace(WorldModelController.presets["tiny"].config, log_generations=False)
TARGET = torch.linspace(-1, 1, 5)


def _sphere(x: torch.Tensor, generation: int) -> torch.Tensor:
    return -((x - TARGET) ** 2).sum(1)


def test_cmaes_improves_fitness_on_a_toy_task():
    search = CMAESSearch(torch.zeros(5), sigma0=0.3, popsize=8, seed=0, evaluate=_sphere)
    rows = [search.step(g) for g in range(40)]
    assert rows[-1]["mean"] > 0.01 * rows[0]["mean"]  # mean squared distance to the optimum falls 100-fold
    assert all(b["loss"] <= a["loss"] for a, b in zip(rows, rows[1:]))  # the loss is minus the best so far
    torch.testing.assert_close(search.best_x.float(), TARGET, atol=0.05, rtol=0)


def test_cmaes_state_resumes_exactly():
    full = CMAESSearch(torch.zeros(5), 0.3, 6, seed=3, evaluate=_sphere)
    rows = [full.step(g) for g in range(8)]
    part = CMAESSearch(torch.zeros(5), 0.3, 6, seed=3, evaluate=_sphere)
    for g in range(4):
        part.step(g)
    meta, tensors = part.state_dict()
    json.dumps(meta)  # JSON and tensors only
    resumed = CMAESSearch(torch.ones(5), 0.3, 6, seed=99, evaluate=_sphere)  # another start: the state wins
    resumed.load_state_dict(json.loads(json.dumps(meta)), tensors)
    assert [resumed.step(g) for g in range(4, 8)] == rows[4:]
    with pytest.raises(ValueError, match="same settings"):
        CMAESSearch(torch.zeros(5), 0.3, 7, seed=3, evaluate=_sphere).load_state_dict(meta, tensors)


def test_cmaes_errors_are_raised():
    flat = CMAESSearch(torch.zeros(3), 0.1, 4, seed=0, evaluate=lambda x, g: torch.zeros(len(x)))
    flat.step(0)
    with pytest.raises(CMAStoppedError, match="tolfun"):  # the port's search stopped silently here
        flat.step(1)
    warn = CMAESSearch(torch.zeros(3), 0.1, 4, seed=0, evaluate=lambda x, g: torch.zeros(len(x)), on_stop="warn")
    warn.step(0)
    with pytest.warns(RuntimeWarning, match="termination criteria"):
        assert warn.step(1)["cma_stopped"] == 1.0
    nan = CMAESSearch(torch.zeros(3), 0.1, 4, seed=0, evaluate=lambda x, g: torch.full((len(x),), float("nan")))
    with pytest.raises(FloatingPointError, match="fitness of candidates"):
        nan.step(0)
    with pytest.raises(ValueError, match="at least 2"):
        CMAESSearch(torch.zeros(3), 0.1, 1, seed=0, evaluate=_sphere)


def test_target_return_stops_the_search():
    s = CMAESSearch(torch.zeros(5), 0.3, 6, seed=0, evaluate=_sphere, target_return=-3.0)
    rows = [s.step(g) for g in range(30)]
    done = [r["evaluated"] == 0.0 for r in rows]
    assert any(done) and not done[0] and s.best_f >= -3.0 and len(s.history) == done.index(True)


def _agent(**kw):
    ds = make_dataset("image", "continuous", n_episodes=3)
    agent = WorldModelController(ds.observation_space, ds.action_space, dataclasses.replace(TINY, **kw), device="cpu",
                                 seed=0)
    return agent, ds


def test_dream_rollouts_are_deterministic_given_a_seed_and_split_free():
    agent, _ = _agent(dream_horizon=15)
    g = torch.Generator().manual_seed(0)
    cands = 0.5 * torch.randn(4, agent.model.controller.n_params, generator=g)
    z0 = torch.randn(3, agent.config.latent, generator=g)
    jobs = np.arange(8)

    def run(seed, jobs=jobs):
        return dream_returns(agent.model, cands, jobs, 2, z0, 15, 1.0, seed, 0, agent._raw_to_memory)

    a, b = run(7), run(7)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, run(8))
    halves = torch.cat([run(7, split_jobs(8, r, 2)) for r in range(2)])  # what 2 ranks compute
    torch.testing.assert_close(halves, a, rtol=0, atol=1e-9)


gym.register("WorldModelFakeImage-v0", entry_point="tests.fake_env:FakeEnv",
             kwargs={"obs_kind": "image", "action_kind": "continuous", "episode_len": 6})


def test_real_env_evaluation_batched_equals_one_at_a_time():
    agent, ds = _agent()
    g = torch.Generator().manual_seed(0)
    cands = torch.randn(3, agent.model.controller.n_params, generator=g)
    cands[1] = cands[0]
    jobs = np.arange(6)
    out = []
    for n, mode in ((1, "sync"), (4, "sync"), (3, "async")):
        ev = EnvEvaluator(lambda k, mode=mode: agent.make_env("WorldModelFakeImage-v0", k, vectorization_mode=mode), n,
                          lambda o: agent.encode(o)[0], agent._raw_to_actions, max_steps=50)
        out.append(ev.returns(agent.model, cands, jobs, 2, seed=0, generation=0))
        assert ev.env_steps == 6 * 6  # 6 jobs of 6 steps, whatever the waves
        ev.close()
    torch.testing.assert_close(out[0], out[1], rtol=0, atol=1e-9)
    torch.testing.assert_close(out[0], out[2], rtol=0, atol=1e-9)  # sub-envs in their own processes
    # rollout s of every candidate resets with the same seed: twin candidates get the same returns
    assert out[0][0] == out[0][2] and out[0][1] == out[0][3] and out[0][0] != out[0][1] and out[0][4] != out[0][0]
    agent.fit(ds, TrainConfig(steps=2, batch_size=4, warmup_steps=1, progress=False), stage="vae")
    real = agent.with_config(controller_env="WorldModelFakeImage-v0", eval_envs=4, pop_size=4)
    res = real.fit(ds, TrainConfig(steps=2, progress=False), stage="controller")
    assert len(res.losses) == 2 and np.isfinite(res.losses).all()


_TRAIN = """
import sys; sys.path.insert(0, {repo!r})
import time, torch; torch.set_num_threads(1)
from pathlib import Path
import tt_agents.world_model.agent as wm
from tests.fake_env import make_dataset
from tests.world_model.test_controller import TINY
from tt_agents import TrainConfig
dream = wm.dream_returns
def marked(*args, **kwargs):  # marks the generation being evaluated, then takes its time
    Path({run!r}).mkdir(parents=True, exist_ok=True)
    (Path({run!r}) / f"evaluating_{{args[-2]}}").touch()
    time.sleep({delay} if args[-2] == 4 else 0.0)  # generation 5 waits to be killed
    return dream(*args, **kwargs)
wm.dream_returns = marked
ds = make_dataset("image", "continuous", n_episodes=3)
agent = wm.WorldModelController(ds.observation_space, ds.action_space, TINY, device="cpu", seed=0)
common = dict(progress=False, run_dir={run!r}, log_every=1, checkpoint_every=1)
agent.fit(ds, {{"vae": TrainConfig(steps=3, batch_size=4, warmup_steps=1, **common),
               "memory": TrainConfig(steps=3, batch_size=4, warmup_steps=1, **common),
               "controller": TrainConfig(steps=8, **common)}})
"""


def _train(run: Path, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _TRAIN.format(repo=str(REPO), run=str(run), delay=delay)],
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_killed_mid_generation_resumes_to_the_same_result(tmp_path):
    full = _train(tmp_path / "full")
    part = tmp_path / "part"
    proc = _train(part, delay=5.0)
    deadline = time.monotonic() + 200
    while not (part / "evaluating_4").exists() and time.monotonic() < deadline:  # generation 5 is being evaluated
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert full.wait(timeout=300) == 0
    tr = read_checkpoint(part / "checkpoints" / "last.zip").manifest["trainer"]
    assert tr["stage"] == "controller" and tr["step"] == 4 and not (part / "final.zip").exists(), tr
    assert len(tr["search"]["history"]) == 4
    assert _train(part).wait(timeout=300) == 0
    a, b = read_checkpoint(tmp_path / "full" / "final.zip"), read_checkpoint(part / "final.zip")
    for k, v in a.tensors["model"].items():
        torch.testing.assert_close(b.tensors["model"][k], v, rtol=0, atol=0)

    def rows(run):
        return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                if r["stage"] == "controller"]

    keys = ("step", "best", "mean", "std", "sigma", "best_ever")
    assert [[r[k] for k in keys] for r in rows(part)] == [[r[k] for k in keys] for r in rows(tmp_path / "full")]
    assert [r["step"] for r in rows(part)] == list(range(1, 9))


_DIST = """
import sys; sys.path.insert(0, {repo!r})
import torch; torch.set_num_threads(1)
from tests.fake_env import make_dataset
from tt_agents import TrainConfig, load_agent
ds = make_dataset("image", "continuous", n_episodes=3)
agent = load_agent({ckpt!r}, device="cpu")
agent.fit(ds, TrainConfig(steps=4, progress=False, run_dir={run!r}, log_every=1), stage="controller")
"""


def test_two_gloo_ranks_give_the_same_cmaes_trajectory_as_one(tmp_path):
    agent, ds = _agent(pop_size=5, n_samples=3)  # 15 jobs: the ranks get 8 and 7
    agent.fit(ds, TrainConfig(steps=3, batch_size=4, warmup_steps=1, progress=False), stage="vae")
    agent.fit(ds, TrainConfig(steps=3, batch_size=4, warmup_steps=1, progress=False), stage="memory")
    ckpt = agent.save(tmp_path / "vm")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    procs = []
    for n in (1, 2):
        code = _DIST.format(repo=str(REPO), ckpt=str(ckpt), run=str(tmp_path / f"ranks{n}"))
        procs.append(subprocess.Popen([*torchrun, "--nproc_per_node", str(n), "--no-python", sys.executable, "-c", code], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out[-3000:]
    rows = [[json.loads(line) for line in (tmp_path / f"ranks{n}" / "metrics.jsonl").read_text().splitlines()]
            for n in (1, 2)]
    keys = ("step", "best", "mean", "std", "sigma", "best_ever")
    assert len(rows[0]) == 4 and [[r[k] for k in keys] for r in rows[1]] == [[r[k] for k in keys] for r in rows[0]]
    one, two = (load_agent(tmp_path / f"ranks{n}" / "final.zip", device="cpu") for n in (1, 2))
    for k, v in one.model.state_dict().items():
        torch.testing.assert_close(two.model.state_dict()[k], v, rtol=0, atol=0)
    assert not torch.equal(one.model.controller.net[0].weight, agent.model.controller.net[0].weight)
