"""Compiling the fixed-shape decode steps: ``torch.compile`` where it works, the eager function where not.

The DT's decode step (:meth:`~tt_agents.models.dt.DecisionTransformerNet.decode_step`) is a
function of fixed-shape tensors, written so that ``torch.compile`` can take it whole (no
Python-level branching on tensor values, no shapes that change from step to step). :func:`maybe_compile` wraps one: the first call compiles it (its time
is recorded in :data:`COMPILE_SECONDS`, so benchmarks can report it apart from the steps); if
compilation fails (no C++ compiler, an unsupported platform, a torch without dynamo) it warns
once and runs the eager function from then on, so ``predict`` keeps working everywhere.
``TT_AGENTS_COMPILE_BACKEND`` picks the backend (default ``inductor``; the tests use ``eager``,
which checks that the step traces whole without paying for code generation).
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["maybe_compile", "COMPILE_SECONDS"]

COMPILE_SECONDS: dict[str, float] = {}
"""Seconds the first (compiling) call of each compiled step took, by name (benchmarks read it)."""


class _Compiled:
    def __init__(self, fn: Callable[..., Any], name: str, mode: str | None) -> None:
        self.fn = fn
        self.name = name
        self.compiled: Callable[..., Any] | None = None
        self.failed = False
        try:
            backend = os.environ.get("TT_AGENTS_COMPILE_BACKEND", "inductor")  # tests: "eager" (tracing only)
            # on a CPU, a C++ wrapper around the generated kernels: a tiny step's Python wrapper costs as much as it
            options = {"cpp_wrapper": True} if mode is None and backend == "inductor" else None
            self.compiled = torch.compile(
                fn, dynamic=False, fullgraph=True, mode=mode, backend=backend, options=options
            )
        except Exception as e:  # noqa: BLE001  (no dynamo in this torch build)
            self._fail(e)

    def _fail(self, e: BaseException) -> None:
        self.failed = True
        warnings.warn(f"torch.compile is unavailable for {self.name} ({type(e).__name__}: {e}); running it eagerly",
                      RuntimeWarning, stacklevel=3)

    def __call__(self, *args: Any) -> Any:
        if self.failed or self.compiled is None:
            return self.fn(*args)
        first = self.name not in COMPILE_SECONDS
        t0 = time.perf_counter()
        try:
            out = self.compiled(*args)
        except Exception as e:  # noqa: BLE001  (compilation failed: the eager step gives the same outputs)
            self._fail(e)
            return self.fn(*args)
        if first:
            COMPILE_SECONDS[self.name] = time.perf_counter() - t0
        return out


def maybe_compile(fn: Callable[..., Any], name: str, device: torch.device | str = "cpu") -> Callable[..., Any]:
    """``fn`` through ``torch.compile`` (CUDA graphs on a CUDA device: mode ``reduce-overhead``; on a CPU,
    inductor's C++ wrapper), or ``fn`` itself where compiling fails.

    Example:
        >>> step = maybe_compile(torch.add, "an add")
        >>> callable(step)
        True
    """
    return _Compiled(fn, name, "reduce-overhead" if torch.device(device).type == "cuda" else None)
