"""GEOM readers (rdkit_folder pickles, msgpack), the HDF5 conformer store, `molgiae data prepare`,
training on a store, molecule-level splits and conformer sampling.

Fixtures are written here in the exact GEOM layouts: real RDKit molecules embedded with ETKDG
in the pickles, msgpack streams written with the msgpack package. No mocks. The synthetic
conformer ensembles of the shared data folder (a stand-in for GEOM, not GEOM) are outside the
repo (tests/shared_data.py: their test is skipped when the file is absent, a failure under CI),
and an ensemble npz written here covers the same code path.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import h5py
import msgpack
import numpy as np
import pytest
import torch
from rdkit import Chem
from rdkit.Chem import AllChem
from typer.testing import CliRunner

from molgiae.cli import app
from molgiae.data.geom import read_geom_msgpack, read_geom_rdkit_folder
from molgiae.data.loading import load_conformers
from molgiae.data.split import name_key
from molgiae.data.readers import iter_records, read_records, records_only
from molgiae.data.record import ConformerRecord, RecordError
from molgiae.data.split import split_ids
from molgiae.data.store import (
    STORE_FORMAT, StoreConformerSet, is_store, molecule_id, normalised_weights, read_store, read_store_errors,
    write_store,
)
from molgiae.train.sampling import sample_conformers
from tests.shared_data import shared_file

FIXTURES = Path(__file__).parent / "fixtures"
QM9_NPZ = FIXTURES / "qm9_fixture.npz"
QM9_XYZ = sorted(FIXTURES.glob("dsgdb9nsd_*.xyz"))
SYNTHETIC = "synthetic/qm9_sample1000_rdkit_mmff94_conformers.npz"

# SMILES -> number of conformers; small molecules of the QM9 vocabulary (H C N O F)
MOLECULES = {"CCO": 3, "CC(=O)NC": 4, "OCC(F)CO": 5, "C1CC1N": 2}
TINY_TRAIN = ["--features", "16", "--embedding-dim", "16", "--encoder-layers", "1", "--decoder-layers", "1",
              "--decoder", "transformer", "--batch-size", "8", "--epochs", "1", "--threads", "1",
              "--device", "cpu", "--quiet"]


# --------------------------------------------------------------------------- fixtures in GEOM layouts


def _embedded(smiles: str, k: int, seed: int):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=k, params=params))
    assert len(cids) == k, smiles
    return mol, cids


@pytest.fixture(scope="module")
def ensembles():
    """{smiles: [(Z [n], X [n, 3], weight, energy)]}: the ground truth the fixtures are written from."""
    rng = np.random.default_rng(7)
    out = {}
    for m, (smiles, k) in enumerate(MOLECULES.items()):
        mol, cids = _embedded(smiles, k, seed=100 + m)
        z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
        w = rng.dirichlet(np.ones(k))
        e = -200.0 - rng.random(k)
        out[smiles] = [(z, mol.GetConformer(c).GetPositions(), float(w[j]), float(e[j])) for j, c in enumerate(cids)]
    return out


def _single_conformer_mol(smiles: str, seed: int, coords: np.ndarray):
    mol, cids = _embedded(smiles, 1, seed)
    conf = mol.GetConformer(cids[0])
    for i, p in enumerate(coords):
        conf.SetAtomPosition(i, p.tolist())
    return mol


@pytest.fixture(scope="module")
def rdkit_folder(tmp_path_factory, ensembles):
    """A GEOM rdkit_folder: summary_qm9.json + qm9/<name>.pickle, plus one summary entry without
    a pickle_path (GEOM has those) and one whose pickle is missing."""
    root = tmp_path_factory.mktemp("geom") / "rdkit_folder"
    (root / "qm9").mkdir(parents=True)
    summary = {}
    for m, (smiles, confs) in enumerate(ensembles.items()):
        pickle_path = f"qm9/{smiles.replace('/', '_')}.pickle"
        conformers = []
        for j, (z, x, w, e) in enumerate(confs):
            conformers.append({"rd_mol": _single_conformer_mol(smiles, 1000 + j, x), "boltzmannweight": w,
                               "totalenergy": e, "relativeenergy": (e - confs[0][3]) * 627.5,
                               "degeneracy": 1, "geom_id": 5000 + 10 * m + j, "conformerweights": [w]})
        with open(root / pickle_path, "wb") as fh:
            pickle.dump({"conformers": conformers, "smiles": smiles, "uniqueconfs": len(confs), "charge": 0,
                         "totalconfs": len(confs), "temperature": 298.15}, fh)
        summary[smiles] = {"charge": 0, "datasets": ["qm9"], "pickle_path": pickle_path,
                           "uniqueconfs": len(confs), "totalconfs": len(confs), "temperature": 298.15}
        if m == 1:
            summary["C#N"] = {"charge": 0, "datasets": ["qm9"], "uniqueconfs": 1}  # no pickle_path
        if m == 2:
            summary["N#N"] = {"charge": 0, "pickle_path": "qm9/missing.pickle", "uniqueconfs": 2}
    (root / "summary_qm9.json").write_text(json.dumps(summary))
    return root


@pytest.fixture(scope="module")
def geom_msgpack(tmp_path_factory, ensembles):
    """A GEOM crude msgpack: two packed dicts (chunks) of SMILES -> {"conformers": [...]}."""
    path = tmp_path_factory.mktemp("geom") / "qm9_crude.msgpack"
    items = list(ensembles.items())
    with open(path, "wb") as fh:
        for part in (items[:2], items[2:]):
            chunk = {}
            for smiles, confs in part:
                chunk[smiles] = {
                    "conformers": [{"xyz": np.c_[z, x].tolist(), "boltzmannweight": w, "totalenergy": e,
                                    "geom_id": 1} for z, x, w, e in confs],
                    "charge": 0, "uniqueconfs": len(confs), "totalconfs": len(confs), "ensembleenergy": -1.0,
                }
            fh.write(msgpack.packb(chunk, use_bin_type=True))
    return path


def _write_ensemble_npz(path: Path, ensembles: dict, with_index: bool = True) -> None:
    """The conformer-ensemble npz layout (docs/data.md)."""
    Z, atom_ptr, R, conf_atom_ptr, conf_mol, w, e, smiles = [], [0], [], [0], [], [], [], []
    for m, (s, confs) in enumerate(ensembles.items()):
        Z.append(confs[0][0])
        atom_ptr.append(atom_ptr[-1] + len(confs[0][0]))
        smiles.append(s)
        for z, x, wt, en in confs:
            R.append(x)
            conf_atom_ptr.append(conf_atom_ptr[-1] + len(x))
            conf_mol.append(m)
            w.append(wt)
            e.append(en)
    n_confs = np.bincount(conf_mol)
    arrays = dict(
        format_version=np.array("molgiae-conformers-npz-1"), provenance=np.array("test fixture"),
        n_atoms=np.diff(atom_ptr).astype(np.uint8), atom_ptr=np.array(atom_ptr, np.int64),
        Z=np.concatenate(Z).astype(np.uint8), n_confs=n_confs.astype(np.int32),
        conf_ptr=np.r_[0, np.cumsum(n_confs)].astype(np.int64), conf_mol=np.array(conf_mol, np.int32),
        conf_atom_ptr=np.array(conf_atom_ptr, np.int64), R=np.concatenate(R), energy_mmff94=np.array(e),
        boltzmann_weight=np.array(w), smiles=np.array(smiles),
    )
    if with_index:
        arrays["index"] = np.arange(1001, 1001 + len(ensembles), dtype=np.int32)
    np.savez_compressed(path, **arrays)


def _flat(ensembles):
    return [(s, *c) for s, confs in ensembles.items() for c in confs]


def _prepare(*args):
    result = CliRunner().invoke(app, ["data", "prepare", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output
    return result


# --------------------------------------------------------------------------- readers


def test_rdkit_folder_reads_every_conformer_exactly(rdkit_folder, ensembles):
    items = list(read_geom_rdkit_folder(rdkit_folder))
    records = [r for r in items if isinstance(r, ConformerRecord)]
    errors = [r for r in items if isinstance(r, RecordError)]
    truth = _flat(ensembles)
    assert len(records) == len(truth)
    for rec, (smiles, z, x, w, e) in zip(records, truth):
        assert rec.name == rec.smiles == smiles
        assert np.array_equal(rec.elements, z)
        assert np.allclose(rec.coords, x, atol=1e-12)
        assert rec.properties["boltzmann_weight"] == w and rec.properties["total_energy"] == e
        assert "relative_energy" in rec.properties and "geom_id" in rec.properties
        assert "conformerweights" not in rec.properties  # lists are not properties
    assert sorted(e.name for e in errors) == ["C#N", "N#N"]
    assert any("no pickle_path" in e.reason for e in errors)
    assert any("cannot unpickle" in e.reason and "missing.pickle" in e.reason for e in errors)
    # index = conformer position in the dataset; a failed pickle skips the conformers announced for it
    indices = [i.index for i in items]
    assert indices == sorted(indices) and len(set(indices)) == len(indices)
    n_before_missing = sum(k for k in list(MOLECULES.values())[:3]) + 1  # + the C#N entry
    (missing,) = [e for e in errors if e.name == "N#N"]
    assert missing.index == n_before_missing
    assert records[-1].index == len(truth) + 1 + 2 - 1


def test_msgpack_reads_every_conformer_exactly(geom_msgpack, ensembles):
    items = list(read_geom_msgpack(geom_msgpack))
    truth = _flat(ensembles)
    assert all(isinstance(r, ConformerRecord) for r in items) and len(items) == len(truth)
    for i, (rec, (smiles, z, x, w, e)) in enumerate(zip(items, truth)):
        assert rec.index == i and rec.name == rec.smiles == smiles
        assert np.array_equal(rec.elements, z) and rec.elements.dtype == np.int64
        assert np.allclose(rec.coords, x, atol=1e-12)
        assert rec.properties["boltzmann_weight"] == w and rec.properties["total_energy"] == e


def test_readers_dispatch_geom_layouts(rdkit_folder, geom_msgpack, ensembles):
    n = sum(MOLECULES.values())
    errors: list[RecordError] = []
    for path in (rdkit_folder, rdkit_folder / "summary_qm9.json", geom_msgpack):
        records = list(records_only(read_records(path), errors))
        assert len(records) == n and records[0].source == str(path), path
    assert len(errors) == 4  # the two bad summary entries, read twice
    # an ordinary directory is still an error, and a truncated msgpack keeps what came before
    (err,) = list(read_records(rdkit_folder / "qm9"))
    assert err.reason == "is a directory, not a file"
    cut = geom_msgpack.with_name("cut.msgpack")
    data = geom_msgpack.read_bytes()
    cut.write_bytes(data[: len(data) - 200])
    items = list(read_records(cut))
    assert isinstance(items[-1], RecordError)
    good = [r for r in items if isinstance(r, ConformerRecord)]
    assert len(good) == sum(list(MOLECULES.values())[:2])  # the first chunk


def test_msgpack_malformed_conformer_is_an_error_and_reading_goes_on(tmp_path):
    path = tmp_path / "bad.msgpack"
    good = {"xyz": [[6, 0, 0, 0], [8, 1.2, 0, 0.1]], "boltzmannweight": 1.0}
    path.write_bytes(msgpack.packb({"CO": {"conformers": [{"xyz": [[6, 0, 0]]}, {"energy": 1}, good]}}))
    items = list(read_records(path))
    assert [type(i).__name__ for i in items] == ["RecordError", "RecordError", "ConformerRecord"]
    assert "shape" in items[0].reason and "no 'xyz'" in items[1].reason and items[2].index == 2


# --------------------------------------------------------------------------- store + prepare


def _store_matches_records(store: StoreConformerSet, records: list[ConformerRecord]) -> None:
    assert len(store) == len(records)
    for i, r in enumerate(records):
        a, b = store.ptr[i], store.ptr[i + 1]
        assert np.array_equal(store.elements[a:b], r.elements)
        assert np.allclose(store.coords[a:b], r.coords, atol=1e-5)  # float32 in the store
        assert store.names[i] == r.name and store.smiles[i] == r.smiles
        for k, v in r.properties.items():
            assert store.properties[i, store.property_names.index(k)] == pytest.approx(v)
    assert np.array_equal(store.keys, [molecule_id(r) for r in records])


@pytest.mark.parametrize("source", ["rdkit_folder", "msgpack", "qm9_npz", "sdf", "xyz", "ensemble_npz"])
def test_prepare_from_each_source_gives_back_the_conformers(source, tmp_path, rdkit_folder, geom_msgpack, ensembles):
    if source == "rdkit_folder":
        inputs = [rdkit_folder]
    elif source == "msgpack":
        inputs = [geom_msgpack]
    elif source == "qm9_npz":
        inputs = [QM9_NPZ]
    elif source == "xyz":
        inputs = QM9_XYZ
    elif source == "ensemble_npz":
        inputs = [tmp_path / "ensembles.npz"]
        _write_ensemble_npz(inputs[0], ensembles)
    else:  # a multi-conformer SDF written by RDKit: conformers of one molecule share the title
        inputs = [tmp_path / "confs.sdf"]
        with Chem.SDWriter(str(inputs[0])) as w:
            for m, (smiles, k) in enumerate(MOLECULES.items()):
                mol, cids = _embedded(smiles, k, seed=m)
                mol.SetProp("_Name", f"mol{m}")
                for c in cids:
                    w.write(mol, confId=c)
    out = tmp_path / "store.h5"
    _prepare(*inputs, "-o", out)
    assert is_store(out) and not list(tmp_path.glob(".store.h5*"))  # no temporary left behind
    errors: list[RecordError] = []
    records = list(records_only(iter_records([str(p) for p in inputs]), errors))
    store = read_store(out)
    _store_matches_records(store, records)
    assert isinstance(store.coords, np.memmap)  # random access, not loaded
    assert len(read_store_errors(out)) == len(errors)
    # weights: normalised per molecule, the file's Boltzmann weights where it has them
    for key in np.unique(store.keys):
        assert store.weights[store.keys == key].sum() == pytest.approx(1.0, abs=1e-6)
    if source in ("rdkit_folder", "msgpack", "ensemble_npz"):
        truth = np.array([w for *_, w, _ in _flat(ensembles)])
        assert np.allclose(store.weights, truth, atol=1e-6)  # the fixture's weights sum to 1 already
        assert len(np.unique(store.keys)) == len(MOLECULES)
    if source == "sdf":
        assert np.allclose(store.weights, np.repeat([1 / k for k in MOLECULES.values()], list(MOLECULES.values())))
        assert np.array_equal(np.unique(store.keys), np.unique([name_key(f"mol{m}") for m in range(len(MOLECULES))]))
    if source == "qm9_npz":  # QM9 molecules keep their QM9 index as molecule id (same split as the npz)
        assert np.array_equal(store.keys, load_conformers([QM9_NPZ]).keys)
    if source == "ensemble_npz":
        assert list(store.names[:1]) == ["gdb_1001"] and store.keys[0] == 1001
    with h5py.File(out) as f:
        assert f.attrs["format"] == STORE_FORMAT and f["elements"].dtype == np.uint8
        assert f["coords"].dtype == np.float32 and f["atom_ptr"].dtype == np.int64
        assert f["weight"].dtype == np.float32 and f["molecule"].dtype == np.int64
        assert f["properties"].shape == (len(store), len(store.property_names))


def test_write_store_renormalises_weights_after_dropped_conformers(tmp_path):
    x = np.array([[0.0, 0, 0], [1.1, 0, 0], [0, 1.1, 0]])
    recs = [ConformerRecord([6, 1, 1], x + i, name="a", properties={"boltzmann_weight": w}, index=i)
            for i, w in enumerate([0.5, 0.3])]  # 0.2 of the molecule was dropped
    recs += [ConformerRecord([8, 1, 1], x, name="b", properties={"boltzmann_weight": 0.4}, index=2),
             ConformerRecord([8, 1, 1], x + 1, name="b", index=3)]  # one unknown -> uniform
    items = recs + [RecordError("f", 9, "broken", "c")]
    s = write_store(items, tmp_path / "s.h5")
    assert (s.n_conformers, s.n_molecules, s.n_errors) == (4, 2, 1)
    store = read_store(tmp_path / "s.h5", mmap=False)
    assert np.allclose(store.weights, [0.625, 0.375, 0.5, 0.5])
    assert np.isnan(store.properties[3, store.property_names.index("boltzmann_weight")])
    assert normalised_weights(np.array([1, 1, 2]), np.array([0.0, 0.0, np.nan])).tolist() == [0.5, 0.5, 1.0]
    with pytest.raises(ValueError, match="no valid conformers"):
        write_store([RecordError("f", -1, "file not found")], tmp_path / "none.h5")
    assert not (tmp_path / "none.h5").exists() and not list(tmp_path.glob(".none*"))


def test_load_conformers_reads_stores_and_refuses_mixtures(tmp_path, geom_msgpack):
    _prepare(geom_msgpack, "-o", tmp_path / "a.h5")
    _prepare(QM9_XYZ[0], "-o", tmp_path / "b.h5")
    both = load_conformers([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert len(both) == sum(MOLECULES.values()) + 1 and both.weights[-1] == 1.0
    with pytest.raises(ValueError, match="cannot be mixed"):
        load_conformers([tmp_path / "a.h5", QM9_NPZ])


# --------------------------------------------------------------------------- splits and sampling


def test_no_split_leakage_with_many_conformers_per_molecule(tmp_path):
    """A store of 60 molecules x 2..9 conformers: every molecule is in exactly one split, and a
    training run's split.json lists disjoint molecule sets."""
    rng = np.random.default_rng(0)
    x = np.array([[0.0, 0, 0], [1.2, 0, 0], [0, 1.1, 0], [0.3, 0.2, 1.0]])
    items, n = [], 0
    for m in range(60):
        for _ in range(rng.integers(2, 10)):
            items.append(ConformerRecord([6, 8, 1, 1], x + 0.05 * rng.normal(size=x.shape), name=f"m{m}",
                                         properties={"boltzmann_weight": rng.random()}, index=n))
            n += 1
    write_store(items, tmp_path / "many.h5")
    data = read_store(tmp_path / "many.h5")
    splits = split_ids(data.keys, 0.2, 0.2, seed=3)
    mols = {k: set(data.keys[v].tolist()) for k, v in splits.items()}
    assert all(mols.values()) and sum(len(v) for v in mols.values()) == 60
    assert not (mols["train"] & mols["val"]) and not (mols["train"] & mols["test"]) and not (mols["val"] & mols["test"])
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "many.h5"), "--out", str(tmp_path / "run"),
                                      "--val-fraction", "0.2", "--test-fraction", "0.2", "--split-seed", "3",
                                      "--conformer-sampling", "uniform", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert {k: set(saved[k]) for k in mols} == mols
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    # one conformer per training molecule per epoch: steps from the molecule count, not conformers
    assert ckpt["run_state"]["step"] == int(np.ceil(len(mols["train"]) / 8))
    # sampling only ever picks training conformers, one per molecule
    picked = sample_conformers(data.keys, data.weights, splits["train"], "boltzmann", np.random.default_rng(1))
    assert set(picked) <= set(splits["train"].tolist())
    assert sorted(data.keys[picked].tolist()) == sorted(mols["train"])


@pytest.mark.parametrize("mode", ["boltzmann", "uniform"])
def test_conformer_sampling_frequencies_match_weights(mode):
    keys = np.array([5, 5, 5, 9, 9, 2, 7, 7, 7, 7])
    weights = np.array([0.7, 0.2, 0.1, 0.5, 0.5, 1.0, 0.05, 0.05, 0.3, 0.6])
    ids = np.arange(len(keys))
    rng = np.random.default_rng(2024)
    n = 4000
    counts = np.zeros(len(keys))
    for _ in range(n):
        picked = sample_conformers(keys, weights, ids, mode, rng)
        assert len(picked) == 4 and sorted(keys[picked].tolist()) == [2, 5, 7, 9]
        counts[picked] += 1
    expected = weights if mode == "boltzmann" else 1.0 / np.bincount(np.unique(keys, return_inverse=True)[1])[
        np.unique(keys, return_inverse=True)[1]]
    # binomial std of a frequency at n = 4000 is at most 0.008; allow ~5 sigma
    assert np.abs(counts / n - expected).max() < 0.04, counts / n
    # a subset of a molecule's conformers is renormalised over the subset
    sub = np.array([0, 1, 3, 4, 5])
    freq = np.mean([sample_conformers(keys, weights, sub, mode, rng)[0] == 0 for _ in range(2000)])
    assert freq == pytest.approx(0.7 / 0.9 if mode == "boltzmann" else 0.5, abs=0.05)


# --------------------------------------------------------------------------- end to end


def test_prepare_then_train_on_an_ensemble_fixture(tmp_path, ensembles):
    """Own ensemble npz (README layout) -> store -> one short epoch of `molgiae train` (Boltzmann)."""
    npz = tmp_path / "ens.npz"
    _write_ensemble_npz(npz, ensembles, with_index=False)
    _prepare(npz, "-o", tmp_path / "ens.h5")
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "ens.h5"), "--out", str(run),
                                      "--val-fraction", "0.3", "--test-fraction", "0.0",
                                      "--conformer-sampling", "boltzmann", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["config"]["train"]["conformer_sampling"] == "boltzmann" and ckpt["run_state"]["epoch"] == 1
    assert (run / "metrics.csv").read_text().count("\n") == 2


def test_prepare_synthetic_ensembles_then_train(tmp_path):
    """The shared synthetic RDKit/MMFF94 ensembles (a GEOM stand-in, not GEOM): every conformer
    comes back, molecule ids are the QM9 indices, weights are the file's; then a short epoch."""
    synthetic = shared_file(SYNTHETIC)
    store = tmp_path / "synthetic.h5"
    _prepare(synthetic, "-o", store)
    data = read_store(store)
    with np.load(synthetic) as d:
        assert len(data) == len(d["conf_mol"]) == 5413
        assert np.array_equal(data.ptr, d["conf_atom_ptr"])
        assert np.allclose(data.coords, d["R"], atol=1e-5)
        assert np.array_equal(data.elements[d["conf_atom_ptr"][:-1]], d["Z"][d["atom_ptr"][d["conf_mol"]]])
        assert np.array_equal(data.keys, d["index"][d["conf_mol"]])
        assert np.allclose(data.weights, d["boltzmann_weight"], atol=1e-6)
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(store), "--out", str(run), "--max-molecules", "48",
                                      "--val-fraction", "0.01",
                                      "--conformer-sampling", "boltzmann", *TINY_TRAIN])
    assert result.exit_code == 0, result.output
    assert torch.load(run / "last.pt", weights_only=True)["run_state"]["step"] == 6
