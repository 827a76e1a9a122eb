"""Tests of molgiae.embedding and the embed / reconstruct / merge / map commands.

Real RDKit, ASE, h5py and torch (a tiny untrained model from conftest's ``tiny_checkpoint``),
no mocks; every file is written into tmp_path.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from typer.testing import CliRunner

import ase
import ase.io

from tests.molfiles import molblock, write_sdf
from molgiae.cli import app
from molgiae.data.readers import iter_records
from molgiae.data.record import ConformerRecord
from molgiae.embedding import (
    ERROR_DATASETS,
    ROW_DATASETS,
    MergeError,
    NothingWrittenError,
    embed_items_to_hdf5,
    embed_to_hdf5,
    merge_hdf5,
    parse_shard,
    reconstruct_to_sdf,
    stream_results,
)
from molgiae.data.batching import PAIR_BUDGET_ATOMS, pair_budget_batches

runner = CliRunner()


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: one thread is fastest, and the test machine is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def qm9_records(qm9_fixture_npz) -> list[ConformerRecord]:
    return list(iter_records(qm9_fixture_npz))


def run_cli(*args: str):
    """Invoke the CLI in-process; returns the click Result (exit_code, stdout, stderr)."""
    return runner.invoke(app, [str(a) for a in args])


def write_xyz(path: Path, mols: list[tuple[np.ndarray, np.ndarray, str]]) -> Path:
    frames = []
    for elements, coords, name in mols:
        atoms = ase.Atoms(numbers=elements, positions=coords)
        atoms.info["name"] = name
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return path


def rec_block(r: ConformerRecord, name: str | None = None) -> str:
    return molblock(r.elements, r.coords, name or r.name)


def smiles_3d_block(smiles: str, name: str, seed: int = 1) -> str:
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    assert AllChem.EmbedMolecule(mol, randomSeed=seed) == 0
    mol.SetProp("_Name", name)
    return Chem.MolToMolBlock(mol)


def read_h5(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        data = {k: (f[k].asstr()[:] if f[k].dtype.kind == "O" else f[k][:]) for k in ROW_DATASETS}
        data["errors"] = {k: (f["errors"][k].asstr()[:] if f["errors"][k].dtype.kind == "O" else f["errors"][k][:])
                          for k in ERROR_DATASETS}
        data["attrs"] = dict(f.attrs)
    return data


def no_leftovers(directory: Path) -> bool:
    return not any(".tmp-" in p.name for p in directory.iterdir())


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Max abs difference, scaled to |z| when the codes are larger than 1."""
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))


# --------------------------------------------------------------------------- invariance


def test_rotated_translated_reordered_files_give_the_same_embeddings(tiny_model, qm9_records, tmp_path):
    from molgiae.group import random_rotation

    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    originals = qm9_records[:40]
    motions, moved = [], []
    for r in originals:
        R = random_rotation(dtype=torch.float64).numpy()
        t = rng.normal(0.0, 5.0, 3)
        perm = rng.permutation(r.n_atoms)
        motions.append((R, t, perm))
        moved.append((r.elements[perm], (r.coords @ R.T + t)[perm], r.name))
    ref = tiny_model.embed_records(originals)
    assert np.abs(ref).max() > 1e-3  # not a degenerate all-zero code

    xyz = write_xyz(tmp_path / "moved.xyz", moved)
    summary = embed_to_hdf5(tiny_model, [str(xyz)], tmp_path / "xyz.h5", batch_size=16)
    assert summary.n_embedded == 40 and summary.n_failed == 0
    got = read_h5(tmp_path / "xyz.h5")
    assert list(got["name"]) == [r.name for r in originals]
    assert max_diff(got["embedding"], ref) <= 1e-5

    # SDF stores 4 decimals: compare with the file's own coordinates moved back (exact
    # invariance through reader + pipeline), and with the originals up to that rounding.
    sdf = write_sdf(tmp_path / "moved.sdf", [molblock(e, x, n) for e, x, n in moved])
    embed_to_hdf5(tiny_model, [str(sdf)], tmp_path / "sdf.h5", batch_size=16)
    got = read_h5(tmp_path / "sdf.h5")
    back = []
    for rec, (R, t, perm) in zip(iter_records(sdf), motions):
        inv = np.argsort(perm)
        back.append(ConformerRecord(rec.elements[inv], ((rec.coords - t) @ R)[inv], name=rec.name))
    assert max_diff(got["embedding"], tiny_model.embed_records(back)) <= 1e-5
    assert max_diff(got["embedding"], ref) <= 1e-3


def test_embeddings_do_not_depend_on_batch_size(tiny_model, qm9_fixture_npz, qm9_records, tmp_path):
    results = {}
    for bs in (1, 7, 64):
        embed_to_hdf5(tiny_model, [str(qm9_fixture_npz)], tmp_path / f"b{bs}.h5", batch_size=bs,
                      window_batches=4, smiles=False)
        results[bs] = read_h5(tmp_path / f"b{bs}.h5")
    for bs in (7, 64):
        assert list(results[bs]["name"]) == list(results[1]["name"])
        assert max_diff(results[bs]["embedding"], results[1]["embedding"]) <= 1e-5
    assert list(results[64]["name"]) == [r.name for r in qm9_records]  # size bucketing keeps input order


# --------------------------------------------------------------------------- layout, shards, merge


@pytest.fixture()
def mixed_inputs(qm9_fixture_npz, qm9_records, tmp_path) -> list[str]:
    """QM9 npz + an SDF with a malformed block in the middle + a missing file."""
    sdf = write_sdf(tmp_path / "few.sdf", [rec_block(qm9_records[40]), "garbage\nnot a molblock\n",
                                           rec_block(qm9_records[41])])
    return [str(qm9_fixture_npz), str(sdf), str(tmp_path / "missing.sdf")]


def test_shards_merge_to_the_unsharded_file(tiny_checkpoint, mixed_inputs, tmp_path):
    common = ["--model", tiny_checkpoint, "--device", "cpu", "--quiet", "--batch-size", "16"]
    assert run_cli("embed", *mixed_inputs, "-o", tmp_path / "all.h5", *common).exit_code == 0
    for i in range(2):
        res = run_cli("embed", *mixed_inputs, "-o", tmp_path / f"s{i}.h5", "--shard", f"{i}/2", *common)
        assert res.exit_code == 0, res.output
    res = run_cli("merge", tmp_path / "s1.h5", tmp_path / "s0.h5", "-o", tmp_path / "merged.h5")
    assert res.exit_code == 0, res.output
    assert "merged 133 embeddings and 2 errors" in res.stderr

    full, merged = read_h5(tmp_path / "all.h5"), read_h5(tmp_path / "merged.h5")
    s0 = read_h5(tmp_path / "s0.h5")
    assert s0["attrs"]["shard"] == "0/2" and merged["attrs"]["shard"] == ""
    assert np.all(s0["input_order"] % 2 == 0) and 0 < len(s0["name"]) < len(full["name"])
    assert max_diff(merged["embedding"], full["embedding"]) <= 1e-5
    for key in ROW_DATASETS[1:]:
        assert np.array_equal(merged[key], full[key]), key
    for key in ERROR_DATASETS:
        assert np.array_equal(merged["errors"][key], full["errors"][key]), key
    assert list(full["errors"]["record"]) == [1, -1]  # the malformed block, the missing file
    for key in ("model_sha256", "embedding_dim", "inputs", "model_name"):
        assert merged["attrs"][key] == full["attrs"][key]


def test_merge_refuses_mismatches(tiny_checkpoint, tiny_model, qm9_records, tmp_path):
    items = qm9_records[:6]
    for i in range(2):
        embed_items_to_hdf5(tiny_model, iter(items), tmp_path / f"s{i}.h5", inputs=["x"], shard=(i, 2))
    with pytest.raises(MergeError, match="s0.h5 and .*s0b.h5|s0b.h5 and .*s0.h5"):
        (tmp_path / "s0b.h5").write_bytes((tmp_path / "s0.h5").read_bytes())
        merge_hdf5([tmp_path / "s0.h5", tmp_path / "s1.h5", tmp_path / "s0b.h5"], tmp_path / "m.h5")
    other = tmp_path / "other.pt"  # same weights, a different file: a different sha256
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["metadata"] = {"name": "another"}
    torch.save(ckpt, other)
    from molgiae.api import load_model

    embed_items_to_hdf5(load_model(other), iter(items), tmp_path / "o1.h5", inputs=["x"], shard=(1, 2))
    res = run_cli("merge", tmp_path / "s0.h5", tmp_path / "o1.h5", "-o", tmp_path / "m.h5")
    assert res.exit_code == 1
    assert "o1.h5 has a different model (sha256)" in res.stderr
    assert not (tmp_path / "m.h5").exists() and no_leftovers(tmp_path)
    res = run_cli("merge", tmp_path / "s0.h5", "-o", tmp_path / "m.h5")
    assert res.exit_code == 0 and "shard(s) 1/2 missing" in res.stderr


def test_hdf5_layout_is_plain_h5py_and_pandas(tiny_model, mixed_inputs, tmp_path):
    out = tmp_path / "emb.h5"
    embed_to_hdf5(tiny_model, mixed_inputs, out)
    with h5py.File(out, "r") as f:
        n, d = f["embedding"].shape
        assert (n, d) == (133, 16) and f["embedding"].dtype == np.float32
        assert f["n_atoms"].dtype == np.int32 and f["record"].dtype == np.int64
        assert f["embedding"].compression == "gzip" and f["embedding"].maxshape == (None, 16)
        df = pd.DataFrame({"name": f["name"].asstr()[:], "source": f["source"].asstr()[:],
                           "record": f["record"][:], "smiles": f["smiles"].asstr()[:],
                           "n_atoms": f["n_atoms"][:], "input_order": f["input_order"][:]})
        errors = pd.DataFrame({k: (f["errors"][k].asstr()[:] if f["errors"][k].dtype.kind == "O" else f["errors"][k][:])
                               for k in f["errors"]})
        attrs = dict(f.attrs)
    assert df.name.iloc[0] == "gdb_1" and df.n_atoms.iloc[0] == 5 and df.smiles.iloc[0] == "C"
    assert df.input_order.is_monotonic_increasing
    assert (df.smiles != "").all()  # npz SMILES, or perceived from the SDF's geometry
    assert list(errors.reason.str.contains("could not parse|file not found")) == [True, True]
    for key in ("model_sha256", "model_name", "molgiae_version", "embedding_dim", "created", "shard", "inputs"):
        assert key in attrs, key
    assert attrs["model_name"] == "tiny.pt" and attrs["embedding_dim"] == 16 and attrs["shard"] == ""
    assert len(attrs["model_sha256"]) == 64 and attrs["inputs"].startswith('["')


def test_smiles_are_perceived_for_xyz_records(tiny_model, qm9_records, tmp_path):
    mols = [(r.elements, r.coords, r.name) for r in qm9_records[:3]]  # methane, ammonia, water
    xyz = write_xyz(tmp_path / "m.xyz", mols)
    embed_to_hdf5(tiny_model, [str(xyz)], tmp_path / "a.h5")
    assert list(read_h5(tmp_path / "a.h5")["smiles"]) == ["C", "N", "O"]
    embed_to_hdf5(tiny_model, [str(xyz)], tmp_path / "b.h5", smiles=False)
    assert list(read_h5(tmp_path / "b.h5")["smiles"]) == ["", "", ""]


# --------------------------------------------------------------------------- bad input


@pytest.fixture()
def bad_inputs(qm9_records, tmp_path) -> dict[str, Path]:
    """Files with bad records among good ones, and files that are bad as a whole."""
    good = qm9_records[20]
    overlap = good.coords.copy()
    overlap[1] = overlap[0]
    flat = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.Compute2DCoords(flat)
    flat.SetProp("_Name", "flat")
    sdf = write_sdf(tmp_path / "mixed.sdf", [
        rec_block(good, "good1"),
        "broken\n  nonsense\n\n  3  2  0  0  0  0  0  0  0  0999 V2000\n    0.0 xx\nM  END\n",
        Chem.MolToMolBlock(flat),
        smiles_3d_block("CS", "thiol"),
        smiles_3d_block("CCl", "chloromethane"),
        molblock(good.elements, overlap, "overlap"),
        rec_block(qm9_records[50], "good2"),
    ])
    xyz = tmp_path / "nan.xyz"
    xyz.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\nH nan 0.9 0\n3\nwater2\nO 0 0 0\nH 0.96 0 0\nH -0.2 0.93 0.1\n")
    smi = tmp_path / "mols.smi"
    smi.write_text("CCO ethanol\nC1CC(( broken\nCC(=O)O acetic\n")
    gz_text = write_sdf(tmp_path / "full.sdf", [rec_block(r) for r in qm9_records[:30]]).read_bytes()
    packed = gzip.compress(gz_text)
    trunc = tmp_path / "trunc.sdf.gz"
    trunc.write_bytes(packed[: len(packed) // 2])
    empty = tmp_path / "empty.sdf"
    empty.write_text("")
    unknown = tmp_path / "mol.pdbqt"
    unknown.write_text("ATOM\n")
    return {"sdf": sdf, "xyz": xyz, "smi": smi, "trunc": trunc, "empty": empty, "unknown": unknown,
            "missing": tmp_path / "missing.xyz"}


def test_bad_records_are_skipped_and_reported(tiny_checkpoint, bad_inputs, tmp_path):
    out = tmp_path / "out.h5"
    b = bad_inputs
    res = run_cli("embed", *b.values(), "-o", out, "--model", tiny_checkpoint, "--device", "cpu")
    assert res.exit_code == 0, res.output
    err = res.stderr
    expected = [
        f"skipped: {b['sdf']}, record 1 (broken): RDKit could not parse",
        f"skipped: {b['sdf']}, record 2 (flat): no 3-D coordinates",
        f"skipped: {b['sdf']}, record 3 (thiol): element(s) S outside the model's vocabulary",
        f"skipped: {b['sdf']}, record 4 (chloromethane): element(s) Cl outside",
        f"skipped: {b['sdf']}, record 5 (overlap): atoms 1 and 2 are 0.000 Å apart",
        f"skipped: {b['xyz']}, record 0 (water): non-finite coordinate",
        f"skipped: {b['smi']}, record 1 (broken): invalid SMILES 'C1CC((' on line 2",
        f"skipped: {b['trunc']}, record ",
        f"skipped: {b['empty']}, record -1: file is empty",
        f"skipped: {b['unknown']}, record -1: unsupported file extension '.pdbqt'",
        f"skipped: {b['missing']}, record -1: file not found",
    ]
    for line in expected:
        assert line in err, line
    assert "truncated or corrupt gzip stream" in err
    data = read_h5(out)
    n_trunc = int(np.sum(data["source"] == str(b["trunc"])))
    assert 0 < n_trunc < 30  # the records before the cut are kept
    good = [n for n in data["name"] if not n.startswith("gdb_")]
    assert good == ["good1", "good2", "water2", "ethanol", "acetic"]
    n_err = len(data["errors"]["reason"])
    assert n_err == len(expected)
    assert f"embedded {len(data['name'])} conformers from 7 files; {n_err} failed (see the errors table in {out})" in err
    errs = data["errors"]
    k = list(errs["name"]).index("thiol")
    assert errs["source"][k] == str(b["sdf"]) and errs["record"][k] == 3 and "vocabulary" in errs["reason"][k]


def test_no_good_record_exits_1_and_writes_nothing(tiny_checkpoint, bad_inputs, tmp_path):
    out = tmp_path / "none.h5"
    b = bad_inputs
    res = run_cli("embed", b["empty"], b["missing"], b["unknown"], "-o", out, "--model", tiny_checkpoint, "-q")
    assert res.exit_code == 1
    assert "embedded 0 conformers from 3 files; 3 failed" in res.stderr
    assert "skipped:" not in res.stderr  # --quiet
    assert not out.exists() and no_leftovers(tmp_path)
    res = run_cli("reconstruct", b["empty"], "-o", tmp_path / "none.sdf", "--model", tiny_checkpoint, "-q")
    assert res.exit_code == 1 and not (tmp_path / "none.sdf").exists()
    res = run_cli("embed", b["xyz"], "-o", out, "--model", tiny_checkpoint, "--shard", "2/2")
    assert res.exit_code != 0 and "0 <= I < N" in res.output + res.stderr
    with pytest.raises(ValueError):
        parse_shard("1-2")


def test_reconstruct_reports_molecules_above_max_atoms(tiny_checkpoint, qm9_records, tmp_path):
    diol = smiles_3d_block("OCCCCCCCCCCCCO", "dodecanediol")  # C12H26O2: 40 atoms
    assert Chem.MolFromMolBlock(diol, removeHs=False).GetNumAtoms() == 40
    sdf = write_sdf(tmp_path / "big.sdf", [rec_block(qm9_records[30]), diol, rec_block(qm9_records[31])])
    res = run_cli("reconstruct", sdf, "-o", tmp_path / "r.sdf", "--model", tiny_checkpoint, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert (f"skipped: {sdf}, record 1 (dodecanediol): 40 atoms: above this model's max_atoms=29"
            in res.stderr)
    assert "reconstructed 2 conformers from 1 file; 1 failed" in res.stderr
    assert len(Chem.SDMolSupplier(str(tmp_path / "r.sdf"), sanitize=False, removeHs=False)) == 2
    res = run_cli("embed", sdf, "-o", tmp_path / "e.h5", "--model", tiny_checkpoint, "-q")
    assert res.exit_code == 0 and "embedded 3 conformers" in res.stderr  # the encoder is size-free


# --------------------------------------------------------------------------- interruption


def test_interrupted_embed_leaves_no_output(tiny_model, qm9_records, tmp_path):
    def interrupted():
        for k, rec in enumerate(qm9_records):
            if k == 100:
                raise KeyboardInterrupt
            yield rec

    out = tmp_path / "emb.h5"
    with pytest.raises(KeyboardInterrupt):
        embed_items_to_hdf5(tiny_model, interrupted(), out, batch_size=8, window_batches=2)
    assert not out.exists() and no_leftovers(tmp_path)
    out.write_text("previous result")  # an earlier OUT survives an interrupted run untouched
    with pytest.raises(KeyboardInterrupt):
        embed_items_to_hdf5(tiny_model, interrupted(), out, batch_size=8, window_batches=2)
    assert out.read_text() == "previous result" and no_leftovers(tmp_path)


def test_interrupted_reconstruct_leaves_no_output(tiny_model, qm9_fixture_npz, tmp_path):
    seen = []

    def progress(k):
        seen.append(k)
        if len(seen) == 90:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        reconstruct_to_sdf(tiny_model, [str(qm9_fixture_npz)], tmp_path / "r.sdf", batch_size=8,
                           window_batches=2, progress=progress)
    assert not (tmp_path / "r.sdf").exists() and no_leftovers(tmp_path)


def test_library_raises_when_nothing_embedded(tiny_model, tmp_path):
    with pytest.raises(NothingWrittenError) as info:
        embed_to_hdf5(tiny_model, [str(tmp_path / "nothing.sdf")], tmp_path / "x.h5")
    assert info.value.summary.n_failed == 1 and not (tmp_path / "x.h5").exists()


# --------------------------------------------------------------------------- reconstruct output


def _sdf_mols(path: Path) -> list:
    mols = list(Chem.SDMolSupplier(str(path), sanitize=False, removeHs=False))
    assert all(m is not None for m in mols)
    return mols


def test_reconstruct_writes_readable_sdf_with_matching_rmsd(tiny_checkpoint, qm9_fixture_npz, qm9_records, tmp_path):
    out = tmp_path / "rec.sdf"
    res = run_cli("reconstruct", qm9_fixture_npz, "-o", out, "--model", tiny_checkpoint, "--device", "cpu",
                  "-q", "--batch-size", "32")
    assert res.exit_code == 0, res.output
    mols = _sdf_mols(out)
    assert len(mols) == len(qm9_records)
    rmsds = []
    for mol, rec in zip(mols, qm9_records):
        props = mol.GetPropsAsDict()
        assert mol.GetProp("_Name") == rec.name
        assert props["molgiae_source"] == str(qm9_fixture_npz) and int(props["molgiae_record"]) == rec.index
        assert 0.0 <= float(props["molgiae_element_accuracy"]) <= 1.0
        assert mol.GetNumAtoms() == rec.n_atoms
        x = mol.GetConformer().GetPositions()
        rmsd = float(np.sqrt(((x - rec.coords) ** 2).sum(1).mean()))
        assert abs(rmsd - float(props["molgiae_rmsd"])) <= 1e-3
        rmsds.append(float(props["molgiae_rmsd"]))
    line = res.stdout.strip().splitlines()[-1]
    assert f"rmsd mean {np.mean(rmsds):.4f} Å, median {np.median(rmsds):.4f} Å" in line

    res = run_cli("reconstruct", qm9_fixture_npz, "-o", tmp_path / "can.sdf", "--canonical",
                  "--model", tiny_checkpoint, "-q")
    assert res.exit_code == 0, res.output
    canon = _sdf_mols(tmp_path / "can.sdf")
    assert [m.GetNumAtoms() for m in canon] == [r.n_atoms for r in qm9_records]
    for mol in canon:
        assert np.abs(mol.GetConformer().GetPositions().mean(0)).max() <= 1e-3


# --------------------------------------------------------------------------- map


def test_map_writes_png(tiny_model, qm9_fixture_npz, tmp_path):
    h5 = tmp_path / "emb.h5"
    embed_to_hdf5(tiny_model, [str(qm9_fixture_npz)], h5, smiles=False)
    png = tmp_path / "map.png"
    res = run_cli("map", h5, "-o", png, "--method", "pca", "--color-by", "n_atoms")
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 1000
    labels = tmp_path / "labels.csv"
    names = read_h5(h5)["name"]
    pd.DataFrame({"name": names[::2], "ring": ["yes", "no"] * (len(names[::2]) // 2) + ["no"] * (len(names[::2]) % 2)}
                 ).to_csv(labels, index=False)
    res = run_cli("map", h5, "-o", tmp_path / "lab.png", "--color-by", "ring", "--labels", labels)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "lab.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res = run_cli("map", h5, "-o", tmp_path / "bad.png", "--color-by", "no_such_column")
    assert res.exit_code == 1 and "not a per-row dataset" in res.stderr


def test_tsne_without_scikit_learn_says_how_to_install(tiny_model, qm9_fixture_npz, tmp_path):
    try:
        import sklearn  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("scikit-learn is installed")
    h5 = tmp_path / "emb.h5"
    embed_to_hdf5(tiny_model, [str(qm9_fixture_npz)], h5, smiles=False)
    res = run_cli("map", h5, "-o", tmp_path / "t.png", "--method", "tsne")
    assert res.exit_code == 1 and "pip install scikit-learn" in res.stderr
    assert not (tmp_path / "t.png").exists()


# --------------------------------------------------------------------------- batching and reading


def grid_record(n: int, index: int) -> ConformerRecord:
    """A carbon cluster of n atoms on a 1.5 Å grid (valid geometry, any size)."""
    side = int(np.ceil(n ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n] * 1.5
    return ConformerRecord(elements=np.full(n, 6), coords=grid + 0.01 * index, name=f"c{n}_{index}",
                           source="grid", index=index)


def test_pair_budget_batches_partition_in_order_within_budget():
    rng = np.random.default_rng(0)
    sizes = np.sort(rng.integers(3, 120, size=300))
    batches = pair_budget_batches(sizes, 64)
    assert [k for b in batches for k in b] == list(range(len(sizes)))
    budget = 64 * PAIR_BUDGET_ATOMS**2
    for b in batches:
        widest = int(sizes[b].max())
        assert len(b) <= 64 and (len(b) == 1 or len(b) * widest**2 <= budget)
    assert pair_budget_batches([20] * 130, 64) == [list(range(64)), list(range(64, 128)), [128, 129]]


def test_large_molecules_get_smaller_batches_and_the_same_codes(tiny_model):
    """Input order is kept, batches of big molecules stay under the pair budget, and the codes
    do not depend on who shares a batch."""
    records = [grid_record(n, k) for k, n in enumerate([12, 70, 9, 45, 70, 15] * 8)]
    shapes = []

    def process(batch):
        shapes.append((len(batch), max(r.n_atoms for r in batch)))
        return tiny_model.embed_records(batch)

    out = list(stream_results(tiny_model, enumerate(records), process, batch_size=16))
    assert [pos for pos, _, _ in out] == list(range(len(records)))
    assert all(b * n * n <= 16 * PAIR_BUDGET_ATOMS**2 or b == 1 for b, n in shapes)
    assert any(n == 70 and b < 16 for b, n in shapes)
    alone = np.concatenate([tiny_model.embed_records([r]) for r in records])
    assert max_diff(np.stack([z for _, _, z in out]), alone) <= 1e-5


def test_reader_process_and_in_line_reading_write_the_same_file(tiny_checkpoint, bad_inputs, tmp_path):
    common = ["--model", tiny_checkpoint, "--device", "cpu", "--quiet"]
    inputs = list(bad_inputs.values())
    assert run_cli("embed", *inputs, "-o", tmp_path / "ahead.h5", *common).exit_code == 0
    assert run_cli("embed", *inputs, "-o", tmp_path / "inline.h5", "--no-read-ahead", *common).exit_code == 0
    a, b = read_h5(tmp_path / "ahead.h5"), read_h5(tmp_path / "inline.h5")
    assert np.array_equal(a["embedding"], b["embedding"])
    for key in ROW_DATASETS[1:]:
        assert np.array_equal(a[key], b[key]), key
    for key in ERROR_DATASETS:
        assert np.array_equal(a["errors"][key], b["errors"][key]), key
    assert len(a["errors"]["reason"]) >= 10 and all(s for s in a["smiles"])


def test_api_keeps_input_order_across_sizes(tiny_model):
    """load_model().embed / .reconstruct batch by size internally; results come back in input order."""
    records = [grid_record(n, k) for k, n in enumerate([28, 5, 70, 12, 5, 20, 9])]
    z = tiny_model.embed(records, batch_size=3)
    alone = np.concatenate([tiny_model.embed_records([r]) for r in records])
    assert z.shape == alone.shape and max_diff(z, alone) <= 1e-5
    small = [r for r in records if r.n_atoms <= 29]
    recon = tiny_model.reconstruct(small, batch_size=2)
    assert [r.record.name for r in recon] == [r.name for r in small]
    assert [len(r.coords) for r in recon] == [r.n_atoms for r in small]
