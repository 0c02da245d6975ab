"""World Models on CarRacing-v3: returns of V only / V + untrained M / V + trained M (each kind), real-env and dream CMA-ES.

One command runs the whole pipeline at a budget set by the options, caching every phase's result
in ``--work-dir`` (a killed run picks up where it stopped: the dataset, each trained agent and
each evaluation are files), and rewrites its ``benchmarks.md`` section after every phase:

1. brownian random-policy rollouts (``scripts/rollouts.py``), frames at 64x64;
2. V on the frames, then M of each kind on V's latents (the same V for every kind);
3. speed: one CMA-ES generation evaluated in a real vector env with every candidate's rollout
   stepped together (one batched V, C and M forward per step) against one candidate at a time
   (a 1-env vector env), and dream steps per second against real env steps per second;
4. C by CMA-ES in the real env (V only, V + untrained M, V + trained M of each kind, all at one
   budget) and in dreams (each M kind);
5. each controller, and the random policy, evaluated on ``--eval-episodes`` real episodes of
   ``--eval-steps`` (CarRacing's own limit, 1000, by default: full episodes).

``--reuse`` copies an earlier work dir's dataset, V, M and those controllers whose search budget
(generations, population, samples) and inputs (``--input-norm``) equal this run's into the work dir instead of training them
again; their wall times come with them, and the section says so.

Example (from scratch; benchmarks.md's figures reused two earlier work dirs with ``--reuse``, its command says
which):
    python scripts/bench.py world-model --work-dir runs/bench-world-model --write
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from benches._common import markdown_table, write_section
from tt_agents import TrainConfig, load_agent
from tt_agents.data import load_dataset
from tt_agents.evaluation import evaluate
from tt_agents.world_model.agent import WorldModelController
from tt_agents.world_model.controller import EnvEvaluator, dream_returns, split_jobs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import rollouts  # noqa: E402


@dataclass
class Args:
    work_dir: str = "runs/bench-world-model"
    """Where the dataset, agents and evaluations are cached (delete it to start over)."""
    env_id: str = "tt_agents/CarRacing-v3"
    """The env (default: gymnasium's CarRacing-v3 with its road's corners computed by numpy, the same frames; the speed
    comparison times both)."""
    episodes: int = 16
    """Random rollouts for V and M."""
    rollout_steps: int = 300
    """Steps per rollout episode."""
    num_envs: int = 4
    """Sub-envs of the rollouts and the evaluations."""
    vae_steps: int = 600
    memory_steps: int = 600
    kinds: tuple[str, ...] = ("mdnrnn", "transformer", "trade")
    generations: int = 20
    """CMA-ES generations in dreams."""
    pop_size: int = 16
    n_samples: int = 4
    dream_horizon: int = 300
    real_generations: int = 6
    """CMA-ES generations in the real env (each costs pop_size * real_samples * real_steps env steps)."""
    real_pop_size: int = 8
    real_samples: int = 2
    real_steps: int = 150
    """Steps of each real-env rollout of the search."""
    eval_episodes: int = 20
    eval_steps: int = 1000
    """Evaluation episodes are cut here (1000: CarRacing's own limit, i.e. full episodes)."""
    eval_envs: int = 10
    """Sub-envs of the evaluations (one batched predict per step for all of them)."""
    speed_steps: int = 50
    """Steps per rollout of the speed comparison."""
    dream_variants: bool = True
    """Train (and evaluate) the dream controllers; off: only the real-env ones (a real-env budget study)."""
    section: str = "world-model"
    """The benchmarks.md section written (another name keeps an earlier run's section)."""
    vectorization: str = "sync"
    """Real envs' vector mode: ``async`` runs each sub-env in its own process (for many cores); the speed comparison
    then times the batched generation both ways (``sync`` and ``async``) against one candidate at a time (``sync``)."""
    speed_only: bool = False
    """Only the data, V and M (the first of ``--kinds``) and the speed comparison: no controller search or
    evaluation (the speed does not depend on how well C drives)."""
    seed: int = 0
    input_norm: bool = False
    """C reads ``[z, h]`` standardized per dimension over the dataset (``WorldModelConfig.controller_input_norm``)."""
    notes: str = ""
    """Free text added to the section (what the run was for, what ran beside it)."""
    reuse: tuple[str, ...] = ()
    """Earlier work dirs to take the dataset, V, M and same-budget controllers from (the first one that has each)."""


def _cfg(**kw: Any) -> Any:
    base = WorldModelController.presets["cpu"].config
    return dataclasses.replace(base, **kw)


CAR_RACING = ("CarRacing-v3", "tt_agents/CarRacing-v3")


def env_step_ms(env_ids: tuple[str, ...], steps: int, rounds: int, seed: int) -> dict[str, float]:
    """Milliseconds per bare ``step`` of each env (the same smooth actions), interleaved round by round; the
    fastest round of each."""
    best = {k: float("inf") for k in env_ids}
    acts = [np.array([np.sin(i / 10), 0.5, 0.0], np.float32) for i in range(steps)]
    for _ in range(rounds):
        for env_id in env_ids:
            env = gym.make(env_id)
            env.reset(seed=seed)
            t0 = time.perf_counter()
            for act in acts:
                if any(env.step(act)[2:4]):
                    env.reset()
            best[env_id] = min(best[env_id], 1e3 * (time.perf_counter() - t0) / steps)
            env.close()
    return best


class RandomPolicy:
    """Uniform random actions with SB3's predict signature."""

    def __init__(self, space: Any, seed: int) -> None:
        self.space = space
        self.space.seed(seed)

    def predict(self, obs: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True):
        return np.stack([self.space.sample() for _ in range(len(obs))]), state


class Bench:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.work = Path(args.work_dir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.store = self.work / "store"
        os.environ["MINARI_DATASETS_PATH"] = str(self.store)
        self.results_path = self.work / "results.json"
        self.results: dict[str, Any] = json.loads(self.results_path.read_text()) if self.results_path.exists() else {}
        self.results["args"] = dataclasses.asdict(args)  # this run's settings (world-model-seeds compares them)
        for src in args.reuse:
            self.reuse(Path(src).resolve())

    def search_budget(self, name: str) -> dict[str, int]:
        a = self.args
        if name.startswith("dream"):
            return {"generations": a.generations, "pop_size": a.pop_size, "n_samples": a.n_samples,
                    "steps": a.dream_horizon}
        return {"generations": a.real_generations, "pop_size": a.real_pop_size, "n_samples": a.real_samples,
                "steps": a.real_steps}

    def reuse(self, src: Path) -> None:
        """Copy ``src``'s dataset, V, M and the controllers searched at this run's budget (not its evaluations)."""
        import shutil

        theirs = json.loads((src / "results.json").read_text())
        if (src / "store").exists() and not self.store.exists():
            shutil.copytree(src / "store", self.store)
        for key in ("rollouts", "vae_loss"):
            if key in theirs:
                self.results.setdefault(key, theirs[key])
        walls = self.results.setdefault("wall_s", {})
        for name in ("rollouts", "vae"):
            if name in theirs.get("wall_s", {}):
                walls.setdefault(name, theirs["wall_s"][name])
        for file in ["v.zip", *(f"vm_{k}.zip" for k in self.args.kinds)]:
            if (src / file).exists() and not (self.work / file).exists():
                shutil.copy2(src / file, self.work / file)
                kind = file[3:-4]
                if file != "v.zip" and kind in theirs.get("memory_loss", {}):
                    self.results.setdefault("memory_loss", {})[kind] = theirs["memory_loss"][kind]
                    walls.setdefault(f"memory_{kind}", theirs["wall_s"].get(f"memory_{kind}"))
        for name, s in theirs.get("search", {}).items():
            path = self.work / self.controller_file(name)
            if path.exists() or not (src / path.name).exists():
                continue
            c = load_agent(src / path.name, device="cpu").config  # the rollout length its search used
            s = {**s, "steps": c.dream_horizon if c.controller_env == "dream" else c.max_episode_steps}
            same_inputs = getattr(c, "controller_input_norm", False) == self.args.input_norm
            if same_inputs and {k: s.get(k) for k in ("generations", "pop_size", "n_samples", "steps")} == \
                    self.search_budget(name):
                shutil.copy2(src / path.name, path)
                if (src / ("run_" + path.stem)).exists():
                    shutil.copytree(src / ("run_" + path.stem), self.work / ("run_" + path.stem))
                self.results.setdefault("search", {})[name] = s
                walls[name] = theirs["wall_s"].get(name, s["seconds"])
                self.results.setdefault("reused", {})[name] = str(src)
        self.results.setdefault("reused_from", [])
        if str(src) not in self.results["reused_from"]:
            self.results["reused_from"].append(str(src))
        self.results_path.write_text(json.dumps(self.results, indent=1))

    @staticmethod
    def controller_file(name: str) -> str:
        return "c_" + "".join(ch if ch.isalnum() else "_" for ch in name) + ".zip"

    def save(self) -> None:
        self.results.setdefault("load_average", []).append(os.getloadavg()[0])
        self.results_path.write_text(json.dumps(self.results, indent=1))
        self.write()

    def timed(self, key: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        self.results.setdefault("wall_s", {})[key] = time.perf_counter() - t0
        return out

    # -------------------------------------------------------------- phases
    def dataset(self) -> Any:
        a = self.args
        if "rollouts" not in self.results:
            def run() -> None:
                rollouts.main(rollouts.Args(env_id=a.env_id, dataset_id="carracing/bench-v0", episodes=a.episodes,
                                            num_envs=a.num_envs, max_episode_steps=a.rollout_steps, seed=a.seed,
                                            overwrite=True))
            self.timed("rollouts", run)
            ds = load_dataset("carracing/bench-v0")
            self.results["rollouts"] = {"episodes": len(ds), "steps": int(ds.total_steps)}
            self.save()
        return load_dataset("carracing/bench-v0")

    def train_vm(self, ds: Any) -> dict[str, Path]:
        a = self.args
        v_path = self.work / "v.zip"
        if not v_path.exists():
            agent = WorldModelController(ds.observation_space, ds.action_space, _cfg(), device="cpu", seed=a.seed)
            res = self.timed("vae", lambda: agent.fit(ds, TrainConfig(steps=a.vae_steps, batch_size=32, lr=1e-3,
                                                                       warmup_steps=50, weight_decay=0.0,
                                                                       progress=False), stage="vae"))
            self.results["vae_loss"] = [res.losses[0], res.final_loss]
            agent.save(v_path)
            self.save()
        paths = {}
        for kind in a.kinds:
            path = self.work / f"vm_{kind}.zip"
            paths[kind] = path
            if path.exists():
                continue
            v = load_agent(v_path, device="cpu")
            agent = WorldModelController(ds.observation_space, ds.action_space, _cfg(memory_kind=kind), device="cpu",
                                         seed=a.seed)
            agent.model.vae.load_state_dict(v.model.vae.state_dict())
            res = self.timed(f"memory_{kind}", lambda agent=agent: agent.fit(
                ds, TrainConfig(steps=a.memory_steps, batch_size=16, lr=1e-3, warmup_steps=50, weight_decay=0.0,
                                progress=False), stage="memory"))
            self.results.setdefault("memory_loss", {})[kind] = [res.losses[0], res.final_loss]
            agent.save(path)
            self.save()
        return paths

    def speed(self, ds: Any, path: Path) -> None:
        a = self.args
        if "speed" in self.results:
            return
        agent = load_agent(path, device="cpu")
        P = a.real_pop_size
        g = torch.Generator().manual_seed(a.seed)
        cands = 0.1 * torch.randn(P, agent.model.controller.n_params, generator=g)
        jobs = np.arange(P)
        out = {}
        # one candidate at a time is one env in this process; the batched generation runs in this process (sync), and
        # with --vectorization async also with every sub-env in its own process
        runs = [("batched", P, "sync"), ("one_at_a_time", 1, "sync")]
        if a.vectorization != "sync":
            runs.insert(1, (f"batched_{a.vectorization}", P, a.vectorization))
        for name, n, mode in runs:
            ev = EnvEvaluator(lambda k, mode=mode: agent.make_env(a.env_id, k, mode, max_episode_steps=a.speed_steps),
                              n, lambda o: agent.encode(o)[0], agent._raw_to_actions, a.speed_steps)
            t0 = time.perf_counter()
            ev.returns(agent.model, cands, jobs, 1, a.seed, 0)
            dt = time.perf_counter() - t0
            out[name] = {"seconds": dt, "env_steps": ev.env_steps, "steps_per_s": ev.env_steps / dt,
                         "env_seconds": ev.env_seconds, "model_seconds": ev.model_seconds}
            ev.close()
        z0 = agent.encode(np.stack([np.asarray(ep.observations[0]) for ep in ds]))[0]
        Pd, S = a.pop_size, a.n_samples
        cands = 0.1 * torch.randn(Pd, agent.model.controller.n_params, generator=g)
        t0 = time.perf_counter()
        dream_returns(agent.model, cands, split_jobs(Pd * S, 0, 1), S, z0, a.dream_horizon, 1.0, a.seed, 0,
                      agent._raw_to_memory)
        dt = time.perf_counter() - t0
        out["dream"] = {"seconds": dt, "steps": Pd * S * a.dream_horizon, "steps_per_s": Pd * S * a.dream_horizon / dt}
        if a.env_id in CAR_RACING:
            out["env_ms_per_step"] = env_step_ms(CAR_RACING, a.speed_steps * 4, rounds=3, seed=a.seed)
        self.results["speed"] = out
        self.save()

    def controllers(self, ds: Any, paths: dict[str, Path]) -> dict[str, Path]:
        a = self.args
        v_path = self.work / "v.zip"
        variants: dict[str, tuple[Path, dict[str, Any]]] = {}
        real = {"controller_env": a.env_id, "pop_size": a.real_pop_size, "n_samples": a.real_samples,
                "max_episode_steps": a.real_steps, "eval_envs": a.real_pop_size * a.real_samples,
                "eval_vectorization": a.vectorization, "controller_input_norm": a.input_norm}
        variants["real, V only"] = (v_path, {**real, "controller_uses_memory": False})
        variants["real, V + untrained M (mdnrnn)"] = (v_path, real)
        for kind in a.kinds:
            variants[f"real, V + trained M ({kind})"] = (paths[kind], real)
        for kind in a.kinds if a.dream_variants else ():
            variants[f"dream, V + trained M ({kind})"] = (paths[kind], {"controller_env": "dream",
                                                                        "controller_input_norm": a.input_norm})
        out = {}
        for name, (src, changes) in variants.items():
            path = self.work / self.controller_file(name)
            out[name] = path
            if path.exists():
                continue
            base = load_agent(src, device="cpu")
            if not changes.get("controller_uses_memory", True):
                agent = WorldModelController(base.observation_space, base.action_space,
                                             dataclasses.replace(base.config, **changes), device="cpu", seed=a.seed)
                agent.model.vae.load_state_dict(base.model.vae.state_dict())
            else:
                agent = base.with_config(**changes)
            gens = a.generations if changes["controller_env"] == "dream" else a.real_generations
            run_dir = self.work / ("run_" + path.stem)
            res = self.timed(name, lambda agent=agent, gens=gens, run_dir=run_dir: agent.fit(
                ds, TrainConfig(steps=gens, progress=False, log_every=1, run_dir=str(run_dir)), stage="controller"))
            rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            self.results.setdefault("search", {})[name] = {
                "generations": gens, "pop_size": agent.config.pop_size, "n_samples": agent.config.n_samples,
                "seconds": res.seconds, "s_per_generation": res.seconds / gens,
                "first_mean": rows[0]["mean"], "last_mean": rows[-1]["mean"], "best": rows[-1]["best_ever"],
                "steps": a.dream_horizon if changes["controller_env"] == "dream" else a.real_steps}
            agent.save(path)
            self.save()
        return out

    def evaluate_all(self, ds: Any, controllers: dict[str, Path]) -> None:
        a = self.args
        real = {k: v for k, v in controllers.items() if k.startswith("real")}
        todo: dict[str, Any] = {**real, "random policy": None, **{k: v for k, v in controllers.items() if k not in real}}
        for name, path in todo.items():
            if name in self.results.get("eval", {}):
                continue
            if path is None:
                agent: Any = load_agent(self.work / "v.zip", device="cpu")
                policy = RandomPolicy(ds.action_space, a.seed)
            else:
                agent = policy = load_agent(path, device="cpu")
            envs = agent.make_env(a.env_id, a.eval_envs, a.vectorization, max_episode_steps=a.eval_steps)
            t0 = time.perf_counter()
            res = evaluate(policy, envs, n_episodes=a.eval_episodes, seed=10_000 + a.seed, progress=False)
            envs.close()
            self.results.setdefault("eval", {})[name] = {"mean": res.mean_return, "stderr": res.stderr_return,
                                                         "std": float(np.std(res.returns)), "n": res.n_episodes,
                                                         "seconds": time.perf_counter() - t0,
                                                         "steps": a.eval_steps}
            self.save()
            print(f"evaluated {name}: {res}", flush=True)

    # -------------------------------------------------------------- report
    @staticmethod
    def verdict(ev: dict[str, Any]) -> list[str]:
        """Does each real-env trained M beat V only and the untrained M (the same search budget)? Differences in
        units of their combined standard error."""
        base = {k: ev[k] for k in ("real, V only", "real, V + untrained M (mdnrnn)") if k in ev}
        out = []
        for name, e in ev.items():
            if not (name.startswith("real, V + trained M") and base):
                continue
            parts = []
            for bname, b in base.items():
                diff = e["mean"] - b["mean"]
                z = diff / max(float(np.hypot(e["stderr"], b["stderr"])), 1e-9)
                parts.append(f"{diff:+.1f} against {bname[6:]} ({z:+.1f} stderr)")
            wins = all(e["mean"] - b["mean"] > 2 * np.hypot(e["stderr"], b["stderr"]) for b in base.values())
            out.append(f"- {name[6:]}: {', '.join(parts)}: "
                       f"{'beats both (by more than 2 stderr)' if wins else 'does not beat both by more than 2 stderr'}.")
        return (["Trained M against V only and the untrained M, all searched at the same real-env budget:", "", *out, ""]
                if out else [])

    def write(self) -> None:
        a, r = self.args, self.results
        frames = r.get("rollouts", {}).get("steps")
        load = r.get("load_average", [])
        epochs = (lambda steps, batch: f", {steps * batch / frames:.1f} epochs") if frames else (lambda *_: "")
        lines = [
            f"Shared machine ({os.cpu_count()} cores; other jobs ran beside this one, which used 1 torch thread): "
            f"the 1-minute load average at this run's phase ends was {min(load):.1f} to {max(load):.1f}."
            if load else "", "",
            f"Data, V and M (the same for every row): {r.get('rollouts', {}).get('episodes', '?')} brownian random "
            f"rollouts of {a.rollout_steps} steps ({frames or '?'} frames, 64x64); V {a.vae_steps} steps of batch 32"
            f"{epochs(a.vae_steps, 32)}; each M {a.memory_steps} steps of batch 16 sequences of 32"
            f"{epochs(a.memory_steps, 16 * 32)}; the `cpu` preset's sizes (V widths 16/32/64/128, latent 32; MDN-RNN "
            f"64 units x 5 Gaussians; transformer kinds d_model 32, 8 heads, 3 layers)."
            + ("" if a.speed_only else
               f" Evaluation: {a.eval_episodes} episodes of up to {a.eval_steps} steps"
               f"{' (full CarRacing episodes)' if a.eval_steps >= 1000 else ' (cut before the full 1000)'}, "
               f"{a.eval_envs} sub-envs, deterministic (V's mean). C reads "
               + ("`[z, h]` standardized per dimension over the dataset (`controller_input_norm=True`, set when each "
                  "controller's search starts)." if a.input_norm else "the raw `[z, h]` (the paper's).")),
            "",
        ]
        if r.get("reused_from"):
            reused = sorted(r.get("reused", {}))
            lines += [f"Reused from earlier runs of this bench ({', '.join(f'`{x}`' for x in r['reused_from'])}): the "
                      f"dataset, V and M" + (f", and the searches of {', '.join(reused)}" if reused else "") +
                      " (their wall times below are those runs'). Every evaluation below is this run's.", ""]
        walls = r.get("wall_s", {})
        if walls:
            lines += ["Wall time per phase (s): " + ", ".join(f"{k} {v:.0f}" for k, v in walls.items() if v is not None),
                      ""]
        ev = r.get("eval", {})
        search = r.get("search", {})
        if ev:
            rows = []
            for name, e in ev.items():
                s = search.get(name, {})
                budget = (f"{s['generations']} gen x {s['pop_size']} x {s['n_samples']} "
                          f"{'dreams' if name.startswith('dream') else 'rollouts'} of <= {s.get('steps', '?')} steps"
                          if s else "")
                rows.append([name, f"{e['mean']:.1f} +- {e['std']:.1f} (stderr {e['stderr']:.1f}, n={e['n']})",
                             budget, f"{s['first_mean']:.2f} -> {s['last_mean']:.2f}" if s else "",
                             f"{s['seconds']:.0f}" if s else "", f"{s['s_per_generation']:.1f}" if s else "",
                             f"{e['seconds']:.0f}"])
            rows.append(["paper (100 trials)", "906 +- 21 (V only 632 +- 251)", "", "", "", "", ""])
            rows.append(["PyTorch port", "860 +- 120 (untrained MDN-RNN 870 +- 120)", "", "", "", "", ""])
            steps = {e.get("steps", a.eval_steps) for e in ev.values()}
            lines += [f"Returns over real CarRacing-v3 episodes of up to {'/'.join(map(str, sorted(steps)))} steps:", "",
                      markdown_table(["controller", "return (mean +- std)", "C's search budget",
                                      "search fitness, first -> last generation mean", "search s", "s / generation",
                                      "eval s"], rows),
                      ""]
            lines += self.verdict(ev)
        sp = r.get("speed")
        if sp:
            b, o, d = sp["batched"], sp["one_at_a_time"], sp["dream"]
            processes = {k.removeprefix("batched_"): x for k, x in sp.items() if k.startswith("batched_")}  # async
            rows = []
            timed = [(f"real, batched ({a.real_pop_size} sub-envs in this process, one V+C+M forward per step)", b)]
            timed += [(f"real, batched ({a.real_pop_size} sub-envs, each in its own process ({mode}), one V+C+M "
                       f"forward per step)", x) for mode, x in processes.items()]
            timed += [("real, one candidate at a time (1 sub-env)", o)]
            for label, x in timed:
                prof = [f"{1e3 * x[k] / x['env_steps']:.2f}" if k in x else "" for k in ("env_seconds", "model_seconds")]
                rows.append([label, x["seconds"], x["env_steps"], x["steps_per_s"], *prof])
            rows.append(["dream (inside M, batched)", d["seconds"], d["steps"], d["steps_per_s"], "0", ""])
            lines += [
                f"Speed (one CMA-ES generation of {a.real_pop_size} candidates x 1 rollout of {a.speed_steps} real "
                f"steps; dream: {a.pop_size} x {a.n_samples} dreams of {a.dream_horizon} "
                "steps); the profile splits each real env step's time between the env (reset, step: Box2D, pygame "
                "rendering, the 96->64 resize wrapper) and V+C+M:", "",
                markdown_table(["evaluation", "seconds", "steps", "steps/s", "env ms / step", "V+C+M ms / step"], rows),
                "",
                f"Batched / one at a time: {o['seconds'] / b['seconds']:.2f}x in one process"
                + "".join(f", {o['seconds'] / x['seconds']:.2f}x with the sub-envs in their own processes ({mode}, "
                          f"{os.cpu_count()} cores)" for mode, x in processes.items())
                + f" (goal 4x); dream / real steps per second: {d['steps_per_s'] / b['steps_per_s']:.0f}x against the "
                f"batched real env, {d['steps_per_s'] / o['steps_per_s']:.0f}x against one at a time (goal 20x).", "",
            ]
            env_ms = sp.get("env_ms_per_step")
            if env_ms:
                g, f = env_ms["CarRacing-v3"], env_ms["tt_agents/CarRacing-v3"]
                lines += [
                    f"The env alone (bare `step`, the same {4 * a.speed_steps} smooth actions, 3 interleaved rounds, "
                    f"the fastest of each): gymnasium's CarRacing-v3 {g:.2f} ms per step, `tt_agents/CarRacing-v3` "
                    f"(its road transformed by numpy, the same frames: tests/envs/test_car_racing.py) {f:.2f} ms: "
                    f"{g / f:.2f}x faster. The real-env rows above ran on `{a.env_id}`.", ""]
            if "env_seconds" in b:
                bound = o["seconds"] / b["env_seconds"]
                lines += [
                    f"Where the time goes: batched, the env takes {100 * b['env_seconds'] / b['seconds']:.0f}% of "
                    f"the generation and V+C+M {100 * b['model_seconds'] / b['seconds']:.0f}%; one at a time, "
                    f"{100 * o['env_seconds'] / o['seconds']:.0f}% and {100 * o['model_seconds'] / o['seconds']:.0f}%. "
                    f"Batching cuts V+C+M from {1e3 * o['model_seconds'] / o['env_steps']:.2f} to "
                    f"{1e3 * b['model_seconds'] / b['env_steps']:.2f} ms per env step, but the env's own "
                    f"{1e3 * b['env_seconds'] / b['env_steps']:.1f} ms per step (CarRacing draws its track at "
                    f"1000x800 with pygame and scales it to 96x96 on every step"
                    + ("; `tt_agents/CarRacing-v3` only computes the road's corners faster"
                       if a.env_id == "tt_agents/CarRacing-v3" else "")
                    + f") does not shrink in one process: even with V+C+M free the batched generation could be at most {bound:.2f}x faster "
                    f"than one at a time here. More needs the sub-envs in several processes (`--vectorization "
                    f"async`): at most one core's worth of env steps per core"
                    + (", which this run measures above." if processes else "."), ""]
        if a.notes:
            lines += [a.notes, ""]
        title = "World Models on CarRacing-v3 (V, M kinds, CMA-ES in dreams and real env)"
        if a.section != "world-model":
            title += f": {a.section}"
        write_section(a.section, title, "\n".join(lines))


def main(args: Args) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    bench = Bench(args)
    ds = bench.dataset()
    paths = bench.train_vm(ds)
    bench.speed(ds, paths[args.kinds[0]])
    if args.speed_only:
        bench.write()
        print(json.dumps(bench.results, indent=1))
        return
    controllers = bench.controllers(ds, paths)
    bench.evaluate_all(ds, controllers)
    bench.write()  # also when every phase was cached (nothing saved, so nothing written yet)
    print(json.dumps(bench.results, indent=1))
