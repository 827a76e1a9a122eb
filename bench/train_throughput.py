"""Training-step throughput (conformers/s) and peak memory on real QM9 batches.

    python bench/train_throughput.py [--data PATH.npz ...] [--threads T] [--decoder equivariant|transformer]

One line per setting. Not a test.
"""
import argparse
import resource
import time

import numpy as np
import torch

from molgiae.config import ModelConfig
from molgiae.data.batching import batch_from_set, bucketed_batches
from molgiae.data.conformers import load_qm9_npz
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
from molgiae.train.distributed import select_device


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["../shared/data/qm9/qm9_sample1000.npz"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--decoder", default="equivariant")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    data = load_qm9_npz(args.data)
    ids = np.flatnonzero(data.n_atoms <= 29)
    for bs in args.batch_sizes:
        torch.manual_seed(0)
        model = GroupInvariantAutoencoder(ModelConfig(decoder=args.decoder, features=args.features)).to(device)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        batches = bucketed_batches(data.n_atoms, ids, bs, np.random.default_rng(0))
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        n, t0 = 0, None
        for k, chunk in enumerate(batches[: args.steps + 3]):
            if k == 3:  # warm-up steps excluded
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0, n = time.perf_counter(), 0
            mols = batch_from_set(data, chunk).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = model(mols, permutation="straight_through", tau=0.3)
            loss = reconstruction_loss(out, mols)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += len(chunk)
        if device.type == "cuda":
            torch.cuda.synchronize()
            peak = f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB GPU"
        else:
            peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS"
        dt = time.perf_counter() - t0
        print(f"decoder={args.decoder} F={args.features} B={bs} device={device.type} threads={args.threads}: "
              f"{n / dt:.0f} conformers/s, peak {peak}", flush=True)


if __name__ == "__main__":
    main()
