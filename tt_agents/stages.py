"""What an agent trains, in order: named stages, each with its own modules, data, loss and optimizer.

An agent's :meth:`~tt_agents.Agent.stages` returns a list of stages; the shared
:class:`~tt_agents.trainer.Trainer` owns the loop, logging, checkpoints, resume and DDP for every
one of them (PyTorch Lightning's split: a stage says what to compute, the trainer how to run it).

- :class:`GradientStage`: a module trained by AdamW on a loss over sampled batches.
- :class:`SearchStage`: a gradient-free stage (random search, CMA-ES): the trainer calls one
  ``step`` per generation and checkpoints the search's own state (its optimizer and RNG).

A one-stage agent (BC, TT, DT) has one gradient stage called ``"model"`` over its whole network.
A stage reads what earlier stages made from the agent itself (trained weights, fitted
preprocessing), never from a path the user passes by hand.

Example:
    A stage that trains ``agent.model.encoder`` to reconstruct observations::

        GradientStage(
            "encoder",
            module=self.model.encoder,
            loss=lambda encoder, batch: (F.mse_loss(encoder(batch["observations"]), ...), {}),
            make_sampler=lambda dataset, batch_size, seed, rank, world_size: WindowSampler(...),
        )
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

__all__ = ["GradientStage", "SearchStage", "Search", "Stage", "LossFn", "SamplerFactory", "CheckpointHook"]

LossFn = Callable[[nn.Module, dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]
"""``loss(module, batch) -> (loss, metrics)``: ``module`` is exactly what to call (the stage's module,
wrapped in ``DistributedDataParallel`` under torchrun), so gradients are always synchronized."""

CheckpointHook = Callable[[Any, Path, int], None]
"""``on_checkpoint(dataset, run_dir, step)``: called on rank 0 after each checkpoint of the stage is
written (figures of training progress, e.g. the trajectory autoencoder's alphas). It must not change
the agent; an exception in it is reported as a warning and training goes on."""

SamplerFactory = Callable[[Any, int, int, int, int], Any]
"""``make_sampler(dataset, batch_size, seed, rank, world_size)``: an object whose ``sample(i)``
returns batch ``i`` as a dict of arrays, a pure function of ``(seed, rank, i)`` (exact resume)."""


@dataclass
class GradientStage:
    """A stage trained by gradient descent (AdamW, warmup + cosine, clipping, AMP on CUDA).

    Attributes:
        name: the stage's name (``agent.fit(dataset, stage=name)``, ``scripts/train.py ... --stage name``).
        module: the part of ``agent.model`` this stage trains; only its parameters are optimized.
        loss: see :data:`LossFn`.
        make_sampler: see :data:`SamplerFactory`.
        setup: called once with the dataset before the stage's first step (fit normalizers,
            bins, or read what an earlier stage made); not called again when a run resumes,
            since what it fits is saved with the agent.
        on_checkpoint: see :data:`CheckpointHook`.
    """

    name: str
    module: nn.Module
    loss: LossFn
    make_sampler: SamplerFactory
    setup: Callable[[Any], None] | None = None
    on_checkpoint: CheckpointHook | None = None


class Search(Protocol):
    """A running gradient-free optimization, as the trainer drives it (see :class:`SearchStage`)."""

    def step(self, step: int) -> dict[str, float]:
        """Run generation ``step``; write the best solution so far into the agent's model; return
        metrics, with ``"loss"`` the value being minimized (e.g. minus the fitness)."""
        ...

    def state_dict(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """The search's whole state (optimizer, RNG) as JSON-able data and tensors."""
        ...

    def load_state_dict(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned (resume after a kill)."""
        ...


@dataclass
class SearchStage:
    """A gradient-free stage: ``start(dataset, seed, rank, world_size)`` returns a :class:`Search`.

    ``TrainConfig.steps`` counts generations; the optimizer settings of ``TrainConfig`` (lr,
    weight decay, ...) do not apply. Every rank runs the same search (it may split its
    evaluations by ``rank``); rank 0 writes the checkpoints.
    """

    name: str
    start: Callable[[Any, int, int, int], Search]
    setup: Callable[[Any], None] | None = None
    on_checkpoint: CheckpointHook | None = None


Stage = GradientStage | SearchStage
