"""A stage's ``on_checkpoint`` hook: called on rank 0 after each checkpoint, failures only warn."""

from __future__ import annotations

import pytest

from tests.fake_env import make_dataset
from tests.test_two_stage_agent import TwoStageAgent, TwoStageConfig
from tt_agents import TrainConfig


class HookedAgent(TwoStageAgent):
    calls: list
    fail = False

    def stages(self):
        stages = super().stages()

        def hook(dataset, run_dir, step):
            if self.fail:
                raise RuntimeError("plot failed")
            assert (run_dir / "checkpoints" / "last.zip").exists()  # after the checkpoint is written
            self.calls.append((stages[0].name, step, len(dataset)))

        stages[0].on_checkpoint = hook
        return stages


def _agent(fail: bool = False) -> HookedAgent:
    ds = make_dataset("vector", "continuous", n_episodes=3)
    agent = HookedAgent(ds.observation_space, ds.action_space, TwoStageConfig(), device="cpu", seed=0)
    agent.calls, agent.fail = [], fail
    return agent


def _config(tmp_path):
    return {"encoder": TrainConfig(steps=6, batch_size=4, checkpoint_every=2, progress=False, run_dir=str(tmp_path)),
            "head": TrainConfig(steps=2, progress=False, run_dir=str(tmp_path))}


def test_hook_runs_after_each_checkpoint_of_its_stage(tmp_path):
    agent = _agent()
    agent.fit(make_dataset("vector", "continuous", n_episodes=3), _config(tmp_path))
    assert agent.calls == [("encoder", 2, 3), ("encoder", 4, 3), ("encoder", 6, 3)]


def test_a_failing_hook_warns_and_training_goes_on(tmp_path):
    agent = _agent(fail=True)
    with pytest.warns(UserWarning, match="on_checkpoint failed at step 2: RuntimeError: plot failed"):
        result = agent.fit(make_dataset("vector", "continuous", n_episodes=3), _config(tmp_path))
    assert result.stages["encoder"].steps == 6 and len(result.stages["head"].losses) == 2
