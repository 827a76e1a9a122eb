"""Symmetry detection (molgiae.symmetry), which makes the symmetric subset of `molgiae evaluate`:
real QM9 DFT geometries from the fixture, and a hand-built CO2."""
import numpy as np
import pytest
import torch

from molgiae.group import random_rotation
from molgiae.symmetry import is_linear, is_symmetric, symmetry_axis_order
from tests.equivariance import find, fixture_set

DATA = fixture_set()
CO2 = (np.array([6, 8, 8]), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.16], [0.0, 0.0, -1.16]]))


def conformer(smiles: str) -> tuple[np.ndarray, np.ndarray]:
    i = find(DATA, smiles)
    a, b = DATA.ptr[i], DATA.ptr[i + 1]
    return DATA.elements[a:b], DATA.coords[a:b].astype(np.float64)


def moved(elements, coords, seed: int):
    """The same conformer rotated, translated and with its atoms reordered."""
    gen = torch.Generator().manual_seed(seed)
    R = random_rotation(gen, dtype=torch.float64).numpy()
    perm = torch.randperm(len(elements), generator=gen).numpy()
    return elements[perm], (coords @ R.T + np.array([3.0, -2.0, 7.0]))[perm]


@pytest.mark.parametrize("name, smiles, order", [
    ("water", "O", 2), ("ammonia", "N", 3), ("methane", "C", 3), ("benzene", "C1=CC=CC=C1", 6),
    ("acetylene", "C#C", 0), ("ethane", "CC", 3),
])
def test_symmetric_qm9_molecules(name, smiles, order):
    elements, coords = conformer(smiles)
    for seed in range(3):
        e, x = moved(elements, coords, seed)
        assert symmetry_axis_order(e, x) == order, name
        assert is_symmetric(e, x), name


def test_co2_is_linear_and_symmetric():
    elements, coords = CO2
    e, x = moved(elements, coords, 0)
    assert is_linear(x) and symmetry_axis_order(e, x) == 0 and is_symmetric(e, x)


@pytest.mark.parametrize("smiles", ["CCO", "CC1(CN1)C=O", "CC(O)C1=NC=CO1", "CCC1C(CO)N1C"])
def test_asymmetric_molecules(smiles):
    elements, coords = conformer(smiles)
    for seed in range(2):
        e, x = moved(elements, coords, seed)
        assert symmetry_axis_order(e, x) == 1 and not is_symmetric(e, x) and not is_linear(x)


def test_a_distortion_breaks_the_symmetry():
    elements, coords = conformer("O")
    x = coords.copy()
    h = int(np.flatnonzero(elements == 1)[0])
    x[h] += (x[h] - x[elements == 8][0]) * 0.2  # stretch one O-H bond by 20 %
    assert symmetry_axis_order(elements, x) == 1 and not is_symmetric(elements, x)

