"""The TT planner's reduced-precision modes on a trained agent: its returns and its actions against float32.

``python scripts/bench.py tt-precision --checkpoint runs/.../final.zip --env-id HalfCheetah-v5`` evaluates one
trained :class:`~tt_agents.TTPlanner` with the same search in five modes: ``float32`` (the exact default),
``float32-torch`` (the torch step, ``native=False``: exact as well, its sums in another order: the control),
``kv-bf16`` (``PlanConfig(kv_dtype="bfloat16")``), ``linear-bf16`` (``linear_dtype="bfloat16"``, where the CPU has
AVX512-BF16) and ``both``. For each: the return of the same episodes (same env seeds, one env, the best plan),
and the seconds per action. Then, along one float32 episode, every mode plans from the very same states (copies
of the float32 planner's state): how often its action equals float32's, and how far it is when it does not.
The planning section has the same modes' speed and score deviation with untrained weights; this one says whether
the deviation matters to a trained planner.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from benches._common import load_note, markdown_table, write_section
from tt_agents import load_agent
from tt_agents.evaluation import evaluate

MODES = {
    "float32": {},
    "float32-torch": {"native": False},  # the control: exact too, summed in another order
    "kv-bf16": {"kv_dtype": "bfloat16"},
    "linear-bf16": {"linear_dtype": "bfloat16"},
    "both": {"kv_dtype": "bfloat16", "linear_dtype": "bfloat16"},
}


@dataclass
class Args:
    checkpoint: str
    """A trained TTPlanner (``scripts/train.py tt ...``'s ``final.zip``)."""
    env_id: str = "HalfCheetah-v5"
    search: str = "32x5"
    """The search, ``BEAMxHORIZON``."""
    episodes: int = 3
    """Episodes per mode (env seeds 0, 1, ...: the same for every mode)."""
    max_steps: int = 1000
    """Steps per episode at most."""
    agree_steps: int = 200
    """Steps of the float32 episode along which every mode plans from the same states."""
    modes: tuple[str, ...] = tuple(MODES)
    threads: int = 1
    notes: str = ""
    write: bool = True


def _act(agent, args: Args, mode: str):
    beam, horizon = (int(v) for v in args.search.split("x"))
    return dataclasses.replace(agent.act, beam_width=beam, horizon=horizon, **MODES[mode])


def agreement(agent, args: Args) -> dict[str, tuple[float, float, float]]:
    """Along ``agree_steps`` steps of the float32 planner's episode (env seed 0), each mode's action from copies of
    the same state: (fraction equal to float32's, mean and largest L-inf distance where they differ)."""
    env = gym.make(args.env_id, max_episode_steps=args.max_steps)
    obs, _ = env.reset(seed=0)
    state = agent.initial_state(1, act=_act(agent, args, "float32"))
    reward, start, gaps = 0.0, True, {m: [] for m in args.modes if m != "float32"}
    for _ in range(args.agree_steps):
        x = {"observation": obs[None], "previous_reward": np.array([[reward]], np.float32)}
        for m in gaps:
            twin = copy.deepcopy(state)
            twin.act = _act(agent, args, m)
            a_m, _ = agent.predict(x, twin, episode_start=np.array([start]))
            gaps[m].append(a_m)
        a, state = agent.predict(x, state, episode_start=np.array([start]))
        for m in gaps:
            gaps[m][-1] = float(np.abs(gaps[m][-1] - a).max())
        obs, reward, term, trunc, _ = env.step(a[0])
        start = False
        if term or trunc:
            break
    out = {}
    for m, g in gaps.items():
        g = np.asarray(g)
        off = g[g > 0]
        out[m] = (float((g == 0).mean()), float(off.mean()) if len(off) else 0.0, float(g.max()))
    return out


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    agent = load_agent(args.checkpoint, device="cpu")
    rows = []
    for mode in args.modes:
        t0 = time.perf_counter()
        res = evaluate(agent, lambda: gym.make(args.env_id, max_episode_steps=args.max_steps), n_episodes=args.episodes,
                       n_envs=1, seed=0, act=_act(agent, args, mode), progress=False)
        seconds = time.perf_counter() - t0
        rows.append([mode, f"{res.mean_return:.1f} ± {res.stderr_return:.1f}",
                     " / ".join(f"{r:.0f}" for r in res.returns), f"{seconds / sum(res.lengths):.3f}"])
        print(rows[-1], flush=True)
    agree = agreement(agent, args)
    for row in rows:
        a = agree.get(row[0])
        row += (["-", "-", "-"] if a is None else [f"{a[0]:.2f}", f"{a[1]:.3g}", f"{a[2]:.3g}"])
    beam, horizon = args.search.split("x")
    body = (
        f"A trained TTPlanner (`{args.checkpoint}`) on {args.env_id}, beam {beam} and horizon {horizon}, 1 env, the "
        f"best plan, {args.episodes} episodes per mode of up to {args.max_steps} steps (env seeds 0 to "
        f"{args.episodes - 1}, the same for every mode), {args.threads} torch thread(s). `float32`: the exact default; "
        "`float32-torch`: the torch step (`native=False`), also exact, its float32 sums in another order (the "
        "control: how far rounding alone moves this planner); `kv-bf16`: keys and values in bfloat16 (`kv_dtype`); "
        "`linear-bf16`: the linear layers' inputs and weights in bfloat16 (`linear_dtype`, AVX512-BF16); `both`. `s / action`: wall seconds of the evaluation over its "
        f"steps. Along the first {args.agree_steps} steps of the float32 planner's episode on seed 0, each mode "
        "planned from a copy of the same state: `same action` is the fraction of steps where its action equals "
        "float32's; `mean gap` (where they differ) and `largest gap` are the largest per-dimension distance "
        f"(in the env's action units: {agent.action_space.low.min():g} to {agent.action_space.high.max():g}).\n\n"
        + markdown_table(["mode", "return", "per episode", "s / action", "same action", "mean gap", "largest gap"], rows)
        + f"\n\n{load_note()}\n" + (f"\n{args.notes}\n" if args.notes else "")
    )
    if args.write:
        write_section("tt-precision", "Trajectory Transformer: reduced precision on a trained planner", body)
    else:
        print(body)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
