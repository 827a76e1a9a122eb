"""The representation's design choices: the bounded update product, the mean + sum code, the
legacy settings of older checkpoints, and warm starts (``--init-from``)."""
import math

import numpy as np
import pytest
import torch

from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.split import split_ids
from molgiae.model import GroupInvariantAutoencoder
from molgiae.painn_equivariant import SUM_POOL_SCALE, bounded_inner
from molgiae.checkpoint import load_checkpoint
from molgiae.training import train
from tests.equivariance import dense, fixture_set, molecule, random_action

DATA = fixture_set()


def test_bounded_inner_is_bounded_smooth_and_rotation_invariant():
    torch.manual_seed(0)
    u = 100 * torch.randn(4, 7, 3, 5, dtype=torch.float64)
    v = 100 * torch.randn(4, 7, 3, 5, dtype=torch.float64)
    b = bounded_inner(u, v)
    assert b.shape == (4, 7, 5) and b.abs().max() < 1
    R, _, _ = random_action(1, torch.float64)
    rotated = bounded_inner(torch.einsum("ij,bnjf->bnif", R, u), torch.einsum("ij,bnjf->bnif", R, v))
    assert torch.allclose(b, rotated, atol=1e-12)
    # the plain product of these vectors is ~1e4; the bounded one's gradient stays O(1/|v|)
    u.requires_grad_(True)
    bounded_inner(u, v).sum().backward()
    assert u.grad.abs().max() < 1.0 and (u * v).sum(2).abs().max() > 1e3


def make(pooling, update="bounded", seed=0):
    torch.manual_seed(seed)
    model = GroupInvariantAutoencoder(ModelConfig(decoder="transformer", code_pooling=pooling, update_product=update))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_mean_sum_code_has_an_intensive_and_an_extensive_half():
    """Two copies of a molecule 100 Å apart (beyond the cutoff): the mean half of z is unchanged,
    the sum half doubles; with mean pooling z does not change at all."""
    z, x = molecule(DATA, 60)
    pair = (torch.cat([z, z]), torch.cat([x, x + torch.tensor([100.0, 0, 0])]))
    for pooling in ("mean_sum", "mean"):
        model = make(pooling)
        with torch.no_grad():
            one = model.encode(dense(model, [(z, x)])).z[0]
            two = model.encode(dense(model, [pair])).z[0]
        half = one.shape[0] // 2
        assert torch.allclose(two[:half], one[:half], atol=1e-5)
        if pooling == "mean_sum":
            assert torch.allclose(two[half:], 2 * one[half:], atol=1e-5)
            assert one[half:].abs().max() > 1e-2
        else:
            assert torch.allclose(two, one, atol=1e-5)
    assert SUM_POOL_SCALE > 0


def test_checkpoints_without_the_new_fields_load_with_the_settings_they_were_trained_with():
    d = Config().to_dict()
    del d["model"]["update_product"], d["model"]["code_pooling"]
    legacy = Config.from_dict(d)
    assert legacy.model.update_product == "plain" and legacy.model.code_pooling == "mean"
    assert Config.from_dict(Config().to_dict()).model.update_product == "bounded"
    assert ModelConfig().code_pooling == "mean_sum"


def test_init_from_starts_a_fresh_run_from_a_checkpoints_weights(tmp_path):
    splits = split_ids(DATA.keys, 0.1, 0.1, 0)
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1, decoder="transformer"),
                 TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1))
    train(cfg, DATA, splits, tmp_path / "a", quiet=True, log=lambda m: None)
    source = load_checkpoint(tmp_path / "a" / "last.pt")
    cfg.train.init_from = str(tmp_path / "a" / "last.pt")
    cfg.train.lr = 0.0  # no change: the new run's weights are the source's
    cfg.train.seed = 7
    state = train(cfg, DATA, splits, tmp_path / "b", quiet=True, log=lambda m: None)
    warm = load_checkpoint(tmp_path / "b" / "last.pt")
    assert state.step == warm["run_state"]["step"] > 0
    for k, v in source["model"].items():
        assert torch.equal(warm["model"][k], v), k
    assert warm["metadata"]["init_from"]["file"] == "last.pt"
    # a checkpoint of another shape is refused with a clear message
    cfg.model.features = 32
    try:
        train(cfg, DATA, splits, tmp_path / "c", quiet=True, log=lambda m: None)
    except ValueError as exc:
        assert "do not fit" in str(exc)
    else:
        raise AssertionError("a mismatched --init-from was accepted")


def test_bf16_autocast_runs_and_keeps_the_group_action_in_float32():
    """Training on CUDA runs under bf16 autocast (CPU autocast exercises the same code): the
    forward/backward must run (the cross-product term once mixed dtypes), the rotation stay
    orthonormal to float32 precision, and the loss stay close to the float32 one."""
    from molgiae.model import reconstruction_loss

    model = make("mean_sum")
    mols = dense(model, [molecule(DATA, i) for i in (40, 60, 90)])
    out32 = model(mols, permutation="straight_through", tau=0.3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16 = model(mols, permutation="straight_through", tau=0.3)
    loss = reconstruction_loss(out16, mols)["loss"]
    loss.backward()
    R = out16.encoding.rotation
    assert R.dtype == torch.float32 and out16.coords.dtype == torch.float32
    eye = torch.eye(3).expand_as(R)
    assert torch.allclose(R @ R.transpose(1, 2), eye, atol=1e-5)
    ref = reconstruction_loss(out32, mols)["loss"]
    loss, ref = float(loss.detach()), float(ref.detach())
    assert math.isfinite(loss) and abs(loss - ref) < 0.05 * ref


def test_code_smoothness_is_scale_free_and_zero_without_noise():
    from molgiae.training import code_smoothness

    torch.manual_seed(0)
    clean = torch.randn(8, 16)
    noisy = clean + 0.1 * torch.randn(8, 16)
    value = code_smoothness(noisy, clean)
    assert float(code_smoothness(clean.clone(), clean)) == 0.0
    assert torch.allclose(code_smoothness(10 * noisy, 10 * clean), value)  # shrinking z does not help
    # by hand: mean squared move over the mean squared distance between different codes
    pair = torch.cdist(clean, clean).pow(2).sum() / (8 * 7)
    assert torch.allclose(value, ((noisy - clean) ** 2).sum(-1).mean() / pair)
    noisy.requires_grad_(True)
    code_smoothness(noisy, clean).backward()
    assert noisy.grad.abs().sum() > 0


def test_training_with_the_smoothness_term_runs_and_records_it(tmp_path):
    splits = split_ids(DATA.keys, 0.1, 0.1, 0)
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1, decoder="transformer"),
                 TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1, coord_noise=0.1, lambda_smooth=2.0))
    state = train(cfg, DATA, splits, tmp_path, quiet=True, log=lambda m: None)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    assert state.step > 0 and ckpt["config"]["train"]["lambda_smooth"] == 2.0
    assert np.isfinite(state.history[-1]["train_loss"])


def test_the_smoothness_term_without_noise_is_refused_not_silently_off():
    import pytest

    with pytest.raises(ValueError, match="coord_noise"):
        TrainConfig(lambda_smooth=1.0)
    assert TrainConfig(lambda_smooth=1.0, coord_noise=0.05).lambda_smooth == 1.0


def test_noise_head_is_rotation_translation_and_permutation_equivariant():
    torch.manual_seed(3)
    model = GroupInvariantAutoencoder(ModelConfig(noise_head=True)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    for i in (60, 70, 80):
        z, x = molecule(DATA, i)
        x = x.double()
        R, t, perm = random_action(len(z), torch.float64)
        with torch.no_grad():
            a = model.encode(dense(model, [(z, x)])).atom_noise[0]
            b = model.encode(dense(model, [(z[perm], x[perm] @ R.T + t)])).atom_noise[0]
        assert a.shape == (len(z), 3) and a.abs().max() > 1e-3
        assert torch.allclose(b, a[perm] @ R.T, atol=1e-9)
    assert GroupInvariantAutoencoder(ModelConfig()).encode(dense(model, [molecule(DATA, 60)])).atom_noise is None


def test_noise_prediction_loss_ignores_a_common_shift_and_padding():
    from molgiae.training import noise_prediction_loss

    torch.manual_seed(0)
    noise = torch.randn(2, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    centred = noise - (noise * mask[..., None]).sum(1, keepdim=True) / mask.sum(1)[:, None, None]
    assert noise_prediction_loss(centred, noise, mask) < 1e-10
    assert noise_prediction_loss(centred, noise + torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64), mask) < 1e-10
    zero = noise_prediction_loss(torch.zeros_like(noise), noise, mask)
    expected = ((centred ** 2) * mask[..., None]).sum() / (3 * 8)
    assert torch.allclose(zero, expected.float(), atol=1e-6) and zero > 0.3
    padded = noise.clone()
    padded[1, 3:] = 99.0  # padding never counts
    assert torch.allclose(noise_prediction_loss(centred, padded, mask), noise_prediction_loss(centred, noise, mask))


def test_denoising_training_warm_starts_a_noise_head_and_learns_it(tmp_path):
    splits = split_ids(DATA.keys, 0.1, 0.1, 0)
    small = dict(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1, decoder="transformer")
    cfg = Config(ModelConfig(**small), TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1))
    train(cfg, DATA, splits, tmp_path / "a", quiet=True, log=lambda m: None)
    said = []
    cfg = Config(ModelConfig(**small, noise_head=True),
                 TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1, coord_noise=0.1, lambda_denoise=1.0,
                             init_from=str(tmp_path / "a" / "last.pt")))
    state = train(cfg, DATA, splits, tmp_path / "b", quiet=True, log=said.append)
    assert any("noise head starts fresh" in m for m in said) and state.step > 0
    warm = load_checkpoint(tmp_path / "b" / "last.pt")
    assert "encoder.noise_vectors.weight" in warm["model"]
    import pytest

    with pytest.raises(ValueError, match="coord_noise"):
        TrainConfig(lambda_denoise=1.0)
    cfg = Config(ModelConfig(**small), TrainConfig(epochs=1, coord_noise=0.1, lambda_denoise=1.0))
    with pytest.raises(ValueError, match="noise head"):
        train(cfg, DATA, splits, tmp_path / "c", quiet=True, log=lambda m: None)


def test_cpu_bf16_training_runs_under_autocast_and_stays_close_to_float32(tmp_path):
    """--cpu-bf16: the same run under CPU bf16 autocast reaches nearly the same losses; the
    checkpoint stays float32."""
    splits = split_ids(DATA.keys, 0.1, 0.1, 0)
    histories = {}
    for bf16 in (False, True):
        cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1,
                                 decoder="transformer"),
                     TrainConfig(epochs=2, batch_size=16, lr=1e-3, warmup_steps=1, cpu_bf16=bf16))
        histories[bf16] = train(cfg, DATA, splits, tmp_path / str(bf16), quiet=True, log=lambda m: None).history
        ckpt = load_checkpoint(tmp_path / str(bf16) / "last.pt")
        assert all(v.dtype in (torch.float32, torch.int64) for v in ckpt["model"].values())
    assert histories[True][0]["train_loss"] != histories[False][0]["train_loss"]  # bf16 really ran
    for a, b in zip(histories[False], histories[True]):
        assert abs(a["train_loss"] - b["train_loss"]) < 0.05 * a["train_loss"]
        assert abs(a["val_rmsd"] - b["val_rmsd"]) < 0.05 * a["val_rmsd"]



# ----------------------------------------------------------------------------- conformer-metric term
def test_aligned_pair_rmsd_matches_kabsch_and_ignores_rigid_motion():
    from molgiae.metrics import kabsch_rmsd
    from molgiae.training import aligned_pair_rmsd

    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(4, 7, dtype=torch.bool)
    mask[1, 5:] = False
    R, t, _ = random_action(7, torch.float64)
    moved = a @ R.T + t
    assert aligned_pair_rmsd(a, moved, mask).abs().max() < 1e-6  # sqrt of a rounding-level msd
    b = a + 0.3 * torch.randn(4, 7, 3, generator=g, dtype=torch.float64)
    got = aligned_pair_rmsd(a, b @ R.T, mask)
    for p in range(4):
        n = int(mask[p].sum())
        want = kabsch_rmsd(b[p, :n].numpy(), a[p, :n].numpy())[0]
        assert abs(float(got[p]) - want) < 1e-8
    mirror = a * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # a mirror image is not a rotation
    assert (aligned_pair_rmsd(a, mirror, mask) > 0.1).all()


def test_conformer_metric_is_zero_for_proportional_distances_and_scale_free():
    from molgiae.training import conformer_metric

    rmsd = torch.tensor([0.2, 0.5, 1.0, 1.5], dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]])
    z = torch.zeros(8, 3, dtype=torch.float64)
    z[1::2, 0] = 3.0 * rmsd  # |z_a - z_b| = 3 rmsd for every pair
    assert float(conformer_metric(z, pairs, rmsd)) < 1e-10
    z[7, 0] = 1.0  # the last pair now too close
    bad = float(conformer_metric(z, pairs, rmsd))
    assert bad > 0.1
    assert abs(float(conformer_metric(5 * z, pairs, rmsd)) - bad) < 1e-6  # shrinking or growing z changes nothing
    assert float(conformer_metric(z, pairs[:1], rmsd[:1])) == 0.0


def _with_siblings(data, n_molecules: int, shift: float):
    """``data`` plus a distorted copy of its first ``n_molecules`` (same keys: conformers of one molecule)."""
    from molgiae.data.conformers import ConformerSet

    copy = data.subset(np.arange(n_molecules))
    moved = copy.coords + shift * np.random.default_rng(1).standard_normal(copy.coords.shape)
    return ConformerSet(elements=np.concatenate([data.elements, copy.elements]),
                        coords=np.concatenate([data.coords, moved]).astype(np.float32),
                        ptr=np.r_[data.ptr, data.ptr[-1] + copy.ptr[1:]].astype(np.int64),
                        keys=np.concatenate([data.keys, copy.keys]), names=np.concatenate([data.names, copy.names]))


def test_conformer_siblings_and_batches_with_partners(tmp_path):
    from molgiae.training import AutoencoderTask, aligned_pair_rmsd, conformer_siblings
    from molgiae.train.distributed import DistInfo

    keys = np.array([5, 7, 5, 9, 7, 7])
    sib = conformer_siblings(keys, np.array([0, 1, 2, 3, 4, 5]))
    assert sorted(sib) == [0, 1, 2, 4, 5] and set(sib[1].tolist()) == {1, 4, 5}
    assert set(conformer_siblings(keys, np.array([0, 1, 3])).keys()) == set()  # siblings outside the ids do not count

    data = _with_siblings(DATA, 60, 0.3)
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1),
                 TrainConfig(epochs=1, batch_size=16, lambda_conformer=1.0))
    task = AutoencoderTask(cfg, data, split_ids(data.keys, 0.1, 0.1, 0), tmp_path, torch.device("cpu"),
                           DistInfo(), None, lambda m: None, quiet=True)
    _, inputs = task.epoch_inputs(task.state)
    n_pairs = 0
    for batch, weight, n, pairs, pair_rmsd, _ in inputs:
        assert len(batch.numbers) == n + len(pairs) and pair_rmsd.shape == (len(pairs),)
        for (a, b), r in zip(pairs.tolist(), pair_rmsd.tolist()):
            assert torch.equal(batch.numbers[a], batch.numbers[b])  # the same molecule, the same atoms
            assert not torch.equal(batch.pos[a], batch.pos[b])
            fixed = aligned_pair_rmsd(batch.pos[a:a + 1].double(), batch.pos[b:b + 1].double(), batch.mask[a:a + 1])
            assert 0 < r <= float(fixed) + 1e-5  # symmetry-aware: never above the fixed-order rmsd
        n_pairs += len(pairs)
    assert n_pairs >= 20


def test_conformer_pairs_fills_every_batch_without_padding_or_dropping_molecules(tmp_path):
    from molgiae.training import AutoencoderTask
    from molgiae.train.distributed import DistInfo

    data = _with_siblings(DATA, 60, 0.3)
    splits = split_ids(data.keys, 0.1, 0.1, 0)

    def batches(pairs_wanted):
        cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1),
                     TrainConfig(epochs=1, batch_size=16, lambda_conformer=1.0, conformer_pairs=pairs_wanted))
        task = AutoencoderTask(cfg, data, splits, tmp_path, torch.device("cpu"), DistInfo(), None,
                               lambda m: None, quiet=True)
        return list(task.epoch_inputs(task.state)[1])

    plain, filled = batches(0), batches(6)
    assert len(plain) == len(filled)
    more = 0
    for (b0, _, n0, p0, _, _), (b1, _, n1, p1, _, _) in zip(plain, filled):
        assert n0 == n1 and torch.equal(b1.numbers[:n1], b0.numbers[:n0])  # the epoch's own molecules, unchanged
        assert b1.numbers.shape[1] == b0.numbers.shape[1]  # the extra molecules add no padding
        assert len(p1) >= len(p0)
        sizes = (b1.numbers[:n1] > 0).sum(1)
        for a, b in p1.tolist():
            assert torch.equal(b1.numbers[a], b1.numbers[b]) and not torch.equal(b1.pos[a], b1.pos[b])
            assert sizes.min() <= (b1.numbers[a] > 0).sum() <= sizes.max()
        more += len(p1) - len(p0)
    assert more > 0
    assert sum(len(p) >= 6 for _, _, _, p, _, _ in filled) > sum(len(p) >= 6 for _, _, _, p, _, _ in plain)
    with pytest.raises(ValueError, match="needs lambda_conformer"):
        TrainConfig(conformer_pairs=4)


def test_training_with_the_conformer_metric_runs_and_needs_siblings(tmp_path):
    messages = []
    data = _with_siblings(DATA, 60, 0.3)
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1),
                 TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1, lambda_conformer=1.0))
    state = train(cfg, data, split_ids(data.keys, 0.1, 0.1, 0), tmp_path / "run", quiet=True, log=messages.append)
    assert state.step > 0 and math.isfinite(state.history[-1]["train_loss"])
    assert any(m.startswith("conformer-metric term:") for m in messages)
    with pytest.raises(ValueError, match="several conformers"):
        train(cfg, DATA, split_ids(DATA.keys, 0.1, 0.1, 0), tmp_path / "none", quiet=True, log=lambda m: None)


def test_relabelled_and_mirrored_conformers_are_recognised_and_left_out_of_the_metric():
    """A methyl group turned by 120 degrees is the same structure with its H atoms relabelled: fixed-order
    rmsd calls it far, a permutation-invariant code cannot. Such pairs are recognised (and mirror
    images, which sorted distances cannot tell from relabelling), a real torsion change is not."""
    from molgiae.symmetry import same_up_to_relabelling
    from molgiae.training import aligned_pair_rmsd

    from rdkit import Chem
    from rdkit.Chem import AllChem, rdMolTransforms

    mol = Chem.AddHs(Chem.MolFromSmiles("CCO"))
    AllChem.EmbedMolecule(mol, randomSeed=7)
    AllChem.MMFFOptimizeMolecule(mol)
    x = torch.tensor(mol.GetConformer().GetPositions(), dtype=torch.float64)
    numbers = torch.tensor([a.GetAtomicNum() for a in mol.GetAtoms()])
    methyl_h = [n.GetIdx() for n in mol.GetAtomWithIdx(0).GetNeighbors() if n.GetAtomicNum() == 1]
    relabelled = x.clone()
    relabelled[methyl_h] = x[methyl_h[1:] + methyl_h[:1]]  # the same geometry, H labels cycled
    rot = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))[0]
    rot = rot * torch.sign(torch.linalg.det(rot))
    relabelled = relabelled @ rot.T + 1.5
    turned = x.clone()  # a real conformer change: the O-H turned about the C-O bond
    conf = mol.GetConformer()
    h_on_o = [n.GetIdx() for n in mol.GetAtomWithIdx(2).GetNeighbors() if n.GetAtomicNum() == 1][0]
    rdMolTransforms.SetDihedralDeg(conf, 0, 1, 2, h_on_o, rdMolTransforms.GetDihedralDeg(conf, 0, 1, 2, h_on_o) + 120)
    turned = torch.tensor(conf.GetPositions(), dtype=torch.float64)
    mirror = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)

    species = torch.tensor([{1: 0, 6: 1, 8: 3}[int(n)] for n in numbers]).unsqueeze(0).expand(4, -1)
    a = x.unsqueeze(0).expand(4, -1, -1)
    b = torch.stack([relabelled, turned, mirror, x + 0.1 * torch.randn(x.shape, dtype=torch.float64)])
    pad = torch.zeros(4, 2, 3, dtype=torch.float64)  # padded rows must not matter
    a, b = torch.cat([a, pad], 1), torch.cat([b, pad], 1)
    species = torch.cat([species, torch.zeros(4, 2, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(4, len(x), dtype=torch.bool), torch.zeros(4, 2, dtype=torch.bool)], 1)
    rmsd = aligned_pair_rmsd(a, b, mask)
    assert rmsd[0] > 0.3  # fixed-order rmsd calls the relabelled copy far
    assert same_up_to_relabelling(a, b, species, mask).tolist() == [True, False, True, False]

    # in the objective: a batch whose only pairs are relabelled copies gets no conformer term
    from molgiae.batch import DenseMolecules
    from molgiae.model import GroupInvariantAutoencoder
    from molgiae.training import training_objective

    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1))
    model = GroupInvariantAutoencoder(cfg.model).double()
    z = numbers.unsqueeze(0).expand(4, -1)
    batch = DenseMolecules(numbers=z, pos=torch.stack([x, relabelled, x, relabelled]), mask=torch.ones(4, len(x), dtype=torch.bool))
    pairs = torch.tensor([[0, 1], [2, 3]])
    cfg.train.lambda_conformer = 0.0
    plain = training_objective(model, model, batch, None, cfg.train, False, pairs)
    cfg.train.lambda_conformer = 10.0
    assert torch.equal(training_objective(model, model, batch, None, cfg.train, False, pairs), plain)
    stretched = x.clone()
    stretched[2] = x[1] + 1.2 * (x[2] - x[1])  # the C-O bond 20 % longer
    batch = DenseMolecules(numbers=z, pos=torch.stack([x, turned, x, stretched]), mask=batch.mask)
    pairs = torch.tensor([[0, 1], [2, 3]])  # two real changes: the term counts
    cfg.train.lambda_conformer = 0.0
    plain = training_objective(model, model, batch, None, cfg.train, False, pairs)
    cfg.train.lambda_conformer = 10.0
    with_term = training_objective(model, model, batch, None, cfg.train, False, pairs)
    assert not torch.equal(with_term, plain)
    # given distances (the symmetry-aware ones of SetPairRmsd) replace the fixed-order rmsd
    fixed = aligned_pair_rmsd(batch.pos[[0, 2]], batch.pos[[1, 3]], batch.mask[[0, 2]])
    assert torch.allclose(training_objective(model, model, batch, None, cfg.train, False, pairs, fixed), with_term)
    other = fixed * torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert not torch.allclose(training_objective(model, model, batch, None, cfg.train, False, pairs, other), with_term)


def test_mirror_image_conformers_count_in_the_term_with_symmetry_aware_distances():
    """Two conformers of butan-2-ol, each paired with its mirror image: distance fingerprints cannot tell
    a mirror image from a relabelling, but the symmetry-aware rmsd (proper rotations only) can, and the
    code is not mirror-invariant. With given distances the pairs count in the conformer term (failed
    before: the fingerprint check dropped every mirror-image pair); with the fixed-order fallback they
    are still left out, and relabelled copies (distance ≈ 0) are left out either way."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    from molgiae.automorphism import atom_symmetry, bond_graph, symmetric_pair_rmsds
    from molgiae.batch import DenseMolecules
    from molgiae.model import GroupInvariantAutoencoder
    from molgiae.training import training_objective

    mol = Chem.AddHs(Chem.MolFromSmiles("CCC(C)O"))
    AllChem.EmbedMultipleConfs(mol, 2, randomSeed=3)
    AllChem.MMFFOptimizeMoleculeConfs(mol)
    numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    x1, x2 = (c.GetPositions() for c in mol.GetConformers())
    sym = atom_symmetry(numbers, bond_graph(numbers, x1))
    flip = np.array([1.0, 1.0, -1.0])
    distances = [symmetric_pair_rmsds(np.stack([x, x * flip]), sym)[0] for x in (x1, x2)]
    assert min(distances) > 0.3  # different structures, not relabelled copies
    methyl_h = [n.GetIdx() for n in mol.GetAtomWithIdx(0).GetNeighbors() if n.GetAtomicNum() == 1]
    relabelled = x1.copy()
    relabelled[methyl_h] = x1[methyl_h[1:] + methyl_h[:1]]
    assert symmetric_pair_rmsds(np.stack([x1, relabelled]), sym)[0] < 1e-6

    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1))
    model = GroupInvariantAutoencoder(cfg.model).double()

    def objective(rows, given, weight):
        batch = DenseMolecules(numbers=torch.from_numpy(numbers).unsqueeze(0).expand(4, -1),
                               pos=torch.from_numpy(np.stack(rows)), mask=torch.ones(4, len(numbers), dtype=torch.bool))
        cfg.train.lambda_conformer = weight
        return training_objective(model, model, batch, None, cfg.train, False, torch.tensor([[0, 1], [2, 3]]), given)

    mirrors = [x1, x1 * flip, x2, x2 * flip]
    given = torch.tensor(distances, dtype=torch.float64)
    assert not torch.equal(objective(mirrors, given, 10.0), objective(mirrors, given, 0.0))
    assert torch.equal(objective(mirrors, None, 10.0), objective(mirrors, None, 0.0))  # fixed order: left out
    copies, zero = [x1, relabelled, x1, relabelled], torch.zeros(2, dtype=torch.float64)
    assert torch.equal(objective(copies, zero, 10.0), objective(copies, zero, 0.0))


def test_training_pairs_get_symmetry_aware_distances(tmp_path):
    """A set holding QM9 molecules and copies with the atoms of each terminal group (CH3, NH2 H)
    cycled and the whole copy rotated: one structure each. The pairs the task hands the conformer
    term get distance ≈ 0 (so MIN_PAIR_RMSD leaves them out), where the fixed-order rmsd is large
    (failed before: the term's distance was the fixed-order rmsd of the batch)."""
    from molgiae.automorphism import atom_symmetry, bond_graph
    from molgiae.data.conformers import ConformerSet
    from molgiae.group import random_rotation
    from molgiae.training import MIN_PAIR_RMSD, AutoencoderTask, aligned_pair_rmsd
    from molgiae.train.distributed import DistInfo

    copies, ids = [], []
    for i in range(len(DATA)):
        a, b = DATA.ptr[i], DATA.ptr[i + 1]
        elements, x = DATA.elements[a:b], DATA.coords[a:b].astype(np.float64)
        groups = atom_symmetry(elements, bond_graph(elements, x)).groups
        if not groups:
            continue
        perm = np.arange(len(x))
        for g in groups:
            perm[g] = np.roll(g, 1)
        R = random_rotation(torch.Generator().manual_seed(i), dtype=torch.float64).numpy()
        copies.append(x[perm] @ R.T)
        ids.append(i)
        if len(ids) == 40:
            break
    copy = DATA.subset(np.array(ids))
    data = ConformerSet(elements=np.concatenate([DATA.elements, copy.elements]),
                        coords=np.concatenate([DATA.coords, np.concatenate(copies)]).astype(np.float32),
                        ptr=np.r_[DATA.ptr, DATA.ptr[-1] + copy.ptr[1:]].astype(np.int64),
                        keys=np.concatenate([DATA.keys, copy.keys]), names=np.concatenate([DATA.names, copy.names]))
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1),
                 TrainConfig(epochs=1, batch_size=16, lambda_conformer=1.0, val_fraction=0.0, test_fraction=0.0))
    splits = {"train": np.arange(len(data)), "val": np.zeros(0, np.int64), "test": np.zeros(0, np.int64)}
    task = AutoencoderTask(cfg, data, splits, tmp_path, torch.device("cpu"), DistInfo(), None, lambda m: None, quiet=True)
    fixed, given = [], []
    for batch, _, _, pairs, pair_rmsd, _ in task.epoch_inputs(task.state)[1]:
        for (a, b), r in zip(pairs.tolist(), pair_rmsd.tolist()):
            fixed.append(float(aligned_pair_rmsd(batch.pos[a:a + 1].double(), batch.pos[b:b + 1].double(),
                                                 batch.mask[a:a + 1])))
            given.append(r)
    assert len(given) >= 10
    assert max(given) < 1e-3 < MIN_PAIR_RMSD
    assert np.median(fixed) > 0.3


def test_local_smoothness_measures_the_local_slope_and_trains_the_encoder():
    """In float64 at small σ the term is the local slope: the same at σ 1e-4 and 2e-4 (the (0.1/σ)²
    scaling cancels σ²) and 0 for a batch of one; with a weight it changes the objective and sends
    gradient to the encoder; negative weights are refused."""
    from molgiae.training import local_smoothness, training_objective

    model = make("mean_sum").double()
    batch = dense(model, [molecule(DATA, i, torch.float64) for i in range(8)])
    with torch.no_grad():
        clean = model.encode(batch).z

    def at(sigma):
        torch.manual_seed(3)
        return float(local_smoothness(model, batch, clean, sigma, False).detach())

    small, smaller = at(2e-4), at(1e-4)
    assert small > 0 and abs(smaller / small - 1) < 0.02
    one = dense(model, [molecule(DATA, 0, torch.float64)])
    assert float(local_smoothness(model, one, model.encode(one).z.detach(), 0.01, False).detach()) == 0.0

    tc = TrainConfig(coord_noise=0.1, lambda_smooth=1.0)
    torch.manual_seed(0)
    noise = torch.randn_like(batch.pos)
    plain = training_objective(model, model, batch, noise, tc, False)
    tc.lambda_smooth_local = 5.0
    torch.manual_seed(1)
    with_local = training_objective(model, model, batch, noise, tc, False)
    assert float(with_local.detach()) > float(plain.detach())
    model.zero_grad()
    local_smoothness(model, batch, clean, 0.01, False).backward()  # the term alone
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())
    with pytest.raises(ValueError, match="lambda_smooth_local"):
        TrainConfig(lambda_smooth_local=-1.0)


def test_turning_the_conformer_term_off_takes_its_extra_pairs_with_it():
    """The bundled model trained with --conformer-pairs 16; continuing it on QM9 alone with
    --lambda-conformer 0 must give a valid config (failed before: 'conformer_pairs 16 needs
    lambda_conformer > 0'). Asking for pairs without the term is still an error."""
    cfg = Config(train=TrainConfig(lambda_conformer=1.0, conformer_pairs=16, lambda_separation=0.5))
    off = cfg.with_options(train={"lambda_conformer": 0.0, "conformer_pairs": None, "epochs": 2})
    assert (off.train.lambda_conformer, off.train.conformer_pairs, off.train.epochs) == (0.0, 0, 2)
    assert off.train.lambda_separation == 0.0
    assert cfg.with_options(train={"lr": 1e-4}).train.conformer_pairs == 16  # untouched otherwise
    with pytest.raises(ValueError, match="needs lambda_conformer"):
        cfg.with_options(train={"lambda_conformer": 0.0, "conformer_pairs": 8})


def test_conformer_separation_is_zero_when_partners_are_nearest_and_scale_free():
    """Hand-made codes: two molecules with two conformers each. Partners nearer (by the margin) than
    the other molecule: 0. A partner farther than the other molecule: log(margin · d_pos / d_neg)
    exactly, the same for 10 × z; it pulls the partners together and pushes the other molecule away;
    rows of the anchor's own molecule never count as negatives; no other molecule or no pairs: 0."""
    from molgiae.training import conformer_separation

    z = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 0.0], [5.0, 0.2]])
    pairs, groups = torch.tensor([[0, 1], [2, 3]]), torch.tensor([0, 0, 1, 1])
    assert float(conformer_separation(z, pairs, groups, margin=2.0)) == 0.0
    far = torch.tensor([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [1.0, 0.1]], requires_grad=True)
    loss = conformer_separation(far, torch.tensor([[0, 1]]), groups, margin=1.5)
    # anchor 0: partner at 3.0, nearest other molecule at 1.0; anchor 1: partner 3.0, nearest other 2.0
    expected = (math.log(1.5 * 3.0 / 1.0) + math.log(1.5 * 3.0 / 2.0)) / 2
    assert abs(float(loss.detach()) - expected) < 1e-5
    assert abs(float(conformer_separation(10 * far, torch.tensor([[0, 1]]), groups, margin=1.5).detach()) - expected) < 1e-5
    # descending the term alone makes each partner the anchor's nearest neighbour
    codes = far.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([codes], lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        conformer_separation(codes, torch.tensor([[0, 1]]), groups, margin=1.5).backward()
        opt.step()
    d = torch.cdist(codes.detach(), codes.detach()) + 1e9 * torch.eye(4)
    assert d[0].argmin() == 1 and d[1].argmin() == 0
    # a third conformer of molecule 0 near the anchor is not a negative
    z3 = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.05, 0.0], [9.0, 0.0]])
    assert float(conformer_separation(z3, torch.tensor([[0, 1]]), torch.tensor([0, 0, 0, 1]), margin=1.5)) == 0.0
    assert float(conformer_separation(z3, torch.tensor([[0, 1]]), torch.tensor([0, 0, 0, 0]))) == 0.0
    assert float(conformer_separation(z3, torch.zeros((0, 2), dtype=torch.long), torch.tensor([0, 0, 0, 1]))) == 0.0
    with pytest.raises(ValueError, match="needs lambda_conformer"):
        TrainConfig(lambda_separation=1.0)


def test_training_with_the_separation_term(tmp_path):
    """The term in a real run: the collate hands each row's molecule; the objective changes with the
    term's weight on a batch where a partner is not the nearest molecule."""
    from molgiae.train.distributed import DistInfo
    from molgiae.training import AutoencoderTask, training_objective

    data = _with_siblings(DATA, 60, 0.3)
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1),
                 TrainConfig(epochs=1, batch_size=16, lambda_conformer=1.0, lambda_separation=1.0))
    task = AutoencoderTask(cfg, data, split_ids(data.keys, 0.1, 0.1, 0), tmp_path, torch.device("cpu"),
                           DistInfo(), None, lambda m: None, quiet=True)
    changed = 0
    for batch, _, _, pairs, pair_rmsd, groups in task.epoch_inputs(task.state)[1]:
        assert groups.shape == (len(batch.numbers),)
        for a, b in pairs.tolist():
            assert groups[a] == groups[b]
        if len(pairs) >= 2:
            cfg.train.lambda_separation = 0.0
            plain = training_objective(task.model, task.model, batch, None, cfg.train, False, pairs, pair_rmsd, groups)
            cfg.train.lambda_separation = 1.0
            changed += not torch.equal(plain, training_objective(task.model, task.model, batch, None, cfg.train,
                                                                 False, pairs, pair_rmsd, groups))
    assert changed >= 1
    state = train(cfg, data, split_ids(data.keys, 0.1, 0.1, 0), tmp_path / "run", quiet=True, log=lambda m: None)
    assert state.step > 0 and math.isfinite(state.history[-1]["train_loss"])


def test_frame_steadiness_is_the_turn_of_the_frame_and_rotation_invariant():
    """The term is 4 (1 − cos θ) for a frame turned by θ and 0 for a steady one; on a real model it
    is the same when molecule and noise are rotated together (the frames turn along); descending it
    alone steadies the encoder's frame and leaves the decoder alone; without noise it is refused."""
    from molgiae.group import random_rotation
    from molgiae.training import frame_steadiness, training_objective

    theta = 0.7
    c, s = math.cos(theta), math.sin(theta)
    turned = torch.tensor([[[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    Q = random_rotation(torch.Generator().manual_seed(2), dtype=torch.float64)
    assert abs(float(frame_steadiness(Q @ turned, Q.unsqueeze(0))) - 4 * (1 - c)) < 1e-6
    assert float(frame_steadiness(Q.unsqueeze(0), Q.unsqueeze(0))) == 0.0

    model = make("mean_sum").double()
    mols = [molecule(DATA, i, torch.float64) for i in range(40, 131, 9)]  # asymmetric (the first QM9 molecules
    batch = dense(model, mols)                                             # are symmetric: frames undefined)
    noise = 0.1 * torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def term(b, eps):
        with torch.no_grad():
            clean = model.encode(b).rotation
        return frame_steadiness(model.encode(b.with_pos(b.pos + eps * b.mask.unsqueeze(-1))).rotation, clean)

    value = term(batch, noise).detach()
    R = random_rotation(torch.Generator().manual_seed(5), dtype=torch.float64)
    moved = dense(model, [(z, x @ R.T + 3.0) for z, x in mols])
    assert float(value) > 1e-4
    assert abs(float(term(moved, noise @ R.T).detach()) - float(value)) < 1e-6 * max(1.0, float(value))

    tc = TrainConfig(coord_noise=1.0, lambda_smooth=1.0)
    plain = training_objective(model, model, batch, noise, tc, False).detach()
    tc.lambda_frame = 2.0
    assert float(training_objective(model, model, batch, noise, tc, False).detach()) > float(plain)

    model.zero_grad()
    term(batch, noise).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())
    opt = torch.optim.Adam(model.encoder.parameters(), lr=3e-3)
    for _ in range(40):
        opt.zero_grad()
        term(batch, noise).backward()
        opt.step()
    assert float(term(batch, noise).detach()) < 0.3 * float(value)
    with pytest.raises(ValueError, match="coord_noise"):
        TrainConfig(lambda_frame=1.0)
    with pytest.raises(ValueError, match="lambda_frame"):
        TrainConfig(lambda_frame=-1.0, coord_noise=0.1)


def test_training_with_the_frame_term_runs_and_records_it(tmp_path):
    splits = split_ids(DATA.keys, 0.1, 0.1, 0)
    cfg = Config(ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1, decoder="transformer"),
                 TrainConfig(epochs=1, batch_size=16, lr=1e-3, warmup_steps=1, coord_noise=0.1, lambda_frame=1.0))
    state = train(cfg, DATA, splits, tmp_path, quiet=True, log=lambda m: None)
    assert state.step > 0 and load_checkpoint(tmp_path / "last.pt")["config"]["train"]["lambda_frame"] == 1.0
    assert np.isfinite(state.history[-1]["train_loss"])
