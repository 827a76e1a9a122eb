"""Tests of molgiae.data.readers on real files: committed fixtures and files written to tmp_path.

Real RDKit and ASE, no mocks. Only the CDK2 SDF of the shared data folder is outside the repo
(tests/shared_data.py: skipped when absent, a failure under CI).
"""
from __future__ import annotations

import gzip
import io
import shutil
import tarfile
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import AllChem, rdDetermineBonds

import ase
import ase.io

from molgiae.data.readers import (
    QM9_PROPERTY_NAMES,
    SUPPORTED_SUFFIXES,
    iter_records,
    read_records,
    records_only,
)
from molgiae.data.record import ConformerRecord, RecordError
from tests.shared_data import shared_file

FIXTURES = Path(__file__).parent / "fixtures"
QM9_NPZ = FIXTURES / "qm9_fixture.npz"
QM9_XYZ = sorted(FIXTURES.glob("dsgdb9nsd_*.xyz"))
CDK2_SDF = "ood/rdkit_fastcluster_cdk2_3d.sdf.gz"


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def qm9():
    """The npz fixture as plain arrays, plus per-molecule slices."""
    with np.load(QM9_NPZ) as d:
        data = {k: d[k] for k in d.files}
    ptr = data["ptr"]
    data["mols"] = [
        (int(data["index"][i]), data["Z"][ptr[i]:ptr[i + 1]].astype(int), data["R"][ptr[i]:ptr[i + 1]])
        for i in range(len(data["index"]))
    ]
    return data


def split(items):
    items = list(items)
    return (
        [x for x in items if isinstance(x, ConformerRecord)],
        [x for x in items if isinstance(x, RecordError)],
        items,
    )


def rdkit_mol(Z, R, name, props=None):
    """An RDKit mol from atoms + one 3-D conformer, bonds perceived from the geometry."""
    rw = Chem.RWMol()
    for z in Z:
        rw.AddAtom(Chem.Atom(int(z)))
    conf = Chem.Conformer(len(Z))
    for i, xyz in enumerate(R):
        conf.SetAtomPosition(i, [float(v) for v in xyz])
    conf.Set3D(True)
    rw.AddConformer(conf, assignId=True)
    mol = rw.GetMol()
    rdDetermineBonds.DetermineConnectivity(mol)
    mol.SetProp("_Name", name)
    for k, v in (props or {}).items():
        mol.SetProp(k, str(v))
    return mol


def sdf_text(mols_and_confs):
    """SD text of (mol, confId) pairs."""
    sio = io.StringIO()
    w = Chem.SDWriter(sio)
    for mol, cid in mols_and_confs:
        w.write(mol, confId=cid)
    w.close()
    return sio.getvalue()


def embedded(smiles, seed=7, name=None):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.EmbedMolecule(mol, randomSeed=seed)
    mol.SetProp("_Name", name or smiles)
    return mol


def parse_qm9_xyz_independently(path):
    """Reference values straight from the file text (a deliberately naive parser)."""
    lines = Path(path).read_text().splitlines()
    n = int(lines[0])
    head = lines[1].split()
    atoms = [ln.split() for ln in lines[2:2 + n]]
    return {
        "name": f"gdb_{head[1]}",
        "props": dict(zip(QM9_PROPERTY_NAMES, map(float, head[2:17]))),
        "symbols": [a[0] for a in atoms],
        "R": np.array([[float(t) for t in a[1:4]] for a in atoms]),
        "smiles": lines[2 + n + 1].split()[0],
    }


def with_exponents(text, marker):
    """Rewrite every number of the gdb and atom lines as mantissa<marker>exponent (same value)."""
    lines = text.splitlines(keepends=True)
    n = int(lines[0])

    def conv(tok):
        try:
            d = Decimal(tok)
        except ArithmeticError:
            return tok
        return f"{d.scaleb(3):f}{marker}-3"

    out = lines[:1]
    for ln in lines[1:2 + n]:
        toks = ln.rstrip("\n").split("\t")
        out.append("\t".join(conv(t) if t and t[0] in "-.0123456789" else t for t in toks) + "\n")
    return "".join(out + lines[2 + n:])


# --------------------------------------------------------------------------- QM9 npz


def test_npz_fixture_gives_every_molecule_exactly(qm9):
    recs, errs, items = split(read_records(QM9_NPZ))
    assert errs == []
    assert len(recs) == 131
    names = [str(s) for s in qm9["prop_names"]]
    for i, (rec, (qidx, Z, R)) in enumerate(zip(recs, qm9["mols"])):
        assert rec.index == i and rec.source == str(QM9_NPZ)
        assert rec.name == f"gdb_{qidx}"
        np.testing.assert_array_equal(rec.elements, Z)
        np.testing.assert_array_equal(rec.coords, R)  # exact
        assert rec.properties == {k: float(v) for k, v in zip(names, qm9["props"][i])}
        assert rec.smiles == str(qm9["smiles"][i])
    assert set(QM9_PROPERTY_NAMES) <= set(recs[0].properties)
    assert recs[0].properties["U0"] == pytest.approx(-40.47893)  # methane, Hartree


def test_npz_keeps_linear_molecule_in_z0_plane():
    # gdb_23 (diacetylene) lies on the x axis: real 3-D data, not a 2-D drawing.
    recs, errs, _ = split(read_records(QM9_NPZ))
    rec = next(r for r in recs if r.name == "gdb_23")
    assert np.all(rec.coords[:, 2] == 0.0) and rec.n_atoms == 6


def test_other_npz_is_a_whole_file_error(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, x=np.zeros(3))
    (err,) = list(read_records(p))
    assert isinstance(err, RecordError) and err.index == -1
    assert "not a molgiae QM9 npz" in err.reason and str(p) in str(err)


# --------------------------------------------------------------------------- QM9 original xyz


def test_qm9_xyz_files_match_npz_and_file_text(qm9):
    assert len(QM9_XYZ) == 5
    by_name = {f"gdb_{q}": (i, Z, R) for i, (q, Z, R) in enumerate(qm9["mols"])}
    names = [str(s) for s in qm9["prop_names"]]
    in_npz = 0
    for path in QM9_XYZ:
        (rec,) = list(read_records(path))
        assert isinstance(rec, ConformerRecord), str(rec)
        ref = parse_qm9_xyz_independently(path)
        assert rec.name == ref["name"] and rec.index == 0 and rec.source == str(path)
        assert [Chem.GetPeriodicTable().GetElementSymbol(int(z)) for z in rec.elements] == ref["symbols"]
        np.testing.assert_array_equal(rec.coords, ref["R"])
        assert rec.properties == ref["props"]
        assert rec.smiles == ref["smiles"]
        if rec.name in by_name:  # 24, 363, 408 are also in the npz fixture
            in_npz += 1
            i, Z, R = by_name[rec.name]
            np.testing.assert_array_equal(rec.elements, Z)
            np.testing.assert_array_equal(rec.coords, R)
            assert rec.properties == {k: float(v) for k, v in zip(names, qm9["props"][i])}
            assert rec.smiles == str(qm9["smiles"][i])
    assert in_npz == 3


@pytest.mark.parametrize("marker", ["*^", "E"])
def test_qm9_xyz_exponent_notations_give_same_numbers(tmp_path, marker):
    for path in QM9_XYZ:
        text = with_exponents(path.read_text(), marker)
        assert marker + "-3" in text
        out = tmp_path / path.name
        out.write_text(text)
        (a,) = list(read_records(path))
        (b,) = list(read_records(out))
        assert isinstance(b, ConformerRecord), str(b)
        np.testing.assert_array_equal(a.coords, b.coords)
        np.testing.assert_array_equal(a.elements, b.elements)
        assert a.properties == b.properties and a.name == b.name


def test_qm9_xyz_tar_bz2_reads_members_in_sorted_order(tmp_path):
    archive = tmp_path / "qm9_xyz.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        for path in reversed(QM9_XYZ):  # stored in reverse: the reader must sort
            tar.add(path, arcname=f"xyz/{path.name}")
    recs, errs, _ = split(read_records(archive))
    assert errs == []
    singles = [next(iter(read_records(p))) for p in QM9_XYZ]
    assert [r.name for r in recs] == [s.name for s in singles]
    for i, (r, s) in enumerate(zip(recs, singles)):
        assert r.source == str(archive) and r.index == i
        np.testing.assert_array_equal(r.coords, s.coords)
        np.testing.assert_array_equal(r.elements, s.elements)
        assert r.properties == s.properties and r.smiles == s.smiles


def test_qm9_xyz_malformed_record_names_file_and_reason(tmp_path):
    text = QM9_XYZ[0].read_text().splitlines(keepends=True)
    text[3] = "C\tnot_a_number\t0.\t1.\t0.2\n"
    bad = tmp_path / "dsgdb9nsd_bad.xyz"
    bad.write_text("".join(text))
    (err,) = list(read_records(bad))
    assert isinstance(err, RecordError) and err.index == 0 and err.name == "gdb_24"
    assert "malformed QM9 xyz record" in err.reason and "not_a_number" in err.reason
    assert str(bad) in str(err)


# --------------------------------------------------------------------------- SDF


def _flat(R):
    return len(R) > 3 and np.all(R[:, 2] == 0.0)


def test_sdf_round_trip_of_qm9_molecules(tmp_path, qm9):
    mols = [rdkit_mol(Z, R, f"gdb_{q}", {"U0": qm9["props"][i][10]}) for i, (q, Z, R) in enumerate(qm9["mols"])]
    p = tmp_path / "qm9.sdf"
    p.write_text(sdf_text((m, -1) for m in mols))
    recs, errs, items = split(read_records(p))
    assert len(items) == 131 and [x.index for x in items] == list(range(131))
    flat = {i for i, (_, _, R) in enumerate(qm9["mols"]) if _flat(R)}
    # the molblocks say 3D, so the planar molecule lying in z = 0 (gdb_23) is kept (issue 14)
    assert flat and errs == [] and flat <= {r.index for r in recs}
    for rec in recs:
        q, Z, R = qm9["mols"][rec.index]
        assert rec.name == f"gdb_{q}" and rec.source == str(p)
        np.testing.assert_array_equal(rec.elements, Z)
        np.testing.assert_allclose(rec.coords, R, atol=1e-4, rtol=0)
        assert rec.properties["U0"] == pytest.approx(qm9["props"][rec.index][10], abs=1e-6)
    assert recs[0].smiles == "C"


def test_sdf_multi_conformer_molecule_gives_one_record_per_conformer(tmp_path):
    mol = Chem.AddHs(Chem.MolFromSmiles("CCCCO"))
    cids = list(AllChem.EmbedMultipleConfs(mol, numConfs=4, randomSeed=3))
    mol.SetProp("_Name", "butanol")
    single = embedded("c1ccccc1", name="benzene")
    p = tmp_path / "confs.sdf"
    p.write_text(sdf_text([(single, -1)] + [(mol, c) for c in cids]))
    recs, errs, _ = split(read_records(p))
    assert errs == [] and len(recs) == 5
    assert [r.index for r in recs] == [0, 1, 2, 3, 4]
    assert [r.name for r in recs] == ["benzene"] + ["butanol"] * 4
    for rec, cid in zip(recs[1:], cids):
        np.testing.assert_allclose(rec.coords, mol.GetConformer(cid).GetPositions(), atol=1e-4, rtol=0)
        assert rec.smiles == "CCCCO"
    assert not np.allclose(recs[1].coords, recs[2].coords)


def test_sdf_gz_reads_like_sdf(tmp_path, qm9):
    mols = [rdkit_mol(Z, R, f"gdb_{q}") for q, Z, R in qm9["mols"][30:60]]
    text = sdf_text((m, -1) for m in mols)
    (tmp_path / "a.sdf").write_text(text)
    with gzip.open(tmp_path / "a.SDF.GZ", "wt") as f:  # suffix match is case-insensitive
        f.write(text)
    plain = list(read_records(tmp_path / "a.sdf"))
    packed = list(read_records(tmp_path / "a.SDF.GZ"))
    assert len(plain) == len(packed) == 30
    for a, b in zip(plain, packed):
        assert isinstance(b, ConformerRecord) and a.name == b.name and a.index == b.index
        np.testing.assert_array_equal(a.coords, b.coords)


def test_cdk2_ood_sdf_gives_47_records():
    recs, errs, _ = split(read_records(shared_file(CDK2_SDF)))
    assert errs == [] and len(recs) == 47
    assert all(r.name.startswith("ZINC") for r in recs)
    assert all(1 in r.elements for r in recs)  # explicit H kept


def test_sdf_sanitization_failure_still_gives_coordinates(tmp_path):
    mol = embedded("C[N+](C)(C)C", name="tetramethylammonium")
    block = Chem.MolToMolBlock(mol)
    # drop the charge: a neutral 4-valent N fails sanitization but has good coordinates
    block = "".join(ln for ln in block.splitlines(keepends=True) if not ln.startswith("M  CHG"))
    p = tmp_path / "odd.sdf"
    p.write_text(block + "$$$$\n" + sdf_text([(embedded("CCO", name="ethanol"), -1)]))
    recs, errs, _ = split(read_records(p))
    assert errs == [] and [r.name for r in recs] == ["tetramethylammonium", "ethanol"]
    np.testing.assert_allclose(recs[0].coords, mol.GetConformer().GetPositions(), atol=1e-4, rtol=0)
    assert list(recs[0].elements) == [a.GetAtomicNum() for a in mol.GetAtoms()]


def test_malformed_sdf_block_in_the_middle(tmp_path):
    good = [embedded(s, name=n) for s, n in (("CCO", "first"), ("CCN", "second"), ("CCC", "third"))]
    blocks = sdf_text((m, -1) for m in good).split("$$$$\n")
    lines = blocks[1].splitlines(keepends=True)
    lines[5] = "    1.0  2.0  C\n"  # an atom line cut short
    blocks[1] = "".join(lines)
    p = tmp_path / "broken.sdf"
    p.write_text("$$$$\n".join(blocks))
    recs, errs, items = split(read_records(p))
    assert [r.name for r in recs] == ["first", "third"]
    assert [r.index for r in recs] == [0, 2]
    (err,) = errs
    assert err.index == 1 and err.name == "second"
    msg = str(err)
    assert str(p) in msg and "record 1" in msg and "second" in msg
    assert "could not parse" in err.reason


@pytest.mark.parametrize("smiles", ["CCO", "O"])  # 9 atoms, and 3 atoms (check_geometry can't tell)
def test_2d_molblock_is_an_error(tmp_path, smiles):
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    AllChem.Compute2DCoords(mol)
    mol.SetProp("_Name", "flat")
    p = tmp_path / "flat.sdf"
    p.write_text(sdf_text([(mol, -1)]))
    (err,) = list(read_records(p))
    assert isinstance(err, RecordError) and err.index == 0 and err.name == "flat"
    assert "no 3-D coordinates" in err.reason and str(p) in str(err)


def test_mol_file(tmp_path):
    mol = embedded("CC(=O)O", name="acetic acid")
    p = tmp_path / "acid.mol"
    p.write_text(Chem.MolToMolBlock(mol))
    (rec,) = list(read_records(p))
    assert rec.name == "acetic acid" and rec.smiles == "CC(=O)O" and rec.n_atoms == 8


# --------------------------------------------------------------------------- extxyz / ASE


def _frames():
    rng = np.random.default_rng(0)
    frames = []
    for k, (sym, name) in enumerate((("CH4", "methane"), ("H2O", "water"), ("NH3", "ammonia"))):
        a = ase.Atoms(sym, positions=rng.normal(size=(len(ase.Atoms(sym)), 3)) * 1.2)
        a.info.update(name=name, charge=0, spin_multiplicity=1, weight=0.5 + k)
        frames.append(a)
    return frames


@pytest.mark.parametrize("fname", ["frames.extxyz", "frames.xyz", "frames.extxyz.gz"])
def test_extxyz_multi_frame(tmp_path, fname):
    frames = _frames()
    p = tmp_path / fname
    if fname.endswith(".gz"):
        with gzip.open(p, "wt") as f:
            ase.io.write(f, frames, format="extxyz")
    else:
        ase.io.write(p, frames, format="extxyz")
    recs, errs, _ = split(read_records(p))
    assert errs == [] and len(recs) == 3
    for i, (rec, a) in enumerate(zip(recs, frames)):
        assert rec.index == i and rec.name == a.info["name"] and rec.source == str(p)
        np.testing.assert_array_equal(rec.elements, a.numbers)
        np.testing.assert_allclose(rec.coords, a.positions, atol=1e-7, rtol=0)
        assert rec.properties["weight"] == a.info["weight"] and rec.properties["charge"] == 0


def test_plain_xyz_comment_is_the_name_and_planar_molecule_is_kept(tmp_path):
    p = tmp_path / "plain.xyz"
    p.write_text("4\nformaldehyde\nC 0 0 0\nO 1.2 0 0\nH -0.6 0.9 0\nH -0.6 -0.9 0\n")
    (rec,) = list(read_records(p))
    assert isinstance(rec, ConformerRecord) and rec.name == "formaldehyde"


def test_bad_xyz_frame_is_an_error_and_later_frames_still_read(tmp_path):
    p = tmp_path / "bad.xyz"
    p.write_text(
        "2\nfirst\nH 0 0 0\nH 0 0 0.74\n"
        "2\nsecond\nH 0 zero 0\nH 0 0 0.74\n"
        "2\nthird\nH 0 0 0\nH 0 0 0.75\n"
    )
    recs, errs, _ = split(read_records(p))
    assert [r.name for r in recs] == ["first", "third"] and [r.index for r in recs] == [0, 2]
    (err,) = errs
    assert err.index == 1 and "line 5" in err.reason and "ASE could not read" in err.reason


def test_xyz_bad_atom_count_stops_the_file(tmp_path):
    p = tmp_path / "bad_count.xyz"
    p.write_text("2\nok\nH 0 0 0\nH 0 0 0.74\nmany\nx\nH 0 0 0\n")
    recs, errs, _ = split(read_records(p))
    assert len(recs) == 1 and len(errs) == 1
    assert errs[0].index == 1 and "expected an atom count" in errs[0].reason


def test_nan_coordinates(tmp_path):
    p = tmp_path / "nan.xyz"
    p.write_text("3\nwater\nO 0 0 0\nH 0.96 nan 0\nH -0.24 0.93 0\n")
    (err,) = list(read_records(p))
    assert isinstance(err, RecordError) and err.index == 0 and err.name == "water"
    assert "non-finite" in err.reason and "atom 2" in err.reason
    assert str(p) in str(err) and "record 0" in str(err)


def test_overlapping_atoms(tmp_path):
    p = tmp_path / "overlap.xyz"
    p.write_text("3\nclash\nO 0 0 0\nH 0.5 0.5 0.5\nH 0.5 0.5 0.5\n")
    (err,) = list(read_records(p))
    assert isinstance(err, RecordError) and err.index == 0 and err.name == "clash"
    assert "atoms 2 and 3" in err.reason and "overlapping" in err.reason and str(p) in str(err)


def test_ase_pdb_file(tmp_path):
    first = _frames()[0]
    second = first.copy()
    second.positions += 1.5
    frames = [first, second]  # ASE's PDB writer wants equal atom counts per model
    p = tmp_path / "mols.pdb"
    ase.io.write(p, frames, format="proteindatabank")
    recs, errs, _ = split(read_records(p))
    assert errs == [] and len(recs) == 2 and [r.index for r in recs] == [0, 1]
    for rec, a in zip(recs, frames):
        np.testing.assert_array_equal(rec.elements, a.numbers)
        np.testing.assert_allclose(rec.coords, a.positions, atol=1e-3, rtol=0)


# --------------------------------------------------------------------------- SMILES


def _check_smiles_result(items, path, bad_line, bad_index):
    recs, errs, _ = split(items)
    assert len(recs) == 4 and len(errs) == 1
    assert [r.name for r in recs] == ["ethanol", "ethanol", "benzene", "benzene"]
    assert [r.index for r in recs] == [0, 1, 4, 5]
    assert [r.smiles for r in recs] == ["CCO", "CCO", "c1ccccc1", "c1ccccc1"]
    for r in recs:
        assert 1 in r.elements and r.n_atoms in (9, 12)
        assert not np.all(r.coords[:, 2] == 0.0)  # not a 2-D drawing
    for r in recs[:2]:  # ethanol with its H atoms is not planar: three spread directions
        assert np.linalg.svd(r.coords - r.coords.mean(0), compute_uv=False)[2] > 0.5
    assert not np.allclose(recs[0].coords, recs[1].coords)  # two distinct conformers
    (err,) = errs
    assert err.index == bad_index
    assert "invalid SMILES 'C1CC'" in err.reason and f"line {bad_line}" in err.reason
    assert str(path) in str(err)
    return recs


def test_smi_file(tmp_path):
    p = tmp_path / "mols.smi"
    p.write_text("SMILES name\n# a comment\nCCO ethanol\nC1CC broken ring\nc1ccccc1 benzene\n")
    a = _check_smiles_result(read_records(p, num_conformers=2, seed=1), p, bad_line=4, bad_index=2)
    assert list(read_records(p, num_conformers=2, seed=1))[-1].name == "benzene"
    b, _, _ = split(read_records(p, num_conformers=2, seed=1))
    for x, y in zip(a, b):  # same seed -> identical coordinates
        np.testing.assert_array_equal(x.coords, y.coords)
    c, _, _ = split(read_records(p, num_conformers=2, seed=2))
    assert not np.allclose(a[0].coords, c[0].coords)


def test_csv_file(tmp_path):
    p = tmp_path / "mols.csv"
    p.write_text("ID,Canonical_SMILES,pIC50\nethanol,CCO,5.5\nbroken,C1CC,6\nbenzene,c1ccccc1,7.25\n")
    recs = _check_smiles_result(read_records(p, num_conformers=2), p, bad_line=3, bad_index=2)
    assert recs[2].properties == {"pIC50": 7.25}
    q = tmp_path / "named.csv"
    q.write_text("mol,structure\nx,CCO\n")
    (rec,) = list(read_records(q, smiles_column="structure"))
    assert rec.smiles == "CCO" and rec.name == "line_2"
    (err,) = list(read_records(q))
    assert err.index == -1 and "no SMILES column" in err.reason


def test_smi_gz_and_embedding_failure(tmp_path):
    p = tmp_path / "hard.smi.gz"
    with gzip.open(p, "wt") as f:
        f.write("CCO ethanol\n")
    (rec,) = list(read_records(p))
    assert rec.smiles == "CCO"
    bad = tmp_path / "unembeddable.smi"
    # impossible stereo on a bicyclo[1.1.0]butane: valid SMILES, no 3-D embedding exists
    bad.write_text("CCO ok\nF[C@]12C[C@@]1(F)C2 impossible\n")
    recs, errs, _ = split(read_records(bad, num_conformers=3))
    assert [r.index for r in recs] == [0, 1, 2]
    (err,) = errs
    assert err.index == 3 and err.name == "impossible" and "line 2" in err.reason
    assert "could not embed 3-D conformer" in err.reason


# --------------------------------------------------------------------------- whole-file problems


@pytest.mark.parametrize("fname", ["empty.sdf", "empty.xyz", "empty.smi", "empty.npz", "blank.sdf"])
def test_empty_file(tmp_path, fname):
    p = tmp_path / fname
    p.write_text("\n\n" if fname.startswith("blank") else "")
    (err,) = list(read_records(p))
    assert isinstance(err, RecordError) and err.index == -1
    assert err.reason == "file is empty / contains no molecules" and str(p) in str(err)


def test_missing_file(tmp_path):
    p = tmp_path / "nowhere.sdf"
    (err,) = list(read_records(p))
    assert err.index == -1 and err.reason == "file not found" and str(p) in str(err)


def test_unknown_extension(tmp_path):
    p = tmp_path / "mol.foo"
    p.write_text("x")
    (err,) = list(read_records(p))
    assert err.index == -1 and "'.foo'" in err.reason and str(p) in str(err)
    for suffix in (".sdf", ".sdf.gz", ".xyz", ".extxyz.gz", ".smi", ".csv", ".npz", ".tar.bz2"):
        assert suffix in SUPPORTED_SUFFIXES and suffix in err.reason


def test_truncated_gzip_sdf(tmp_path, qm9):
    mols = [rdkit_mol(Z, R, f"gdb_{q}") for q, Z, R in qm9["mols"][31:]]
    p = tmp_path / "cut.sdf.gz"
    p.write_bytes(gzip.compress(sdf_text((m, -1) for m in mols).encode()))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    recs, errs, items = split(read_records(p))
    assert 10 < len(recs) < 100
    assert [r.index for r in recs] == list(range(len(recs)))
    assert items[-1] is errs[-1] and len(errs) == 1
    assert "truncated or corrupt gzip stream" in errs[0].reason and errs[0].index == len(recs)
    assert str(p) in str(errs[0])


def test_truncated_gzip_extxyz(tmp_path):
    frames = _frames() * 200
    p = tmp_path / "cut.extxyz.gz"
    buf = io.StringIO()
    ase.io.write(buf, frames, format="extxyz")
    data = gzip.compress(buf.getvalue().encode())
    p.write_bytes(data[: len(data) // 2])
    recs, errs, items = split(read_records(p))
    assert len(recs) > 10 and isinstance(items[-1], RecordError)
    # the frame cut by the truncation is reported (file ends inside it) or the stream error is
    assert any("truncated or corrupt gzip stream" in e.reason for e in errs)


def test_not_gzip_with_gz_suffix(tmp_path):
    p = tmp_path / "fake.sdf.gz"
    p.write_text("this is not gzip\n")
    (err,) = list(read_records(p))
    assert "truncated or corrupt gzip stream" in err.reason and err.index == 0


# --------------------------------------------------------------------------- iter_records / records_only


def test_iter_records_glob_keeps_file_order_and_per_file_indices(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in ("b.xyz", "a.xyz", "c.xyz"):
        frames = _frames()[: {"a.xyz": 1, "b.xyz": 2, "c.xyz": 3}[name]]
        ase.io.write(d / name, frames, format="extxyz")
    shutil.copy(QM9_XYZ[0], d / "z.xyz")
    items = list(iter_records([str(d / "*.xyz"), d / "missing.sdf", str(d / "*.nomatch")]))
    got = [(Path(x.source).name, x.index) for x in items]
    assert got == [
        ("a.xyz", 0), ("b.xyz", 0), ("b.xyz", 1), ("c.xyz", 0), ("c.xyz", 1), ("c.xyz", 2),
        ("z.xyz", 0), ("missing.sdf", -1), ("*.nomatch", -1),
    ]
    assert items[-2].reason == "file not found" and "no files match" in items[-1].reason
    # a single path also works
    assert len(list(iter_records(str(d / "c.xyz")))) == 3


def test_records_only_collects_errors(tmp_path):
    p = tmp_path / "mixed.xyz"
    p.write_text("2\nok\nH 0 0 0\nH 0 0 0.74\n2\nbad\nH 0 0 0\nH 0 0 0\n")
    errors: list[RecordError] = []
    recs = list(records_only(read_records(p), errors))
    assert [r.name for r in recs] == ["ok"] and [e.name for e in errors] == ["bad"]


def test_num_conformers_must_be_positive():
    with pytest.raises(ValueError):
        read_records("x.smi", num_conformers=0)
