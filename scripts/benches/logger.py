"""Logging overhead per step: the bare env, ActionLogger at each durability level and Minari's DataCollector.

One run, interleaved: every variant steps the same actions, and the variants take turns in chunks
(bare, process-crash, power-loss, DataCollector, bare, ...) so that the load of a shared machine
weighs on all of them alike. Two tables: a single env (``ActionLogger``) and a vector env of
``num_envs`` sub-envs (``VectorActionLogger``; DataCollector has no vector form, so there each
sub-env is wrapped in its own). The loggers write every finished episode to a Minari dataset in a
temporary folder when it ends: ``process-crash`` (the default) hands it to the OS before the
step returns, ``power-loss`` also fsyncs it on a background thread (group commit, see
:mod:`tt_agents.data.durability`). DataCollector keeps episodes in memory and writes nothing
until ``create_dataset``, which is not timed; its row is skipped, with the reason printed, where
``minari[create]`` is not installed.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benches._common import markdown_table, write_section


@dataclass
class Args:
    env_id: str = "HalfCheetah-v5"
    """Gymnasium id of the env (HalfCheetah: 1000-step episodes)"""
    num_envs: int = 8
    """sub-envs of the (sync) vector env of the second table"""
    chunks: int = 24
    """turns of each variant"""
    chunk: int = 1000
    """steps per turn (1000: one HalfCheetah episode per turn and sub-env)"""
    seed: int = 0
    """seed of the envs and the actions"""


def data_collector() -> tuple[type | None, str]:
    """Minari's DataCollector class, or ``None`` and why not (the second item says which jax it found)."""
    try:
        import jax  # minari[create]'s dependency
        import minari
        from minari import DataCollector
    except ImportError as e:
        return None, f"Minari's DataCollector skipped: {e} (pip install 'minari[create]')"
    return DataCollector, f"Minari {minari.__version__}, jax {jax.__version__} (from {Path(jax.__file__).parents[1]})"


def variants(args: Args, vector: bool, tmp: str) -> dict[str, object]:
    import gymnasium as gym

    from wrappers.action_logger import ActionLogger, VectorActionLogger

    def env(wrap=None):
        if vector:
            return gym.make_vec(args.env_id, num_envs=args.num_envs, vectorization_mode="sync", wrappers=wrap)
        e = gym.make(args.env_id)
        for w in wrap or ():
            e = w(e)
        return e

    logger = VectorActionLogger if vector else ActionLogger
    kind = "vec" if vector else "single"
    out: dict[str, object] = {"bare env": env()}
    for level in ("process-crash", "power-loss"):
        name = f"{logger.__name__} ({level})"
        out[name] = logger(env(), f"bench/{kind}-{level}-v0", path=f"{tmp}/{kind}-{level}", durability=level)
    collector, _ = data_collector()
    if collector is not None:
        out["Minari DataCollector" + (" (one per sub-env)" if vector else "")] = env([collector])
    return out


def run(args: Args, vector: bool, tmp: str) -> tuple[list[list[object]], str]:
    envs = variants(args, vector, tmp)
    first = next(iter(envs.values()))
    space = first.action_space  # type: ignore[attr-defined]
    rng = np.random.default_rng(args.seed)
    actions = rng.uniform(space.low, space.high, (args.chunk, *space.shape)).astype(space.dtype)
    for e in envs.values():
        e.reset(seed=args.seed)  # type: ignore[attr-defined]
    times: dict[str, list[float]] = {name: [] for name in envs}
    for _ in range(args.chunks):
        for name, e in envs.items():
            step = e.step  # type: ignore[attr-defined]
            done = vector
            t0 = time.perf_counter()
            for a in actions:
                if not done:
                    _, _, term, trunc, _ = step(a)
                    if term or trunc:
                        e.reset()  # type: ignore[attr-defined]
                else:
                    step(a)
            times[name].append(time.perf_counter() - t0)
    episodes = {}
    t_close = {}
    for name, e in envs.items():
        t0 = time.perf_counter()
        w = getattr(e, "writer", None)
        e.close()  # type: ignore[attr-defined]
        t_close[name] = time.perf_counter() - t0
        if w is not None:
            episodes[name] = w.total_episodes
    bare = np.array(times["bare env"])
    n = args.chunks * args.chunk
    rows = []
    for name, ts in times.items():
        t = np.array(ts)
        over = (t.sum() - bare.sum()) / bare.sum() * 100
        paired = np.median(t / bare - 1) * 100
        rows.append([
            name, f"{np.median(t) / args.chunk * 1e6:.1f}", f"{t.sum() / n * 1e6:.1f}",
            "-" if name == "bare env" else f"{over:+.1f}%", "-" if name == "bare env" else f"{paired:+.1f}%",
            episodes.get(name, "-"), f"{t_close[name]:.2f}",
        ])
        print(rows[-1], flush=True)
    return rows, ""


def main(args: Args) -> None:
    import torch

    torch.set_num_threads(1)
    collector, about = data_collector()
    print(about, flush=True)
    skipped = about if collector is None else ""
    header = ["variant", "median µs / step", "mean µs / step", "overhead (total time)", "overhead (median of chunk pairs)",
              "episodes written", "close() s"]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MINARI_DATASETS_PATH"] = tmp  # DataCollector's store
        single, _ = run(args, False, tmp)
        vec, _ = run(args, True, tmp)
    load = os.getloadavg()
    body = (
        f"{args.env_id}, random actions, {args.chunks} turns of {args.chunk} steps per variant, the variants "
        f"interleaved turn by turn in one run; a single env, then a SyncVectorEnv of {args.num_envs} sub-envs "
        "(a vector step steps all of them). `process-crash` (the default): each finished episode is written to "
        "the dataset and handed to the OS before the step that ends it returns, without fsync (survives SIGKILL). "
        "`power-loss`: the same, plus fsync on a background thread, one for every episode written since the last "
        "(survives power loss once `sync()` returns; `close()` waits for it, its time is the last column). The "
        f"machine was shared with other jobs (load average {load[0]:.1f} at the end of the run), so compare the "
        "rows of one table rather than runs.\n\n"
        f"Single env:\n\n{markdown_table(header, single)}\n\n"
        f"{args.num_envs} sub-envs:\n\n{markdown_table(header, vec)}\n\n"
        + (f"{skipped}.\n\n" if skipped else f"DataCollector: {about}.\n\n")
        + "Goals (issue 15): the default at most 1/5 of DataCollector's overhead single env, and at most 5% at "
        f"{args.num_envs} sub-envs."
    )
    write_section("logger", "Logging overhead per step: durability levels and Minari's DataCollector", body)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(Args))
