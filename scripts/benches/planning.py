"""Trajectory Transformer planning: seconds per planned action, KV-cached vs recomputing.

The HalfCheetah shape (17-dim observations, 6-dim actions, 4 layers, 4 heads, width 128, 100
bins, attention over the last 5 transitions), untrained weights, random inputs, CPU. Every state
is first warmed with cheap plans (beam 1, horizon 1) for ``warmup_steps`` env steps, so that the
history covers the network's whole receptive field and every timed call is in the steady state
of a long episode. A timed call is one ``predict``: append the last transition to each env's
context, then one batched beam search for all envs.

Modes (same agent, same inputs):

- ``cache``: the planner's default (the fused C step of :mod:`tt_agents.models.tt_native` where it
  applies); fastest of ``repeats`` rounds, interleaved with the torch step (``PlanConfig(native=False)``:
  KV ring cache, forked beams), on which torch's FLOP counter and profiler analyse the same search.
- ``recompute``: the exact reference, ``PlanConfig(use_cache=False)``: every token reruns the
  network over the last ``n_layer * (attn_window - 1) + 1`` tokens; it returns the cached plans
  (tests/test_tt.py).
- ``window``: the original planner's cost model: every token reruns the network over the whole
  transitions that fit in one attention window (at most ``attn_window - 1`` = 124 tokens, the
  original's ``max_block``). A different function from the cache once the history is longer
  than a window, listed because it is what the original implementation pays.

The two recompute modes take minutes per planned action at beam 128, so they run once, and
where ``full_reference`` does not list a configuration they are timed at horizons 1 and 2 and
extrapolated, ``t(H) = t(1) + (H - 1) (t(2) - t(1))``: in the steady state every transition after
the first costs the same (the same tokens over the same number of kept tokens). The table says
which figures are measured and which extrapolated; a configuration listed in both shows how
close the extrapolation comes.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from benches._common import load_note, markdown_table, write_section
from tt_agents.planning import PlanConfig, ReferenceContext
from tt_agents.tt import TTConfig, TTPlanner, TTState


@dataclass
class Args:
    searches: tuple[str, ...] = ("32x5", "128x15")
    """Beam searches to time, as ``BEAMxHORIZON``."""
    n_envs: tuple[int, ...] = (1, 8)
    """Envs per predict call (one batched search for all of them)."""
    repeats: int = 3
    """Rounds of the cached mode; the fastest is reported (the least disturbed on a shared machine)."""
    reference_envs: tuple[int, ...] = (1,)
    """Env counts at which the recompute modes are timed (they take minutes)."""
    full_reference: tuple[str, ...] = ("32x5",)
    """Searches whose recompute modes are also timed at their full horizon (else only extrapolated)."""
    modes: tuple[str, ...] = ("recompute", "window")
    """Recompute modes to time besides the cache."""
    warmup_steps: int = 21
    """Env steps before timing: 21 transitions cover the receptive field (4 * 124 + 1 tokens)."""
    obs_dim: int = 17
    """HalfCheetah's observation size."""
    action_dim: int = 6
    """HalfCheetah's action size."""
    threads: int = 1
    """torch intra-op threads (1: comparable across shared machines)."""
    device: str = "auto"
    """Where the agents run: ``"auto"`` is ``cuda`` when a GPU is present (the compiled steps then use CUDA graphs),
    else ``cpu``."""
    variants: tuple[str, ...] = ("forked-rings", "fused", "fused-bf16", "fused-bf16-linear", "fused-bf16-all",
                                 "shared-prefix", "shared-prefix-bf16")
    """Cache variants of the variants table (same weights, inputs and histories, interleaved): ``forked-rings``
    (the torch step), ``fused`` (the default: the fused C step, ``PlanConfig.native``), ``fused-bf16`` (its keys
    and values in bfloat16), ``fused-bf16-linear`` (its linear layers in bfloat16, ``linear_dtype``),
    ``fused-bf16-all`` (both), ``shared-prefix`` (``PlanConfig.shared_prefix``, torch), ``shared-prefix-bf16`` /
    ``-fp16`` (its beams' keys and values in bfloat16 / float16); empty to skip the table."""
    peak_repeats: int = 20
    """Runs of each matmul of the machine's peak rate (taken at both ends of the run)."""
    variant_rounds: int = 3
    """Interleaved rounds of the variants table (the fastest of each is reported)."""
    section: str = "planning"
    """The section of benchmarks.md to write (another name keeps the main one, e.g. for a run with more threads)."""
    write: bool = True
    """Rewrite the ``section`` section of benchmarks.md."""


def make_agent(args: Args, beam: int, horizon: int, mode: str) -> TTPlanner:
    obs = gym.spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32)
    act = gym.spaces.Box(-1.0, 1.0, (args.action_dim,), np.float32)
    plan = PlanConfig(beam_width=beam, horizon=horizon, use_cache=mode == "cache")
    return TTPlanner(obs, act, TTConfig(), device=args.device, seed=0, act=plan)  # the paper's network


def twin_agent(args: Args, beam: int, horizon: int, like: TTPlanner | None, **act: object) -> TTPlanner:
    """A cached planner with ``act`` replaced in its search settings and, if ``like`` is given, its weights."""
    agent = make_agent(args, beam, horizon, "cache")
    agent.act = dataclasses.replace(agent.act, **act)
    if like is not None:
        agent.model.load_state_dict(like.model.state_dict())
    return agent


def inputs(args: Args, n_envs: int, n: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [
        {
            "observation": rng.normal(size=(n_envs, args.obs_dim)).astype(np.float32),
            "previous_reward": rng.normal(size=(n_envs, 1)).astype(np.float32),
        }
        for _ in range(n)
    ]


def warm_state(agent: TTPlanner, mode: str, xs: list[dict[str, np.ndarray]], steps: int) -> TTState:
    """A state whose history is ``steps`` transitions long, built with cheap plans."""
    n = xs[0]["observation"].shape[0]
    state = agent.initial_state(n, act=dataclasses.replace(agent.act, beam_width=1, horizon=1, n_expand=1))
    if mode == "window":
        state.context = ReferenceContext.empty(agent.model, n, window=True)  # type: ignore[arg-type]
    for t in range(steps):
        _, state = agent.predict(xs[t % len(xs)], state)
    state.act = agent.act  # the search to time
    return state


def seconds(agent: TTPlanner, state: TTState, x: dict[str, np.ndarray], horizon: int | None = None) -> float:
    """Wall seconds of one predict call (optionally at another horizon); ``state`` moves on one env step."""
    search = state.act
    if horizon is not None:
        state.act = dataclasses.replace(search, horizon=horizon)
    t0 = time.perf_counter()
    agent.predict(x, state)
    dt = time.perf_counter() - t0
    state.act = search
    return dt


def matmul_flops(agent: TTPlanner, state: TTState, x: dict[str, np.ndarray]) -> dict[str, float]:
    """Matrix-multiply FLOPs of one predict call, by group: ``total``, ``linear`` (``addmm``, ``mm``:
    projections, MLPs, heads) and ``attention`` (``bmm``: queries with cached keys, weights with
    cached values). Untimed; ``state`` moves on one env step."""
    with FlopCounterMode(display=False) as counter:
        agent.predict(x, state)
    by_op = {str(op): float(n) for op, n in counter.get_flop_counts()["Global"].items()}
    return {
        "total": float(counter.get_total_flops()),
        "linear": by_op.get("aten.addmm", 0.0) + by_op.get("aten.mm", 0.0),
        "attention": by_op.get("aten.bmm", 0.0),
    }


LINEAR_OPS = ("aten::addmm", "aten::mm")  # the matmuls of the linear layers and heads
ATTENTION_OPS = ("aten::bmm",)  # the products of queries with the cached keys, and of weights with the values

# where a cached call's time goes, by torch op (self CPU time under torch.profiler)
TIME_SHARES = {
    "attention": (*ATTENTION_OPS, "aten::_softmax"),  # products of queries with the cached keys and values
    "linear": (*LINEAR_OPS, "aten::gelu", "aten::native_layer_norm"),  # the MLPs, projections, heads
    "cache copies": ("aten::index_select", "aten::copy_", "aten::_index_put_impl_", "aten::index"),  # pruning beams
}


def op_profile(agent: TTPlanner, state: TTState, x: dict[str, np.ndarray]) -> dict[str, float]:
    """One predict call under torch.profiler (untimed; ``state`` moves on one env step).

    Returns the fraction of op time in each group of :data:`TIME_SHARES`, and, in seconds of
    self CPU time, ``linear_s`` (``addmm``, ``mm``), ``attention_s`` (``bmm``) and ``profiled_s``
    (every op).
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        agent.predict(x, state)
    by_op = {e.key: e.self_cpu_time_total for e in prof.key_averages()}
    total = sum(by_op.values())
    out = {name: sum(by_op.get(op, 0.0) for op in ops) / total for name, ops in TIME_SHARES.items()}
    out["linear_s"] = sum(by_op.get(op, 0.0) for op in LINEAR_OPS) / 1e6
    out["attention_s"] = sum(by_op.get(op, 0.0) for op in ATTENTION_OPS) / 1e6
    out["profiled_s"] = total / 1e6
    return out


def attention_bytes(agent: TTPlanner, state: TTState, x: dict[str, np.ndarray]) -> float:
    """Bytes of the attention products' (``bmm``) operands and results in one predict call, float32.

    A separate call from :func:`op_profile`, since recording shapes slows the small ops down.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        agent.predict(x, state)
    total = 0
    for e in prof.events():
        if e.name == "aten::bmm":
            (b, n, k), (_, _, m) = e.input_shapes[:2]
            total += 4 * b * (n * k + k * m + n * m)
    return float(total)


VARIANTS = {
    "forked-rings": {"native": False, "shared_prefix": False},
    "fused": {"native": True},
    "fused-bf16": {"native": True, "kv_dtype": "bfloat16"},
    "fused-bf16-linear": {"native": True, "linear_dtype": "bfloat16"},
    "fused-bf16-all": {"native": True, "kv_dtype": "bfloat16", "linear_dtype": "bfloat16"},
    "shared-prefix": {"native": False, "shared_prefix": True},
    "shared-prefix-bf16": {"native": False, "shared_prefix": True, "kv_dtype": "bfloat16"},
    "shared-prefix-fp16": {"native": False, "shared_prefix": True, "kv_dtype": "float16"},
}


def cache_variants(args: Args, beam: int, horizon: int, n_envs: int) -> list[list[object]]:
    """Rows of the variants table for one search: each variant's fastest round, its ratio to the first variant,
    and how far its plans are from the first's (same weights, inputs and histories; rounds interleaved)."""
    xs = inputs(args, n_envs, args.warmup_steps + args.variant_rounds)
    agents, states = {}, {}
    for name in args.variants:
        agent = twin_agent(args, beam, horizon, next(iter(agents.values()), None), **VARIANTS[name])
        agents[name], states[name] = agent, warm_state(agent, "cache", xs, args.warmup_steps)
    times: dict[str, list[float]] = {name: [] for name in args.variants}
    same, score_dev = {name: True for name in args.variants}, {name: 0.0 for name in args.variants}
    first = args.variants[0]
    for r in range(args.variant_rounds):
        x = xs[args.warmup_steps + r]
        for name in args.variants:
            times[name].append(seconds(agents[name], states[name], x))
        ref = states[first].last_plan
        for name in args.variants:
            plan = states[name].last_plan
            same[name] &= bool(torch.equal(plan.tokens, ref.tokens))
            score_dev[name] = max(score_dev[name], float((plan.scores - ref.scores).abs().max()))
    best = {name: min(t) for name, t in times.items()}
    return [[beam, horizon, n_envs, name, best[name], best[name] / best[first], "yes" if same[name] else "no",
             f"{score_dev[name]:.2g}"] for name in args.variants]


def peak_gflops(repeats: int = 20) -> float:
    """The machine's float32 matmul rate: the best of ``repeats`` runs of a few products, from large
    square-ish ones to the search's own linear-layer shapes (2048 rows by 128-512), whichever is fastest.
    The best a search's matmuls could hope for; :func:`main` measures it before and after the timings."""
    best_rate = 0.0
    for m, k, n in ((2048, 512, 512), (4096, 1024, 1024), (2048, 128, 384), (2048, 512, 128)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        best_rate = max(best_rate, 2 * m * k * n / best / 1e9)
    return best_rate


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    rows, notes = [], []
    peak_before = peak_gflops(args.peak_repeats)  # the machine is shared: its peak is taken at both ends of the run
    for search in args.searches:
        beam, horizon = (int(v) for v in search.split("x"))
        for n_envs in args.n_envs:
            xs = inputs(args, n_envs, args.warmup_steps + args.repeats + 3)
            agent = make_agent(args, beam, horizon, "cache")  # the default: the fused step where it applies
            state = warm_state(agent, "cache", xs, args.warmup_steps)
            torch_agent = twin_agent(args, beam, horizon, agent, native=False)  # what torch's tools can see
            tstate = warm_state(torch_agent, "cache", xs, args.warmup_steps)
            times, ttimes = [], []
            for i in range(args.repeats):  # interleaved
                times.append(seconds(agent, state, xs[args.warmup_steps + i]))
                ttimes.append(seconds(torch_agent, tstate, xs[args.warmup_steps + i]))
            row: dict[str, float] = {"cache": min(times), "torch": min(ttimes)}
            # FLOPs and the op profile of the torch step (the same search, the same products)
            x = xs[args.warmup_steps + args.repeats]
            row.update({f"{k}_flops": v for k, v in matmul_flops(torch_agent, tstate, x).items()})
            row.update(op_profile(torch_agent, tstate, xs[args.warmup_steps + args.repeats + 1]))
            row["attention_bytes"] = attention_bytes(torch_agent, tstate, xs[args.warmup_steps + args.repeats + 2])
            kinds = {}
            if n_envs in args.reference_envs:
                for mode in args.modes:
                    ref = make_agent(args, beam, horizon, mode)
                    ref.model.load_state_dict(agent.model.state_dict())
                    rstate = warm_state(ref, mode, xs, args.warmup_steps)
                    x = xs[args.warmup_steps]
                    if search in args.full_reference:
                        row[mode] = seconds(ref, rstate, x)
                        kinds[mode] = "measured"
                        if horizon > 2:
                            t1, t2 = seconds(ref, rstate, x, 1), seconds(ref, rstate, x, 2)
                            notes.append(
                                f"{mode} at {search}, {n_envs} env: measured {row[mode]:.3g} s, extrapolated from "
                                f"horizons 1 and 2: {t1 + (horizon - 1) * (t2 - t1):.3g} s"
                            )
                    else:
                        t1, t2 = seconds(ref, rstate, x, 1), seconds(ref, rstate, x, 2)
                        row[mode] = t1 + (horizon - 1) * (t2 - t1)
                        kinds[mode] = f"extrapolated (h1 {t1:.3g} s, h2 {t2:.3g} s)"
            rows.append((beam, horizon, n_envs, row, kinds))
            print(beam, horizon, n_envs, row, kinds, flush=True)

    variant_rows = []
    for search in args.searches if args.variants else ():
        beam, horizon = (int(v) for v in search.split("x"))
        for n_envs in args.n_envs:
            variant_rows += cache_variants(args, beam, horizon, n_envs)
            print(variant_rows[-len(args.variants):], flush=True)
    peak = max(peak_before, peak_gflops(args.peak_repeats))
    print(f"peak matmul rate: {peak:.1f} GFLOP/s", flush=True)
    first = {(b, h): r for b, h, n, r, _ in rows if n == 1}  # the 1-env row of each search
    header = ["beam", "horizon", "envs", "cache s/action", "torch step s/action", "cache / torch step"]
    for m in args.modes:
        header += [f"{m} s/action", f"{m} / cache"]
    header += ["cache / 1-env cache", "cache GFLOP/s", "lowest / 1-env cache at peak"]
    header += ["torch step: linear GFLOP/s", "linear / 1-env linear", "attention GB/s", "attention / 1-env attention"]
    header += [f"{name} share" for name in TIME_SHARES] + ["reference timing"]
    table = []
    for b, h, n, r, kinds in rows:
        one = first.get((b, h))
        line: list[object] = [b, h, n, r["cache"], r["torch"], r["cache"] / r["torch"]]
        for m in args.modes:
            line += [r[m], r[m] / r["cache"]] if m in r else ["not run", ""]
        line.append(r["cache"] / one["cache"] if one else "")
        line.append(r["total_flops"] / r["cache"] / 1e9)
        # the search's matmuls alone, run at the machine's peak rate, against the measured 1-env call
        line.append(r["total_flops"] / (peak * 1e9) / one["cache"] if one and n > 1 else "")
        line.append(r["linear_flops"] / r["linear_s"] / 1e9)
        line.append(r["linear_s"] / one["linear_s"] if one and n > 1 else "")
        line.append(r["attention_bytes"] / r["attention_s"] / 1e9)
        line.append(r["attention_s"] / one["attention_s"] if one and n > 1 else "")
        line += [f"{r[name]:.0%}" for name in TIME_SHARES]
        line.append("; ".join(f"{m}: {k}" for m, k in kinds.items()) or "")
        table.append(line)
        if one and n > 1:  # what the two big parts alone cost at n envs, in multiples of the whole 1-env call
            both = (r["linear_s"] + r["attention_s"]) / one["profiled_s"]
            part = (one["linear_s"] + one["attention_s"]) / one["profiled_s"]
            notes.append(
                f"{b}x{h} (the torch step): the linear layers and the attention products take {part:.0%} of the 1-env call's profiled "
                f"op time; at {n} envs they take {r['linear_s'] / one['linear_s']:.1f}x and "
                f"{r['attention_s'] / one['attention_s']:.1f}x their 1-env time, so that with everything else free "
                f"{n} envs would still cost {both:.1f}x the whole 1-env call. At 1 env the linear layers already run "
                f"at {one['linear_flops'] / one['linear_s'] / 1e9:.0f} GFLOP/s ({n} envs: "
                f"{r['linear_flops'] / r['linear_s'] / 1e9:.0f}; peak {peak:.0f})."
            )
    body = (
        f"The HalfCheetah shape ({args.obs_dim}-dim observations, {args.action_dim}-dim actions; 4 layers, 4 heads, "
        f"width 128, 100 bins, attention over the last 5 transitions = 125 tokens), untrained weights, CPU, "
        f"{args.threads} thread(s); n_expand 2, cdf_act 0.6, k_obs 1. Seconds per `predict` call (one planned "
        f"action for every env: append the last transition, then one batched beam search), each state warmed "
        f"{args.warmup_steps} env steps so that the history covers the receptive field. `cache`: the default "
        "planner (the fused C step, `PlanConfig(native=True)`); `torch step`: the same search with "
        f"`native=False` (torch ops, forked rings); the two interleaved, the fastest of {args.repeats} rounds "
        "each. The FLOP counts and the profile columns are the torch step's (torch's tools see no C function); "
        "both steps run the same products. `recompute` (the exact reference, same plans as the cache) and `window` (the "
        "original planner's cost: every token reruns its last <= 124 tokens; not the same plans) ran once per "
        "figure.\n\n"
        + markdown_table(header, table)
        + "\n\nNotes:\n\n"
        + "".join(f"- {n}\n" for n in notes)
        + "- Extrapolated figures: t(H) = t(1) + (H - 1)(t(2) - t(1)) from single calls at horizons 1 and 2 "
        "(in the steady state every transition after the first costs the same).\n"
        f"- `cache GFLOP/s`: the call's matrix-multiply FLOPs (torch's FlopCounterMode on the torch step: linear "
        f"layers, heads and attention products) over the default's time. The machine's peak, the fastest of a few float32 matmuls (large ones "
        f"and the search's own shapes) timed before and after the run, is {peak:.1f} GFLOP/s with {args.threads} "
        "thread(s).\n"
        "- `lowest / 1-env cache at peak`: how long the 8-env search's matmuls alone would take at that peak rate, "
        "over the measured 1-env call: a lower bound on the 8-env cost, in multiples of the 1-env cost, for any "
        "implementation of the same search on this machine.\n"
        "- `torch step: linear GFLOP/s`: the FLOPs of the linear layers and heads (`addmm`, `mm`) over their profiled self time; "
        "`attention GB/s`: the bytes of the attention products' operands and results (`bmm`, float32) over their "
        "profiled self time. `linear / 1-env linear` and `attention / 1-env attention`: those profiled times at "
        "n envs over the same search's at 1 env (n times the beams).\n"
        "- `... share`: the fraction of one torch-step call's op time (torch.profiler, self CPU time) in attention "
        "products with the cached keys and values (`bmm`, softmax), in the linear layers (`addmm`, `mm`, GELU, "
        "layer norm) and in copying the caches of surviving beams (`index_select`, `copy_`, indexing). In the torch "
        "step every decoded token reads each row's whole KV ring "
        f"({4 * 2 * 125 * 128 * 4 // 1024} KB: 4 layers, keys and values, 125 tokens, width 128, float32).\n"

    )
    body += f"- {load_note()}\n"
    if variant_rows:
        body += (
            "\nCache variants, same weights, inputs and 21-step histories, interleaved call by call "
            f"({args.variant_rounds} rounds, the fastest of each): `forked-rings` (the torch step: forked candidates "
            "share their parent's ring, pruning copies the survivors' rings), `fused` (the default, "
            "`PlanConfig(native=True)`: one C function per token; candidates hold indices into one buffer of keys "
            "and values, so forks and pruning copy indices, and rows sharing a past read the same entries), "
            "`fused-bf16` (the same with its keys and values in bfloat16, `kv_dtype`), `fused-bf16-linear` (its linear "
            "layers' inputs and weights in bfloat16, products summed in float32 by AVX512-BF16, `linear_dtype`), "
            "`fused-bf16-all` (both), "
            "`shared-prefix` (`PlanConfig("
            "native=False, shared_prefix=True)`: every beam attends over its env's context, held once, and its own suffix; "
            "pruning copies suffixes only), and the same with the beams' keys and values in bfloat16 / float16 "
            "(`kv_dtype`). `same plans`: every round's plan tokens equal the first variant's; `score deviation`: "
            "the largest difference of the winning plans' scores.\n\n"
            + markdown_table(["beam", "horizon", "envs", "variant", "s/action", "/ first variant", "same plans",
                              "score deviation"], variant_rows)
            + "\n"
        )
        exact_apart = [r for r in variant_rows if r[6] == "no" and not {"kv_dtype", "linear_dtype"} & set(VARIANTS[str(r[3])])]
        if exact_apart:
            where = "; ".join(f"{r[3]} at {r[0]}x{r[1]}, {r[2]} envs (winning scores {r[7]} apart)" for r in exact_apart)
            body += (
                f"\nExact variants that did not pick the first variant's plans: {where}. The exact variants compute "
                "the same function up to float32 rounding (their logits agree within 1e-5 in the tests, where they "
                "plan alike); with untrained weights many of a search's candidates score within that rounding of "
                "each other, so which of them survive a pruning can change.\n"
            )
    if args.write:
        title = "Trajectory Transformer: planning time per action"
        write_section(args.section, title if args.threads == 1 else f"{title}, {args.threads} threads", body)
    else:
        print(body)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
