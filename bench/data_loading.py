"""Is data loading a bottleneck? Time of building a batch vs one training step, per batch.

    python bench/data_loading.py [--data PATH ...] [--batch-sizes 32 64] [--steps 20] [--threads 1]
                                 [--device auto] [--workers 2]

``--data`` takes a QM9 npz (default: the 1,000-molecule QM9 sample), a conformer store or any
molecule files. For each batch size, prints milliseconds per batch of

* ``build``: ``batch_from_set`` (slice the flat arrays, pad them into a ``DenseMolecules``) in this process;
* ``to_dense``: host→device copy and ``model.dense`` (padding), part of the training step;
* ``step``: forward, loss, backward, optimizer step (``build`` excluded);
* ``loader``: time the training loop waits per batch for a ``DataLoader`` with ``--workers``
  worker processes (``num_workers`` of training), measured while it drains a prefetching loader.

Not a test.
"""
import argparse
import time

import numpy as np
import torch

from molgiae.config import ModelConfig
from molgiae.data.batching import batch_from_set, bucketed_batches
from molgiae.data.loading import load_conformers
from molgiae.model import GroupInvariantAutoencoder, reconstruction_loss
from molgiae.train.distributed import select_device
from molgiae.training import _Collate


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", nargs="+", default=["../shared/data/qm9/qm9_sample1000.npz"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--features", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    data = load_conformers(args.data)
    ids = np.flatnonzero(data.n_atoms <= 29)
    print(f"{len(ids)} conformers, device {device}, {args.threads} thread(s), model features {args.features}")
    print(f"{'batch':>5} {'build ms':>9} {'to_dense ms':>11} {'step ms':>8} {'build/step':>10} "
          f"{'loader wait ms':>14} ({args.workers} workers)")
    for bs in args.batch_sizes:
        torch.manual_seed(0)
        model = GroupInvariantAutoencoder(ModelConfig(features=args.features)).to(device)
        opt = torch.optim.AdamW(model.parameters(), 1e-4)
        batches = bucketed_batches(data.n_atoms, ids, bs, np.random.default_rng(0))
        batches = (batches * (1 + 2 * args.steps // len(batches)))[: 2 * args.steps + 2]
        build, dense, step = [], [], []
        for i, chunk in enumerate(batches[: args.steps + 2]):
            t0 = time.perf_counter()
            batch = batch_from_set(data, chunk)
            t1 = time.perf_counter()
            mols = batch.to(device, non_blocking=True)
            _sync(device)
            t2 = time.perf_counter()
            out = model(mols, permutation="straight_through", tau=0.3)
            loss = reconstruction_loss(out, mols)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            _sync(device)
            t3 = time.perf_counter()
            if i >= 2:  # warm-up
                build.append(t1 - t0)
                dense.append(t2 - t1)
                step.append(t3 - t2)
        wait = float("nan")
        if args.workers > 0:
            loader = torch.utils.data.DataLoader(
                [(c, 1.0, len(c), np.zeros((0, 2), dtype=np.int64)) for c in batches[args.steps + 2:]], batch_size=None, collate_fn=_Collate(data),
                num_workers=args.workers, pin_memory=device.type == "cuda", prefetch_factor=4)
            it = iter(loader)
            next(it)  # worker start-up
            waits = []
            for _ in range(args.steps - 1):
                time.sleep(float(np.mean(step)))  # stand-in for the training step the workers overlap with
                t0 = time.perf_counter()
                next(it)
                waits.append(time.perf_counter() - t0)
            wait = float(np.mean(waits))
        b, d, s = (1e3 * float(np.mean(x)) for x in (build, dense, step))
        print(f"{bs:>5} {b:>9.2f} {d:>11.2f} {s:>8.1f} {b / s:>10.3f} {1e3 * wait:>14.2f}")


if __name__ == "__main__":
    main()
