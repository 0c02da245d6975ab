"""The one training loop every agent uses, for each of its stages (see :mod:`tt_agents.stages`).

Gradient stages: AdamW with decoupled weight decay on matrices only, linear warmup then cosine decay, gradient
clipping, mixed precision on GPU (bf16 where supported, else fp16 with a grad scaler), a
progress bar with loss and throughput, TensorBoard scalars plus a crash-safe ``metrics.jsonl``,
periodic atomic checkpoints, exact resume after a kill, seeded determinism, and data-parallel
training under ``torchrun`` (PyTorch DDP; NCCL on GPUs, gloo on CPUs). Gradient-free stages
(CMA-ES, random search) get the same progress bar, logs, checkpoints and resume, with their own
``step`` per generation.

Stages run in the order the agent declares them (``agent.fit(dataset)``), or one at a time
(``agent.fit(dataset, stage="vae")``); a run directory holds one checkpoint for the whole agent,
which records every finished stage and the state of the current one, so a run killed in any
stage resumes in that stage, at the step of its last checkpoint.

A run directory belongs to one run: resuming it with other settings than it was started with (another
learning rate, network, dataset; only a larger step budget is allowed) is refused with a
:class:`ResumeError` naming the fields that differ, so is asking for fewer steps than it has done, and
nothing a previous run wrote is overwritten unless ``TrainConfig.overwrite`` starts it over.

SIGINT (Ctrl-C) and SIGTERM end training cleanly: the current step finishes, a checkpoint is written
(atomically) and :class:`TrainingInterrupted` (a ``KeyboardInterrupt``) is raised, naming the
checkpoint; calling ``fit`` again with the same settings resumes from it. A second signal stops at
once. Every stage, gradient or search, gets the same handling.

Resuming is exact because batch ``i`` is a pure function of ``(seed, rank, i)`` (see
:class:`~tt_agents.data.WindowSampler`), and a checkpoint holds the weights, the optimizer's
moments (or the search's state), the scheduler's step, the grad scaler and the RNG states of
every rank.

A run directory looks like::

    run_dir/
      checkpoints/last.zip      # latest (agent + trainer state), loadable with tt_agents.load_agent
      checkpoints/step_N.zip    # kept if keep_checkpoints is set
      final.zip                 # the trained agent
      train_config.json         # the full resolved config: agent class and config, act settings, dataset, stages
      metrics.jsonl             # one JSON line per log step, flushed as written (with "stage" when
                                # the agent has several)
      tb/                       # TensorBoard event files
      training_curve.png        # loss over steps (one panel per stage)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from tt_agents.checkpoint import CheckpointError, encode_checkpoint, read_checkpoint
from tt_agents.distributed import Distributed, numpy_rng_states, restore_rng, rng_tensors
from tt_agents.stages import GradientStage, SearchStage, Stage
from tt_agents.utils import atomic_write_bytes, config_to_dict, set_seed

__all__ = ["TrainConfig", "TrainConfigError", "ResumeError", "TrainingInterrupted", "TrainResult", "Trainer",
           "check_run_dir", "lr_at"]


class TrainConfigError(ValueError):
    """A :class:`TrainConfig` value that cannot train (the message names the field and the value)."""


class ResumeError(TrainConfigError):
    """A run directory that cannot be resumed as asked: other settings, fewer steps, or files in the way."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM after finishing a step, with a checkpoint written (with a ``run_dir``).

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: steps done in ``stage`` when it stopped.
        steps: that stage's step budget.
        stage: the stage it stopped in.
        checkpoint: the checkpoint written (``None`` without a ``run_dir``: nothing was saved).
    """

    def __init__(self, signum: int, step: int, steps: int, stage: str, checkpoint: Path | None) -> None:
        self.signum, self.step, self.steps, self.stage, self.checkpoint = signum, step, steps, stage, checkpoint
        where = f"checkpoint {checkpoint}" if checkpoint is not None else "nothing saved (no run_dir)"
        super().__init__(f"training stopped by {signal.Signals(signum).name} after step {step} of {steps} "
                         f"(stage {stage!r}); {where}")

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by this signal: 130 for SIGINT, 143 for SIGTERM."""
        return 128 + int(self.signum)


@dataclass
class TrainConfig:
    """Hyperparameters of the shared training loop (per-agent ones live in the agent's config)."""

    steps: int = 10_000
    """Optimizer steps."""
    batch_size: int = 64
    """Samples per step on each rank (the global batch is ``batch_size * world_size``)."""
    lr: float = 6e-4
    """Peak learning rate, reached after the warmup (each agent's presets set their own)."""
    weight_decay: float = 0.1
    """Applied to weight matrices only, never to biases, norms or embeddings' 1-d params."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's moment decay rates."""
    warmup_steps: int = 100
    """Linear warmup from 0 to ``lr``."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at ``lr * min_lr_ratio``."""
    grad_clip: float = 1.0
    """Clip the global gradient norm; 0 disables."""
    seed: int = 0
    """Seeds the model's initialisation and the data stream."""
    run_dir: str | None = None
    """Where checkpoints and logs go; ``None`` trains without writing anything."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (with ``run_dir``)."""
    keep_checkpoints: bool = False
    """Also keep ``checkpoints/step_N.zip`` for every checkpoint, not only ``last.zip``."""
    log_every: int = 50
    """Steps between rows of ``metrics.jsonl`` and TensorBoard."""
    resume: bool = True
    """Continue from ``run_dir/checkpoints/last.zip`` if it exists (with the same settings, or more steps)."""
    overwrite: bool = False
    """Start over in a ``run_dir`` that holds an earlier run, deleting its files first; without it such a
    run is resumed (``resume``) or refused."""
    amp: bool = True
    """Mixed precision on CUDA (ignored on CPU)."""
    progress: bool = True
    """Show a progress bar (rank 0 only)."""
    device: str = "auto"
    """Device of single-process training; under torchrun each rank takes its local GPU."""

    def check(self, where: str = "TrainConfig") -> None:
        """Raise :class:`TrainConfigError` naming the first field that cannot train.

        Example:
            >>> TrainConfig(lr=-1).check()
            Traceback (most recent call last):
            ...
            tt_agents.trainer.TrainConfigError: TrainConfig.lr must be > 0, got -1
        """
        rules = [
            ("steps", self.steps >= 1, ">= 1"),
            ("batch_size", self.batch_size >= 1, ">= 1"),
            ("lr", self.lr > 0 and math.isfinite(self.lr), "> 0"),
            ("weight_decay", self.weight_decay >= 0, ">= 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "two values in [0, 1)"),
            ("warmup_steps", self.warmup_steps >= 0, ">= 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "in [0, 1]"),
            ("grad_clip", self.grad_clip >= 0, ">= 0 (0 disables clipping)"),
            ("checkpoint_every", self.checkpoint_every >= 1, ">= 1"),
            ("log_every", self.log_every >= 1, ">= 1"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise TrainConfigError(f"{where}.{name} must be {rule}, got {getattr(self, name)!r}")


@dataclass
class TrainResult:
    steps: int
    """The stage's step budget (``TrainConfig.steps``)."""
    losses: list[float] = field(default_factory=list)
    """Loss at every step of this process (steps run before a resume are not included)."""
    final_loss: float = float("nan")
    run_dir: str | None = None
    seconds: float = 0.0
    stage: str = ""
    """The stage this result is of (the last one trained)."""
    stages: dict[str, TrainResult] = field(default_factory=dict)
    """Every stage trained by this call, in order (the result itself is the last one's)."""


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


RUN_FILES = ("checkpoints", "final.zip", "metrics.jsonl", "tb", "train_config.json", "training_curve.png", "eval.json")
"""What a run writes into its run_dir: ``overwrite`` deletes these, and nothing else there."""

RESUMABLE_FIELDS = frozenset({"steps", "run_dir", "device", "resume", "overwrite", "progress", "log_every",
                              "checkpoint_every", "keep_checkpoints"})
"""TrainConfig fields a resumed run may change (``steps`` only upwards); any other difference is refused."""


def run_config(agent_class: str, agent_config: Any, act: Any, dataset: str | None,
               configs: Mapping[str, TrainConfig]) -> dict[str, Any]:
    """The full resolved config of a run, as ``train_config.json`` and its checkpoints record it.

    Example:
        >>> run_config("BCPolicy", None, None, "hopper/mine-v0", {"model": TrainConfig(lr=1e-3)})["train"]["model"]["lr"]
        0.001
    """
    return json.loads(json.dumps({
        "agent_class": agent_class,
        "agent": config_to_dict(agent_config) if agent_config is not None else None,
        "act": config_to_dict(act) if act is not None else None,
        "dataset": dataset,
        "train": {n: asdict(c) for n, c in configs.items()},
    }))


def _saved_run_config(manifest: dict[str, Any], stages: list[str]) -> dict[str, Any]:
    """The run config a checkpoint holds (rebuilt from its sections for checkpoints written before it was saved)."""
    tr = manifest.get("trainer") or {}
    if isinstance(tr.get("run_config"), dict):
        return tr["run_config"]
    info = manifest.get("agent") or {}
    train = tr.get("configs") or ({tr.get("stage", stages[0]): tr["config"]} if isinstance(tr.get("config"), dict)
                                  else {})
    return {"agent_class": info.get("class"), "agent": info.get("config"), "act": info.get("act"),
            "dataset": (info.get("data") or {}).get("dataset_id"), "train": train}


def _differences(saved: Any, current: Any, name: str) -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        out = []
        for k in sorted(set(saved) | set(current), key=str):
            out += _differences(saved.get(k), current.get(k), f"{name}.{k}" if name else str(k))
        return out
    return [] if saved == current else [f"{name} {json.dumps(saved)} -> {json.dumps(current)}"]


def check_run_dir(run_dir: str | Path | None, current: dict[str, Any], stages: list[str], resume: bool = True,
                  overwrite: bool = False) -> Any:
    """Refuse to start a run in ``run_dir`` that would surprise; return the checkpoint to resume from, if any.

    - ``overwrite``: nothing is refused (the earlier run's files are deleted when training starts); returns ``None``.
    - a checkpoint and ``resume``: its run config must equal ``current`` (see :func:`run_config`) in every
      field but those of :data:`RESUMABLE_FIELDS` of the ``stages`` being trained, the agent's act settings,
      and a dataset that either side does not know; its step must not be past the stage's ``steps``.
    - no checkpoint to resume (or ``resume=False``) but files of an earlier run: refused.

    Args:
        run_dir: the run directory (``None``: nothing to check).
        current: the run config asked for (:func:`run_config`); ``current["dataset"]`` may be ``None``
            (checked once the dataset is loaded).
        stages: the stages this call trains.

    Raises:
        ResumeError: with one line naming the fields that differ (``train.lr 0.0006 -> 0.01``) and what to do.
    """
    if run_dir is None or overwrite:
        return None
    run_dir = Path(run_dir)
    last = run_dir / "checkpoints" / "last.zip"
    start_over = "start over with --overwrite (overwrite=True deletes the earlier run's files) or use another --run-dir"
    if not (resume and last.exists()):
        found = [f for f in RUN_FILES if (run_dir / f).exists()]
        if found:
            why = "resume=False (--train.no-resume)" if last.exists() else "it has no checkpoint to resume"
            raise ResumeError(f"{run_dir} holds an earlier run ({', '.join(found)}) that would be overwritten, "
                              f"and {why}: {start_over}")
        return None
    ckpt = read_checkpoint(last)
    tr = ckpt.manifest.get("trainer")
    if not isinstance(tr, dict):
        raise CheckpointError(f"{last}: no trainer state to resume from")
    saved = _saved_run_config(ckpt.manifest, stages)
    diffs = _differences(saved.get("agent_class"), current.get("agent_class"), "agent class")
    diffs += _differences(saved.get("agent"), current.get("agent"), "agent")
    if saved.get("dataset") is not None and current.get("dataset") is not None:
        diffs += _differences(saved["dataset"], current["dataset"], "dataset")
    multi = len(current.get("train", {})) > 1
    for stage in stages:
        mine, theirs = (current.get("train") or {}).get(stage), (saved.get("train") or {}).get(stage)
        if mine is None or theirs is None:
            continue
        diffs += _differences({k: v for k, v in theirs.items() if k not in RESUMABLE_FIELDS},
                              {k: v for k, v in mine.items() if k not in RESUMABLE_FIELDS},
                              f"train.{stage}" if multi else "train")
    if diffs:
        raise ResumeError(f"{run_dir} holds a run with other settings ({'; '.join(diffs)}): resume it with its "
                          f"own settings, {start_over}")
    stage, step = tr.get("stage", stages[0]), int(tr.get("step", 0))
    asked = ((current.get("train") or {}).get(stage) or {}).get("steps")
    if stage in stages and asked is not None and step > asked:
        where = f" of stage {stage!r}" if multi else ""
        raise ResumeError(f"{run_dir} has trained {step} steps{where}, more than the {asked} asked for: ask for at "
                          f"least {step} (--train.steps), or {start_over}")
    return ckpt


class _StopSignals:
    """While entered (in the main thread), SIGINT and SIGTERM only set :attr:`signum`, which the loop reads
    after each step; a second signal raises ``KeyboardInterrupt`` at once. Handlers are restored on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:  # asked twice: stop now, without a checkpoint
            self._restore()
            raise KeyboardInterrupt
        self.signum = signum

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> _StopSignals:
        self.signum = None
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        self._restore()


@dataclass
class _Resume:
    """What a run directory's checkpoint says about the stages."""

    stage: str | None
    """The stage the checkpoint was written in."""
    step: int
    """Steps done in that stage."""
    done: dict[str, int]
    """Finished stages and their steps."""
    manifest: dict[str, Any]
    tensors: dict[str, dict[str, torch.Tensor]]
    path: Path


class Trainer:
    """Train an agent's stages (``agent.stages()``) with the shared loop.

    Usually reached through ``agent.fit(dataset, TrainConfig(...), stage=None)``.

    Args:
        agent: any :class:`tt_agents.Agent`.
        config: the settings of every stage trained (one :class:`TrainConfig`), or a mapping from
            stage names to settings (stages not in it get ``TrainConfig()``). The run-level fields
            (``run_dir``, ``seed``, ``device``, ``resume``, ``progress``, logging and checkpoint
            cadence) must agree between the stages of one call.
        stage: train only this stage (the earlier ones must be trained already: in this agent, or
            in the run directory's checkpoint); ``None`` trains every stage in order.
    """

    _RUN_FIELDS = ("run_dir", "seed", "device", "resume", "overwrite", "amp", "progress")

    def __init__(
        self, agent: Any, config: TrainConfig | Mapping[str, TrainConfig] | None = None, stage: str | None = None
    ) -> None:
        self.agent = agent
        stages: list[Stage] = list(agent.stages())
        names = [s.name for s in stages]
        declared = list(getattr(agent, "stage_names", names))
        if not stages or len(set(names)) != len(names) or names != declared:
            raise ValueError(
                f"{type(agent).__name__}.stages() must name at least one stage, each once, as its stage_names "
                f"{declared} say; got {names}"
            )
        if stage is not None and stage not in names:
            raise ValueError(f"{type(agent).__name__} has no stage {stage!r}; its stages are {names}")
        self.all_stages = stages
        self.stages = stages if stage is None else [s for s in stages if s.name == stage]
        if isinstance(config, Mapping):
            unknown = sorted(set(config) - set(names))
            if unknown:
                raise ValueError(f"TrainConfig given for unknown stages {unknown}; {type(agent).__name__}'s stages are {names}")
            self.configs = {n: config.get(n) or TrainConfig() for n in names}
        else:
            self.configs = {n: config or TrainConfig() for n in names}
        for s in self.stages:
            self.configs[s.name].check("TrainConfig" if len(stages) == 1 else f"TrainConfig of stage {s.name!r}")
        first = self.configs[self.stages[0].name]
        for s in self.stages[1:]:
            for f in self._RUN_FIELDS:
                if getattr(self.configs[s.name], f) != getattr(first, f):
                    raise ValueError(
                        f"stages {self.stages[0].name!r} and {s.name!r} of one run must share TrainConfig.{f}; "
                        f"got {getattr(first, f)!r} and {getattr(self.configs[s.name], f)!r}"
                    )
        self.config = first
        """The run-level settings (those of the first stage trained)."""
        self.run_dir = Path(first.run_dir) if first.run_dir else None
        self.multi_stage = len(stages) > 1
        self._dataset: Any = None  # what fit() trains on, for the stages' on_checkpoint hooks
        self._signals = _StopSignals()

    def run_config(self) -> dict[str, Any]:
        """The full resolved config of this run (written to ``train_config.json`` and into every checkpoint)."""
        agent = self.agent
        return run_config(type(agent).__name__, agent.config, getattr(agent, "act", None),
                          (getattr(agent, "data_info", None) or {}).get("dataset_id"), self.configs)

    # ---------------------------------------------------------------- checkpoints
    @property
    def last_checkpoint(self) -> Path | None:
        return self.run_dir / "checkpoints" / "last.zip" if self.run_dir else None

    def _save(self, ddp: Distributed, stage: Stage, step: int, done: dict[str, int],
              state: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]]) -> None:
        """Write ``checkpoints/last.zip`` (a collective call under DDP: every rank's RNG is gathered)."""
        rng = rng_tensors(ddp)
        numpy_rng = numpy_rng_states(ddp)
        if ddp.is_main:
            assert self.run_dir is not None
            sections = self.agent.checkpoint_sections()
            sections["trainer"] = {
                "step": step,
                "config": asdict(self.configs[stage.name]),
                "run_config": self.run_config(),
                "stage": stage.name,
                "stages_done": done,
                **state,
                "numpy_rng": numpy_rng[0],
            }
            if len(numpy_rng) > 1:
                sections["trainer"]["numpy_rng_ranks"] = numpy_rng[1:]
            data = encode_checkpoint("agent", sections, {"model": self.agent.model.state_dict(), **tensors, "rng": rng})
            atomic_write_bytes(self.run_dir / "checkpoints" / "last.zip", data)
            if self.config.keep_checkpoints:
                atomic_write_bytes(self.run_dir / "checkpoints" / f"step_{step}.zip", data)
            if stage.on_checkpoint is not None and self._dataset is not None:
                try:
                    stage.on_checkpoint(self._dataset, self.run_dir, step)
                except Exception as e:  # a figure must never cost the run
                    warnings.warn(f"stage {stage.name!r}: on_checkpoint failed at step {step}: {type(e).__name__}: {e}",
                                  stacklevel=2)
        ddp.barrier()

    def _read_resume(self) -> _Resume | None:
        path = self.last_checkpoint
        ckpt = check_run_dir(self.run_dir, self.run_config(), [s.name for s in self.stages], self.config.resume,
                             self.config.overwrite)
        if ckpt is None:
            return None
        assert path is not None
        tr = ckpt.manifest["trainer"]
        # checkpoints of one-stage training before stages existed: the agent's first (only) stage
        stage = tr.get("stage", self.all_stages[0].name)
        if stage not in {s.name for s in self.all_stages}:
            raise CheckpointError(f"{path}: was written in stage {stage!r}, which {type(self.agent).__name__} does not have")
        self.agent._restore_training_state(ckpt.manifest, ckpt.tensors, path)
        return _Resume(stage, int(tr["step"]), dict(tr.get("stages_done") or {}), ckpt.manifest, ckpt.tensors, path)

    # ---------------------------------------------------------------- the loop
    def fit(self, dataset: Any) -> TrainResult:
        """Train (or resume) every stage asked for.

        Raises:
            ResumeError: the run directory holds another run (see :func:`check_run_dir`).
            TrainingInterrupted: SIGINT or SIGTERM arrived; the checkpoint it names resumes the run.
        """
        self._dataset = dataset
        ddp = Distributed(self.config.device)
        try:
            with self._signals:
                return self._fit(dataset, ddp)
        finally:
            ddp.close()

    def _start_over(self, ddp: Distributed) -> None:
        """``overwrite``: delete what an earlier run wrote into the run directory (and nothing else)."""
        if self.run_dir is not None and self.config.overwrite and ddp.is_main:
            for name in RUN_FILES:
                path = self.run_dir / name
                if path.is_dir():
                    shutil.rmtree(path)
                else:
                    path.unlink(missing_ok=True)
        ddp.barrier()

    def _stop_signal(self, ddp: Distributed) -> int:
        """The signal that asked training to stop (0: none); under DDP, every rank stops at the same step."""
        signum = self._signals.signum or 0
        if ddp.enabled:
            import torch.distributed as dist

            flag = torch.tensor([signum], device=ddp.device if ddp.device.type == "cuda" else "cpu")
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            signum = int(flag.item())
        return signum

    def _after_step(self, ddp: Distributed, stage: Stage, cfg: TrainConfig, done_steps: int, done: dict[str, int],
                    state_fn: Any) -> None:
        """Checkpoint on schedule; on SIGINT/SIGTERM checkpoint now and raise :class:`TrainingInterrupted`.

        ``state_fn()`` returns the stage's ``(state, tensors)`` for the checkpoint (only called when one is written).
        """
        scheduled = done_steps % cfg.checkpoint_every == 0 or done_steps == cfg.steps
        signum = self._stop_signal(ddp) if done_steps < cfg.steps else 0
        if self.run_dir is not None and (scheduled or signum):
            finished = {**done, stage.name: done_steps} if done_steps == cfg.steps else done
            state, tensors = state_fn()
            self._save(ddp, stage, done_steps, finished, state, tensors)
        if signum:
            raise TrainingInterrupted(signum, done_steps, cfg.steps, stage.name,
                                      self.last_checkpoint if self.run_dir is not None else None)

    def _fit(self, dataset: Any, ddp: Distributed) -> TrainResult:
        agent = self.agent
        agent.device = ddp.device
        agent.model.to(ddp.device)
        self._start_over(ddp)
        resume = self._read_resume()
        done = dict(resume.done) if resume else {}
        if resume is not None and resume.stage not in done:
            done_before = [s.name for s in self.all_stages[: [s.name for s in self.all_stages].index(resume.stage)]]
            done.update({n: done.get(n, 0) for n in done_before})
        logger = _Logger(self.run_dir, ddp.is_main, self.multi_stage)
        results: dict[str, TrainResult] = {}
        try:
            for stage in self.stages:
                cfg = self.configs[stage.name]
                start = 0
                restore = None
                if resume is not None and stage.name == resume.stage:
                    start, restore = resume.step, resume
                elif stage.name in done:
                    if done[stage.name] < cfg.steps:
                        raise ResumeError(
                            f"{resume.path if resume else self.run_dir}: stage {stage.name!r} finished at "
                            f"{done[stage.name]} steps in this run; to train it for {cfg.steps}, start over with "
                            "--overwrite (overwrite=True) or use another --run-dir"
                        )
                    start = cfg.steps
                if start >= cfg.steps:  # finished in an earlier run (the checkpoint's weights are restored)
                    done[stage.name] = max(start, done.get(stage.name, 0))
                    if restore is not None:
                        resume = None
                    continue
                set_seed(cfg.seed + ddp.rank)
                if start == 0 and stage.setup is not None:
                    stage.setup(dataset)
                if restore is not None:
                    if ddp.is_main:
                        print(f"resuming from {restore.path} at step {start}" +
                              (f" of stage {stage.name!r}" if self.multi_stage else ""))
                    logger.drop_rows_after(stage.name, start)
                logger.open(start, self.run_config())
                loop = self._gradient_stage if isinstance(stage, GradientStage) else self._search_stage
                result = loop(stage, cfg, dataset, ddp, start, restore, done, logger)
                done[stage.name] = cfg.steps
                results[stage.name] = result
                resume = None
        finally:
            logger.close()
        agent.model.eval()
        # a run already finished keeps its files as they are (only a missing final.zip is written)
        if self.run_dir is not None and ddp.is_main and (results or not (self.run_dir / "final.zip").exists()):
            agent.save(self.run_dir / "final.zip")
            plot_training_curve(self.run_dir / "metrics.jsonl", self.run_dir / "training_curve.png")
        if not results:  # every stage was finished already
            last = self.stages[-1]
            return TrainResult(steps=self.configs[last.name].steps, run_dir=str(self.run_dir), stage=last.name)
        final = dataclasses.replace(list(results.values())[-1])
        final.stages = results
        return final

    def _bar(self, stage: Stage, cfg: TrainConfig, start: int, ddp: Distributed) -> tqdm:
        desc = f"train {type(self.agent).__name__}" + (f" [{stage.name}]" if self.multi_stage else "")
        return tqdm(total=cfg.steps, initial=start, desc=desc, disable=not (cfg.progress and ddp.is_main),
                    dynamic_ncols=True)

    def _gradient_stage(self, stage: GradientStage, cfg: TrainConfig, dataset: Any, ddp: Distributed, start: int,
                        restore: _Resume | None, done: dict[str, int], logger: _Logger) -> TrainResult:
        agent = self.agent
        module = stage.module
        # only this stage's parameters learn; the modules of other stages stay as they are (and in eval mode)
        frozen = [p for p in agent.model.parameters() if p.requires_grad and all(p is not q for q in module.parameters())]
        for p in frozen:
            p.requires_grad_(False)
        model: nn.Module = module
        if ddp.enabled:
            model = nn.parallel.DistributedDataParallel(
                module, device_ids=[ddp.device.index] if ddp.device.type == "cuda" else None
            )
        sampler = stage.make_sampler(dataset, cfg.batch_size, cfg.seed, ddp.rank, ddp.world_size)
        use_cuda = ddp.device.type == "cuda"
        amp_dtype = None
        if cfg.amp and use_cuda:
            amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        optimizer = torch.optim.AdamW(_optim_groups(module, cfg.weight_decay), lr=cfg.lr, betas=cfg.betas, fused=use_cuda)
        if restore is not None:
            tr = restore.manifest["trainer"]
            _load_optimizer(optimizer, tr["optimizer"], restore.tensors.get("optimizer", {}), ddp.device)
            if scaler is not None and tr.get("scaler"):
                scaler.load_state_dict(tr["scaler"])
            restore_rng(restore.tensors.get("rng", {}), tr, ddp)

        result = TrainResult(steps=cfg.steps, run_dir=str(self.run_dir) if self.run_dir else None, stage=stage.name)
        bar = self._bar(stage, cfg, start, ddp)
        t0 = time.perf_counter()
        t_log, samples_since = t0, 0
        agent.model.eval()
        module.train()
        try:
            for step in range(start, cfg.steps):
                lr = lr_at(step, cfg)
                for g in optimizer.param_groups:
                    g["lr"] = lr
                batch = _to_tensors(sampler.sample(step), ddp.device)
                ctx = torch.autocast(device_type="cuda", dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
                with ctx:
                    loss, metrics = stage.loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"loss became {loss.item()} at step {step}"
                        + (f" of stage {stage.name!r}" if self.multi_stage else "")
                        + "; lower TrainConfig.lr or check the data for NaN/Inf"
                    )
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.unscale_(optimizer)
                else:
                    loss.backward()
                grad_norm = (
                    torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
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
                done_steps = step + 1
                if ddp.is_main and (done_steps % cfg.log_every == 0 or done_steps == cfg.steps):
                    now = time.perf_counter()
                    throughput = samples_since / max(now - t_log, 1e-9)
                    t_log, samples_since = now, 0
                    row = {"step": done_steps, "loss": loss_value, "lr": lr, "grad_norm": float(grad_norm),
                           "samples_per_s": throughput, **metrics}
                    bar.set_postfix(loss=f"{loss_value:.4f}", samples_s=f"{throughput:.0f}")
                    logger.row(stage.name, row)
                bar.update(1)

                def state(done_steps: int = done_steps) -> tuple[dict[str, Any], dict[str, Any]]:
                    meta, opt_tensors = _optimizer_state(optimizer)
                    return {"optimizer": meta, "scaler": scaler.state_dict() if scaler is not None else None,
                            "sampler": {"seed": cfg.seed, "next_batch": done_steps}}, {"optimizer": opt_tensors}

                self._after_step(ddp, stage, cfg, done_steps, done, state)
        finally:
            bar.close()
            for p in frozen:
                p.requires_grad_(True)
            module.eval()
        result.final_loss = result.losses[-1] if result.losses else float("nan")
        result.seconds = time.perf_counter() - t0
        return result

    def _search_stage(self, stage: SearchStage, cfg: TrainConfig, dataset: Any, ddp: Distributed, start: int,
                      restore: _Resume | None, done: dict[str, int], logger: _Logger) -> TrainResult:
        search = stage.start(dataset, cfg.seed, ddp.rank, ddp.world_size)
        if restore is not None:
            tr = restore.manifest["trainer"]
            search.load_state_dict(tr.get("search") or {}, restore.tensors.get("search", {}))
            restore_rng(restore.tensors.get("rng", {}), tr, ddp)
        result = TrainResult(steps=cfg.steps, run_dir=str(self.run_dir) if self.run_dir else None, stage=stage.name)
        bar = self._bar(stage, cfg, start, ddp)
        t0 = time.perf_counter()
        try:
            for step in range(start, cfg.steps):
                metrics = dict(search.step(step))
                if "loss" not in metrics:
                    raise KeyError(f"stage {stage.name!r}: Search.step must return a 'loss' metric, got {sorted(metrics)}")
                loss_value = float(metrics.pop("loss"))
                if not math.isfinite(loss_value):
                    raise FloatingPointError(f"the search's loss became {loss_value} at step {step} of stage {stage.name!r}")
                result.losses.append(loss_value)
                done_steps = step + 1
                if ddp.is_main and (done_steps % cfg.log_every == 0 or done_steps == cfg.steps):
                    bar.set_postfix(loss=f"{loss_value:.4f}")
                    logger.row(stage.name, {"step": done_steps, "loss": loss_value, **metrics})
                bar.update(1)

                def state() -> tuple[dict[str, Any], dict[str, Any]]:
                    meta, tensors = search.state_dict()
                    return {"search": meta}, {"search": tensors}

                self._after_step(ddp, stage, cfg, done_steps, done, state)
        finally:
            bar.close()
        result.final_loss = result.losses[-1] if result.losses else float("nan")
        result.seconds = time.perf_counter() - t0
        return result


def _optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimizer's state as JSON (param groups, scalars) and tensors (moments)."""
    opt_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"param_groups": opt_state["param_groups"], "state": {}}
    for pid, st in opt_state["state"].items():
        scalars = {}
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars[k] = v
        meta["state"][str(pid)] = scalars
    return meta, tensors


def _load_optimizer(optimizer: torch.optim.Optimizer, meta: dict[str, Any], tensors: dict[str, torch.Tensor],
                    device: torch.device) -> None:
    state = {}
    for pid, scalars in meta["state"].items():
        st = dict(scalars)
        for key, t in tensors.items():
            p, _, name = key.partition(".")
            if p == pid:
                st[name] = t.to(device) if name != "step" else t
        state[int(pid)] = st
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


class _Logger:
    """TensorBoard scalars and the crash-safe ``metrics.jsonl`` of a run (rank 0 only)."""

    def __init__(self, run_dir: Path | None, is_main: bool, multi_stage: bool) -> None:
        self.run_dir = run_dir if is_main else None
        self.multi_stage = multi_stage
        self.writer: Any = None
        self.file: Any = None

    def drop_rows_after(self, stage: str, step: int) -> None:
        """Forget logged rows past the checkpoint being resumed (they are about to be logged again)."""
        if self.run_dir is None or not (self.run_dir / "metrics.jsonl").exists():
            return
        kept = []
        for line in (self.run_dir / "metrics.jsonl").read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a torn last line after a crash
                continue
            if row.get("stage", stage) == stage and row.get("step", 0) > step:
                continue
            kept.append(line + "\n")
        atomic_write_bytes(self.run_dir / "metrics.jsonl", "".join(kept).encode())

    def open(self, start: int, config: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        self.close()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=start if start else None)
        self.file = open(self.run_dir / "metrics.jsonl", "a", buffering=1)  # noqa: SIM115
        (self.run_dir / "train_config.json").write_text(json.dumps(config, indent=1))

    def row(self, stage: str, row: dict[str, Any]) -> None:
        if self.run_dir is None:
            return
        prefix = stage if self.multi_stage else "train"
        for k, v in row.items():
            if k != "step":
                self.writer.add_scalar(f"{prefix}/{k}", v, row["step"])
        if self.multi_stage:
            row = {"stage": stage, **row}
        self.file.write(json.dumps(row) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.file is not None:
            self.file.close()
        self.writer = self.file = None

def plot_training_curve(metrics_path: Path, out_path: Path) -> None:
    """Plot loss against step from ``metrics.jsonl`` into a PNG, one panel per stage (skipped if there are no rows)."""
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

    stages = list(dict.fromkeys(r.get("stage", "") for r in rows))
    fig, axes = plt.subplots(1, len(stages), figsize=(6 * len(stages), 3.5), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        mine = [r for r in rows if r.get("stage", "") == stage]
        ax.plot([r["step"] for r in mine], [r["loss"] for r in mine])
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(f"{out_path.parent.name}: {stage}" if stage else out_path.parent.name)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
