"""Fuzzing the readers and the embed run: seeded mutations of a valid multi-record SDF and XYZ
(tests/fuzzing.py). Never a traceback, every untouched record still embedded (same code), every
output readable. More cases: ``python bench/fuzz_inputs.py --cases 5000``."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from tests import fuzzing

CASES = int(os.environ.get("MOLGIAE_FUZZ_CASES", "120"))  # per format


@pytest.fixture(scope="module")
def mols():
    return fuzzing.molecules()


@pytest.mark.parametrize("suffix", [".sdf", ".xyz"])
def test_mutated_files_lose_nothing_untouched(tiny_model, mols, tmp_path, suffix):
    from molgiae.embedding import embed_to_hdf5

    text, spans = (fuzzing.sdf_text if suffix == ".sdf" else fuzzing.xyz_text)(mols)
    clean = tmp_path / f"clean{suffix}"
    clean.write_text(text)
    embed_to_hdf5(tiny_model, [clean], tmp_path / "clean.h5", batch_size=4)
    with h5py.File(tmp_path / "clean.h5") as f:
        assert f["errors/reason"].shape[0] == 0 and f["embedding"].shape[0] == len(mols)
        reference = dict(zip(f["name"].asstr()[:], f["embedding"][:]))
    rng = np.random.default_rng(14 + len(suffix) + ord(suffix[1]))
    kinds: dict[str, int] = {}
    for _ in range(CASES):
        case = fuzzing.mutate(text, spans, rng)
        fuzzing.check_case(tiny_model, case, suffix, tmp_path, reference)
        kinds[case.kind] = kinds.get(case.kind, 0) + 1
    assert set(kinds) == set(fuzzing.KINDS)
