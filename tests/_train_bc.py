"""Train a tiny BCPolicy (or, with ``--dt``, a DT with dropout) on the fake dataset: a subprocess target for the
resume and DDP tests.

Usage: python tests/_train_bc.py RUN_DIR STEPS [--slow] [--dt] [--dump PREFIX]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)

from tests.fake_env import make_dataset  # noqa: E402
from tt_agents import BCConfig, BCPolicy, DecisionTransformer, DTConfig, TrainConfig  # noqa: E402


def main() -> None:
    run_dir, steps = sys.argv[1], int(sys.argv[2])
    ds = make_dataset("vector", "continuous", n_episodes=4)
    if "--dt" in sys.argv:  # dropout draws from each rank's RNG: an exact resume must restore every rank's
        agent = DecisionTransformer(ds.observation_space, ds.action_space, DTConfig(
            context_len=3, n_layer=1, n_head=2, n_embd=16, dropout=0.1, max_timestep=16), device="cpu", seed=0)
    else:
        agent = BCPolicy(ds.observation_space, ds.action_space, BCConfig(hidden_sizes=(16, 16)), device="cpu", seed=0)
    if "--slow" in sys.argv:  # slow each step down so that the parent can kill us mid-run
        inner = agent.compute_loss

        def slow_loss(model, batch):
            time.sleep(0.05)
            return inner(model, batch)

        agent.compute_loss = slow_loss  # type: ignore[method-assign]
    agent.fit(ds, TrainConfig(steps=steps, batch_size=8, warmup_steps=5, run_dir=run_dir, checkpoint_every=5,
                              progress=False, log_every=5))
    if "--dump" in sys.argv:
        prefix = sys.argv[sys.argv.index("--dump") + 1]
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else int(
            __import__("os").environ.get("RANK", "0"))
        flat = torch.cat([p.detach().flatten() for p in agent.model.parameters()]).numpy()
        np.save(f"{prefix}{rank}.npy", flat, allow_pickle=False)


if __name__ == "__main__":
    main()
