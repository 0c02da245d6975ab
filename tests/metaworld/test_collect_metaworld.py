"""scripts/collect.py on Meta-World (its own environment: metaworld pins mujoco 3.3.0; `.ci/run` runs these in
`.venv-metaworld`): the V3 scripted policy's data, as the prompt-DT work collects it, in a Minari dataset."""

from __future__ import annotations

import json

import minari
import numpy as np
import pytest

from tests.scripts._helpers import run_script
from tt_agents.data import load_dataset


def test_scripted_expert_and_random_datasets_of_a_task(tmp_path, monkeypatch):
    store = tmp_path / "store"
    out = run_script("collect.py", "--env-id", "metaworld/reach-v3", "--datasets", "random", "expert",
                     "--dataset-steps", "1000", "--num-envs", "2", "--eval-episodes", "2", "--out-dir",
                     str(tmp_path / "out"), "--no-progress", store=store)
    assert out.returncode == 0, out.stderr[-3000:]
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(store))
    expert, rand = load_dataset("metaworld/reach/expert-v0"), load_dataset("metaworld/reach/random-v0")
    assert expert.total_steps == rand.total_steps == 1000 and len(expert) == 2  # 500-step episodes
    assert expert.observation_space.shape == (39,) and expert.action_space.shape == (4,)
    assert minari.load_dataset("metaworld/reach/expert-v0").total_steps == 1000  # Minari reads it
    policy = expert.metadata["policy"]
    assert policy["algorithm"] == "scripted" and policy["policy_class"] == "SawyerReachV3Policy"
    returns = [ep.total_return for ep in expert]
    assert min(returns) > 2 * max(ep.total_return for ep in rand)  # the scripted policy reaches its goals
    assert len(set(np.round(returns, 3))) == len(returns)  # each sub-env draws its own goals
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["algo"] == "scripted" and summary["ref_max_score"] == pytest.approx(np.mean(returns), rel=1e-6)


def test_a_trained_dataset_or_another_algorithm_is_refused(tmp_path):
    out = run_script("collect.py", "--env-id", "metaworld/reach-v3", "--datasets", "medium", "--no-progress",
                     "--out-dir", str(tmp_path / "o"), store=tmp_path / "store")
    assert out.returncode == 2 and "scripted policy (nothing is trained)" in out.stderr
    out = run_script("collect.py", "--env-id", "metaworld/reach-v3", "--algo", "sac", "--no-progress",
                     "--out-dir", str(tmp_path / "o2"), store=tmp_path / "store")
    assert out.returncode == 2 and "Meta-World's experts are its scripted policies" in out.stderr
