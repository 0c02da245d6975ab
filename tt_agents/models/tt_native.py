"""The Trajectory Transformer's beam-search decode step as one fused C function, for CPUs.

Why: a search decodes one token at a time for every candidate of every env (64 rows at beam 32, 256
at beam 128), and each token is about 17 small torch ops per layer plus the sampling. The torch step
ran its linear layers at 58-80 GFLOP/s of this machine's ~100 and its attention products at
12-19 GB/s, reading each candidate's whole 125-token ring (500 KB) per token (benchmarks.md,
"planning"), and pruning copied the survivors' rings.

What is different here (``tt_step.c``): keys and values live in one buffer per search, ``(n_layer,
rows, window, width)``, where the token that row ``r`` decoded at step ``s`` sits at ``[r, s % window]``.
A candidate holds ``window`` indices (which row's entry at each slot is its history), not a ring:
forking a beam or keeping the best ones copies those indices (``(rows, window)`` int32), never keys or
values, and beams that share a past read the same entries. The entry a token overwrites is the one
that just left every row's window (all rows advance together). A row's tokens between two prunings lie
side by side, so a history is read in runs of whole transitions; rows attend in the search tree's
depth-first order (rows sharing a past one after another, their shared entries still in cache), and
each row asks for the next row's other entries ahead of use. The linear layers are
:mod:`tt_agents.models.native`'s packed products (8 rows x 32 columns in registers: this machine's peak
matmul rate). Measured (benchmarks.md, "planning"): about 2.4x faster than the torch step at beam 32,
horizon 5, and 1.4-1.7x at beam 128, horizon 15, where the beams' distinct histories (4-9 MB of keys and
values per layer) no longer fit in cache ("tt-step" has the step's anatomy).

It computes the torch step's function (tests/test_tt_native.py compares the logits token by token and the
plans) on float32 CPU networks without reduced-precision caches or shared prefixes
(``PlanConfig(native=True)``, the default, where those hold); elsewhere, or without a C compiler,
the torch step runs.

Two opt-ins trade exactness for speed: keys and values in bfloat16 (``kv_dtype``: half the bytes the
attention reads) and, on CPUs with AVX512-BF16, the linear layers' inputs and weights in bfloat16
(``linear_dtype``: a second packed copy of the weights, :func:`pack_bf16`; ``vdpbf16ps`` sums two products
per lane per instruction in float32, twice the float32 kernel's rate). The tests check the latter against a
torch network whose linear layers round the same way.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

import numpy as np
import torch

from tt_agents.models import native
from tt_agents.models.gpt import _rope_range
from tt_agents.models.kv_cache import RingKVCache

__all__ = ["NativeTTStep", "NativeContext", "tt_step_supported", "native_tt_step", "pack_bf16"]


def tt_step_supported(model: Any) -> bool:
    """Whether the fused step covers this network: float32 on a CPU, biases in every layer, at most 16 heads."""
    p = model.head
    c = model.gpt.config
    return p.device.type == "cpu" and p.dtype == torch.float32 and c.bias and c.n_head <= 16 and not model.training


def _pack_heads(head: torch.Tensor) -> torch.Tensor:
    """The per-dimension heads ``(td, C, n_bins)`` as ``tt_step.c`` reads them: each packed as an nn.Linear
    weight ``(n_bins, C)`` (:func:`~tt_agents.models.native.pack`), ``(td, tiles, C, 32)``."""
    return torch.stack([native.pack(h.T) for h in head])


def pack_bf16(w: torch.Tensor) -> torch.Tensor:
    """nn.Linear's weight ``(N, K)`` as ``tt_step.c``'s bfloat16 linear layers read it: ``(ceil(N / 32),
    ceil(K / 2), 32, 2)`` bfloat16 (rounded to nearest even), tiles of 32 output columns whose two weights for
    inputs ``2k`` and ``2k + 1`` lie side by side (what one lane of ``vdpbf16ps`` multiplies); zero-padded.

    Example:
        >>> w = torch.arange(6.0).view(3, 2)  # 3 outputs, 2 inputs
        >>> pack_bf16(w).shape, pack_bf16(w)[0, 0, :3].tolist()
        (torch.Size([1, 1, 32, 2]), [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])
    """
    N, K = w.shape
    tiles, K2 = -(-N // 32), -(-K // 2)
    out = w.new_zeros(tiles * 32, K2 * 2)
    out[:N, :K] = w
    return out.view(tiles, 32, K2, 2).permute(0, 2, 1, 3).contiguous().to(torch.bfloat16)


def _pack_heads_bf16(head: torch.Tensor) -> torch.Tensor:
    """The per-dimension heads ``(td, C, n_bins)`` for the bfloat16 linear layers (:func:`pack_bf16` each)."""
    return torch.stack([pack_bf16(h.T) for h in head])


def _params(model: Any, bf16: bool = False) -> tuple[list[torch.Tensor], dict[int, Any]]:
    """The network's tensors in the order ``tt_step.c`` reads them, and which of them it reads packed (the linear
    layers' weights as float32, or as bfloat16 with ``bf16``)."""
    g = model.gpt
    ps = [model.tok_emb.weight, g.ln_f.weight, g.ln_f.bias, model.head]
    packers: dict[int, Any] = {3: _pack_heads_bf16 if bf16 else _pack_heads}
    for i, blk in enumerate(g.h):
        ps += [blk.ln_1.weight, blk.ln_1.bias, blk.attn.c_attn.weight, blk.attn.c_attn.bias,
               blk.attn.c_proj.weight, blk.attn.c_proj.bias, blk.ln_2.weight, blk.ln_2.bias,
               blk.mlp.c_fc.weight, blk.mlp.c_fc.bias, blk.mlp.c_proj.weight, blk.mlp.c_proj.bias]
        packers.update({4 + 12 * i + j: pack_bf16 if bf16 else native.pack for j in (2, 4, 8, 10)})
    return ps, packers


class NativeTTStep:
    """The fused step for one network: its packed weights (:class:`~tt_agents.models.native.PackedParams`),
    and each thread's search buffers, kept from search to search (they only grow)."""

    def __init__(self, lib: Any, model: Any) -> None:
        self.lib = lib  # no reference to the network itself: _steps is keyed by it, weakly
        c = model.gpt.config
        self.n_bins, self.value_dim, self.rope_base = model.n_bins, model.value_dim, c.rope_base
        self.L, self.H, self.C, self.W = c.n_layer, c.n_head, c.n_embd, int(c.attn_window)
        self.weights = native.PackedParams(*_params(model), "TT")
        # the linear layers in bfloat16 (PlanConfig.linear_dtype), where this CPU's build has them
        self.weights_bf16 = native.PackedParams(*_params(model, bf16=True), "TT") if lib.tt_bf16_linear() else None
        self._local = threading.local()  # k, v, work: one search at a time per thread

    @property
    def bf16_linear(self) -> bool:
        """Whether this step can run its linear layers in bfloat16 (the CPU has AVX512-BF16)."""
        return self.weights_bf16 is not None

    def start(self, ring: RingKVCache, rows: int, dtype: torch.dtype = torch.float32,
              linear_bf16: bool = False) -> NativeContext:
        """A search from ``ring``'s rows (one per env: their histories) with room for ``rows`` candidates,
        keys and values held in ``dtype`` (float32: exact; bfloat16: half the bytes); ``linear_bf16``: the
        linear layers' inputs and weights in bfloat16 (where :attr:`bf16_linear`; not exact)."""
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"the fused TT step keeps keys and values in float32 or bfloat16, not {dtype}")
        if linear_bf16 and not self.bf16_linear:
            raise ValueError("bfloat16 linear layers need a CPU with AVX512-BF16 (and a build for it); this one "
                             "has none: use float32")
        E = ring.batch_size
        rows = max(rows, E)
        buf = self._local
        if getattr(buf, "k", None) is None or buf.k.shape[1] < rows or buf.k.dtype != dtype:
            buf.k = buf.v = None  # the old ones go first
            buf.k = torch.empty(self.L, rows, self.W, self.C, dtype=dtype)  # (n_layer, rows, window, width)
            buf.v = torch.empty_like(buf.k)
        threads = torch.get_num_threads()
        # x, h, qkv, y, f, tmp, the bfloat16 inputs (2C + 1 per row); then per thread the scores (2 H W) and 2 W
        # pointers, 64-byte aligned
        need = 13 * rows * self.C + rows + 16 + threads * ((8 * self.H * self.W + 16 * self.W + 63) // 64 * 16)
        if getattr(buf, "work", None) is None or buf.work.numel() < need:
            buf.work = torch.empty(need)
        L, _, H, W, hd = ring.k.shape
        buf.k[:, :E] = ring.k.transpose(2, 3).reshape(L, E, W, H * hd)  # rounded to nearest even, as the step does
        buf.v[:, :E] = ring.v.transpose(2, 3).reshape(L, E, W, H * hd)
        rows_of = torch.arange(E, dtype=torch.int32)[:, None].expand(E, W)
        idx = torch.where(ring.attendable.cpu(), rows_of, torch.tensor(-1, dtype=torch.int32)).contiguous()
        weights = self.weights_bf16 if linear_bf16 else self.weights
        search = _Search(self, buf.k, buf.v, buf.work, weights.snapshot(), threads, linear_bf16)  # type: ignore[union-attr]
        return NativeContext(search, idx, torch.arange(E, dtype=torch.int32), ring.steps)


class _Search:
    """One search's buffers and the weights' pointers (synced once: nothing trains during a search)."""

    def __init__(self, step: NativeTTStep, k: torch.Tensor, v: torch.Tensor, work: torch.Tensor,
                 weights: tuple[np.ndarray, list[torch.Tensor]], threads: int, linear_bf16: bool = False) -> None:
        self.step, self.k, self.v, self.work = step, k, v, work
        self.weights = weights  # the pointer array and its tensors, kept alive for this search
        self.P = weights[0].ctypes.data
        self.threads = threads  # torch's intra-op threads when the search began (its work buffer has room for them)
        self.linear_bf16 = linear_bf16
        self.n_bins, self.value_dim, self.rope_base = step.n_bins, step.value_dim, step.rope_base
        self.dims = np.zeros(13, np.int64)
        self.io = np.zeros(9, np.int64)

    def __call__(self, tokens: torch.Tensor, idx: torch.Tensor, order: torch.Tensor, steps: int, dim: int) -> torch.Tensor:
        """Decode ``tokens`` ``(N, 1)`` of dimension ``dim`` at step ``steps`` for rows with histories ``idx``
        ``(N, window)`` (updated in place), attending in ``order``; logits ``(N, n_bins)`` of the next token."""
        s = self.step
        N, R = int(tokens.shape[0]), int(self.k.shape[1])
        if N > R:
            raise ValueError(f"{N} rows for a search made for {R}")
        tokens = tokens.reshape(N).to(torch.int64).contiguous()
        cos, sin = _rope_range(steps, 1, s.C // s.H, self.rope_base, torch.float32, torch.device("cpu"))
        logits = torch.empty(N, self.n_bins)
        self.dims[:] = (s.L, s.H, s.C, s.W, self.n_bins, N, R, steps % s.W, dim, int(dim != self.value_dim),
                        int(self.k.dtype == torch.bfloat16), self.threads, int(self.linear_bf16))
        self.io[:] = (tokens.data_ptr(), idx.data_ptr(), self.k.data_ptr(), self.v.data_ptr(), cos.data_ptr(),
                      sin.data_ptr(), logits.data_ptr(), self.work.data_ptr(), order.data_ptr())
        rc = s.lib.tt_step(self.dims.ctypes.data, self.P, self.io.ctypes.data)
        if rc == -2:
            raise RuntimeError("this build of the fused TT step has no bfloat16 linear layers")
        if rc != 0:
            raise ValueError(f"tokens must be in [0, {self.n_bins}), got {tokens.tolist()}")
        return logits


class NativeContext:
    """Rows of a search held as indices into :class:`NativeTTStep`'s buffers; the interface of
    :class:`~tt_agents.planning.CachedContext` that :func:`~tt_agents.planning.beam_plan` uses."""

    def __init__(self, search: _Search, idx: torch.Tensor, order: torch.Tensor, steps: int) -> None:
        self.search, self.idx, self.order, self.steps = search, idx, order, steps

    def append(self, tokens: torch.Tensor, start_dim: int, pad: torch.Tensor | None = None) -> torch.Tensor:
        if tokens.shape[1] != 1 or pad is not None:
            raise ValueError("the fused TT step decodes one token per row, without padding")
        logits = self.search(tokens, self.idx, self.order, self.steps, start_dim)
        self.steps += 1
        return logits

    def select(self, index: torch.Tensor) -> NativeContext:
        """Row ``i`` continues row ``index[i]``'s history."""
        idx = self.idx.index_select(0, index)
        return NativeContext(self.search, idx, _tree_order(idx, self.steps), self.steps)

    def fork(self, n_children: int, max_tokens: int = 0, shared_prefix: bool = False, dtype: Any = None) -> NativeContext:
        """Rows ``r * n_children + c``: ``n_children`` copies of each row."""
        kids = (self.order[:, None] * n_children + torch.arange(n_children, dtype=torch.int32)).reshape(-1)
        return NativeContext(self.search, self.idx.repeat_interleave(n_children, 0), kids, self.steps)


def _tree_order(idx: torch.Tensor, steps: int) -> torch.Tensor:
    """The rows ``(N, window)`` sorted by their histories, oldest entry first: rows that share a past come
    one after another (the search tree's depth-first order), so that the entries they share are read from
    cache rather than memory. Any order gives the same outputs; this one measured faster at beam 128."""
    W = idx.shape[1]
    oldest_first = (steps + 1 + np.arange(W - 1)) % W  # the slot of the next step is about to be overwritten
    keys = idx.numpy()[:, oldest_first[::-1]].T  # np.lexsort: the last key is the primary one
    return torch.from_numpy(np.lexsort(keys).astype(np.int32))


_steps: weakref.WeakKeyDictionary[Any, NativeTTStep] = weakref.WeakKeyDictionary()


def native_tt_step(model: Any) -> NativeTTStep | None:
    """The fused step of ``model`` (made once per network), or ``None`` where it does not apply or cannot be
    built (:func:`tt_agents.models.native.load` warns once)."""
    if not tt_step_supported(model):
        return None
    step = _steps.get(model)
    if step is None:
        lib = native.load()
        if lib is None:
            return None
        step = _steps[model] = NativeTTStep(lib, model)
    return step
