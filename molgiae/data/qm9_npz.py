"""The one parser of molgiae's QM9 ``.npz`` files (``format_version`` ``molgiae-qm9-npz-*``).

Keys (``docs/data.md``): ``index`` int [M] (QM9 index), ``Z`` uint8/int [A], ``R`` float [A, 3] (Å),
``ptr`` int [M+1] or ``n_atoms`` int [M]; optional ``props`` float [M, P] with ``prop_names`` [P],
and ``smiles`` [M]. A compact training file (``tools/gpu_prepare.py``) has no properties or SMILES.
Both the array loader (:func:`molgiae.data.conformers.load_qm9_npz`) and the record reader
(:mod:`molgiae.data.readers.npz`) go through :func:`read_qm9_npz`.
"""
from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

QM9_FORMAT = "molgiae-qm9-npz"
_READ_ERRORS = (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, zlib.error)


class Qm9NpzError(ValueError):
    """A file that is not a readable molgiae QM9 npz; the message says why."""


@dataclass
class Qm9Arrays:
    """One QM9 npz file's arrays. index int64 [M]; ptr int64 [M+1] (molecule i is atoms
    ptr[i]:ptr[i+1]); Z [A]; R [A, 3] (as stored: float64 or float32); props float [M, P] or None with ``prop_names``;
    smiles str [M] or None."""

    index: np.ndarray
    ptr: np.ndarray
    Z: np.ndarray
    R: np.ndarray
    props: np.ndarray | None = None
    prop_names: tuple[str, ...] = ()
    smiles: np.ndarray | None = None


def npz_format(path: str | Path) -> str:
    """The ``format_version`` of an npz archive ('' when it has none or cannot be read)."""
    try:
        with np.load(path, allow_pickle=False) as d:
            return str(d["format_version"]) if "format_version" in d.files else ""
    except Exception:  # noqa: BLE001 - empty, corrupt or not an npz: the readers report why
        return ""


def is_qm9_npz(path: str | Path) -> bool:
    return str(path).endswith(".npz") and npz_format(path).startswith(QM9_FORMAT)


def read_qm9_npz(path: str | Path) -> Qm9Arrays:
    """All arrays of a molgiae QM9 npz; :class:`Qm9NpzError` says what is wrong with any other file."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise Qm9NpzError("not a readable .npz file (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as d:
            version = str(d["format_version"]) if "format_version" in d.files else ""
            if not version.startswith(QM9_FORMAT):
                raise Qm9NpzError(f"not a molgiae QM9 npz (format_version {version!r}, expected "
                                  f"'{QM9_FORMAT}-*'); other .npz layouts are not supported")
            missing = [k for k in ("index", "Z", "R") if k not in d.files]
            if "ptr" not in d.files and "n_atoms" not in d.files:
                missing.append("ptr or n_atoms")
            if missing:
                raise Qm9NpzError(f"QM9 npz lacks keys {missing}")
            arrays = {k: d[k] for k in ("index", "ptr", "n_atoms", "Z", "R", "props", "prop_names", "smiles")
                      if k in d.files}
    except Qm9NpzError:
        raise
    except _READ_ERRORS as exc:
        raise Qm9NpzError(f"corrupt .npz file ({exc})") from None
    return _checked(arrays)


def _checked(a: dict) -> Qm9Arrays:
    index = a["index"].astype(np.int64)
    ptr = a["ptr"].astype(np.int64) if "ptr" in a else np.r_[0, np.cumsum(a["n_atoms"])].astype(np.int64)
    if len(ptr) != len(index) + 1 or ptr[-1] != len(a["Z"]) or len(a["R"]) != len(a["Z"]):
        raise Qm9NpzError(f"inconsistent array lengths: {len(index)} molecules, ptr of {len(ptr)}, "
                          f"{len(a['Z'])} elements, {len(a['R'])} coordinates")
    with_props = "props" in a and "prop_names" in a
    return Qm9Arrays(
        index=index, ptr=ptr, Z=a["Z"], R=a["R"],
        props=a["props"] if with_props else None,
        prop_names=tuple(str(s) for s in a["prop_names"]) if with_props else (),
        smiles=a.get("smiles"),
    )
