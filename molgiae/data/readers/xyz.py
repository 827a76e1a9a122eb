"""``.xyz``/``.extxyz`` files (original QM9 ``dsgdb9nsd_*.xyz`` and extended xyz), and tar
archives of them.
"""
from __future__ import annotations

import io
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from molgiae.chem import atomic_number
from molgiae.data.readers.ase_formats import _atoms_record
from molgiae.data.readers.common import Item, QM9_PROPERTY_NAMES, TRUNCATED_ARCHIVE, _LineStream, _Options
from molgiae.data.record import ConformerRecord, RecordError


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
