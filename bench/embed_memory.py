"""Does ``embed``'s memory grow with the number of molecules? RSS per read-ahead window.

    python bench/embed_memory.py [--n 150000] [--qm9 PATH.npz] [--threads 2]

Writes a seeded random sample of QM9 molecules as SDF (repeating the sample when --n exceeds
the file), runs ``embed_to_hdf5`` as ``molgiae embed`` does (allocator tuned, reader process),
and prints the process's resident memory at the end of every window of 64 batches: just before
the free heap is returned (``release_free_memory``) and just after. Flat means the after-trim
line does not grow with the window count. Not a test.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from embed_throughput import DEFAULT_QM9, RssSampler, write_qm9_sdf  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=150_000)
    ap.add_argument("--qm9", default=DEFAULT_QM9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import molgiae.embedding as embedding
    import molgiae.embedding.streaming as streaming
    from molgiae.api import load_model
    from molgiae.runtime import release_free_memory, tune_allocator

    tune_allocator()
    before, after = [], []

    def measured_release() -> None:
        before.append(RssSampler.current_mib())
        release_free_memory()
        after.append(RssSampler.current_mib())

    streaming.release_free_memory = measured_release  # the streaming loop calls it once per window
    with tempfile.TemporaryDirectory(prefix="molgiae-bench-") as tmp:
        part = Path(tmp) / "part.sdf"
        written = write_qm9_sdf(Path(args.qm9), min(args.n, 50_000), part)
        sdf = Path(tmp) / "all.sdf"
        with open(sdf, "w") as out:
            text = part.read_text()
            for _ in range(-(-args.n // written)):
                out.write(text)
        del text
        model = load_model()
        loaded = RssSampler.current_mib()
        t = time.perf_counter()
        with RssSampler() as rss:
            s = embedding.embed_to_hdf5(model, [str(sdf)], Path(tmp) / "out.h5", read_ahead=True)
        dt = time.perf_counter() - t
    print(f"{s.n_embedded} molecules in {dt:.0f} s ({s.n_embedded / dt:.0f} mol/s); model loaded: {loaded:.0f} MiB; "
          f"{len(after)} windows")
    print("RSS before trim, per window (MiB):", " ".join(f"{x:.0f}" for x in before))
    print("RSS after trim, per window (MiB): ", " ".join(f"{x:.0f}" for x in after))
    k = max(1, len(after) // 4)
    print(f"after trim: first window {after[0]:.0f}, mean of first quarter {sum(after[:k]) / k:.0f}, "
          f"mean of last quarter {sum(after[-k:]) / k:.0f}, max {max(after):.0f} MiB; "
          f"sampled every 0.25 s: max {max(rss.samples):.0f} MiB")


if __name__ == "__main__":
    main()
