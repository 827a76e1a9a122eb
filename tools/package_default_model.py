"""Package a training run as the bundled default model (maintainers' tool, not installed).

    python tools/package_default_model.py RUN_DIR --data QM9_PART1 QM9_PART2 [--which last|best]

Evaluates the run's checkpoint on its split's full test set with the same code as
``molgiae evaluate --split test`` (including its ``embedding`` section, from
:mod:`molgiae.quality`; ``--ensembles`` adds conformer awareness, ``--embedding-json`` takes the
section from a ``bench/embedding_quality.py --json`` file instead of measuring it) and writes ``molgiae/pretrained/molgiae-qm9.pt``: weights,
config, metadata (data, split, epochs, wall time, hardware, parameters, test metrics), the
test molecules' QM9 indices, and the optimizer/scheduler/run state of ``last.pt`` so that
training can be resumed from the shipped file (copy it to RUN/last.pt, then
``molgiae train --resume``).
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from molgiae.checkpoint import atomic_torch_save, load_checkpoint, model_from_checkpoint
from molgiae.data.conformers import load_qm9_npz
from molgiae.data.loading import load_conformers
from molgiae.data.split import split_ids
from molgiae.metrics import invariance_error, score_molecules, summarize
from molgiae.quality import embedding_metrics

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--which", default="last", choices=["last", "best"])
    ap.add_argument("--out", type=Path, default=ROOT / "molgiae" / "pretrained" / "molgiae-qm9.pt")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--notes", default="")
    ap.add_argument("--name", default=None, help="model name in its card (default: the output file's stem)")
    ap.add_argument("--ensembles", type=Path, default=None, help="conformer-ensemble npz for the embedding section")
    ap.add_argument("--embedding-json", type=Path, default=None,
                    help="take the embedding section from this bench/embedding_quality.py --json output")
    ap.add_argument("--no-embedding-metrics", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.run / f"{args.which}.pt")
    last = load_checkpoint(args.run / "last.pt")
    model, config = model_from_checkpoint(ckpt)
    data = load_qm9_npz(args.data)
    tc = config.train
    test = split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)["test"]
    test = test[data.n_atoms[test] <= config.model.max_atoms]
    scores = score_molecules(model, data, test, 64, aligned=True)
    summary = summarize(scores, invariance_error(model, data, test[:64]))
    bad = np.argsort(-scores.rmsd)[:10]
    summary["worst"] = [
        {"qm9_index": int(data.keys[test[i]]), "smiles": str(data.smiles[test[i]]), "rmsd": float(scores.rmsd[i]),
         "rmsd_aligned": float(scores.rmsd_aligned[i]), "n_atoms": int(scores.n_atoms[i])} for i in bad
    ]
    by_size = {}
    for lo, hi in [(0, 12), (12, 16), (16, 20), (20, 30)]:
        m = (scores.n_atoms >= lo) & (scores.n_atoms < hi)
        if m.any():
            by_size[f"{lo}-{hi - 1} atoms"] = {"n": int(m.sum()), "rmsd_mean": float(scores.rmsd[m].mean()),
                                               "rmsd_aligned_mean": float(np.nanmean(scores.rmsd_aligned[m]))}
    summary["by_size"] = by_size
    if args.embedding_json:
        summary["embedding"] = json.loads(args.embedding_json.read_text())
    elif not args.no_embedding_metrics:
        ens = load_conformers([args.ensembles]) if args.ensembles else None
        summary["embedding"] = embedding_metrics(model, data, test, ens)
    meta = dict(ckpt["metadata"])
    meta.update(name=args.name or args.out.stem, test_metrics={k: v for k, v in summary.items() if k != "worst"},
                checkpoint_of=f"{args.which}.pt", notes=args.notes)
    packaged = {**ckpt, "metadata": meta}
    if args.which == "last":
        packaged.update(optimizer=last["optimizer"], scheduler=last["scheduler"],
                        run_state=last["run_state"], rng=last["rng"])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(packaged, args.out)
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
