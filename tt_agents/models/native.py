"""The Decision Transformer's decode step as one fused C function, for CPUs; and the building of the
library that holds it and the Trajectory Transformer's step (:mod:`tt_agents.models.tt_native`).

Why hand-written: one DT step at one env is three tokens through three 128-wide layers, about
3 MFLOP. Run as torch ops it is ~80 small calls, and the matrix products themselves are slow
at three rows: MKL's ``addmm`` took 13.6 us for a (3 x 128) @ (128 x 384) product on this
project's 2-core EPYC (22 GFLOP/s), and ``torch.compile`` (inductor, C++ wrapper, with or
without freezing, max-autotune or the small-matmul decomposition) left the step at 0.31-0.40 ms,
half of it in those products. The fused step (plain C loops that the compiler vectorizes: the
weights packed in 32-column tiles that accumulate in registers, a branch-free GELU with torch's own
erf approximation) measured 65-80 us for the same step, and ``predict`` end to end 0.18-0.20 ms
against 0.75-0.88 ms with the torch step, its actions within 4e-7 of the torch step's
(benchmarks.md, "dt"; tests/test_native.py checks the equality). It covers the common case, vector observations
with a float32 KV cache on a CPU; every other case runs the torch step.

The sources, ``dt_step.c`` and ``tt_step.c`` beside this file (their shared parts in ``native_ops.h``),
are compiled into one library on first use with the system's C compiler
(``$CC``, else ``cc``, ``gcc`` or ``clang``) for this CPU (``-march=native``) into
``$TT_AGENTS_CACHE`` (default ``~/.cache/tt_agents``)/native, named by a hash of the sources, the
flags, the compiler and the CPU, written atomically; later processes load the cached library. Where
no compiler works, :func:`load` returns ``None`` once with a warning and the torch step runs.
The compiler flags allow reassociating sums (vectorized dot products) but keep infinities and
NaNs (no ``-ffast-math``): the attention's masked slots are skipped, never exponentiated.
"""

from __future__ import annotations

import ctypes
import hashlib
import operator
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["load", "NativeDTStep", "PackedParams", "dt_step_supported", "pack"]

HERE = Path(__file__).parent
SOURCES = [HERE / "dt_step.c", HERE / "tt_step.c"]  # one library: the DT step and the TT step
HEADERS = [HERE / "native_ops.h"]  # their shared parts
FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
         "-fassociative-math", "-shared", "-fPIC"]

_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_failed: str | None = None


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def _cpu_key() -> str:
    """The CPU's identity for the cache name (``-march=native`` code runs only where its features exist)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    root = os.environ.get("TT_AGENTS_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tt_agents")
    return Path(root) / "native"


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (set $CC, or install gcc)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    src = [p.read_bytes() for p in SOURCES + HEADERS]
    key = hashlib.sha256(b"\0".join([*src, " ".join(FLAGS).encode(), version.encode(), _cpu_key().encode()]))
    out = _cache_dir() / f"steps-{key.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        try:
            for extra in (["-fopenmp"], []):  # threads where the compiler has OpenMP, else serial
                r = subprocess.run([cc, *FLAGS, *extra, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True,
                                   text=True, timeout=120)
                if r.returncode == 0:
                    break
            if r.returncode != 0:
                raise RuntimeError(f"{cc} failed: {r.stderr.strip()[-500:]}")
            os.replace(tmp, out)  # atomic: a concurrent process sees the old name or the whole library
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(out))
    lib.dt_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    lib.dt_step.restype = ctypes.c_int
    lib.tt_step.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.tt_step.restype = ctypes.c_int
    lib.tt_bf16_linear.argtypes = []
    lib.tt_bf16_linear.restype = ctypes.c_int
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled step (built on first use), or ``None`` where it cannot be built (warns once)."""
    global _lib, _failed
    if _lib is not None or _failed is not None:
        return _lib
    with _lock:
        if _lib is None and _failed is None:
            try:
                _lib = _build()
            except Exception as e:  # noqa: BLE001  (no compiler, a read-only home: the torch step runs)
                _failed = f"{type(e).__name__}: {e}"
                warnings.warn(f"the fused DT and TT steps are unavailable ({_failed}); the torch steps run instead "
                              "(DTActConfig(native=False), PlanConfig(native=False) skip trying)", RuntimeWarning,
                              stacklevel=3)
    return _lib


def dt_step_supported(net: Any, dtype: torch.dtype) -> bool:
    """Whether :class:`NativeDTStep` covers this network and cache dtype: vector observations, float32
    weights and cache, on a CPU (the fused step knows no CNN, no half precision, no GPU)."""
    p = net.head.weight
    return not net.config.image and p.device.type == "cpu" and p.dtype == torch.float32 and dtype == torch.float32


def pack(w: torch.Tensor) -> torch.Tensor:
    """nn.Linear's weight ``(N, K)`` as ``dt_step.c`` reads it: ``(ceil(N / 32), K, 32)``, tiles of 32 output
    columns, each the transpose of its rows (the last tile zero-padded).

    Example:
        >>> w = torch.arange(6.0).view(3, 2)  # 3 outputs, 2 inputs
        >>> pack(w).shape, pack(w)[0, :, :3].tolist()
        (torch.Size([1, 2, 32]), [[0.0, 2.0, 4.0], [1.0, 3.0, 5.0]])
    """
    N, K = w.shape
    tiles = -(-N // 32)
    out = w.new_zeros(tiles * 32, K)
    out[:N] = w
    return out.view(tiles, 32, K).transpose(1, 2).contiguous()


def _params(net: Any) -> list[torch.Tensor]:
    """The network's tensors in the order ``dt_step.c`` reads them."""
    g = net.gpt
    obs = net.embed_observation[1]  # nn.Sequential(Flatten, Linear)
    act = net.embed_action
    ps = [obs.weight, obs.bias, act.weight, act.weight if net.discrete else act.bias,
          net.embed_return.weight, net.embed_return.bias, net.embed_timestep.weight, net.embed_ln.weight,
          net.embed_ln.bias, g.ln_f.weight, g.ln_f.bias, net.head.weight, net.head.bias]
    for blk in g.h:
        ps += [blk.ln_1.weight, blk.ln_1.bias, blk.attn.c_attn.weight, blk.attn.c_attn.bias,
               blk.attn.c_proj.weight, blk.attn.c_proj.bias, blk.ln_2.weight, blk.ln_2.bias,
               blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias]
    return ps


_version = operator.attrgetter("_version")


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` as a contiguous ``dtype`` tensor the C step can read (itself when it already is one)."""
    return t if t.dtype == dtype and t.is_contiguous() else t.to(dtype).contiguous()


class PackedParams:
    """The addresses of a network's tensors, in the order a C step reads them (``pointers``), with the linear
    layers' weights as packed copies (``packers``: index -> packing function, :func:`pack` for nn.Linear).

    :meth:`sync` remakes the copies whenever a parameter changed since the last call (its address or its
    in-place version counter), so training between steps is seen. A deep copy re-points at its own tensors.
    """

    def __init__(self, params: list[torch.Tensor], packers: dict[int, Any], what: str) -> None:
        self.params, self.packers, self.what = params, packers, what
        self._copied = self._read_as_copies()
        self._tensors: list[torch.Tensor] = []  # what the pointers point at (packed copies, or the parameters)
        self._key: tuple[int, ...] | None = None
        self.pointers = np.zeros(len(params), np.int64)
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy: the copy's tensors live elsewhere, re-pointed
        state = {**self.__dict__, "_key": None}
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read_as_copies(self) -> list[torch.Tensor]:
        """The parameters the step reads as copies (the packed ones, and any that are not contiguous): only their
        in-place changes need a repack, the others are read where they are. Every address is watched."""
        return [p for i, p in enumerate(self.params) if i in self.packers or not p.is_contiguous()]

    def sync(self) -> int:
        """The address of the pointer array, its tensors current."""
        return self.snapshot()[0].ctypes.data

    def snapshot(self) -> tuple[np.ndarray, list[torch.Tensor]]:
        """The pointer array and the tensors it points at, current. A caller that keeps both may read them
        while another thread repacks (the repack makes a new array and new tensors; these stay alive)."""
        try:  # map over the bound descriptors: a per-step check, half the cost of a generator expression
            key = (*map(torch.Tensor.data_ptr, self.params), *map(_version, self._copied))
        except RuntimeError:  # tensors made under inference mode keep no version counter (nothing trains them)
            key = (*map(torch.Tensor.data_ptr, self.params),
                   *(0 if p.is_inference() else p._version for p in self._copied))
        with self._lock:
            if key != self._key:
                for p in self.params:
                    if p.device.type != "cpu" or p.dtype != torch.float32:
                        raise RuntimeError(f"the fused {self.what} step needs float32 CPU weights, got {p.dtype} "
                                           f"on {p.device}: make a new state (agent.initial_state) after moving "
                                           "the model")
                with torch.no_grad():
                    tensors = [self.packers[i](p.detach()) if i in self.packers else p.detach().contiguous()
                               for i, p in enumerate(self.params)]
                self._copied = self._read_as_copies()
                self._tensors, self._key = tensors, key
                self.pointers = np.array([t.data_ptr() for t in tensors], np.int64)
            return self.pointers, self._tensors


class NativeDTStep:
    """:meth:`~tt_agents.models.dt.DecisionTransformerNet.decode_step` for the buffers of one
    :class:`~tt_agents.models.dt.DTStepCache`, through ``dt_step.c``.

    The C step reads the linear layers' weights packed (:func:`pack`: its products then accumulate
    tiles of outputs in registers, reading memory front to back): those are copies, remade whenever
    a parameter changed since the last step (:class:`PackedParams`), so training between steps is seen.
    The other tensors are read where they are.
    """

    def __init__(self, lib: ctypes.CDLL, net: Any, cache: Any, n_envs: int) -> None:
        c = net.config
        self.lib, self.net, self.cache = lib, net, cache
        S = int(cache.k.shape[3])
        head_kind = {"linear": 0, "tanh": 1, "categorical": 2}[c.head]
        obs_dim = int(np.prod(c.obs_shape))
        self.dims = np.array([c.n_layer, c.n_head, c.n_embd, S, c.action_dim, obs_dim, c.max_timestep, n_envs,
                              int(net.discrete), head_kind], np.int64)
        self.n_envs, self.action_dim, self.obs_dim = n_envs, c.action_dim, obs_dim
        self.work = torch.empty(11 * 3 * n_envs * c.n_embd + S + 16)
        # the linear layers' weights, which the C step reads packed
        packed = {0, 11} | (set() if net.discrete else {2})
        packed |= {13 + 12 * layer + j for layer in range(c.n_layer) for j in (2, 4, 8, 10)}
        self.weights = PackedParams(_params(net), dict.fromkeys(packed, pack), "DT")
        self.io = np.zeros(15, np.int64)

    def __getstate__(self) -> dict[str, Any]:  # copy.deepcopy of a state: the library handle is not copied
        return {**self.__dict__, "lib": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lib = load()

    def __call__(self, prev_action: torch.Tensor, has_prev: torch.Tensor, rtg: torch.Tensor, obs: torch.Tensor,
                 timestep: torch.Tensor, starts: torch.Tensor, phase: int) -> torch.Tensor:
        B = self.n_envs
        P = self.weights.sync()
        if self.net.discrete:
            prev = _as(prev_action.reshape(B), torch.int64)
        else:
            prev = _as(prev_action.reshape(B, self.action_dim), torch.float32)
        has_prev, rtg, timestep, starts = (_as(has_prev, torch.bool), _as(rtg, torch.float32),
                                           _as(timestep, torch.int64), _as(starts, torch.bool))
        obs = _as(obs.reshape(B, self.obs_dim), torch.float32)
        out = torch.empty(B, self.action_dim)
        c = self.cache
        self.io[:] = (prev.data_ptr(), has_prev.data_ptr(), rtg.data_ptr(), obs.data_ptr(), timestep.data_ptr(),
                      starts.data_ptr(), c.valid.data_ptr(), c.k.data_ptr(), c.v.data_ptr(), out.data_ptr(),
                      c.band.data_ptr(), c.own.data_ptr(), c.slots.data_ptr(), c.is_ring.data_ptr(),
                      self.work.data_ptr())
        if self.lib.dt_step(self.dims.ctypes.data, P, self.io.ctypes.data, phase) != 0:
            raise ValueError(f"previous actions must be in [0, {self.action_dim}), got {prev.tolist()}")
        return out
