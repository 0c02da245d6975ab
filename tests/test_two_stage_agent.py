"""A toy two-stage agent, defined and registered in this one file, trained by ``agent.fit`` and ``scripts/train.py``.

Stage ``encoder`` fits an MLP autoencoder of the observations by gradient descent; stage ``head``
fits a linear map from the encoder's features to the actions by a gradient-free (1+lambda)
evolution strategy. Nothing else in the repository names this agent: the scripts find it through
``TT_AGENTS_PLUGINS`` and the shared agent harness through the registry.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.agent_harness import check_agent
from tests.fake_env import make_dataset
from tt_agents import Agent, Preset, TrainConfig, load_agent, register_agent
from tt_agents.checkpoint import read_checkpoint
from tt_agents.data.sampler import WindowSampler
from tt_agents.preprocessing import ActionScaler, ObservationNormalizer
from tt_agents.spaces import SpaceMismatchError
from tt_agents.stages import GradientStage, SearchStage

REPO = Path(__file__).resolve().parents[1]
MODULE = "tests.test_two_stage_agent"


@dataclass
class TwoStageConfig:
    features: int = 8
    """Width of the encoder's features."""
    population: int = 8
    """Candidates per generation of the head's search."""
    sigma: float = 0.3
    """Initial step size of the search."""
    fit_samples: int = 256
    """Transitions the head's search fits on."""


class AutoEncoder(nn.Module):
    def __init__(self, obs_dim: int, features: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(obs_dim, 32), nn.Tanh(), nn.Linear(32, features), nn.Tanh())
        self.decoder = nn.Linear(features, obs_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(obs))


class TwoStageNet(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, features: int) -> None:
        super().__init__()
        self.autoencoder = AutoEncoder(obs_dim, features)
        self.head = nn.Linear(features, act_dim)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.autoencoder.encoder(obs)))


class HeadSearch:
    """(1+lambda)-ES over the head's weights, with a 1/5th-success step size and its own RNG."""

    def __init__(self, agent: TwoStageAgent, dataset: Any, seed: int) -> None:
        self.agent, self.cfg = agent, agent.config
        obs = np.concatenate([np.asarray(ep.observations[:-1], np.float32) for ep in dataset])
        act = np.concatenate([np.asarray(ep.actions, np.float32) for ep in dataset])
        n = min(len(obs), self.cfg.fit_samples)
        with torch.no_grad():
            x = agent.normalizer(torch.as_tensor(obs[:n], device=agent.device))
            self.features = agent.model.autoencoder.encoder(x)  # (n, features)
        self.targets = agent.scaler.scale(torch.as_tensor(act[:n].reshape(n, -1), device=agent.device))
        self.rng = np.random.default_rng(seed)
        self.best = nn.utils.parameters_to_vector(agent.model.head.parameters()).detach().clone()
        self.best_loss = self._loss(self.best)
        self.sigma = self.cfg.sigma

    def _loss(self, flat: torch.Tensor) -> float:
        head = self.agent.model.head
        w = flat[: head.weight.numel()].view_as(head.weight)
        b = flat[head.weight.numel():]
        return float(F.mse_loss(torch.tanh(self.features @ w.T + b), self.targets))

    def step(self, step: int) -> dict[str, float]:
        time.sleep(float(os.environ.get("TT_TEST_STEP_DELAY", 0)))  # lets a test kill a run mid-stage
        noise = torch.as_tensor(self.rng.standard_normal((self.cfg.population, len(self.best))), dtype=self.best.dtype)
        candidates = self.best + self.sigma * noise
        losses = [self._loss(c) for c in candidates]
        i = int(np.argmin(losses))
        improved = losses[i] < self.best_loss
        if improved:
            self.best, self.best_loss = candidates[i].clone(), losses[i]
        self.sigma *= 1.5 if improved else 1.5 ** -0.25
        nn.utils.vector_to_parameters(self.best, self.agent.model.head.parameters())
        return {"loss": self.best_loss, "sigma": self.sigma}

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return {"sigma": self.sigma, "best_loss": self.best_loss, "rng": self.rng.bit_generator.state}, {
            "best": self.best
        }

    def load_state_dict(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        self.sigma, self.best_loss = float(meta["sigma"]), float(meta["best_loss"])
        self.rng.bit_generator.state = meta["rng"]
        self.best = tensors["best"].clone()


@register_agent
class TwoStageAgent(Agent):
    """A toy two-stage agent: a gradient-trained encoder, then a head found by a gradient-free search."""

    config_class = TwoStageConfig
    config: TwoStageConfig
    cli_name = "two-stage"
    stage_names = ("encoder", "head")
    presets = {"default": Preset(TwoStageConfig(), {"encoder": TrainConfig(steps=20, batch_size=16, lr=3e-3),
                                                    "head": TrainConfig(steps=10)})}

    def _check_spaces(self) -> None:
        for what, space in (("observation", self.observation_space), ("action", self.action_space)):
            if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1):
                raise SpaceMismatchError(f"TwoStageAgent needs flat Box {what}s, got {space}")

    def _setup_preprocessing(self) -> None:
        self.normalizer = ObservationNormalizer(self.observation_space.shape)
        self.scaler = ActionScaler(self.action_space)

    def _build_model(self) -> nn.Module:
        return TwoStageNet(self.observation_space.shape[0], self.action_space.shape[0], self.config.features)

    def _preprocessing_state(self) -> dict[str, Any]:
        return self.normalizer.state()

    def _load_preprocessing_state(self, state: dict[str, Any]) -> None:
        self.normalizer.load_state(state)

    def _reconstruction_loss(self, autoencoder: nn.Module, batch: dict[str, torch.Tensor]):
        obs = self.normalizer(batch["observations"][:, 0])
        return F.mse_loss(autoencoder(obs), obs), {}

    def stages(self):
        return [
            GradientStage(
                "encoder",
                module=self.model.autoencoder,
                loss=self._reconstruction_loss,
                make_sampler=lambda ds, bs, seed, rank, ws: WindowSampler(ds, 1, bs, seed=seed, rank=rank,
                                                                         world_size=ws),
                setup=self.normalizer.fit,
            ),
            SearchStage("head", start=lambda ds, seed, rank, ws: HeadSearch(self, ds, seed)),
        ]

    def _predict(self, observation, previous_reward, state, episode_start, deterministic):
        out = self.model(self.normalizer(torch.as_tensor(observation, device=self.device)))
        return self.scaler.unscale(out.cpu().numpy()), state


def _make(o, a, **kw):
    return TwoStageAgent(o, a, TwoStageConfig(**kw), device="cpu", seed=0)


def _flat(agent_or_weights) -> torch.Tensor:
    w = agent_or_weights.model.state_dict() if isinstance(agent_or_weights, Agent) else agent_or_weights
    return torch.cat([w[k].flatten().float() for k in sorted(w)])


def test_harness(tmp_path):
    check_agent(_make, "vector", "continuous", tmp_path)


def test_stages_train_in_order_and_one_at_a_time():
    ds = make_dataset("vector", "continuous", n_episodes=4)
    cfg = {"encoder": TrainConfig(steps=30, batch_size=16, lr=3e-3, progress=False), "head": TrainConfig(steps=15,
                                                                                                      progress=False)}
    a = _make(ds.observation_space, ds.action_space)
    result = a.fit(ds, cfg)
    assert list(result.stages) == ["encoder", "head"] and result.stage == "head"
    enc, head = result.stages["encoder"].losses, result.stages["head"].losses
    assert len(enc) == 30 and enc[-1] < enc[0]  # the autoencoder learns
    assert len(head) == 15 and head[-1] < head[0] and np.all(np.diff(head) <= 0)  # the search only keeps improvements
    # the same training, one stage per call, gives the same agent
    b = _make(ds.observation_space, ds.action_space)
    b.fit(ds, cfg, stage="encoder")
    torch.testing.assert_close(_flat(b.model.autoencoder.state_dict()), _flat(a.model.autoencoder.state_dict()))
    b.fit(ds, cfg, stage="head")
    torch.testing.assert_close(_flat(b), _flat(a), rtol=0, atol=0)
    with pytest.raises(ValueError, match="no stage 'vae'"):
        a.fit(ds, cfg, stage="vae")


def test_gradient_stage_trains_only_its_module():
    ds = make_dataset("vector", "continuous", n_episodes=3)
    agent = _make(ds.observation_space, ds.action_space)
    head = _flat(agent.model.head.state_dict())
    agent.fit(ds, TrainConfig(steps=5, batch_size=8, progress=False), stage="encoder")
    torch.testing.assert_close(_flat(agent.model.head.state_dict()), head, rtol=0, atol=0)
    assert all(p.requires_grad for p in agent.model.parameters())  # frozen only during the stage


_TRAIN = """
import sys; sys.path.insert(0, {repo!r})
import torch; torch.set_num_threads(1)
from tests.fake_env import make_dataset
from tests.test_two_stage_agent import TwoStageAgent, TwoStageConfig
from tt_agents import TrainConfig
ds = make_dataset("vector", "continuous", n_episodes=4)
agent = TwoStageAgent(ds.observation_space, ds.action_space, TwoStageConfig(), device="cpu", seed=0)
agent.fit(ds, {{"encoder": TrainConfig(steps=20, batch_size=16, lr=3e-3, checkpoint_every=5, progress=False,
                                       run_dir={run!r}, log_every=1),
               "head": TrainConfig(steps=30, checkpoint_every=5, progress=False, run_dir={run!r}, log_every=1)}})
"""


def _train(run: Path, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "TT_TEST_STEP_DELAY": str(delay)}  # the same config either way: only the pace differs
    return subprocess.Popen([sys.executable, "-c", _TRAIN.format(repo=str(REPO), run=str(run))], env=env)


def test_killed_in_the_search_stage_resumes_to_the_same_agent(tmp_path):
    assert _train(tmp_path / "full").wait(timeout=300) == 0
    part = tmp_path / "part"
    proc = _train(part, delay=0.1)
    last = part / "checkpoints" / "last.zip"
    deadline = time.monotonic() + 200
    while time.monotonic() < deadline:
        if last.exists():
            tr = read_checkpoint(last).manifest["trainer"]
            if tr["stage"] == "head" and tr["step"] >= 10:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    tr = read_checkpoint(last).manifest["trainer"]
    assert tr["stage"] == "head" and 10 <= tr["step"] < 30 and tr["stages_done"] == {"encoder": 20}, tr
    assert "rng" in tr["search"] and not (part / "final.zip").exists()
    assert _train(part).wait(timeout=300) == 0  # resumes in stage "head", at the checkpoint's step
    full, resumed = read_checkpoint(tmp_path / "full" / "final.zip"), read_checkpoint(part / "final.zip")
    torch.testing.assert_close(_flat(resumed.tensors["model"]), _flat(full.tensors["model"]), rtol=0, atol=0)
    rows = [json.loads(line) for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in rows] == [("encoder", s) for s in range(1, 21)] + [
        ("head", s) for s in range(1, 31)
    ]  # each step logged once, the replayed ones included


def test_train_script_finds_the_agent_through_the_plugin_variable(tmp_path):
    store = tmp_path / "store"
    shutil.copytree(REPO / "tests" / "data" / "minari", store)
    env = {**os.environ, "MINARI_DATASETS_PATH": str(store), "OMP_NUM_THREADS": "1", "TT_AGENTS_PLUGINS": MODULE}
    run = tmp_path / "run"
    cmd = [sys.executable, "scripts/train.py", "two-stage", "--dataset", "fixtures/hopper/random-v0", "--run-dir",
           str(run), "--device", "cpu", "--train.encoder.steps", "6", "--train.head.steps", "4", "--train.no-progress"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    agent = load_agent(run / "final.zip", device="cpu")
    assert type(agent).__name__ == "TwoStageAgent"
    assert read_checkpoint(run / "final.zip").manifest["agent"]["class"] == "TwoStageAgent"
    tr = read_checkpoint(run / "checkpoints" / "last.zip").manifest["trainer"]
    assert tr["stages_done"] == {"encoder": 6, "head": 4}
    # one stage at a time from the shell: a new run trains the encoder only
    proc = subprocess.run([*cmd[:6], str(tmp_path / "enc"), *cmd[7:], "--stage", "encoder"], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    tr = read_checkpoint(tmp_path / "enc" / "checkpoints" / "last.zip").manifest["trainer"]
    assert tr["stages_done"] == {"encoder": 6} and tr["stage"] == "encoder"
