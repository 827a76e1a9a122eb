"""The readers' public API (``read_records``, ``iter_records``, ``records_only``) and the
dispatch from a file's suffix to its reader, with the whole-file and geometry checks.
"""
from __future__ import annotations

import glob
import gzip
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from molgiae.data.geom import is_geom_rdkit_folder, read_geom_msgpack, read_geom_rdkit_folder
from molgiae.data.readers.ase_formats import _read_ase
from molgiae.data.readers.common import EMPTY_FILE, Item, TRUNCATED_GZIP, _Options, _STREAM_ERRORS
from molgiae.data.readers.npz import _read_qm9_npz
from molgiae.data.readers.sdf import _read_sdf
from molgiae.data.readers.smiles import _read_csv, _read_smi
from molgiae.data.readers.xyz import _read_tar, _read_xyz
from molgiae.data.record import ConformerRecord, RecordError, check_geometry


# base suffix -> kind; text kinds may also be gzipped (suffix + ".gz").
_TEXT_KINDS = {
    ".sdf": "sdf", ".sd": "sdf", ".mol": "sdf",
    ".xyz": "xyz", ".extxyz": "xyz",
    ".smi": "smi", ".csv": "csv",
    ".pdb": "pdb", ".cif": "cif",
}
_BINARY_KINDS = {
    ".npz": "npz",
    ".tar": "tar", ".tar.gz": "tar", ".tgz": "tar", ".tar.bz2": "tar", ".tar.xz": "tar",
    ".traj": "traj", ".json": "json",
    ".msgpack": "msgpack",  # GEOM (molgiae.data.geom)
}
_ASE_FORMATS = {"pdb": "proteindatabank", "cif": "cif", "traj": "traj", "json": "json"}
# Kinds whose coordinates are 3-D by construction: a molecule lying in the z = 0 plane is
# real (QM9 gdb_23, G2 planar molecules), so check_geometry's all-z=0 test is skipped.
# SD/MOL: the molblock's own dimension flag decides (a "2D" conformer is an error in _read_sdf), so
# planar molecules (water, benzene) at z = 0 in a block flagged 3D are kept.
_FLAT_OK_KINDS = frozenset({"npz", "xyz", "tar", "pdb", "cif", "traj", "json", "msgpack", "sdf"})

#: Every file suffix read_records understands (case-insensitive), for --help texts.
SUPPORTED_SUFFIXES: tuple[str, ...] = (
    tuple(_BINARY_KINDS) + tuple(_TEXT_KINDS) + tuple(s + ".gz" for s in _TEXT_KINDS)
)
_SUFFIX_KIND = {s: (_TEXT_KINDS.get(s.removesuffix(".gz")) or _BINARY_KINDS[s]) for s in SUPPORTED_SUFFIXES}


# --------------------------------------------------------------------------- public API


def read_records(
    path: str | Path,
    *,
    num_conformers: int = 1,
    seed: int = 0,
    smiles_column: str | None = None,
) -> Iterator[Item]:
    """Stream the conformers of one file as records, or errors saying why not.

    Args:
        path: the file; its suffix (case-insensitive, see ``SUPPORTED_SUFFIXES``) picks the reader.
        num_conformers: conformers to embed per SMILES (``.smi``/``.csv`` only).
        seed: base random seed for SMILES embedding (``seed + line_number`` per line).
        smiles_column: the SMILES column of a ``.csv`` (default: auto-detect
            ``smiles``/``canonical_smiles``, case-insensitively).

    Every yielded ``ConformerRecord`` has passed :func:`check_geometry`. Raises only for
    invalid arguments (``num_conformers < 1``), never for bad input.
    """
    if num_conformers < 1:
        raise ValueError(f"num_conformers must be >= 1, got {num_conformers}")
    opts = _Options(num_conformers=int(num_conformers), seed=int(seed), smiles_column=smiles_column)
    return _read_checked(Path(path), str(path), opts)


def iter_records(paths: Sequence[str | Path] | str | Path, **kwargs) -> Iterator[Item]:
    """Chain :func:`read_records` over several paths, expanding glob patterns.

    A pattern expands to its matches in sorted order (``glob.glob``); a pattern with no
    match yields one ``RecordError(pattern, -1, "no files match ...")``. Plain paths are
    read as given (a missing one yields "file not found"). ``kwargs`` go to read_records.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    for p in paths:
        p = str(p)
        if glob.has_magic(p):
            matches = sorted(glob.glob(p))
            if not matches:
                yield RecordError(p, -1, "no files match this pattern")
            for m in matches:
                yield from read_records(m, **kwargs)
        else:
            yield from read_records(p, **kwargs)


def records_only(items: Iterable[Item], errors: list[RecordError]) -> Iterator[ConformerRecord]:
    """Yield the good records of ``items``; append every RecordError to ``errors``."""
    for item in items:
        if isinstance(item, RecordError):
            errors.append(item)
        else:
            yield item


# --------------------------------------------------------------------------- dispatch


def _suffix_of(path: Path) -> str | None:
    """The longest supported suffix that ``path`` ends with, or None."""
    name = path.name.lower()
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return None


def _unsupported(path: Path) -> str:
    sfx = path.suffixes[-2:] if path.suffix.lower() == ".gz" else path.suffixes[-1:]
    ext = "".join(sfx) or "(none)"
    return f"unsupported file extension '{ext}'; supported: {', '.join(SUPPORTED_SUFFIXES)}"


def _open_text(path: Path, gz: bool):
    if gz:
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _dispatch(path: Path, source: str, opts: _Options) -> Iterator[Item]:
    """Run the reader for ``path``'s format (records not yet geometry-checked)."""
    suffix = _suffix_of(path)
    kind = _SUFFIX_KIND[suffix]
    if kind in _TEXT_READERS:
        with _open_text(path, suffix.endswith(".gz")) as f:
            yield from _TEXT_READERS[kind](f, source, opts)
    elif kind in _ASE_FORMATS:
        if suffix.endswith(".gz"):
            with _open_text(path, True) as f:
                yield from _read_ase(f, _ASE_FORMATS[kind], source)
        else:
            yield from _read_ase(str(path), _ASE_FORMATS[kind], source)
    else:
        yield from _PATH_READERS[kind](path, source, opts)


def _read_checked(path: Path, source: str, opts: _Options) -> Iterator[Item]:
    """Whole-file checks, then the format reader, geometry checks and stream-error handling."""
    if not path.exists():
        yield RecordError(source, -1, "file not found")
        return
    geom_folder = is_geom_rdkit_folder(path)  # GEOM rdkit_folder (or its summary_*.json)
    if path.is_dir() and not geom_folder:
        yield RecordError(source, -1, "is a directory, not a file")
        return
    suffix = _suffix_of(path)
    if suffix is None and not geom_folder:
        yield RecordError(source, -1, _unsupported(path))
        return
    if not path.is_dir() and path.stat().st_size == 0:
        yield RecordError(source, -1, EMPTY_FILE)
        return
    allow_flat = geom_folder or _SUFFIX_KIND[suffix] in _FLAT_OK_KINDS
    items = read_geom_rdkit_folder(path, source) if geom_folder else _dispatch(path, source, opts)
    count, next_index = 0, 0
    try:
        for item in items:
            if isinstance(item, ConformerRecord):
                reason = check_geometry(item, allow_flat=allow_flat)
                if reason is not None:
                    item = RecordError(source, item.index, reason, item.name)
            count += 1
            next_index = max(next_index, item.index + 1)
            yield item
    except _STREAM_ERRORS as exc:
        yield RecordError(source, next_index, f"{TRUNCATED_GZIP} ({exc}); rest of file skipped")
        return
    except Exception as exc:  # a reader bug or an input we did not foresee: never raise
        yield RecordError(
            source, next_index,
            f"unexpected error while reading ({type(exc).__name__}: {exc}); rest of file skipped",
        )
        return
    if count == 0:
        yield RecordError(source, -1, EMPTY_FILE)


# --------------------------------------------------------------------------- dispatch tables

#: kind -> reader of an opened text stream (plain or gzip).
_TEXT_READERS: dict[str, Callable[[Iterable[str], str, _Options], Iterator[Item]]] = {
    "sdf": _read_sdf,
    "xyz": _read_xyz,
    "smi": _read_smi,
    "csv": _read_csv,
}
#: kind -> reader of a path (binary formats).
_PATH_READERS: dict[str, Callable[[Path, str, _Options], Iterator[Item]]] = {
    "npz": _read_qm9_npz,
    "tar": _read_tar,
    "msgpack": lambda path, source, opts: read_geom_msgpack(path, source),
}
