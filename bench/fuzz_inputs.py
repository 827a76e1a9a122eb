"""Fuzz the readers and `embed` with many more seeded mutations than the test suite runs.

    python bench/fuzz_inputs.py --cases 5000 [--seed 0] [--model CKPT]

Same mutations and checks as tests/test_fuzz.py (tests/fuzzing.py): a bit flip, a truncation, a
duplicated or deleted line, or two swapped fields, one per case, of a valid 8-record SDF and
XYZ. Prints the cases per mutation kind, rows and error rows, and the first failure (if any)
with its seed, so it can be replayed. Default model: a tiny untrained one (the guarantees do
not depend on the weights).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=2000, help="cases per format")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()

    import h5py
    import torch

    from molgiae.api import load_model
    from molgiae.embedding import embed_to_hdf5
    from tests import fuzzing
    from tests.equivariance import write_tiny_checkpoint

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="molgiae-fuzz-"))
    model = load_model(args.model or write_tiny_checkpoint(work / "tiny.pt", seed=0, name="fuzz"))
    mols = fuzzing.molecules()
    failures = 0
    for suffix, make in ((".sdf", fuzzing.sdf_text), (".xyz", fuzzing.xyz_text)):
        text, spans = make(mols)
        (work / f"clean{suffix}").write_text(text)
        embed_to_hdf5(model, [work / f"clean{suffix}"], work / "clean.h5", batch_size=4)
        with h5py.File(work / "clean.h5") as f:
            reference = dict(zip(f["name"].asstr()[:], f["embedding"][:]))
        rng = np.random.default_rng([args.seed, ord(suffix[1])])
        kinds: dict[str, int] = {}
        rows = errors = 0
        t0 = time.time()
        for i in range(args.cases):
            case = fuzzing.mutate(text, spans, rng)
            kinds[case.kind] = kinds.get(case.kind, 0) + 1
            try:
                counts = fuzzing.check_case(model, case, suffix, work, reference)
            except Exception:  # noqa: BLE001 - report, keep the case
                failures += 1
                bad = work / f"failure_{suffix[1:]}_{i}{suffix}"
                bad.write_bytes(case.data)
                print(f"FAILURE {suffix} case {i} ({case.kind}), file kept at {bad}:\n{traceback.format_exc()}")
                continue
            rows += counts["rows"]
            errors += counts["errors"]
        dt = time.time() - t0
        print(f"{suffix}: {args.cases} cases in {dt:.1f} s ({1000 * dt / args.cases:.0f} ms each); "
              f"kinds {dict(sorted(kinds.items()))}; {rows} rows, {errors} error rows")
    print("all cases passed" if not failures else f"{failures} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
