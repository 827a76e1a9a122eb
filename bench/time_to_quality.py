"""Time-to-quality of design choices: validation rmsd reached after a fixed CPU budget.

    python bench/time_to_quality.py --minutes 5 --set overfit512|subset10k \
        --variant decoder=transformer --variant decoder=equivariant ...

``overfit512``: train and validate on the same fixed 512 QM9 molecules (can it fit?).
``subset10k``: train on a fixed 10k subset of the QM9 training split, validate on 500 unseen
molecules of its validation split (does it generalise?). Each variant is ``key=value`` pairs
(ModelConfig or TrainConfig fields, comma-separated), run one after another with one thread;
prints one line per variant. Not a test.
"""
import argparse
import dataclasses
import json
import tempfile
import time

import numpy as np
import torch

from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.conformers import load_qm9_npz
from molgiae.data.split import split_ids
from molgiae.metrics import score_molecules
from molgiae.checkpoint import load_checkpoint, model_from_checkpoint
from molgiae.training import train

QM9 = ["../shared/data/qm9/qm9_full_part1of2.npz", "../shared/data/qm9/qm9_full_part2of2.npz"]


def parse_variant(text: str, warmup_steps: int = 100) -> Config:
    """``key=value,...`` (ModelConfig or TrainConfig fields) over this bench's base config."""
    cfg = Config(ModelConfig(decoder="transformer"),
                 TrainConfig(batch_size=32, lr=1e-3, warmup_steps=warmup_steps, checkpoint_every=10**9))
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    for item in filter(None, text.split(",")):
        key, value = item.split("=")
        target = cfg.model if key in model_fields else cfg.train
        old = getattr(target, key)
        setattr(target, key, type(old)(value) if not isinstance(old, bool) else value.lower() in ("1", "true"))
    return Config.from_dict(cfg.to_dict())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=QM9)
    ap.add_argument("--set", default="subset10k", choices=["overfit512", "subset10k"])
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_qm9_npz(args.data)
    splits = split_ids(data.keys, 0.05, 0.05, 0)
    rng = np.random.default_rng(0)
    if args.set == "overfit512":
        train_ids = np.sort(rng.choice(splits["train"], 512, replace=False))
        val_ids = train_ids
    else:
        train_ids = np.sort(rng.choice(splits["train"], 10_000, replace=False))
        val_ids = np.sort(rng.choice(splits["val"], 500, replace=False))
    for text in args.variant or [""]:
        cfg = parse_variant(text)
        cfg.train.time_limit_minutes = args.minutes
        cfg.train.epochs = 10**6 if args.set == "overfit512" else 10**4
        cfg.train.max_val_molecules = 0
        with tempfile.TemporaryDirectory() as out:
            t0 = time.time()
            state = train(cfg, data, {"train": train_ids, "val": val_ids[:0], "test": val_ids[:0]}, out, quiet=True,
                          log=lambda m: None)
            model, _ = model_from_checkpoint(load_checkpoint(f"{out}/last.pt"))
            s = score_molecules(model, data, val_ids, 64, aligned=True)
        print(json.dumps({
            "set": args.set, "variant": text or "default", "minutes": args.minutes, "steps": state.step,
            "rmsd_mean": round(float(s.rmsd.mean()), 3), "rmsd_aligned_mean": round(float(np.nanmean(s.rmsd_aligned)), 3),
            "element_accuracy": round(float(s.element_accuracy.mean()), 4), "wall_s": round(time.time() - t0),
        }), flush=True)


if __name__ == "__main__":
    main()
