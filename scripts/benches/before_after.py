"""Before/after: TT planning and DT decoding of this tree against another checkout, interleaved in one run.

``python scripts/bench.py before-after --old-ref <commit>`` (the commit's tree is exported with
``git archive`` into a temporary folder) or ``--old-tree /tmp/old``, a checkout of it. Each measurement runs in a fresh
subprocess importing one tree's ``tt_agents`` (the same interpreter and packages), alternating
old, new, old, new, ... so that a shared machine's slow moments hit both; the table gives the
median of the rounds and the new / old ratio. Shapes are those of the ``planning`` and ``dt``
sections: the paper's TT on HalfCheetah (17-dim observations, 6-dim actions; 4 layers x 128,
100 bins, attention over 5 transitions) and the paper's MuJoCo DT (3 layers x 128, K = 20);
random weights, 1 torch thread, cache modes only. ``TT plan ..., bfloat16`` plans with
``PlanConfig(kv_dtype="bfloat16", linear_dtype="bfloat16")`` where the tree has both (reduced precision, not
the same plans; the old tree runs its default). ``DT step ..., compiled`` sets
``DTActConfig(compile=True)`` where the tree has it (the old tree runs its plain step): its
compilation happens in the warm-up, outside the timed calls, and its seconds are reported.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path

from benches._common import load_note, markdown_table, write_section

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {tree!r})
    import numpy as np, torch, gymnasium as gym
    torch.set_num_threads(1)
    import tt_agents
    assert tt_agents.__file__.startswith({tree!r}), tt_agents.__file__
    from tt_agents.planning import PlanConfig
    from tt_agents.tt import TTConfig, TTPlanner
    from tt_agents.dt import DecisionTransformer, DTConfig
    what, a, b, n_envs, calls = {what!r}, {a}, {b}, {n_envs}, {calls}
    compile_s = None
    rng = np.random.default_rng(0)

    def tt_agent(beam, horizon):
        obs = gym.spaces.Box(-np.inf, np.inf, (17,), np.float32)
        act = gym.spaces.Box(-1.0, 1.0, (6,), np.float32)
        plan = PlanConfig(beam_width=beam, horizon=horizon)
        if what == "tt-bf16" and "linear_dtype" in PlanConfig.__dataclass_fields__:  # else the tree's default
            plan = PlanConfig(beam_width=beam, horizon=horizon, kv_dtype="bfloat16", linear_dtype="bfloat16")
        if "plan" in TTConfig.__dataclass_fields__:  # before act-time settings
            return TTPlanner(obs, act, TTConfig(plan=plan), device="cpu", seed=0)
        return TTPlanner(obs, act, TTConfig(), device="cpu", seed=0, act=plan)

    def x(obs_dim):
        return {{"observation": rng.normal(size=(n_envs, obs_dim)).astype(np.float32),
                 "previous_reward": rng.normal(size=(n_envs, 1)).astype(np.float32)}}

    if what.startswith("tt"):
        agent = tt_agent(a, b)
        cheap = tt_agent(1, 1)
        cheap.model.load_state_dict(agent.model.state_dict())
        state = None
        for t in range(21):  # the history covers the receptive field; warmed with cheap plans
            _, state = cheap.predict(x(17), state)
        if hasattr(state, "act"):  # the search to time (trees before act settings read agent.config.plan)
            state.act = agent.act
        times = []
        for _ in range(calls):
            inp = x(17)
            t0 = time.perf_counter()
            agent.predict(inp, state)
            times.append(time.perf_counter() - t0)
        print(json.dumps([min(times), None]))
    else:
        agent = DecisionTransformer(gym.spaces.Box(-np.inf, np.inf, (17,), np.float32),
                                    gym.spaces.Box(-1.0, 1.0, (6,), np.float32), DTConfig(context_len=a),
                                    device="cpu", seed=0)
        agent.target_return = 1.0
        if what == "dt-compiled" and "compile" in type(agent.act).__dataclass_fields__:
            agent.act.compile = True
        state = agent.initial_state(n_envs)
        inputs = [x(17) for _ in range(b)]
        t0 = time.perf_counter()
        _, state = agent.predict(inputs[0], state)  # the first step (compiles, where compiled)
        compile_s = time.perf_counter() - t0
        for t in range(1, 3 * a + 3):
            _, state = agent.predict(inputs[t % b], state)
        best = float("inf")
        for _ in range(calls):
            t0 = time.perf_counter()
            for inp in inputs:
                _, state = agent.predict(inp, state)
            best = min(best, (time.perf_counter() - t0) / b)
        print(json.dumps([best, compile_s]))
    """
)


@dataclass
class Args:
    old_tree: str = "/tmp/old"
    """A checkout of the commit to compare with (``git worktree add /tmp/old <commit>``); unused with ``old_ref``."""
    old_ref: str | None = None
    """A commit (or branch, tag) to compare with: its tree is exported into a temporary folder."""
    only: tuple[str, ...] = ()
    """Run only the figures whose label contains one of these strings (default: all)."""
    rounds: int = 5
    """Alternating old/new subprocesses per figure; the table shows medians."""
    write: bool = True
    """Rewrite the ``before-after`` section of benchmarks.md."""


CASES = [  # (label, what, a, b, n_envs, calls per subprocess, unit scale)
    ("TT plan, beam 32 horizon 5, 1 env", "tt", 32, 5, 1, 6, 1.0),
    ("TT plan, beam 32 horizon 5, 8 envs", "tt", 32, 5, 8, 3, 1.0),
    ("TT plan, beam 128 horizon 15, 1 env", "tt", 128, 15, 1, 2, 1.0),
    ("TT plan, beam 32 horizon 5, 1 env, bfloat16", "tt-bf16", 32, 5, 1, 6, 1.0),
    ("TT plan, beam 32 horizon 5, 8 envs, bfloat16", "tt-bf16", 32, 5, 8, 3, 1.0),
    ("TT plan, beam 128 horizon 15, 1 env, bfloat16", "tt-bf16", 128, 15, 1, 2, 1.0),
    ("DT step, K = 20, 1 env", "dt", 20, 200, 1, 3, 1e3),
    ("DT step, K = 20, 16 envs", "dt", 20, 200, 16, 3, 1e3),
    ("DT step, K = 20, 1 env, compiled", "dt-compiled", 20, 200, 1, 3, 1e3),
    ("DT step, K = 20, 16 envs, compiled", "dt-compiled", 20, 200, 16, 3, 1e3),
]


def measure(tree: str, what: str, a: int, b: int, n_envs: int, calls: int) -> tuple[float, float | None]:
    """Seconds of one figure in a fresh subprocess of ``tree``, and the first DT step's seconds (``None`` for TT)."""
    code = _CHILD.format(tree=tree, what=what, a=a, b=b, n_envs=n_envs, calls=calls)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": tree}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1200)
    if out.returncode != 0:
        raise RuntimeError(f"{tree}: {what} failed:\n{out.stderr[-3000:]}")
    best, first = json.loads(out.stdout.strip().splitlines()[-1])
    return float(best), first


def export(ref: str, folder: str) -> str:
    """The tree of commit ``ref`` written into ``folder`` (``git archive``); returns its short hash."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", ref], capture_output=True, text=True,
                            check=True).stdout.strip()
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return commit


def main(args: Args) -> None:
    if args.old_ref is not None:
        with tempfile.TemporaryDirectory() as tmp:
            run(args, tmp, export(args.old_ref, tmp))
    else:
        old = str(Path(args.old_tree).resolve())
        commit = subprocess.run(["git", "-C", old, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        run(args, old, commit.stdout.strip() or args.old_tree)


def goals(rows: list[list]) -> list[str]:
    """Issue 15's goals, each checked against this run's rows (best rounds): met or not, and by how much."""
    by = {r[0]: r for r in rows}
    out = []
    for label, goal in (("DT step, K = 20, 1 env", 1 / 3), ("DT step, K = 20, 1 env, compiled", 1 / 3),
                        ("TT plan, beam 32 horizon 5, 1 env", 1 / 2), ("TT plan, beam 128 horizon 15, 1 env", 1 / 2),
                        ("TT plan, beam 32 horizon 5, 1 env, bfloat16", 1 / 2),
                        ("TT plan, beam 128 horizon 15, 1 env, bfloat16", 1 / 2)):
        if label in by:
            r = by[label]
            out.append(f"{label}: new / old {r[3]:.2f} (best), {r[4]:.2f} (median); goal <= {goal:.2f} "
                       f"({1 / goal:.0f}x faster): {'met' if max(r[3], r[4]) <= goal else 'not met'}.")
    for mode in ("", ", bfloat16"):
        one, eight = by.get(f"TT plan, beam 32 horizon 5, 1 env{mode}"), by.get(f"TT plan, beam 32 horizon 5, 8 envs{mode}")
        if one and eight:
            ratio = float(eight[2].split()[0]) / float(one[2].split()[0])
            out.append(f"TT at (32, 5){mode}, 8 envs in one batched search over 1 env, new tree: {ratio:.2f}x (best "
                       f"rounds); goal <= 3x: {'met' if ratio <= 3 else 'not met'}.")
    return out


def run(args: Args, old: str, commit: str) -> None:
    new = str(REPO)
    load_before = os.getloadavg()[0]
    rows = []
    first_steps: dict[str, list[float]] = {}
    for label, what, a, b, n, calls, scale in CASES:
        if args.only and not any(o in label for o in args.only):
            continue
        t = {"old": [], "new": []}
        for _ in range(args.rounds):
            for name, tree in (("old", old), ("new", new)):
                seconds, first = measure(tree, what, a, b, n, calls)
                t[name].append(seconds * scale)
                if what == "dt-compiled" and name == "new" and first is not None:
                    first_steps.setdefault(label, []).append(first)
        bo, bn = min(t["old"]), min(t["new"])
        mo, mn = statistics.median(t["old"]), statistics.median(t["new"])
        unit = "s" if scale == 1.0 else "ms"
        rows.append([label, f"{bo:.4g} {unit}", f"{bn:.4g} {unit}", bn / bo, mn / mo,
                     f"{bo:.4g} - {max(t['old']):.4g}", f"{bn:.4g} - {max(t['new']):.4g}"])
        print(rows[-1], flush=True)
    table = markdown_table(["figure", "old (best)", "new (best)", "new / old (best)", "new / old (median)",
                            "old range", "new range"], rows)
    worst = max(r[3] for r in rows)
    worst_median = max(r[4] for r in rows)
    body = (
        f"This tree against commit `{commit}`, {args.rounds} alternating rounds of "
        "fresh subprocesses per figure (each round's figure: the fastest of its calls); TT: seconds per `predict` "
        "(one planned action for every env) after a 21-step history; DT: milliseconds per cached step after the "
        "window fills. `best`: the fastest round (the least disturbed by other work on a shared machine); the "
        f"median ratio shows how much the rounds moved. {load_note(f'at the end of the run, {load_before:.1f} at its start')}"
        "\n\n" + table
        + f"\n\nIn this run the largest new / old ratio is {worst:.2f} of the best rounds and {worst_median:.2f} of "
        "the medians.\n"
        + "".join(f"\n- {g}" for g in goals(rows)) + "\n"
        + ("\nThe `bfloat16` figures are the new tree's opt-in reduced precision (keys, values and the linear layers' "
           "inputs and weights in bfloat16; not exact: its plans differ from float32's, the `planning` section has "
           "how far); the exact default is the figures without it.\n"
           if any("bfloat16" in r[0] for r in rows) else "")
        + "".join(f"\n{label}: the first step (compilation, outside the timed calls) took "
                  + ", ".join(f"{x:.1f}" for x in v) + " s in the new tree's rounds (the first compiles from scratch, "
                  "later processes reuse torch's on-disk cache).\n" for label, v in first_steps.items())
    )
    if args.write:
        write_section("before-after", "Before/after: planning and DT decoding against an earlier commit", body)
    else:
        print(body)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
