"""QM9 regression targets: labels of a :class:`ConformerSet` in the target's unit.

The npz files store QM9's own units (energies in Hartree). :func:`target_values` converts
them with the ``QM9_TARGETS`` table of :mod:`molgiae.chem`: Hartree → eV for homo, lumo,
gap, zpve, U0, U, H, G; U0/U/H/G become *atomization* energies (molecular value minus the
sum of the free-atom reference energies of its atoms, in Hartree, then → eV); the other
targets are returned as stored.

Labels of other files (SDF tags, extxyz info, QM9 xyz comment lines) are read the same way:
a tag named like a QM9 property is taken to be in QM9's stored unit.
"""
from __future__ import annotations

import numpy as np

from molgiae.chem import QM9_TARGETS, Qm9Target, symbol
from molgiae.data.conformers import ConformerSet

#: QM9's single-atom reference energies (B3LYP/6-31G(2df,p)), atomic number → property → value.
#: Energies (ZPVE, U0, U, H, G) in Hartree, Cv in cal/(mol K). Copied from the QM9 "atomref"
#: table (figshare file 3195395). The package carries its own copy, so it needs no data file at
#: run time (tests/test_finetune.py checks it against a copy of that table when one is present).
ATOMREF: dict[int, dict[str, float]] = {
    1: {"zpve": 0.0, "U0": -0.500273, "U": -0.498857, "H": -0.497912, "G": -0.510927, "Cv": 2.981},
    6: {"zpve": 0.0, "U0": -37.846772, "U": -37.845355, "H": -37.844411, "G": -37.861317, "Cv": 2.981},
    7: {"zpve": 0.0, "U0": -54.583861, "U": -54.582445, "H": -54.581501, "G": -54.598897, "Cv": 2.981},
    8: {"zpve": 0.0, "U0": -75.064579, "U": -75.063163, "H": -75.062219, "G": -75.079532, "Cv": 2.981},
    9: {"zpve": 0.0, "U0": -99.718730, "U": -99.717314, "H": -99.716370, "G": -99.733544, "Cv": 2.981},
}

#: The 12 standard QM9 targets, in the usual order.
TARGET_NAMES: tuple[str, ...] = tuple(QM9_TARGETS)


def get_target(name: str) -> Qm9Target:
    """The :class:`Qm9Target` called ``name``; ValueError listing the valid names otherwise."""
    if name not in QM9_TARGETS:
        hint = ""
        folded = {k.lower(): k for k in QM9_TARGETS}
        if str(name).lower() in folded:
            hint = f" (did you mean {folded[str(name).lower()]!r}? names are case-sensitive)"
        raise ValueError(f"unknown target {name!r}{hint}; valid targets: {', '.join(TARGET_NAMES)}")
    return QM9_TARGETS[name]


def atom_reference_sum(data: ConformerSet, name: str) -> np.ndarray:
    """Sum over each molecule's atoms of the atom reference of property ``name`` (Hartree). → [M]."""
    table = np.full(119, np.nan)
    for z, refs in ATOMREF.items():
        table[z] = refs[name]
    per_atom = table[np.asarray(data.elements, dtype=np.int64)]
    missing = ~np.isfinite(per_atom)
    if missing.any():
        bad = sorted({symbol(int(z)) for z in np.asarray(data.elements)[missing]})
        raise ValueError(
            f"no QM9 atom reference energy for element(s) {', '.join(bad)}: atomization energies ({name}) "
            f"are defined for H, C, N, O and F only"
        )
    csum = np.r_[0.0, np.cumsum(per_atom)]
    return csum[data.ptr[1:]] - csum[data.ptr[:-1]]


def target_values(data: ConformerSet, name: str) -> np.ndarray:
    """Labels of target ``name`` for every conformer of ``data``, in the target's unit. → float64 [M].

    NaN where a conformer has no label. Raises ValueError for an unknown target name (listing
    the 12 valid ones) and when the data carries no label at all for this target.
    """
    target = get_target(name)
    names = list(data.property_names)
    column = None
    if name in names and data.properties.size:
        column = np.asarray(data.properties[:, names.index(name)], dtype=np.float64)
    if column is None or not np.isfinite(column).any():
        have = ", ".join(n for n in names if n in QM9_TARGETS) or "none"
        raise ValueError(
            f"the data has no labels for target {name!r} (QM9 targets it does label: {have}); "
            f"fine-tuning needs labelled molecules, e.g. the QM9 npz files"
        )
    values = column.copy()
    if target.atomization:
        values = values - atom_reference_sum(data, name)
    return values * target.scale
