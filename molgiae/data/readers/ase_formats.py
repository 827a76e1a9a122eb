"""PDB, CIF, ASE trajectory and ASE JSON files, read through ASE.
"""
from __future__ import annotations

from collections.abc import Iterator

from molgiae.data.readers.common import Item, _STREAM_ERRORS, _is_number, _numeric_props
from molgiae.data.record import ConformerRecord, RecordError


# --------------------------------------------------------------------------- other ASE formats


def _atoms_record(atoms, source: str, index: int, comment: str = "") -> ConformerRecord:
    """ase.Atoms -> record: name from ``info['name']`` or the comment, numeric info as properties."""
    info = atoms.info
    name = info.get("name")
    if not isinstance(name, str) or not name:
        name = comment if comment and "=" not in comment else f"frame_{index}"
    props = _numeric_props(info)
    results = getattr(atoms.calc, "results", None) or {}
    for key, value in results.items():
        if _is_number(value):
            props.setdefault(key, float(value))
    smiles = info.get("smiles")
    return ConformerRecord(
        elements=atoms.numbers, coords=atoms.positions, name=name, source=source, index=index,
        properties=props, smiles=smiles if isinstance(smiles, str) else "",
    )


def _read_ase(file, fmt: str, source: str) -> Iterator[Item]:
    """Any ASE-readable file via ``ase.io.iread``: one record per frame.

    ASE cannot resume after a frame it fails on, so that frame is an error and the rest
    of the file is skipped.
    """
    import ase.io

    frames = ase.io.iread(file, index=":", format=fmt)
    index = 0
    while True:
        try:
            atoms = next(frames)
        except StopIteration:
            return
        except _STREAM_ERRORS:
            raise
        except Exception as exc:  # ASE raises many types for bad input
            yield RecordError(
                source, index,
                f"ASE ({fmt}) could not read frame {index}: {type(exc).__name__}: {exc}; "
                f"rest of file skipped (ASE cannot resume after a bad frame)",
            )
            return
        yield _atoms_record(atoms, source, index)
        index += 1
