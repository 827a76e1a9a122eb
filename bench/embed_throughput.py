"""End-to-end ``embed`` throughput, model-only throughput, I/O share and peak memory.

    python bench/embed_throughput.py [--qm9 PATH.npz] [--sizes 10000 50000] [--model CKPT]
                                     [--threads 1] [--batch-size 64] [--device cpu]

For each size N it writes a seeded random sample of N QM9 molecules of ``--qm9`` as an SDF (bonds perceived
with RDKit, like a real SD file) into a temporary directory, then runs a fresh subprocess per
size that measures, one printed line each:

* end-to-end ``embed_to_hdf5`` as ``molgiae embed`` runs it (allocator tuned, records read by
  a reader process), then again reading in line (``--no-read-ahead``): mol/s each, and the
  share of wall time spent outside model calls (reading or waiting for the reader, checking,
  writing), timed inside the run;
* the process's peak RSS after the first run, and its RSS sampled during that run (quartiles,
  max: flat in N means these do not grow from 10k to 50k molecules);
* reading alone (``iter_records`` over the SDF), mol/s;
* model only: pre-read records through the same checked, size-bucketed batches, mol/s
  (on at most ``--model-only-max`` records, so that list does not dominate memory);
* SMILES perception from geometry (what XYZ input costs extra), ms/mol.

Without ``--model`` the bundled checkpoint is used, or, when the package has none yet, an
untrained default-config model (same architecture, same cost); the output says which. Not a test.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DEFAULT_QM9 = "/work/shared/data/qm9/qm9_full_part1of2.npz"


# --------------------------------------------------------------------------- setup (parent)


def write_qm9_sdf(npz: Path, n: int, out: Path, seed: int = 0) -> int:
    """A seeded random sample of n molecules (in QM9 index order) of a molgiae QM9 npz → SDF
    with perceived bonds; returns molecules written. Sampling, not the first n, keeps the size
    distribution the same for every n (QM9 is roughly ordered by size)."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    from molgiae.data.molecules import rdkit_molecule

    block = rdBase.BlockLogs()
    with np.load(npz) as d:
        index, ptr, Z, R = d["index"], d["ptr"], d["Z"], d["R"]
    rows = np.sort(np.random.default_rng(seed).choice(len(index), min(n, len(index)), replace=False))
    writer = Chem.SDWriter(str(out))
    for i in rows:
        mol = rdkit_molecule(Z[ptr[i]:ptr[i + 1]], R[ptr[i]:ptr[i + 1]])
        for perceive in (lambda m: rdDetermineBonds.DetermineBonds(m, charge=0), rdDetermineBonds.DetermineConnectivity):
            try:
                trial = Chem.RWMol(mol)
                perceive(trial)
                mol = trial
                break
            except Exception:  # noqa: BLE001
                continue
        mol.UpdatePropertyCache(strict=False)
        mol.SetProp("_Name", f"gdb_{int(index[i])}")
        writer.write(mol)
    writer.close()
    del block
    return len(rows)


def bench_checkpoint(model: str | None, tmp: Path) -> tuple[Path, str]:
    """The checkpoint to benchmark and a note on what it is."""
    if model:
        return Path(model), f"model {model}"
    from molgiae.api import DEFAULT_CHECKPOINT

    if DEFAULT_CHECKPOINT.is_file():
        return DEFAULT_CHECKPOINT, f"bundled model {DEFAULT_CHECKPOINT.name}"
    import torch

    from molgiae.config import Config
    from molgiae.model import GroupInvariantAutoencoder
    from molgiae.checkpoint import CHECKPOINT_FORMAT

    torch.manual_seed(0)
    cfg = Config()
    path = tmp / "untrained-default.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(),
                "model": GroupInvariantAutoencoder(cfg.model).state_dict(),
                "metadata": {"name": "untrained default config (bench)"}}, path)
    return path, ("NO bundled checkpoint yet: an untrained default-config model "
                  "(same architecture and cost as the real one)")


# --------------------------------------------------------------------------- measurement (worker)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class RssSampler:
    """Samples this process's resident memory (VmRSS, MiB) every ``interval`` s in a thread."""

    def __init__(self, interval: float = 0.25):
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)

    @staticmethod
    def current_mib() -> float:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return float("nan")

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.samples.append(self.current_mib())

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def worker(args) -> dict:
    """One size in a fresh process: end-to-end first (so its peak RSS is clean), then the parts."""
    import torch

    torch.set_num_threads(args.threads)
    from molgiae.runtime import tune_allocator

    tuned = tune_allocator() if args.tune_allocator else False  # as the `molgiae` command does
    from molgiae.api import load_model
    from molgiae.data.molecules import perceive_smiles
    from molgiae.data.readers import iter_records
    from molgiae.data.record import ConformerRecord
    from molgiae.embedding import embed_to_hdf5, stream_results

    model = load_model(args.checkpoint, device=args.device)
    sdf, out = Path(args.sdf), Path(args.sdf).with_suffix(".h5")
    good = (r for r in iter_records(sdf) if isinstance(r, ConformerRecord))
    model.embed_records([r for _, r in zip(range(args.batch_size), good)])  # warm-up
    rss_before = peak_rss_mib()

    embed_records = model.embed_records
    runs = {}
    for mode in ("read_ahead", "in_line"):  # read-ahead first: `molgiae embed` does it, peak RSS is its
        in_model = [0.0]

        def timed_embed_records(records):  # time spent in the model during the end-to-end run
            t0 = time.perf_counter()
            z = embed_records(records)
            in_model[0] += time.perf_counter() - t0
            return z

        model.embed_records = timed_embed_records
        t = time.perf_counter()
        with RssSampler() as rss:
            summary = embed_to_hdf5(model, [str(sdf)], out, batch_size=args.batch_size,
                                    read_ahead=mode == "read_ahead")
        runs[mode] = {"t": time.perf_counter() - t, "t_in_model": in_model[0], "n": summary.n_embedded,
                      "failed": summary.n_failed, "rss": peak_rss_mib(),
                      "rss_samples": [float(np.quantile(rss.samples, q)) for q in (0.25, 0.5, 0.75, 1.0)]}
        model.embed_records = embed_records
    n = runs["in_line"]["n"]

    t = time.perf_counter()
    n_read = sum(1 for _ in iter_records(sdf))
    t_read = time.perf_counter() - t

    good = (r for r in iter_records(sdf) if isinstance(r, ConformerRecord))
    records = [r for _, r in zip(range(args.model_only_max), good)]
    t = time.perf_counter()
    for _ in stream_results(model, enumerate(records), model.embed_records, batch_size=args.batch_size):
        pass
    t_model = (time.perf_counter() - t) * n / len(records)  # scaled to all n embedded records

    sample = records[: min(len(records), 2000)]
    t = time.perf_counter()
    for r in sample:
        perceive_smiles(r)
    t_smiles = (time.perf_counter() - t) / len(sample)
    return {"n": n, "runs": runs, "t_read": t_read, "n_read": n_read, "tuned": tuned,
            "t_model": t_model, "t_smiles": t_smiles, "rss_before": rss_before,
            "h5_mib": out.stat().st_size / 2**20, "sdf_mib": sdf.stat().st_size / 2**20}


def report(size: int, r: dict) -> None:
    n = r["n"]
    for mode, label in (("read_ahead", "reader process (molgiae embed default)"), ("in_line", "in line (--no-read-ahead)")):
        run = r["runs"][mode]
        share = 1.0 - run["t_in_model"] / run["t"]
        print(f"[N={size}] end-to-end embed, {label}: {run['n'] / run['t']:.0f} mol/s ({run['n']} mols in "
              f"{run['t']:.1f} s, {run['failed']} failed); wall time outside model calls: {100 * share:.0f} %")
    print(f"[N={size}] SDF {r['sdf_mib']:.1f} MiB -> HDF5 {r['h5_mib']:.1f} MiB; allocator tuned: {r['tuned']}")
    print(f"[N={size}] reading SDF only: {r['n_read'] / r['t_read']:.0f} mol/s ({r['t_read']:.1f} s, "
          f"{100 * r['t_read'] / r['runs']['in_line']['t']:.0f} % of the in-line run)")
    print(f"[N={size}] model only (pre-read records, checked + bucketed batches): {n / r['t_model']:.0f} mol/s")
    print(f"[N={size}] SMILES perception from geometry (XYZ-like input): {1000 * r['t_smiles']:.2f} ms/mol")
    ra = r["runs"]["read_ahead"]
    q25, q50, q75, qmax = ra["rss_samples"]
    print(f"[N={size}] peak RSS after the read-ahead run: {ra['rss']:.0f} MiB (model loaded and warm: "
          f"{r['rss_before']:.0f} MiB; growth {ra['rss'] - r['rss_before']:.0f} MiB); after both runs "
          f"{r['runs']['in_line']['rss']:.0f} MiB")
    print(f"[N={size}] RSS sampled every 0.25 s during the read-ahead run: quartiles {q25:.0f} / {q50:.0f} / "
          f"{q75:.0f} MiB, max {qmax:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qm9", default=DEFAULT_QM9, help="molgiae QM9 npz to take molecules from")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    ap.add_argument("--model", default=None, help="checkpoint (default: bundled, else untrained default config)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model-only-max", type=int, default=10_000)
    ap.add_argument("--no-tune-allocator", dest="tune_allocator", action="store_false",
                    help="measure without molgiae.runtime.tune_allocator (the command applies it)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sdf", help=argparse.SUPPRESS)
    ap.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory(prefix="molgiae-bench-") as tmp:
        tmp = Path(tmp)
        ckpt, note = bench_checkpoint(args.model, tmp)
        print(f"model: {note}; {args.threads} torch thread(s), batch size {args.batch_size}, device {args.device}")
        for size in args.sizes:
            sdf = tmp / f"qm9_{size}.sdf"
            t = time.perf_counter()
            written = write_qm9_sdf(Path(args.qm9), size, sdf)
            print(f"[N={size}] setup: wrote {written} QM9 molecules as SDF in {time.perf_counter() - t:.1f} s")
            cmd = [sys.executable, __file__, "--worker", "--sdf", str(sdf), "--checkpoint", str(ckpt),
                   "--threads", str(args.threads), "--batch-size", str(args.batch_size),
                   "--device", args.device, "--model-only-max", str(args.model_only_max)]
            cmd += [] if args.tune_allocator else ["--no-tune-allocator"]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                print(proc.stderr, file=sys.stderr)
                raise SystemExit(f"worker for N={size} failed")
            report(size, json.loads(proc.stdout.strip().splitlines()[-1]))
            sdf.unlink()


if __name__ == "__main__":
    main()
