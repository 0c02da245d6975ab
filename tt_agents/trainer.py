"""The one training loop every agent uses.

AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay, gradient
clipping, mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler), a
progress bar with loss and throughput, TensorBoard scalars plus a crash-safe ``metrics.jsonl``,
periodic atomic checkpoints, exact resume after a kill, seeded determinism, and data-parallel
training under ``torchrun`` (PyTorch DDP; NCCL on GPUs, gloo on CPUs).

Resuming is exact because batch ``i`` is a pure function of ``(seed, rank, i)`` (see
:class:`~tt_agents.data.WindowSampler`), and a checkpoint holds the weights, the optimizer's
moments, the scheduler's step, the grad scaler and every RNG state.

A run directory looks like::

    run_dir/
      checkpoints/last.zip      # latest (agent + trainer state), loadable with tt_agents.load_agent
      checkpoints/step_N.zip    # kept if keep_checkpoints is set
      final.zip                 # the trained agent
      metrics.jsonl             # one JSON line per log step, flushed as written
      tb/                       # TensorBoard event files
      training_curve.png        # loss over steps
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm.auto import tqdm

from tt_agents.checkpoint import CheckpointError, atomic_write_bytes, encode_checkpoint, read_checkpoint
from tt_agents.utils import resolve_device, set_seed

if TYPE_CHECKING:
    from tt_agents.agent import Agent

__all__ = ["TrainConfig", "TrainResult", "Trainer", "lr_at"]


@dataclass
class TrainConfig:
    """Hyperparameters of the shared training loop (per-agent ones live in the agent's config)."""

    steps: int = 10_000
    """Optimizer steps."""
    batch_size: int = 64
    """Samples per step on each rank (the global batch is ``batch_size * world_size``)."""
    lr: float = 6e-4
    """Peak learning rate (TT's default for MuJoCo)."""
    weight_decay: float = 0.1
    """Applied to weight matrices only, never to biases, norms or embeddings' 1-d params."""
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm; 0 disables."""
    seed: int = 0
    run_dir: str | None = None
    """Where checkpoints and logs go; ``None`` trains without writing anything."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (with ``run_dir``)."""
    keep_checkpoints: bool = False
    """Also keep ``checkpoints/step_N.zip`` for every checkpoint, not only ``last.zip``."""
    log_every: int = 50
    resume: bool = True
    """Continue from ``run_dir/checkpoints/last.zip`` if it exists."""
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    device: str = "auto"
    """Device of single-process training; under torchrun each rank takes its local GPU."""


@dataclass
class TrainResult:
    steps: int
    losses: list[float] = field(default_factory=list)
    """Loss at every step of this process (steps run before a resume are not included)."""
    final_loss: float = float("nan")
    run_dir: str | None = None
    seconds: float = 0.0


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate at ``step``: linear warmup, then cosine decay to ``lr * min_lr_ratio``.

    Example:
        >>> c = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.0)
        >>> [round(lr_at(s, c), 3) for s in (0, 9, 10, 55, 100)]
        [0.1, 1.0, 1.0, 0.5, 0.0]
    """
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * coeff)


def _optim_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2 and not getattr(p, "_no_weight_decay", False)]
    ids = {id(p) for p in decay}
    no_decay = [p for p in params if id(p) not in ids]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_tensors(batch: dict[str, np.ndarray], device: torch.device) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in batch.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype == torch.float64:
            t = t.float()
        out[k] = t.to(device, non_blocking=True)
    return out


class _Distributed:
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
            dist.destroy_process_group()


class Trainer:
    """Train ``agent.model`` with ``agent.compute_loss`` on batches from ``agent.make_sampler``.

    Usually reached through ``agent.fit(dataset, TrainConfig(...))``.
    """

    def __init__(self, agent: Agent, config: TrainConfig) -> None:
        if config.steps < 1:
            raise ValueError(f"TrainConfig.steps must be >= 1, got {config.steps}")
        if config.checkpoint_every < 1:
            raise ValueError(f"TrainConfig.checkpoint_every must be >= 1, got {config.checkpoint_every}")
        self.agent = agent
        self.config = config
        self.run_dir = Path(config.run_dir) if config.run_dir else None

    # ---------------------------------------------------------------- checkpoints
    @property
    def last_checkpoint(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.zip" if self.run_dir else None

    def _save(self, step: int, optimizer: torch.optim.Optimizer, scaler: Any, sampler_state: dict) -> None:
        assert self.run_dir is not None
        opt_state = optimizer.state_dict()
        opt_tensors: dict[str, torch.Tensor] = {}
        opt_meta: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
        for pid, st in opt_state["state"].items():
            meta = {}
            for k, v in st.items():
                if torch.is_tensor(v):
                    opt_tensors[f"{pid}.{k}"] = v
                else:
                    meta[k] = v
            opt_meta["state"][str(pid)] = meta
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        sections = self.agent.checkpoint_sections()
        sections["trainer"] = {
            "step": step,
            "config": asdict(self.config),
            "optimizer": opt_meta,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "sampler": sampler_state,
            "numpy_rng": _numpy_rng_state(),
        }
        tensors = {"model": self.agent.model.state_dict(), "optimizer": opt_tensors, "rng": rng}
        data = encode_checkpoint("agent", sections, tensors)
        atomic_write_bytes(self.run_dir / "checkpoints" / "last.zip", data)
        if self.config.keep_checkpoints:
            atomic_write_bytes(self.run_dir / "checkpoints" / f"step_{step}.zip", data)

    def _restore(self, optimizer: torch.optim.Optimizer, scaler: Any) -> int:
        from tt_agents.agent import load_weights

        path = self.last_checkpoint
        assert path is not None
        ckpt = read_checkpoint(path)
        tr = ckpt.manifest.get("trainer")
        if not isinstance(tr, dict):
            raise CheckpointError(f"{path}: no trainer state to resume from")
        info = ckpt.manifest.get("agent", {})
        if info.get("class") != type(self.agent).__name__:
            raise CheckpointError(
                f"{path}: was written by a {info.get('class')}, cannot resume a {type(self.agent).__name__}"
            )
        self.agent._load_preprocessing_state(info.get("preprocessing") or {})
        load_weights(self.agent.model, ckpt.tensors["model"], path)
        opt_t = ckpt.tensors.get("optimizer", {})
        meta = tr["optimizer"]
        state = {}
        for pid, m in meta["state"].items():
            st = dict(m)
            for key, t in opt_t.items():
                p, _, name = key.partition(".")
                if p == pid:
                    st[name] = t.to(self.agent.device) if name != "step" else t
            state[int(pid)] = st
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        if scaler is not None and tr.get("scaler"):
            scaler.load_state_dict(tr["scaler"])
        rng = ckpt.tensors.get("rng", {})
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            states = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if len(states) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(states)
        _set_numpy_rng_state(tr.get("numpy_rng"))
        return int(tr["step"])

    # ---------------------------------------------------------------- the loop
    def fit(self, dataset: Any) -> TrainResult:
        cfg = self.config
        ddp = _Distributed(cfg.device)
        try:
            return self._fit(dataset, ddp)
        finally:
            ddp.close()

    def _fit(self, dataset: Any, ddp: _Distributed) -> TrainResult:
        cfg, agent = self.config, self.agent
        set_seed(cfg.seed + ddp.rank)
        agent.device = ddp.device
        agent.model.to(ddp.device)
        model: nn.Module = agent.model
        if ddp.enabled:
            model = nn.parallel.DistributedDataParallel(
                agent.model, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None
            )
        sampler = agent.make_sampler(dataset, cfg.batch_size, cfg.seed, ddp.rank, ddp.world_size)

        use_cuda = ddp.device.type == "cuda"
        amp_dtype = None
        if cfg.amp and use_cuda:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        fused = use_cuda
        optimizer = torch.optim.AdamW(
            _optim_groups(agent.model, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=fused
        )

        start = 0
        if self.run_dir is not None and cfg.resume and self.last_checkpoint.exists():  # type: ignore[union-attr]
            start = self._restore(optimizer, scaler)
            if ddp.is_main:
                print(f"resuming from {self.last_checkpoint} at step {start}")

        writer = None
        metrics_file = None
        if self.run_dir is not None and ddp.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start if start else None)
            metrics_file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
            (self.run_dir / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))

        result = TrainResult(steps=cfg.steps, run_dir=str(self.run_dir) if self.run_dir else None)
        bar = tqdm(
            total=cfg.steps,
            initial=start,
            desc=f"train {type(agent).__name__}",
            disable=not (cfg.progress and ddp.is_main),
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        t_log, samples_since = t0, 0
        model.train()
        try:
            for step in range(start, cfg.steps):
                lr = lr_at(step, cfg)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                batch = _to_tensors(sampler.sample(step), ddp.device)
                ctx = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with ctx:
                    loss, metrics = agent.compute_loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {step}; lower TrainConfig.lr or check the data for NaN/Inf"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(agent.model.parameters(), cfg.grad_clip)
                    if cfg.grad_clip > 0
                    else torch.tensor(0.0)
                )
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                loss_value = float(loss.detach())
                result.losses.append(loss_value)
                samples_since += cfg.batch_size * ddp.world_size
                done = step + 1
                if ddp.is_main and (done % cfg.log_every == 0 or done == cfg.steps):
                    now = time.perf_counter()
                    throughput = samples_since / max(now - t_log, 1e-9)
                    t_log, samples_since = now, 0
                    row = {
                        "step": done,
                        "loss": loss_value,
                        "lr": lr,
                        "grad_norm": float(grad_norm),
                        "samples_per_s": throughput,
                        **metrics,
                    }
                    bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{throughput:.0f}")
                    if writer is not None:
                        for k, v in row.items():
                            if k != "step":
                                writer.add_scalar(f"train/{k}", v, done)
                    if metrics_file is not None:
                        metrics_file.write(json.dumps(row) + "\n")
                bar.update(1)
                if self.run_dir is not None and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                    if ddp.is_main:
                        self._save(done, optimizer, scaler, {"seed": cfg.seed, "next_batch": done})
                    ddp.barrier()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
            if metrics_file is not None:
                metrics_file.close()
        model.eval()
        result.final_loss = result.losses[-1] if result.losses else float("nan")
        result.seconds = time.perf_counter() - t0
        if self.run_dir is not None and ddp.is_main:
            agent.save(self.run_dir / "final.zip")
            plot_training_curve(self.run_dir / "metrics.jsonl", self.run_dir / "training_curve.png")
        return result


def _numpy_rng_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": keys.tolist(), "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_rng_state(state: dict[str, Any] | None) -> None:
    if state:
        np.random.set_state(
            (state["name"], np.array(state["keys"], dtype=np.uint32), state["pos"], state["has_gauss"], state["cached"])
        )


def plot_training_curve(metrics_path: Path, out_path: Path) -> None:
    """Plot loss against step from ``metrics.jsonl`` into a PNG (skipped if there are no rows)."""
    rows = []
    with contextlib.suppress(FileNotFoundError):
        for line in metrics_path.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a torn last line after a crash
                rows.append(json.loads(line))
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(out_path.parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
