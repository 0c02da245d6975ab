"""The fused TT decode step's anatomy: where one token of the search goes, and what bounds a plan.

One step of :mod:`tt_agents.models.tt_native` at the paper's HalfCheetah shape (4 layers x 128, 4
heads, 100 bins, attention over 125 tokens), random weights and keys, for ``rows`` candidates, with
three patterns of what the rows attend to (the step's other work is the same in all three):

- ``self only``: every row sees only its own new token: the linear layers, layer norms, GELU and
  the rest, with next to no attention;
- ``one shared history``: every row sees the same 124 entries (all in cache: the attention's
  arithmetic without waiting on memory);
- ``own random entries``: every row sees 124 entries of random rows (what a search whose beams share
  nothing would read: the attention waiting on memory).

Then a whole plan at beam ``B`` and horizon ``H`` is timed (the default planner) and set against the
same steps' floor: ``7 H`` steps at ``2 B`` rows (action and reward tokens) and ``18 (H - 1)`` at ``B`` rows
(value and observation tokens; the last transition stops at its reward), each costing at least its
``one shared history`` time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from benches import planning
from benches._common import load_note, markdown_table, write_section
from tt_agents.models.gpt import GPTConfig
from tt_agents.models.tt import TrajectoryTransformer
from tt_agents.models.tt_native import native_tt_step


@dataclass
class Args:
    rows: tuple[int, ...] = (64, 256)
    """Candidates per step (beam 32 and beam 128, n_expand 2)."""
    repeats: int = 20
    """Steps per figure; the fastest is reported."""
    plans: tuple[str, ...] = ("32x5", "128x15")
    """Searches (``BEAMxHORIZON``, 1 env) whose plan time is set against the floor."""
    plan_repeats: int = 3
    """Plans per search; the fastest is reported."""
    obs_dim: int = 17
    action_dim: int = 6
    write: bool = True
    """Rewrite the ``tt-step`` section of benchmarks.md."""


def _model(args: Args) -> TrajectoryTransformer:
    td = args.obs_dim + args.action_dim + 2
    gpt = GPTConfig(n_layer=4, n_head=4, n_embd=128, dropout=0.0, rope=True, attn_window=5 * td)
    torch.manual_seed(0)
    return TrajectoryTransformer(args.obs_dim, args.action_dim, 100, gpt).eval()


def step_times(args: Args, model: TrajectoryTransformer, rows: int) -> dict[str, float]:
    """Seconds of one step (the fastest of ``repeats``) for each pattern of entries."""
    step = native_tt_step(model)
    if step is None:
        raise SystemExit("the fused TT step is unavailable here (no C compiler?)")
    search = step.start(model.new_cache(1), rows).search
    search.k.normal_()
    search.v.normal_()
    W = step.W
    rng = np.random.default_rng(0)
    patterns = {
        "self only": np.full((rows, W), -1, np.int32),
        "one shared history": np.zeros((rows, W), np.int32),
        "own random entries": rng.integers(0, rows, (rows, W)).astype(np.int32),
    }
    tokens = torch.randint(0, 100, (rows, 1))
    order = torch.arange(rows, dtype=torch.int32)
    out = {}
    for name, p in patterns.items():
        idx, best = torch.from_numpy(p.copy()), float("inf")
        for r in range(args.repeats):
            t0 = time.perf_counter()
            search(tokens, idx, order, 1000 + r, 3)
            best = min(best, time.perf_counter() - t0)
            idx.copy_(torch.from_numpy(p))  # the step wrote its own slot
        out[name] = best
    return out


def plan_seconds(args: Args, beam: int, horizon: int) -> float:
    """Seconds of one plan of the default planner (the fastest of ``plan_repeats``), as the planning section times it."""
    pargs = planning.Args(obs_dim=args.obs_dim, action_dim=args.action_dim)
    xs = planning.inputs(pargs, 1, pargs.warmup_steps + args.plan_repeats)
    agent = planning.make_agent(pargs, beam, horizon, "cache")
    state = planning.warm_state(agent, "cache", xs, pargs.warmup_steps)
    return min(planning.seconds(agent, state, xs[pargs.warmup_steps + i]) for i in range(args.plan_repeats))


def main(args: Args) -> None:
    torch.set_num_threads(1)
    model = _model(args)
    times = {rows: step_times(args, model, rows) for rows in args.rows}
    print(times, flush=True)
    table = []
    for rows, t in times.items():
        base = t["self only"]
        table.append([rows] + [f"{1e3 * v:.2f}" for v in t.values()]
                     + [f"{1e3 * (t['one shared history'] - base):.2f}", f"{1e3 * (t['own random entries'] - base):.2f}"])
    plan_rows = []
    for search in args.plans:
        beam, horizon = (int(v) for v in search.split("x"))
        wide, narrow = 2 * beam, beam
        for r in (wide, narrow):
            if r not in times:
                times[r] = step_times(args, model, r)
        floor = (7 * horizon * times[wide]["one shared history"]
                 + 18 * (horizon - 1) * times[narrow]["one shared history"])
        t = plan_seconds(args, beam, horizon)
        plan_rows.append([beam, horizon, f"{t:.3f}", f"{floor:.3f}", f"{t / floor:.2f}"])
        print(plan_rows[-1], flush=True)
    body = (
        "One step of the fused TT decode step (`tt_agents/models/tt_step.c`) at the paper's HalfCheetah shape "
        "(4 layers x 128, 4 heads, 100 bins, attention over 125 tokens), random weights and keys, 1 thread, the "
        f"fastest of {args.repeats} steps, for three patterns of what the rows attend to (everything else the "
        "same): `self only` (no attention to speak of: the linear layers, layer norms, GELU and the rest), `one "
        "shared history` (all rows read the same 124 entries, in cache: the attention's arithmetic) and `own "
        "random entries` (every row 124 entries of random rows: the attention waiting on memory). Milliseconds "
        "per step:\n\n"
        + markdown_table(["rows", "self only", "one shared history", "own random entries",
                          "attention, in cache", "attention, from memory"], table)
        + "\n\nA whole plan (the default planner, 1 env, after a 21-step history; the fastest of "
        f"{args.plan_repeats}) against its floor: its `7 H` steps at `2 B` rows and `18 (H - 1)` at `B` rows, each at "
        "its `one shared history` time (every entry in cache, nothing else in the way):\n\n"
        + markdown_table(["beam", "horizon", "plan s", "floor s", "plan / floor"], plan_rows)
        + f"\n\n{load_note()}\n"
    )
    if args.write:
        write_section("tt-step", "Trajectory Transformer: the fused decode step's anatomy", body)
    else:
        print(body)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
