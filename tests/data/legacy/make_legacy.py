"""Write the checked-in checkpoints of tests/test_legacy_checkpoints.py (run once, at the commit named below).

These were written by tt-agents at commit 014639a (the last commit before the foundation-v2
restructuring), so that the test proves today's code loads the previous checkpoint format and acts
identically on it. Rerunning this at a later commit would prove nothing; it is kept as the record
of how the files were made::

    git worktree add /tmp/old 014639a && cd /tmp/old && python tests/data/legacy/make_legacy.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

from tests.fake_env import make_dataset, make_env
from tt_agents import BCConfig, BCPolicy, DecisionTransformer, DTConfig, TrainConfig, TTConfig, TTPlanner


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    cases = {
        "bc_vector_discrete": ("vector", "discrete", lambda o, a: BCPolicy(o, a, BCConfig(hidden_sizes=(16,)), device="cpu", seed=0)),
        "tt_vector_continuous": ("vector", "continuous", lambda o, a: TTPlanner(o, a, TTConfig.tiny(), device="cpu", seed=0)),
        "dt_vector_continuous": (
            "vector", "continuous",
            lambda o, a: DecisionTransformer(o, a, DTConfig(context_len=4, n_layer=1, n_head=2, n_embd=16, dropout=0.0),
                                             device="cpu", seed=0),
        ),
    }
    expected = {}
    for name, (obs_kind, act_kind, factory) in cases.items():
        env = make_env(obs_kind, act_kind, episode_len=6)
        agent = factory(env.observation_space, env.action_space)
        agent.fit(make_dataset(obs_kind, act_kind, n_episodes=4, seed=0, episode_len=6),
                  TrainConfig(steps=20, batch_size=8, progress=False, warmup_steps=2))
        agent.save(out / f"{name}.zip")
        rng = np.random.default_rng(1)
        obs = rng.uniform(-2, 2, (5, 3, 4)).astype(np.float32)  # 5 steps of 3 envs
        rewards = rng.normal(size=(5, 3)).astype(np.float32)
        state, actions = None, []
        for t in range(5):
            o = {"observation": obs[t], "previous_reward": rewards[t][:, None]} if agent.needs_reward else obs[t]
            a, state = agent.predict(o, state, episode_start=np.full(3, t == 0), deterministic=True)
            actions.append(np.asarray(a).tolist())
        expected[name] = {"observations": obs.tolist(), "previous_rewards": rewards.tolist(), "actions": actions}
    (out / "expected.json").write_text(json.dumps(expected))
    print("wrote", sorted(p.name for p in out.iterdir()))


if __name__ == "__main__":  # never on import (pytest's doctest collection imports every module)
    main()
