"""Seeded mutations of valid multi-record SDF and XYZ files, and the check that nothing is lost
(used by tests/test_fuzz.py and bench/fuzz_inputs.py).

One mutation per case, on the file's bytes: a bit flip, a truncation, a duplicated line, a deleted
line or two swapped whitespace-separated fields of one line. A record is *touched* when its lines
(for SDF including its ``$$$$`` line) come within one line of the mutated line (a flipped newline
joins two lines); after a truncation every record from the cut on is touched. The check: the
embed run raises nothing but NothingWrittenError, its HDF5 output is readable and consistent, and
every untouched record is embedded with the same code as in the clean file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SMILES = ("CCO", "C=O", "CC(=O)N", "c1ccoc1", "CCN", "OCC#N", "O", "CC(C)O")
KINDS = ("flip", "truncate", "duplicate", "delete", "swap")


def molecules() -> list:
    """RDKit molecules with hydrogens and one MMFF conformer each, named mol_0, mol_1, ..."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mols = []
    for k, smi in enumerate(SMILES):
        mol = Chem.AddHs(Chem.MolFromSmiles(smi))
        AllChem.EmbedMolecule(mol, randomSeed=k + 1)
        AllChem.MMFFOptimizeMolecule(mol)
        mol.SetProp("_Name", f"mol_{k}")
        mols.append(mol)
    return mols


def sdf_text(mols) -> tuple[str, list[tuple[int, int]]]:
    """SD text and each record's (first, last) line index (0-based, last = its ``$$$$`` line)."""
    from rdkit import Chem

    text, spans, line = "", [], 0
    for mol in mols:
        block = Chem.MolToMolBlock(mol) + "$$$$\n"
        n = block.count("\n")
        spans.append((line, line + n - 1))
        line += n
        text += block
    return text, spans


def xyz_text(mols) -> tuple[str, list[tuple[int, int]]]:
    """Plain xyz text (comment = name) and each frame's (first, last) line index."""
    text, spans, line = "", [], 0
    for mol in mols:
        x = mol.GetConformer().GetPositions()
        rows = [f"{a.GetSymbol()} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}" for a, p in zip(mol.GetAtoms(), x)]
        frame = f"{len(rows)}\n{mol.GetProp('_Name')}\n" + "\n".join(rows) + "\n"
        spans.append((line, line + len(rows) + 1))
        line += len(rows) + 2
        text += frame
    return text, spans


@dataclass
class Case:
    kind: str
    data: bytes
    touched: set[int]


def mutate(text: str, spans: list[tuple[int, int]], rng: np.random.Generator) -> Case:
    """One seeded mutation of ``text``; which records it may have touched."""
    raw = text.encode()
    lines = raw.splitlines(keepends=True)
    starts = np.cumsum([0] + [len(x) for x in lines])
    kind = KINDS[int(rng.integers(len(KINDS)))]
    if kind in ("flip", "truncate"):
        pos = int(rng.integers(len(raw)))
        line = int(np.searchsorted(starts, pos, side="right") - 1)
        if kind == "flip":
            data = raw[:pos] + bytes([raw[pos] ^ (1 << int(rng.integers(8)))]) + raw[pos + 1:]
        else:
            data = raw[:pos]
            return Case(kind, data, {k for k, (a, b) in enumerate(spans) if b >= line - 1})
    else:
        line = int(rng.integers(len(lines)))
        out = list(lines)
        if kind == "duplicate":
            out.insert(line, lines[line])
        elif kind == "delete":
            del out[line]
        else:
            fields = lines[line].split()
            if len(fields) >= 2:
                i, j = rng.choice(len(fields), 2, replace=False)
                fields[i], fields[j] = fields[j], fields[i]
                out[line] = b" ".join(fields) + b"\n"
        data = b"".join(out)
    return Case(kind, data, {k for k, (a, b) in enumerate(spans) if a - 1 <= line <= b + 1})


def check_case(model, case: Case, suffix: str, workdir: Path, reference: dict[str, np.ndarray]) -> dict:
    """Embed the mutated file; assert the guarantees; return counts."""
    import h5py

    from molgiae.embedding import NothingWrittenError, embed_to_hdf5

    src = workdir / f"case{suffix}"
    src.write_bytes(case.data)
    out = workdir / "case.h5"
    out.unlink(missing_ok=True)
    untouched = [f"mol_{k}" for k in range(len(reference)) if k not in case.touched]
    try:
        summary = embed_to_hdf5(model, [src], out, batch_size=4)
    except NothingWrittenError:
        assert not untouched, f"{case.kind}: nothing embedded, but {untouched} were untouched"
        assert not out.exists()
        return {"rows": 0, "errors": 0}
    assert not list(workdir.glob("case.h5.tmp-*"))
    with h5py.File(out, "r") as f:
        n, k = f["embedding"].shape[0], f["errors/reason"].shape[0]
        assert int(f.attrs["n_embedded"]) == n == summary.n_embedded and int(f.attrs["n_errors"]) == k
        for name in ("name", "source", "record", "smiles", "n_atoms", "hydrogens_added", "input_order"):
            assert f[name].shape[0] == n, name
        z = f["embedding"][:]
        names = f["name"].asstr()[:]
        orders = np.concatenate([f["input_order"][:], f["errors/input_order"][:]])
        assert len(np.unique(orders)) == len(orders)
        assert np.isfinite(z).all()
    for name in untouched:
        rows = np.flatnonzero(names == name)
        assert any(np.allclose(z[r], reference[name], atol=1e-5) for r in rows), (
            f"{case.kind}: untouched {name} lost or changed")
    return {"rows": n, "errors": k}
