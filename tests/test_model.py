"""Equivariance guarantees of the encoder, group action, decoder and full reconstruction,
tested with random group elements on real QM9 molecules."""
import numpy as np
import pytest
import torch

from molgiae import group
from molgiae.config import ModelConfig
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
from tests.equivariance import act, dense, find, fixture_set, molecule, random_action

DATA = fixture_set()
# chiral-looking, asymmetric molecules of different sizes from the fixture
ASYMMETRIC = [i for i in range(40, 131, 9)]


def make_model(decoder="equivariant", dtype=torch.float32, seed=0, **kw):
    torch.manual_seed(seed)
    model = GroupInvariantAutoencoder(ModelConfig(decoder=decoder, **kw)).to(dtype)
    # perturb every parameter so no part of the network sits at a symmetric init
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def test_z_invariant_to_rotation_translation_permutation(model):
    torch.manual_seed(10)
    base = [molecule(DATA, i) for i in ASYMMETRIC]
    moved = []
    for z, x in base:
        R, t, perm = random_action(len(z))
        moved.append((z[perm], act(R, t, perm, x)))
    with torch.no_grad():
        z0 = model.encode(dense(model, base)).z
        z1 = model.encode(dense(model, moved)).z
    scale = z0.abs().max()
    assert scale > 1e-2  # a constant code would pass trivially
    assert (z1 - z0).abs().max() <= 1e-5 * max(1.0, scale)


def test_z_invariance_is_exact_in_float64():
    model = make_model(dtype=torch.float64)
    torch.manual_seed(11)
    z, x = molecule(DATA, 77, torch.float64)
    R, t, perm = random_action(len(z), torch.float64)
    with torch.no_grad():
        a = model.encode(dense(model, [(z, x)])).z
        b = model.encode(dense(model, [(z[perm], act(R, t, perm, x))])).z
    assert (a - b).abs().max() < 1e-12


def test_rotation_translation_permutation_are_equivariant(model):
    torch.manual_seed(12)
    for i in ASYMMETRIC[:5]:
        z, x = molecule(DATA, i)
        R, t, perm = random_action(len(z))
        with torch.no_grad():
            e0 = model.encode(dense(model, [(z, x)]))
            e1 = model.encode(dense(model, [(z[perm], act(R, t, perm, x))]))
        assert torch.allclose(e1.rotation[0], R @ e0.rotation[0], atol=1e-4)
        assert torch.allclose(e1.translation[0], R @ e0.translation[0] + t, atol=1e-4)
        # scores are permutation-equivariant, so the hard P composes with the input permutation
        assert torch.allclose(e1.scores[0], e0.scores[0][perm], atol=1e-4)
        mask = torch.ones(1, len(z), dtype=torch.bool)
        P0 = group.hard_permutation(e0.scores, mask)[0]
        P1 = group.hard_permutation(e1.scores, mask)[0]
        Pi = torch.eye(len(z))[perm]
        assert torch.equal(P1, P0 @ Pi.T)


def untied(model, indices, count, min_gap=1e-3):
    """The first ``count`` molecules whose atom scores are at least ``min_gap`` apart: a hard
    argsort is only equivariant away from ties, and a near-symmetric molecule (two atoms at equal
    distance from the centroid in near-equal environments) can tie in float32."""
    chosen = []
    for i in indices:
        with torch.no_grad():
            scores = model.encode(dense(model, [molecule(DATA, i)])).scores[0].sort().values
        if (scores[1:] - scores[:-1]).min() >= min_gap:
            chosen.append(i)
    assert len(chosen) >= count, f"only {len(chosen)} untied molecules"
    return chosen[:count]


@pytest.mark.parametrize("decoder", ["equivariant", "transformer"])
def test_full_reconstruction_is_equivariant(decoder):
    model = make_model(decoder)
    torch.manual_seed(13)
    for i in untied(model, ASYMMETRIC, 4):
        z, x = molecule(DATA, i)
        R, t, perm = random_action(len(z))
        with torch.no_grad():
            out0 = model(dense(model, [(z, x)]))
            out1 = model(dense(model, [(z[perm], act(R, t, perm, x))]))
        assert torch.allclose(out1.coords[0], act(R, t, perm, out0.coords[0]), atol=1e-4)
        assert torch.allclose(out1.logits[0], out0.logits[0][perm], atol=1e-4)


def test_equivariant_decoder_identity_permuted_slots_and_rotated_start_positions(model):
    """decode(P·h, q Rᵀ permuted) = P·(Y Rᵀ): permuting slot features and rotating start
    positions before decoding equals transforming the canonical output (hard P)."""
    torch.manual_seed(14)
    z, x = molecule(DATA, 60)
    mols = dense(model, [(z, x)])
    with torch.no_grad():
        code = model.encode(mols).z
        h, q = model.decoder.slots(code, mols.mask)
        Y = model.decoder.refine(h, q, mols.mask)
        R, _, perm = random_action(len(z))
        Y2 = model.decoder.refine(h[:, perm], (q @ R.T)[:, perm], mols.mask)
    assert torch.allclose(Y2.coords, (Y.coords @ R.T)[:, perm], atol=1e-4)
    assert torch.allclose(Y2.logits, Y.logits[:, perm], atol=1e-4)


def test_mirror_images_get_different_codes(model):
    """The cross-product term makes the encoder SE(3)- but not O(3)-invariant."""
    i = ASYMMETRIC[3]
    z, x = molecule(DATA, i)
    mirror = x * torch.tensor([-1.0, 1.0, 1.0])
    torch.manual_seed(15)
    R, t, perm = random_action(len(z))
    with torch.no_grad():
        z0 = model.encode(dense(model, [(z, x)])).z
        z_rot = model.encode(dense(model, [(z[perm], act(R, t, perm, x))])).z
        z_mir = model.encode(dense(model, [(z, mirror)])).z
    invariance = (z_rot - z0).abs().max()
    chirality = (z_mir - z0).abs().max()
    assert chirality > 100 * max(invariance, torch.tensor(1e-7))

    plain = make_model(cross_product=False)
    with torch.no_grad():
        d = plain.encode(dense(plain, [(z, mirror)])).z - plain.encode(dense(plain, [(z, x)])).z
    assert d.abs().max() < 1e-5  # plain PaiNN cannot tell the two hands apart


@pytest.mark.parametrize("smiles", ["C", "O", "N", "C#N", "C#C", "N#CC#N", "C1=CC=CC=C1"])
def test_symmetric_molecules_are_finite_with_proper_frames_and_finite_gradients(smiles):
    model = make_model()
    model.train()
    z, x = molecule(DATA, find(DATA, smiles))
    mols = dense(model, [(z, x)])
    out = model(mols, permutation="straight_through", tau=0.3)
    assert torch.isfinite(out.encoding.z).all() and torch.isfinite(out.coords).all()
    R = out.encoding.rotation[0]
    assert torch.allclose(torch.linalg.det(R), torch.tensor(1.0), atol=1e-4)
    assert torch.allclose(R.T @ R, torch.eye(3), atol=1e-4)
    loss = reconstruction_loss(out, mols)["loss"]
    loss.backward()
    for p in model.parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all()
    # z is still invariant for the symmetric molecule
    torch.manual_seed(16)
    Rg, t, perm = random_action(len(z))
    with torch.no_grad():
        model.eval()
        a = model.encode(dense(model, [(z, x)])).z
        b = model.encode(dense(model, [(z[perm], act(Rg, t, perm, x))])).z
    assert (a - b).abs().max() <= 1e-5 * max(1.0, float(a.abs().max()))


def test_methane_reconstruction_does_not_collapse():
    """A vanishing frame must still give a proper rotation: the decoded methane keeps its size."""
    model = make_model()
    z, x = molecule(DATA, find(DATA, "C"))
    with torch.no_grad():
        out = model(dense(model, [(z, x)]))
    spread = (out.coords[0] - out.coords[0].mean(0)).norm(dim=-1).max()
    canonical_spread = out.canonical.coords[0].norm(dim=-1).max()
    assert torch.allclose(spread, canonical_spread, atol=1e-4)
    assert spread > 0.05


def test_padding_does_not_change_results(model):
    z1, x1 = molecule(DATA, 50)
    z2, x2 = molecule(DATA, 120)
    with torch.no_grad():
        alone = model(dense(model, [(z1, x1)]))
        batched = model(dense(model, [(z1, x1), (z2, x2)]))
    n = len(z1)
    assert torch.allclose(alone.encoding.z[0], batched.encoding.z[0], atol=1e-5)
    assert torch.allclose(alone.coords[0, :n], batched.coords[0, :n], atol=1e-4)


def test_unknown_element_and_oversized_molecule_are_clear_errors(model):
    with pytest.raises(ValueError, match="vocabulary"):
        model.species(torch.tensor([6, 17]))
    n = model.config.max_atoms + 1
    mask = torch.ones(1, n, dtype=torch.bool)
    with pytest.raises(ValueError, match="at most"):
        model.decode(torch.zeros(1, model.config.embedding_dim), mask)
    # the encoder itself is size-free
    big = (torch.full((n,), 6), torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3)) * 4).float())
    assert torch.isfinite(model.encode(dense(model, [big])).z).all()


def reference_message(msg, s, v, pos, mask, cutoff, num_rbf):
    """PainnMessage written as its formula, with pair unit vectors r̂_ij and the cross product
    of every pair: ``Δs_i = Σ_j a_ij``, ``Δv_i = Σ_j b_ij v_j + c_ij r̂_ij + e_ij (v_j × r̂_ij)``."""
    from molgiae.painn_equivariant import pair_geometry

    pairs = pair_geometry(pos, mask, cutoff, num_rbf)
    r = pos.unsqueeze(1) - pos.unsqueeze(2)  # x_j - x_i
    unit = r / torch.linalg.norm(r, dim=-1, keepdim=True).clamp_min(1e-6)
    x = msg.phi(s).unsqueeze(1) * msg.filter(pairs.rbf) * pairs.weight.unsqueeze(-1)
    a, b, c, e = torch.split(x, msg.features, dim=-1)
    ds = a.sum(2)
    dv = torch.einsum("bijf,bjkf->bikf", b, v) + torch.einsum("bijf,bijk->bikf", c, unit)
    v_j = v.unsqueeze(1).expand(-1, v.shape[1], -1, -1, -1)  # [B, i, j, 3, F]
    u = unit.unsqueeze(-1).expand_as(v_j)
    dv = dv + (e.unsqueeze(3) * torch.linalg.cross(v_j, u, dim=3)).sum(2)
    return ds, dv


def test_message_block_equals_its_formula_in_float64():
    """The block sums per-atom quantities instead of pair vectors (see PainnMessage): the same
    function, checked against the formula on a padded batch with the first-block shortcut too."""
    from molgiae.painn_equivariant import PainnMessage, pair_geometry

    torch.manual_seed(3)
    B, N, F, R, cutoff = 3, 9, 8, 12, 5.0
    msg = PainnMessage(F, R, cross_product=True).double()
    mask = torch.ones(B, N, dtype=torch.bool)
    mask[1, 6:] = False
    mask[2, 4:] = False
    pos = (torch.randn(B, N, 3, dtype=torch.float64) * 1.5 + 3.0) * mask.unsqueeze(-1)  # off-centre
    s = torch.randn(B, N, F, dtype=torch.float64)
    v = torch.randn(B, N, 3, F, dtype=torch.float64) * mask[:, :, None, None]
    pairs = pair_geometry(pos, mask, cutoff, R)
    ds, dv = msg(s, v, pairs)
    ref_ds, ref_dv = reference_message(msg, s, v, pos, mask, cutoff, R)
    assert dv.abs().max() > 0.1
    assert torch.allclose(ds, ref_ds, atol=1e-12) and torch.allclose(dv, ref_dv, atol=1e-11)
    ds0, dv0 = msg(s, torch.zeros_like(v), pairs, v_is_zero=True)
    ref_ds0, ref_dv0 = reference_message(msg, s, torch.zeros_like(v), pos, mask, cutoff, R)
    assert torch.allclose(ds0, ref_ds0, atol=1e-12) and torch.allclose(dv0, ref_dv0, atol=1e-11)
