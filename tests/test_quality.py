"""Embedding-quality metrics (molgiae.quality): known answers on tiny inputs, and the
``embedding`` section of ``molgiae evaluate``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from molgiae import quality
from tests.molfiles import conformers


# ----------------------------------------------------------------------------- Jacobian
def test_linear_map_jacobian_norm_is_top_singular_value():
    """z_b = A_b x_b (x_b flattened [n, 3]): the norm is the largest singular value of A_b, per row,
    and padding coordinates (mask False) do not count."""
    gen = torch.Generator().manual_seed(0)
    B, N, D = 3, 4, 5
    A = torch.randn(B, D, N * 3, generator=gen, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    fn = lambda x: torch.einsum("bdk,bk->bd", A, x.reshape(B, -1))  # noqa: E731
    pos = torch.randn(B, N, 3, generator=gen, dtype=torch.float64)
    got = quality.spectral_norms(fn, pos, mask, iterations=200, generator=gen)
    for b in range(B):
        cols = mask[b].repeat_interleave(3)
        want = torch.linalg.svdvals(A[b][:, cols])[0]
        assert got[b].item() == pytest.approx(want.item(), rel=1e-6)
        assert want < torch.linalg.svdvals(A[b])[0] or mask[b].all()  # the mask matters in this test


def test_model_jacobian_norm_matches_exact_jacobian(tiny_model, qm9_fixture_npz):
    from molgiae.data.batching import make_batch
    from molgiae.data.conformers import load_qm9_npz

    data = load_qm9_npz([qm9_fixture_npz])
    elements, coords = quality.set_molecules(data, [5, 40, 90])  # different sizes: padded batch
    got = quality.jacobian_spectral_norms(tiny_model.model, elements, coords, iterations=100)
    for e, x, g in zip(elements, coords, got):
        mols = make_batch([e], [x])
        f = lambda p: tiny_model.model.encode(mols.with_pos(p.reshape(1, -1, 3))).z[0]  # noqa: E731
        J = torch.autograd.functional.jacobian(f, mols.pos.reshape(-1))
        assert g == pytest.approx(torch.linalg.svdvals(J)[0].item(), rel=1e-3)


def test_frame_turns_vanish_without_noise_and_stay_within_a_half_turn(tiny_model, qm9_fixture_npz):
    """No noise: the frame of every molecule (padded batches of several sizes) is exactly where it
    was; with noise the turns are ‖R̃ − R‖²_F ∈ [0, 8], and larger noise turns the frames further."""
    from molgiae.data.conformers import load_qm9_npz

    data = load_qm9_npz([qm9_fixture_npz])
    elements, coords = quality.set_molecules(data, range(40, 131))  # asymmetric molecules of 9-21 atoms
    model = tiny_model.model
    assert np.all(quality.frame_turns(model, elements, coords, [0.0], batch_size=16) == 0.0)
    small, large = quality.frame_turns(model, elements, coords, [0.01, 0.3], draws=2, batch_size=16)
    assert np.all((small >= 0) & (large <= 8 + 1e-5)) and large.max() > 0
    assert large.mean() > small.mean()


def test_turn_summary_counts_turns_past_a_quarter_turn():
    s = quality.turn_summary(np.array([0.0, 0.01, 0.02, 3.9, 4.1, 8.0]))
    assert s["n_molecules"] == 6 and s["flip_rate"] == pytest.approx(2 / 6)
    assert s["turn_median"] == pytest.approx(0.5 * (0.02 + 3.9)) and s["turn_mean"] == pytest.approx(16.03 / 6)


# ----------------------------------------------------------------------------- noise robustness
def _identity_encoder(scale: float):
    """z = scale · (flattened coordinates of a 2-atom molecule)."""
    return lambda elements, coords: scale * np.stack([np.asarray(x, np.float64).reshape(-1) for x in coords])


def test_noise_robustness_identity_encoder():
    """Molecules on a grid 1 Å apart (median NN distance = scale · 1): at σ = 1e-4 every noisy copy
    retrieves itself, and ‖Δz‖ / NN = ‖noise‖ / 1 Å, whose median for 6-dim N(0, σ²) is ≈ 2.35 σ."""
    coords = [np.array([[i, j, 0.0], [0.0, 0.0, 0.0]]) for i in range(20) for j in range(20)]
    elements = [np.array([6, 1])] * len(coords)
    out = quality.noise_robustness(_identity_encoder(3.0), elements, coords, sigmas=(1e-4, 0.8), seed=1)
    assert out["median_nn_distance"] == pytest.approx(3.0)
    tiny, big = out["sigma_0.0001"], out["sigma_0.8"]
    assert tiny["self_retrieval"] == 1.0
    chi6_median = 2.3506  # median of the chi distribution with 6 degrees of freedom
    assert tiny["ratio_median"] == pytest.approx(chi6_median * 1e-4, rel=0.1)
    assert tiny["ratio_max"] < 6e-4
    assert big["self_retrieval"] < 0.9  # noise of the grid spacing scrambles neighbours


def test_noise_robustness_uses_clean_codes_given():
    coords = [np.array([[float(i), 0.0, 0.0], [0.0, 0.0, 0.0]]) for i in range(5)]
    elements = [np.array([6, 1])] * 5
    enc = _identity_encoder(1.0)
    out = quality.noise_robustness(enc, elements, coords, sigmas=(0.01,), clean=enc(elements, coords) * 2)
    assert out["median_nn_distance"] == pytest.approx(2.0)


# ----------------------------------------------------------------------------- conformer awareness
def _diatomic(length: float, rng: np.random.Generator) -> np.ndarray:
    """Two atoms ``length`` apart, randomly rotated and translated."""
    x = np.array([[-length / 2, 0, 0], [length / 2, 0, 0]])
    return x @ Rotation.random(random_state=rng).as_matrix().T + rng.normal(0, 5, 3)


def test_conformer_awareness_hand_made_ensemble():
    """Diatomics: aligned rmsd between bond lengths L1, L2 is |L1 − L2| / 2, and ‖Δz‖ = |ΔL| (codes
    [L, offset]) → ρ = 1. Sibling NN by hand: molecule 1 (L 1.0, 1.1, 1.3 at offset 0) all have a
    sibling nearest; molecule 2 (L 1.0, 1.5 at offset 10): 1.0 → 1.5 (0.5, sibling), 1.5 → molecule
    3's single conformer at (1.52, 10) (0.02, not) → 4 of 5."""
    rng = np.random.default_rng(0)
    table = [(1, 1.0, 0.0), (1, 1.1, 0.0), (1, 1.3, 0.0), (2, 1.0, 10.0), (2, 1.5, 10.0), (3, 1.52, 10.0)]
    keys = np.array([k for k, _, _ in table])
    codes = np.array([[L, off] for _, L, off in table])
    coords = [_diatomic(L, rng) for _, L, _ in table]
    dz, rmsd, owner = quality.conformer_pairs(codes, keys, coords)
    assert len(dz) == 4 and list(owner) == [1, 1, 1, 2]
    np.testing.assert_allclose(rmsd, dz / 2, atol=1e-9)  # Kabsch alignment undid the rotations
    out = quality.conformer_awareness(codes, keys, coords)
    assert out["spearman_rho"] == pytest.approx(1.0)
    assert out["spearman_rho_per_molecule_mean"] == pytest.approx(1.0)  # molecule 1 only (≥ 3 conformers)
    assert out["sibling_nn_rate"] == pytest.approx(4 / 5)
    assert (out["n_conformers"], out["n_molecules"], out["n_multi_conformer_molecules"], out["n_pairs"]) == (6, 3, 2, 4)
    shuffled = codes[[0, 2, 1, 3, 4, 5]]  # molecule 1's codes swapped: ‖Δz‖ no longer monotone in rmsd
    assert quality.conformer_awareness(shuffled, keys, coords)["spearman_rho"] < 0.5


def test_relabelled_pairs_are_counted_apart_and_mirror_images_are_not():
    """Butan-2-ol: a conformer, a copy with two methyl H swapped (one structure, relabelled: fixed-order
    rmsd large, a permutation-invariant code cannot move), the conformer's mirror image (a distinct
    structure: the encoder tells mirror images apart) and the conformer farthest from both. Only the
    swapped pair is one structure, and the distinct ρ is the fixed-order ρ of the other pairs. (The
    sorted-distance check used before flagged the mirror-image pair too.)"""
    from scipy.stats import spearmanr

    elements, x = conformers("CCC(C)O", 12)  # atoms 5-7: the H of the C1 methyl
    swapped, mirror = x[0][[0, 1, 2, 3, 4, 6, 5] + list(range(7, 15))], x[0] * np.array([1.0, 1.0, -1.0])
    candidates = [x[0], mirror] + list(x[1:])
    probe = quality.symmetric_rmsds(np.zeros(len(candidates), int), candidates, [elements] * len(candidates))
    ia, ib = np.triu_indices(len(candidates), 1)
    from_both = np.minimum(probe[(ia == 0) & (ib >= 2)], probe[(ia == 1) & (ib >= 2)])
    far = 1 + int(np.argmax(from_both))  # a real conformational change from the conformer and its mirror image
    coords, keys = [x[0], swapped, mirror, x[far]], np.array([1, 1, 1, 1])
    sym = quality.symmetric_rmsds(keys, coords, [elements] * 4)  # pairs (0,1), (0,2), (0,3), (1,2), (1,3), (2,3)
    assert sym[0] < 1e-6 and sym[1] > 0.1 and sym[2] > 0.1
    codes = np.array([[0.0], [0.0], [sym[1]], [3.0]])
    out = quality.conformer_awareness(codes, keys, coords, [elements] * 4)
    dz, rmsd, _ = quality.conformer_pairs(codes, keys, coords)
    assert rmsd[0] > 0.5 and dz[0] == 0.0  # the swapped copy: far in fixed order, the same code
    assert out["n_relabelled_pairs"] == 1
    assert out["spearman_rho"] == pytest.approx(spearmanr(dz, rmsd)[0])
    assert out["spearman_rho_distinct"] == pytest.approx(spearmanr(dz[1:], rmsd[1:])[0])
    assert "n_relabelled_pairs" not in quality.conformer_awareness(codes, keys, coords)  # no elements given


def test_pair_rmsds_equal_kabsch_rmsd():
    from molgiae.metrics import kabsch_rmsd

    rng = np.random.default_rng(3)
    base = rng.normal(size=(9, 3))
    confs = np.stack([(base + rng.normal(0, 0.3, base.shape)) @ Rotation.random(random_state=rng).as_matrix().T
                      + rng.normal(0, 4, 3) for _ in range(6)])
    confs[5] = -confs[5]  # a mirror image: proper rotations cannot align it
    ia, ib = np.triu_indices(6, 1)
    want = [kabsch_rmsd(confs[a], confs[b])[0] for a, b in zip(ia, ib)]
    np.testing.assert_allclose(quality.pair_rmsds(confs), want, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- linear probe
def test_ridge_probe_recovers_exact_linear_target():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 8)) * np.arange(1, 9)  # unequal scales: standardisation matters
    y = X @ rng.normal(size=8) + 3.0
    out = quality.ridge_probe(X[:100], y[:100], X[100:], y[100:])
    assert out["alpha"] == min(quality.RIDGE_ALPHAS)
    assert out["mae"] < 1e-3 * np.abs(y).mean()


def test_linear_probe_counts_baseline_and_z():
    """Target = Σ per-element energies: the element counts fit it exactly; codes that are pure noise
    do not (ratio ≫ 1); NaN labels are left out and small sets are scaled down."""
    rng = np.random.default_rng(1)
    elements = [rng.choice([1, 6, 7, 8, 9], size=rng.integers(3, 20)) for _ in range(300)]
    counts = quality.element_counts(elements)
    assert counts.shape == (300, 5) and counts.sum() == sum(len(e) for e in elements)
    y = counts @ np.array([-0.5, -37.8, -54.6, -75.1, -99.7])
    y[:10] = np.nan
    codes = rng.normal(size=(300, 16))
    out = quality.linear_probe(codes, counts, {"U0": y}, {"U0": "Ha"}, n_fit=1000, n_test=4000)["U0"]
    assert (out["n_fit"], out["n_test"]) == (58, 232)  # 290 labelled, split 1:4
    assert out["mae_counts"] < 1e-5 * np.nanmean(np.abs(y))
    assert out["ratio"] > 100 and out["unit"] == "Ha"


# ----------------------------------------------------------------------------- nearest neighbours
def test_nearest_neighbours_excludes_self():
    base = np.array([[0.0], [1.0], [3.0]])
    idx, dist = quality.nearest_neighbours(base, base, self_index=np.arange(3), chunk=2)
    assert list(idx) == [1, 0, 1] and list(dist) == [1.0, 1.0, 2.0]
    idx, _ = quality.nearest_neighbours(base, base)
    assert list(idx) == [0, 1, 2]


# ----------------------------------------------------------------------------- evaluate
def test_evaluate_writes_embedding_section(tiny_checkpoint, qm9_fixture_npz, tmp_path):
    from typer.testing import CliRunner

    from molgiae.cli import app
    from molgiae.data.conformers import load_qm9_npz

    # a conformer-ensemble file: two noisy copies of each of 5 fixture molecules
    data = load_qm9_npz([qm9_fixture_npz])
    rng = np.random.default_rng(0)
    ens = tmp_path / "ens.npz"
    ids = np.arange(5)
    Z = np.concatenate([data.elements[data.ptr[i]:data.ptr[i + 1]] for i in ids])
    R = np.concatenate([data.coords[data.ptr[i]:data.ptr[i + 1]] + rng.normal(0, s, (data.n_atoms[i], 3))
                        for i in ids for s in (0.05, 0.2)])
    n = data.n_atoms[ids]
    np.savez(ens, format_version="molgiae-conformers-npz-1", index=data.keys[ids], Z=Z,
             atom_ptr=np.r_[0, np.cumsum(n)], R=R, conf_atom_ptr=np.r_[0, np.cumsum(np.repeat(n, 2))],
             conf_mol=np.repeat(ids, 2))
    out = tmp_path / "eval.json"
    result = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--data", str(qm9_fixture_npz),
                                      "--json", str(out), "--quiet", "--limit", "8", "--ensembles", str(ens),
                                      "--quality-molecules", "50", "--jacobian-molecules", "4"])
    assert result.exit_code == 0, result.output
    emb = json.loads(out.read_text())["embedding"]
    assert emb["noise"]["n_molecules"] == 50
    assert set(emb["noise"]) >= {"sigma_0.01", "sigma_0.05", "sigma_0.1"}
    assert emb["jacobian"]["n_molecules"] == 4 and emb["jacobian"]["max"] >= emb["jacobian"]["p50"] > 0
    assert set(emb["frame"]) == set(emb["noise"]) - {"n_molecules", "median_nn_distance"}
    assert all(v["n_molecules"] == 50 and 0 <= v["turn_median"] <= v["turn_p95"] <= 8 for v in emb["frame"].values())
    assert emb["conformers"]["n_conformers"] == 10 and emb["conformers"]["n_pairs"] == 5
    assert set(emb["probe"]) == set(quality.PROBE_TARGETS)
    assert emb["probe"]["U0"]["unit"] == "meV" and emb["probe"]["U0"]["n_fit"] + emb["probe"]["U0"]["n_test"] == 131
    # the model card (package_default_model puts the section into metadata.test_metrics) shows it
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    ckpt["metadata"]["test_metrics"] = {"embedding": emb}
    carded = tmp_path / "carded.pt"
    torch.save(ckpt, carded)
    card = CliRunner().invoke(app, ["info", "--model", str(carded)])
    assert card.exit_code == 0 and "self_retrieval" in card.output and "spearman_rho" in card.output
    assert "flip_rate" in card.output
    skipped = CliRunner().invoke(app, ["evaluate", "--model", str(tiny_checkpoint), "--data", str(qm9_fixture_npz),
                                       "--quiet", "--limit", "8", "--no-embedding-metrics"])
    assert skipped.exit_code == 0 and "embedding" not in json.loads(skipped.stdout)


def test_symmetric_rho_follows_the_distance_a_permutation_invariant_code_can_see():
    """Butan-2-ol: four RDKit conformers and a copy of the first with its methyl H labels cycled
    (one structure). Codes = 1-D, |z| = symmetry-aware rmsd to the first conformer (the copy: 0).
    The pair (first, copy) is far in fixed order, 0 when symmetry-aware; the reported symmetric ρ
    is the Spearman ρ against :func:`quality.symmetric_rmsds` and beats the fixed-order one."""
    from rdkit import Chem
    from rdkit.Chem import AllChem
    from scipy.stats import spearmanr

    from molgiae.automorphism import atom_symmetry, best_relabelling, bond_graph

    mol = Chem.AddHs(Chem.MolFromSmiles("CC(O)CC"))
    ids = AllChem.EmbedMultipleConfs(mol, 4, randomSeed=11)
    AllChem.MMFFOptimizeMoleculeConfs(mol)
    elements = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    x = [mol.GetConformer(i).GetPositions() for i in ids]
    methyl_h = [a.GetIdx() for a in mol.GetAtomWithIdx(0).GetNeighbors() if a.GetAtomicNum() == 1]
    perm = np.arange(len(elements))
    perm[methyl_h] = np.roll(methyl_h, 1)
    coords = x + [x[0][perm]]
    keys = np.zeros(len(coords), dtype=int)
    sym = atom_symmetry(elements, bond_graph(elements, x[0]))
    to_first = best_relabelling(np.stack([x[0]] * len(coords)), np.stack(coords), sym)[0]
    codes = to_first[:, None]
    sym_rmsd = quality.symmetric_rmsds(keys, coords, [elements] * len(coords))
    dz, fixed, _ = quality.conformer_pairs(codes, keys, coords)
    assert fixed[3] > 0.5 and sym_rmsd[3] < 1e-6  # pair (0, copy): triu order (0,1) (0,2) (0,3) (0,4)
    assert np.all(sym_rmsd <= fixed + 1e-9)
    out = quality.conformer_awareness(codes, keys, coords, [elements] * len(coords))
    assert out["spearman_rho_symmetric"] == pytest.approx(spearmanr(dz, sym_rmsd)[0])
    assert out["spearman_rho_symmetric"] > out["spearman_rho"]
    assert out["median_pair_rmsd_symmetric"] <= out["median_pair_rmsd"]
    assert any("symmetry-aware" in line for line in quality.summary_lines({"conformers": out}))
