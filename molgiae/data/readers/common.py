"""Shared pieces of the readers: the item type, error texts, reader options, line streams,
property and RDKit-log helpers.
"""
from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from molgiae.data.record import ConformerRecord, RecordError


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


@dataclass(frozen=True)
class _Options:
    num_conformers: int = 1
    seed: int = 0
    smiles_column: str | None = None


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
