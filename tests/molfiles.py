"""Writing test molecule files with real RDKit."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from rdkit import Chem


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
