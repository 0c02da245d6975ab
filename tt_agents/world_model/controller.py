"""Training C with CMA-ES (the ``cma`` package): the search, and the population's evaluation in dreams or real envs.

- :class:`CMAESSearch`: a :class:`~tt_agents.stages.Search` over a flat parameter vector. Each
  generation asks ``cma`` for a population, has it evaluated, tells ``cma`` the fitness and writes
  the best candidate so far into the model. Its state is pickle-free: the seed, the start point
  and every generation's fitness; resuming replays the asks and tells (``cma`` draws its normals
  from our own seeded generator), which rebuilds the exact CMA-ES state, checked against the saved
  mean. ``cma``'s stop conditions and non-finite fitness raise, naming the cause (the port's search
  stopped silently).
- :func:`split_jobs` / :func:`gather_returns`: a population of ``P`` candidates times ``S``
  rollouts is ``P * S`` jobs; each torchrun rank evaluates its contiguous share and the returns are
  summed with ``all_reduce`` (zeros elsewhere), so every rank sees every fitness and steps the same
  CMA-ES state. All randomness of a job is drawn for the whole population and indexed by the job,
  so the result does not depend on how the jobs are split.
- :func:`dream_returns`: rollouts inside M (no rendering): C acts on ``[z, h]``, M's mixture is
  sampled with a temperature, its reward head gives the reward and its done head ends episodes;
  one batched C and M forward per step for all of this rank's jobs.
- :class:`EnvEvaluator`: rollouts in a real vector env, in waves of ``num_envs`` jobs, one batched V,
  C and M forward per step for the whole wave.

Example:
    >>> import numpy as np, torch
    >>> target = torch.arange(3.0)
    >>> search = CMAESSearch(torch.zeros(3), sigma0=0.5, popsize=8, seed=0,
    ...                      evaluate=lambda x, g: -((x - target) ** 2).sum(1))
    >>> first = search.step(0)["mean"]
    >>> for g in range(1, 30):
    ...     last = search.step(g)["mean"]
    >>> last > first
    True
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from tt_agents.world_model.models import WorldModel, sample_mixture

__all__ = ["CMAESSearch", "CMAStoppedError", "EnvEvaluator", "dream_returns", "gather_returns", "split_jobs",
           "plot_fitness"]

Evaluate = Callable[[torch.Tensor, int], torch.Tensor]
"""``evaluate(candidates (P, n), generation) -> fitness (P,)`` (higher is better), the same on every rank."""


class CMAStoppedError(RuntimeError):
    """CMA-ES met one of its termination criteria before the generations asked for were run."""


class CMAESSearch:
    """CMA-ES over a flat vector, one generation per :meth:`step`; see the module docstring.

    Args:
        x0: the start point ``(n,)``.
        sigma0: the initial step size (0.1 in World Models).
        popsize: candidates per generation (64 in World Models).
        seed: seeds ``cma``'s normal draws (our own generator; the global numpy RNG is not touched).
        evaluate: see :data:`Evaluate`.
        write_best: called with the best candidate so far after each generation.
        target_return: once the best fitness reaches it, later generations evaluate nothing and keep it.
        log: called with one line per generation (best / mean / std fitness), e.g. ``tqdm.write``.
        on_stop: what to do when ``cma`` meets a termination criterion (flat fitness, collapsed step
            size): ``"raise"`` (:class:`CMAStoppedError`) or ``"warn"`` (a warning naming it, once, and
            ``cma_stopped`` = 1 in the metrics; the search goes on).
    """

    def __init__(self, x0: torch.Tensor, sigma0: float, popsize: int, seed: int, evaluate: Evaluate,
                 write_best: Callable[[torch.Tensor], None] | None = None, target_return: float | None = None,
                 log: Callable[[str], None] | None = None, on_stop: str = "raise") -> None:
        if on_stop not in ("raise", "warn"):
            raise ValueError(f"on_stop must be 'raise' or 'warn', got {on_stop!r}")
        self.on_stop, self.warned = on_stop, False
        if popsize < 2:
            raise ValueError(f"CMA-ES needs a population of at least 2 candidates, got pop_size={popsize}")
        if not sigma0 > 0:
            raise ValueError(f"sigma0 must be > 0, got {sigma0}")
        self.x0 = x0.detach().double().cpu().clone()
        self.sigma0, self.popsize, self.seed = float(sigma0), int(popsize), int(seed)
        self.evaluate, self.write_best, self.target_return, self.log = evaluate, write_best, target_return, log
        self.history: list[list[float]] = []
        self.best_x = self.x0.clone()
        self.best_f = -math.inf
        self.es = self._new_es()

    def _new_es(self) -> Any:
        import cma

        rng = np.random.default_rng(self.seed)
        opts = {"popsize": self.popsize, "seed": float("nan"), "verbose": -9,
                "randn": lambda lam, n: rng.standard_normal((lam, n))}
        return cma.CMAEvolutionStrategy(self.x0.numpy(), self.sigma0, opts)

    def _tell(self, xs: list[np.ndarray], fitness: np.ndarray) -> None:
        self.es.tell(xs, (-fitness).tolist())  # cma minimizes

    @property
    def reached_target(self) -> bool:
        return self.target_return is not None and self.best_f >= self.target_return

    def step(self, step: int) -> dict[str, float]:
        if self.reached_target:
            return {"loss": -self.best_f, "best_ever": self.best_f, "sigma": float(self.es.sigma), "evaluated": 0.0}
        stop = {k: v for k, v in self.es.stop().items() if k != "callback"}
        if stop:
            message = (f"CMA-ES met its termination criteria {stop} after {len(self.history)} generations (a flat "
                       "fitness or a collapsed step size: the search has no signal); raise n_samples or pop_size so "
                       "the fitness is less noisy, raise sigma0, or train fewer generations")
            if self.on_stop == "raise":
                raise CMAStoppedError(message)
            if not self.warned:
                warnings.warn(message, RuntimeWarning, stacklevel=2)
                self.warned = True
        xs = self.es.ask()
        candidates = torch.as_tensor(np.stack(xs), dtype=torch.float32)  # (P, n)
        fitness = np.asarray(self.evaluate(candidates, len(self.history)), dtype=np.float64).reshape(-1)
        if fitness.shape != (self.popsize,):
            raise ValueError(f"evaluate returned {fitness.shape[0]} fitness values for {self.popsize} candidates")
        bad = np.flatnonzero(~np.isfinite(fitness))
        if len(bad):
            raise FloatingPointError(f"fitness of candidates {bad.tolist()} is {fitness[bad].tolist()} in "
                                     f"generation {len(self.history)}; check the env's rewards and M's reward head")
        self._tell(xs, fitness)
        self.history.append(fitness.tolist())
        i = int(np.argmax(fitness))
        if fitness[i] > self.best_f:
            self.best_f, self.best_x = float(fitness[i]), torch.as_tensor(xs[i], dtype=torch.float64)
        if self.write_best is not None:
            self.write_best(self.best_x.float())
        metrics = {"best": float(fitness.max()), "mean": float(fitness.mean()), "std": float(fitness.std()),
                   "best_ever": self.best_f, "sigma": float(self.es.sigma), "evaluated": float(self.popsize),
                   "cma_stopped": float(bool(stop))}
        if self.log is not None:
            self.log(f"generation {len(self.history)}: best {metrics['best']:.2f}  mean {metrics['mean']:.2f}  "
                     f"std {metrics['std']:.2f}  best so far {self.best_f:.2f}  sigma {metrics['sigma']:.4f}")
        return {"loss": -self.best_f, **metrics}

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        meta = {"seed": self.seed, "sigma0": self.sigma0, "popsize": self.popsize, "history": self.history,
                "best_f": self.best_f if math.isfinite(self.best_f) else None}
        return meta, {"x0": self.x0, "best_x": self.best_x, "mean": torch.as_tensor(np.asarray(self.es.mean))}

    def load_state_dict(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        if (int(meta["popsize"]), float(meta["sigma0"])) != (self.popsize, self.sigma0):
            raise ValueError(f"the checkpoint's search has pop_size {meta['popsize']} and sigma0 {meta['sigma0']}, "
                             f"this one {self.popsize} and {self.sigma0}; resume with the same settings")
        self.seed = int(meta["seed"])
        self.x0 = tensors["x0"].double().clone()
        self.es = self._new_es()
        for fitness in meta["history"]:  # replay: the same asks, the same tells
            self._tell(self.es.ask(), np.asarray(fitness, np.float64))
        self.history = [list(map(float, f)) for f in meta["history"]]
        saved = tensors["mean"].double().numpy()
        if not np.allclose(np.asarray(self.es.mean), saved, rtol=1e-9, atol=1e-12):
            raise ValueError("replaying the checkpoint's CMA-ES history did not reproduce its mean (another version "
                             "of the cma package?); start a new run_dir")
        self.best_f = -math.inf if meta["best_f"] is None else float(meta["best_f"])
        self.best_x = tensors["best_x"].double().clone()
        if self.write_best is not None and self.history:
            self.write_best(self.best_x.float())


# ---------------------------------------------------------------------------- splitting jobs
def split_jobs(n_jobs: int, rank: int, world_size: int) -> np.ndarray:
    """This rank's contiguous share of ``n_jobs`` job indices.

    Example:
        >>> [split_jobs(5, r, 2).tolist() for r in range(2)]
        [[0, 1, 2], [3, 4]]
    """
    return np.array_split(np.arange(n_jobs), world_size)[rank]


def gather_returns(mine: torch.Tensor, jobs: np.ndarray, n_jobs: int, world_size: int) -> torch.Tensor:
    """Every job's return on every rank: this rank's ``mine`` (``(len(jobs),)``) summed with the others' (exact:
    each entry is one rank's value plus zeros)."""
    out = torch.zeros(n_jobs, dtype=torch.float64)
    out[torch.as_tensor(jobs, dtype=torch.long)] = mine.double().cpu()
    if world_size > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def _generator(seed: int, generation: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, generation]).generate_state(1)[0]))


# ------------------------------------------------------------------------------------ dreams
@torch.no_grad()
def dream_returns(model: WorldModel, candidates: torch.Tensor, jobs: np.ndarray, n_samples: int, z0: torch.Tensor,
                  horizon: int, temperature: float, seed: int, generation: int,
                  to_memory_action: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Returns of the dream rollouts ``jobs`` (job ``j``: candidate ``j // n_samples``, rollout ``j % n_samples``).

    Args:
        model: the world model (its M dreams; its controller's shapes unflatten the candidates).
        candidates: ``(P, n_params)`` flat controller parameters.
        z0: ``(E, D)`` start latents (V's means of episode starts); rollout ``s`` of every candidate
            starts from the same one (common random numbers within a generation).
        horizon: the longest dream; the done head (probability > 0.5) ends one earlier.
        temperature: of M's mixture (``sample_mixture``).
        seed, generation: all randomness (starts, mixture components, normals) is a function of these
            and the job index only.
        to_memory_action: C's raw outputs ``(J, out)`` -> the actions M reads ``(J, A)``.

    Returns:
        ``(len(jobs),)`` float64.
    """
    device = next(model.parameters()).device
    P, S = candidates.shape[0], n_samples
    n_jobs = P * S
    jobs_t = torch.as_tensor(jobs, dtype=torch.long)
    g = _generator(seed, generation)
    starts = torch.randint(len(z0), (S,), generator=g)
    z = z0[starts[jobs_t % S]].to(device)  # (J, D)
    params = candidates[jobs_t // S].to(device)  # (J, n_params)
    memory = model.memory
    state = memory.initial_state(len(jobs), device)
    ret = torch.zeros(len(jobs), dtype=torch.float64, device=device)
    alive = torch.ones(len(jobs), dtype=torch.bool, device=device)
    D = z.shape[1]
    for _ in range(horizon):
        if not alive.any():
            break
        uniform = torch.rand(n_jobs, D, generator=g)[jobs_t].to(device)  # drawn for the whole population
        normal = torch.randn(n_jobs, D, generator=g)[jobs_t].to(device)
        raw = model.controller.batched(params, model.controller_input(z, state))  # (J, out)
        out, state = memory.step(z, to_memory_action(raw), state)
        z = sample_mixture(out.logit_pi[:, 0], out.mu[:, 0], out.log_sigma[:, 0], temperature, uniform, normal)
        ret += torch.where(alive, out.reward[:, 0].double(), 0.0)
        alive &= torch.sigmoid(out.done_logit[:, 0]) <= 0.5
    return ret.cpu()


# --------------------------------------------------------------------------------- real envs
class EnvEvaluator:
    """Returns of real-env rollouts, ``num_envs`` jobs at a time in one vector env.

    Args:
        make_env: ``num_envs -> VectorEnv`` (called once).
        num_envs: sub-envs, i.e. jobs stepped together (1: one candidate's rollout at a time).
        encode: frames ``(N, H, W, C)`` uint8 -> latents ``(N, D)`` (V's means).
        to_actions: C's raw outputs ``(N, out)`` -> ``(memory actions (N, A), env actions (N, ...) numpy)``.
        max_steps: longest episode (env's own time limit applies too).

    ``env_steps`` counts the rollouts' env steps so far; ``env_seconds`` the time spent in the vector
    env's ``reset`` and ``step`` (physics, rendering, the resize wrapper) and ``model_seconds`` the
    time in V, C and M: the profile that says which side a faster evaluation must cut.
    """

    def __init__(self, make_env: Callable[[int], Any], num_envs: int, encode: Callable[[np.ndarray], torch.Tensor],
                 to_actions: Callable[[torch.Tensor], tuple[torch.Tensor, np.ndarray]], max_steps: int) -> None:
        self.envs = make_env(num_envs)
        self.num_envs, self.encode, self.to_actions, self.max_steps = num_envs, encode, to_actions, max_steps
        self.env_steps = 0
        self.env_seconds = 0.0
        self.model_seconds = 0.0

    @torch.no_grad()
    def returns(self, model: WorldModel, candidates: torch.Tensor, jobs: np.ndarray, n_samples: int, seed: int,
                generation: int) -> torch.Tensor:
        """``(len(jobs),)`` returns; rollout ``s`` of every candidate resets with the same env seed."""
        S = n_samples
        out = torch.zeros(len(jobs), dtype=torch.float64)
        base = int(np.random.SeedSequence([seed, generation]).generate_state(1)[0] % (2**31 - S))
        for lo in range(0, len(jobs), self.num_envs):
            wave = jobs[lo: lo + self.num_envs]
            padded = np.concatenate([wave, np.repeat(wave[:1], self.num_envs - len(wave))])  # idle rows copy job 0
            out[lo: lo + len(wave)] = self._wave(model, candidates[torch.as_tensor(padded // S)],
                                                 [base + int(j % S) for j in padded], len(wave))[: len(wave)]
        return out

    def _wave(self, model: WorldModel, params: torch.Tensor, seeds: list[int], n_real: int) -> torch.Tensor:
        device = next(model.parameters()).device
        params = params.to(device)
        clock = time.perf_counter
        t0 = clock()
        obs, _ = self.envs.reset(seed=seeds)
        self.env_seconds += clock() - t0
        n = self.num_envs
        state = model.memory.initial_state(n, device)
        ret = np.zeros(n)
        alive = np.ones(n, bool)
        for _ in range(self.max_steps):
            t0 = clock()
            z = self.encode(obs)
            raw = model.controller.batched(params, model.controller_input(z, state))
            m_action, env_action = self.to_actions(raw)
            if model.controller_uses_memory:
                _, state = model.memory.step(z, m_action, state)
            t1 = clock()
            obs, r, term, trunc, _ = self.envs.step(env_action)
            self.model_seconds += t1 - t0
            self.env_seconds += clock() - t1
            self.env_steps += int(alive[:n_real].sum())  # the idle copies are not counted
            ret += np.where(alive, r, 0.0)
            alive &= ~(np.asarray(term) | np.asarray(trunc))
            if not alive.any():
                break
        return torch.as_tensor(ret)

    def close(self) -> None:
        self.envs.close()


def plot_fitness(metrics_path: Any, out_path: Any, stage: str = "controller") -> bool:
    """Best / mean (+- std) fitness per generation from a run's ``metrics.jsonl`` into a PNG; False if no rows."""
    import json
    from pathlib import Path

    rows = []
    for line in Path(metrics_path).read_text().splitlines() if Path(metrics_path).exists() else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get("stage", stage) == stage and "mean" in row:
            rows.append(row)
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = [r["step"] for r in rows]
    mean, std = np.array([r["mean"] for r in rows]), np.array([r["std"] for r in rows])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(x, [r["best"] for r in rows], label="best")
    ax.plot(x, mean, label="mean")
    ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("generation")
    ax.set_ylabel("fitness (return)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return True


def flat_params(module: nn.Module) -> torch.Tensor:
    """A module's parameters as one flat vector (``parameters_to_vector`` order, as :meth:`Controller.batched`)."""
    return nn.utils.parameters_to_vector(module.parameters()).detach()
