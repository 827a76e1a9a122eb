"""One training epoch of two code trees (or two flag sets), interleaved A B A B.

    python bench/epoch_speed_ab.py --data QM9_PART1 QM9_PART2 --before /path/to/old/checkout \
        --molecules 9600 --rounds 2 [--after-flags "--compile --cpu-bf16"]

Each round trains one epoch of the same seeded ``--molecules`` training molecules (batch 32, one
thread, transformer decoder, plain reconstruction loss) with ``python -m molgiae train`` from the
``--before`` tree, then from this checkout (with ``--after-flags``), and reads the epoch's
seconds from metrics.csv (both include the validation of up to 1,000 molecules and, with
``--compile``, the compilation). Prints one line per round and the median ratio. Not a test.
"""
from __future__ import annotations

import argparse
import csv
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def epoch_seconds(tree: Path, data: list[str], molecules: int, flags: str) -> tuple[float, float]:
    """(seconds of the epoch as metrics.csv says, wall seconds of the whole command)."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "molgiae", "train", "--data", *data, "--out", out, "--epochs", "1",
               "--batch-size", "32", "--max-molecules", str(molecules), "--threads", "1",
               "--decoder", "transformer", "--checkpoint-every", "100000", "--quiet", *shlex.split(flags)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, cwd=tree, env=env, stdout=subprocess.DEVNULL)
        wall = time.perf_counter() - t0
        with open(Path(out) / "metrics.csv") as fh:
            return float(list(csv.DictReader(fh))[-1]["seconds"]), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", required=True)
    ap.add_argument("--before", type=Path, required=True, help="an older checkout (git worktree)")
    ap.add_argument("--before-flags", default="")
    ap.add_argument("--after-flags", default="")
    ap.add_argument("--molecules", type=int, default=9600)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    data = [str(Path(p).resolve()) for p in args.data]
    ratios = []
    for r in range(args.rounds):
        before, wb = epoch_seconds(args.before, data, args.molecules, args.before_flags)
        after, wa = epoch_seconds(HERE, data, args.molecules, args.after_flags)
        ratios.append(before / after)
        print(f"round {r + 1}: before {before:.1f} s (command {wb:.1f} s)  after {after:.1f} s "
              f"(command {wa:.1f} s)  epoch speed-up {before / after:.2f}x", flush=True)
    print(f"median speed-up {statistics.median(ratios):.2f}x over {args.rounds} rounds "
          f"({args.molecules} molecules, after flags: {args.after_flags!r})")


if __name__ == "__main__":
    main()
