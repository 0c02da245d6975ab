"""Shared by the script tests: the checked-in Minari fixtures as a store, running a script as a subprocess or in
this process, and a script's modules."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
FIXTURE_DATA = REPO / "tests" / "data" / "minari"  # real Minari-written datasets, checked in
HOPPER = "fixtures/hopper/random-v0"
"""A small real Hopper-v5 dataset (20 episodes, 550 steps)."""
TINY_BC = ["--agent.hidden-sizes", "8", "--train.batch-size", "8", "--device", "cpu", "--train.warmup-steps", "2"]


def make_store(tmp_path: Path) -> Path:
    store = tmp_path / "store"
    if not store.exists():
        shutil.copytree(FIXTURE_DATA, store)
    return store


def script_env(store: Path | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TT_AGENTS_DEBUG"}
    env.update({"OMP_NUM_THREADS": "1", **extra})
    if store is not None:
        env["MINARI_DATASETS_PATH"] = str(store)
    return env


def run_script(script: str, *args: str, store: Path | None = None, cwd: Path = REPO, timeout: int = 300,
               **extra_env: str) -> subprocess.CompletedProcess:
    """``python scripts/<script> args...`` as a subprocess (output captured)."""
    return subprocess.run([sys.executable, str(REPO / "scripts" / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=script_env(store, **extra_env))


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (its ``__main__`` block not run)."""
    key = f"_script_{name}"
    if key not in sys.modules:
        sys.path.insert(0, str(REPO / "scripts"))
        spec = importlib.util.spec_from_file_location(key, REPO / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


def call_cli(name: str, argv: list[str]) -> tuple[int, str, str]:
    """``scripts/<name>.py``'s ``cli(argv)`` in this process: ``(exit code, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            load_script(name).cli(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            if isinstance(e.code, str):
                err.write(e.code)
    return code, out.getvalue(), err.getvalue()
