"""Decision Transformer: per-step inference time (KV cache vs recompute) and training throughput.

Every inference mode runs on the same agent and the same inputs, interleaved round by round
(``repeats`` rounds; the fastest round is reported, the one least disturbed by other jobs on a
shared machine), so that the ratios survive a noisy machine:

- ``cache``: the sliding-window KV cache (3 new tokens per step);
- ``recompute``: the exact reference, the whole network rerun every step over the history that
  can reach the step (``n_layer * (3K - 1) + 1`` tokens), its final block computing the one output
  it needs (the agent's ``inference="recompute"``); it gives the cached actions;
- ``full``: the same recompute as a plain one does it, the network's forward computing every
  step's output and keeping the last;
- ``window``: the original DT evaluation, rerun over the last K steps (3K - 1 tokens).

Training throughput goes through the shared trainer (``agent.fit``), sampling included.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch

from benches._common import load_note, markdown_table, time_it, vector_isa, write_section
from tt_agents import TrainConfig
from tt_agents.data import Episode, EpisodeDataset
from tt_agents.dt import DecisionTransformer, DTConfig

MODES = ("cache", "recompute", "full", "window")


@dataclass
class Args:
    context_len: int = 20
    """K of the main table (the issue's goal is stated at K = 20)."""
    n_envs: tuple[int, ...] = (1, 16)
    """Envs per predict call in the main table."""
    scaling_context_lens: tuple[int, ...] = (10, 20, 40, 80)
    """K values of the scaling table (1 env); empty to skip it."""
    steps: int = 30
    """Timed predict calls per round, after warming every state past 3K steps (the window slides)."""
    repeats: int = 9
    """Interleaved rounds per measurement; the fastest is reported."""
    obs_dim: int = 11
    """Vector observation size (Hopper's)."""
    action_dim: int = 3
    """Continuous action size (Hopper's)."""
    image_envs: tuple[int, ...] = (1,)
    """Envs for the 64x64x3 image rows (IMPALA CNN, 15 discrete actions); empty to skip them."""
    image_steps: int = 10
    """Timed predict calls per round for the image rows (the recompute modes re-encode every frame)."""
    train_steps: int = 20
    """Optimizer steps timed for the training throughput (after 3 warm-up steps)."""
    batch_size: int = 64
    """Sequences per training batch (Chen et al.'s) for vector observations."""
    image_batch_size: int = 16
    """Sequences per training batch for image observations."""
    threads: int = 1
    """torch intra-op threads (1: comparable across shared machines)."""
    device: str = "auto"
    """Where the agents run: ``"auto"`` is ``cuda`` when a GPU is present (the compiled steps then use CUDA graphs),
    else ``cpu``."""
    variants: tuple[str, ...] = ("torch", "native", "compiled", "bfloat16", "float16")
    """Variants of the cached step in the fixed-shape table: ``torch`` (the step as torch ops, float32: the
    baseline), ``native`` (the fused C step, the default where it applies: ``DTActConfig.native``), ``compiled``
    (``DTActConfig.compile``), ``bfloat16`` / ``float16`` (``DTActConfig.kv_dtype``); empty to skip the table."""
    hf_python: str | None = None
    """A Python interpreter with ``transformers`` (and torch) installed, e.g. a separate venv: times Hugging Face's
    ``DecisionTransformerModel`` at the same shapes (K steps rerun per call, as its example acts; the forward alone,
    inputs prepared) in fresh subprocesses, round by round with this tree's ``predict``; ``None`` skips it."""
    write: bool = True
    """Rewrite the ``dt`` section of benchmarks.md."""


def make_agent(image: bool, args: Args, context_len: int) -> DecisionTransformer:
    if image:
        obs = gym.spaces.Box(0, 255, (64, 64, 3), np.uint8)
        act: gym.Space = gym.spaces.Discrete(15)
    else:
        obs = gym.spaces.Box(-np.inf, np.inf, (args.obs_dim,), np.float32)
        act = gym.spaces.Box(-1.0, 1.0, (args.action_dim,), np.float32)
    # the paper's MuJoCo model (3 layers, 1 head, 128 wide), IMPALA CNN for images
    agent = DecisionTransformer(obs, act, DTConfig(context_len=context_len), device=args.device, seed=0)
    agent.target_return = 1.0
    return agent


def random_inputs(agent: DecisionTransformer, n_envs: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    space = agent.observation_space
    if space.dtype == np.uint8:
        obs = rng.integers(0, 256, size=(n_envs, *space.shape), dtype=np.uint8)
    else:
        obs = rng.normal(size=(n_envs, *space.shape)).astype(np.float32)
    return {"observation": obs, "previous_reward": rng.normal(size=(n_envs, 1)).astype(np.float32)}


@contextlib.contextmanager
def all_outputs(agent: DecisionTransformer):
    """The plain full recompute: the network's forward computes every step's output; the last is kept."""
    net = agent.model
    forward = net.forward

    def plain(*args, last_step_only=False, **kwargs):
        out = forward(*args, **kwargs)  # (n_envs, T, A)
        return out[:, -1] if last_step_only else out

    net.forward = plain  # type: ignore[method-assign]
    try:
        yield
    finally:
        del net.forward


def per_step_ms(agent: DecisionTransformer, n_envs: int, steps: int, repeats: int, modes=MODES) -> dict[str, float]:
    """Milliseconds per predict call of each mode in its fastest round, rounds interleaved."""
    rng = np.random.default_rng(0)
    inputs = [random_inputs(agent, n_envs, rng) for _ in range(steps)]
    states = {m: agent.initial_state(n_envs, inference="recompute" if m == "full" else m) for m in modes}
    warm = 3 * agent.config.context_len + 3  # past the window, so that it slides in every timed call
    for m in modes:
        for t in range(warm):
            _, states[m] = agent.predict(inputs[t % steps], states[m])

    def run(mode: str) -> None:
        with all_outputs(agent) if mode == "full" else contextlib.nullcontext():
            for x in inputs:
                _, states[mode] = agent.predict(x, states[mode])

    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(repeats):
        for m in modes:
            times[m].append(time_it(lambda m=m: run(m), repeats=1, warmup=0) / steps * 1e3)
    return {m: min(v) for m, v in times.items()}


def step_variants(args: Args, n_envs: int) -> tuple[dict[str, float], dict[str, float], float | None]:
    """The cached step's variants on one agent and one input stream, rounds interleaved.

    Returns milliseconds per predict call (fastest round) and the largest absolute deviation of
    each variant's actions from the float32 step's, over every timed call, and the seconds the
    compiled variant's first call took (compilation), or ``None``.
    """
    import dataclasses

    from tt_agents.models.static import COMPILE_SECONDS

    agent = make_agent(False, args, args.context_len)
    rng = np.random.default_rng(1)
    inputs = [random_inputs(agent, n_envs, rng) for _ in range(args.steps)]
    acts = {"torch": {"native": False}, "native": {"native": True}, "compiled": {"compile": True},
            "bfloat16": {"kv_dtype": "bfloat16"}, "float16": {"kv_dtype": "float16"}}
    states = {v: agent.initial_state(n_envs, act=dataclasses.replace(agent.act, **acts[v])) for v in args.variants}
    COMPILE_SECONDS.pop("dt-step", None)
    warm = 3 * agent.config.context_len + 3
    for v in args.variants:
        for t in range(warm):
            _, states[v] = agent.predict(inputs[t % args.steps], states[v])
    compile_s = COMPILE_SECONDS.get("dt-step") if "compiled" in args.variants else None
    times: dict[str, list[float]] = {v: [] for v in args.variants}
    deviation = {v: 0.0 for v in args.variants}
    for _ in range(args.repeats):
        outs: dict[str, list[np.ndarray]] = {}
        for v in args.variants:
            outs[v] = []
            t0 = time.perf_counter()
            for x in inputs:
                a, states[v] = agent.predict(x, states[v])
                outs[v].append(a)
            times[v].append((time.perf_counter() - t0) / args.steps * 1e3)
        if "torch" in outs:
            for v in args.variants:
                deviation[v] = max(deviation[v], float(np.abs(np.stack(outs[v]) - np.stack(outs["torch"])).max()))
    return {v: min(t) for v, t in times.items()}, deviation, compile_s


_HF_CHILD = """
import json, sys, time, torch
from transformers import DecisionTransformerConfig, DecisionTransformerModel, __version__
torch.set_num_threads({threads})
n_envs, K, calls, obs_dim, act_dim = {n_envs}, {K}, {calls}, {obs_dim}, {act_dim}
cfg = DecisionTransformerConfig(state_dim=obs_dim, act_dim=act_dim, hidden_size=128, n_layer=3, n_head=1, n_inner=512,
                                max_ep_len=1000, n_positions=1024)
model = DecisionTransformerModel(cfg).eval()
g = torch.Generator().manual_seed(0)
x = dict(states=torch.randn(n_envs, K, obs_dim, generator=g), actions=torch.randn(n_envs, K, act_dim, generator=g),
         rewards=torch.randn(n_envs, K, 1, generator=g), returns_to_go=torch.randn(n_envs, K, 1, generator=g),
         timesteps=torch.arange(K).repeat(n_envs, 1), attention_mask=torch.ones(n_envs, K, dtype=torch.long))
with torch.no_grad():
    for _ in range(10):
        model(**x)
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        model(**x)
        times.append(time.perf_counter() - t0)
print(json.dumps({{"ms": min(times) * 1e3, "version": __version__}}))
"""


def hf_peer(args: Args, n_envs: int) -> tuple[float, float, str]:
    """(fastest Hugging Face forward ms, fastest cached ``predict`` ms of this tree, transformers' version), over
    ``args.repeats`` rounds that alternate a fresh Hugging Face subprocess and this process's timing."""
    import json
    import subprocess

    agent = make_agent(False, args, args.context_len)
    hf, ours, version = [], [], ""
    code = _HF_CHILD.format(threads=args.threads, n_envs=n_envs, K=args.context_len, calls=args.steps,
                            obs_dim=args.obs_dim, act_dim=args.action_dim)
    for _ in range(args.repeats):
        out = subprocess.run([args.hf_python, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"--hf-python {args.hf_python} could not time Hugging Face's DecisionTransformerModel "
                               f"(it needs torch and transformers installed): {out.stderr.strip()[-800:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        hf.append(r["ms"])
        version = r["version"]
        ours.append(per_step_ms(agent, n_envs, args.steps, 1, modes=("cache",))["cache"])
    return min(hf), min(ours), version


def synthetic_dataset(agent: DecisionTransformer, n_episodes: int, length: int) -> EpisodeDataset:
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(n_episodes):
        obs = np.stack([agent.observation_space.sample() for _ in range(length + 1)])
        actions = np.stack([agent.action_space.sample() for _ in range(length)])
        episodes.append(Episode(obs, actions, rng.normal(size=length).astype(np.float32), np.zeros(length, bool),
                                np.zeros(length, bool), id=i))
    return EpisodeDataset(episodes, agent.observation_space, agent.action_space)


def train_throughput(image: bool, args: Args) -> tuple[int, float, float]:
    """(batch size, samples per second, tokens per second) of ``agent.fit``."""
    agent = make_agent(image, args, args.context_len)
    agent.observation_space.seed(0)
    agent.action_space.seed(0)
    ds = synthetic_dataset(agent, n_episodes=8 if image else 20, length=100 if image else 200)
    batch = args.image_batch_size if image else args.batch_size
    cfg = TrainConfig(steps=3, batch_size=batch, warmup_steps=1, progress=False)
    agent.fit(ds, cfg)  # warm-up (allocator, first-call costs)
    t0 = time.perf_counter()
    agent.fit(ds, TrainConfig(steps=args.train_steps, batch_size=batch, warmup_steps=1, progress=False))
    seconds = time.perf_counter() - t0
    samples = args.train_steps * batch / seconds
    return batch, samples, samples * 3 * args.context_len


def ratio_notes(rows: list[list], scaling: list[list]) -> list[str]:
    """What this run measured, in words computed from its own tables (no figure is written by hand)."""
    notes = []
    for kind in dict.fromkeys(r[0] for r in rows):
        mine = [r for r in rows if r[0] == kind]
        lo, hi = min(mine, key=lambda r: r[7]), max(mine, key=lambda r: r[7])
        notes.append(f"{kind}: `full / cache` ranges from {lo[7]:.1f}x ({lo[1]} env(s)) to {hi[7]:.1f}x "
                     f"({hi[1]} env(s)); `recompute / cache` from {min(r[6] for r in mine):.1f}x to "
                     f"{max(r[6] for r in mine):.1f}x.")
    if scaling:
        lo, hi = scaling[0], scaling[-1]
        notes.append(f"1 env, K = {lo[0]} to {hi[0]}: the cached step goes from {lo[1]:.2f} to {hi[1]:.2f} ms, the "
                     f"full recompute from {lo[3]:.2f} to {hi[3]:.2f} ms (`full / cache` {lo[6]:.1f}x to {hi[6]:.1f}x).")
    return notes


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    K = args.context_len
    rows = []
    for image, envs in ((False, args.n_envs), (True, args.image_envs)):
        agent = make_agent(image, args, K)
        for n in envs:
            steps = args.image_steps if image else args.steps
            ms = per_step_ms(agent, n, steps, args.repeats)
            rows.append([
                "64x64 image (IMPALA)" if image else f"vector ({args.obs_dim})", n, ms["cache"], ms["recompute"],
                ms["full"], ms["window"], ms["recompute"] / ms["cache"], ms["full"] / ms["cache"],
                ms["window"] / ms["cache"],
            ])
            print(rows[-1], flush=True)
    main_table = markdown_table(
        ["observations", "envs", "cache ms/step", "recompute ms/step", "full ms/step", "window ms/step",
         "recompute / cache", "full / cache", "window / cache"],
        rows,
    )

    scaling = []
    for k in args.scaling_context_lens:
        agent = make_agent(False, args, k)
        ms = per_step_ms(agent, 1, args.steps, args.repeats)
        scaling.append([k, ms["cache"], ms["recompute"], ms["full"], ms["window"], ms["recompute"] / ms["cache"],
                        ms["full"] / ms["cache"]])
        print(scaling[-1], flush=True)
    scaling_table = markdown_table(
        ["K", "cache ms/step", "recompute ms/step", "full ms/step", "window ms/step", "recompute / cache",
         "full / cache"],
        scaling,
    ) if scaling else "(skipped)"

    train_rows = []
    for image in (False, True) if args.image_envs else (False,):
        batch, samples, tokens = train_throughput(image, args)
        train_rows.append(["64x64 image (IMPALA)" if image else f"vector ({args.obs_dim})", batch, samples, tokens])
        print(train_rows[-1], flush=True)
    train_table = markdown_table(["observations", "batch", "samples/s", "tokens/s"], train_rows)

    variant_rows = []
    compile_times = []
    for n in args.n_envs if args.variants else ():
        ms, dev, compile_s = step_variants(args, n)
        if compile_s is not None:
            compile_times.append(f"{compile_s:.1f} s ({n} env(s))")
        base = ms.get("torch")
        for v in args.variants:
            variant_rows.append([n, v, ms[v], base / ms[v] if base else "", f"{dev[v]:.2g}"])
            print(variant_rows[-1], flush=True)
    variant_table = markdown_table(["envs", "cached step", "ms/step", "speed-up over the torch step",
                                    "max abs deviation of the actions from the torch step"],
                                   variant_rows) if variant_rows else "(skipped)"
    compile_note = ", ".join(compile_times) or "not measured"

    peer_rows, hf_version = [], ""
    for n in args.n_envs if args.hf_python else ():
        hf_ms, our_ms, hf_version = hf_peer(args, n)
        peer_rows.append([n, hf_ms, our_ms, hf_ms / our_ms])
        print(peer_rows[-1], flush=True)
    if peer_rows:
        peer_table = (f"Hugging Face's `DecisionTransformerModel` (transformers {hf_version}, the same shapes: 3 layers, 1 "
                      f"head, width 128; its forward alone over the last K = {K} steps, as its example acts, inputs "
                      f"prepared) against this tree's `predict` (cached, the default step), {args.repeats} rounds "
                      "alternating a fresh Hugging Face subprocess with this process's own timing, fastest call of each "
                      "(`--hf-python`: a separate venv, `python -m venv hf && hf/bin/pip install torch==2.13.0 "
                      "transformers`):\n\n"
                      + markdown_table(["envs", "Hugging Face ms/step", "tt-agents ms/step", "Hugging Face / tt-agents"],
                                       peer_rows)
                      + "\n\nGoal (issue 15): at least 10x at 1 env and at 16 envs: "
                      + ", ".join(f"{r[3]:.1f}x at {r[0]} env(s) ({'met' if r[3] >= 10 else 'not met'})"
                                  for r in peer_rows) + ".")
    else:
        peer_table = "Hugging Face's `DecisionTransformerModel`: not measured in this run (`--hf-python`)."
    measured_notes = "\n".join(f"- {n}" for n in ratio_notes(rows, scaling))
    measured_notes += f"\n- {load_note()}"
    body = f"""
The paper's MuJoCo model (3 layers, 1 head, width 128; IMPALA CNN (16, 32, 32) for images),
random weights and inputs, CPU, {args.threads} thread(s), `predict` end to end (preprocessing
included). Fastest of {args.repeats} interleaved rounds of {args.steps} calls ({args.image_steps} for
images); every state is warmed past 3K steps so that the window slides during the timed calls.

- `cache`: the sliding-window KV cache (3 new tokens per step).
- `recompute`: the exact reference, the network rerun over the last n_layer * (3K - 1) + 1
  tokens, its final block computing only the output it needs; it equals the cache's outputs
  within 1e-5 (tests/test_dt.py).
- `full`: the same recompute done plainly: the network's forward computes every step's output
  and the last is kept (the full-recompute path of the goal).
- `window`: the original DT evaluation, rerun over the last K steps (a different policy, not
  equal to the cache, once an episode is longer than K steps).

Per-step inference at K = {K}:

{main_table}

The cached step is a fixed-shape function (`DTStepCache`: the prompt, then a ring of 3(K + 1) slots
whose masks are built once per phase). By default (`DTActConfig(native=True)`) it runs as one fused C
function compiled for this CPU on first use (`native`: tt_agents/models/dt_step.c; vector observations,
float32, CPU); the `cache` column above is that step. The same step as torch ops (`torch`:
`native=False`) can run through `torch.compile` (`compiled`: `DTActConfig(compile=True)`) and keep its
keys and values in bfloat16 or float16 (`DTActConfig(kv_dtype=...)`). The variants at K = {K},
interleaved round by round on one agent and one input stream (the deviation is over every timed call):

{variant_table}

Compilation (the compiled variant's first call, outside the timed rounds): {compile_note}; a later process
reuses torch's on-disk compile cache and starts faster. The reduced-precision caches halve the bytes kept and read,
and are converted back to float32 for every product (this CPU: {vector_isa() or "unknown"}).

{peer_table}

Per-step inference against K (vector observations, 1 env):

{scaling_table}

Training throughput through the shared trainer (`agent.fit`, sampling included), K = {K},
{args.train_steps} steps; tokens = samples * 3K:

{train_table}

Notes:

- The goal is at least 5x against the full-recompute path (`full / cache`); `recompute / cache` is
  the same comparison against a recompute that also skips the outputs it does not need.
{measured_notes}
"""
    if args.write:
        write_section("dt", "Decision Transformer: inference per step and training throughput", body)
    else:
        print(body)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
