"""RDKit molecules from records: atomic numbers, bond-less molecules, SMILES perceived from 3-D."""
from __future__ import annotations

import numpy as np

from molgiae.data.record import ConformerRecord

#: SMILES perception (xyz2mol bond orders) is skipped above this size: it can be slow there.
PERCEIVE_MAX_ATOMS = 150


def rdkit_atomic_numbers(mol) -> np.ndarray:
    """Atomic numbers int64 [n] of an RDKit molecule (by index: twice as fast as ``GetAtoms()``)."""
    n = mol.GetNumAtoms()
    return np.fromiter((mol.GetAtomWithIdx(i).GetAtomicNum() for i in range(n)), dtype=np.int64, count=n)


def rdkit_molecule(elements: np.ndarray, coords: np.ndarray):
    """Bond-less RDKit RWMol with one conformer: elements [n], coords [n, 3] Å."""
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    mol = Chem.RWMol()
    for z in elements:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    conf = Chem.Conformer(len(elements))
    for i, (x, y, z) in enumerate(np.asarray(coords, dtype=float)):
        conf.SetAtomPosition(i, Point3D(x, y, z))
    conf.Set3D(True)
    mol.AddConformer(conf, assignId=True)
    return mol


def perceive_smiles(record: ConformerRecord) -> str:
    """Canonical SMILES (stereo from 3-D) of a neutral molecule perceived from its geometry
    with RDKit's ``DetermineBonds(charge=0)``; "" when perception fails or the molecule has
    more than ``PERCEIVE_MAX_ATOMS`` atoms."""
    if record.n_atoms > PERCEIVE_MAX_ATOMS:
        return ""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    block = rdBase.BlockLogs()
    try:
        mol = rdkit_molecule(record.elements, record.coords)
        rdDetermineBonds.DetermineBonds(mol, charge=0)
        Chem.AssignStereochemistryFrom3D(mol)
        return Chem.MolToSmiles(Chem.RemoveHs(mol))
    except Exception:  # noqa: BLE001 - perception is best effort
        return ""
    finally:
        del block
