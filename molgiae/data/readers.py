"""Readers: every supported molecule file becomes a stream of records.

``read_records(path)`` yields one :class:`ConformerRecord` per conformer in the file, or a
:class:`RecordError` for each one that could not be read or whose geometry is unusable
(:func:`check_geometry`). Bad input never raises: a whole-file problem (missing file,
unknown extension, empty file, corrupt or truncated compressed stream) is a
``RecordError`` too. Readers know nothing of models and never import torch; RDKit and ASE
are imported on first use.

Conventions
-----------
* ``source`` is ``str(path)`` as given; ``index`` is the record's 0-based position in
  that file, and a bad record still consumes its index, so good records keep their true
  positions. Whole-file errors have ``index = -1``; a truncated/corrupt stream is
  reported at the index where reading stopped, after the records read before it.
* QM9 ``.tar``/``.tar.gz``/``.tgz``/``.tar.bz2``/``.tar.xz`` archives: members ending in
  ``.xyz``/``.extxyz`` are read in sorted name order; ``source`` is the archive path and
  ``index`` runs over the records of all members (for QM9 archives: the member's position);
  errors name the member in their reason.
* ``.smi``/``.csv``: with ``num_conformers = k`` the molecule on the m-th data row (0-based,
  comments/header not counted) has record indices ``m*k .. m*k+k-1``, whatever happens to
  other rows; an invalid or unembeddable row is one error at index ``m*k``. If embedding
  gives fewer than k conformers, the missing indices are skipped. Conformers are embedded
  with ETKDGv3, ``randomSeed = seed + line_number`` (1-based physical line), then MMFF.
* ``.xyz``/``.extxyz``: frames are split on their atom-count lines here and each frame is
  parsed by ASE's extxyz reader, so reading is streaming and a bad frame does not end
  the file (``ase.io.iread`` scans the whole file before yielding anything). A frame whose
  count line is unreadable, too small (the line after its atoms is another atom line) or too
  large (one of its atom lines is a count line) is an error, and reading resumes at the next
  atom-count line. A file is read as original QM9 ``dsgdb9nsd_*.xyz`` (``*^`` and ``E``
  exponents both accepted) only when its first frame has that structure: ``gdb <index>`` and
  the 15 property values on line 2, 5-field atom lines; a plain comment starting ``gdb``
  (``gdb_1``) stays plain xyz.
* ``.sdf``/``.sd``/``.mol``: blocks are split on ``$$$$`` here and parsed one by one by
  RDKit (sanitised; if that fails, unsanitised), so a malformed block is one error and
  reading goes on. A conformer flagged 2-D by its molblock (or not flagged 3-D) is an error
  ("no 3-D coordinates"); one flagged 3-D is trusted, so planar molecules at z = 0 are kept.
  Implicit hydrogens of a sanitised block with bonds are added with 3-D coordinates
  (``AddHs(addCoords=True)``; ``ConformerRecord.hydrogens_added`` says how many). A block with
  no bond block gets its SMILES perceived from the geometry (no hydrogens are added to it).
* GEOM (:mod:`molgiae.data.geom`): a ``.msgpack`` file, or a directory holding
  ``summary_*.json`` (or such a summary file) as a GEOM ``rdkit_folder``, whose pickles are
  unpickled (that executes code from the files: trusted data only). One record per conformer,
  name and smiles = the GEOM SMILES. An ``.npz`` with ``format_version``
  ``molgiae-conformers-npz-*`` is a conformer-ensemble file (:func:`molgiae.data.ensemble_npz.read_ensemble_npz`).
* Geometry: every record passes :func:`check_geometry`. Its all-z=0 ("2-D drawing") test
  applies to SMILES input only; SD/MOL input has its molblock's dimension flag, and npz, xyz,
  tar and other ASE formats are 3-D by construction (planar/linear molecules there often lie
  exactly in z = 0).
"""
from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import io
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from molgiae.chem import atomic_number
from molgiae.data.ensemble_npz import ENSEMBLE_NPZ_FORMAT, read_ensemble_npz
from molgiae.data.geom import is_geom_rdkit_folder, read_geom_msgpack, read_geom_rdkit_folder
from molgiae.data.molecules import perceive_smiles, rdkit_atomic_numbers
from molgiae.data.record import ConformerRecord, RecordError, check_geometry

Item = ConformerRecord | RecordError

#: The 15 properties of a QM9 ``gdb`` line, in order (same names as the npz ``prop_names``).
QM9_PROPERTY_NAMES = (
    "A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv",
)

EMPTY_FILE = "file is empty / contains no molecules"
TRUNCATED_GZIP = "truncated or corrupt gzip stream"
TRUNCATED_ARCHIVE = "truncated or corrupt archive"

# Errors a damaged compressed stream raises while it is being read.
_STREAM_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)

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


@dataclass(frozen=True)
class _Options:
    num_conformers: int = 1
    seed: int = 0
    smiles_column: str | None = None


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


# --------------------------------------------------------------------------- small helpers


class _LineStream:
    """Lines of a text stream with one-line pushback and a 1-based line counter."""

    def __init__(self, lines: Iterable[str]):
        self._it = iter(lines)
        self._back: list[str] = []
        self.lineno = 0

    def readline(self) -> str | None:
        line = self._back.pop() if self._back else next(self._it, None)
        if line is not None:
            self.lineno += 1
        return line

    def unread(self, line: str) -> None:
        self._back.append(line)
        self.lineno -= 1


def _is_number(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    if isinstance(v, np.ndarray):
        return v.ndim == 0 and np.issubdtype(v.dtype, np.number)
    return isinstance(v, (int, float, np.integer, np.floating))


def _numeric_props(d: dict) -> dict[str, float]:
    return {str(k): float(v) for k, v in d.items() if _is_number(v)}


@contextlib.contextmanager
def _rdkit_log_capture():
    """Silence RDKit's log while parsing; collect its error messages when RDKit can."""
    from rdkit import rdBase

    block = rdBase.BlockLogs()
    capture_cls = getattr(rdBase, "CaptureErrorLog", None)  # RDKit >= 2025
    box: list[str] = []
    try:
        if capture_cls is None:
            yield box
        else:
            with capture_cls() as cap:
                yield box
            box.extend(_clean_rdkit_messages(cap.messages))
    finally:
        del block


def _clean_rdkit_messages(text: str) -> list[str]:
    out = []
    for line in (text or "").splitlines():
        line = line.strip()
        if line.startswith("[") and "]" in line:  # drop the "[hh:mm:ss]" stamp
            line = line[line.index("]") + 1:].strip()
        line = line.removeprefix("ERROR:").strip()
        if line and "moving to the beginning of the next molecule" not in line:
            out.append(line)
    return out


# --------------------------------------------------------------------------- QM9 npz


def _read_qm9_npz(path: Path, source: str, opts: _Options) -> Iterator[Item]:
    """A ``molgiae-qm9-npz`` file: one record per molecule, name ``gdb_<QM9 index>``."""
    if not zipfile.is_zipfile(path):
        yield RecordError(source, -1, "not a readable .npz file (not a zip archive)")
        return
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        yield RecordError(source, -1, f"not a readable .npz file ({exc})")
        return
    if not isinstance(data, np.lib.npyio.NpzFile):
        yield RecordError(source, -1, "not an .npz archive (a single .npy array)")
        return
    if _is_ensemble_npz(data):  # conformer ensembles (molgiae.data.ensemble_npz), e.g. the synthetic GEOM stand-in
        data.close()
        yield from read_ensemble_npz(path, source)
        return
    with data:
        try:
            version = str(data["format_version"]) if "format_version" in data.files else ""
            if not version.startswith("molgiae-qm9-npz"):
                yield RecordError(
                    source, -1,
                    f"not a molgiae QM9 npz (format_version {version!r}, expected "
                    f"'molgiae-qm9-npz-*'); other .npz layouts are not supported",
                )
                return
            missing = [k for k in ("index", "ptr", "Z", "R", "props", "prop_names") if k not in data.files]
            if missing:
                yield RecordError(source, -1, f"QM9 npz lacks keys {missing}")
                return
            qm9_index, ptr, Z, R = data["index"], data["ptr"], data["Z"], data["R"]
            props, names = data["props"], [str(s) for s in data["prop_names"]]
            smiles = data["smiles"] if "smiles" in data.files else None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            yield RecordError(source, -1, f"corrupt .npz file ({exc})")
            return
    for i in range(len(qm9_index)):
        a, b = int(ptr[i]), int(ptr[i + 1])
        yield ConformerRecord(
            elements=Z[a:b], coords=R[a:b], name=f"gdb_{int(qm9_index[i])}", source=source,
            index=i, properties={k: float(v) for k, v in zip(names, props[i])},
            smiles=str(smiles[i]) if smiles is not None else "",
        )


def _is_ensemble_npz(data) -> bool:
    try:
        return "format_version" in data.files and str(data["format_version"]).startswith(ENSEMBLE_NPZ_FORMAT)
    except Exception:  # noqa: BLE001 - a corrupt member: let the QM9 path report it
        return False


# --------------------------------------------------------------------------- xyz (QM9 and extxyz)


_COUNT_LINE = re.compile(r"^\s*\d+\s*$")


def _is_count_line(line: str | None) -> bool:
    return line is not None and _COUNT_LINE.match(line) is not None


def _skip_to_count_line(stream: _LineStream) -> int:
    """Drop lines up to the next atom-count line (left unread) or the end; → lines dropped."""
    dropped = 0
    while True:
        line = stream.readline()
        if line is None:
            return dropped
        if _is_count_line(line):
            stream.unread(line)
            return dropped
        dropped += 1


def _xyz_frames(stream: _LineStream, trailer: int) -> Iterator[tuple[int, list[str] | None, str]]:
    """Split xyz text into frames by their atom-count lines.

    Yields ``(first_line_number, frame_lines, "")`` per frame, each frame being the count
    line, the comment line, n atom lines, ``trailer`` more lines (3 for QM9) and, for
    extxyz, any ``VEC`` lines. A frame that cannot be cut out is ``(line_number, None, reason)``
    and reading resumes at the next atom-count line (a line holding only an integer):

    * an unreadable count line;
    * a count too large: one of the n "atom lines" is a count line (the next frame's), which
      is left for the next frame;
    * a count too small: the line after the frame's atoms is another atom line;
    * a frame cut short by the end of the file.
    """
    while True:
        line = stream.readline()
        if line is None:
            return
        if not line.strip():
            continue
        start = stream.lineno
        if not _is_count_line(line):
            dropped = _skip_to_count_line(stream)
            yield start, None, (
                f"line {start}: expected an atom count, got {line.strip()[:40]!r}; "
                f"{dropped + 1} line(s) skipped to the next atom-count line"
            )
            continue
        n = int(line.strip())
        frame = [line]
        short = None
        for j in range(n + 1 + trailer):
            nxt = stream.readline()
            if nxt is None:
                short = (f"file ends inside the frame starting on line {start} "
                         f"({n} atoms announced, {max(len(frame) - 2, 0)} atom lines found)")
                break
            if 1 <= j <= n and _is_count_line(nxt):  # an atom line that is the next frame's count
                stream.unread(nxt)
                short = (f"the frame starting on line {start} announces {n} atoms but line {stream.lineno + 1} "
                         f"is an atom-count line after {j - 1} atom lines (count too large, or atom lines "
                         f"missing); read on from there")
                break
            frame.append(nxt)
        if short is not None:
            yield start, None, short
            continue
        while trailer == 0:
            nxt = stream.readline()
            if nxt is not None and nxt.lstrip().startswith("VEC"):
                frame.append(nxt)
                continue
            if nxt is not None:
                stream.unread(nxt)
            break
        after = stream.readline()
        while after is not None and not after.strip():
            after = stream.readline()
        if not _looks_like_atom_line(after):  # the end, the next count line, or a bad one (next frame's error)
            if after is not None:
                stream.unread(after)
            yield start, frame, ""
            continue
        line_after = stream.lineno
        dropped = _skip_to_count_line(stream)
        yield start, None, (
            f"the frame starting on line {start} announces {n} atoms but line {line_after} after them is "
            f"another atom line ({after.strip()[:40]!r}): the count is too small; frame not read, "
            f"{dropped + 1} line(s) skipped to the next atom-count line"
        )


def _looks_like_atom_line(line: str | None) -> bool:
    """``El x y z ...``: at least 4 fields, the 2nd to 4th numbers."""
    if line is None:
        return False
    tokens = line.split()
    if len(tokens) < 4:
        return False
    try:
        [_qm9_float(t) for t in tokens[1:4]]
    except ValueError:
        return False
    return True


def _looks_like_qm9(head: list[str]) -> bool:
    """The first frame has the original QM9 layout: a count line, then ``gdb <index>`` and the 15
    property values, then n atom lines of 5 fields (element, x, y, z, Mulliken charge)."""
    if len(head) < 3 or not _is_count_line(head[0]):
        return False
    tokens = head[1].split()
    if len(tokens) != 2 + len(QM9_PROPERTY_NAMES) or tokens[0] != "gdb" or not tokens[1].isdigit():
        return False
    try:
        [_qm9_float(t) for t in tokens[2:]]
    except ValueError:
        return False
    n = int(head[0])
    atoms = head[2:2 + n]
    return len(atoms) == n and all(len(a.split()) == 5 for a in atoms)


def _read_xyz(lines: Iterable[str], source: str, opts: _Options, start: int = 0) -> Iterator[Item]:
    """An xyz/extxyz text: the original QM9 layout when the first frame has its structure
    (:func:`_looks_like_qm9`), else (ext)xyz via ASE. A comment that merely starts with ``gdb``
    does not make a file QM9."""
    stream = _LineStream(lines)
    head: list[str] = []
    first = stream.readline()
    while first is not None and not first.strip():  # leading blank lines
        head.append(first)
        first = stream.readline()
    lead = len(head)
    if first is not None:
        head.append(first)
        n = int(first) if _is_count_line(first) else 0
        for _ in range(min(n, 10_000) + 1):
            line = stream.readline()
            if line is None:
                break
            head.append(line)
    qm9 = _looks_like_qm9(head[lead:])
    for line in reversed(head):
        stream.unread(line)
    parse = _qm9_record if qm9 else _extxyz_record
    index = start
    for lineno, frame, reason in _xyz_frames(stream, trailer=3 if qm9 else 0):
        if frame is None:
            yield RecordError(source, index, reason)
        else:
            try:
                item = parse(frame, source, index, lineno)
            except Exception as exc:  # noqa: BLE001 - one bad frame never ends the file
                item = RecordError(source, index, f"could not read the frame at line {lineno} "
                                                  f"({type(exc).__name__}: {exc})")
            yield item
        index += 1


def _qm9_float(token: str) -> float:
    """A QM9 number: Mathematica ``2.1997*^-6`` or ``2.1997E-6`` (or plain)."""
    return float(token.replace("*^", "e"))


def _qm9_record(frame: list[str], source: str, index: int, lineno: int) -> Item:
    """One original-layout QM9 molecule: ``gdb`` line, atoms ``El x y z q``, freqs, SMILES, InChI."""
    n = int(frame[0])
    head = frame[1].split()
    name = f"gdb_{head[1]}" if len(head) > 1 else ""
    try:
        if len(head) < 2 + len(QM9_PROPERTY_NAMES):
            raise ValueError(
                f"the gdb line has {max(len(head) - 2, 0)} property values, expected {len(QM9_PROPERTY_NAMES)}"
            )
        props = {k: _qm9_float(v) for k, v in zip(QM9_PROPERTY_NAMES, head[2:])}
        elements, coords = [], []
        for j, line in enumerate(frame[2:2 + n]):
            tok = line.split()
            if len(tok) < 4:
                raise ValueError(f"atom {j + 1} (line {lineno + 2 + j}) has {len(tok)} fields, expected 5")
            elements.append(atomic_number(tok[0]))
            coords.append([_qm9_float(t) for t in tok[1:4]])
    except (ValueError, KeyError) as exc:
        msg = exc.args[0] if exc.args else exc
        return RecordError(source, index, f"malformed QM9 xyz record at line {lineno}: {msg}", name)
    smiles_tokens = frame[2 + n + 1].split()
    return ConformerRecord(
        elements=elements, coords=np.array(coords, dtype=np.float64).reshape(-1, 3), name=name,
        source=source, index=index, properties=props,
        smiles=smiles_tokens[0] if smiles_tokens else "",
    )


def _extxyz_record(frame: list[str], source: str, index: int, lineno: int) -> Item:
    """One (ext)xyz frame parsed by ASE."""
    import ase.io

    comment = frame[1].strip()
    try:
        atoms = ase.io.read(io.StringIO("".join(frame)), format="extxyz")
    except Exception as exc:  # ASE raises many types for bad text
        return RecordError(source, index, f"ASE could not read the xyz frame at line {lineno}: {exc}")
    return _atoms_record(atoms, source, index, comment)


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


# --------------------------------------------------------------------------- tar archives of xyz


def _read_tar(path: Path, source: str, opts: _Options) -> Iterator[Item]:
    """A tar archive of xyz files (e.g. QM9's ``dsgdb9nsd_*.xyz``), members in sorted name order."""
    members, scan_error = [], None
    try:
        tar = tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        yield RecordError(source, -1, f"{TRUNCATED_ARCHIVE}: cannot open as tar ({exc})")
        return
    with tar:
        try:
            for m in tar:
                if m.isfile() and m.name.lower().endswith((".xyz", ".extxyz")):
                    members.append(m)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            scan_error = exc
        index = 0
        for m in sorted(members, key=lambda m: m.name):
            try:
                text = tar.extractfile(m).read().decode("utf-8", errors="replace")
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                yield RecordError(source, index, f"{TRUNCATED_ARCHIVE}: member {m.name} ({exc}); rest skipped", m.name)
                return
            for item in _read_xyz(io.StringIO(text), source, opts, start=index):
                if isinstance(item, RecordError):
                    item = RecordError(source, item.index, f"member {m.name}: {item.reason}", item.name or m.name)
                index = item.index + 1
                yield item
        if scan_error is not None:
            yield RecordError(source, index, f"{TRUNCATED_ARCHIVE} ({scan_error}); rest of archive skipped")


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
