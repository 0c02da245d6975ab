"""Latent actions on HalfCheetah-v5 (MLP LAM) or a Procgen game (CNN LAM): relative return of LatentActionPolicy,
VPTPolicy and BC at few labels.

One command runs the whole pipeline at a budget set by the options, caching every phase in
``--work-dir`` (a killed run picks up where it stopped; a rerun with every result cached only
rewrites the table) and, with ``--write``, rewriting its ``benchmarks.md`` section after every
finished run:

1. an SB3 SAC expert trained for ``--expert-steps``, or with ``--expert-run`` the expert that
   ``scripts/collect.py`` trained in that ``--out-dir`` (e.g. the TD3 expert of the D4RL-kind datasets);
   its return and a uniform random policy's return (the two ends of the relative return
   ``(R - random) / (expert - random)``);
2. ``--episodes`` episodes of the expert (stochastic actions) written as a Minari dataset;
3. per seed: LatentActionPolicy's ``lam``, ``relabel`` and ``latent_bc`` stages on the whole
   dataset (observations only), then its ``decoder`` on the first N transitions for each N in
   ``--labels``; VPTPolicy (IDM on the first N, relabel, BC on everything) and BCPolicy on the same
   first N transitions;
4. each policy evaluated on ``--eval-episodes`` episodes.

Example (the figures in benchmarks.md; ~5 minutes per seed on a shared 2-core CPU after the expert's ~25):
    python scripts/bench.py latent-actions --work-dir runs/bench-latent-actions --seeds 0 1 2 3 4 5 6 7 8 9 --write

Procgen (``--env-id procgen/<game>-v0``) takes its expert and data from ``scripts/collect.py``: ``--expert-run``
(its ``--out-dir``, for ``expert.zip``) and ``--dataset`` (its ``expert`` dataset). The LAM is LAPO's (IMPALA
CNN IDM, UNet FDM, 8 tokens x 16 dims, 64 codes, EMA decay 0.999) at the widths ``--cnn-channels`` and
``--unet-channels``; the expert, a uniform random policy and every agent are evaluated the same way, sampling
their actions (``--no-deterministic``, Procgen's convention), on the levels the data came from:
    python scripts/collect.py --env-id procgen/bigfish-v0 --datasets expert --expert-steps 3000000 \
        --dataset-steps 100000 --out-dir runs/collect-bigfish
    python scripts/bench.py latent-actions --env-id procgen/bigfish-v0 --expert-run runs/collect-bigfish \
        --dataset procgen/bigfish/expert-v0 --work-dir runs/bench-latent-bigfish --section latent-actions-bigfish --write
"""

from __future__ import annotations

import dataclasses
import json
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from benches._common import markdown_table, write_section
from tt_agents import BCConfig, BCPolicy, TrainConfig, load_agent
from tt_agents.data import Episode, EpisodeDataset, load_dataset
from tt_agents.data.minari_io import EpisodeRecord, MinariWriter
from tt_agents.evaluation import evaluate
from tt_agents.latent import LAMConfig, LatentActionPolicy, VPTConfig, VPTPolicy

# LAPO's offline decoding figure (averaged over 16 Procgen games, relative return) for reference
LAPO_PROCGEN = {16: 0.05, 32: 0.15, 64: 0.23, 128: 0.33, 256: 0.50, 1024: 0.57}
# and bigfish alone, read off the same figure (raw return about 25 / 33 / 35 at 16 / 32 / >= 64 labels; expert 36.3,
# random 0.87), as relative returns
LAPO_BIGFISH = {16: 0.68, 32: 0.91, 64: 0.96, 128: 0.96, 256: 0.96, 1024: 0.96}


@dataclass
class Args:
    work_dir: str = "runs/bench-latent-actions"
    """Where the expert, the dataset, the agents and each run's result are cached."""
    env_id: str = "HalfCheetah-v5"
    expert_steps: int = 30_000
    """SAC env steps of the expert (a budget a shared 2-core CPU allows; far from SAC's converged return)."""
    expert_run: str | None = None
    """A ``scripts/collect.py --out-dir`` whose ``expert.zip`` is the expert (its algorithm read from the zip)
    instead of training SAC here; ``--expert-steps`` is then unused."""
    episodes: int = 20
    """Expert episodes in the dataset (1000 steps each)."""
    labels: tuple[int, ...] = (16, 128, 1024)
    """Labelled transitions (the first N of the dataset)."""
    seeds: tuple[int, ...] = (0, 1)
    lam_steps: int = 3000
    latent_bc_steps: int = 3000
    decoder_steps: int = 1000
    idm_steps: int = 1000
    """VPT's IDM steps on the labelled transitions."""
    bc_steps: int = 2000
    """Steps of VPT's BC on the relabeled data, and of the BC baseline on the labelled transitions."""
    batch_size: int = 256
    eval_episodes: int = 3
    threads: int = 1
    """torch threads (the machine is shared)."""
    finetune_steps: int = 0
    """LAPO's online stage: PPO env steps fine-tuning LatentActionPolicy (0: skip)."""
    finetune_labels: int = 128
    """The decoder's labels of the fine-tuned agent."""
    finetune_seeds: tuple[int, ...] = (0,)
    finetune_points: int = 5
    """Evaluations along the fine-tuning (besides the one before it)."""
    decoder_uses_obs: bool = True
    """LatentActionPolicy's decoder reads o_t besides the latent (the ``mujoco`` preset's choice); ``False``:
    the latent alone (LAPO's decoder). Use another ``--work-dir`` for each choice (its agents are cached there)."""
    decoder_hidden: tuple[int, ...] | None = None
    """Hidden widths of LatentActionPolicy's decoder (default: the ``mujoco`` preset's). The cached base agents
    (LAM and latent policy) are reused with a fresh decoder of these widths."""
    joint_decoder: bool = False
    """Train LatentActionPolicy's LAM and decoder jointly on the N labels (``LatentConfig.joint_decoder``), one LAM
    per label count, instead of the LAM on observations alone. Use another ``--work-dir`` (agents are cached)."""
    quantizer: str | None = None
    """LatentActionPolicy's quantizer instead of the preset's EMA VQ: ``vq``, ``rvq``, ``fsq`` or ``none`` (a
    continuous latent). Use another ``--work-dir`` for each choice (its agents are cached there)."""
    latent_shape: tuple[int, int] | None = None
    """LatentActionPolicy's latent as ``TOKENS DIMS`` (``n_latents``, ``code_dim``) instead of the preset's."""
    notes: str = ""
    """Free text added to the section (e.g. what a re-render added to cached results)."""
    reuse_baselines: str | None = None
    """Another work dir of this bench whose VPTPolicy and BCPolicy results (and expert, and data) to take instead of
    recomputing them: a LatentActionPolicy variant beside the same baselines. Refused unless that run's data,
    baseline budgets and evaluation settings are this run's."""
    dataset: str | None = None
    """A Minari id or folder of the expert's data (e.g. ``scripts/collect.py``'s ``procgen/bigfish/expert-v0``)
    instead of rolling ``--episodes`` episodes of the expert out here; needed for Procgen."""
    transitions: int | None = None
    """Use only the first N transitions of ``--dataset`` (every stage, the labels among them)."""
    cnn_channels: tuple[int, ...] = (16, 32, 32)
    """Images: IMPALA CNN widths of the IDM, the latent policy and VPT's networks (LAPO: 64 128 128)."""
    unet_channels: tuple[int, ...] = (16, 32)
    """Images: the FDM's UNet widths (the defaults fit a CPU budget)."""
    unet_residual: bool | None = None
    """Images: the UNet predicts o_t plus a change (``LAMConfig.unet_residual``); default: the preset's."""
    deterministic: bool | None = None
    """Evaluate with the most likely actions (``None``: yes for MuJoCo, no for Procgen, whose policies are
    evaluated sampling, as PPO's are)."""
    eval_envs: int | None = None
    """Sub-envs of the evaluation (default: ``--eval-episodes``)."""
    procgen_num_levels: int = 200
    """Procgen levels of the evaluation (scripts/collect.py's default: the levels its data came from)."""
    procgen_distribution_mode: str = "easy"
    section: str = "latent-actions"
    """The benchmarks.md section to write; another name keeps the figures of the default one (e.g. a section per
    expert: ``latent-actions-td3`` with ``--expert-run``)."""


def _procgen(args: Args) -> bool:
    return args.env_id.startswith("procgen/")


def _deterministic(args: Args) -> bool:
    return (not _procgen(args)) if args.deterministic is None else args.deterministic


def _eval_env(args: Args):
    """What every policy is evaluated on: the env id, or for Procgen one batched env on the data's levels."""
    if not _procgen(args):
        return args.env_id
    import tt_agents.envs.procgen  # noqa: F401  (registers procgen/* ids)

    return gym.make_vec(args.env_id, num_envs=args.eval_envs or args.eval_episodes,
                        vectorization_mode="vector_entry_point", num_threads=0, num_levels=args.procgen_num_levels,
                        distribution_mode=args.procgen_distribution_mode)


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _expert_model(args: Args, work: Path):
    """The expert as an SB3 model, and where it came from: ``--expert-run``'s, or this script's SAC."""
    from collect import algo_of_zip, load_model, zoo_hyperparameters  # scripts/collect.py (on bench.py's path)

    if args.expert_run is not None:
        path = Path(args.expert_run) / "expert.zip"
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist: --expert-run takes a finished scripts/collect.py --out-dir")
        algo = algo_of_zip(str(path))
        source = f"{algo.upper()} expert trained by scripts/collect.py"
    else:
        path, algo = work / "expert_sac.zip", "sac"
        source = f"SB3 SAC expert trained for {args.expert_steps} env steps (this script's own)"
    if _procgen(args):
        import tt_agents.envs.procgen  # noqa: F401  (registers procgen/* ids)
    env = gym.make(args.env_id)
    spaces = env.observation_space, env.action_space
    env.close()
    # nothing in the zip is unpickled; the policy settings where it holds them pickled are collect.py's for the env
    return load_model(path, algo, *spaces, zoo_hyperparameters(algo, args.env_id), "cpu"), source


def _expert(args: Args, work: Path) -> dict[str, float]:
    info_path = work / "expert.json"
    if info_path.exists():
        return json.loads(info_path.read_text())
    from stable_baselines3 import SAC
    from stable_baselines3.common.evaluation import evaluate_policy

    t0 = time.perf_counter()
    if _procgen(args):
        from collect import RandomPolicy

        if args.expert_run is None:
            raise ValueError("Procgen needs --expert-run: a scripts/collect.py --out-dir with the game's PPO expert")
        model, source = _expert_model(args, work)
        venv = _eval_env(args)
        ret = {name: float(evaluate(policy, venv, n_episodes=args.eval_episodes, seed=10_000,
                                    deterministic=_deterministic(args), progress=False).mean_return)
               for name, policy in (("expert", model), ("random", RandomPolicy(venv, 0)))}
        venv.close()
        info = {**ret, **_expert_budget(args), "source": source, "seconds": time.perf_counter() - t0}
        info_path.write_text(json.dumps(info))
        return info
    if args.expert_run is None and not (work / "expert_sac.zip").exists():
        model = SAC("MlpPolicy", gym.make(args.env_id), learning_starts=5000, seed=0, device="cpu", verbose=0)
        model.learn(args.expert_steps, progress_bar=False)
        model.save(work / "expert_sac.zip")
    model, source = _expert_model(args, work)
    expert, _ = evaluate_policy(model, gym.make(args.env_id), n_eval_episodes=args.eval_episodes, deterministic=True)
    env = gym.make(args.env_id)
    env.action_space.seed(0)
    rand = []
    for i in range(args.eval_episodes):
        env.reset(seed=i)
        done, ret = False, 0.0
        while not done:
            _, r, term, trunc, _ = env.step(env.action_space.sample())
            ret += float(r)
            done = term or trunc
        rand.append(ret)
    info = {"expert": float(expert), "random": float(np.mean(rand)), "expert_steps": args.expert_steps,
            "source": source, "seconds": time.perf_counter() - t0}
    info_path.write_text(json.dumps(info))
    return info


def _expert_budget(args: Args) -> dict[str, Any]:
    """The expert's training steps and wall seconds, from ``--expert-run``'s summary (``None`` where it does not
    say); for an expert trained on from an earlier run's zip (collect.py ``--continue-from``), also that run's."""

    def read(run: Path) -> dict[str, Any]:
        try:
            summary = json.loads((run / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if "continued_from" not in summary:  # runs from before summary.json said so: the training's own record
            try:
                info = json.loads((run / "progress.json").read_text())["done"]["train"]["expert_info"]
                summary["continued_from"] = info.get("continued_from")
            except (OSError, ValueError, KeyError, TypeError):
                pass
        return summary

    summary = read(Path(args.expert_run))
    out = {"expert_steps": summary.get("expert_step"), "train_seconds": summary.get("train_seconds")}
    if summary.get("continued_from"):
        first = read(Path(summary["continued_from"]).parent)
        out["first_run"] = {"expert_steps": first.get("expert_step"), "train_seconds": first.get("train_seconds")}
    return out


def _dataset(args: Args, work: Path) -> EpisodeDataset:
    if args.dataset is not None:
        ds = load_dataset(args.dataset)
        return ds if args.transitions is None else _first(ds, args.transitions)
    if _procgen(args):
        raise ValueError("Procgen needs --dataset: scripts/collect.py's expert dataset of the game")
    folder = work / "data" / "halfcheetah-expert-v0"
    if not (folder / "data" / "metadata.json").exists():
        model, source = _expert_model(args, work)
        env = gym.make(args.env_id)
        with MinariWriter("bench/halfcheetah-expert-v0", env.observation_space, env.action_space, path=folder,
                          env_spec=env.spec, overwrite=True, metadata={"policy": source}) as w:
            for i in range(args.episodes):
                obs, _ = env.reset(seed=1000 + i)
                o, a, r, te, tr = [obs], [], [], [], []
                done = False
                while not done:
                    act, _ = model.predict(obs, deterministic=False)
                    obs, rew, term, trunc, _ = env.step(act)
                    o.append(obs)
                    a.append(act)
                    r.append(rew)
                    te.append(term)
                    tr.append(trunc)
                    done = term or trunc
                w.write_episodes([EpisodeRecord(np.stack(o), np.stack(a), np.asarray(r), np.asarray(te),
                                                np.asarray(tr), seed=1000 + i)])
    return load_dataset(folder)


def _first(ds: EpisodeDataset, n: int) -> EpisodeDataset:
    """The first ``n`` transitions of ``ds`` (the labelled split), as episodes cut where the count ends."""
    eps, have = [], 0
    for ep in ds:
        if have >= n:
            break
        k = min(len(ep), n - have)
        trunc = np.array(ep.truncations[:k])
        trunc[-1] = trunc[-1] or k < len(ep)
        eps.append(Episode(ep.observations[: k + 1], ep.actions[:k], ep.rewards[:k], ep.terminations[:k], trunc,
                           id=ep.id))
        have += k
    return EpisodeDataset(eps, ds.observation_space, ds.action_space, ds.metadata)


def _cfg(steps: int, batch: int, lr: float = 3e-4) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch, lr=lr, warmup_steps=min(100, steps // 10), grad_clip=2.0,
                       progress=False, device="cpu")


def _eval(agent, args: Args) -> float:
    env = _eval_env(args)
    try:
        return float(evaluate(agent, env, n_episodes=args.eval_episodes, n_envs=args.eval_envs or args.eval_episodes,
                              seed=10_000, deterministic=_deterministic(args), progress=False).mean_return)
    finally:
        if not isinstance(env, str):
            env.close()


def _latent_config(args: Args, ds: EpisodeDataset, n: int):
    """LatentActionPolicy's settings: the ``mujoco`` preset for vectors, LAPO's (``default``) at the bench's CNN
    widths for images."""
    image = len(ds.observation_space.shape) == 3
    preset = LatentActionPolicy.presets["default" if image else "mujoco"]
    cfg = preset.config
    if image:
        cfg = dataclasses.replace(cfg, lam=dataclasses.replace(cfg.lam, cnn_channels=tuple(args.cnn_channels),
                                                               unet_channels=tuple(args.unet_channels),
                                                               unet_residual=_unet_residual(args)))
    return dataclasses.replace(cfg, lam=_lam_config(args, cfg.lam), decoder_uses_obs=args.decoder_uses_obs,
                               decoder_hidden=_decoder_hidden(args), joint_decoder=args.joint_decoder,
                               labels=n if args.joint_decoder else cfg.labels)


def _unet_residual(args: Args) -> bool:
    """Images: ``--unet-residual``, or the ``default`` preset's setting."""
    if args.unet_residual is None:
        return LatentActionPolicy.presets["default"].config.lam.unet_residual
    return args.unet_residual


def _lam_config(args: Args, lam: LAMConfig | None = None) -> LAMConfig:
    """The LAM's settings: ``lam`` (default: the ``mujoco`` preset's) with ``--quantizer`` and ``--latent-shape``."""
    lam = lam or LatentActionPolicy.presets["mujoco"].config.lam
    if args.quantizer is not None:
        lam = dataclasses.replace(lam, quantizer=args.quantizer)
    if args.latent_shape is not None:
        lam = dataclasses.replace(lam, n_latents=args.latent_shape[0], code_dim=args.latent_shape[1])
    lam.check()
    return lam


def _lam_words(lam: LAMConfig) -> str:
    """The LAM's latent in words, as the tables' text gives it."""
    shape = f"{lam.n_latents} tokens x {lam.code_dim} dims"
    if lam.quantizer == "none":
        return f"{shape}, continuous (no quantizer)"
    if lam.quantizer == "fsq":
        return f"{shape}, FSQ levels {'/'.join(map(str, lam.fsq_levels))}"
    kind = "EMA VQ" if lam.quantizer == "vq" else f"residual VQ, {lam.rvq_quantizers} levels"
    return f"{shape}, {lam.codebook_size} codes, {kind}, EMA decay {lam.vq_decay}, commitment {lam.commitment}"


def _decoder_hidden(args: Args) -> tuple[int, ...]:
    return tuple(args.decoder_hidden or LatentActionPolicy.presets["mujoco"].config.decoder_hidden)


def _with_decoder(agent: LatentActionPolicy, hidden: tuple[int, ...], seed: int) -> LatentActionPolicy:
    """``agent`` itself if its decoder has these hidden widths, else a copy of its LAM, latent policy and
    preprocessing with a fresh (untrained) decoder of these widths (base agents cached by an earlier run)."""
    if tuple(agent.config.decoder_hidden) == hidden:
        return agent
    out = LatentActionPolicy(agent.observation_space, agent.action_space,
                             dataclasses.replace(agent.config, decoder_hidden=hidden), device="cpu", seed=seed)
    out.model.lam.load_state_dict(agent.model.lam.state_dict())
    out.model.policy.load_state_dict(agent.model.policy.state_dict())
    out._load_preprocessing_state(agent._preprocessing_state())
    return out


def _base_path(args: Args, work: Path, n: int, seed: int) -> Path:
    """LatentActionPolicy's stages before the decoder (LAM, latent policy) for ``seed``: one per seed, or per seed and
    label count when the LAM is trained jointly with the decoder on the labels."""
    return work / "agents" / (f"latent_base_{n}_s{seed}.zip" if args.joint_decoder else f"latent_base_s{seed}.zip")


def _run(args: Args, work: Path, ds: EpisodeDataset, method: str, n: int, seed: int) -> dict:
    out = work / "results" / f"{method}_{n}_s{seed}.json"
    if out.exists():
        return json.loads(out.read_text())
    torch.manual_seed(seed)
    times: dict[str, float] = {}
    extra: dict[str, float] = {}
    if method == "latent":
        # the stages before the decoder: one run per seed, or per seed and label count when the LAM sees labels
        base = _base_path(args, work, n, seed)
        if not base.exists():
            cfg = _latent_config(args, ds, n)
            agent = LatentActionPolicy(ds.observation_space, ds.action_space, cfg, device="cpu", seed=seed)
            times["lam"] = agent.fit(ds, {"lam": _cfg(args.lam_steps, args.batch_size)}, stage="lam").seconds
            for stage in ("relabel", "latent_bc"):
                r = agent.fit(ds, {"relabel": _cfg(1, 1), "latent_bc": _cfg(args.latent_bc_steps, args.batch_size)},
                              stage=stage)
                times[stage] = r.seconds
                if stage == "relabel":
                    _, labels = agent._relabeled(ds)
                    if "metric_perplexity" in labels:  # a quantizer's codes (a continuous latent has none)
                        extra["perplexity"] = float(labels["metric_perplexity"])
                        extra["codes_used"] = float(labels["metric_codes_used"])
            base.parent.mkdir(parents=True, exist_ok=True)
            agent.save(base)
            (base.with_suffix(".json")).write_text(json.dumps({"times": times, **extra}))
        meta = json.loads(base.with_suffix(".json").read_text())
        times, extra = dict(meta["times"]), {k: v for k, v in meta.items() if k != "times"}
        agent = _with_decoder(load_agent(base, device="cpu"), _decoder_hidden(args), seed)
        agent.config.labels = n
        times["decoder"] = agent.fit(ds, {"decoder": _cfg(args.decoder_steps, min(64, n), 1e-3)},
                                     stage="decoder").seconds
    elif method == "vpt":
        cfg = VPTConfig(labels=n, cnn_channels=tuple(args.cnn_channels))
        agent = VPTPolicy(ds.observation_space, ds.action_space, cfg, device="cpu", seed=seed)
        res = agent.fit(ds, {"idm": _cfg(args.idm_steps, min(args.batch_size, n), 1e-3), "relabel": _cfg(1, 1),
                             "bc": _cfg(args.bc_steps, args.batch_size)})
        times = {k: v.seconds for k, v in res.stages.items()}
    else:
        agent = BCPolicy(ds.observation_space, ds.action_space, BCConfig(), device="cpu", seed=seed)
        res = agent.fit(_first(ds, n), _cfg(args.bc_steps, min(args.batch_size, n), 1e-3))
        times = {"bc": res.seconds}
    result = {"method": method, "labels": n, "seed": seed, "return": _eval(agent, args), "times": times, **extra}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


NAMES = {"latent": "LatentActionPolicy", "vpt": "VPTPolicy", "bc": "BCPolicy"}
# what VPTPolicy's and BCPolicy's results depend on: a run reusing another's baselines must agree on these
BASELINE_FIELDS = ("env_id", "expert_steps", "expert_run", "episodes", "dataset", "transitions", "idm_steps",
                   "bc_steps", "batch_size", "eval_episodes", "eval_envs", "cnn_channels", "deterministic",
                   "procgen_num_levels", "procgen_distribution_mode")


def _reuse_baselines(args: Args, work: Path) -> None:
    """Copy ``--reuse-baselines``' expert, data and VPT / BC results into ``work`` (those not already there)."""
    import shutil

    src = Path(args.reuse_baselines)
    theirs = json.loads((src / "args.json").read_text())
    mine = dataclasses.asdict(args)
    differ = [k for k in BASELINE_FIELDS if json.dumps(theirs.get(k)) != json.dumps(mine[k])]
    if differ:
        raise SystemExit(f"--reuse-baselines {src}: its run differs in {', '.join(differ)} "
                         f"({', '.join(f'{k}={theirs.get(k)!r}' for k in differ)}); its baselines do not fit this run")
    for name in ("expert.json", "data", "probe_supervised.json"):  # none depends on LatentActionPolicy
        if (src / name).exists() and not (work / name).exists():
            (shutil.copytree if (src / name).is_dir() else shutil.copy2)(src / name, work / name)
    (work / "results").mkdir(parents=True, exist_ok=True)
    for method in ("vpt", "bc"):
        for f in sorted((src / "results").glob(f"{method}_*_s*.json")):
            if not (work / "results" / f.name).exists():
                shutil.copy2(f, work / "results" / f.name)
    (work / "reused.json").write_text(json.dumps({"baselines_from": str(src.resolve())}))


def _reuse_text(args: Args) -> str:
    path = Path(args.work_dir) / "reused.json"
    if not path.exists():
        return ""
    src = json.loads(path.read_text())["baselines_from"]
    return (f" VPTPolicy's and BCPolicy's rows (and the expert's and random policy's returns) are those of `{src}`'s "
            "run: the same data, budgets and evaluation.")


def _r2(pred: Any, true: Any) -> float:
    """The coefficient of determination of ``pred`` for ``true`` (rows are samples), over all columns together."""
    return float(1 - ((pred - true) ** 2).sum() / ((true - true.mean(0)) ** 2).sum())


def action_probe(agent: LatentActionPolicy, ds: EpisodeDataset, n_fit: int = 6000, n_test: int = 2000,
                 steps: int = 3000, seed: int = 0) -> dict[str, float]:
    """Diagnostics of a trained LAM, with the true actions (which no stage of the agent reads).

    On ``n_fit + n_test`` random transitions: an MLP (256 hidden) fitted on ``n_fit`` IDM latents to their true
    actions and scored on the other ``n_test``: ``probe_accuracy`` and ``probe_majority`` (the most frequent
    action's share) for discrete actions, ``probe_r2`` (standardized actions) for continuous ones; and
    ``latent_from_obs_r2``, how much of the IDM latent the latent policy predicts from o_t alone on the same
    ``n_test`` (near 1 with a low action probe: the latent describes the frame rather than the transition).
    """
    from tt_agents.latent.agents import labelled_actions
    from tt_agents.latent.transitions import Transitions

    tr = Transitions(ds, agent._history)
    actions = labelled_actions(ds, len(tr)).reshape(len(tr), -1)
    rng = np.random.default_rng(seed)
    n_fit = min(n_fit, len(tr) * 3 // 4)
    idx = rng.permutation(len(tr))[: n_fit + n_test]
    z, zhat = [], []
    for s in range(0, len(idx), 256):
        frames = tr.frames(idx[s:s + 256])
        z.append(agent.infer_latents(frames)[0])
        with torch.inference_mode():
            obs = agent._obs(frames[:, agent._history])
            zhat.append(agent.model.policy.head(agent.model.policy.features(obs)).float().cpu().numpy())
    z_all, zhat_all = np.concatenate(z), np.concatenate(zhat)
    x = torch.tensor(z_all)
    x = (x - x[:n_fit].mean(0)) / (x[:n_fit].std(0) + 1e-6)
    discrete = isinstance(agent.action_space, gym.spaces.Discrete)
    y = torch.tensor(actions[idx])
    if discrete:
        y = y.long().reshape(-1)
        out_dim = int(agent.action_space.n)
    else:
        y = y.float()
        y = (y - y[:n_fit].mean(0)) / (y[:n_fit].std(0) + 1e-6)
        out_dim = y.shape[1]
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        mlp = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 256), torch.nn.ReLU(), torch.nn.Linear(256, out_dim))
    opt = torch.optim.Adam(mlp.parameters(), 1e-3, weight_decay=1e-4)
    loss_fn = torch.nn.functional.cross_entropy if discrete else torch.nn.functional.mse_loss
    for _ in range(steps):
        j = torch.randint(0, n_fit, (256,), generator=g)
        loss = loss_fn(mlp(x[j]), y[j])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = mlp(x[n_fit:])
    out = {"latent_from_obs_r2": _r2(zhat_all[n_fit:], z_all[n_fit:])}
    if discrete:
        major = int(np.bincount(y[:n_fit].numpy()).argmax())
        out.update(probe_accuracy=float((pred.argmax(-1) == y[n_fit:]).float().mean()),
                   probe_majority=float((y[n_fit:] == major).float().mean()))
    else:
        out["probe_r2"] = _r2(pred, y[n_fit:])
    return out


def supervised_probe(args: Args, ds: EpisodeDataset, n_fit: int = 6000, n_test: int = 2000,
                     seed: int = 0) -> dict[str, float]:
    """The action probe's reference: VPT's IDM (the bench's widths) trained with labels on the first ``n_fit``
    transitions for ``--idm-steps``, scored on ``n_test`` random later ones (``accuracy``, or ``r2``): how much of
    the action an IDM of this size reads from the frames at this budget."""
    from tt_agents.latent.agents import labelled_actions
    from tt_agents.latent.transitions import Transitions

    tr = Transitions(ds, 1)
    n_fit = min(n_fit, len(tr) * 3 // 4)
    agent = VPTPolicy(ds.observation_space, ds.action_space,
                      VPTConfig(labels=n_fit, cnn_channels=tuple(args.cnn_channels)), device="cpu", seed=seed)
    t0 = time.perf_counter()
    agent.fit(ds, {"idm": _cfg(args.idm_steps, args.batch_size, 1e-3)}, stage="idm")
    seconds = time.perf_counter() - t0
    actions = labelled_actions(ds, len(tr)).reshape(len(tr), -1)
    rng = np.random.default_rng(seed)
    test = rng.permutation(np.arange(n_fit, len(tr)))[:n_test]
    with torch.inference_mode():
        out = torch.cat([agent.model.squash(agent.model.idm(agent._frames(tr.frames(test[s:s + 250])))).float()
                         for s in range(0, len(test), 250)])
    if isinstance(ds.action_space, gym.spaces.Discrete):
        return {"accuracy": float((out.argmax(-1).numpy() == actions[test, 0]).mean()), "labels": n_fit,
                "steps": args.idm_steps, "seconds": seconds}
    y = agent.scaler.scale(torch.as_tensor(actions[test], dtype=torch.float32)).reshape(len(test), -1)
    return {"r2": _r2(out.reshape(len(test), -1), y), "labels": n_fit, "steps": args.idm_steps, "seconds": seconds}


def _supervised(args: Args, work: Path, ds: EpisodeDataset) -> dict[str, float]:
    """:func:`supervised_probe`, once per work dir."""
    path = work / "probe_supervised.json"
    if not path.exists():
        path.write_text(json.dumps(supervised_probe(args, ds)))
    return json.loads(path.read_text())


def _supervised_text(args: Args) -> str:
    path = Path(args.work_dir) / "probe_supervised.json"
    if not path.exists():
        return ""
    p = json.loads(path.read_text())
    score = f"accuracy {p['accuracy']:.3f}" if "accuracy" in p else f"R² {p['r2']:.3f}"
    return (f" For reference, VPT's IDM (VPTPolicy's network) trained with the labels of the first {p['labels']} "
            f"transitions for {p['steps']} steps scores {score} on 2000 later ones: what an IDM of this size reads of "
            f"the action from the frames at this budget.")


def _probe(args: Args, work: Path, ds: EpisodeDataset, n: int, seed: int) -> dict[str, float]:
    """:func:`action_probe` of the seed's base agent (the LAM and latent policy), computed once and kept beside it
    (none for a work dir from before the base agents were kept)."""
    base = _base_path(args, work, n, seed)
    meta_path = base.with_suffix(".json")
    if not (base.exists() and meta_path.exists()):
        return {}
    meta = json.loads(meta_path.read_text())
    if "probe" not in meta:
        meta["probe"] = action_probe(load_agent(base, device="cpu"), ds, seed=seed)
        meta_path.write_text(json.dumps(meta))
    return meta["probe"]


def _finetune(args: Args, work: Path, ds: EpisodeDataset, seed: int) -> dict:
    """LatentActionPolicy at ``--finetune-labels`` labels, then PPO in the env on its own networks."""
    from tt_agents.latent import finetune_ppo

    out = work / "results" / f"finetune_{args.finetune_labels}_{args.finetune_steps}_s{seed}.json"
    if out.exists():
        return json.loads(out.read_text())
    _run(args, work, ds, "latent", args.finetune_labels, seed)  # the base agent (cached)
    agent = _with_decoder(load_agent(_base_path(args, work, args.finetune_labels, seed), device="cpu"),
                          _decoder_hidden(args), seed)
    agent.config.labels = args.finetune_labels
    torch.manual_seed(seed)
    agent.fit(ds, {"decoder": _cfg(args.decoder_steps, min(64, args.finetune_labels), 1e-3)}, stage="decoder")
    t0 = time.perf_counter()
    res = finetune_ppo(agent, args.env_id, steps=args.finetune_steps, n_envs=4, seed=seed,
                       eval_every=max(1, args.finetune_steps // args.finetune_points), eval_episodes=args.eval_episodes,
                       ppo_kwargs=dict(n_steps=512, batch_size=64, n_epochs=10, learning_rate=1e-4), progress=False)
    result = {"seed": seed, "labels": args.finetune_labels, "steps": args.finetune_steps, "curve": res.curve,
              "seconds": time.perf_counter() - t0}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result))
    return result


def _relative(returns: list[float], expert: dict) -> np.ndarray:
    """(R - random) / (expert - random) for each return (nan for an expert no better than random)."""
    span = (expert["expert"] - expert["random"]) or float("nan")
    return (np.asarray(returns, np.float64) - expert["random"]) / span


def _stderr(x: np.ndarray) -> float:
    """The standard error of the mean of ``x`` (nan for fewer than two values)."""
    return float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")


def _finetune_table(expert: dict, runs: list[dict]) -> str:
    steps = sorted({p["step"] for r in runs for p in r["curve"]})
    rows = []
    for st in steps:
        rel = _relative([p["return"] for r in runs for p in r["curve"] if p["step"] == st], expert)
        se = f" ± {_stderr(rel):.3f}" if len(rel) > 1 else ""
        rows.append([st, len(rel), f"{np.mean(rel):.3f}{se}", f"{np.mean([r['seconds'] for r in runs]) / 60:.0f}"
                     if st == steps[-1] else ""])
    return markdown_table(["PPO env steps", "seeds", "relative return", "wall min (whole fine-tuning)"], rows)


def _goal_note(args: Args, expert: dict, results: list[dict], n: int = 128) -> str:
    """Issue 12's goal at ``n`` labels, checked on this run: LatentActionPolicy above BC and VPT by more than
    two standard errors of the difference."""
    rel = {m: _relative([r["return"] for r in results if r["method"] == m and r["labels"] == n], expert)
           for m in NAMES}
    if any(len(v) < 2 for v in rel.values()):
        return ""
    parts, met = [], True
    for m in ("vpt", "bc"):
        diff = rel["latent"].mean() - rel[m].mean()
        se = float(np.sqrt(rel["latent"].var(ddof=1) / len(rel["latent"]) + rel[m].var(ddof=1) / len(rel[m])))
        met &= diff > 2 * se
        parts.append(f"{diff:+.3f} against {NAMES[m]} ({diff / se:+.1f} standard errors)")
    return (f"\n\nGoal (at {n} labels, LatentActionPolicy beats BC and VPT on the same labels): "
            f"{'met' if met else 'not met'}: {', '.join(parts)}.")


def _write(args: Args, expert: dict, results: list[dict], finetuned: list[dict] | None = None,
           ds: EpisodeDataset | None = None) -> None:
    if _procgen(args):
        return _write_procgen(args, expert, results, ds)
    rows = _rows(args, expert, results, LAPO_PROCGEN, raw_se=False)
    lam = _lam_config(args)
    source = expert.get("source", f"SB3 SAC expert trained for {expert['expert_steps']} env steps (this script's own)")
    body = f"""Data: {args.episodes} episodes (1000 steps each) of the {source}, its `predict(deterministic=False)`
actions (SAC samples; TD3's are its deterministic actions). Expert return {expert['expert']:.0f} (deterministic,
{args.eval_episodes} episodes), uniform random {expert['random']:.0f}; relative return is
(R - random) / (expert - random), mean ± standard error over seeds, each seed's return the mean of
{args.eval_episodes} episodes. Labels: the first N transitions of the dataset. LatentActionPolicy: preset
`mujoco` (MLP LAM, {_lam_words(lam)}{", decoder sees o_t" if args.decoder_uses_obs else ""}){"" if args.decoder_uses_obs else ", but its decoder reads the latent alone (LAPO's)"}{", its LAM trained jointly with the decoder on the N labels" if args.joint_decoder else ""},
decoder hidden widths {" x ".join(map(str, _decoder_hidden(args)))}, lam {args.lam_steps} / latent_bc {args.latent_bc_steps} / decoder {args.decoder_steps} steps; VPTPolicy: IDM
{args.idm_steps} steps on the N labels, BC {args.bc_steps} steps on the relabeled data; BCPolicy {args.bc_steps}
steps on the N labels. Training seconds per stage on this shared CPU. LAPO's column: its Procgen figure
(16-game average, a different domain), for scale only.{_reuse_text(args)}

{markdown_table(["agent", "labels", "seeds", "relative return", "return", "perplexity", *PROBE_HEADERS,
                 "seconds per stage", "LAPO (Procgen)"], rows)}

{PROBE_TEXT}{_supervised_text(args)}

Procgen: `--env-id procgen/<game>-v0` with `scripts/collect.py`'s expert and data (its own section)."""
    body += _goal_note(args, expert, results)
    if args.notes:
        body += "\n\n" + args.notes
    if finetuned:
        body += (f"\n\nOnline fine-tuning (LAPO's stage 3, `tt_agents.latent.finetune_ppo`): LatentActionPolicy at "
                 f"{args.finetune_labels} labels, then SB3 PPO on its own latent policy and decoder (4 envs, n_steps "
                 f"512, batch 64, 10 epochs, lr 1e-4, log std -2); each point {args.eval_episodes} episodes of the "
                 f"agent's deterministic predict. LAPO reaches about 1.0 of expert at 4M steps on Procgen.\n\n"
                 + _finetune_table(expert, finetuned))
    variant = [v for v, on in (("decoder on the latent alone", not args.decoder_uses_obs),
                               ("LAM and decoder trained jointly", args.joint_decoder),
                               (f"decoder {' x '.join(map(str, _decoder_hidden(args)))}",
                                _decoder_hidden(args) != _decoder_hidden(Args())),
                               (f"LAM {args.lam_steps} steps", args.lam_steps != Args.lam_steps),
                               (f"latent {_lam_words(lam)}", lam != LatentActionPolicy.presets["mujoco"].config.lam))
               if on]
    title = ", ".join(["Latent actions: HalfCheetah-v5, few labels", *([source] if args.expert_run else []), *variant])
    write_section(args.section, title, body)


def _rows(args: Args, expert: dict, results: list[dict], lapo: dict[int, float], raw_se: bool = True) -> list[list]:
    """The table's rows: per agent and label count, relative return ± standard error over seeds, raw return (± its
    standard error with ``raw_se``), perplexity, mean seconds per stage, and the reference figure."""
    rows = []
    for method in NAMES:
        for n in args.labels:
            mine = [r for r in results if r["method"] == method and r["labels"] == n]
            if not mine:
                continue
            ret = np.array([r["return"] for r in mine])
            rel = _relative(ret, expert)
            stage_times = {k: np.mean([r["times"].get(k, np.nan) for r in mine]) for k in mine[0]["times"]}
            times = ", ".join(f"{k} {v:.0f}" for k, v in stage_times.items())
            perp = f"{np.mean([r['perplexity'] for r in mine]):.1f}" if "perplexity" in mine[0] else "-"
            raw = f"{ret.mean():.2f} ± {_stderr(ret):.2f}" if raw_se else f"{ret.mean():.0f}"
            ref = f"{lapo[n]:.2f}" if method == "latent" and n in lapo else "-"
            rows.append([NAMES[method], n, len(mine), f"{rel.mean():.3f} ± {_stderr(rel):.3f}", raw, perp,
                         *_probe_cells(mine), times, ref])
    return rows


PROBE_HEADERS = ["action from latent (probe)", "latent from o_t (R²)"]
PROBE_TEXT = ("Probes (diagnostics with the true actions, which no stage of the agents reads; "
              "`action_probe`): an MLP fitted on 6000 random transitions' IDM latents to their actions, scored on "
              "2000 others (accuracy, the most frequent action's share in brackets; R² for continuous actions); and "
              "how much of the IDM's latent the latent policy predicts from o_t alone on those 2000 (R²; near 1 "
              "with a weak action probe: the latent describes the frame more than the transition). Means over "
              "seeds.")


def _probe_cells(mine: list[dict]) -> list[str]:
    """The probe columns of one row (``-`` where the runs have no probe: VPT, BC)."""
    if "latent_from_obs_r2" not in mine[0]:
        return ["-", "-"]
    m = {k: np.mean([r[k] for r in mine]) for k in mine[0] if k.startswith(("probe_", "latent_from"))}
    action = (f"{m['probe_accuracy']:.3f} ({m['probe_majority']:.3f})" if "probe_accuracy" in m
              else f"R² {m['probe_r2']:.3f}")
    return [action, f"{m['latent_from_obs_r2']:.3f}"]


def _budget_text(expert: dict, secs: float | None) -> str:
    """`` (about N min ...)``: the expert's training time, and a first run's for one trained on from its zip."""
    first = expert.get("first_run")
    if not first:
        return f" (about {secs / 60:.0f} min to its last evaluation)" if secs else ""
    then = f"about {secs / 60:.0f} min to its last evaluation" if secs else "its time not recorded"
    before = (f"{first['expert_steps']} steps in a first run (about {first['train_seconds'] / 60:.0f} min)"
              if first.get("expert_steps") and first.get("train_seconds") else "a first run")
    return f" ({before}, then trained on from that run's final.zip with --continue-from: {then})"


def _write_procgen(args: Args, expert: dict, results: list[dict], ds: EpisodeDataset | None) -> None:
    game = args.env_id.split("/")[1].split("-")[0]
    steps, secs = expert.get("expert_steps"), expert.get("train_seconds")
    data = (f"{len(ds)} episodes, {ds.total_steps} transitions{', its first' if args.transitions else ''}"
            if ds is not None else "the dataset")
    sampled = "sampling their actions" if not _deterministic(args) else "with their most likely actions"
    widths = "/".join(map(str, args.cnn_channels))
    default_lam = LatentActionPolicy.presets["default"].config.lam
    lam = _lam_config(args, default_lam)
    who = "LAPO's" if lam == default_lam else "a"  # the latent unchanged by --quantizer / --latent-shape
    residual = _unet_residual(args)
    lapo = ("bigfish alone, read off its figure (relative return with its expert 36.3 and random 0.87; its "
            "16-game averages are 0.05 / 0.33 / 0.57 at 16 / 128 / 1024 labels)" if game == "bigfish"
            else "its 16-game average (other games), for scale only")
    paragraphs = [
        f"Data: `{args.dataset}` from `scripts/collect.py` ({data}; {args.procgen_distribution_mode} mode, "
        f"{args.procgen_num_levels} levels): the {expert['source']}{f' for {steps} env steps' if steps else ''}"
        f"{_budget_text(expert, secs)} (the Procgen paper's PPO "
        f"hyperparameters, without its reward normalization and with SB3's Nature CNN where it has an IMPALA CNN; "
        f"the paper trains 25M steps), its sampled actions. Every policy, the expert and a uniform "
        f"random policy included, is evaluated the same way: {args.eval_episodes} episodes on the data's levels "
        f"({args.eval_envs or args.eval_episodes} sub-envs of one batched Procgen env, seed 10000), {sampled}. Expert "
        f"return {expert['expert']:.2f}, random {expert['random']:.2f}; relative return is (R - random) / (expert - "
        f"random), mean ± standard error over seeds (the return column: raw, the same). Labels: the first N "
        f"transitions of the dataset.",
        f"LatentActionPolicy: {who} LAM (IMPALA CNN IDM over (o_t-1, o_t, o_t+1), UNet FDM"
        f"{' predicting o_t plus a change (unet_residual; LAPO: the frame itself)' if residual else ''}, "
        f"{_lam_words(lam)}) at the widths this CPU allows (IDM and latent policy CNN {widths}, "
        f"UNet {'/'.join(map(str, args.unet_channels))}; LAPO: 64/128/128), decoder "
        f"{'on o_t and the latent' if args.decoder_uses_obs else 'on the latent alone, as LAPO'}, hidden widths "
        f"{' x '.join(map(str, _decoder_hidden(args)))}; lam {args.lam_steps} / latent_bc {args.latent_bc_steps} / "
        f"decoder {args.decoder_steps} steps at batch {args.batch_size} (LAPO: 50k LAM steps at batch 128). "
        f"VPTPolicy: IDM (CNN {widths}) {args.idm_steps} steps on the N labels, BC {args.bc_steps} steps on the "
        f"relabeled data; BCPolicy (Nature CNN) {args.bc_steps} steps on the N labels. Training seconds per stage on "
        f"this shared 2-core CPU. LAPO's column: {lapo}.{_reuse_text(args)}",
    ]
    paragraphs.append(PROBE_TEXT + _supervised_text(args))
    table = markdown_table(["agent", "labels", "seeds", "relative return", "return", "perplexity", *PROBE_HEADERS,
                            "seconds per stage", f"LAPO ({game})"],
                           _rows(args, expert, results, LAPO_BIGFISH if game == "bigfish" else LAPO_PROCGEN))
    body = "\n\n".join([*(textwrap.fill(p, 115) for p in paragraphs), table])
    body += _goal_note(args, expert, results)
    if args.notes:
        body += "\n\n" + args.notes
    title = f"Latent actions: Procgen {game}, few labels"
    if steps:  # the expert's budget, so that sections with different experts are told apart
        amount = f"{steps / 1e6:.1f}M" if steps >= 1e6 else f"{steps / 1e3:.0f}k" if steps >= 1e4 else str(steps)
        title += f", expert of {amount} env steps"
    if residual:
        title += ", residual UNet FDM"
    write_section(args.section, title, body)


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    if args.reuse_baselines:
        _reuse_baselines(args, work)
    (work / "args.json").write_text(json.dumps(dataclasses.asdict(args)))
    _log("expert")
    expert = _expert(args, work)
    _log(f"expert {expert}")
    ds = _dataset(args, work)
    _log(f"dataset {ds}")
    results = []
    for seed in args.seeds:
        for n in args.labels:
            for method in NAMES:
                r = _run(args, work, ds, method, n, seed)
                if method == "latent":
                    r = {**r, **_probe(args, work, ds, n, seed)}
                _log(json.dumps(r))
                results.append(r)
                _write(args, expert, results, ds=ds)
    if results:
        _supervised(args, work, ds)
        _write(args, expert, results, ds=ds)
    finetuned = []
    if args.finetune_steps > 0:
        for seed in args.finetune_seeds:
            r = _finetune(args, work, ds, seed)
            _log(json.dumps(r))
            finetuned.append(r)
            _write(args, expert, results, finetuned)
