"""Data-parallel bookkeeping of the trainer: rank, world size and device under ``torchrun``, and every rank's RNG.

A checkpoint holds each rank's torch (and CUDA) and numpy RNG states, gathered on rank 0 with
``all_gather`` (tensors only, no pickle), so that a resumed run continues every rank's random
stream (its dropout masks) exactly where it was.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tt_agents.utils import resolve_device

__all__ = ["Distributed", "rng_tensors", "numpy_rng_states", "restore_rng"]


class Distributed:
    """Rank, world size and device, from torchrun's environment variables."""

    def __init__(self, device: str) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.enabled = self.world_size > 1
        self.owns_group = False
        if self.enabled:
            if not dist.is_initialized():
                backend = "nccl" if torch.cuda.is_available() else "gloo"
                dist.init_process_group(backend=backend)
                self.owns_group = True
            self.rank = dist.get_rank()
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)
                self.device = torch.device("cuda", local_rank)
            else:
                self.device = torch.device("cpu")
        else:
            self.rank = 0
            self.device = resolve_device(device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            # every rank done with the group before any tears it down: a rank that exits while the other's
            # gloo threads still talk to it can abort the other ("terminate called without an active
            # exception", seen once in the suite's 2-rank torchrun test)
            dist.barrier()
            dist.destroy_process_group()


def rng_tensors(ddp: Distributed) -> dict[str, torch.Tensor]:
    """Every rank's torch (and CUDA) RNG state, gathered on every rank (a collective call).

    Rank 0's keep the names of single-process checkpoints (``torch``, ``cuda<i>``); rank ``r > 0``'s
    are ``rank<r>.torch`` and ``rank<r>.cuda``. Each rank resumes with its own (its dropout masks
    differ from the other ranks' and must continue where they were).
    """
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        if ddp.enabled:
            rng["cuda"] = torch.cuda.get_rng_state(ddp.device)
        else:
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
    if not ddp.enabled:
        return rng
    out: dict[str, torch.Tensor] = {}
    for key in sorted(rng):
        mine = rng[key].to(ddp.device) if ddp.device.type == "cuda" else rng[key]
        gathered = [torch.empty_like(mine) for _ in range(ddp.world_size)]
        dist.all_gather(gathered, mine)
        for r, t in enumerate(gathered):
            if r > 0:
                out[f"rank{r}.{key}"] = t.cpu()
            else:  # rank 0: the single-process names (written by rank 0, so its own device index)
                out[key if key == "torch" else f"cuda{ddp.device.index}"] = t.cpu()
    return out


def numpy_rng_states(ddp: Distributed) -> list[dict[str, Any]]:
    """Every rank's numpy global RNG state (a collective call under DDP)."""
    own = _numpy_rng_state()
    if not ddp.enabled:
        return [own]
    keys = torch.tensor(own["keys"] + [own["pos"], own["has_gauss"]], dtype=torch.int64)
    cached = torch.tensor([own["cached"]], dtype=torch.float64)
    if ddp.device.type == "cuda":
        keys, cached = keys.to(ddp.device), cached.to(ddp.device)
    all_keys = [torch.empty_like(keys) for _ in range(ddp.world_size)]
    all_cached = [torch.empty_like(cached) for _ in range(ddp.world_size)]
    dist.all_gather(all_keys, keys)
    dist.all_gather(all_cached, cached)
    return [
        {"name": own["name"], "keys": k[:-2].tolist(), "pos": int(k[-2]), "has_gauss": int(k[-1]), "cached": float(c)}
        for k, c in zip(all_keys, all_cached)
    ]


def restore_rng(rng: dict[str, torch.Tensor], trainer_state: dict[str, Any], ddp: Distributed) -> None:
    """Put this rank's RNG states back (checkpoints from before per-rank states give every rank rank 0's)."""
    prefix = f"rank{ddp.rank}." if ddp.rank else ""
    torch_state = rng.get(f"{prefix}torch", rng.get("torch"))
    if torch_state is not None:
        torch.set_rng_state(torch_state)
    if torch.cuda.is_available():
        if ddp.enabled:
            cuda = rng.get(f"rank{ddp.rank}.cuda") if ddp.rank else rng.get(f"cuda{ddp.device.index}")
            if cuda is not None:
                torch.cuda.set_rng_state(cuda, ddp.device)
        else:
            states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
    ranks = trainer_state.get("numpy_rng_ranks") or []
    _set_numpy_rng_state(ranks[ddp.rank - 1] if 0 < ddp.rank <= len(ranks) else trainer_state.get("numpy_rng"))



def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any] | None) -> None:
    if state:
        np.random.set_state(
            (state["name"], np.array(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"], state["cached"])
        )
