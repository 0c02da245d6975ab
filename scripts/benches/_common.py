"""Shared helpers of the benchmark sections: machine description and writing into benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from tt_agents.utils import atomic_write_bytes

BENCHMARKS_MD = Path(__file__).resolve().parents[2] / "benchmarks.md"
BENCHMARKS_MD_ENV = "TT_AGENTS_BENCHMARKS_MD"
"""Where ``write_section`` writes instead of the repo's benchmarks.md, when set (the tests set it: a test's tiny
run never lands in the recorded figures)."""


def benchmarks_md() -> Path:
    """The file sections are written into: ``$TT_AGENTS_BENCHMARKS_MD``, else the repo's benchmarks.md."""
    return Path(os.environ.get(BENCHMARKS_MD_ENV) or BENCHMARKS_MD)


def machine() -> str:
    """One line describing the hardware this run is on."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    total, allowed = _cores()
    cores = f"{total} cores" if allowed == total else f"{total} cores (this run pinned to {allowed})"
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    isa = vector_isa()
    cpu = f"{cpu} ({isa})" if isa else cpu
    return f"{cpu}, {cores}{gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def vector_isa() -> str:
    """The CPU's widest vector instructions and its reduced-precision ones, from /proc/cpuinfo (``""`` elsewhere)."""
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        return ""
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    extra = [name for flag, name in (("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"), ("amx_bf16", "AMX"))
             if flag in flags]
    return isa + (f" with {', '.join(extra)}" if extra else ", no BF16, FP16 or AMX")


def _cores() -> tuple[int, int]:
    """The machine's cores, and how many of them this process may run on (``taskset``)."""
    total = os.cpu_count() or 1
    return total, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total


def load_note(when: str = "at the end of the run") -> str:
    """What the machine's load was (its 1-minute load average against its cores), and what that means for
    the figures: other work shares the cores when the load is above the cores this run did not take."""
    load = os.getloadavg()[0]
    total, allowed = _cores()
    note = f"Load average {load:.1f} on the machine's {total} cores {when}"
    if allowed < total:
        note += f"; this run was pinned to {allowed} of them"
    if load > total + 0.5:
        return note + ": the cores were oversubscribed, so absolute times are inflated; compare within a table."
    return note + "; compare within a table (ratios of figures measured side by side)."


def command() -> str:
    """The command line that reproduces this run."""
    return "python " + " ".join(shlex.quote(a) for a in ["scripts/bench.py", *sys.argv[1:]])


def time_it(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Median wall seconds of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(sorted(ts)[len(ts) // 2])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(x: object) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, title: str, body: str, path: Path | None = None) -> None:
    """Replace (or append) the section ``name`` of benchmarks.md (``path``, default :func:`benchmarks_md`), stamped
    with command, machine, date.

    A section lives between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers, so each
    run rewrites only its own figures.
    """
    stamp = (
        f"- command: `{command()}`\n"
        f"- machine: {machine()}\n"
        f"- date: {_dt.datetime.now(_dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}\n"
    )
    block = f"<!-- bench:{name} -->\n## {title}\n\n{stamp}\n{body.strip()}\n<!-- /bench:{name} -->"
    path = benchmarks_md() if path is None else path
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    atomic_write_bytes(path, text.encode())
    print(block)
