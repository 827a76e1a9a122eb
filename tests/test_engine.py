"""The one training engine (molgiae/train/engine.py) with a toy task: steps, checkpoints, early
stopping, the time limit, mid-epoch restarts and the saved state of older checkpoints."""
import numpy as np
import torch

from molgiae.train.engine import Engine, RunState


class LineTask:
    """Least squares y = 3x on 40 points in batches of 8: 5 steps an epoch."""

    def __init__(self, stop_after=None):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(40, 1, generator=g)
        self.y = 3 * self.x
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.saved, self.ends, self.stop_after, self.limit_said = [], [], stop_after, False

    def epoch_inputs(self, state):
        order = np.random.default_rng(state.epoch).permutation(40).reshape(5, 8)
        return len(order), iter(order[state.epoch_step:])

    def loss(self, ids):
        ids = torch.from_numpy(ids)
        return ((self.x[ids, 0] * self.w - self.y[ids, 0]) ** 2).mean(), 1.0, len(ids)

    def checkpoint(self, state):
        self.saved.append(state.step)

    def end_epoch(self, state, train_loss):
        self.ends.append((state.epoch, train_loss))
        return self.stop_after is not None and state.epoch >= self.stop_after

    def time_limit_reached(self, state):
        self.limit_said = True


def engine_for(task, epochs, **kw):
    opt = torch.optim.SGD([task.w], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return Engine(opt, sched, [task.w], epochs=epochs, **kw)


def test_engine_trains_counts_steps_and_checkpoints():
    task = LineTask()
    state = engine_for(task, epochs=4, checkpoint_every=3).fit(task, RunState())
    assert (state.epoch, state.step, state.epoch_step) == (4, 20, 0)
    assert task.saved == [3, 6, 9, 12, 15, 18]
    assert [e for e, _ in task.ends] == [1, 2, 3, 4]
    losses = [loss for _, loss in task.ends]
    assert losses[-1] < 0.1 * losses[0]  # the epoch train loss is the molecule-weighted mean of its steps
    assert abs(task.w.item() - 3.0) < 0.1
    assert state.epoch_loss_n == 0 and state.seconds > 0


def test_end_epoch_can_stop_training_early():
    task = LineTask(stop_after=2)
    state = engine_for(task, epochs=10).fit(task, RunState())
    assert state.epoch == 2 and state.step == 10


def test_time_limit_stops_mid_epoch_after_a_checkpoint():
    task = LineTask()
    state = engine_for(task, epochs=3, time_limit_minutes=1e-9).fit(task, RunState())
    assert (state.epoch, state.step, state.epoch_step) == (0, 1, 1)
    assert task.saved == [1] and task.limit_said and task.ends == []


def test_a_resumed_run_past_its_time_limit_trains_no_step():
    task = LineTask()
    state = RunState(epoch_step=2, step=2, seconds=120.0)  # resumed after 2 minutes of training
    engine_for(task, epochs=3, time_limit_minutes=1.0).fit(task, state)
    assert (state.step, state.epoch_step) == (2, 2) and task.limit_said and task.saved == []
    engine_for(task, epochs=1, time_limit_minutes=3.0).fit(task, state)  # a larger limit trains on
    assert (state.epoch, state.step) == (1, 5)


def test_a_restarted_epoch_runs_only_its_remaining_steps_and_keeps_its_loss_sums():
    whole = LineTask()
    engine_for(whole, epochs=1).fit(whole, RunState())
    part = LineTask()
    engine_for(part, epochs=1, time_limit_minutes=1e-9).fit(part, RunState())  # stops after step 1
    state = RunState.from_dict(RunState(epoch_step=1, step=1, epoch_loss_sum=0.0, epoch_loss_n=0).to_dict())
    # the first step's loss and count, as a mid-epoch checkpoint holds them
    first = LineTask()
    first_loss = float(first.loss(np.random.default_rng(0).permutation(40).reshape(5, 8)[0])[0].detach())
    state.epoch_loss_sum, state.epoch_loss_n = first_loss * 8, 8
    engine_for(part, epochs=1).fit(part, state)
    assert state.step == 5 and abs(part.w.item() - whole.w.item()) < 1e-6
    assert abs(part.ends[0][1] - whole.ends[0][1]) < 1e-6


def test_run_state_reads_older_checkpoints():
    old = {"epoch": 3, "step": 30, "epoch_step": 0, "epoch_seed": 7, "best_val_rmsd": 0.8, "seconds": 12.0,
           "history": [{"epoch": 1}]}
    state = RunState.from_dict(old)
    assert (state.epoch, state.step, state.best_val, state.epoch_loss_n) == (3, 30, 0.8, 0)
    assert RunState.from_dict(state.to_dict()) == state
