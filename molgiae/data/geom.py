"""Readers for the two layouts of the GEOM conformer dataset (Axelrod & Gomez-Bombarelli, 2022).

Both yield :class:`ConformerRecord` / :class:`RecordError` items like every other reader
(see :mod:`molgiae.data.readers`), one record per conformer:

* ``name`` and ``smiles`` are the GEOM SMILES key of the molecule, shared by all its
  conformers (so conformers of one molecule get one molecule id and one split);
* ``properties`` carry ``boltzmann_weight`` (GEOM ``boltzmannweight``) and
  ``total_energy`` (GEOM ``totalenergy``, Hartree) when present, ``relative_energy``
  (``relativeenergy``, kcal/mol) and any other numeric scalar of the conformer dict under its
  GEOM name (``degeneracy``, ``geom_id``, ...);
* ``index`` is the conformer's 0-based position in the file (msgpack) or in the dataset
  (rdkit_folder: summary order, then conformer order within each pickle), counted over every
  conformer, bad ones included.

Layouts
-------
``rdkit_folder``
    A directory with ``summary_qm9.json`` and/or ``summary_drugs.json``: a JSON object mapping
    SMILES → ``{"pickle_path": "qm9/<name>.pickle", "uniqueconfs": n, ...}``. Each pickle is a
    dict with ``conformers``: a list of dicts with ``rd_mol`` (an RDKit ``Mol`` with one
    conformer, explicit hydrogens), ``boltzmannweight``, ``totalenergy``, ... Every
    ``summary_*.json`` of the directory is read, in sorted name order; a path to one summary
    file reads just that one.

    **Security: reading these pickles executes code from the files** (``pickle.load`` can run
    arbitrary Python). Only read GEOM files that you downloaded from the official source (or
    made yourself). This happens once, in ``molgiae data prepare``; training reads the HDF5
    store that ``prepare`` writes and never unpickles anything.

``msgpack`` (``qm9_crude.msgpack``, ``drugs_crude.msgpack``, ``*_featurized.msgpack``)
    A stream of msgpack-packed dicts, each mapping SMILES → ``{"conformers": [{"xyz":
    [[Z, x, y, z], ...], "boltzmannweight": w, "totalenergy": e, ...}], ...}``. Read with a
    streaming ``msgpack.Unpacker`` (memory holds one packed chunk at a time); no code runs.

Readers never raise for bad input; a malformed entry is a ``RecordError`` and reading goes on.
"""
from __future__ import annotations

import json
import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from molgiae.data.molecules import rdkit_atomic_numbers
from molgiae.data.record import ConformerRecord, RecordError

Item = ConformerRecord | RecordError

#: GEOM conformer keys renamed to molgiae property names.
GEOM_PROPERTY_NAMES = {
    "boltzmannweight": "boltzmann_weight",
    "totalenergy": "total_energy",
    "relativeenergy": "relative_energy",
}
PICKLE_WARNING = (
    "GEOM rdkit_folder pickles are read with pickle.load, which executes code from the file: "
    "read only GEOM files from a source you trust."
)


def is_geom_rdkit_folder(path: str | Path) -> bool:
    """A directory holding ``summary_*.json``, or such a summary file itself."""
    p = Path(path)
    if p.is_dir():
        return any(p.glob("summary_*.json"))
    return p.is_file() and p.name.startswith("summary_") and p.name.endswith(".json")


def _is_scalar_number(v) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def conformer_properties(conf: dict) -> dict[str, float]:
    """Numeric scalar fields of a GEOM conformer dict, GEOM names mapped by GEOM_PROPERTY_NAMES."""
    props = {}
    for k, v in conf.items():
        if _is_scalar_number(v) and np.isfinite(float(v)):
            props[GEOM_PROPERTY_NAMES.get(str(k), str(k))] = float(v)
    return props


# --------------------------------------------------------------------------- msgpack


def read_geom_msgpack(path: str | Path, source: str | None = None) -> Iterator[Item]:
    """Stream the conformers of a GEOM ``*.msgpack`` file (see the module docstring)."""
    source = str(path) if source is None else source
    try:
        import msgpack
    except ImportError:
        yield RecordError(source, -1, "reading GEOM .msgpack needs the msgpack package (pip install msgpack)")
        return
    index = 0
    with open(path, "rb") as fh:
        unpacker = msgpack.Unpacker(fh, raw=False, strict_map_key=False, max_buffer_size=2**31 - 1)
        try:
            for chunk in unpacker:
                if not isinstance(chunk, dict):
                    yield RecordError(source, index, f"expected a dict of SMILES → molecule, got {type(chunk).__name__}; "
                                                     "not a GEOM msgpack file?")
                    return
                for smiles, mol in chunk.items():
                    smiles = str(smiles)
                    confs = mol.get("conformers") if isinstance(mol, dict) else None
                    if not isinstance(confs, list):
                        yield RecordError(source, index, "molecule entry has no 'conformers' list", smiles)
                        index += 1
                        continue
                    for conf in confs:
                        yield _msgpack_conformer(conf, smiles, source, index)
                        index += 1
            try:  # iteration ends quietly on a cut-off last object; msgpack still holds its bytes
                leftover = unpacker.read_bytes(1)
            except ValueError:
                leftover = b"?"
            if leftover:
                yield RecordError(source, index, "truncated msgpack stream: the file ends inside a packed "
                                                 "object; rest of file skipped")
        except (ValueError, msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
                msgpack.exceptions.StackError) as exc:
            yield RecordError(source, index, f"corrupt or truncated msgpack stream ({type(exc).__name__}: {exc}); "
                                             "rest of file skipped")


def _msgpack_conformer(conf, smiles: str, source: str, index: int) -> Item:
    if not isinstance(conf, dict) or "xyz" not in conf:
        return RecordError(source, index, "conformer has no 'xyz' field", smiles)
    try:
        xyz = np.asarray(conf["xyz"], dtype=np.float64)
        if xyz.ndim != 2 or xyz.shape[1] != 4 or len(xyz) == 0:
            raise ValueError(f"'xyz' has shape {xyz.shape}, expected [n_atoms, 4] (Z, x, y, z)")
        z = xyz[:, 0]
        if not np.all((z == np.round(z)) & (z >= 1) & (z <= 118)):
            raise ValueError("'xyz' column 0 holds values that are not atomic numbers")
    except (TypeError, ValueError) as exc:
        return RecordError(source, index, f"malformed conformer: {exc}", smiles)
    return ConformerRecord(
        elements=z.astype(np.int64), coords=xyz[:, 1:], name=smiles, source=source, index=index,
        properties=conformer_properties(conf), smiles=smiles,
    )


# --------------------------------------------------------------------------- rdkit_folder


def _summary_files(path: Path) -> list[Path]:
    return sorted(path.glob("summary_*.json")) if path.is_dir() else [path]


def read_geom_rdkit_folder(path: str | Path, source: str | None = None) -> Iterator[Item]:
    """Stream the conformers of a GEOM ``rdkit_folder`` (see the module docstring).

    **Security:** unpickles the ``*.pickle`` files the summary points to, which executes code
    from them. Read only GEOM data from a source you trust.
    """
    path = Path(path)
    source = str(path) if source is None else source
    index = 0
    for summary_path in _summary_files(path):
        root = summary_path.parent
        try:
            summary = json.loads(summary_path.read_text())
        except (OSError, ValueError) as exc:
            yield RecordError(source, index, f"cannot read {summary_path.name} ({exc})")
            continue
        if not isinstance(summary, dict):
            yield RecordError(source, index, f"{summary_path.name} is not a JSON object of SMILES → entry")
            continue
        for smiles, entry in summary.items():
            n_expected = 1
            if isinstance(entry, dict) and isinstance(entry.get("uniqueconfs"), int):
                n_expected = max(1, entry["uniqueconfs"])
            rel = entry.get("pickle_path") if isinstance(entry, dict) else None
            if not rel:
                yield RecordError(source, index, f"{summary_path.name}: no pickle_path for this molecule", smiles)
                index += n_expected
                continue
            items, whole_file_error = _read_pickle(root / rel, str(smiles), source, index)
            yield from items
            # a pickle that could not be read at all skips the conformers the summary announced
            index += n_expected if whole_file_error else len(items)


def _read_pickle(pkl: Path, smiles: str, source: str, index: int) -> tuple[list[Item], bool]:
    """The items of one molecule's pickle and whether the whole file failed (one error)."""
    try:
        with open(pkl, "rb") as fh:
            data = pickle.load(fh)  # noqa: S301 - GEOM's own format; documented as executing code
    except Exception as exc:  # noqa: BLE001 - a missing/corrupt pickle (or one needing another RDKit)
        return [RecordError(source, index, f"cannot unpickle {pkl} ({type(exc).__name__}: {exc})", smiles)], True
    confs = data.get("conformers") if isinstance(data, dict) else None
    if not isinstance(confs, list) or not confs:
        return [RecordError(source, index, f"{pkl.name} has no 'conformers' list", smiles)], True
    return [_rdmol_conformer(conf, smiles, source, index + j, pkl.name) for j, conf in enumerate(confs)], False


def _rdmol_conformer(conf, smiles: str, source: str, index: int, where: str) -> Item:
    mol = conf.get("rd_mol") if isinstance(conf, dict) else None
    if mol is None or not hasattr(mol, "GetNumConformers"):
        return RecordError(source, index, f"{where}: conformer has no RDKit 'rd_mol'", smiles)
    if mol.GetNumConformers() < 1:
        return RecordError(source, index, f"{where}: rd_mol has no conformer", smiles)
    elements = rdkit_atomic_numbers(mol)
    coords = mol.GetConformer().GetPositions()
    return ConformerRecord(
        elements=elements, coords=coords, name=smiles, source=source, index=index,
        properties=conformer_properties(conf), smiles=smiles,
    )
