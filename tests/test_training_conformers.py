"""tools/make_training_conformers.py: synthetic conformer ensembles of QM9 training molecules
(real RDKit ETKDG + MMFF94 on fixture molecules; the output goes through the real readers)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from molgiae.data.conformers import load_qm9_npz
from molgiae.data.loading import load_conformers
from molgiae.data.split import split_ids
from molgiae.metrics import kabsch_rmsd

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "qm9_fixture.npz"
TOOL = ROOT / "tools" / "make_training_conformers.py"


def run_tool(tmp_path: Path, *args: str) -> Path:
    out = tmp_path / "ens.npz"
    subprocess.run([sys.executable, str(TOOL), str(FIXTURE), "--out", str(out), *args],
                   check=True, capture_output=True, text=True, cwd=ROOT)
    return out


def test_ensembles_are_distinct_low_energy_conformers_of_training_molecules(tmp_path):
    data = load_qm9_npz([FIXTURE])
    train_keys = set(data.keys[split_ids(data.keys, 0.05, 0.05, 0)["train"]].tolist())
    out = run_tool(tmp_path, "--molecules", "12", "--embed", "6", "--keep", "4")
    ens = np.load(out)
    index = ens["index"].astype(int)
    assert 1 <= len(index) <= 12 and set(index.tolist()) <= train_keys
    by_key = {int(k): i for i, k in enumerate(data.keys)}
    multi = 0
    for m, key in enumerate(index):
        row = by_key[int(key)]
        z = ens["Z"][ens["atom_ptr"][m]:ens["atom_ptr"][m + 1]]
        np.testing.assert_array_equal(z, data.elements[data.ptr[row]:data.ptr[row + 1]])  # QM9 atom order
        confs = np.flatnonzero(ens["conf_mol"] == m)
        assert 1 <= len(confs) <= 4
        energies = ens["energy_mmff94"][confs]
        assert np.all(np.diff(energies) >= 0) and energies[-1] - energies[0] <= 6.0
        assert abs(ens["boltzmann_weight"][confs].sum() - 1) < 1e-9
        xyz = [ens["R"][ens["conf_atom_ptr"][c]:ens["conf_atom_ptr"][c + 1]] for c in confs]
        for a in range(len(xyz)):
            for b in range(a):  # same atom order, so a plain Kabsch rmsd bounds the symmetric one from above
                assert kabsch_rmsd(xyz[a], xyz[b])[0] > 0.05
        multi += len(confs) > 1
    assert multi >= 1, "the fixture has flexible molecules; at least one should get several conformers"
    # the readers group every conformer with its QM9 molecule id, so the split keeps them together
    merged = load_conformers([out])
    assert set(np.unique(merged.keys).tolist()) == set(index.tolist())
    assert str(merged.names[0]).startswith("gdb_")


def test_excluded_molecules_are_never_drawn(tmp_path):
    data = load_qm9_npz([FIXTURE])
    train_rows = split_ids(data.keys, 0.05, 0.05, 0)["train"]
    keep = data.keys[train_rows][:3]
    src = dict(np.load(FIXTURE))
    # an exclusion file holding every training molecule but three
    rows = [r for r in train_rows if data.keys[r] not in keep]
    atoms = np.concatenate([np.arange(data.ptr[r], data.ptr[r + 1]) for r in rows])
    n = np.diff(data.ptr)[rows]
    excl = dict(src, index=src["index"][rows], n_atoms=src["n_atoms"][rows], Z=src["Z"][atoms], R=src["R"][atoms],
                props=src["props"][rows], smiles=src["smiles"][rows], inchi=src["inchi"][rows],
                ptr=np.r_[0, np.cumsum(n)].astype(src["ptr"].dtype))
    np.savez(tmp_path / "exclude.npz", **excl)
    out = run_tool(tmp_path, "--molecules", "50", "--embed", "3", "--keep", "2",
                   "--exclude", str(tmp_path / "exclude.npz"))
    assert set(np.load(out)["index"].astype(int).tolist()) <= set(keep.tolist())


def test_a_second_batch_leaves_out_the_molecules_of_the_first(tmp_path):
    """--exclude also takes an ensemble file, so a second batch (another --seed) adds new molecules
    instead of repeating ones whose conformers (seeded per molecule) would be identical."""
    first = run_tool(tmp_path, "--molecules", "5", "--embed", "3", "--keep", "2")
    first_keys = set(np.load(first)["index"].astype(int).tolist())
    first.rename(tmp_path / "first.npz")
    out = run_tool(tmp_path, "--molecules", "5", "--embed", "3", "--keep", "2", "--seed", "1",
                   "--exclude", str(tmp_path / "first.npz"))
    second_keys = set(np.load(out)["index"].astype(int).tolist())
    assert first_keys and second_keys and not first_keys & second_keys
