"""The one training loop of molgiae: epochs, optimiser steps, distributed loss weighting, progress,
periodic checkpoints, the time limit and early stopping. What is trained, and on what, is a
:class:`Task`'s business: the autoencoder (:class:`molgiae.training.AutoencoderTask`) and the
property heads (:class:`molgiae.finetune.loop.PropertyTask`) each give a loss per step and say what
happens at the end of an epoch; the engine does the rest the same way for both.

Distributed data parallel: a task's :meth:`Task.loss` returns this rank's loss and its share
``weight`` of the global batch (1 without torchrun); the engine back-propagates
``world_size * weight * loss`` (DDP averages gradients over ranks, so the step is the one a single
process takes on the whole batch) and all-reduces ``weight * loss`` for the logged train loss.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Protocol

import torch

from molgiae.train.distributed import DistInfo


@dataclass
class RunState:
    """Where a run is; saved in training checkpoints (``run_state``) so ``--resume`` goes on exactly."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps done
    epoch_step: int = 0  # steps done in the current epoch
    epoch_seed: int = 0  # seed of the current epoch's batch order
    best_val: float = float("inf")  # the task's best validation figure so far (lower is better)
    seconds: float = 0.0  # training wall time so far (over resumes)
    history: list = field(default_factory=list)  # one row per finished epoch
    # running sums of the current epoch's train loss (molecule-weighted), so that a mid-epoch
    # resume writes the same epoch train loss as an uninterrupted run
    epoch_loss_sum: float = 0.0
    epoch_loss_n: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict) -> "RunState":
        """A state from a checkpoint's ``run_state`` (older files: ``best_val_rmsd``, no loss sums)."""
        saved = dict(saved)
        if "best_val_rmsd" in saved:
            saved.setdefault("best_val", saved.pop("best_val_rmsd"))
        return cls(**{k: saved[k] for k in cls.__dataclass_fields__ if k in saved})

    @property
    def epoch_train_loss(self) -> float:
        return self.epoch_loss_sum / max(1, self.epoch_loss_n)


class Task(Protocol):
    """What the engine trains: the steps of an epoch, their loss, and what an epoch's end does."""

    def epoch_inputs(self, state: RunState) -> tuple[int, Iterable[Any]]:
        """(steps in the whole epoch, the inputs of the steps still to run: from ``state.epoch_step`` on)."""

    def loss(self, item: Any) -> tuple[torch.Tensor, float, int]:
        """One step: (scalar loss of this rank's share, the share's weight in the global batch,
        molecules in the global batch)."""

    def checkpoint(self, state: RunState) -> None:
        """Save a resumable checkpoint (called every ``checkpoint_every`` steps and at a time limit)."""

    def end_epoch(self, state: RunState, train_loss: float) -> bool:
        """Validate, record and save after an epoch (``state.epoch`` already counts it);
        True stops training (early stopping)."""

    def time_limit_reached(self, state: RunState) -> None:
        """The run stops mid-epoch (the checkpoint is already saved): say so, write what is due."""


class Engine:
    """Runs a :class:`Task` for ``epochs`` epochs with one optimiser and schedule.

    ``params``: the parameters whose gradient norm is clipped to ``grad_clip`` (0 = no clipping).
    ``checkpoint_every``: steps between :meth:`Task.checkpoint` calls (0 = never mid-epoch).
    ``progress``: a started rich progress bar with ``epoch`` and ``loss`` fields, or None.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, scheduler, params: list[torch.nn.Parameter], *,
                 epochs: int, grad_clip: float = 0.0, dist_info: DistInfo | None = None,
                 device: torch.device | None = None, checkpoint_every: int = 0,
                 time_limit_minutes: float = 0.0, progress=None):
        self.optimizer, self.scheduler, self.params = optimizer, scheduler, list(params)
        self.epochs, self.grad_clip = epochs, grad_clip
        self.dist = dist_info or DistInfo()
        self.device = device or torch.device("cpu")
        self.checkpoint_every = checkpoint_every
        self.time_limit_minutes = time_limit_minutes
        self.progress = progress

    def fit(self, task: Task, state: RunState) -> RunState:
        """Train until ``state.epoch == epochs``, early stopping, or the time limit; return the state."""
        t_start = time.time() - state.seconds
        deadline = t_start + self.time_limit_minutes * 60 if self.time_limit_minutes else math.inf
        try:
            if state.seconds > 0 and state.epoch < self.epochs and self._past(deadline):
                task.time_limit_reached(state)  # a resumed run that has used its limit: no step beyond it
                return state
            while state.epoch < self.epochs:
                if self._run_epoch(task, state, t_start, deadline):
                    state.seconds = time.time() - t_start
                    task.checkpoint(state)
                    task.time_limit_reached(state)
                    break
                state.seconds = time.time() - t_start
                train_loss = state.epoch_train_loss
                state.epoch += 1
                state.epoch_step = 0
                state.epoch_loss_sum, state.epoch_loss_n = 0.0, 0
                if task.end_epoch(state, train_loss):
                    break
        finally:
            if self.progress:
                self.progress.stop()
        return state

    def _run_epoch(self, task: Task, state: RunState, t_start: float, deadline: float) -> bool:
        """The remaining steps of the current epoch; True when the time limit stopped it."""
        total, inputs = task.epoch_inputs(state)
        bar = None
        if self.progress:
            bar = self.progress.add_task("train", total=total, epoch=state.epoch + 1, loss=float("nan"))
            self.progress.update(bar, completed=state.epoch_step)
        try:
            for item in inputs:
                loss, weight, n_molecules = task.loss(item)
                step_loss = self.optimizer_step(loss, weight)
                state.step += 1
                state.epoch_step += 1
                state.epoch_loss_sum += step_loss * n_molecules
                state.epoch_loss_n += n_molecules
                if bar is not None:
                    self.progress.update(bar, advance=1, loss=state.epoch_train_loss)
                if self.checkpoint_every and state.step % self.checkpoint_every == 0:
                    state.seconds = time.time() - t_start
                    task.checkpoint(state)
                if self._past(deadline):
                    return True
            return False
        finally:
            if bar is not None:
                self.progress.remove_task(bar)

    def optimizer_step(self, loss: torch.Tensor, weight: float = 1.0) -> float:
        """Back-propagate, clip, step the optimiser and the schedule; the global batch's loss."""
        world = self.dist.world_size
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (world * weight)).backward()
        step_loss = loss.detach() * weight
        if self.dist.enabled:
            step_loss = step_loss.reshape(1)
            torch.distributed.all_reduce(step_loss)
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        return float(step_loss)

    def _past(self, deadline: float) -> bool:
        """Whether the time limit has passed (under torchrun: on any rank, so all stop together)."""
        over = time.time() > deadline
        if self.dist.enabled and math.isfinite(deadline):
            flag = torch.tensor([float(over)], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            over = bool(flag.item() > 0)
        return over
