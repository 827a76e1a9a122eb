"""Atom relabellings that leave a molecule's bond graph unchanged, and rmsd minimised over them.

Two conformers of one molecule in one atom order can be the same structure with equivalent atoms
swapped (a methyl group turned by 120°, a ring flipped onto itself): their fixed-order rmsd is
large while a permutation-invariant code cannot, and should not, tell them apart. The distance
between conformers that such a code can be asked to follow is the *symmetry-aware* rmsd: the
smallest Kabsch rmsd over the graph automorphisms σ of the molecule, ``min_σ rmsd(a, b[σ])``
(proper rotations only: mirror images stay apart, as they do for the encoder).

Enumerating automorphisms outright explodes on terminal groups (C(CH₃)₄ has 4!·6⁴ = 31,104), so
they are described in two parts:

* the automorphisms of the *skeleton* (atoms with more than one neighbour, each labelled by its
  element and the elements of its terminal neighbours), enumerated (networkx, VF2);
* *terminal groups*: atoms of one element with one neighbour, the same one (the H of a CH₃ or
  NH₂, the F of a CF₃), which may be permuted freely.

Molecules with at most :data:`MAX_EXACT` automorphisms in all (skeleton × orders within groups;
all but a handful of QM9's) get the exact minimum, every automorphism tried in one batched Kabsch.
The others get an alternating search: for each skeleton automorphism, align, give each terminal
group the order closest to the reference, align again (an upper bound, tested against the exact
minimum).

Pure numpy (plus networkx for the skeleton); no RDKit, so it runs wherever the model trains.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

#: single-bond covalent radii (Å; Cordero et al., Dalton Trans. 2008), by atomic number
COVALENT_RADII = {1: 0.31, 3: 1.28, 5: 0.84, 6: 0.76, 7: 0.71, 8: 0.66, 9: 0.57, 11: 1.66, 14: 1.11,
                  15: 1.07, 16: 1.05, 17: 1.02, 35: 1.20, 53: 1.39}
#: atoms closer than the sum of their radii plus this (Å) are bonded
BOND_SLACK = 0.45
#: skeleton automorphisms enumerated at most (QM9 molecules have ≤ 48)
MAX_AUTOMORPHISMS = 2048
#: align → reorder rounds per skeleton automorphism and start
REFINE_ROUNDS = 4
#: molecules with at most this many automorphisms get the exact minimum (all tried)
MAX_EXACT = 1024
#: starts (orders within the terminal groups) tried when the other atoms cannot fix the first alignment
MAX_STARTS = 720
#: two conformers closer than this (Å) under the symmetry-aware rmsd are one structure (a copy, or
#: the same geometry with equivalent atoms relabelled); a mirror image of a chiral geometry is not
SAME_STRUCTURE_RMSD = 0.05


def bond_graph(elements: np.ndarray, coords: np.ndarray, slack: float = BOND_SLACK) -> np.ndarray:
    """Bonds perceived from one geometry by covalent radii: elements [n], coords [n, 3] → bool [n, n]."""
    r = np.array([COVALENT_RADII.get(int(e), 1.5) for e in elements])
    d = np.linalg.norm(coords[:, None, :] - coords[None, :, :], axis=-1)
    bonded = d < r[:, None] + r[None, :] + slack
    np.fill_diagonal(bonded, False)
    return bonded


@dataclass(frozen=True)
class AtomSymmetry:
    """The relabellings of one molecule: ``skeleton`` [K, n] full atom permutations (row 0 the
    identity; terminal atoms mapped in index order) and ``groups``, the terminal groups (atom index
    arrays of ≥ 2 atoms) whose atoms may additionally be permuted among themselves."""

    skeleton: np.ndarray
    groups: tuple[np.ndarray, ...]

    @property
    def trivial(self) -> bool:
        return len(self.skeleton) == 1 and not self.groups


def atom_symmetry(elements: np.ndarray, adjacency: np.ndarray, limit: int = MAX_AUTOMORPHISMS) -> AtomSymmetry:
    """The :class:`AtomSymmetry` of a molecule: elements [n] (atomic numbers), adjacency bool [n, n]."""
    import networkx as nx
    from networkx.algorithms.isomorphism import GraphMatcher

    elements = np.asarray(elements)
    n = len(elements)
    degree = adjacency.sum(1)
    parent = np.where(degree == 1, adjacency.argmax(1), -1)
    terminal = (degree == 1) & (degree[np.maximum(parent, 0)] > 1)  # not the ends of a diatomic
    group_of: dict[tuple[int, int], list[int]] = {}
    for i in np.flatnonzero(terminal):
        group_of.setdefault((int(parent[i]), int(elements[i])), []).append(int(i))
    core = np.flatnonzero(~terminal)
    graph = nx.Graph()
    for i in core:
        tails = tuple(sorted(int(elements[j]) for j in np.flatnonzero(adjacency[i] & terminal)))
        graph.add_node(int(i), label=(int(elements[i]), tails))
    i, j = np.nonzero(np.triu(adjacency[np.ix_(core, core)]))
    graph.add_edges_from(zip(core[i].tolist(), core[j].tolist()))
    matcher = GraphMatcher(graph, graph, node_match=lambda a, b: a["label"] == b["label"])
    perms = [np.arange(n)]
    for mapping in itertools.islice(matcher.isomorphisms_iter(), limit):
        perm = np.arange(n)
        for src, dst in mapping.items():
            perm[src] = dst
            for e in {int(elements[j]) for j in np.flatnonzero(adjacency[src] & terminal)}:
                perm[group_of[(src, e)]] = group_of[(dst, e)]
        if not np.array_equal(perm, perms[0]):
            perms.append(perm)
    groups = tuple(np.array(g) for g in group_of.values() if len(g) > 1)
    return AtomSymmetry(np.stack(perms), groups)


def _kabsch_rotate(a: np.ndarray, b: np.ndarray, weight: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Centred a, b [P, n, 3] → (rmsd [P] of b rotated onto a, b rotated [P, n, 3]); the rotation
    fitted on the atoms with ``weight`` [n] > 0 only, when given (the rmsd is over all atoms)."""
    w = np.ones(a.shape[1]) if weight is None else weight
    U, S, Vt = np.linalg.svd(np.einsum("pni,n,pnj->pij", b, w, a))
    d = np.sign(np.linalg.det(U @ Vt))
    U[:, :, 2] *= d[:, None]
    rotated = b @ (U @ Vt)
    return np.sqrt(((rotated - a) ** 2).sum((1, 2)) / a.shape[1]), rotated


def _reorder_groups(a: np.ndarray, rotated: np.ndarray, order: np.ndarray, groups) -> np.ndarray:
    """Within each terminal group, the order of b's atoms (``order`` [P, n], b-atom per slot) that
    brings them closest to a's atoms of the group, given the current alignment."""
    order = order.copy()
    rows = np.arange(len(a))[:, None]
    for g in groups:
        if len(g) <= 5:
            perms = np.array(list(itertools.permutations(range(len(g)))))  # [k!, k]
            cost = ((a[:, None, g, :] - rotated[:, g][:, perms, :]) ** 2).sum((-1, -2))  # [P, k!]
            order[:, g] = order[:, g][rows, perms[cost.argmin(1)]]
        else:
            from scipy.optimize import linear_sum_assignment
            for p in range(len(a)):
                cost = ((a[p, g][:, None] - rotated[p, g][None]) ** 2).sum(-1)
                order[p, g] = order[p, g][linear_sum_assignment(cost)[1]]
    return order


def _starts(symmetry: AtomSymmetry, reference: np.ndarray) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """How to begin the align → reorder rounds: (weight [n] for the first rotation, or None, and the
    orders within terminal groups to start from [n] each). When the atoms outside the groups
    (the *anchors*) span a plane in ``reference`` [n, 3], one start, aligned on them alone (a
    mislabelled group would tilt the first rotation); otherwise every order of the groups (a
    methane, an ethane), at most :data:`MAX_STARTS`."""
    n = len(reference)
    anchors = np.ones(n, bool)
    for g in symmetry.groups:
        anchors[g] = False
    x = reference[anchors] - reference[anchors].mean(0) if anchors.sum() >= 3 else np.zeros((3, 3))
    if np.linalg.svd(x, compute_uv=False)[1] / np.sqrt(len(x)) > 0.05:
        return anchors.astype(float), [np.arange(n)]
    return None, list(itertools.islice(_group_orders(symmetry), MAX_STARTS))


def _group_orders(symmetry: AtomSymmetry):
    """Every order within the terminal groups, as atom orders [n] (identity outside the groups)."""
    n = symmetry.skeleton.shape[1]
    for combo in itertools.product(*(itertools.permutations(g) for g in symmetry.groups)):
        order = np.arange(n)
        for g, p in zip(symmetry.groups, combo):
            order[g] = p
        yield order


def all_relabellings(symmetry: AtomSymmetry, limit: int = MAX_EXACT) -> np.ndarray | None:
    """Every automorphism: each skeleton one with every order within the terminal groups, [K, n];
    None when there are more than ``limit``."""
    sizes = [len(g) for g in symmetry.groups]
    if len(symmetry.skeleton) * int(np.prod([math.factorial(k) for k in sizes] or [1])) > limit:
        return None
    orders = np.stack(list(_group_orders(symmetry)))
    return np.concatenate([perm[orders] for perm in symmetry.skeleton])


def _exhaustive(a: np.ndarray, b: np.ndarray, perms: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact minimum over ``perms`` [K, n] of the Kabsch rmsd; a, b centred [P, n, 3]."""
    best = np.full(len(a), np.inf)
    best_order = np.zeros(a.shape[:2], dtype=np.int64)
    for k in range(0, len(perms), chunk):
        block = perms[k:k + chunk]  # [k, n]
        rmsd, _ = _kabsch_rotate(np.repeat(a, len(block), 0), b[:, block].reshape(-1, *a.shape[1:]))
        rmsd = rmsd.reshape(len(a), len(block))
        arg = rmsd.argmin(1)
        better = rmsd[np.arange(len(a)), arg] < best
        best[better] = rmsd[better, arg[better]]
        best_order[better] = block[arg[better]]
    return best, best_order


def _refined(a: np.ndarray, b: np.ndarray, symmetry: AtomSymmetry, rounds: int) -> tuple[np.ndarray, np.ndarray]:
    """Heuristic minimum for large groups: every skeleton automorphism, the terminal groups'
    order found by alternating alignment and reordering (:func:`_starts`); a, b centred."""
    rows = np.arange(len(a))[:, None]
    best, best_order = _kabsch_rotate(a, b)[0], np.broadcast_to(np.arange(a.shape[1]), a.shape[:2]).copy()
    weight, starts = _starts(symmetry, a[0]) if symmetry.groups else (None, [np.arange(a.shape[1])])
    for perm in symmetry.skeleton:
        for start in starts:
            order = np.broadcast_to(perm[start], a.shape[:2]).copy()
            rmsd, rotated = _kabsch_rotate(a, b[rows, order], weight)
            for _ in range(rounds if symmetry.groups else 0):
                order = _reorder_groups(a, rotated, order, symmetry.groups)
                rmsd, rotated = _kabsch_rotate(a, b[rows, order])
            better = rmsd < best
            best[better], best_order[better] = rmsd[better], order[better]
    return best, best_order


def best_relabelling(a: np.ndarray, b: np.ndarray, symmetry: AtomSymmetry, exact_limit: int = MAX_EXACT,
                     rounds: int = REFINE_ROUNDS) -> tuple[np.ndarray, np.ndarray]:
    """Symmetry-aware rmsd of pairs of conformers of one molecule: a, b [P, n, 3] (one atom order).

    Exact (every automorphism tried) when the molecule has at most ``exact_limit``; otherwise the
    alternating search of :func:`_refined` (an upper bound; never above the fixed-order rmsd).
    Returns (rmsd [P] Å, order [P, n]): ``b[p, order[p]]`` is b relabelled to match a best."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)  # centroids do not depend on the labels
    perms = all_relabellings(symmetry, exact_limit)
    return _exhaustive(a, b, perms) if perms is not None else _refined(a, b, symmetry, rounds)


def symmetric_pair_rmsds(coords: np.ndarray, symmetry: AtomSymmetry) -> np.ndarray:
    """:func:`best_relabelling` rmsd of every pair a < b of conformers coords [C, n, 3] of one
    molecule. → [C(C−1)/2] in ``np.triu_indices(C, 1)`` order."""
    ia, ib = np.triu_indices(len(coords), 1)
    return best_relabelling(coords[ia], coords[ib], symmetry)[0]


class SetPairRmsd:
    """Symmetry-aware rmsd between conformers of a conformer set (anything with ``elements`` [A],
    ``coords`` [A, 3], ``ptr`` [M+1] and ``keys`` [M], e.g. a ConformerSet): the distance the
    conformer-metric term of training asks code distances to follow. Each molecule's
    :class:`AtomSymmetry` is perceived once, from the first of its conformers asked about."""

    def __init__(self, data):
        self.data = data
        self._symmetry: dict[int, AtomSymmetry] = {}

    def symmetry(self, i: int) -> AtomSymmetry:
        key = int(self.data.keys[i])
        if key not in self._symmetry:
            elements, coords = self._conformer(i)
            self._symmetry[key] = atom_symmetry(elements, bond_graph(elements, coords))
        return self._symmetry[key]

    def _conformer(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.data.ptr[i], self.data.ptr[i + 1]
        return np.asarray(self.data.elements[a:b]), np.asarray(self.data.coords[a:b], np.float64)

    def __call__(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Rows ``first`` [P] and ``second`` [P] of the set, conformers of one molecule pairwise → [P] Å."""
        out = np.empty(len(first))
        for p, (i, j) in enumerate(zip(np.asarray(first).tolist(), np.asarray(second).tolist())):
            out[p] = best_relabelling(self._conformer(i)[1][None], self._conformer(j)[1][None], self.symmetry(i))[0][0]
        return out
