"""DistributedDataParallel under torchrun (2 CPU processes, gloo) gives the same training as one
process with the same global batch; DataLoader workers give the same batches as the main process."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.batching import batch_from_set, bucketed_batches
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
from molgiae.checkpoint import load_checkpoint, model_from_checkpoint
from molgiae.train.distributed import rank_share, shard_batch
from molgiae.training import train
from tests.equivariance import QM9_FIXTURE, fixture_set

DATA = fixture_set()
TRAIN = [
    "--features", "16", "--embedding-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
    "--decoder", "transformer", "--batch-size", "8", "--epochs", "2", "--seed", "3", "--lr", "2e-3",
    "--max-molecules", "41",  # 6 global batches per epoch, the last of 1 molecule: rank 1 gets none
    "--checkpoint-every", "1000", "--threads", "1", "--device", "cpu", "--quiet",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(cmd: list[str]) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def _torchrun(out, *extra) -> str:
    port = _free_port()
    return _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint=localhost:{port}", "-m", "molgiae", "train", "--data", str(QM9_FIXTURE),
                 "--out", str(out), *TRAIN, *extra])


def _gauge_mask(model: GroupInvariantAutoencoder, ids: np.ndarray) -> dict[str, torch.Tensor]:
    """Parameter elements the loss does not depend on (float64 gradient exactly ~0): biases of
    score and frame heads (the sort and the centred frame ignore a uniform shift), attention
    key biases (softmax ignores a shift)... Their float32 gradients are pure rounding noise,
    which Adam scales up to ±lr per step, so two correct runs may disagree there."""
    m = GroupInvariantAutoencoder(model.config)
    m.load_state_dict(model.state_dict())
    m = m.double()
    mols = batch_from_set(DATA, ids)
    mols.pos = mols.pos.double()
    out = m(mols, permutation="straight_through", tau=0.3)
    reconstruction_loss(out, mols)["loss"].backward()
    return {k: p.grad.abs() < 1e-10 for k, p in m.named_parameters()}


def _loss_and_grad(model: GroupInvariantAutoencoder, ids: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The training loss of molecules ``ids`` as one batch (float64) and its gradient."""
    model.zero_grad(set_to_none=True)
    mols = batch_from_set(DATA, ids)
    mols.pos = mols.pos.double()
    loss = reconstruction_loss(model(mols, permutation="straight_through", tau=0.3), mols)["loss"]
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_rank_shares_partition_each_global_batch_and_weights_sum_to_one():
    """training.rank_share, the code each rank runs: the ranks' molecules are the global batch,
    weights sum to 1, a rank left without a molecule runs one with weight 0."""
    batches = bucketed_batches(DATA.n_atoms, np.arange(45), 8, np.random.default_rng(0))
    for world in (2, 3):
        for chunk in [*batches, np.array([17]), np.array([3, 9])]:
            shares = [rank_share(chunk, r, world, DATA.n_atoms) for r in range(world)]
            used = [local for local, w in shares if w > 0]
            assert sorted(np.concatenate(used).tolist()) == sorted(chunk.tolist())
            assert sum(w for _, w in shares) == pytest.approx(1.0, abs=1e-12)
            for r, (local, w) in enumerate(shares):
                if r >= len(chunk):  # no molecule for this rank
                    assert w == 0.0 and np.array_equal(local, chunk[:1])
                else:
                    assert w > 0 and np.array_equal(local, shard_batch(chunk, r, world))


def test_rank_weighted_losses_give_the_global_batch_loss_and_gradient():
    """What DDP computes from the rank losses (the mean over ranks of world·weight·grad) is the
    loss and gradient of the whole global batch: the weights are shares of atoms because the
    loss is a per-atom mean (shares of molecules would not do). float64, one tiny model."""
    torch.manual_seed(0)
    model = GroupInvariantAutoencoder(ModelConfig(features=16, embedding_dim=16, encoder_layers=1,
                                                  decoder_layers=1, decoder="transformer")).double()
    sizes = DATA.n_atoms
    chunk = np.array([int(np.argmin(sizes)), int(np.argmax(sizes)), 40, 41, 42])  # unequal shares
    full_loss, full_grad = _loss_and_grad(model, chunk)
    for world in (2, 3):
        loss, grad = 0.0, [torch.zeros_like(g) for g in full_grad]
        by_molecules = 0.0
        for r in range(world):
            local, w = rank_share(chunk, r, world, sizes)
            rank_loss, rank_grad = _loss_and_grad(model, local)
            loss = loss + w * rank_loss
            grad = [g + (world * w) * gr / world for g, gr in zip(grad, rank_grad)]
            by_molecules += len(local) / len(chunk) * float(rank_loss)
        # float64 but for the cross-entropy, which the loss computes in float32
        assert float(loss) == pytest.approx(float(full_loss), rel=1e-7)
        g, f = torch.cat([x.flatten() for x in grad]), torch.cat([x.flatten() for x in full_grad])
        worst = float((g - f).abs().max() / f.abs().max())
        assert worst < 1e-6, worst
        assert abs(by_molecules / float(full_loss) - 1) > 1e-3  # the test can tell the two weightings apart


def test_torchrun_two_processes_match_one_process_and_resume(tmp_path):
    """torchrun --nproc_per_node=2 (gloo) is stopped by a time limit after its first step(s),
    resumed with --resume, and must end with the weights of one process run straight through
    with the same global batch (atol 3e-6 on every parameter element the loss depends on)."""
    single = _run([sys.executable, "-m", "molgiae", "train", "--data", str(QM9_FIXTURE), "--out",
                   str(tmp_path / "one"), *TRAIN])
    assert single.count("done:") == 1
    first = _torchrun(tmp_path / "two", "--time-limit", "0.0005")  # 30 ms: stops after step 1 or so
    cut = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["run_state"]
    assert cut["epoch"] == 0 and 1 <= cut["step"] < 6, cut
    assert first.count("time limit reached") == 1  # rank 0 only
    resumed = _torchrun(tmp_path / "two", "--resume", "--time-limit", "0")
    assert resumed.count("done:") == 1 and resumed.count("resumed from") == 1

    a = load_checkpoint(tmp_path / "one" / "last.pt")
    b = load_checkpoint(tmp_path / "two" / "last.pt")
    assert a["run_state"]["step"] == b["run_state"]["step"] == 12
    assert b["metadata"]["world_size"] == 2
    ha, hb = a["run_state"]["history"], b["run_state"]["history"]
    assert hb[-1]["train_loss"] == pytest.approx(ha[-1]["train_loss"], rel=1e-5)
    assert hb[-1]["val_rmsd"] == pytest.approx(ha[-1]["val_rmsd"], abs=1e-4)
    model_a, _ = model_from_checkpoint(a)
    model_b, _ = model_from_checkpoint(b)
    gauge = _gauge_mask(model_a, np.arange(len(DATA)))
    n_differ = n_total = 0
    for k, pa in model_a.state_dict().items():
        pb = model_b.state_dict()[k]
        differ = (pa - pb).abs() > 3e-6  # measured: 2.5e-7; per-molecule instead of per-atom weights: 1.8e-5
        keep = ~gauge[k] if k in gauge else torch.ones_like(pa, dtype=torch.bool)
        assert not (differ & keep).any(), (k, float((pa - pb)[keep].abs().max()))
        n_differ += int(differ.sum())
        n_total += pa.numel()
    assert n_differ <= 0.005 * n_total, n_differ  # a handful of gauge biases
    # the few gauge elements do not change what the models compute
    mols = batch_from_set(DATA, np.arange(40, 56))
    with torch.no_grad():
        ra, rb = model_a(mols), model_b(mols)
    assert torch.allclose(ra.encoding.z, rb.encoding.z, atol=1e-4)
    assert torch.allclose(ra.coords, rb.coords, atol=1e-4)


def test_dataloader_workers_give_the_same_run(tmp_path):
    """num_workers=2 builds the same batches in worker processes: identical weights."""
    ids = np.arange(24)
    splits = {"train": ids, "val": ids[:4], "test": ids[:0]}
    states = []
    for workers in (0, 2):
        cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1,
                                 decoder="transformer"),
                     TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=2, seed=1, device="cpu",
                                 num_workers=workers, checkpoint_every=1000))
        train(cfg, DATA, splits, tmp_path / f"w{workers}", quiet=True)
        states.append(load_checkpoint(tmp_path / f"w{workers}" / "last.pt")["model"])
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


FINETUNE = ["--target", "U0", "--epochs", "2", "--batch-size", "8", "--seed", "2", "--lr", "2e-3",
            "--patience", "0", "--threads", "1", "--device", "cpu", "--quiet"]


def test_finetune_under_torchrun_matches_one_process(tmp_path, tiny_checkpoint):
    """`torchrun --nproc_per_node=2 -m molgiae finetune` (gloo) takes the same steps as one
    process with the same global batch: same fine-tuned weights, same test MAE, one set of outputs."""
    common = ["finetune", "--data", str(QM9_FIXTURE), "--pretrained", str(tiny_checkpoint), *FINETUNE]
    single = _run([sys.executable, "-m", "molgiae", *common, "--out", str(tmp_path / "one")])
    port = _free_port()
    double = _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--rdzv-backend=c10d",
                   f"--rdzv-endpoint=localhost:{port}", "-m", "molgiae", *common, "--out", str(tmp_path / "two")])
    assert single.count("test MAE") == 1 and double.count("test MAE") == 1
    a = torch.load(tmp_path / "one" / "finetuned.pt", weights_only=True)
    b = torch.load(tmp_path / "two" / "finetuned.pt", weights_only=True)
    changed = 0
    for k, v in a["model"].items():
        assert torch.allclose(v, b["model"][k], atol=1e-5), k
        changed += 1
    assert changed > 0
    import json

    ra = json.loads((tmp_path / "one" / "result.json").read_text())
    rb = json.loads((tmp_path / "two" / "result.json").read_text())
    assert rb["world_size"] == 2 and "world_size" not in ra
    assert rb["test_mae"] == pytest.approx(ra["test_mae"], rel=1e-4)
