"""Prepare the payload of a GPU run (maintainers' tool, not installed): run it here, before the call.

    python tools/gpu_prepare.py [--data QM9_PART1 QM9_PART2] [--checkpoint CKPT] [--out gpu_payload]

Writes into the git-ignored folder ``gpu_payload/`` (it travels only when the device call names
it in ``carry``):

* ``qm9_compact.npz``: every conformer of the QM9 files as the ``molgiae-qm9-npz-1`` schema minus
  properties, SMILES and InChI: ``index`` int32, ``n_atoms`` uint8, ``ptr`` int64, ``Z`` uint8,
  ``R`` float32 (what training reads; ``molgiae train --data`` reads it like the full files);
* ``init.pt``: a copy of the checkpoint to start from (default: the bundled model);
* ``manifest.json``: sources, sizes, sha256, and the check that the checkpoint's test molecules
  are exactly this data's test split (the split is a seeded hash of the QM9 index, so training
  on the compact file keeps the default model's test split held out).

Then: ``run(command="bash tools/gpu_run.sh", carry=["gpu_payload"], timeout_s=600)`` (README, "GPU run").
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from molgiae.data.conformers import load_qm9_npz  # noqa: E402
from molgiae.data.qm9_npz import QM9_FORMAT  # noqa: E402
from molgiae.data.split import split_ids  # noqa: E402
from molgiae.outputs import atomic_output  # noqa: E402
from molgiae.checkpoint import load_checkpoint  # noqa: E402

DEFAULT_DATA = [ROOT.parent / "shared" / "data" / "qm9" / f"qm9_full_part{i}of2.npz" for i in (1, 2)]
DEFAULT_CHECKPOINT = ROOT / "molgiae" / "pretrained" / "molgiae-qm9.pt"
MAX_PAYLOAD_MIB = 48  # the working tree that travels is at most 64 MiB, the repository included


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_compact(paths: list[Path], out: Path) -> dict:
    """The compact training file; returns its counts."""
    data = load_qm9_npz(paths)
    if int(data.keys.max()) >= 2**31:
        raise ValueError("QM9 indices do not fit int32")
    with atomic_output(out) as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no ".npz"
        np.savez(
            fh, format_version=np.array(f"{QM9_FORMAT}-1"), index=data.keys.astype(np.int32),
            n_atoms=data.n_atoms.astype(np.uint8), ptr=data.ptr.astype(np.int64),
            Z=data.elements.astype(np.uint8), R=data.coords.astype(np.float32),
        )
    return {"conformers": len(data), "atoms": int(data.ptr[-1])}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", nargs="+", type=Path, default=DEFAULT_DATA, help="QM9 npz files (default: ../shared/data/qm9 full parts)")
    ap.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="checkpoint to start from (default: the bundled model)")
    ap.add_argument("--out", type=Path, default=ROOT / "gpu_payload")
    args = ap.parse_args(argv)

    missing = [str(p) for p in args.data if not p.is_file()]
    if missing:
        sys.exit(f"data file(s) not found: {', '.join(missing)}")
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(args.checkpoint)  # refuses a foreign or corrupt file before anything is written
    compact = args.out / "qm9_compact.npz"
    counts = write_compact(args.data, compact)
    init = args.out / "init.pt"
    if args.checkpoint.resolve() != init.resolve():
        shutil.copyfile(args.checkpoint, init)

    # the split training will use (the checkpoint's fractions and seed) must hold out its test molecules
    tc = ckpt["config"]["train"]
    keys = np.load(compact)["index"].astype(np.int64)
    test = np.sort(keys[split_ids(keys, tc["val_fraction"], tc["test_fraction"], tc["split_seed"])["test"]])
    ckpt_test = np.sort(np.asarray(ckpt["test_keys"], dtype=np.int64))
    same_split = bool(np.array_equal(test, ckpt_test))
    if not same_split:
        print(f"warning: this data's test split ({len(test)} molecules) is not the checkpoint's test split "
              f"({len(ckpt_test)}): a run would train on molecules the checkpoint held out", file=sys.stderr)

    try:
        commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    files = {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in (compact, init)}
    manifest = {
        "data": [p.name for p in args.data], "checkpoint": str(args.checkpoint), "commit": commit,
        **counts, "split": {"val_fraction": tc["val_fraction"], "test_fraction": tc["test_fraction"],
                            "split_seed": tc["split_seed"], "test_molecules": int(len(test)),
                            "same_test_split_as_checkpoint": same_split},
        "checkpoint_steps": int(ckpt.get("run_state", {}).get("step", 0)),
        "files": files, "payload_bytes": sum(f["bytes"] for f in files.values()),
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    mib = manifest["payload_bytes"] / 2**20
    print(f"{args.out}: {counts['conformers']} conformers, {mib:.1f} MiB "
          f"(compact data {files[compact.name]['bytes'] / 2**20:.1f} MiB, checkpoint {files[init.name]['bytes'] / 2**20:.1f} MiB); "
          f"same test split as the checkpoint: {same_split}")
    if mib > MAX_PAYLOAD_MIB:
        print(f"warning: payload over {MAX_PAYLOAD_MIB} MiB; with the repository it may exceed the 64 MiB the device call carries",
              file=sys.stderr)
    return manifest


if __name__ == "__main__":
    main()
