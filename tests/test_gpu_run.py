"""The prepared GPU run (tools/gpu_prepare.py, tools/gpu_run.py, tools/gpu_run.sh), dry-run on the
CPU with tiny data so that it cannot rot while no GPU is around; and the pieces it relies on."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from molgiae.config import Config, ModelConfig
from molgiae.data.conformers import load_qm9_npz
from molgiae.data.loading import load_conformers
from molgiae.data.split import split_ids
from molgiae.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "qm9_fixture.npz"
BUNDLED = ROOT / "molgiae" / "pretrained" / "molgiae-qm9.pt"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"}
DRY_RUN = ["--device", "cpu", "--batch-sizes", "4,8", "--sweep-warmup", "1", "--sweep-steps", "2",
           "--epochs", "1", "--minutes", "3", "--check-molecules", "8", "--val-molecules", "16",
           "--checkpoint-seconds", "0.2"]


@pytest.fixture(scope="module")
def payload(tmp_path_factory) -> Path:
    """A payload as tools/gpu_prepare.py writes it, from the fixture."""
    payload = tmp_path_factory.mktemp("gpu") / "payload"
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_prepare.py"), "--data", str(FIXTURE),
                          "--checkpoint", str(BUNDLED), "--out", str(payload)],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return payload


def test_compact_file_keeps_conformers_and_split(payload):
    compact = payload / "qm9_compact.npz"
    with np.load(compact) as d:
        assert sorted(d.files) == ["R", "Z", "format_version", "index", "n_atoms", "ptr"]
        assert d["R"].dtype == np.float32 and d["Z"].dtype == np.uint8 and d["index"].dtype == np.int32
    full, small = load_qm9_npz([FIXTURE]), load_conformers([compact])  # the path `molgiae train --data` takes
    assert np.array_equal(full.keys, small.keys) and np.array_equal(full.ptr, small.ptr)
    assert np.array_equal(full.elements, small.elements)
    assert np.allclose(full.coords, small.coords, atol=1e-6)
    assert small.property_names == () and small.smiles is None
    for k, v in split_ids(full.keys, 0.05, 0.05, 0).items():
        assert np.array_equal(v, split_ids(small.keys, 0.05, 0.05, 0)[k])
    manifest = json.loads((payload / "manifest.json").read_text())
    assert manifest["conformers"] == len(full) and (payload / "init.pt").stat().st_size == BUNDLED.stat().st_size


def test_the_gpu_runs_split_holds_out_the_bundled_models_test_molecules():
    """The split the GPU run trains with holds out the bundled model's test molecules (the
    fixture's part of them: the default-test-split fixture is all test molecules)."""
    ckpt = load_checkpoint(BUNDLED)
    data = load_qm9_npz([ROOT / "tests" / "fixtures" / "qm9_default_test_split.npz"])
    tc = ckpt["config"]["train"]
    test = split_ids(data.keys, tc["val_fraction"], tc["test_fraction"], tc["split_seed"])["test"]
    assert len(test) == len(data) and np.isin(data.keys, ckpt["test_keys"].numpy()).all()


def test_bf16_autocast_forward_backward_is_finite():
    """bf16 autocast (as on CUDA) runs through both decoders: torch.linalg.cross is on no autocast
    list, so bf16 matmul results meet fp32 positions in the cross-product term."""
    from molgiae.data.batching import batch_from_set
    from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss

    data = load_qm9_npz([FIXTURE])
    for decoder in ("equivariant", "transformer"):
        torch.manual_seed(0)
        model = GroupInvariantAutoencoder(ModelConfig(features=16, embedding_dim=16, num_rbf=8, decoder=decoder))
        mols = batch_from_set(data, np.arange(12))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(mols, permutation="straight_through", tau=0.3)
        loss = reconstruction_loss(out, mols)["loss"]
        loss.backward()
        assert math.isfinite(float(loss.detach()))
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_train_from_init_weights(tmp_path):
    from molgiae.training import train

    ckpt = load_checkpoint(BUNDLED)
    cfg = Config.from_dict(ckpt["config"])
    cfg.train.epochs, cfg.train.batch_size, cfg.train.max_molecules, cfg.train.lr = 1, 8, 8, 1e-12
    cfg.train.warmup_steps, cfg.train.device, cfg.train.init_from = 1, "cpu", str(BUNDLED)
    # as tools/gpu_run.py trains it: QM9 alone, eager (the bundled model's last stage used
    # conformer pairs from ensembles and torch.compile)
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gpu_run import for_qm9_payload
    finally:
        sys.path.remove(str(ROOT / "tools"))
    for_qm9_payload(cfg.train)
    Config.from_dict(cfg.to_dict())  # a valid config, as the checkpoint it writes must be
    data = load_qm9_npz([FIXTURE])
    splits = split_ids(data.keys, 0.05, 0.05, 0)
    state = train(cfg, data, splits, tmp_path, quiet=True)
    assert state.step == 1
    new = load_checkpoint(tmp_path / "last.pt")
    for k, v in ckpt["model"].items():  # lr 1e-12: one step leaves the weights where they started
        assert torch.allclose(new["model"][k], v, atol=1e-6), k


def _check_outputs(out: Path) -> None:
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in out.iterdir()), files
    assert not [f for f in files if f.startswith(".")], files  # no temporary left behind
    check = json.loads((out / "check.json").read_text())
    assert check["passed"] and check["bf16_finite"] and check["bf16_error"] is None
    for k in ("loss_cpu_fp32", "loss_device_fp32", "loss_abs_diff", "grad_max_rel_diff", "loss_device_bf16", "val_rmsd_start"):
        assert math.isfinite(check[k]), k
    sweep = json.loads((out / "sweep.json").read_text())
    measured = [r for r in sweep["rows"] if "conformers_per_s" in r]
    assert len(measured) == 2 and all(r["conformers_per_s"] > 0 for r in measured)
    assert sweep["chosen_batch_size"] in (4, 8)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["training"]["steps"] > 0 and summary["training"]["copies_of_last_pt"] >= 1
    assert math.isfinite(summary["validation"]["val_rmsd_end"])
    assert summary["checkpoint_test_molecules_in_train_split"] == 0
    torch.load(out / "last.pt", weights_only=True)
    last = load_checkpoint(out / "last.pt")
    assert last["run_state"]["step"] == summary["training"]["steps"] and "optimizer" in last
    assert last["config"]["train"]["batch_size"] == sweep["chosen_batch_size"]
    bundled_steps = torch.load(BUNDLED, weights_only=True)["run_state"]["step"]
    assert bundled_steps > 0 and last["metadata"]["init_from"]["steps"] == bundled_steps
    load_checkpoint(out / "best.pt")
    assert (out / "metrics.csv").read_text().count("\n") == 2  # header + 1 epoch


def test_dry_run_of_the_gpu_script_on_cpu(tmp_path, payload):
    """tools/gpu_run.sh end to end, as on the device machine but with --device cpu and the fixture;
    and it imports neither RDKit nor ASE (they are not installed there)."""
    blocker = tmp_path / "blocker"  # rdkit/ase that fail on import, first on the path
    for mod in ("rdkit", "ase"):
        (blocker / mod).mkdir(parents=True)
        (blocker / mod / "__init__.py").write_text(f"raise ImportError('{mod} is not on the GPU machine')\n")
    out = tmp_path / "out"
    env = {**ENV, "OUT": str(out), "PYTHONPATH": str(blocker), "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(ROOT / "tools" / "gpu_run.sh"), "--payload", str(payload), *DRY_RUN], env=env,
                         capture_output=True, text=True, timeout=300)
    log = (out / "run.log").read_text() if (out / "run.log").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "done:" in log and "Traceback" not in log
    _check_outputs(out)


def test_training_path_imports_neither_rdkit_nor_ase():
    code = (
        "import sys\n"
        "import molgiae.training, molgiae.cli, molgiae.data.loading\n"
        "from molgiae.data.loading import load_conformers\n"
        f"load_conformers([{str(FIXTURE)!r}])\n"
        f"sys.path.insert(0, {str(ROOT / 'tools')!r}); import gpu_run\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('rdkit', 'ase')])\n"
    )
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("rows,within,expected", [
    ([{"batch_size": 64, "r": 100.0}, {"batch_size": 128, "r": 190.0}, {"batch_size": 256, "r": 200.0}], 0.9, 128),
    ([{"batch_size": 64, "r": 100.0}, {"batch_size": 128, "error": "out of memory"}], 0.9, 64),
    ([{"batch_size": 64, "r": 100.0}, {"batch_size": 128, "r": 190.0}, {"batch_size": 256, "r": 200.0}], 1.0, 256),
])
def test_batch_size_choice(rows, within, expected):
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gpu_run import choose_batch_size
    finally:
        sys.path.remove(str(ROOT / "tools"))
    assert choose_batch_size(rows, "r", within)["batch_size"] == expected


def test_the_gpu_runs_step_is_the_training_objective():
    """check and sweep time and compare the step train() takes: denoising noise and the smoothness
    term included (they once timed the plain reconstruction loss)."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from gpu_run import loss_and_backward
    finally:
        sys.path.remove(str(ROOT / "tools"))
    from molgiae.data.batching import batch_from_set
    from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
    from molgiae.training import training_objective

    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1))
    cfg.train.coord_noise, cfg.train.lambda_smooth = 0.1, 1.0
    model = GroupInvariantAutoencoder(cfg.model)
    batch = batch_from_set(load_qm9_npz([FIXTURE]), np.arange(6))
    loss, out = loss_and_backward(model, batch, torch.device("cpu"), cfg.train, amp=False, seed=3, with_output=True)
    noise = torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(3))
    expected = training_objective(model, model, batch, noise, cfg.train, False)
    plain = reconstruction_loss(model(batch, permutation="straight_through", tau=cfg.train.tau), batch,
                                cfg.train.lambda_type, cfg.train.lambda_perm)["loss"]
    assert torch.allclose(loss, expected) and not torch.allclose(loss, plain)
    assert all(p.grad is not None for p in model.encoder.parameters() if p.requires_grad)
    assert out.encoding.z.shape == (6, 16)
