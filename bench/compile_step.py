"""Does ``torch.compile`` (inductor, CPU) pay for the autoencoder's training step?

    python bench/compile_step.py [--data PATH.npz ...] [--threads 1] [--rounds 4] [--steps 15]

Eager and compiled steps (forward, backward, AdamW) on the same size-bucketed QM9 batches,
interleaved A B A B; prints the compile time, each round's conformers/s and the median ratio.
``--part encoder`` compiles only the PaiNN encoder (dynamic shapes), ``--part model`` the whole
forward. Not a test.
"""
import argparse
import statistics
import time

import numpy as np
import torch

from molgiae.config import ModelConfig
from molgiae.data.batching import batch_from_set, bucketed_batches
from molgiae.data.conformers import load_qm9_npz
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss


def step_rate(model, forward, opt, data, batches) -> float:
    n, t0 = 0, time.perf_counter()
    for chunk in batches:
        mols = batch_from_set(data, chunk)
        out = forward(mols)
        loss = reconstruction_loss(out, mols)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        n += len(chunk)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["../shared/data/qm9/qm9_sample1000.npz"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=15)
    ap.add_argument("--part", choices=["encoder", "model"], default="encoder")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_qm9_npz(args.data)
    ids = np.flatnonzero(data.n_atoms <= 29)
    batches = bucketed_batches(data.n_atoms, ids, args.batch_size, np.random.default_rng(0))
    cfg = ModelConfig(decoder="transformer")
    models, forwards, opts = {}, {}, {}
    for name in ("eager", "compiled"):
        torch.manual_seed(0)
        m = GroupInvariantAutoencoder(cfg)
        if name == "compiled":
            if args.part == "encoder":
                m.encoder = torch.compile(m.encoder, dynamic=True)
                forwards[name] = lambda mols, m=m: m(mols, permutation="straight_through", tau=0.3)
            else:
                compiled = torch.compile(lambda mols, m=m: m(mols, permutation="straight_through", tau=0.3),
                                         dynamic=True)
                forwards[name] = compiled
        else:
            forwards[name] = lambda mols, m=m: m(mols, permutation="straight_through", tau=0.3)
        models[name], opts[name] = m, torch.optim.AdamW(m.parameters(), 1e-4)
    t0 = time.perf_counter()
    step_rate(models["compiled"], forwards["compiled"], opts["compiled"], data, batches[:6])  # compiles
    print(f"compile + 6 warm-up steps: {time.perf_counter() - t0:.1f} s ({args.part}, {args.threads} thread(s))")
    step_rate(models["eager"], forwards["eager"], opts["eager"], data, batches[:3])
    ratios = []
    for r in range(args.rounds):
        part = batches[6 + r * args.steps: 6 + (r + 1) * args.steps]
        rates = {name: step_rate(models[name], forwards[name], opts[name], data, part)
                 for name in (("eager", "compiled") if r % 2 == 0 else ("compiled", "eager"))}
        ratios.append(rates["compiled"] / rates["eager"])
        print(f"round {r + 1}: eager {rates['eager']:.1f}, compiled {rates['compiled']:.1f} conformers/s "
              f"(compiled/eager {ratios[-1]:.2f})")
    print(f"median speed-up of the compiled step: {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
