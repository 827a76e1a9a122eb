"""Synthetic conformer ensembles of QM9 *training* molecules, for multi-conformer training.

    python tools/make_training_conformers.py QM9.npz [QM9.npz ...] --out ens.npz \
        --molecules 4000 [--exclude ../shared/data/qm9/qm9_sample1000.npz] [--embed 12] [--keep 8]

Molecules are drawn (seeded) from the training split of ``molgiae train``'s default split
(``split_ids`` with val/test fractions 0.05, split seed 0), never from its validation or test
molecules, and never from the ``--exclude`` files (the evaluation ensembles are built from the
1,000-molecule sample, so their molecules must stay unseen as conformer sets).

Per molecule, the recipe of ``../shared/data/tools/make_conformers.py`` made cheaper: bonds
perceived from the DFT geometry (charge 0) and checked against the QM9 SMILES graph, stereo from
the DFT geometry, ``--embed`` ETKDGv3 conformers, MMFF94 optimisation, conformers within 6 kcal/mol
of the lowest, duplicates (best all-atom RMSD < 0.1 Å) and stereo changes dropped, at most
``--keep``. Atom order is QM9's. Output: a conformer-ensemble npz (``molgiae-conformers-npz-1``,
schema in docs/data.md) with the QM9 index per molecule, so ``molgiae data prepare`` groups its
conformers with the DFT geometry under the same molecule id (the same split). SYNTHETIC, not GEOM.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from molgiae.config import TrainConfig
from molgiae.data.conformers import load_qm9_npz
from molgiae.data.ensemble_npz import ENSEMBLE_NPZ_FORMAT
from molgiae.data.molecules import rdkit_molecule
from molgiae.data.qm9_npz import npz_format
from molgiae.data.split import split_ids

KT = 0.0019872043 * 298.15  # kcal/mol at 298.15 K


def heavy_graph(mol) -> str:
    """Canonical SMILES of the heavy-atom skeleton with every bond single (graph identity)."""
    from rdkit import Chem
    rw = Chem.RWMol()
    idx = {}
    for a in mol.GetAtoms():
        if a.GetAtomicNum() > 1:
            na = Chem.Atom(a.GetAtomicNum())
            na.SetNoImplicit(True)
            idx[a.GetIdx()] = rw.AddAtom(na)
    for b in mol.GetBonds():
        i, j = b.GetBeginAtomIdx(), b.GetEndAtomIdx()
        if i in idx and j in idx:
            rw.AddBond(idx[i], idx[j], Chem.BondType.SINGLE)
    return Chem.MolToSmiles(rw.GetMol())


def perceive(z: np.ndarray, x: np.ndarray, smiles: str):
    """RDKit molecule with bonds and stereo from the DFT geometry, or (None, reason)."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    mol = rdkit_molecule(z, x)
    try:
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.SanitizeMol(mol)
    except Exception:  # noqa: BLE001 - RDKit raises several types
        return None, "bond perception failed"
    if heavy_graph(mol) != heavy_graph(Chem.MolFromSmiles(smiles)):
        return None, "perceived graph != SMILES graph"
    Chem.AssignStereochemistryFrom3D(mol)
    return mol, ""


def keeps_stereo(mol, cid: int, smiles_3d: str) -> bool:
    from rdkit import Chem
    one = Chem.Mol(mol)
    one.RemoveAllConformers()
    one.AddConformer(Chem.Conformer(mol.GetConformer(cid)), assignId=True)
    Chem.AssignStereochemistryFrom3D(one)
    return Chem.MolToSmiles(Chem.RemoveHs(one)) == smiles_3d


def ensemble(mol, seed: int, n_embed: int, n_keep: int):
    """(coords [C, N, 3], MMFF energies [C]) of distinct low-energy conformers, or (None, reason)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdMolAlign
    from rdkit.Chem import rdForceFieldHelpers as FF
    smiles_3d = Chem.MolToSmiles(Chem.RemoveHs(mol))
    mm = Chem.Mol(mol)
    mm.RemoveAllConformers()
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.pruneRmsThresh = -1
    params.numThreads = 1
    if not list(AllChem.EmbedMultipleConfs(mm, numConfs=n_embed, params=params)):
        return None, "embedding failed"
    if FF.MMFFGetMoleculeProperties(mm) is None:
        return None, "no MMFF parameters"
    energies = np.array([e for _, e in FF.MMFFOptimizeMoleculeConfs(mm, numThreads=1, maxIters=2000)])
    kept: list[int] = []
    for cid in np.argsort(energies):
        if energies[cid] - energies.min() > 6.0 or len(kept) >= n_keep:
            break
        cid = int(cid)
        if any(rdMolAlign.GetBestRMS(mm, mm, prbId=cid, refId=k, maxMatches=200) < 0.1 for k in kept):
            continue
        if keeps_stereo(mm, cid, smiles_3d):
            kept.append(cid)
    if not kept:
        return None, "no conformer kept stereo"
    return np.stack([mm.GetConformer(c).GetPositions() for c in kept]), energies[kept]


def choose_molecules(data, n: int, exclude: set[int], seed: int) -> np.ndarray:
    """Row ids of ``n`` molecules of the default training split of ``data`` (``molgiae train``'s
    fractions and split seed) not in ``exclude`` (seeded, sorted)."""
    tc = TrainConfig()
    train = split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)["train"]
    train = train[~np.isin(data.keys[train], list(exclude))]
    return np.sort(np.random.default_rng(seed).choice(train, min(n, len(train)), replace=False))


def write(out: str, rows: list[dict], rdkit_version: str) -> None:
    n_atoms = np.array([len(r["Z"]) for r in rows], dtype=np.int64)
    n_confs = np.array([len(r["R"]) for r in rows], dtype=np.int64)
    conf_mol = np.repeat(np.arange(len(rows)), n_confs)
    np.savez_compressed(
        out,
        format_version=np.array("molgiae-conformers-npz-1"),
        provenance=np.array(f"SYNTHETIC: RDKit {rdkit_version} ETKDGv3 + MMFF94 conformers of QM9 "
                            "training-split molecules (tools/make_training_conformers.py); NOT GEOM"),
        index=np.array([r["index"] for r in rows], dtype=np.int32),
        n_atoms=n_atoms.astype(np.uint8),
        atom_ptr=np.r_[0, np.cumsum(n_atoms)],
        Z=np.concatenate([r["Z"] for r in rows]).astype(np.uint8),
        R_dft=np.concatenate([r["R_dft"] for r in rows]),
        n_confs=n_confs.astype(np.int32),
        conf_ptr=np.r_[0, np.cumsum(n_confs)],
        conf_mol=conf_mol.astype(np.int32),
        conf_atom_ptr=np.r_[0, np.cumsum(n_atoms[conf_mol])],
        R=np.concatenate([c for r in rows for c in r["R"]]),
        energy_mmff94=np.concatenate([r["e"] for r in rows]),
        boltzmann_weight=np.concatenate([r["w"] for r in rows]),
        smiles=np.array([r["smiles"] for r in rows], dtype=str),
    )


def excluded_keys(path: str) -> set[int]:
    """QM9 indices in ``path``: a molgiae QM9 npz, or a conformer-ensemble npz (its ``index``),
    so a second batch of ensembles can leave out the molecules of the first."""
    if npz_format(path).startswith(ENSEMBLE_NPZ_FORMAT):
        with np.load(path, allow_pickle=False) as f:
            return {int(k) for k in f["index"]}
    return {int(k) for k in load_qm9_npz([path]).keys}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qm9", nargs="+")
    ap.add_argument("--out", required=True)
    ap.add_argument("--molecules", type=int, default=4000)
    ap.add_argument("--exclude", nargs="*", default=[],
                    help="QM9 npz or conformer-ensemble npz files whose molecules are left out")
    ap.add_argument("--embed", type=int, default=12)
    ap.add_argument("--keep", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from rdkit import RDLogger, rdBase
    RDLogger.DisableLog("rdApp.*")
    data = load_qm9_npz(args.qm9)
    exclude = set().union(*(excluded_keys(p) for p in args.exclude))
    rows, skipped, t0 = [], [], time.time()
    chosen = choose_molecules(data, args.molecules, exclude, args.seed)
    for n_done, i in enumerate(chosen):
        rec = data.record(int(i))
        key = int(data.keys[i])
        mol, reason = perceive(rec.elements, rec.coords, str(data.smiles[i]))
        coords, energies = ensemble(mol, 0xF00D + key, args.embed, args.keep) if mol else (None, reason)
        if coords is None:
            skipped.append((key, energies))
            continue
        w = np.exp(-(energies - energies.min()) / KT)
        rows.append(dict(index=key, Z=rec.elements, R_dft=rec.coords, R=list(coords), e=energies,
                         w=w / w.sum(), smiles=str(data.smiles[i])))
        if n_done % 200 == 0:
            print(f"{n_done}/{len(chosen)} molecules, {sum(len(r['R']) for r in rows)} conformers, "
                  f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    write(args.out, rows, rdBase.rdkitVersion)
    n_conf = sum(len(r["R"]) for r in rows)
    print(f"{len(rows)} molecules, {n_conf} conformers ({n_conf / max(len(rows), 1):.2f} per molecule), "
          f"{len(skipped)} skipped, {time.time() - t0:.0f} s -> {args.out}")


if __name__ == "__main__":
    main()
