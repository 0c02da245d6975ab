"""TrajectoryAutoencoder: switch-point recovery on known switches, and BipedalWalker-v3 reconstruction and return.

Part 1 (``switching``): the point mass of :mod:`tt_agents.envs.switching`, piecewise-constant
actions held 3-30 steps; each hold (soft, Gumbel straight-through, REINFORCE with a baseline)
over several seeds: precision, recall and F1 of the hard transitions at +-1 step, the ratio of
transitions found to true ones, the action reconstruction error and the training time.

Part 2 (``bipedal``): a BipedalWalker-v3 dataset made by ``scripts/collect.py`` (its id in the local
Minari store): the action reconstruction error on held-out episodes of the learned transitions
against a transition at every step and against a fixed stride of the same mean rate; the return
of the latent policy beside BC trained on the same data; the alphas figure and one episode's
segments (PNG, into ``docs/``).

Every trained agent is saved under ``--out-dir`` and reused when the benchmark runs again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benches import _common
from benches._common import markdown_table, write_section

REPO = Path(__file__).resolve().parents[2]
RECORD = False
"""Whether this run records its figures (``scripts/bench.py ... --write``): the section and the PNGs in docs/."""


@dataclass
class Args:
    parts: tuple[str, ...] = ("switching", "bipedal")
    """which parts to run: switching (known switch points), bipedal (BipedalWalker-v3 data)"""
    holds: tuple[str, ...] = ("soft", "gumbel", "reinforce")
    seeds: int = 3
    """seeds per hold on the switching data"""
    switching_steps: int = 1200
    """optimizer steps of each switching run"""
    bipedal_dataset: str = "bipedalwalker/expert-v0"
    """Minari id of the BipedalWalker-v3 data (scripts/collect.py --env-id BipedalWalker-v3)"""
    bipedal_steps: int = 2000
    """optimizer steps of the autoencoder stage (the policy stage gets a quarter; BC the same total)"""
    target_segment_length: float = 8.0
    """the sparsity prior's target on BipedalWalker (its gait has no known switch points)"""
    eval_episodes: int = 20
    eval_envs: int = 8
    out_dir: str = "runs/bench-autoencoder"
    device: str = "cpu"
    torch_threads: int = 1
    """torch CPU threads (1 keeps several benchmarks on a 2-core machine from oversubscribing it)"""


def _cfg(hold: str, seed: int, steps: int):
    from tt_agents import TrainConfig
    from tt_agents.autoencoder import TAEConfig

    net = TAEConfig(latent_dim=4, d_model=32, n_layers=1, n_heads=2, window=8, hidden_sizes=(64,), context_len=32,
                    hold=hold, target_segment_length=16.5)
    return net, {"autoencoder": TrainConfig(steps=steps, batch_size=32, lr=1e-2, warmup_steps=20, progress=False,
                                            seed=seed),
                 "policy": TrainConfig(steps=1, progress=False, seed=seed)}


def _scores(agent, episodes) -> dict[str, float]:
    from tt_agents.autoencoder import boundary_f1

    m = p = t = 0.0
    errs = []
    for e in episodes:
        enc = agent.encode(e)
        r = boundary_f1(enc.starts, e.extras["segment_start"], tolerance=1)
        m, p, t = m + r["matched"], p + r["predicted"], t + r["true"]
        errs.append(np.mean((agent.reconstruct(e, enc) - e.actions) ** 2))
    prec, rec = m / max(p, 1), m / max(t, 1)
    return {"precision": prec, "recall": rec, "f1": 2 * m / max(p + t, 1), "count_ratio": p / max(t, 1),
            "recon_mse": float(np.mean(errs))}


def _load_or_train(path: Path, make, dataset, train_cfg, device: str):
    from tt_agents import load_agent

    final = path / "final.zip"
    if final.exists():
        meta = json.loads((path / "timing.json").read_text())
        return load_agent(final, device=device), meta["seconds"]
    agent = make()
    t0 = time.perf_counter()
    agent.fit(dataset, train_cfg)
    seconds = time.perf_counter() - t0
    agent.save(final)
    (path / "timing.json").write_text(json.dumps({"seconds": seconds}))
    return agent, seconds


def switching(args: Args) -> tuple[str, dict]:
    from tt_agents.autoencoder import TrajectoryAutoencoder, plot_alphas, plot_segments
    from tt_agents.envs.switching import switching_dataset

    train = switching_dataset(n_episodes=64, episode_len=200, seed=0)
    test = switching_dataset(n_episodes=16, episode_len=200, seed=1)
    rows, raw = [], {}
    for hold in args.holds:
        runs = []
        for seed in range(args.seeds):
            net, cfg = _cfg(hold, seed, args.switching_steps)
            path = Path(args.out_dir) / "switching" / f"{hold}-seed{seed}"
            agent, seconds = _load_or_train(
                path, lambda: TrajectoryAutoencoder(train.observation_space, train.action_space, net,  # noqa: B023
                                                    device=args.device, seed=seed),  # noqa: B023
                train, cfg, args.device)
            s = _scores(agent, test) | {"seconds": seconds}
            print(f"switching {hold} seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)
            runs.append(s)
            if RECORD and hold == "soft" and seed == 0:
                plot_alphas([agent.encode(e).alphas for e in test], REPO / "docs" / "autoencoder_alphas_switching.png",
                            title="alphas on the switching point mass (soft hold)")
                e = test[0]
                plot_segments(e.actions[:120], agent.encode(e).starts[:120],
                              REPO / "docs" / "autoencoder_segments_switching.png",
                              true_starts=e.extras["segment_start"][:120], title="switching point mass: segments")
        raw[hold] = runs

        def ms(k, runs=runs):
            v = np.array([r[k] for r in runs])
            return f"{v.mean():.3f} ± {v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else 0:.3f}"

        rows.append([hold, len(runs), ms("f1"), ms("precision"), ms("recall"), ms("count_ratio"), ms("recon_mse"),
                     f"{np.mean([r['seconds'] for r in runs]):.0f}"])
    body = (
        f"Switching point mass (`tt_agents.envs.switching`): piecewise-constant 2-d actions held 3-30 steps "
        f"(uniform), 64 training episodes of 200 steps, 16 test episodes (other seeds). Model: d_model 32, 1 layer, "
        f"local window 8, latent 4, 32-step windows, batch 32, lr 1e-2, {args.switching_steps} steps, target "
        f"segment length 16.5 (the true mean). Mean ± standard error over seeds; F1 of hard transitions "
        f"(alpha > 0.5) at ±1 step, matched one to one; count ratio = transitions found / true ones; "
        f"reconstruction = the decoder's actions from the held latents, MSE.\n\n"
        + markdown_table(["hold", "seeds", "F1", "precision", "recall", "count ratio", "recon MSE", "train s"], rows)
        + "\n\n![alphas on the switching point mass](docs/autoencoder_alphas_switching.png)\n"
    )
    return body, raw


def bipedal(args: Args) -> tuple[str, dict]:
    import gymnasium as gym

    from tt_agents import BCConfig, BCPolicy, TrainConfig, evaluate
    from tt_agents.autoencoder import TAEConfig, TrajectoryAutoencoder, plot_alphas, plot_segments
    from tt_agents.data import EpisodeDataset, load_dataset

    full = load_dataset(args.bipedal_dataset)
    n_test = max(1, len(full) // 10)
    train = EpisodeDataset(list(full)[:-n_test], full.observation_space, full.action_space, full.metadata)
    test = list(full)[-n_test:]
    ae_steps, pol_steps = args.bipedal_steps, max(1, args.bipedal_steps // 4)

    def tae_cfg(**kw):
        return TAEConfig(target_segment_length=args.target_segment_length, **kw)

    def train_cfg(seed=0):
        return {"autoencoder": TrainConfig(steps=ae_steps, batch_size=64, lr=1e-3, warmup_steps=100, progress=False,
                                           seed=seed),
                "policy": TrainConfig(steps=pol_steps, batch_size=64, lr=1e-3, warmup_steps=20, progress=False,
                                      seed=seed)}

    out = Path(args.out_dir) / "bipedal"

    def make(cfg):
        return lambda: TrajectoryAutoencoder(full.observation_space, full.action_space, cfg, device=args.device, seed=0)

    def rate_of(agent):
        return float(np.mean(np.concatenate([agent.encode(e).starts[1:] for e in test])))

    def recon(agent):
        return float(np.mean([np.mean((agent.reconstruct(e) - e.actions) ** 2) for e in test]))

    def spread(agent):
        r = [float(np.mean(agent.encode(e).starts[1:])) for e in test]
        return f"{min(r):.3f} to {max(r):.3f}"

    soft, t_soft = _load_or_train(out / "learned", make(tae_cfg()), train, train_cfg(), args.device)
    learned, t_learned = _load_or_train(out / "learned-gumbel", make(tae_cfg(hold="gumbel")), train, train_cfg(),
                                        args.device)
    encs = [learned.encode(e) for e in test]
    rate, soft_rate = rate_of(learned), rate_of(soft)
    stride = max(1, round(1 / max(rate, 1e-6)))
    every, t_every = _load_or_train(out / "every-step", make(tae_cfg(fixed_stride=1)), train, train_cfg(), args.device)
    fixed, t_fixed = _load_or_train(out / f"stride-{stride}", make(tae_cfg(fixed_stride=stride)), train, train_cfg(),
                                    args.device)
    rows = [
        ["learned transitions, Gumbel straight-through hold", f"{rate:.3f} (1 per {1 / max(rate, 1e-6):.1f} steps)",
         recon(learned), f"{t_learned:.0f}"],
        [f"fixed stride {stride} (the same mean rate)", f"{1 / stride:.3f}", recon(fixed), f"{t_fixed:.0f}"],
        ["a transition at every step", "1.000", recon(every), f"{t_every:.0f}"],
        ["learned transitions, soft hold", f"{soft_rate:.3f}", recon(soft), f"{t_soft:.0f}"],
    ]
    bc, t_bc = _load_or_train(
        out / "bc", lambda: BCPolicy(full.observation_space, full.action_space, BCConfig(), device=args.device, seed=0),
        train, TrainConfig(steps=ae_steps + pol_steps, batch_size=256, lr=1e-3, progress=False), args.device)
    env_fn = lambda: gym.make("BipedalWalker-v3")  # noqa: E731
    returns = []
    for name, agent in (("TrajectoryAutoencoder (Gumbel hold; latent policy)", learned), ("BC", bc)):
        t0 = time.perf_counter()
        r = evaluate(agent, env_fn, n_episodes=args.eval_episodes, n_envs=args.eval_envs, seed=1000, progress=False)
        returns.append([name, f"{r.mean_return:.1f} ± {r.stderr_return:.1f}",
                        len(r.returns), f"{time.perf_counter() - t0:.0f}"])
        print(f"bipedal {name}: return {r.mean_return:.1f} over {len(r.returns)} episodes", flush=True)
    data_return = np.mean([e.total_return for e in full])
    if RECORD:
        plot_alphas([e.alphas[:300] for e in encs[:24]], REPO / "docs" / "autoencoder_alphas_bipedalwalker.png",
                    title="alphas on BipedalWalker-v3 (first 300 steps)")
        plot_segments(test[0].actions[:200], encs[0].starts[:200], REPO / "docs" / "autoencoder_segments_bipedalwalker.png",
                      title="BipedalWalker-v3: one episode's actions and its segments")
    body = (
        f"Data: `{args.bipedal_dataset}` ({len(full)} episodes, {full.total_steps} steps, mean return "
        f"{data_return:.1f}; policy and budget in its metadata: {full.metadata.get('policy', '?')}); the last "
        f"{n_test} episodes held out. Model: the default preset (d_model 64, 2 layers, window 16, latent 8, "
        f"64-step windows, batch 64), target segment length {args.target_segment_length}, {ae_steps} autoencoder "
        f"steps + {pol_steps} policy steps; BC (MLP 256x256) {ae_steps + pol_steps} steps at batch 256.\n\n"
        "Action reconstruction on held-out episodes (MSE, actions in [-1, 1]; the decoder sees the state and the "
        f"held latent). Hard-transition rate per held-out episode, min to max: Gumbel {spread(learned)}, "
        f"soft {spread(soft)}:\n\n"
        + markdown_table(["transitions", "rate", "recon MSE", "train s"], rows)
        + f"\n\nReturn over {args.eval_episodes} episodes ({args.eval_envs} envs; ± standard error):\n\n"
        + markdown_table(["agent", "return", "episodes", "eval s"], returns)
        + "\n\n![alphas on BipedalWalker-v3](docs/autoencoder_alphas_bipedalwalker.png)\n"
        + "![segments of one BipedalWalker-v3 episode](docs/autoencoder_segments_bipedalwalker.png)\n"
    )
    return body, {"rate": rate, "stride": stride}


def main(args: Args) -> None:
    import torch

    torch.set_num_threads(args.torch_threads)
    global RECORD
    RECORD = write_section is _common.write_section  # scripts/bench.py --write: benchmarks.md and docs/ figures
    parts = []
    if "switching" in args.parts:
        parts.append("### Known switch points\n\n" + switching(args)[0])
    if "bipedal" in args.parts:
        parts.append("### BipedalWalker-v3\n\n" + bipedal(args)[0])
    body = "\n\n".join(parts)
    write_section("autoencoder", "TrajectoryAutoencoder: switch points, reconstruction, return", body)
