"""Representation study: train design variants for the same number of steps on the same QM9
subset, keep each run's checkpoint for `bench/embedding_quality.py`.

    python bench/representation_study.py --out runs/study --molecules 10000 --epochs 8 \
        --variant name=baseline,update_product=plain,code_pooling=mean \
        --variant name=full,coord_noise=0.1

Every variant starts from the same seed and sees the same batches; equal steps (not equal wall
time) so that other jobs on the machine do not bias the comparison; the CPU seconds of each run
are printed beside it. Variant fields are ModelConfig / TrainConfig fields. Not a test.
"""
import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from molgiae.config import Config
from molgiae.data.conformers import load_qm9_npz
from molgiae.data.split import split_ids
from molgiae.metrics import score_molecules
from molgiae.checkpoint import load_checkpoint, model_from_checkpoint
from molgiae.training import train
from time_to_quality import parse_variant as config_of  # bench/ is on sys.path when run as a script

QM9 = ["../shared/data/qm9/qm9_full_part1of2.npz", "../shared/data/qm9/qm9_full_part2of2.npz"]


def parse_variant(text: str) -> tuple[str, Config]:
    """``name=NAME,key=value,...`` → (name, config); the fields as in ``time_to_quality.py``,
    with 200 warm-up steps."""
    items = [item for item in text.split(",") if item]
    names = [item.split("=", 1)[1] for item in items if item.startswith("name=")]
    fields = ",".join(item for item in items if not item.startswith("name="))
    return (names[-1] if names else text), config_of(fields, warmup_steps=200)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=QM9)
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--molecules", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_qm9_npz(args.data)
    splits = split_ids(data.keys, 0.05, 0.05, 0)
    rng = np.random.default_rng(0)
    train_ids = np.sort(rng.choice(splits["train"], args.molecules, replace=False))
    val_ids = np.sort(rng.choice(splits["val"], 500, replace=False))
    for text in args.variant or ["name=default"]:
        name, cfg = parse_variant(text)
        cfg.train.epochs = args.epochs
        cfg.train.max_val_molecules = 0
        out = Path(args.out) / name
        t0, c0 = time.time(), time.process_time()
        state = train(cfg, data, {"train": train_ids, "val": val_ids[:0], "test": splits["test"]}, out,
                      quiet=True, log=lambda m: None)
        cpu = time.process_time() - c0
        model, _ = model_from_checkpoint(load_checkpoint(out / "last.pt"))
        s = score_molecules(model, data, val_ids, 64, aligned=True)
        print(json.dumps({
            "variant": name, "config": text, "molecules": args.molecules, "steps": state.step,
            "rmsd_mean": round(float(s.rmsd.mean()), 3), "rmsd_aligned_mean": round(float(np.nanmean(s.rmsd_aligned)), 3),
            "element_accuracy": round(float(s.element_accuracy.mean()), 4), "wall_s": round(time.time() - t0),
            "cpu_s": round(cpu), "checkpoint": str(out / "last.pt"),
        }), flush=True)


if __name__ == "__main__":
    main()
