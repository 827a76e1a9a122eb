"""One prepared GPU run: check, throughput sweep, training (maintainers' tool, not installed).

    python tools/gpu_run.py [--payload gpu_payload] [--out $OUT] [--minutes 9] [--device cuda]

Called by ``tools/gpu_run.sh`` on the device machine (README, "GPU run"); ``--device cpu`` with
tiny data is the dry run the test suite makes (``tests/test_gpu_run.py``). Stages, each with a
wall-clock budget counted from the start of this script (``--minutes`` in all; the sweep measures
at least its first batch size whatever the time):

1. check (about 30 s): one fixed batch, forward + loss + backward in fp32 on the CPU and on the
   device (TF32 off): |loss difference| and the largest gradient difference relative to the
   largest gradient must be <= ``--tolerance``; then the same under bf16 autocast must give a
   finite loss and finite gradients; the validation rmsd of the starting weights. → ``check.json``.
   If bf16 fails, the sweep and the training run in fp32 (the run goes on: finding that out is
   what the check is for). The cosine between the bf16 and fp32 gradients is recorded.
2. sweep: training steps (as ``molgiae.training.train`` takes them) at each batch size, a few
   after warm-up; conformers/s with and without building the batch, peak device memory. The
   chosen batch size is the smallest whose conformers/s is within ``--within`` of the best
   (larger batches take fewer steps per epoch for the same throughput). → ``sweep.json``
3. training with ``molgiae.training.train`` from the checkpoint's weights (fresh AdamW, warm-up,
   cosine planned over the epochs the sweep's throughput fits into the time left) at the chosen
   batch size, learning rate scaled by sqrt(batch / checkpoint batch) from the checkpoint's and
   capped at ``--max-lr`` (4e-3: a warm restart of a trained model, not a fresh start). It
   trains in a scratch folder; every minute its ``last.pt`` (resumable, with optimizer state) is
   copied atomically to ``OUT/last.pt``. At the end ``best.pt`` and ``metrics.csv`` are copied too,
   and the validation rmsd of the final weights on the same molecules as in the check is measured.
   → ``summary.json``

``OUT`` holds at most 7 files (check.json, sweep.json, last.pt, best.pt, metrics.csv, summary.json,
and run.log from the .sh), each well under 16 MiB. Imports neither RDKit nor ASE.
"""
from __future__ import annotations

import time

T0 = time.time()  # every budget counts from here

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from molgiae.checkpoint import load_checkpoint  # noqa: E402
from molgiae.config import Config  # noqa: E402
from molgiae.data.batching import batch_from_set, bucketed_batches  # noqa: E402
from molgiae.data.loading import load_conformers  # noqa: E402
from molgiae.data.split import split_ids  # noqa: E402
from molgiae.model import GroupInvariantAutoencoder  # noqa: E402
from molgiae.outputs import atomic_output, atomic_write_text  # noqa: E402
from molgiae.train.distributed import hardware_description, select_device  # noqa: E402
from molgiae.training import train, training_objective, validate  # noqa: E402

DEFAULT_BATCH_SIZES = (64, 128, 256, 512, 1024, 2048)


def log(msg: str) -> None:
    print(f"[{time.time() - T0:6.1f} s] {msg}", flush=True)


def left(total_s: float) -> float:
    return total_s - (time.time() - T0)


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def copy_atomic(src: Path, dst: Path) -> None:
    with atomic_output(dst) as tmp:
        shutil.copyfile(src, tmp)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- one step, as train() takes it
def for_qm9_payload(tc) -> None:
    """Adapt a checkpoint's TrainConfig in place to the payload: QM9 alone (one conformer per
    molecule), so no conformer-metric term nor its extra pairs; and the sweep timed the eager
    step, so train that (no torch.compile, no CPU bf16)."""
    tc.lambda_conformer, tc.conformer_pairs, tc.lambda_separation = 0.0, 0, 0.0
    tc.compile, tc.cpu_bf16 = False, False


def loss_and_backward(model, batch, device, tc, amp: bool, seed: int = 0, with_output: bool = False):
    """The training objective of ``train()`` on one batch (denoising input noise drawn on the CPU
    from ``seed``, so the CPU and the device see the same noise; the smoothness term included),
    under bf16 autocast if ``amp``; backward. Returns (the loss, and with ``with_output`` the
    clean input's forward, not timed in the sweep; else None)."""
    mols = batch.to(device, non_blocking=True)
    noise = None
    if tc.coord_noise > 0:
        noise = torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(seed)).to(device)
    model.zero_grad(set_to_none=True)
    loss = training_objective(model, model, mols, noise, tc, amp)
    loss.backward()
    if not with_output:
        return loss, None
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(mols, permutation="straight_through", tau=tc.tau)
    return loss, out


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.grad is not None}


def gradient_cosine(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Cosine between two gradients (dicts of the same parameters), as one flat vector each."""
    va = torch.cat([a[n].flatten() for n in sorted(a)])
    vb = torch.cat([b[n].flatten() for n in sorted(a)])
    return float(torch.nn.functional.cosine_similarity(va, vb, dim=0))


# ----------------------------------------------------------------------------- 1. check
def check(config, weights, data, batch_ids, val_ids, device, tolerance) -> dict:
    tc = config.train
    batch = batch_from_set(data, batch_ids)
    cpu_model = GroupInvariantAutoencoder(config.model)
    cpu_model.load_state_dict(weights)
    cpu_model.train()  # as in training (no dropout anywhere: train/eval give the same numbers)
    loss_cpu, out_cpu = loss_and_backward(cpu_model, batch, torch.device("cpu"), tc, amp=False, with_output=True)
    loss_cpu = float(loss_cpu.detach())
    g_cpu = grads(cpu_model)

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 means fp32
    try:
        model = GroupInvariantAutoencoder(config.model).to(device)
        model.load_state_dict(weights)
        model.train()
        loss_dev, out_dev = loss_and_backward(model, batch, device, tc, amp=False, with_output=True)
        loss_dev = float(loss_dev.detach())
        g_dev = grads(model)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    g_scale = max(float(g.abs().max()) for g in g_cpu.values())
    g_diff = max(float((g_cpu[n] - g_dev[n]).abs().max()) for n in g_cpu)
    perm_differs = int((out_cpu.permutation.detach() != out_dev.permutation.detach().cpu()).any(-1).any(-1).sum())
    z_diff = float((out_cpu.encoding.z.detach() - out_dev.encoding.z.detach().cpu()).abs().max())

    bf16_error = None
    try:  # an op that breaks under autocast must not cost the rest of the run
        loss_bf16, _ = loss_and_backward(model, batch, device, tc, amp=True)
        g_bf16 = grads(model)
        bf16_finite = bool(torch.isfinite(loss_bf16).item() and all(torch.isfinite(g).all() for g in g_bf16.values()))
        loss_bf16 = float(loss_bf16.detach())
        bf16_cos = gradient_cosine(g_bf16, g_dev)  # recorded, not acted on (README, "CPU switches")
    except RuntimeError as exc:
        bf16_error, bf16_finite, loss_bf16 = f"{type(exc).__name__}: {exc}", False, float("nan")
        bf16_cos = float("nan")

    val = validate(model, data, val_ids, config, device)
    fp32_ok = abs(float(loss_cpu) - float(loss_dev)) <= tolerance and g_diff / g_scale <= tolerance
    return {
        "device": str(device), "hardware": hardware_description(device), "molecules": len(batch_ids),
        "atoms": int(data.n_atoms[batch_ids].sum()), "tolerance": tolerance,
        "loss_cpu_fp32": float(loss_cpu), "loss_device_fp32": float(loss_dev),
        "loss_abs_diff": abs(float(loss_cpu) - float(loss_dev)),
        "grad_max_abs_diff": g_diff, "grad_max_abs": g_scale, "grad_max_rel_diff": g_diff / g_scale,
        "z_max_abs_diff": z_diff, "molecules_with_other_permutation": perm_differs,
        "loss_device_bf16": loss_bf16, "bf16_finite": bf16_finite, "bf16_error": bf16_error,
        "bf16_grad_cosine": bf16_cos,
        "fp32_match": bool(fp32_ok), "passed": bool(fp32_ok and bf16_finite),
        "val_molecules": len(val_ids), "val_rmsd_start": val["val_rmsd"],
        "val_element_accuracy_start": val["val_element_accuracy"],
    }


# ----------------------------------------------------------------------------- 2. sweep
def sweep(config, weights, data, train_ids, device, batch_sizes, warmup, steps, budget_s, amp) -> list[dict]:
    tc = config.train
    model = GroupInvariantAutoencoder(config.model).to(device)
    rng = np.random.default_rng(tc.seed)
    rows: list[dict] = []
    t_end = time.time() + budget_s
    for bs in batch_sizes:
        if time.time() > t_end and any("conformers_per_s" in r for r in rows):
            rows.append({"batch_size": bs, "skipped": "sweep time budget spent"})
            continue
        if bs > len(train_ids):
            rows.append({"batch_size": bs, "skipped": f"more than the {len(train_ids)} training molecules"})
            continue
        model.load_state_dict(weights)
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        chunks = bucketed_batches(data.n_atoms, train_ids, bs, rng)
        chunks = [chunks[i % len(chunks)] for i in range(warmup + steps)]
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        collate_s = step_s = 0.0
        n = 0
        try:
            for i, ids in enumerate(chunks):
                t0 = time.perf_counter()
                batch = batch_from_set(data, ids)
                t1 = time.perf_counter()
                loss, _ = loss_and_backward(model, batch, device, tc, amp, seed=i)
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                opt.step()
                sync(device)
                t2 = time.perf_counter()
                if i >= warmup:
                    collate_s += t1 - t0
                    step_s += t2 - t1
                    n += len(ids)
        except torch.cuda.OutOfMemoryError as exc:
            rows.append({"batch_size": bs, "error": f"out of memory: {str(exc).splitlines()[0]}"})
            opt = None  # free its state before emptying the cache
            if device.type == "cuda":
                torch.cuda.empty_cache()
            log(f"sweep: batch {bs}: out of memory; larger sizes skipped")
            break
        row = {
            "batch_size": bs, "steps": steps, "conformers": n, "loss": float(loss.detach()),
            "collate_s_per_step": collate_s / steps, "step_s": step_s / steps,
            "conformers_per_s": n / (collate_s + step_s),  # building each batch in the loop (num_workers=0)
            "device_conformers_per_s": n / step_s,  # the step alone (batches built by DataLoader workers)
        }
        if device.type == "cuda":
            row["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        rows.append(row)
        log(f"sweep: batch {bs}: {row['conformers_per_s']:.0f} conformers/s "
            f"({row['device_conformers_per_s']:.0f} without batch building), step {row['step_s'] * 1e3:.1f} ms"
            + (f", peak {row['max_memory_allocated_mib']:.0f} MiB" if "max_memory_allocated_mib" in row else ""))
        del opt
    return rows


def choose_batch_size(rows: list[dict], key: str, within: float) -> dict:
    done = [r for r in rows if key in r]
    if not done:
        raise RuntimeError("the sweep measured no batch size")
    best = max(r[key] for r in done)
    return min((r for r in done if r[key] >= within * best), key=lambda r: r["batch_size"])


# ----------------------------------------------------------------------------- 3. training
class Mirror(threading.Thread):
    """Copies ``src`` to ``dst`` (atomically) every ``every`` seconds when it has changed."""

    def __init__(self, src: Path, dst: Path, every: float):
        super().__init__(daemon=True)
        self.src, self.dst, self.every = src, dst, every
        self.stop_event = threading.Event()
        self.copied_mtime = None
        self.copies = 0

    def copy_now(self) -> None:
        try:
            mtime = self.src.stat().st_mtime_ns
        except FileNotFoundError:
            return
        if mtime != self.copied_mtime:
            copy_atomic(self.src, self.dst)
            self.copied_mtime = mtime
            self.copies += 1

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            try:
                self.copy_now()
            except OSError as exc:  # a checkpoint renamed under us: next time
                log(f"checkpoint copy failed ({exc}); retrying in {self.every:.0f} s")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--payload", type=Path, default=ROOT / "gpu_payload", help="folder from tools/gpu_prepare.py")
    ap.add_argument("--data", nargs="+", type=Path, help="training data instead of PAYLOAD/qm9_compact.npz")
    ap.add_argument("--checkpoint", type=Path, help="start from this instead of PAYLOAD/init.pt")
    ap.add_argument("--out", type=Path, default=Path(os.environ["OUT"]) if os.environ.get("OUT") else None,
                    help="where the files that come back go (default: $OUT)")
    ap.add_argument("--work", type=Path, help="scratch run folder (default: a new temporary folder)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--minutes", type=float, default=9.0, help="wall-clock budget of the whole script")
    ap.add_argument("--check-molecules", type=int, default=64)
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--val-molecules", type=int, default=500, help="validation molecules for the start/end rmsd")
    ap.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCH_SIZES)))
    ap.add_argument("--sweep-warmup", type=int, default=3)
    ap.add_argument("--sweep-steps", type=int, default=8)
    ap.add_argument("--sweep-seconds", type=float, default=100.0, help="budget of the sweep")
    ap.add_argument("--within", type=float, default=0.9, help="smallest batch size within this fraction of the best throughput")
    ap.add_argument("--batch-size", type=int, help="train at this batch size whatever the sweep says")
    ap.add_argument("--lr", type=float, help="peak learning rate (default: sqrt-scaled from the checkpoint's, at most --max-lr)")
    ap.add_argument("--max-lr", type=float, default=4e-3, help="cap of the sqrt-scaled learning rate")
    ap.add_argument("--epochs", type=int, help="epochs (default: as many as the sweep's throughput fits)")
    ap.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: 4 on CUDA, 0 on CPU)")
    ap.add_argument("--epoch-overhead-seconds", type=float, default=1.0, help="per-epoch cost besides the steps (epoch planning)")
    ap.add_argument("--checkpoint-seconds", type=float, default=60.0, help="copy last.pt to OUT this often")
    ap.add_argument("--reserve-seconds", type=float, default=45.0, help="kept after training for the end")
    ap.add_argument("--strict", action="store_true", help="stop after a failed check")
    args = ap.parse_args(argv)
    if args.out is None:
        ap.error("--out or $OUT is needed")
    total_s = args.minutes * 60
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(args.device)
    data_paths = args.data or [args.payload / "qm9_compact.npz"]
    ckpt_path = args.checkpoint or args.payload / "init.pt"
    manifest_path = args.payload / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if args.data is None and manifest_path.is_file() else None
    summary: dict = {
        "device": str(device), "hardware": hardware_description(device), "torch": torch.__version__,
        "cuda": torch.version.cuda, "python": platform.python_version(), "data": [str(p) for p in data_paths],
        "checkpoint": str(ckpt_path), "payload_manifest": manifest, "minutes": args.minutes, "stages": {},
    }
    log(f"{summary['hardware']}; torch {torch.__version__}; budget {args.minutes:g} min")

    ckpt = load_checkpoint(ckpt_path)
    base = Config.from_dict(ckpt["config"])
    weights = ckpt["model"]
    data = load_conformers(data_paths)
    tc = base.train
    splits = split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)
    splits["train"] = splits["train"][data.n_atoms[splits["train"]] <= base.model.max_atoms]
    if "test_keys" in ckpt:
        held_out = set(np.asarray(ckpt["test_keys"]).tolist())
        leaked = int(np.isin(data.keys[splits["train"]], list(held_out)).sum()) if held_out else 0
        summary["checkpoint_test_molecules_in_train_split"] = leaked
        if leaked:
            log(f"warning: {leaked} of the checkpoint's test molecules are in this training split")
    rng = np.random.default_rng(0)
    val_ids = splits["val"]
    if len(val_ids) > args.val_molecules:
        val_ids = np.sort(rng.choice(val_ids, args.val_molecules, replace=False))
    check_ids = splits["val"][: args.check_molecules]
    if len(check_ids) < args.check_molecules:  # tiny data: any molecules will do
        check_ids = np.arange(min(args.check_molecules, len(data)))
    log(f"data: {len(data)} conformers ({len(splits['train'])} train, {len(splits['val'])} val, "
        f"{len(splits['test'])} test); checkpoint {ckpt_path} ({ckpt.get('run_state', {}).get('step', '?')} steps)")
    summary["stages"]["load_s"] = time.time() - T0

    # 1. check
    t = time.time()
    result = check(base, weights, data, check_ids, val_ids, device, args.tolerance)
    result["seconds"] = time.time() - t
    write_json(out / "check.json", result)
    summary["check"] = {k: result[k] for k in ("passed", "loss_abs_diff", "grad_max_rel_diff", "bf16_finite")}
    summary["stages"]["check_s"] = result["seconds"]
    log(f"check: {'passed' if result['passed'] else 'FAILED'}: |Δloss| {result['loss_abs_diff']:.2e}, "
        f"max |Δgrad|/max|grad| {result['grad_max_rel_diff']:.2e}, bf16 loss {result['loss_device_bf16']:.4f} "
        f"(fp32 {result['loss_device_fp32']:.4f}); val rmsd of the start {result['val_rmsd_start']:.3f} Å "
        f"({result['seconds']:.1f} s)")
    if args.strict and not result["passed"]:
        write_json(out / "summary.json", summary)
        raise SystemExit("check failed (--strict)")
    amp = tc.amp and device.type == "cuda"
    if amp and result["bf16_error"]:
        amp = False
        log(f"bf16 autocast failed ({result['bf16_error'].splitlines()[0]}): sweep and training in fp32")
    if amp:
        log(f"bf16 gradient vs fp32 on the check batch: cosine {result['bf16_grad_cosine']:.3f} (a diagnostic: "
            "low on a trained model, yet equal-step CPU runs ended within 0.005 Å)")
    summary["amp_bf16"] = amp

    # 2. sweep
    t = time.time()
    sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    budget = min(args.sweep_seconds, max(0.0, left(total_s) - args.reserve_seconds - 60))
    rows = sweep(base, weights, data, splits["train"], device, sizes, args.sweep_warmup, args.sweep_steps,
                 budget, amp=amp)
    num_workers = args.num_workers if args.num_workers is not None else (4 if device.type == "cuda" else 0)
    key = "device_conformers_per_s" if num_workers > 0 else "conformers_per_s"
    chosen = choose_batch_size(rows, key, args.within)
    bs = args.batch_size or chosen["batch_size"]
    write_json(out / "sweep.json", {"device": str(device), "hardware": hardware_description(device),
                                    "ranked_by": key, "within": args.within, "chosen_batch_size": bs,
                                    "seconds": time.time() - t, "rows": rows})
    summary["stages"]["sweep_s"] = time.time() - t
    log(f"sweep: chosen batch size {bs} ({args.within:.0%} rule on {key})")

    # 3. training
    cfg = Config.from_dict(base.to_dict())
    rate = next((r[key] for r in rows if r.get("batch_size") == bs and key in r), chosen[key])
    lr = args.lr or min(args.max_lr, tc.lr * math.sqrt(bs / tc.batch_size))
    train_s = max(0.0, left(total_s) - args.reserve_seconds)
    n_train = len(splits["train"])
    # as many whole epochs as fit (each also validates, saves and restarts its loader workers), so
    # that the cosine schedule ends about when the time does; the time limit stops it in any case
    epochs = args.epochs or max(1, int(0.9 * train_s / (n_train / rate + args.epoch_overhead_seconds)))
    steps_per_min = rate * 60 / bs
    cfg.train.batch_size, cfg.train.lr, cfg.train.epochs, cfg.train.amp = bs, lr, epochs, amp
    cfg.train.time_limit_minutes = max(train_s / 60, 1e-3)
    cfg.train.checkpoint_every = max(1, int(steps_per_min * args.checkpoint_seconds / 120))  # about twice a copy period
    cfg.train.device, cfg.train.num_workers, cfg.train.max_val_molecules = str(device), num_workers, 1000
    cfg.train.init_from = str(ckpt_path)  # its weights; a fresh optimizer, schedule and run state
    for_qm9_payload(cfg.train)
    summary["training"] = {"batch_size": bs, "lr": lr, "lr_rule": "given" if args.lr else
                           f"sqrt: min({args.max_lr:g}, {tc.lr:g} * sqrt({bs}/{tc.batch_size}))", "epochs_planned": epochs,
                           "time_limit_s": train_s, "num_workers": num_workers,
                           "sweep_conformers_per_s": rate, "checkpoint_every_steps": cfg.train.checkpoint_every}
    log(f"train: batch {bs}, lr {lr:.2e}, {epochs} epochs planned in {train_s:.0f} s, "
        f"{num_workers} workers, last.pt every {cfg.train.checkpoint_every} steps")
    work = args.work or Path(tempfile.mkdtemp(prefix="molgiae_gpu_run_"))
    mirror = Mirror(work / "last.pt", out / "last.pt", args.checkpoint_seconds)
    mirror.start()
    meta = {"data": [p.name for p in data_paths], "split_seed": tc.split_seed,
            "init_from": {"checkpoint": ckpt_path.name, "steps": ckpt.get("run_state", {}).get("step"),
                          "name": ckpt.get("metadata", {}).get("name")},
            "gpu_run": {k: summary["training"][k] for k in ("batch_size", "lr", "lr_rule")}}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.time()
    try:
        state = train(cfg, data, splits, work, quiet=True, metadata=meta, log=log)
    except BaseException as exc:
        summary["training"]["error"] = f"{type(exc).__name__}: {exc}"
        write_json(out / "summary.json", summary)
        raise
    finally:
        mirror.stop_event.set()
        mirror.join()
        mirror.copy_now()
    train_wall = time.time() - t
    for name in ("best.pt", "metrics.csv"):
        if (work / name).is_file():
            copy_atomic(work / name, out / name)
    summary["stages"]["train_s"] = train_wall
    steps_done = state.step
    summary["training"].update(
        steps=steps_done, epochs_done=state.epoch, seconds=state.seconds, copies_of_last_pt=mirror.copies,
        conformers_per_s=steps_done * bs / max(state.seconds, 1e-9),  # ≈ (the last batch of an epoch is smaller)
        history=state.history,
    )
    if device.type == "cuda":
        summary["training"]["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20

    # final validation on the check's validation molecules
    final = load_checkpoint(out / "last.pt", map_location=device)
    model = GroupInvariantAutoencoder(cfg.model).to(device)
    model.load_state_dict(final["model"])
    val = validate(model, data, val_ids, cfg, device)
    summary["validation"] = {"molecules": len(val_ids), "val_rmsd_start": result["val_rmsd_start"],
                             "val_rmsd_end": val["val_rmsd"], "val_element_accuracy_end": val["val_element_accuracy"]}
    summary["stages"]["total_s"] = time.time() - T0
    write_json(out / "summary.json", summary)
    log(f"done: {steps_done} steps, {state.epoch} epochs in {state.seconds:.0f} s "
        f"(~{summary['training']['conformers_per_s']:.0f} conformers/s); val rmsd {result['val_rmsd_start']:.3f} → "
        f"{val['val_rmsd']:.3f} Å on {len(val_ids)} molecules; {summary['stages']['total_s']:.0f} s in all")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return summary


if __name__ == "__main__":
    main()
