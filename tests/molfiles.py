"""Test molecules with real RDKit: MMFF conformers, and molecule files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rdkit import Chem
from rdkit.Chem import AllChem


def molblock(elements, coords, name: str, props: dict | None = None) -> str:
    """A bond-less 3-D molblock of elements [n] and coords [n, 3], with optional SD properties."""
    mol = Chem.RWMol()
    for z in elements:
        atom = Chem.Atom(int(z))
        atom.SetNoImplicit(True)
        mol.AddAtom(atom)
    conf = Chem.Conformer(len(elements))
    for i, xyz in enumerate(np.asarray(coords, float)):
        conf.SetAtomPosition(i, xyz.tolist())
    conf.Set3D(True)
    mol.AddConformer(conf)
    mol.SetProp("_Name", name)
    mol.UpdatePropertyCache(strict=False)
    return Chem.MolToMolBlock(mol) + "".join(f">  <{k}>\n{v}\n\n" for k, v in (props or {}).items())


def write_sdf(path: Path, blocks: list[str]) -> Path:
    """An SDF of molblocks (or of any text blocks, to make malformed records)."""
    path.write_text("".join(b + "$$$$\n" for b in blocks))
    return path


def conformers(smiles: str, n: int, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """n MMFF-optimised ETKDG conformers: elements [n_atoms], coords [n, n_atoms, 3]."""
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    ids = AllChem.EmbedMultipleConfs(mol, n, randomSeed=seed)
    AllChem.MMFFOptimizeMoleculeConfs(mol)
    elements = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    return elements, np.stack([mol.GetConformer(i).GetPositions() for i in ids])
