"""``.smi`` and ``.csv`` SMILES files, embedded to 3-D (ETKDGv3, then MMFF).
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator, Sequence

from molgiae.data.readers.common import Item, _Options, _rdkit_log_capture
from molgiae.data.record import ConformerRecord, RecordError


# --------------------------------------------------------------------------- SMILES (.smi, .csv)

_SMILES_COLUMNS = ("smiles", "canonical_smiles")
_NAME_COLUMNS = ("name", "id")


def _embed_smiles(
    smiles: str, name: str, lineno: int, row: int, source: str, opts: _Options,
    properties: dict[str, float] | None = None,
) -> Iterator[Item]:
    """Embed one SMILES into ``opts.num_conformers`` 3-D conformers (ETKDGv3 + MMFF94)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    k = opts.num_conformers
    base = row * k
    name = name or f"line_{lineno}"
    with _rdkit_log_capture() as log:
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        detail = f" ({'; '.join(log)})" if log else ""
        yield RecordError(source, base, f"invalid SMILES {smiles!r} on line {lineno}{detail}", name)
        return
    mol_h = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = opts.seed + lineno
    with _rdkit_log_capture():
        cids = list(AllChem.EmbedMultipleConfs(mol_h, numConfs=k, params=params))
        if not cids:  # RDKit's advice for hard cases: start from random coordinates
            params.useRandomCoords = True
            cids = list(AllChem.EmbedMultipleConfs(mol_h, numConfs=k, params=params))
    if not cids:
        yield RecordError(
            source, base, f"could not embed 3-D conformer for SMILES {smiles!r} on line {lineno}", name,
        )
        return
    with _rdkit_log_capture():
        try:
            AllChem.MMFFOptimizeMoleculeConfs(mol_h)
        except Exception:  # no MMFF parameters: keep the ETKDG geometry
            pass
    canonical = Chem.MolToSmiles(mol)
    elements = [a.GetAtomicNum() for a in mol_h.GetAtoms()]
    for j, cid in enumerate(cids):
        yield ConformerRecord(
            elements=elements, coords=mol_h.GetConformer(cid).GetPositions(), name=name,
            source=source, index=base + j, properties=dict(properties or {}), smiles=canonical,
        )


def _read_smi(lines: Iterable[str], source: str, opts: _Options) -> Iterator[Item]:
    """``SMILES [name]`` per line; ``#`` comments and a first ``smiles`` header line are skipped."""
    row = 0
    for lineno, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.split(None, 1)
        if row == 0 and parts[0].lower() in _SMILES_COLUMNS:
            continue
        name = parts[1].strip() if len(parts) > 1 else ""
        yield from _embed_smiles(parts[0], name, lineno, row, source, opts)
        row += 1


def _find_column(header: list[str], wanted: Sequence[str]) -> int | None:
    lowered = [h.strip().lower() for h in header]
    for w in wanted:
        if w.lower() in lowered:
            return lowered.index(w.lower())
    return None


def _read_csv(lines: Iterable[str], source: str, opts: _Options) -> Iterator[Item]:
    """CSV with a header: SMILES column (auto or ``smiles_column``), optional name/id, numeric columns as properties."""
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    wanted = (opts.smiles_column,) if opts.smiles_column else _SMILES_COLUMNS
    col = _find_column(header, wanted)
    if col is None:
        yield RecordError(
            source, -1,
            f"no SMILES column: looked for {', '.join(wanted)} (case-insensitive) among {header}",
        )
        return
    name_col = _find_column(header, _NAME_COLUMNS)
    row = 0
    for fields in reader:
        lineno = reader.line_num
        if not fields or not any(f.strip() for f in fields):
            continue
        smiles = fields[col].strip() if col < len(fields) else ""
        name = fields[name_col].strip() if name_col is not None and name_col < len(fields) else ""
        props = {}
        for j, value in enumerate(fields):
            if j in (col, name_col) or j >= len(header):
                continue
            try:
                x = float(value)
            except ValueError:
                continue
            props[header[j].strip()] = x
        yield from _embed_smiles(smiles, name, lineno, row, source, opts, props)
        row += 1
