"""Training really learns; checkpoints save, load (weights_only) and resume exactly;
splits are deterministic and disjoint."""
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.batching import batch_from_set
from molgiae.data.split import split_ids
from molgiae.metrics import score_molecules
from molgiae.model import GroupInvariantAutoencoder
from molgiae.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from molgiae.training import train
from tests.equivariance import QM9_FIXTURE, fixture_set

DATA = fixture_set()


def test_split_is_deterministic_disjoint_and_by_molecule():
    keys = np.repeat(np.arange(500), 3)  # 3 conformers per molecule
    a = split_ids(keys, 0.1, 0.1, seed=5)
    b = split_ids(keys, 0.1, 0.1, seed=5)
    for k in a:
        assert np.array_equal(a[k], b[k])
    ids = np.concatenate(list(a.values()))
    assert len(ids) == len(keys) and len(np.unique(ids)) == len(keys)
    mol = {k: set(keys[v].tolist()) for k, v in a.items()}
    assert not (mol["train"] & mol["val"]) and not (mol["train"] & mol["test"]) and not (mol["val"] & mol["test"])
    assert 30 <= len(mol["test"]) <= 75 and 30 <= len(mol["val"]) <= 75
    c = split_ids(keys, 0.1, 0.1, seed=6)
    assert not np.array_equal(a["test"], c["test"])
    # adding molecules does not move existing ones
    d = split_ids(np.arange(1000), 0.1, 0.1, seed=5)
    assert set(np.arange(500)[np.isin(np.arange(500), d["test"])]) == mol["test"]


def test_qm9_molecules_read_from_xyz_get_the_npz_key_and_split():
    """A QM9 molecule read from its XYZ file (or an ensemble file, a store) is keyed by its QM9
    index, as in the npz files, so it lands in the same split (it was a hash of ``gdb_N``)."""
    from pathlib import Path

    from molgiae.data.loading import load_conformers

    fixtures = sorted(Path(QM9_FIXTURE).parent.glob("dsgdb9nsd_*.xyz"))
    from_xyz = load_conformers(fixtures)
    assert [int(k) for k in from_xyz.keys] == [int(p.stem.split("_")[1]) for p in fixtures]  # the npz key
    both = np.concatenate([DATA.keys, from_xyz.keys])
    split = split_ids(both, 0.3, 0.3, seed=0)
    where = {name: set(both[ids].tolist()) for name, ids in split.items()}
    for k in from_xyz.keys:  # the same molecule twice never straddles two splits
        assert sum(int(k) in v for v in where.values()) == 1


def test_training_overfits_a_handful_of_molecules(tmp_path):
    """A broken group action cannot reach this: the untrained model sits near 2 Å, a decoder
    that only learns an average shape near 1 Å on these molecules."""
    ids = np.array([40, 41, 43, 44, 45, 47, 48, 50])
    cfg = Config(
        ModelConfig(features=48, embedding_dim=64, encoder_layers=2, decoder_layers=2, decoder="transformer"),
        TrainConfig(epochs=300, batch_size=8, lr=3e-3, warmup_steps=20, min_lr_ratio=0.1, max_val_molecules=8,
                    checkpoint_every=10_000, seed=0),
    )
    before = score_molecules(GroupInvariantAutoencoder(cfg.model), DATA, ids, aligned=False).rmsd.mean()
    state = train(cfg, DATA, {"train": ids, "val": ids[:0], "test": ids[:0]}, tmp_path, quiet=True)
    model, _ = model_from_checkpoint(load_checkpoint(tmp_path / "last.pt"))
    after = score_molecules(model, DATA, ids, aligned=True)
    assert state.epoch == 300
    assert before > 1.5
    assert after.rmsd.mean() < 0.3, after.rmsd
    assert after.element_accuracy.mean() > 0.98


def _tiny_config(epochs, **train):
    return Config(
        ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1, decoder="transformer"),
        TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, warmup_steps=5, checkpoint_every=3, seed=1, **train),
    )


def test_run_directory_artefacts_and_weights_only_loading(tmp_path):
    splits = split_ids(DATA.keys, 0.2, 0.1, 0)
    train(_tiny_config(2), DATA, splits, tmp_path, quiet=True)
    for name in ("config.json", "last.pt", "best.pt", "metrics.csv", "learning_curve.png", "split.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert rows[0] == "epoch,step,train_loss,val_loss,val_rmsd,val_element_accuracy,seconds"
    assert len(rows) == 3
    ckpt = torch.load(tmp_path / "best.pt", weights_only=True)
    assert Config.from_dict(ckpt["config"]) == Config.from_dict(json.loads((tmp_path / "config.json").read_text()))
    assert set(ckpt["test_keys"].tolist()) == set(DATA.keys[splits["test"]].tolist())
    assert not list(tmp_path.glob("*.tmp"))


TINY_TRAIN = [
    "--features", "16", "--embedding-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
    "--decoder", "transformer", "--batch-size", "4", "--checkpoint-every", "2", "--epochs", "3",
    "--seed", "1", "--threads", "1", "--quiet",
]


def _train_cli(out, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "molgiae", "train", "--data", str(QM9_FIXTURE), "--out", str(out), *TINY_TRAIN, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_resume_after_a_kill_matches_an_uninterrupted_run(tmp_path):
    """SIGKILL a real `molgiae train` process once it has checkpointed, `--resume` it, and
    compare the final weights with a run that was never interrupted."""
    full = _train_cli(tmp_path / "full")
    cut = _train_cli(tmp_path / "cut")
    last = tmp_path / "cut" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and cut.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["run_state"]["step"] >= 8:
            break
        time.sleep(0.05)
    assert cut.poll() is None, "the run ended before it could be killed"
    cut.send_signal(signal.SIGKILL)
    cut.wait()
    killed_at = torch.load(last, weights_only=True)["run_state"]["step"]
    assert 8 <= killed_at < 3 * 30
    resumed = _train_cli(tmp_path / "cut", "--resume")
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    assert full.wait(timeout=300) == 0, full.stdout.read()
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)
    b = torch.load(last, weights_only=True)
    assert a["run_state"]["step"] == b["run_state"]["step"]
    for k in a["model"]:
        assert torch.allclose(a["model"][k], b["model"][k], atol=1e-6), k
    assert a["run_state"]["history"][-1]["val_rmsd"] == pytest.approx(b["run_state"]["history"][-1]["val_rmsd"], abs=1e-6)


def test_resume_refuses_a_different_architecture(tmp_path):
    splits = split_ids(DATA.keys, 0.2, 0.1, 0)
    train(_tiny_config(1), DATA, splits, tmp_path, quiet=True)
    other = _tiny_config(2)
    other.model.features = 24
    with pytest.raises(ValueError, match="different model config"):
        train(other, DATA, splits, tmp_path, resume=True, quiet=True)


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(bad)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a molgiae checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_compiled_encoder_trains_like_the_eager_one_and_keeps_checkpoints(tmp_path):
    """--compile compiles the encoder in place: the same steps (float tolerance) and a checkpoint
    with the eager model's parameter names, loadable into an uncompiled model."""
    ids = np.arange(40, 56)
    runs = {}
    for compiled in (False, True):
        cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1,
                                 decoder="transformer"),
                     TrainConfig(epochs=1, batch_size=8, lr=1e-3, warmup_steps=1, max_val_molecules=4,
                                 compile=compiled))
        train(cfg, DATA, {"train": ids, "val": ids[:4], "test": ids[:0]}, tmp_path / str(compiled), quiet=True)
        runs[compiled] = load_checkpoint(tmp_path / str(compiled) / "last.pt")
    eager, comp = runs[False]["model"], runs[True]["model"]
    assert sorted(comp) == sorted(eager) and not any("_orig_mod" in k for k in comp)
    # two AdamW steps (lr 1e-3) from the same start: the losses agree; a weight moves at most ~lr
    # further where float rounding flips the sign of a near-zero gradient
    h_eager, h_comp = runs[False]["run_state"]["history"][0], runs[True]["run_state"]["history"][0]
    for key in ("train_loss", "val_loss"):
        assert abs(h_comp[key] - h_eager[key]) <= 1e-3 * abs(h_eager[key]), key
    for k in eager:
        assert torch.allclose(comp[k], eager[k], atol=3e-3), k
    model, cfg = model_from_checkpoint(runs[True])
    assert cfg.train.compile and model.encode(batch_from_set(DATA, ids[:2])).z.shape == (2, 16)
