"""SD files and MOL blocks, parsed block by block by RDKit.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

from molgiae.data.molecules import perceive_smiles, rdkit_atomic_numbers
from molgiae.data.readers.common import Item, _Options, _numeric_props, _rdkit_log_capture
from molgiae.data.record import ConformerRecord, RecordError


# --------------------------------------------------------------------------- SDF / MOL


def _sdf_blocks(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """Split SD text into record blocks at ``$$$$`` lines: ``(first line number, text)``.

    A final unterminated block counts; blocks of only whitespace are skipped.
    """
    block: list[str] = []
    start = 1
    for lineno, line in enumerate(lines, start=1):
        if line.startswith("$$$$") and line.rstrip() == "$$$$":
            text = "".join(block)
            if text.strip():
                yield start, text
            block, start = [], lineno + 1
        else:
            block.append(line)
    text = "".join(block)
    if text.strip():
        yield start, text


def _parse_sd_block(block: str):
    """RDKit mol from one SD block: sanitised if possible, else unsanitised; (mol, messages).
    A sanitised mol has the private property ``_molgiae_sanitized``."""
    from rdkit import Chem

    text = block + "$$$$\n"
    messages: list[str] = []
    for sanitize in (True, False):
        with _rdkit_log_capture() as log:
            supplier = Chem.SDMolSupplier()
            supplier.SetData(text, sanitize=sanitize, removeHs=False)
            try:
                mol = supplier[0]
            except (IndexError, RuntimeError):
                mol = None
        messages.extend(m for m in log if m not in messages)
        if mol is not None:
            if not sanitize:
                mol.UpdatePropertyCache(strict=False)
            else:
                mol.SetBoolProp("_molgiae_sanitized", True)
            return mol, messages
    return None, messages


def _mol_smiles(mol) -> str:
    from rdkit import Chem

    with _rdkit_log_capture():
        try:
            return Chem.MolToSmiles(Chem.RemoveHs(mol, sanitize=False))
        except Exception:
            return ""


def _complete_hydrogens(mol):
    """``(mol with its implicit hydrogens made explicit atoms, number added)``.

    The models were trained on molecules with every hydrogen; an SD record drawn without them
    (a heavy-atom skeleton) would be embedded as a different molecule. Hydrogens are added
    with 3-D coordinates (RDKit ``AddHs(addCoords=True)``) when RDKit could sanitise the block
    and the block has bonds (without bonds the implicit-hydrogen count is meaningless: every
    carbon would get four). Records keep the number in ``hydrogens_added``."""
    from rdkit import Chem

    if mol.GetNumBonds() == 0 or not mol.HasProp("_molgiae_sanitized"):
        return mol, 0
    missing = sum(a.GetNumImplicitHs() for a in mol.GetAtoms())
    if missing == 0:
        return mol, 0
    with _rdkit_log_capture():
        try:
            return Chem.AddHs(mol, addCoords=True), missing
        except Exception:  # noqa: BLE001 - keep the record as drawn
            return mol, 0


def _read_sdf(lines: Iterable[str], source: str, opts: _Options) -> Iterator[Item]:
    """SD/MOL text: each conformer of each block is one record; bad blocks are errors.

    Implicit hydrogens are added with coordinates (:func:`_complete_hydrogens`); a block with
    atoms but no bond block gets its SMILES perceived from the geometry instead of RDKit's
    dotted one (``C.C.O``)."""
    index = 0
    for start, block in _sdf_blocks(lines):
        title = block.split("\n", 1)[0].strip()
        try:
            mol, messages = _parse_sd_block(block)
        except Exception as exc:  # noqa: BLE001 - e.g. RDKit's log cut inside a multi-byte character
            mol, messages = None, [f"{type(exc).__name__}: {exc}"]
        if mol is None:
            detail = f": {'; '.join(messages)} (line numbers within the record)" if messages else ""
            yield RecordError(
                source, index, f"RDKit could not parse this SD record (starts on line {start}){detail}", title,
            )
            index += 1
            continue
        name = mol.GetProp("_Name").strip() if mol.HasProp("_Name") else ""
        props = _numeric_props(mol.GetPropsAsDict(includePrivate=False, includeComputed=False))
        bondless = mol.GetNumBonds() == 0 and mol.GetNumAtoms() > 1
        smiles = "" if bondless else _mol_smiles(mol)
        mol, added = _complete_hydrogens(mol)
        elements = rdkit_atomic_numbers(mol)
        conformers = list(mol.GetConformers())
        if not conformers:
            yield RecordError(source, index, "no 3-D coordinates (record has no conformer)", name)
            index += 1
        for conf in conformers:
            rec_name = name or f"record_{index}"
            if not conf.Is3D():
                yield RecordError(source, index, "no 3-D coordinates (the molblock is 2-D)", rec_name)
            else:
                rec = ConformerRecord(
                    elements=elements, coords=conf.GetPositions(), name=rec_name, source=source,
                    index=index, properties=dict(props), smiles=smiles, hydrogens_added=added,
                )
                if bondless:  # no bond block: bonds (and the SMILES) from the geometry
                    rec.smiles = perceive_smiles(rec)
                yield rec
            index += 1
