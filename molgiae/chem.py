"""Chemistry constants: element vocabulary, units and the QM9 target table.

Ground floor: imports nothing of ours, no torch.
"""
from __future__ import annotations

from dataclasses import dataclass

SYMBOLS = (
    "X", "H", "He", "Li", "Be", "B", "C", "N", "O", "F", "Ne", "Na", "Mg", "Al", "Si", "P",
    "S", "Cl", "Ar", "K", "Ca", "Sc", "Ti", "V", "Cr", "Mn", "Fe", "Co", "Ni", "Cu", "Zn",
    "Ga", "Ge", "As", "Se", "Br", "Kr", "Rb", "Sr", "Y", "Zr", "Nb", "Mo", "Tc", "Ru", "Rh",
    "Pd", "Ag", "Cd", "In", "Sn", "Sb", "Te", "I", "Xe",
)
ATOMIC_NUMBER = {s: i for i, s in enumerate(SYMBOLS)}
ATOMIC_NUMBER.update({s.upper(): i for i, s in enumerate(SYMBOLS)})

#: The QM9 vocabulary (atomic numbers), in canonical-order band order.
QM9_ELEMENTS = (1, 6, 7, 8, 9)

HARTREE_TO_EV = 27.211386246
EV_TO_MEV = 1000.0


def symbol(atomic_number: int) -> str:
    """Element symbol of an atomic number (``'X'`` for unknown)."""
    return SYMBOLS[atomic_number] if 0 < atomic_number < len(SYMBOLS) else "X"


def atomic_number(sym: str) -> int:
    """Atomic number of an element symbol (case-insensitive). Raises ``KeyError``."""
    key = sym.strip()
    if key in ATOMIC_NUMBER:
        return ATOMIC_NUMBER[key]
    if key.upper() in ATOMIC_NUMBER:
        return ATOMIC_NUMBER[key.upper()]
    raise KeyError(f"unknown element symbol {sym!r}")


@dataclass(frozen=True)
class Qm9Target:
    """One QM9 regression target.

    ``name`` is the column in the npz ``prop_names``; ``scale`` converts the stored
    value to ``unit``; ``atomization`` subtracts atom reference energies first;
    ``extensive`` pools atom contributions by sum (else by mean);
    ``report_scale`` converts ``unit`` into ``report_unit`` for MAE reporting.
    """

    name: str
    unit: str
    scale: float
    extensive: bool
    atomization: bool = False
    report_unit: str = ""
    report_scale: float = 1.0


_EV = HARTREE_TO_EV
QM9_TARGETS: dict[str, Qm9Target] = {
    t.name: t
    for t in (
        Qm9Target("mu", "D", 1.0, extensive=False, report_unit="D"),
        Qm9Target("alpha", "a0^3", 1.0, extensive=True, report_unit="a0^3"),
        Qm9Target("homo", "eV", _EV, extensive=False, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("lumo", "eV", _EV, extensive=False, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("gap", "eV", _EV, extensive=False, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("r2", "a0^2", 1.0, extensive=True, report_unit="a0^2"),
        Qm9Target("zpve", "eV", _EV, extensive=True, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("U0", "eV", _EV, extensive=True, atomization=True, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("U", "eV", _EV, extensive=True, atomization=True, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("H", "eV", _EV, extensive=True, atomization=True, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("G", "eV", _EV, extensive=True, atomization=True, report_unit="meV", report_scale=EV_TO_MEV),
        Qm9Target("Cv", "cal/(mol K)", 1.0, extensive=True, report_unit="cal/(mol K)"),
    )
}
