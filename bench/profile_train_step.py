"""Profile the autoencoder training step (torch.profiler): top ops by self CPU time.

    python bench/profile_train_step.py [--steps 30] [--batch-size 32] [--threads 1] [--top 25]

Real QM9 batches (size-bucketed, as `molgiae train` makes them), the default model config
(transformer decoder, F = 64). Prints the profiler table and the mean step time. Not a test.
"""
import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from molgiae.config import ModelConfig
from molgiae.data.batching import batch_from_set, bucketed_batches
from molgiae.data.conformers import load_qm9_npz
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
from molgiae.runtime import tune_allocator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["../shared/data/qm9/qm9_sample1000.npz"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--decoder", default="transformer")
    args = ap.parse_args()
    tune_allocator()
    torch.set_num_threads(args.threads)
    data = load_qm9_npz(args.data)
    torch.manual_seed(0)
    model = GroupInvariantAutoencoder(ModelConfig(decoder=args.decoder))
    opt = torch.optim.AdamW(model.parameters(), 1e-4)
    batches = bucketed_batches(data.n_atoms, np.arange(len(data)), args.batch_size, np.random.default_rng(0))

    def step(chunk):
        mols = batch_from_set(data, chunk)
        out = model(mols, permutation="straight_through", tau=0.3)
        loss = reconstruction_loss(out, mols)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    for chunk in batches[:3]:
        step(chunk)
    timed = batches[3:3 + args.steps]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for chunk in timed:
            step(chunk)
        dt = time.perf_counter() - t0
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    n = sum(len(c) for c in timed)
    print(f"{args.steps} steps, B={args.batch_size}, threads={args.threads}: {1e3 * dt / args.steps:.1f} ms/step "
          f"(profiled), {n / dt:.0f} conformers/s")


if __name__ == "__main__":
    main()
