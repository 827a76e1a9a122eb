"""Symmetry-aware rmsd (molgiae.automorphism) on RDKit conformers: relabelled copies, real
conformational changes, mirror images, and the exhaustive minimum over all automorphisms."""
import numpy as np
import pytest
import torch

from molgiae.automorphism import atom_symmetry, best_relabelling, bond_graph, symmetric_pair_rmsds
from molgiae.group import random_rotation
from molgiae.metrics import kabsch_rmsd
from tests.molfiles import conformers


def rotate(x: np.ndarray, seed: int) -> np.ndarray:
    R = random_rotation(torch.Generator().manual_seed(seed), dtype=torch.float64).numpy()
    return x @ R.T + np.array([1.0, -4.0, 2.5])


def is_automorphism(perm, elements, adjacency) -> bool:
    return bool(np.array_equal(elements[perm], elements) and np.array_equal(adjacency[np.ix_(perm, perm)], adjacency))


@pytest.mark.parametrize("smiles, n_skeleton, group_sizes", [
    ("CC(C)(C)C", 24, [3, 3, 3, 3]),  # neopentane: 4! on the methyls, 3! within each
    ("c1ccccc1", 12, []),             # benzene: the dihedral group of the ring; one H per C
    ("CCO", 1, [3, 2]),               # ethanol: CH3 and CH2 hydrogens
    ("O", 1, [2]),
])
def test_atom_symmetry_of_known_molecules(smiles, n_skeleton, group_sizes):
    elements, x = conformers(smiles, 1)
    adjacency = bond_graph(elements, x[0])
    sym = atom_symmetry(elements, adjacency)
    assert len(sym.skeleton) == n_skeleton
    assert sorted(len(g) for g in sym.groups) == sorted(group_sizes)
    assert np.array_equal(sym.skeleton[0], np.arange(len(elements)))
    assert all(is_automorphism(p, elements, adjacency) for p in sym.skeleton)
    assert len({tuple(p) for p in sym.skeleton}) == n_skeleton


@pytest.mark.parametrize("exact_limit", [1024, 1])  # all automorphisms tried; the alternating search
def test_relabelled_copy_has_zero_symmetric_rmsd(exact_limit):
    """Ethanol with its methyl H labels cycled (the methyl turned by 120° in label space), then moved:
    fixed-order rmsd large, symmetry-aware rmsd 0, and the returned order undoes the relabelling."""
    elements, x = conformers("CCO", 1)
    a = x[0]
    methyl_h = [i for i in range(len(elements)) if elements[i] == 1 and
                bond_graph(elements, a)[i, 0]]  # the three H on the first carbon
    perm = np.arange(len(elements))
    perm[methyl_h] = np.roll(methyl_h, 1)
    b = rotate(a[perm], seed=3)
    fixed, _ = kabsch_rmsd(b, a)
    sym = atom_symmetry(elements, bond_graph(elements, a))
    rmsd, order = best_relabelling(a[None], b[None], sym, exact_limit=exact_limit)
    assert fixed > 0.5
    assert rmsd[0] < 1e-6
    assert kabsch_rmsd(b[order[0]], a)[0] < 1e-6


def test_real_conformer_change_and_mirror_image_stay_apart():
    """A torsion change of butane-2-ol and the mirror image of a conformer (proper rotations only:
    the encoder is not reflection invariant) keep a symmetry-aware rmsd well above 0, never above
    the fixed-order one, and invariant to rotating either conformer."""
    elements, x = conformers("CCC(C)O", 12)
    sym = atom_symmetry(elements, bond_graph(elements, x[0]))
    rmsd = symmetric_pair_rmsds(x, sym)
    ia, ib = np.triu_indices(len(x), 1)
    fixed = np.array([kabsch_rmsd(x[j], x[i])[0] for i, j in zip(ia, ib)])
    assert np.all(rmsd <= fixed + 1e-9)
    assert rmsd.max() > 0.3
    moved = np.stack([rotate(c, seed=k) for k, c in enumerate(x)])
    np.testing.assert_allclose(symmetric_pair_rmsds(moved, sym), rmsd, atol=1e-8)
    mirror = x[0] * np.array([1.0, 1.0, -1.0])
    assert best_relabelling(x[:1], mirror[None], sym)[0][0] > 0.1


@pytest.mark.parametrize("smiles", ["CCO", "CCC", "CC(C)O", "CC(N)=O", "C1CCCC1"])
def test_equals_exhaustive_minimum_over_all_automorphisms(smiles):
    """Against every automorphism of the full bond graph, hydrogens included (networkx VF2 on the
    whole labelled graph, no split into skeleton and terminal groups): the same minimum on every
    conformer pair."""
    import networkx as nx
    from networkx.algorithms.isomorphism import GraphMatcher

    elements, x = conformers(smiles, 6)
    adjacency = bond_graph(elements, x[0])
    graph = nx.from_numpy_array(adjacency.astype(int))
    nx.set_node_attributes(graph, {i: int(e) for i, e in enumerate(elements)}, "element")
    full = [np.array([m[i] for i in range(len(elements))]) for m in
            GraphMatcher(graph, graph, node_match=lambda a, b: a["element"] == b["element"]).isomorphisms_iter()]
    assert all(is_automorphism(p, elements, adjacency) for p in full)
    sym = atom_symmetry(elements, adjacency)
    fast = symmetric_pair_rmsds(x, sym)
    ia, ib = np.triu_indices(len(x), 1)
    exhaustive = np.array([min(kabsch_rmsd(x[j][p], x[i])[0] for p in full) for i, j in zip(ia, ib)])
    np.testing.assert_allclose(fast, exhaustive, atol=1e-6)


@pytest.mark.parametrize("smiles", ["CCO", "C", "CC", "CC(C)(C)C", "CC(N)=O"])
def test_alternating_search_bounds_the_exact_minimum(smiles):
    """The search used for molecules with too many automorphisms (exact_limit 1 forces it): never
    below the exact minimum, never above the fixed-order rmsd, and 0 on a copy whose terminal
    groups are all reordered and rotated (methane and ethane too, whose other atoms cannot fix
    the first alignment)."""
    elements, x = conformers(smiles, 5)
    sym = atom_symmetry(elements, bond_graph(elements, x[0]))
    ia, ib = np.triu_indices(len(x), 1)
    exact = best_relabelling(x[ia], x[ib], sym)[0]
    search = best_relabelling(x[ia], x[ib], sym, exact_limit=1)[0]
    fixed = np.array([kabsch_rmsd(x[j], x[i])[0] for i, j in zip(ia, ib)])
    assert np.all(search >= exact - 1e-9) and np.all(search <= fixed + 1e-9)
    rng = np.random.default_rng(1)
    perm = sym.skeleton[-1].copy()
    for g in sym.groups:
        perm[g] = perm[rng.permutation(g)]
    copy = rotate(x[0][perm], seed=5)
    assert best_relabelling(x[:1], copy[None], sym, exact_limit=1)[0][0] < 1e-6
