"""Embedding quality of any checkpoint, one printed line per figure (the ``embedding`` section
of ``molgiae evaluate``, see molgiae/quality.py).

    python bench/embedding_quality.py --model CKPT [--n 1000] [--jacobian 200] [--probe-fit 1000]
        [--probe-test 4000] [--ensembles ENSEMBLES.npz] [--qm9 PART1 PART2] [--json OUT.json]

Molecules: the checkpoint's held-out test split (its ``test_keys``; else the split of its config)
of the QM9 files. A seeded permutation of them is encoded once; its first ``--n`` give the
noise robustness (σ = 0.01, 0.05, 0.1 Å), its first ``--jacobian`` the ‖∂z/∂x‖₂ distribution,
its first ``--probe-fit + --probe-test`` the ridge probe (z vs element counts; U0, gap, homo in meV,
mu in D, alpha in a0^3, Cv in cal/(mol K)). ``--ensembles``: a conformer-ensemble npz for the
Spearman ρ and sibling-NN rate. Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

QM9 = ["/work/shared/data/qm9/qm9_full_part1of2.npz", "/work/shared/data/qm9/qm9_full_part2of2.npz"]


def test_rows(ckpt: dict, data, config) -> tuple[np.ndarray, str]:
    """Rows of ``data`` in the checkpoint's test split, and where that split came from."""
    from molgiae.data.split import split_ids

    if "test_keys" in ckpt:
        keys = np.asarray(ckpt["test_keys"].cpu().numpy() if hasattr(ckpt["test_keys"], "cpu") else ckpt["test_keys"])
        return np.flatnonzero(np.isin(data.keys, keys)), f"checkpoint test_keys ({len(keys)})"
    tc = config.train
    return split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)["test"], "config split"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--qm9", nargs="+", default=QM9)
    ap.add_argument("--n", type=int, default=1000, help="molecules for noise robustness")
    ap.add_argument("--jacobian", type=int, default=200, help="molecules for the Jacobian norms")
    ap.add_argument("--iterations", type=int, default=20, help="power iterations")
    ap.add_argument("--probe-fit", type=int, default=1000)
    ap.add_argument("--probe-test", type=int, default=4000)
    ap.add_argument("--ensembles", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="write every figure here too")
    args = ap.parse_args()

    import torch

    from molgiae.api import default_checkpoint
    from molgiae.data.conformers import load_qm9_npz
    from molgiae.data.loading import load_conformers
    from molgiae.quality import embedding_metrics, summary_lines
    from molgiae.checkpoint import load_checkpoint, model_from_checkpoint

    torch.set_num_threads(args.threads)
    start, cpu = time.perf_counter(), time.process_time()
    path = args.model or default_checkpoint()
    ckpt = load_checkpoint(path)
    model, config = model_from_checkpoint(ckpt)
    model.eval()
    data = load_qm9_npz(args.qm9)
    rows, where = test_rows(ckpt, data, config)
    vocab = np.isin(data.elements, config.model.elements)
    ok = np.add.reduceat((~vocab).astype(np.int64), data.ptr[:-1]) == 0
    rows = rows[ok[rows]]
    ens = load_conformers([args.ensembles]) if args.ensembles else None
    log = lambda s: print(f"  [{s}]", file=sys.stderr)  # noqa: E731
    print(f"model {path}; {len(rows)} test molecules ({where}); loaded in {time.perf_counter() - start:.1f} s")
    section = embedding_metrics(model, data, rows, ens, n_noise=args.n, n_jacobian=args.jacobian,
                                n_fit=args.probe_fit, n_test=args.probe_test, seed=args.seed,
                                iterations=args.iterations, log=log)
    for line in summary_lines(section):
        print(line)
    print(f"total {time.perf_counter() - start:.1f} s wall, {time.process_time() - cpu:.1f} s CPU "
          f"({args.threads} thread(s))")
    if args.json:
        section = {"model": str(path), "test_split": where, **section}
        args.json.write_text(json.dumps(section, indent=2) + "\n")


if __name__ == "__main__":
    main()
