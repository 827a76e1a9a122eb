"""Size-bucketed batch orders, size groups, and the property they rely on: padding never
changes a molecule's loss or gradient; the one batch type (DenseMolecules) built without PyG."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from molgiae.config import ModelConfig
from molgiae.data.batching import bucketed_batches, size_groups
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
from molgiae.painn_equivariant import PainnEncoder
from tests.equivariance import dense, fixture_set, molecule

DATA = fixture_set()
ROOT = Path(__file__).resolve().parents[1]


def test_bucketed_batches_cover_each_id_once_seeded_and_sorted_within_chunks():
    rng = np.random.default_rng(5)
    n_atoms = rng.integers(3, 30, size=1000)
    ids = rng.permutation(1000)[:777]
    batches = bucketed_batches(n_atoms, ids, 10, np.random.default_rng(1), chunk_batches=8)
    assert sorted(np.concatenate(batches).tolist()) == sorted(ids.tolist())
    assert len(batches) == 78 and sum(len(b) < 10 for b in batches) == 1  # ceil(777 / 10), one short
    again = bucketed_batches(n_atoms, ids, 10, np.random.default_rng(1), chunk_batches=8)
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))  # same seed: same order (DDP ranks, resume)
    other = bucketed_batches(n_atoms, ids, 10, np.random.default_rng(2), chunk_batches=8)
    assert not all(np.array_equal(a, b) for a, b in zip(batches, other))
    # similar sizes: far less padding than random batches of the same ids
    def padded(bs):
        return sum(len(b) * n_atoms[b].max() ** 2 for b in bs)
    random = [ids[i:i + 10] for i in range(0, len(ids), 10)]
    assert padded(batches) < 0.75 * padded(random)
    # the batch order is shuffled, not by size
    maxima = [n_atoms[b].max() for b in batches]
    assert maxima != sorted(maxima)
    # whole-epoch sort (chunk_batches=None): every batch spans at most one size step between neighbours
    whole = bucketed_batches(n_atoms, ids, 10, np.random.default_rng(1), chunk_batches=None)
    assert padded(whole) <= padded(batches)


def test_size_groups_partition_the_batch_and_cut_padding():
    n = np.array([29, 9, 12, 18, 18, 17, 19, 27, 14, 16, 18, 21, 19, 17, 15, 20])
    groups = size_groups(n, max_groups=3, group_cost=0)
    assert len(groups) == 3
    assert sorted(np.concatenate(groups).tolist()) == list(range(len(n)))
    assert [n[g].max() for g in groups] == sorted(n[g].max() for g in groups)
    cost = sum(len(g) * n[g].max() ** 2 for g in groups)
    # brute force over all 2-cut partitions of the sorted sizes
    s = np.sort(n)
    brute = min(a * s[a - 1] ** 2 + (b - a) * s[b - 1] ** 2 + (len(s) - b) * s[-1] ** 2
                for a in range(1, len(s) - 1) for b in range(a + 1, len(s)))
    assert cost == brute < len(n) * 29 ** 2
    assert len(size_groups(n, max_groups=4, group_cost=1e9)) == 1  # a group that costs more than it saves
    assert len(size_groups(np.full(5, 9), max_groups=4, group_cost=1)) == 1
    assert size_groups([], 4) == []


def _encoder_output(encoder, batch, vocabulary):
    """Per-molecule sum of the atom features [B, F] (a padding-blind readout)."""
    mols = batch
    m = mols.mask.to(mols.pos.dtype)
    centred = (mols.pos - (mols.pos * m.unsqueeze(-1)).sum(1, keepdim=True) / m.sum(1)[:, None, None]) * m.unsqueeze(-1)
    s, v = encoder.atom_features(vocabulary.species(mols.numbers, mols.mask), centred, mols.mask)
    return (s * m.unsqueeze(-1)).sum(1) + (v * v).sum((1, 2)) * 0.1


def test_size_groups_give_the_outputs_of_one_padded_batch():
    torch.manual_seed(0)
    cfg = ModelConfig(features=16, encoder_layers=2)
    ae = GroupInvariantAutoencoder(cfg)
    by_size = np.argsort(DATA.n_atoms, kind="stable")
    ids = [int(by_size[k]) for k in (5, 120, 60, 0, 100, 130, 30, 80)]  # sizes mixed, unsorted
    mols = [molecule(DATA, i) for i in ids]
    n = [len(z) for z, _ in mols]
    assert max(n) - min(n) >= 10
    with torch.no_grad():
        whole = _encoder_output(ae.encoder, dense(ae, mols), ae)
        parts = torch.zeros_like(whole)
        groups = size_groups(n, max_groups=3, group_cost=0)
        assert len(groups) == 3
        for g in groups:
            parts[torch.from_numpy(g)] = _encoder_output(ae.encoder, dense(ae, [mols[k] for k in g]), ae)
    assert torch.allclose(parts, whole, atol=1e-5, rtol=1e-5)


def _small_and_large():
    n = DATA.n_atoms
    small = int(np.flatnonzero(n == n.min())[0]) if n.min() >= 5 else int(np.flatnonzero(n >= 5)[0])
    large = int(np.argmax(n))
    assert n[large] >= n[small] + 8
    return molecule(DATA, small, torch.float64), molecule(DATA, large, torch.float64)


def _grads(model, loss):
    params = [p for p in model.parameters()]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("decoder", ["transformer", "equivariant"])
def test_padding_never_changes_a_molecules_loss_or_gradient(decoder):
    """The full autoencoder (training mode, straight-through permutation): molecule 0's summed
    squared error, type loss and the gradient of their sum wrt every parameter are the same
    alone and in a batch padded to a larger molecule (float64, to rounding)."""
    torch.manual_seed(1)
    model = GroupInvariantAutoencoder(ModelConfig(decoder=decoder, features=16, embedding_dim=16,
                                                  encoder_layers=2, decoder_layers=2)).double().train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    small, large = _small_and_large()
    results = []
    for batch in ([small], [small, large]):
        mols = dense(model, batch)
        out = model(mols, permutation="straight_through", tau=0.3)
        k = len(small[0])
        sq = ((out.coords[0, :k] - mols.pos[0, :k]) ** 2).sum()
        ce = torch.nn.functional.cross_entropy(out.logits[0, :k], out.encoding.species[0, :k], reduction="sum")
        results.append((sq.detach(), ce.detach(), _grads(model, sq + ce)))
        assert mols.pos.shape[1] == (k if len(batch) == 1 else len(large[0]))
    (sq1, ce1, g1), (sq2, ce2, g2) = results
    assert sq1 > 1e-3
    assert torch.allclose(sq1, sq2, rtol=1e-10) and torch.allclose(ce1, ce2, rtol=1e-10)
    scale = max(g.abs().max() for g in g1)
    assert scale > 0
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-10 * scale, rtol=1e-9)
    # and the batch loss is a per-atom mean of those per-molecule terms (no padding term)
    mols = dense(model, [small, large])
    torch.manual_seed(0)
    total = reconstruction_loss(model(mols, permutation="straight_through"), mols, lambda_perm=0.0)["loss"]
    assert torch.isfinite(total)


def test_padding_never_changes_the_encoders_output_or_gradient_float32():
    torch.manual_seed(2)
    enc = PainnEncoder(ModelConfig(features=32, encoder_layers=3))
    small, large = _small_and_large()
    small = (small[0], small[1].float())
    large = (large[0], large[1].float())
    ae = GroupInvariantAutoencoder(ModelConfig(features=32, encoder_layers=3))  # only for the species map
    results = []
    for batch in ([small], [small, large]):
        out = _encoder_output(enc, dense(ae, batch), ae)[0]
        loss = (out ** 2).sum()
        results.append((out.detach(), _grads(enc, loss)))
    (o1, g1), (o2, g2) = results
    assert torch.allclose(o1, o2, atol=1e-5, rtol=1e-5)
    scale = max(g.abs().max() for g in g1)
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5 * scale, rtol=1e-4)


def test_pad_molecules_gives_the_one_batch_type_with_targets():
    from molgiae.batch import DenseMolecules, pad_molecules

    water = (np.array([8, 1, 1]), np.array([[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]))
    methane = (np.array([6, 1, 1, 1, 1]), np.arange(15, dtype=np.float64).reshape(5, 3))
    mols = pad_molecules([water[0], methane[0]], [water[1], methane[1]], y=np.array([1.5, -2.0]))
    assert isinstance(mols, DenseMolecules) and len(mols) == 2
    assert mols.numbers.tolist() == [[8, 1, 1, 0, 0], [6, 1, 1, 1, 1]]
    assert mols.mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert mols.pos.dtype == torch.float32 and mols.pos[0, 3:].abs().sum() == 0
    np.testing.assert_allclose(mols.pos[1].numpy(), methane[1], rtol=0, atol=1e-6)
    assert mols.y.dtype == torch.float64 and mols.y.tolist() == [1.5, -2.0]
    assert mols.n_atoms.tolist() == [3, 5]
    moved = mols.with_pos(mols.pos + 1)
    assert moved.numbers is mols.numbers and float((moved.pos - mols.pos).min()) == 1.0
    assert pad_molecules([], []).numbers.shape == (0, 0)


def test_padding_species_are_zero_and_foreign_elements_are_refused():
    ae = GroupInvariantAutoencoder(ModelConfig(features=16, encoder_layers=1, decoder_layers=1))
    numbers = torch.tensor([[8, 1, 0], [17, 1, 1]])
    mask = torch.tensor([[True, True, False], [True, True, True]])
    with pytest.raises(ValueError, match=r"\[17\]"):
        ae.species(numbers, mask)
    numbers[1, 0] = 6
    assert ae.species(numbers, mask).tolist() == [[3, 0, 0], [1, 0, 0]]


def test_training_and_embedding_need_no_torch_geometric():
    """The batch path is molgiae's own: a training step and an embedding run with PyG unimportable."""
    code = (
        "import sys; sys.modules['torch_geometric'] = None\n"
        "import numpy as np\n"
        "from molgiae.config import ModelConfig\n"
        "from molgiae.data.batching import batch_from_set\n"
        "from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss\n"
        "from tests.equivariance import fixture_set\n"
        "data = fixture_set(); model = GroupInvariantAutoencoder(ModelConfig(features=16, encoder_layers=1,"
        " decoder_layers=1))\n"
        "mols = batch_from_set(data, np.arange(4))\n"
        "reconstruction_loss(model(mols, permutation='straight_through'), mols)['loss'].backward()\n"
        "print(model.embed(mols).shape)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "torch.Size([4, 128])" in done.stdout
