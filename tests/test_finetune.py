"""Tests of molgiae.finetune and the finetune / predict commands.

Real components only: the 131-molecule QM9 fixture, tiny seeded checkpoints, RDKit-written SDF
files in tmp_path, the CLI through typer's CliRunner. Small models and few epochs keep the
whole file fast on one thread.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from rdkit import Chem
from typer.testing import CliRunner

from tests.equivariance import write_tiny_checkpoint
from tests.molfiles import molblock
from tests.shared_data import shared_file
from tests.molfiles import write_sdf as write_sdf_blocks
from molgiae.cli import app
from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.batching import batch_from_set
from molgiae.data.conformers import ConformerSet, load_qm9_npz
from molgiae.data.readers import iter_records
from molgiae.data.record import ConformerRecord
from molgiae.finetune.compare import compare
from molgiae.finetune.loop import finetune, finetune_splits
from molgiae.finetune.model import (
    PROPERTY_FORMAT,
    PropertyModel,
    encoder_state,
    fit_element_offsets,
    load_predictor,
    prediction_column,
)
from molgiae.data.targets import ATOMREF, TARGET_NAMES, target_values
from molgiae.quality import element_counts

runner = CliRunner()
HA_TO_EV = 27.211386246
# QM9 atom references typed in from shared/data/qm9/atomref.csv (Hartree), independent of ATOMREF.
REF = {
    "U0": {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730},
    "U": {1: -0.498857, 6: -37.845355, 7: -54.582445, 8: -75.063163, 9: -99.717314},
    "H": {1: -0.497912, 6: -37.844411, 7: -54.581501, 8: -75.062219, 9: -99.716370},
    "G": {1: -0.510927, 6: -37.861317, 7: -54.598897, 8: -75.079532, 9: -99.733544},
}


# --------------------------------------------------------------------------- fixtures and helpers
@pytest.fixture(scope="module")
def qm9(qm9_fixture_npz) -> ConformerSet:
    return load_qm9_npz([qm9_fixture_npz])


@pytest.fixture(scope="module")
def ae_checkpoint(tmp_path_factory) -> Path:
    """A tiny seeded autoencoder checkpoint with a 60/20/20 split (enough val/test molecules
    on the 131-molecule fixture)."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("ae") / "ae.pt", seed=1, name="tiny-ae",
                                 val_fraction=0.2, test_fraction=0.2, split_seed=0)


@pytest.fixture(scope="module")
def frozen_run(qm9, ae_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("frozen")
    return finetune(qm9, "U0", out, pretrained=ae_checkpoint, freeze_encoder=True, epochs=2, batch_size=16,
                    lr=5e-3, seed=0, device="cpu", quiet=True)


@pytest.fixture(scope="module")
def u0_run(qm9, ae_checkpoint, tmp_path_factory):
    """U0 (atomization energy, mostly explained by composition) from one per-atom mean, so the
    model has the composition to learn: a reliable learner on 79 molecules. (With the default
    per-element reference the composition is fitted before training and 79 molecules leave
    nothing a tiny model learns in 8 epochs: see test_element_reference_beats_the_per_atom_mean.)"""
    out = tmp_path_factory.mktemp("u0")
    return finetune(qm9, "U0", out, pretrained=ae_checkpoint, epochs=8, batch_size=8, lr=5e-3, patience=0,
                    seed=0, device="cpu", quiet=True, atom_reference="mean")


def row_of(data: ConformerSet, key: int) -> int:
    return int(np.flatnonzero(data.keys == key)[0])


def write_sdf(path: Path, records: list[tuple]) -> Path:
    return write_sdf_blocks(path, [molblock(*r) for r in records])


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


# --------------------------------------------------------------------------- targets and units
def test_atomref_constant_matches_the_data_folder():
    assert {z: {k: ATOMREF[z][k] for k in REF} for z in ATOMREF} == {z: {k: REF[k][z] for k in REF} for z in REF["U0"]}
    atomref = shared_file("qm9/atomref.csv")
    rows = [r for r in csv.reader(l for l in atomref.read_text().splitlines() if not l.startswith("#"))]
    header = rows[0]
    for r in rows[1:]:
        z = int(r[header.index("Z")])
        for col, key in (("ZPVE_Ha", "zpve"), ("U0_Ha", "U0"), ("U_Ha", "U"), ("H_Ha", "H"), ("G_Ha", "G"),
                         ("Cv_cal_per_molK", "Cv")):
            assert ATOMREF[z][key] == float(r[header.index(col)])


def test_methane_u0_atomization_by_hand(qm9):
    i = row_of(qm9, 1)
    assert sorted(qm9.elements[qm9.ptr[i]:qm9.ptr[i + 1]].tolist()) == [1, 1, 1, 1, 6]
    u0_ha = qm9.properties[i, list(qm9.property_names).index("U0")]
    assert u0_ha == pytest.approx(-40.478930)  # dsgdb9nsd_000001.xyz
    by_hand = (u0_ha - (REF["U0"][6] + 4 * REF["U0"][1])) * HA_TO_EV
    assert by_hand == pytest.approx(-17.1723, abs=1e-3)
    assert target_values(qm9, "U0")[i] == pytest.approx(by_hand, abs=1e-9)


def test_atomization_energies_of_a_molecule_with_c_n_o_h(qm9):
    names = list(qm9.property_names)
    counts = [np.bincount(qm9.elements[qm9.ptr[i]:qm9.ptr[i + 1]], minlength=10) for i in range(len(qm9))]
    i = next(k for k, c in enumerate(counts) if c[1] and c[6] and c[7] and c[8])
    c = counts[i]
    for name in ("U0", "U", "H", "G"):
        refs = sum(c[z] * REF[name][z] for z in (1, 6, 7, 8, 9))
        by_hand = (qm9.properties[i, names.index(name)] - refs) * HA_TO_EV
        assert target_values(qm9, name)[i] == pytest.approx(by_hand, abs=1e-9)
    every = target_values(qm9, "U0")
    assert np.all(every < 0) and np.all(every > -120)  # atomization energies are negative, tens of eV


def test_unit_conversions(qm9):
    names = list(qm9.property_names)
    for name in ("homo", "lumo", "gap", "zpve"):
        np.testing.assert_allclose(target_values(qm9, name), qm9.properties[:, names.index(name)] * HA_TO_EV, rtol=1e-12)
    for name in ("mu", "alpha", "r2", "Cv"):
        np.testing.assert_array_equal(target_values(qm9, name), qm9.properties[:, names.index(name)])
    i = row_of(qm9, 1)
    assert target_values(qm9, "gap")[i] == pytest.approx(0.5048 * HA_TO_EV)  # methane gap 13.74 eV
    assert len(TARGET_NAMES) == 12


def test_unknown_target_and_unlabelled_data(qm9):
    with pytest.raises(ValueError) as exc:
        target_values(qm9, "u0")
    assert "did you mean 'U0'" in str(exc.value)
    assert "valid targets: mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, Cv" in str(exc.value)
    with pytest.raises(ValueError, match="unknown target 'A'"):
        target_values(qm9, "A")  # a stored property, but not one of the 12 targets
    bare = ConformerSet.from_records([ConformerRecord(elements=[6, 1, 1, 1, 1], coords=np.eye(5, 3), name="m")])
    with pytest.raises(ValueError, match="the data has no labels for target 'gap'"):
        target_values(bare, "gap")


# --------------------------------------------------------------------------- model, weights, freezing
def test_pretrained_encoder_is_copied_exactly_and_heads_match_scratch(tiny_checkpoint):
    ckpt = torch.load(tiny_checkpoint, weights_only=True)
    pre = PropertyModel.from_autoencoder(ckpt, "gap", seed=3)
    scratch = PropertyModel.from_scratch(Config.from_dict(ckpt["config"]).model, "gap", seed=3)
    reference = encoder_state(ckpt)
    assert set(reference) == set(pre.encoder.state_dict())
    for k, v in pre.encoder.state_dict().items():
        assert torch.equal(v, reference[k]), k
    assert not all(torch.equal(v, reference[k]) for k, v in scratch.encoder.state_dict().items())
    for (k, a), (_, b) in zip(pre.head.state_dict().items(), scratch.head.state_dict().items()):
        assert torch.equal(a, b), k  # same seed → same head: the two inits differ only in the encoder
    assert pre.pooling == "mean" and PropertyModel.from_scratch(pre.config, "U0").pooling == "sum"


def test_freeze_encoder_keeps_encoder_and_trains_head(frozen_run, ae_checkpoint):
    ckpt = torch.load(ae_checkpoint, weights_only=True)
    saved = torch.load(frozen_run.out_dir / "finetuned.pt", weights_only=True)
    assert saved["format"] == PROPERTY_FORMAT
    for k, v in encoder_state(ckpt).items():
        assert torch.equal(saved["model"][f"encoder.{k}"], v), k
    initial = PropertyModel.from_autoencoder(ckpt, "U0", seed=0).head.state_dict()
    assert any(not torch.equal(saved["model"][f"head.{k}"], v) for k, v in initial.items())
    assert frozen_run.result["frozen"] is True and frozen_run.result["init"] == "pretrained"


def test_unfrozen_run_changes_the_encoder(u0_run, ae_checkpoint):
    ckpt = torch.load(ae_checkpoint, weights_only=True)
    state = u0_run.model.encoder.state_dict()
    changed = [k for k, v in encoder_state(ckpt).items() if not torch.equal(state[k], v)]
    assert any(k.startswith("blocks.") for k in changed)


def test_short_run_lowers_validation_mae(u0_run):
    rows = list(csv.DictReader(open(u0_run.out_dir / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    val = [float(r["val_mae"]) for r in rows]
    # measured over 3 checkpoint seeds x 3 run seeds: min(val[1:]) / val[0] between 0.30 and 0.51
    assert min(val[1:]) < 0.75 * val[0] and val[-1] < val[0], val
    res = u0_run.result
    assert res["val_mae_target_unit"] == pytest.approx(min(val))  # best epoch restored
    assert res["best_epoch"] == 1 + int(np.argmin(val))


def test_run_artefacts(u0_run, ae_checkpoint, qm9):
    out = u0_run.out_dir
    for name in ("metrics.csv", "result.json", "predictions.csv", "finetuned.pt", "learning_curve.png"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*tmp*"))
    res = json.loads((out / "result.json").read_text())
    for key in ("target", "unit", "test_mae", "test_mae_target_unit", "n_train", "n_val", "n_test", "fraction",
                "init", "frozen", "seed", "epochs_run", "wall_seconds", "pretrained_sha256"):
        assert key in res, key
    assert res["unit"] == "eV" and res["report_unit"] == "meV"
    assert res["test_mae"] == pytest.approx(1000 * res["test_mae_target_unit"])
    from molgiae.api import file_sha256

    assert res["pretrained_sha256"] == file_sha256(ae_checkpoint)
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    assert set(preds[0]) == {"name", "key", "split", "target", "prediction"}
    by_split = {s: [r for r in preds if r["split"] == s] for s in ("train", "val", "test")}
    assert [len(by_split[s]) for s in ("train", "val", "test")] == [res["n_train"], res["n_val"], res["n_test"]]
    test_mae = np.mean([abs(float(r["target"]) - float(r["prediction"])) for r in by_split["test"]])
    assert test_mae == pytest.approx(res["test_mae_target_unit"])
    # the pretraining run's molecule-level split: no test molecule was trained on
    cfg = Config.from_dict(torch.load(ae_checkpoint, weights_only=True)["config"])
    from molgiae.data.split import split_ids

    expected = split_ids(qm9.keys, cfg.train.val_fraction, cfg.train.test_fraction, cfg.train.split_seed)
    assert sorted(int(r["key"]) for r in by_split["test"]) == sorted(qm9.keys[expected["test"]].tolist())
    assert not {r["key"] for r in by_split["train"]} & {r["key"] for r in by_split["test"]}


def test_saved_model_reloads_with_weights_only_and_predicts_the_same(u0_run, qm9_fixture_npz):
    path = u0_run.out_dir / "finetuned.pt"
    raw = torch.load(path, weights_only=True)
    assert raw["property"]["target"] == "U0" and raw["property"]["pooling"] == "sum"
    assert ModelConfig(**{**raw["config"]["model"]}).features == 16
    predictor = load_predictor(path)
    saved = {r["name"]: float(r["prediction"]) for r in csv.DictReader(open(u0_run.out_dir / "predictions.csv"))}
    records = [r for r in iter_records(qm9_fixture_npz) if r.name in saved][:40]
    again = predictor.predict_records(records)
    np.testing.assert_allclose(again, [saved[r.name] for r in records], rtol=1e-5, atol=1e-5)


def test_fraction_subsets_are_seeded_and_nested(qm9):
    y = target_values(qm9, "U0")
    tc = TrainConfig(val_fraction=0.2, test_fraction=0.2)
    full, _ = finetune_splits(qm9, y, tc)
    half, _ = finetune_splits(qm9, y, tc, fraction=0.5, seed=4)
    fifth, _ = finetune_splits(qm9, y, tc, fraction=0.2, seed=4)
    assert len(half["train"]) == round(0.5 * len(full["train"]))
    assert set(fifth["train"]) <= set(half["train"]) <= set(full["train"])
    assert np.array_equal(half["val"], full["val"]) and np.array_equal(half["test"], full["test"])
    assert not np.array_equal(finetune_splits(qm9, y, tc, fraction=0.5, seed=5)[0]["train"], half["train"])
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\]"):
            finetune(qm9, "U0", "/nonexistent", scratch=True, fraction=bad, quiet=True)


def test_compare_runs_both_inits_on_identical_splits(qm9, ae_checkpoint, tmp_path):
    rows = compare(qm9, "gap", tmp_path, ae_checkpoint, seeds=[0], epochs=1, batch_size=32, device="cpu", quiet=True)
    assert [r["init"] for r in rows] == ["pretrained", "scratch"]
    assert rows[0]["n_train"] == rows[1]["n_train"] and rows[0]["n_test"] == rows[1]["n_test"]
    for name in ("compare.csv", "compare.md", "compare.png"):
        assert (tmp_path / name).is_file()
    assert "pretrained test MAE" in (tmp_path / "compare.md").read_text()
    a = json.loads((tmp_path / "pretrained-seed0" / "result.json").read_text())
    b = json.loads((tmp_path / "scratch-seed0" / "result.json").read_text())
    assert b["init"] == "scratch" and b["pretrained_sha256"] is None and b["architecture_sha256"] == a["pretrained_sha256"]


# --------------------------------------------------------------------------- CLI
def test_cli_finetune_writes_a_run(qm9_fixture_npz, ae_checkpoint, tmp_path):
    out = tmp_path / "run"
    res = cli("finetune", "--target", "gap", "--data", qm9_fixture_npz, "--out", out, "--pretrained", ae_checkpoint,
              "--epochs", 2, "--fraction", 0.5, "--freeze-encoder", "--device", "cpu", "--quiet")
    assert res.exit_code == 0, res.output
    assert "gap: test MAE" in res.stdout and "meV" in res.stdout
    result = json.loads((out / "result.json").read_text())
    assert result["fraction"] == 0.5 and result["frozen"] and result["epochs_run"] == 2
    assert result["n_train"] == round(0.5 * result["n_train_split"])


def test_cli_wrong_target(qm9_fixture_npz, ae_checkpoint, tmp_path):
    res = cli("finetune", "--target", "energy", "--data", qm9_fixture_npz, "--out", tmp_path / "x",
              "--pretrained", ae_checkpoint, "--quiet")
    assert res.exit_code == 1
    assert "unknown target 'energy'" in res.stderr
    assert "mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, Cv" in res.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fraction", ["0", "1.5", "-0.2"])
def test_cli_fraction_outside_unit_interval(qm9_fixture_npz, ae_checkpoint, tmp_path, fraction):
    res = cli("finetune", "--target", "U0", "--data", qm9_fixture_npz, "--out", tmp_path / "x",
              "--pretrained", ae_checkpoint, "--fraction", fraction, "--quiet")
    assert res.exit_code == 1
    assert "--fraction must be in (0, 1]" in res.stderr


def test_cli_data_without_labels(qm9, ae_checkpoint, tmp_path):
    recs = [qm9.record(i) for i in range(4)]
    sdf = write_sdf(tmp_path / "unlabelled.sdf", [(r.elements, r.coords, r.name) for r in recs])
    res = cli("finetune", "--target", "U0", "--data", sdf, "--out", tmp_path / "x", "--pretrained", ae_checkpoint,
              "--quiet")
    assert res.exit_code == 1
    assert "the data has no labels for target 'U0'" in res.stderr


def test_cli_needs_a_checkpoint_unless_scratch(qm9_fixture_npz, tmp_path, monkeypatch):
    monkeypatch.setenv("MOLGIAE_DEFAULT_MODEL", str(tmp_path / "no-default-model.pt"))
    res = cli("finetune", "--target", "U0", "--data", qm9_fixture_npz, "--out", tmp_path / "x", "--quiet")
    assert res.exit_code == 1
    assert "default model is missing" in res.stderr and "--scratch" in res.stderr
    res = cli("finetune", "--target", "U0", "--data", qm9_fixture_npz, "--out", tmp_path / "x",
              "--pretrained", tmp_path / "nope.pt")
    assert res.exit_code == 1 and "checkpoint not found" in res.stderr


def test_cli_predict_writes_csv_and_skips_bad_records(frozen_run, qm9, tmp_path):
    good = [qm9.record(i) for i in (0, 5)]
    chlorine = (np.array([6, 17, 1, 1, 1]), np.array([[0, 0, 0], [1.78, 0, 0], [-0.36, 1.03, 0],
                                                      [-0.36, -0.51, 0.89], [-0.36, -0.51, -0.89]]), "CH3Cl")
    sdf = write_sdf(tmp_path / "in.sdf", [(good[0].elements, good[0].coords, "first"), chlorine,
                                          (good[1].elements, good[1].coords, "second")])
    out = tmp_path / "pred.csv"
    res = cli("predict", "--model", frozen_run.out_dir / "finetuned.pt", sdf, "-o", out, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "skipped:" in res.stderr and "CH3Cl" in res.stderr and "Cl outside the model's vocabulary" in res.stderr
    assert "for 2 conformers from 1 file; 1 failed" in res.stderr
    rows = list(csv.DictReader(open(out)))
    column = prediction_column("U0")
    assert column == "U0_eV"
    assert list(rows[0]) == ["source", "record", "name", "smiles", "n_atoms", column, "in_domain", "note"]
    assert [r["in_domain"] for r in rows] == ["true", "true"]
    assert [(r["name"], r["record"], int(r["n_atoms"])) for r in rows] == [
        ("first", "0", good[0].n_atoms), ("second", "2", good[1].n_atoms)]
    expected = load_predictor(frozen_run.out_dir / "finetuned.pt").predict_records(good)
    np.testing.assert_allclose([float(r[column]) for r in rows], expected, rtol=1e-5)
    assert prediction_column("Cv") == "Cv_cal_per_mol_K"


def test_cli_predict_flags_molecules_outside_the_training_domain(frozen_run, qm9, tmp_path):
    """A 200-atom alkane gets a number (an extrapolation), but the CSV and stderr say so."""
    chain = Chem.MolFromSmiles("C" * 66)  # C66H134: 200 atoms, QM9 has at most 29
    conf = Chem.Conformer(66)
    for i in range(66):  # all-trans zig-zag (ETKDG gives up on this size)
        conf.SetAtomPosition(i, (1.26 * i, 0.89 * (i % 2), 0.0))
    conf.Set3D(True)
    chain.AddConformer(conf)
    alkane = Chem.AddHs(chain, addCoords=True)
    assert alkane.GetNumAtoms() == 200
    alkane.SetProp("_Name", "C66H134")
    small = qm9.record(0)
    sdf = write_sdf_blocks(tmp_path / "in.sdf", [Chem.MolToMolBlock(alkane), molblock(small.elements, small.coords, "ok")])
    out = tmp_path / "pred.csv"
    res = cli("predict", "--model", frozen_run.out_dir / "finetuned.pt", sdf, "-o", out, "--device", "cpu", "-q")
    assert res.exit_code == 0, res.output
    assert "1 of 2 predictions are for molecules outside the training domain" in res.stderr
    rows = list(csv.DictReader(open(out)))
    assert [r["in_domain"] for r in rows] == ["false", "true"]
    assert "200 atoms, training molecules had" in rows[0]["note"] and rows[1]["note"] == ""
    domain = load_predictor(frozen_run.out_dir / "finetuned.pt").domain
    assert domain["n_atoms_max"] <= 29 and set(domain["elements"]) <= {1, 6, 7, 8, 9}


def test_cli_predict_nothing_valid_and_wrong_model(frozen_run, ae_checkpoint, tmp_path):
    bad = write_sdf(tmp_path / "bad.sdf", [(np.array([17, 17]), np.array([[0, 0, 0], [2.0, 0, 0]]), "Cl2")])
    out = tmp_path / "p.csv"
    res = cli("predict", "--model", frozen_run.out_dir / "finetuned.pt", bad, "-o", out, "--quiet")
    assert res.exit_code == 1 and "nothing was predicted" in res.stderr and not out.exists()
    res = cli("predict", "--model", ae_checkpoint, bad, "-o", out)
    assert res.exit_code == 1 and "not a fine-tuned molgiae property model" in res.stderr


def test_encoder_learning_rate_ratio_slows_only_the_encoder(qm9, ae_checkpoint, u0_run, tmp_path):
    """--encoder-lr-ratio: the encoder moves (much) less than at the full rate, the head as much."""
    slow = finetune(qm9, "U0", tmp_path, pretrained=ae_checkpoint, epochs=8, batch_size=8, lr=5e-3, patience=0,
                    seed=0, device="cpu", quiet=True, encoder_lr_ratio=0.01)
    start = encoder_state(torch.load(ae_checkpoint, weights_only=True))

    def encoder_move(run):
        state = run.model.encoder.state_dict()
        return max(float((state[k] - v).abs().max()) for k, v in start.items() if k.startswith("blocks."))

    assert encoder_move(slow) < 0.1 * encoder_move(u0_run)
    assert slow.result["encoder_lr_ratio"] == 0.01 and u0_run.result["encoder_lr_ratio"] == 1.0
    head0 = PropertyModel.from_autoencoder(torch.load(ae_checkpoint, weights_only=True), "U0", seed=0).head.state_dict()
    assert any(not torch.equal(slow.model.head.state_dict()[k], v) for k, v in head0.items())
    with pytest.raises(ValueError, match="encoder_lr_ratio"):
        finetune(qm9, "U0", tmp_path / "bad", pretrained=ae_checkpoint, epochs=1, quiet=True, encoder_lr_ratio=0.0)


# --------------------------------------------------------------------------- per-element reference
def test_element_offsets_recover_a_known_reference():
    """y = counts @ ref + noise: the ridge fit returns ref; an element no molecule has gets 0."""
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 9, size=(400, 5))
    counts[:, 4] = 0  # "F" absent
    ref = np.array([-0.6, -3.1, -2.2, -1.7, -5.0])
    y = counts @ ref + rng.normal(0, 0.01, 400)
    delta = fit_element_offsets(counts.astype(float), y)
    np.testing.assert_allclose(delta[:4], ref[:4], atol=2e-3)
    assert delta[4] == 0.0


def test_element_counts_in_vocabulary_order_and_vocabulary_errors(qm9, ae_checkpoint, tmp_path):
    """The fit's counts come from quality.element_counts in vocabulary order; an element outside
    the vocabulary stops the run before any fit (finetune's vocabulary check; alpha: an extensive
    target without QM9 atom energies, which would refuse S first)."""
    counts = element_counts([np.array([6, 1, 1, 1, 1]), np.array([8, 1, 1]), np.array([9, 6, 9])],
                            [1, 6, 7, 8, 9])
    np.testing.assert_array_equal(counts, [[4, 1, 0, 0, 0], [2, 0, 0, 1, 0], [0, 1, 0, 0, 2]])
    records = [qm9.record(i) for i in range(len(qm9))]
    sulfur = records[0].elements.copy()
    sulfur[-1] = 16
    records[0] = dataclasses.replace(records[0], elements=sulfur)
    with pytest.raises(ValueError, match=r"elements \[16\]"):
        finetune(ConformerSet.from_records(records, keys=qm9.keys), "alpha", tmp_path / "s", pretrained=ae_checkpoint,
                 epochs=1, quiet=True, device="cpu")


def test_element_reference_beats_the_per_atom_mean(qm9):
    """On real QM9 U0 labels the composition fit alone (t̂ = 0) predicts held-out molecules far
    better than n × the per-atom mean, and the standardised residual scale σ is smaller."""
    y = target_values(qm9, "U0")
    ids = np.arange(len(qm9))
    train, held = ids[:90], ids[90:]
    elements = [qm9.elements[qm9.ptr[i]:qm9.ptr[i + 1]] for i in ids]
    counts = element_counts(elements, [1, 6, 7, 8, 9])
    errors, sigmas = {}, {}
    for reference in ("element", "mean"):
        model = PropertyModel(ModelConfig(features=8), "U0")
        _, sigmas[reference] = model.set_standardisation(y[train], counts[train], reference)
        mols = batch_from_set(qm9, held)
        offset = model.unstandardise(torch.zeros(len(held)), mols).numpy()
        errors[reference] = np.mean(np.abs(offset - y[held]))
    assert errors["element"] < 0.5 * errors["mean"], errors
    assert sigmas["element"] < 0.5 * sigmas["mean"], sigmas


def test_result_records_the_reference(frozen_run, u0_run):
    res = frozen_run.result
    assert res["atom_reference"] == "element" and u0_run.result["atom_reference"] == "mean"
    ref = res["element_reference"]
    assert set(ref) == {1, 6, 7, 8, 9} and len(set(ref.values())) == 5  # fitted: one value per element
    assert list(u0_run.result["element_reference"].values()) == [pytest.approx(u0_run.result["target_mean"])] * 5


def test_checkpoint_without_element_reference_predicts_n_times_mean(u0_run, qm9_fixture_npz, tmp_path):
    """A property checkpoint written before the per-element fit (no element_reference) loads and
    predicts exactly what a per-atom-mean model predicts."""
    raw = torch.load(u0_run.out_dir / "finetuned.pt", weights_only=True)
    del raw["model"]["element_reference"]
    del raw["property"]["element_reference"]
    torch.save(raw, tmp_path / "old.pt")
    records = list(iter_records(qm9_fixture_npz))[:20]
    np.testing.assert_allclose(load_predictor(tmp_path / "old.pt").predict_records(records),
                               load_predictor(u0_run.out_dir / "finetuned.pt").predict_records(records), rtol=1e-12)


def test_cli_atom_reference_value_is_checked(qm9_fixture_npz, ae_checkpoint, tmp_path):
    res = cli("finetune", "--target", "U0", "--data", qm9_fixture_npz, "--out", tmp_path / "x",
              "--pretrained", ae_checkpoint, "--atom-reference", "atoms", "--quiet")
    assert res.exit_code == 1
    assert "--atom-reference must be 'element' or 'mean', got 'atoms'" in res.stderr
    assert not (tmp_path / "x").exists()
