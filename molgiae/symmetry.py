"""Geometric symmetry detection: does a conformer have a C_k axis (k ≥ 2) or lie on a line?

Such molecules have a non-trivial stabiliser in SO(3), so no equivariant frame can be unique
for them (docs/method.md, "Known hard cases"); metrics are reported for them separately.
And: are two conformers of a molecule one structure up to a relabelling of atoms (torch, batched)?
"""
from __future__ import annotations

import numpy as np
import torch


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    a = axis / np.linalg.norm(axis)
    K = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * K + (1 - np.cos(angle)) * K @ K


def _maps_onto_itself(x: np.ndarray, elements: np.ndarray, R: np.ndarray, tol: float) -> bool:
    y = x @ R.T
    d = np.linalg.norm(y[:, None, :] - x[None, :, :], axis=-1)
    d[elements[:, None] != elements[None, :]] = np.inf
    return bool(np.all(d.min(axis=1) < tol))


def is_linear(coords: np.ndarray, tol: float = 0.05) -> bool:
    """All atoms within ``tol`` Å of one line (2 atoms are always linear)."""
    x = np.asarray(coords, float) - np.mean(coords, axis=0)
    if len(x) <= 2:
        return True
    s = np.linalg.svd(x, compute_uv=False)
    return bool(s[1] / np.sqrt(len(x)) < tol)


def candidate_axes(x: np.ndarray, elements: np.ndarray) -> list[np.ndarray]:
    """Directions a rotation axis through the centroid can take: principal axes, directions to
    atoms, and to midpoints of same-element pairs."""
    axes = list(np.linalg.eigh(x.T @ x)[1].T)
    axes += list(x)
    same = elements[:, None] == elements[None, :]
    i, j = np.nonzero(np.triu(same, 1))
    axes += list((x[i] + x[j]) / 2)
    out = []
    for a in axes:
        n = np.linalg.norm(a)
        if n > 1e-3:
            out.append(a / n)
    return out


def symmetry_axis_order(elements: np.ndarray, coords: np.ndarray, tol: float = 0.1, max_order: int = 6) -> int:
    """Largest k ≤ ``max_order`` with a C_k axis (within ``tol`` Å), 1 if none; linear → 0 (C_∞)."""
    x = np.asarray(coords, float) - np.mean(coords, axis=0)
    elements = np.asarray(elements)
    if len(x) == 1 or is_linear(x, tol / 2):
        return 0
    best = 1
    for axis in candidate_axes(x, elements):
        for k in range(max_order, best, -1):
            if _maps_onto_itself(x, elements, _rotation(axis, 2 * np.pi / k), tol):
                best = k
                break
    return best


def is_symmetric(elements: np.ndarray, coords: np.ndarray, tol: float = 0.1) -> bool:
    """True when the conformer has a C_k axis (k ≥ 2) or is linear."""
    return symmetry_axis_order(elements, coords, tol) != 1


#: two conformers whose sorted interatomic distances (per element pair) agree to this (Å) are one
#: structure up to a relabelling of atoms (or a mirror image); see :func:`same_up_to_relabelling`
RELABELLING_TOLERANCE = 0.02


def distance_fingerprint(pos: torch.Tensor, species: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The interatomic distances of each molecule sorted within each (element, element) block: the
    same for any relabelling of atoms, rotation, translation or reflection.

    pos [P, N, 3], species [P, N] (vocabulary index or atomic number, < 128), mask [P, N] → [P, N²]
    (padding pairs +inf, last)."""
    pos = pos.double()  # float64: the block offsets below would cost float32 its last digits
    d = torch.cdist(pos, pos)
    block = (species.unsqueeze(2) * 128 + species.unsqueeze(1)).double()  # element-pair id (no device sync)
    key = block * 1000.0 + d  # distances < 1000 Å keep the blocks apart
    real = mask.unsqueeze(2) & mask.unsqueeze(1)
    return key.masked_fill(~real, float("inf")).flatten(1).sort(-1).values


def same_up_to_relabelling(a: torch.Tensor, b: torch.Tensor, species: torch.Tensor, mask: torch.Tensor,
                           tol: float = RELABELLING_TOLERANCE) -> torch.Tensor:
    """Whether conformers a and b of one molecule (same atoms, same order) are one structure up to a
    relabelling of equivalent atoms (a methyl group turned by 120°) or a mirror image: their sorted
    distances agree within ``tol`` Å. Their fixed-order rmsd is large while a permutation-invariant
    code cannot tell them apart. a, b [P, N, 3], species and mask [P, N] → bool [P]."""
    return fingerprints_agree(distance_fingerprint(a, species, mask), distance_fingerprint(b, species, mask), tol)


def fingerprints_agree(fa: torch.Tensor, fb: torch.Tensor, tol: float = RELABELLING_TOLERANCE) -> torch.Tensor:
    """Rows of two :func:`distance_fingerprint` results [P, N²] that agree within ``tol`` Å. → bool [P]."""
    diff = (fa - fb).abs().nan_to_num(0.0)  # inf - inf on the padding
    return diff.amax(-1) < tol
