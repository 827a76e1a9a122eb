"""Nothing lost, nothing silently wrong: regression tests of the adversarial-run defects
(issue 14). Real RDKit, ASE, h5py and torch; the tiny untrained model of conftest."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from molgiae.cli import app
from molgiae.data.readers import iter_records, read_records
from molgiae.data.record import ConformerRecord, RecordError
from tests.molfiles import molblock, write_sdf

runner = CliRunner()
EXAMPLE_SDF = Path(__file__).parents[1] / "molgiae" / "examples" / "qm9_test_molecules.sdf"


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def _records(path) -> list:
    return list(read_records(path))


# --------------------------------------------------------------------------- 1. output = input


@pytest.fixture
def sdf_copy(tmp_path) -> Path:
    p = tmp_path / "v.sdf"
    shutil.copy(EXAMPLE_SDF, p)
    return p


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
@pytest.mark.parametrize("command", ["embed", "reconstruct"])
def test_output_that_is_an_input_is_refused(tiny_checkpoint, sdf_copy, tmp_path, how, command):
    before = sdf_copy.read_bytes()
    out = sdf_copy
    if how == "symlink":
        out = tmp_path / "link.sdf"
        out.symlink_to(sdf_copy)
    elif how == "hardlink":
        out = tmp_path / "hard.sdf"
        os.link(sdf_copy, out)
    res = run_cli(command, sdf_copy, "-o", out, "--model", tiny_checkpoint, "-q", "--no-read-ahead")
    assert res.exit_code == 1, res.output
    assert "refusing to overwrite an input" in res.stderr
    assert sdf_copy.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["v.sdf"] + ([out.name] if out != sdf_copy else []))


def test_library_and_other_commands_refuse_an_input_as_output(tiny_model, tiny_checkpoint, sdf_copy, tmp_path):
    from molgiae.data.store import prepare_store
    from molgiae.embedding import embed_to_hdf5, merge_hdf5, reconstruct_to_sdf
    from molgiae.outputs import OutputIsInputError

    before = sdf_copy.read_bytes()
    pattern = str(tmp_path / "*.sdf")
    with pytest.raises(OutputIsInputError):
        embed_to_hdf5(tiny_model, [pattern], sdf_copy)
    with pytest.raises(OutputIsInputError):
        reconstruct_to_sdf(tiny_model, [sdf_copy], sdf_copy)
    with pytest.raises(OutputIsInputError):
        prepare_store([sdf_copy], sdf_copy)
    assert sdf_copy.read_bytes() == before
    h5 = tmp_path / "e.h5"
    embed_to_hdf5(tiny_model, [sdf_copy], h5)
    h5_bytes = h5.read_bytes()
    with pytest.raises(OutputIsInputError):
        merge_hdf5([h5], h5)
    for args in (("merge", h5, "-o", h5), ("map", h5, "-o", h5), ("data", "prepare", sdf_copy, "-o", sdf_copy)):
        res = run_cli(*args)
        assert res.exit_code == 1 and "refusing to overwrite an input" in res.stderr, (args, res.output)
    assert h5.read_bytes() == h5_bytes and sdf_copy.read_bytes() == before


def test_train_refuses_data_that_is_a_run_file(tmp_path, qm9_fixture_npz):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(qm9_fixture_npz, run / "best.pt")  # absurd, but it must not be overwritten
    res = run_cli("train", "--data", run / "best.pt", "--out", run, "--epochs", "1", "-q")
    assert res.exit_code == 1 and "refusing to overwrite an input" in res.stderr, res.output


def test_stale_temporary_outputs_of_dead_processes_are_removed(tiny_model, sdf_copy, tmp_path):
    import subprocess
    import sys

    from molgiae.embedding import embed_to_hdf5

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "e.h5"
    stale = tmp_path / f"e.h5.tmp-{dead}"
    stale.write_text("left by a killed run")
    alive = tmp_path / f"e.h5.tmp-{os.getppid()}"  # a running process: not touched
    alive.write_text("still being written")
    embed_to_hdf5(tiny_model, [sdf_copy], out)
    assert out.is_file() and not stale.exists() and alive.exists()


# --------------------------------------------------------------------------- 2, 4. xyz framing

WATER = "O 0.0 0.0 0.119\nH 0.0 0.763 -0.477\nH 0.0 -0.763 -0.477\n"
METHANE = ("C 0.0 0.0 0.0\nH 0.629 0.629 0.629\nH -0.629 -0.629 0.629\nH -0.629 0.629 -0.629\n"
           "H 0.629 -0.629 -0.629\n")


@pytest.mark.parametrize("comment", ["gdb_1", "gdb 1", "gdb 1 from a plain file", "gdb"])
def test_plain_xyz_whose_comment_starts_with_gdb_is_plain_xyz(tmp_path, comment):
    p = tmp_path / "plain.xyz"
    p.write_text(f"3\n{comment}\n{WATER}5\nsecond\n{METHANE}")
    items = _records(p)
    assert [type(i) for i in items] == [ConformerRecord, ConformerRecord], items
    assert [i.n_atoms for i in items] == [3, 5] and items[1].name == "second"


def test_count_line_too_small_is_an_error_and_the_next_frame_is_kept(tmp_path):
    p = tmp_path / "small.xyz"
    p.write_text(f"3\nwater\n{WATER}4\nmethane_cut\n{METHANE}3\nwater2\n{WATER}")
    items = _records(p)
    assert [type(i).__name__ for i in items] == ["ConformerRecord", "RecordError", "ConformerRecord"], items
    assert items[0].name == "water" and items[2].name == "water2" and items[2].index == 2
    assert "count is too small" in items[1].reason and "line 6" in items[1].reason


def test_count_line_too_large_is_an_error_and_the_next_frame_is_kept(tmp_path):
    p = tmp_path / "large.xyz"
    p.write_text(f"3\nwater\n{WATER}7\nmethane_long\n{METHANE}3\nwater2\n{WATER}")
    items = _records(p)
    assert [type(i).__name__ for i in items] == ["ConformerRecord", "RecordError", "ConformerRecord"], items
    assert items[2].name == "water2" and "count too large" in items[1].reason


def test_unreadable_count_line_skips_to_the_next_frame(tmp_path):
    p = tmp_path / "junk.xyz"
    p.write_text(f"3\nwater\n{WATER}x3\nbroken\n{WATER}3\nwater2\n{WATER}")
    items = _records(p)
    assert [type(i).__name__ for i in items] == ["ConformerRecord", "RecordError", "ConformerRecord"], items
    assert "expected an atom count" in items[1].reason and items[2].name == "water2"


# --------------------------------------------------------------------------- 3. memory per molecule


def _grid_record(n: int, name: str) -> ConformerRecord:
    """n carbon atoms on a 1.5 Å grid (a big, valid geometry)."""
    side = int(np.ceil(n ** (1 / 3)))
    pts = np.array([(i, j, k) for i in range(side) for j in range(side) for k in range(side)][:n], float) * 1.5
    return ConformerRecord(elements=[6] * n, coords=pts, name=name, source="big.xyz")


def test_molecule_above_max_atoms_is_an_error_row_and_the_rest_is_embedded(tiny_checkpoint, tmp_path):
    import ase.io
    from ase import Atoms

    big = _grid_record(2261, "huge")
    frames = [Atoms("OH2", positions=[[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]]),
              Atoms(numbers=big.elements, positions=big.coords),
              Atoms("OH2", positions=[[0, 0, 0.119], [0, 0.763, -0.477], [0, -0.763, -0.477]])]
    xyz = tmp_path / "mixed.xyz"
    ase.io.write(xyz, frames, format="extxyz")
    out = tmp_path / "e.h5"
    res = run_cli("embed", xyz, "-o", out, "--model", tiny_checkpoint, "--no-read-ahead")
    assert res.exit_code == 0, res.output
    assert "2261 atoms: above --max-atoms=500" in res.stderr and "GiB" in res.stderr
    with h5py.File(out) as f:
        assert f["record"][:].tolist() == [0, 2] and f["errors/record"][:].tolist() == [1]
    res = run_cli("embed", xyz, "-o", out, "--model", tiny_checkpoint, "--no-read-ahead", "--max-atoms", "2",
                  "-q")
    assert res.exit_code == 1 and "nothing was embedded" in res.stderr


def test_a_failing_batch_is_retried_record_by_record(tiny_model, qm9_fixture_npz):
    """A model call that fails (out of memory, a model error) takes only its own molecule down."""
    from molgiae.data.read_ahead import position
    from molgiae.embedding import stream_results

    records = list(iter_records(qm9_fixture_npz))[:40]
    bomb = records[17].name

    def process(recs):
        if any(r.name == bomb for r in recs):
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 5.2 GB")
        return tiny_model.embed_records(recs)

    reported = []
    out = list(stream_results(tiny_model, position(records), process, batch_size=8, on_error=reported.append))
    bad = [item for _, item, _ in out if isinstance(item, RecordError)]
    assert [e.name for e in bad] == [bomb] and reported == bad and "can't allocate memory" in bad[0].reason
    good = [(item, z) for _, item, z in out if isinstance(item, ConformerRecord)]
    assert len(good) == 39
    ref = tiny_model.embed_records([item for item, _ in good])
    np.testing.assert_allclose(np.stack([z for _, z in good]), ref, atol=1e-5)


# --------------------------------------------------------------------------- 5, 6, 7. SD records


def _conformer(smiles: str, seed: int = 7):
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    AllChem.MMFFOptimizeMolecule(mol)
    mol.SetProp("_Name", smiles)
    return mol


def _block(mol) -> str:
    from rdkit import Chem

    return Chem.MolToMolBlock(mol)


def test_sd_record_without_hydrogens_gets_them_back_and_says_so(tmp_path):
    from rdkit import Chem

    from molgiae.api import load_model
    from molgiae.embedding import embed_to_hdf5

    ethanol, phenol = _conformer("CCO"), _conformer("Oc1ccccc1")
    skeleton = Chem.RemoveHs(ethanol)
    sdf = write_sdf(tmp_path / "m.sdf", [_block(skeleton), _block(ethanol), _block(phenol)])
    recs = _records(sdf)
    assert [r.n_atoms for r in recs] == [9, 9, 13] and [r.hydrogens_added for r in recs] == [6, 0, 0]
    assert recs[0].smiles == "CCO" and list(recs[0].elements) == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    model = load_model()  # the trained model: the completed skeleton is ethanol, not something else
    out = tmp_path / "e.h5"
    embed_to_hdf5(model, [sdf], out)
    with h5py.File(out) as f:
        z = f["embedding"][:]
        assert f["hydrogens_added"][:].tolist() == [6, 0, 0] and f["n_atoms"][:].tolist() == [9, 9, 13]
    assert np.linalg.norm(z[0] - z[1]) < 0.5 * np.linalg.norm(z[2] - z[1])


def test_reconstruction_of_a_completed_record_carries_a_note(tiny_model, tmp_path):
    from rdkit import Chem

    from molgiae.embedding import reconstruct_to_sdf

    sdf = write_sdf(tmp_path / "m.sdf", [_block(Chem.RemoveHs(_conformer("CCO")))])
    reconstruct_to_sdf(tiny_model, [sdf], tmp_path / "r.sdf")
    (mol,) = Chem.SDMolSupplier(str(tmp_path / "r.sdf"), sanitize=False, removeHs=False)
    assert mol.GetNumAtoms() == 9 and mol.GetProp("molgiae_hydrogens_added").startswith("6 ")


@pytest.mark.parametrize("smiles", ["O", "C=O", "c1ccccc1"])
def test_planar_molecule_at_z0_in_a_3d_molblock_is_kept(tmp_path, smiles):
    mol = _conformer(smiles)
    # put the planar molecule into the z = 0 plane (its own best plane)
    conf = mol.GetConformer()
    x = conf.GetPositions()
    x = x - x.mean(0)
    _, _, vt = np.linalg.svd(x)
    x = x @ vt.T
    x[:, 2] = 0.0
    for i, p in enumerate(x):
        conf.SetAtomPosition(i, p.tolist())
    block = _block(mol)
    assert block.splitlines()[1][20:22] == "3D"
    (rec,) = _records(write_sdf(tmp_path / "flat.sdf", [block]))
    assert isinstance(rec, ConformerRecord) and rec.n_atoms == mol.GetNumAtoms(), rec
    lines = block.splitlines()
    lines[1] = lines[1][:20] + "2D" + lines[1][22:]
    (err,) = _records(write_sdf(tmp_path / "flat2d.sdf", ["\n".join(lines) + "\n"]))
    assert isinstance(err, RecordError) and "2-D" in err.reason


def test_sd_record_without_bond_block_gets_smiles_from_geometry(tmp_path):
    mol = _conformer("CCN")
    x = mol.GetConformer().GetPositions()
    elements = [a.GetAtomicNum() for a in mol.GetAtoms()]
    (rec,) = _records(write_sdf(tmp_path / "nobonds.sdf", [molblock(elements, x, "propylamine")]))
    assert rec.smiles == "CCN" and rec.hydrogens_added == 0 and rec.n_atoms == len(elements)


# --------------------------------------------------------------------------- 9. train: resume and clear errors

TINY = ["--features", "16", "--embedding-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
        "--decoder", "transformer", "--batch-size", "8", "--threads", "1", "-q"]


def _tiny_config(epochs, **train):
    from molgiae.config import Config, ModelConfig, TrainConfig

    return Config(
        ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1, decoder="transformer"),
        TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, warmup_steps=5, checkpoint_every=1000, seed=1,
                    max_val_molecules=8, **train),
    )


def test_mid_epoch_resume_writes_the_same_train_loss(tmp_path):
    import csv

    import torch

    from molgiae.data.split import split_ids
    from molgiae.training import train
    from tests.equivariance import fixture_set

    data = fixture_set()
    splits = split_ids(data.keys, 0.2, 0.1, 0)
    splits["train"] = splits["train"][:40]  # 5 steps per epoch
    train(_tiny_config(2), data, splits, tmp_path / "full", quiet=True)
    # stop after the first step (a time limit of ~0), then resume without a limit
    state = train(_tiny_config(2, time_limit_minutes=1e-9), data, splits, tmp_path / "cut", quiet=True)
    assert state.epoch == 0 and state.epoch_step == 1
    train(_tiny_config(2), data, splits, tmp_path / "cut", resume=True, quiet=True)

    def losses(run):
        return [float(r["train_loss"]) for r in csv.DictReader(open(tmp_path / run / "metrics.csv"))]

    assert len(losses("full")) == 2
    np.testing.assert_allclose(losses("cut"), losses("full"), rtol=1e-6)
    a = torch.load(tmp_path / "full" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["model"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_train_resume_on_a_bad_last_pt_is_a_clear_error(tmp_path, qm9_fixture_npz):
    import torch

    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"\x00garbage, not a checkpoint")
    res = run_cli("train", "--data", qm9_fixture_npz, "--out", run, "--resume", "--epochs", "1", *TINY)
    assert res.exit_code == 1 and "cannot resume" in res.stderr and "cannot read checkpoint" in res.stderr, res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    torch.save({"format": "molgiae-checkpoint-1", "model": {}}, run / "last.pt")
    res = run_cli("train", "--data", qm9_fixture_npz, "--out", run, "--resume", "--epochs", "1", *TINY)
    assert res.exit_code == 1 and "lacks 'config'" in res.stderr, res.output


def test_train_resume_from_a_weights_only_file_is_a_clear_error(tmp_path, tiny_checkpoint, qm9_fixture_npz):
    import torch

    from molgiae.config import Config
    from molgiae.data.split import split_ids
    from molgiae.checkpoint import CheckpointError
    from molgiae.training import train
    from tests.equivariance import fixture_set

    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    for key in ("optimizer", "scheduler", "run_state", "rng"):
        ckpt.pop(key, None)
    run = tmp_path / "run"
    run.mkdir()
    torch.save(ckpt, run / "last.pt")
    data = fixture_set()
    cfg = Config.from_dict(ckpt["config"])
    with pytest.raises(CheckpointError, match="cannot be resumed"):
        train(cfg, data, split_ids(data.keys, 0.2, 0.1, 0), run, resume=True, quiet=True)


@pytest.mark.parametrize("name", ["empty.sdf", "empty.npz", "empty.xyz"])
def test_train_on_an_empty_file_is_a_clear_error(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    res = run_cli("train", "--data", tmp_path / name, "--out", tmp_path / "run", "--epochs", "1", *TINY)
    assert res.exit_code == 1 and "no valid molecules" in res.stderr, res.output
    assert "Traceback" not in res.output


def test_train_epochs_0_is_refused(tmp_path, qm9_fixture_npz):
    res = run_cli("train", "--data", qm9_fixture_npz, "--out", tmp_path / "run", "--epochs", "0", *TINY)
    assert res.exit_code == 1 and "epochs must be >= 1" in res.stderr, res.output


def test_empty_validation_split_is_said(tmp_path):
    from molgiae.training import train
    from tests.equivariance import fixture_set

    data = fixture_set()
    ids = np.arange(8)
    said = []
    train(_tiny_config(1), data, {"train": ids, "val": ids[:0], "test": ids[:0]}, tmp_path, quiet=True,
          log=said.append)
    assert any("validation split is empty" in s and "NaN" in s for s in said), said


# --------------------------------------------------------------------------- interruptions, names


def _slow_xyz(path: Path, n: int = 30_000) -> Path:
    """Many small frames: seconds of reading and embedding; embedded with ``--no-smiles`` so that no
    RDKit C++ code runs (ETKDG, substructure search and the bond perception behind the SMILES column
    can install their own SIGINT handler: a signal landing there is lost or ends the process with
    -SIGINT instead of exit code 130, a known defect, see the closing notes)."""
    path.write_text("".join(f"3\nwater_{k}\n{WATER}" for k in range(n)))
    return path


_SIGNAL_IN_A_CALLBACK = """
import os, signal, sys, weakref
from molgiae.runtime import handle_interrupts, raise_if_interrupted, Interrupted, Terminated
handle_interrupts()

class Thing:
    pass

def callback(ref):  # like importlib's module-lock clean-up: Python cannot raise from here
    os.kill(os.getpid(), getattr(signal, sys.argv[1]))
    for _ in range(100000):
        pass  # the handler runs in here

thing = Thing()
ref = weakref.ref(thing, callback)
del thing
try:
    raise_if_interrupted()
except (Interrupted, Terminated) as exc:
    print("raised again:", type(exc).__name__)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_inside_a_callback_is_raised_later_without_a_traceback(sig):
    """A signal whose exception Python swallows (it arrived in a weakref callback: seen in CI as
    "Exception ignored in: <function _get_module_lock.<locals>.cb>" and a traceback above the clean
    message) is raised again by raise_if_interrupted, and nothing is printed for the swallowed one;
    other unraisable exceptions are still reported."""
    import subprocess
    import sys

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    run = subprocess.run([sys.executable, "-c", _SIGNAL_IN_A_CALLBACK, sig], capture_output=True, text=True,
                         env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"raised again: {'Terminated' if sig == 'SIGTERM' else 'Interrupted'}"
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr, run.stderr
    other = subprocess.run([sys.executable, "-c", "import weakref\nfrom molgiae.runtime import handle_interrupts\n"
                            "handle_interrupts()\nclass T: pass\nt = T()\n"
                            "r = weakref.ref(t, lambda ref: 1 / 0)\ndel t\n"], capture_output=True, text=True,
                           env=env, timeout=60)
    assert "ZeroDivisionError" in other.stderr and "Exception ignored" in other.stderr


@pytest.mark.parametrize("sig, code, word", [("SIGTERM", 143, "SIGTERM"), ("SIGINT", 130, "Ctrl-C")])
def test_signal_stops_embed_cleanly_and_says_so(tiny_checkpoint, tmp_path, sig, code, word):
    import signal
    import subprocess
    import sys
    import time

    smi = _slow_xyz(tmp_path / "slow.xyz")
    out = tmp_path / "e.h5"
    out.write_text("previous result")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "molgiae", "embed", str(smi), "-o", str(out), "--model",
                             str(tiny_checkpoint), "--no-read-ahead", "--no-smiles", "-q"],
                            stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list(tmp_path.glob("e.h5.tmp-*")) and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read()
    time.sleep(0.3)
    proc.send_signal(getattr(signal, sig))
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, stderr
    assert f"interrupted ({word}): no output was written to {out}" in stderr and "Traceback" not in stderr
    assert out.read_text() == "previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.h5", "slow.xyz"]


def test_huge_record_names_are_capped(tmp_path):
    from molgiae.data.record import MAX_NAME_CHARS

    title = "x" * 5_000_000
    p = tmp_path / "long.xyz"
    p.write_text(f"3\n{title}\n{WATER}")
    (rec,) = _records(p)
    assert len(rec.name) < MAX_NAME_CHARS + 50 and "5,000,000 characters" in rec.name
    sdf = write_sdf(tmp_path / "long.sdf", [title + "\nbroken record\n"])
    (err,) = _records(sdf)
    assert isinstance(err, RecordError) and len(err.name) < MAX_NAME_CHARS + 50 and len(str(err)) < 5000


def test_an_interrupt_swallowed_by_a_c_extension_still_stops_the_stream(tiny_model, monkeypatch, tmp_path):
    """Python code (a library's broad ``except``) that swallows the KeyboardInterrupt of a Ctrl-C
    does not let the run finish: the signal was recorded, and the stream raises it again."""
    import signal
    import time

    from molgiae import runtime
    from molgiae.embedding.streaming import stream_results

    monkeypatch.setattr(runtime, "_received", [])
    old = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        runtime.handle_interrupts()
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        except KeyboardInterrupt:
            pass  # caught and dropped, as a broad except would
        assert runtime.interrupted_by() == "Ctrl-C"
        example = tmp_path / "in.sdf"
        shutil.copy(EXAMPLE_SDF, example)
        records = _records(example)[:3]
        with pytest.raises(KeyboardInterrupt):
            list(stream_results(tiny_model, enumerate(records), lambda recs: [None] * len(recs)))
    finally:
        signal.signal(signal.SIGINT, old[0])
        signal.signal(signal.SIGTERM, old[1])
