"""Does pretraining help? Fine-tune the autoencoder's encoder vs the same model from scratch.

    python bench/finetune_pretrain_vs_scratch.py --pretrained runs/default/best.pt \
        --data qm9_full_part1of2.npz qm9_full_part2of2.npz \
        [--targets U0 gap] [--fractions 0.01 0.05] [--large] [--seeds 0 1 2] [--epochs 30] \
        [--max-test 2000] [--max-val 1000] [--threads 1] [--out DIR] [--md FILE]

For every target and training fraction, runs ``molgiae.finetune.compare`` (pretrained and
scratch on the pretraining run's split, identical training subsets, head initialisation,
batch order and hyperparameters, for each seed) and prints a table of the test MAE
(mean ± sample std over seeds, meV for energies); the same table goes to a Markdown file.
``--large`` adds fraction 0.25. ``--max-test`` evaluates on a fixed, seeded subset of the test
split (the same molecules for every run). Not a test.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from molgiae.api import file_sha256
from molgiae.checkpoint import load_checkpoint
from molgiae.data.loading import load_conformers
from molgiae.data.targets import get_target
from molgiae.finetune.compare import COMPARE_COLUMNS, compare, summarize
from molgiae.outputs import atomic_csv
from molgiae.train.distributed import select_device

QM9 = Path(__file__).resolve().parents[2] / "shared" / "data" / "qm9"


def fmt(mean: float, std: float) -> str:
    return f"{mean:.1f}" if not np.isfinite(std) else f"{mean:.1f} ± {std:.1f}"


def table(summary: list[dict]) -> list[str]:
    lines = ["| target | fraction | n_train | seeds | pretrained test MAE | scratch test MAE | scratch / pretrained | unit |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    keyed: dict[tuple, dict] = {}
    for s in summary:
        keyed.setdefault((s["target"], s["fraction"]), {})[s["init"]] = s
    for (target, fraction), d in keyed.items():
        p, s = d["pretrained"], d["scratch"]
        ratio = s["test_mae_mean"] / p["test_mae_mean"] if p["test_mae_mean"] > 0 else float("nan")
        lines.append(f"| {target} | {fraction:g} | {p['n_train']} | {p['n_seeds']} | "
                     f"{fmt(p['test_mae_mean'], p['test_mae_std'])} | {fmt(s['test_mae_mean'], s['test_mae_std'])} | "
                     f"{ratio:.2f} | {p['report_unit']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrained", type=Path, required=True, help="autoencoder checkpoint (e.g. runs/default/best.pt)")
    ap.add_argument("--data", nargs="+", default=[str(QM9 / f"qm9_full_part{k}of2.npz") for k in (1, 2)])
    ap.add_argument("--targets", nargs="+", default=["U0", "gap"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.01, 0.05])
    ap.add_argument("--large", action="store_true", help="also fraction 0.25")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--patience", type=int, default=10)
    ap.add_argument("--freeze-encoder", action="store_true", help="train only the head (both inits)")
    ap.add_argument("--encoder-lr-ratio", type=float, default=1.0,
                    help="pretrained encoder's learning rate / the head's (scratch: 1)")
    ap.add_argument("--atom-reference", choices=["element", "mean"], default="element",
                    help="extensive targets: per-element offsets fitted on the training labels, or one per-atom mean")
    ap.add_argument("--max-test", type=int, default=2000, help="test on a fixed subset of N molecules (0 = all)")
    ap.add_argument("--max-val", type=int, default=1000, help="validate on a fixed subset of N molecules (0 = all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", type=Path, default=Path("runs/finetune_bench"))
    ap.add_argument("--md", type=Path, default=None, help="Markdown report [OUT/finetune_pretrain_vs_scratch.md]")
    args = ap.parse_args()

    fractions = list(args.fractions) + ([0.25] if args.large and 0.25 not in args.fractions else [])
    for t in args.targets:
        get_target(t)
    for f in fractions:
        if not 0 < f <= 1:
            ap.error(f"fractions must be in (0, 1], got {f}")
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    ckpt = load_checkpoint(args.pretrained)
    sha = file_sha256(args.pretrained)
    meta = ckpt.get("metadata", {})
    t_load = time.time()
    data = load_conformers(args.data)
    print(f"{len(data)} molecules loaded in {time.time() - t_load:.1f} s; checkpoint {args.pretrained} "
          f"(sha256 {sha[:12]}, epochs_done {meta.get('epochs_done', '?')}, val_rmsd {meta.get('val_rmsd', '?')})",
          file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.time()
    for target in args.targets:
        for fraction in fractions:
            t1 = time.time()
            part = compare(data, target, args.out / f"{target}-f{fraction:g}", args.pretrained, seeds=args.seeds,
                           freeze_encoder=args.freeze_encoder, encoder_lr_ratio=args.encoder_lr_ratio,
                           atom_reference=args.atom_reference, fraction=fraction, epochs=args.epochs, device=args.device,
                           batch_size=args.batch_size, lr=args.lr, patience=args.patience, max_val=args.max_val,
                           max_test=args.max_test, quiet=True)
            rows += part
            for r in part:
                print(f"{target:>4} fraction {fraction:<5g} seed {r['seed']} {r['init']:>10}: test MAE "
                      f"{r['test_mae']:9.1f} {r['report_unit']}  (n_train {r['n_train']}, best epoch "
                      f"{r['best_epoch']}/{r['epochs_run']}, {r['wall_seconds']:.0f} s)", file=sys.stderr)
            print(f"  [{target} {fraction:g} done in {time.time() - t1:.0f} s]", file=sys.stderr)
    wall = time.time() - t0
    atomic_csv(args.out / "runs.csv", COMPARE_COLUMNS, rows)
    summary = summarize(rows)
    lines = table(summary)
    print("\n".join(lines))
    hw = (torch.cuda.get_device_name(device) if device.type == "cuda"
          else f"CPU {platform.processor() or platform.machine()}, {args.threads} thread(s)")
    n_test = rows[0]["n_test"] if rows else 0
    n_val = rows[0]["n_val"] if rows else 0
    md = [
        "# Fine-tuning: pretrained encoder vs from scratch",
        "",
        f"Command: `python {' '.join(sys.argv)}`",
        "",
        f"- pretrained checkpoint: `{args.pretrained}` (sha256 `{sha}`; pretraining epochs done: "
        f"{meta.get('epochs_done', '?')}, val rmsd {meta.get('val_rmsd', '?')})",
        f"- data: {', '.join(Path(p).name for p in args.data)} ({len(data)} molecules); split of the pretraining "
        f"run (val {ckpt['config']['train']['val_fraction']}, test {ckpt['config']['train']['test_fraction']}, "
        f"split seed {ckpt['config']['train']['split_seed']})",
        f"- test set: {n_test} molecules{' (fixed subset, --max-test)' if args.max_test else ''}; validation "
        f"(early stopping): {n_val} molecules",
        f"- seeds {args.seeds}; {args.epochs} epochs, batch {args.batch_size}, AdamW lr {args.lr} (warm-up + cosine), "
        f"L1 on standardised targets, patience {args.patience}; frozen encoder: {args.freeze_encoder}; "
        f"pretrained encoder lr ratio {args.encoder_lr_ratio}; atom reference {args.atom_reference}",
        f"- hardware: {hw}; total wall time {wall / 60:.1f} min",
        "",
        "Test MAE, mean ± sample std over seeds:",
        "",
        *lines,
        "",
        "Per-run results: `runs.csv`; learning curves: `<target>-f<fraction>/compare.png`.",
        "",
    ]
    md_path = args.md or args.out / "finetune_pretrain_vs_scratch.md"
    md_path.write_text("\n".join(md))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {md_path} ({wall / 60:.1f} min)", file=sys.stderr)


if __name__ == "__main__":
    main()
