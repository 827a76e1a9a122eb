"""The conformer record: the one currency between readers and the rest of molgiae."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from molgiae.chem import symbol

#: Longest record name kept (a title line of 100 MB is not a name); longer ones are cut and marked.
MAX_NAME_CHARS = 200
#: Longest error reason kept.
MAX_REASON_CHARS = 2000


def cap_text(text: str, limit: int) -> str:
    """``text`` itself, or its first ``limit`` characters and how long it really was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [cut: {len(text):,} characters]"


@dataclass
class ConformerRecord:
    """One 3-D conformer as read from a file.

    Attributes:
        elements: int64 [n] atomic numbers, in the file's atom order.
        coords: float64 [n, 3] Cartesian coordinates in Å, same order.
        name: the molecule's name in its file (title line, QM9 ``gdb_N``, ...).
        source: the path it was read from.
        index: the record's 0-based position in its source (conformers count separately).
        properties: optional labels, e.g. QM9 properties in the file's own units.
        smiles: a SMILES string when the source carries one or it could be perceived, else "".
        hydrogens_added: hydrogens the reader added to the file's atoms (an SD record drawn
            without them: :mod:`molgiae.data.readers`), 0 when the file had them all.
    """

    elements: np.ndarray
    coords: np.ndarray
    name: str = ""
    source: str = ""
    index: int = 0
    properties: dict[str, float] = field(default_factory=dict)
    smiles: str = ""
    hydrogens_added: int = 0

    def __post_init__(self) -> None:
        self.name = cap_text(str(self.name), MAX_NAME_CHARS)
        self.elements = np.asarray(self.elements, dtype=np.int64).reshape(-1)
        self.coords = np.asarray(self.coords, dtype=np.float64).reshape(-1, 3)
        if len(self.elements) != len(self.coords):
            raise ValueError(
                f"{len(self.elements)} elements but {len(self.coords)} coordinate rows"
            )

    @property
    def n_atoms(self) -> int:
        return len(self.elements)


@dataclass
class RecordError:
    """A record that could not be read or used: where it is and why."""

    source: str
    index: int
    reason: str
    name: str = ""

    def __post_init__(self) -> None:
        self.name = cap_text(str(self.name), MAX_NAME_CHARS)
        self.reason = cap_text(str(self.reason), MAX_REASON_CHARS)

    def __str__(self) -> str:
        where = f"{self.source}, record {self.index}"
        if self.name:
            where += f" ({self.name})"
        return f"{where}: {self.reason}"


def check_geometry(
    record: ConformerRecord, min_distance: float = 0.1, *, allow_flat: bool = False
) -> str | None:
    """Return why a record's geometry is unusable, or None when it is fine.

    Catches: no atoms, non-finite coordinates, flat 2-D input (all z = 0 with more
    than 3 atoms, the mark of an SDF without 3-D coordinates), and two atoms closer
    than ``min_distance`` Å.

    ``allow_flat=True`` skips the all-z = 0 test, for sources whose coordinates are 3-D by
    construction (QM9 npz/xyz, extxyz): there a planar or linear molecule lying in the
    z = 0 plane (e.g. QM9 gdb_23, diacetylene) is a real 3-D geometry, not a 2-D drawing.
    """
    n = record.n_atoms
    if n == 0:
        return "molecule has no atoms"
    x = record.coords
    if not np.isfinite(x.sum()):  # one reduction on the happy path; NaN/inf propagate
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        if len(bad):  # (else only the sum overflowed)
            return f"non-finite coordinate (NaN or inf) at atom {int(bad[0]) + 1}"
    if not allow_flat and n > 3 and not x[:, 2].any():
        return "no 3-D coordinates (all z = 0): a 2-D structure"
    if n > 64:  # O(n log n) closest pair: the dense test below is O(n²) (seconds at 2,000 atoms)
        from scipy.spatial import cKDTree

        d, j = cKDTree(x).query(x, k=2)
        i = int(d[:, 1].argmin())
        if d[i, 1] < min_distance:
            other = int(j[i, 1]) if int(j[i, 1]) != i else int(j[i, 0])  # exact duplicates: either order
            a, b = sorted((i, other))
            return f"atoms {a + 1} and {b + 1} are {d[i, 1]:.3f} Å apart (overlapping atoms)"
        return None
    if n > 1:
        diff = x[:, None, :] - x[None, :, :]
        d2 = np.einsum("ijk,ijk->ij", diff, diff)
        d2.flat[:: n + 1] = np.inf
        k = int(d2.argmin())
        if d2.flat[k] < min_distance * min_distance:
            i, j = divmod(k, n)
            return (
                f"atoms {min(i, j) + 1} and {max(i, j) + 1} are {np.sqrt(d2.flat[k]):.3f} Å apart "
                f"(overlapping atoms)"
            )
    return None


def check_record(record: ConformerRecord, elements: tuple[int, ...], max_atoms: int | None = None) -> str | None:
    """Why a model with vocabulary ``elements`` (and, to reconstruct, ``max_atoms``) cannot take
    a record: its geometry (:func:`check_geometry`, flat molecules allowed), elements outside the
    vocabulary, or too many atoms. None when it can."""
    problem = check_geometry(record, allow_flat=True)
    if problem:
        return problem
    outside = sorted(set(record.elements.tolist()) - set(elements))
    if outside:
        return (f"element(s) {', '.join(symbol(z) for z in outside)} outside the model's vocabulary "
                f"({', '.join(symbol(z) for z in elements)})")
    if max_atoms is not None and record.n_atoms > max_atoms:
        return (f"{record.n_atoms} atoms: above this model's max_atoms={max_atoms}, "
                f"so it cannot be reconstructed (embedding works)")
    return None
