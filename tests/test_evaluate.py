"""`molgiae evaluate` end to end on the QM9 fixture with the tiny checkpoint: the JSON summary
(keys and value ranges), --split, --limit and a clean failure. Other keys may be added to the
summary (e.g. embedding-quality figures); these tests only require the ones below."""
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from molgiae.cli import app
from molgiae.data.split import split_ids
from tests.equivariance import QM9_FIXTURE, fixture_set, write_tiny_checkpoint

BLOCK = ("n_molecules", "rmsd_mean", "rmsd_median", "element_accuracy", "rmsd_aligned_mean")


def evaluate(*args):
    return CliRunner().invoke(app, ["evaluate", "--data", str(QM9_FIXTURE), "--quiet", *map(str, args)])


def check_block(block: dict, n: int) -> None:
    assert block["n_molecules"] == n
    if n == 0:
        return
    for key in BLOCK[1:]:
        assert math.isfinite(block[key]), key
    assert 0.0 <= block["rmsd_median"] and 0.0 < block["rmsd_mean"] < 20.0  # Å; untrained model
    assert 0.0 <= block["element_accuracy"] <= 1.0
    assert 0.0 <= block["rmsd_aligned_mean"] <= block["rmsd_mean"] + 1e-4  # alignment can only help


@pytest.fixture(scope="module")
def summary(tiny_checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "summary.json"
    res = evaluate("--model", tiny_checkpoint, "--limit", 24, "--json", out)
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    assert json.loads(out.read_text()) == printed  # --json writes what is printed
    return printed


def test_summary_keys_and_ranges(summary, tiny_checkpoint):
    check_block(summary, 24)
    assert summary["model"] == str(tiny_checkpoint) and summary["split"] == "all"
    assert 0.0 <= summary["element_accuracy_atoms"] <= 1.0
    assert 0.0 <= summary["invariance_error"] < 1e-4  # fp32, z of order 1
    n_sym, n_asym = summary["symmetric"]["n_molecules"], summary["asymmetric"]["n_molecules"]
    assert n_sym + n_asym == 24
    check_block(summary["symmetric"], n_sym)
    check_block(summary["asymmetric"], n_asym)


def test_split_test_evaluates_the_checkpoints_test_molecules(tiny_checkpoint):
    data = fixture_set()
    test = split_ids(data.keys, 0.05, 0.05, 0)["test"]  # the tiny checkpoint's TrainConfig defaults
    assert 0 < len(test) < len(data)
    res = evaluate("--model", tiny_checkpoint, "--split", "test")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["split"] == "test"
    check_block(summary, len(test))


def test_nothing_to_evaluate_fails_cleanly(tmp_path):
    ckpt = write_tiny_checkpoint(tmp_path / "no_test.pt", test_fraction=0.0)
    res = evaluate("--model", ckpt, "--split", "test")
    assert res.exit_code != 0
    assert "no molecules to evaluate" in res.output
    assert not np.any([line.startswith("{") for line in res.stdout.splitlines()])
