"""Training loop, resumable checkpoints (format and loader: :mod:`molgiae.checkpoint`) and run artefacts.

A run directory holds ``config.json``, ``last.pt`` (every ``checkpoint_every`` steps and every
epoch), ``best.pt`` (best validation rmsd), ``metrics.csv``, ``learning_curve.png`` and
``split.json`` (the molecule keys of each split).

Conformer sampling (``TrainConfig.conformer_sampling``): ``"all"`` trains on every conformer of
the training split each epoch; ``"uniform"`` / ``"boltzmann"`` draw one conformer per molecule
per epoch (uniformly, or with the molecule's normalised Boltzmann weights). Splits are always by
molecule key, so all conformers of a molecule are in one split.

Distributed data parallel: under ``torchrun`` (``WORLD_SIZE`` > 1) :func:`train` joins the process
group (NCCL on CUDA, gloo on CPU) and wraps the model in ``DistributedDataParallel``. Every rank
builds the same epoch batch order; each global batch of ``batch_size`` molecules is split across
the ranks (rank r takes molecules r, r+K, ...), and each rank's per-atom-mean loss is weighted by
its share of the global batch's atoms, so K processes take the same steps as one process with the
same ``batch_size`` (up to float rounding). Only rank 0 validates and writes checkpoints, metrics,
logs and the progress bar; ``--resume`` reloads ``last.pt`` on every rank.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from molgiae._version import __version__
from molgiae.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, load_checkpoint
from molgiae.config import Config
from molgiae.data.batching import batch_from_set, bucketed_batches, sized_batches
from molgiae.data.conformers import ConformerSet
from molgiae.model import GroupInvariantAutoencoder, molecule_scores, reconstruction_loss
from molgiae.outputs import atomic_csv, atomic_savefig, atomic_write_text, remove_stale_temps
from molgiae.train.distributed import hardware_description, rank_share, select_device, setup_distributed
from molgiae.train.progress import epoch_progress
from molgiae.train.sampling import conformer_weights, sample_conformers
from molgiae.train.schedule import lr_factor

METRIC_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_rmsd", "val_element_accuracy", "seconds")


def _rng_state(np_rng: np.random.Generator) -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np_rng.bit_generator.state,
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
        "python_gauss": random.getstate()[2],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, np_rng: np.random.Generator) -> None:
    torch.set_rng_state(state["torch"])
    np_rng.bit_generator.state = state["numpy"]
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class _Collate:
    """DataLoader collate: (local conformer ids, loss weight, global batch size) → (PyG Batch, ...)."""

    def __init__(self, data: ConformerSet):
        self.data = data

    def __call__(self, item):
        ids, weight, n_global = item
        return batch_from_set(self.data, ids), weight, n_global


# ----------------------------------------------------------------------------- objective terms
def code_smoothness(noisy_z: torch.Tensor, clean_z: torch.Tensor) -> torch.Tensor:
    """How far input noise moves the code, relative to how far apart the batch's codes are:
    ``mean_i |z̃_i − z_i|² / mean_{i≠j} |z_i − z_j|²`` (scale-free: shrinking z does not lower it).

    noisy_z [B, D] (with gradient), clean_z [B, D] (a constant target) → scalar. 0 for B < 2.
    """
    B = clean_z.shape[0]
    if B < 2:
        return noisy_z.sum() * 0.0
    clean_z = clean_z.detach().float()
    spread = torch.cdist(clean_z, clean_z).pow(2).sum() / (B * (B - 1))
    return ((noisy_z.float() - clean_z) ** 2).sum(-1).mean() / spread.clamp_min(1e-12)


# ----------------------------------------------------------------------------- the loop
@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps done
    epoch_step: int = 0  # batches done in the current epoch
    epoch_seed: int = 0  # seed of the current epoch's batch order
    best_val_rmsd: float = float("inf")
    seconds: float = 0.0  # training wall time so far (over resumes)
    history: list = field(default_factory=list)
    # running sums of the current epoch's train_loss (molecule-weighted), so that a mid-epoch
    # --resume writes the same epoch train_loss as an uninterrupted run
    epoch_loss_sum: float = 0.0
    epoch_loss_n: int = 0


def write_learning_curve(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [r["epoch"] for r in rows]
    ax[0].plot(ep, [r["train_loss"] for r in rows], "o-", label="train loss")
    ax[0].plot(ep, [r["val_loss"] for r in rows], "o-", label="val loss")
    ax[0].set_xlabel("epoch"), ax[0].set_yscale("log"), ax[0].legend()
    ax[1].plot(ep, [r["val_rmsd"] for r in rows], "o-", color="C2")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel("val rmsd (Å, hard P)")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


def write_metrics_csv(rows: list[dict], path: Path) -> None:
    atomic_csv(path, METRIC_COLUMNS, rows)


@torch.no_grad()
@torch.no_grad()
def validate(model, data: ConformerSet, ids: np.ndarray, config: Config, device) -> dict:
    """Validation loss (as trained: straight-through permutation) and, from the same forward
    pass (its values are those of the hard permutation), mean rmsd and element accuracy."""
    model.eval()
    losses, weights, rmsd, accuracy = [], [], [], []
    for chunk in sized_batches(data.n_atoms, ids, config.train.batch_size):
        mols = model.dense(batch_from_set(data, chunk).to(device))
        out = model(mols, permutation="straight_through", tau=config.train.tau)
        parts = reconstruction_loss(out, mols, config.train.lambda_type, config.train.lambda_perm)
        losses.append(float(parts["loss"]))
        weights.append(int(mols.mask.sum()))
        r, a = molecule_scores(out, mols)
        rmsd.append(r.cpu().numpy())
        accuracy.append(a.cpu().numpy())
    model.train()
    return {
        "val_loss": float(np.average(losses, weights=weights)),
        "val_rmsd": float(np.mean(np.concatenate(rmsd))),
        "val_element_accuracy": float(np.mean(np.concatenate(accuracy))),
    }


def train(
    config: Config,
    data: ConformerSet,
    splits: dict[str, np.ndarray],
    out_dir: str | Path,
    resume: bool = False,
    quiet: bool = False,
    metadata: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> RunState:
    """Train (or resume) the autoencoder on ``data[splits["train"]]``; validate on ``splits["val"]``.

    Returns the final run state. All artefacts are written to ``out_dir``.
    """
    tc = config.train
    dist_info = setup_distributed(tc.device)
    rank0 = dist_info.rank == 0
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if not rank0:
        quiet, log = True, (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if rank0:  # temporary files of a run killed mid-write (SIGKILL): last.pt.tmp-<pid>, ...
        for name in ("last.pt", "best.pt", "config.json", "split.json", "learning_curve.png", "metrics.csv"):
            remove_stale_temps(out / name)
    device = select_device(tc.device)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    torch.manual_seed(tc.seed)
    np_rng = np.random.default_rng(tc.seed)
    random.seed(tc.seed)

    train_ids = np.asarray(splits["train"])
    sampling = tc.conformer_sampling != "all"
    if sampling and tc.max_molecules:  # a subset of molecules, each with all its conformers
        mol_keys = np.unique(data.keys[train_ids])
        if len(mol_keys) > tc.max_molecules:
            chosen = np.random.default_rng(tc.seed).choice(mol_keys, tc.max_molecules, replace=False)
            train_ids = train_ids[np.isin(data.keys[train_ids], chosen)]
    elif tc.max_molecules and len(train_ids) > tc.max_molecules:
        train_ids = np.sort(np.random.default_rng(tc.seed).choice(train_ids, tc.max_molecules, replace=False))
    val_ids = np.asarray(splits["val"])
    if tc.max_val_molecules and len(val_ids) > tc.max_val_molecules:
        val_ids = np.sort(np.random.default_rng(tc.seed + 1).choice(val_ids, tc.max_val_molecules, replace=False))
    if len(train_ids) == 0:
        raise ValueError("the training split is empty")
    if len(val_ids) == 0:
        log(f"warning: the validation split is empty ({len(np.unique(data.keys))} molecules, val_fraction "
            f"{tc.val_fraction}): val_loss, val_rmsd and val_element_accuracy will be NaN in metrics.csv and "
            f"best.pt follows the last epoch; use more molecules or a larger --val-fraction")
    too_big = data.n_atoms[train_ids] > config.model.max_atoms
    if too_big.any():
        raise ValueError(f"{int(too_big.sum())} training molecules exceed max_atoms={config.model.max_atoms}")

    weights = conformer_weights(data) if tc.conformer_sampling == "boltzmann" else None
    if weights is not None and getattr(data, "weights", None) is None and "boltzmann_weight" not in data.property_names:
        log("note: the data has no Boltzmann weights; --conformer-sampling boltzmann samples uniformly")
    n_train_molecules = len(np.unique(data.keys[train_ids]))

    def epoch_batches(seed: int) -> list[np.ndarray]:
        """The global batch order of an epoch (identical on every rank)."""
        rng = np.random.default_rng(seed)
        ids = sample_conformers(data.keys, weights, train_ids, tc.conformer_sampling, rng) if sampling else train_ids
        return bucketed_batches(data.n_atoms, ids, tc.batch_size, rng)

    model = GroupInvariantAutoencoder(config.model).to(device)
    net = model
    if dist_info.enabled:
        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    steps_per_epoch = math.ceil((n_train_molecules if sampling else len(train_ids)) / tc.batch_size)
    total_steps = steps_per_epoch * tc.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, total_steps, tc.min_lr_ratio)
    )
    state = RunState(epoch_seed=int(np_rng.integers(2**31)))
    # molecule keys of each split, each once (conformers of a molecule share a key)
    split_keys = {k: list(dict.fromkeys(data.keys[v].tolist())) for k, v in splits.items()}
    meta = dict(metadata or {})
    meta.update(
        molgiae_version=__version__, n_train=int(len(train_ids)), n_val=int(len(splits["val"])),
        n_test=int(len(splits["test"])), hardware=hardware_description(device),
        parameters=int(sum(p.numel() for p in model.parameters())),
    )
    if sampling:
        meta.update(n_train_molecules=int(n_train_molecules), conformer_sampling=tc.conformer_sampling)
    if dist_info.enabled:
        meta["world_size"] = dist_info.world_size

    last = out / "last.pt"
    if tc.init_from and not (resume and last.exists()):
        init = load_checkpoint(tc.init_from, map_location=device)
        try:
            model.load_state_dict(init["model"])
        except RuntimeError as exc:
            raise ValueError(f"--init-from {tc.init_from}: its weights do not fit this model config: {exc}") from exc
        meta["init_from"] = {"file": Path(tc.init_from).name, **{k: init.get("metadata", {}).get(k)
                             for k in ("epochs_done", "steps", "wall_seconds")}}
        log(f"weights initialised from {tc.init_from}")
    if resume and last.exists():
        ckpt = load_checkpoint(last, map_location=device)
        lacking = [k for k in ("optimizer", "scheduler", "run_state", "rng") if k not in ckpt]
        if lacking:
            raise CheckpointError(f"{last} cannot be resumed: it has no {', '.join(lacking)} (a best.pt or an "
                                  f"exported model holds weights only); start a new run, or copy a last.pt there")
        if Config.from_dict(ckpt["config"]).model != config.model:
            raise ValueError(f"{last} was trained with a different model config; cannot resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        s = ckpt["run_state"]
        state = RunState(**{k: s[k] for k in RunState.__dataclass_fields__ if k in s})  # older files: no loss sums
        _set_rng_state(ckpt["rng"], np_rng)
        log(f"resumed from {last}: epoch {state.epoch}, step {state.step}")
    elif resume:
        log(f"--resume: no {last} yet, starting fresh")

    if rank0:
        atomic_write_text(out / "config.json", config.to_json())
        atomic_write_text(out / "split.json", json.dumps({"seed": tc.split_seed, **split_keys}))

    def save(path: Path, with_optimizer: bool = True) -> None:
        if not rank0:  # rank 0 writes every checkpoint
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "model": model.state_dict(),
            "run_state": state.__dict__.copy(),
            "metadata": {**meta, "epochs_done": state.epoch, "steps": state.step, "wall_seconds": state.seconds},
            "test_keys": torch.tensor(split_keys["test"], dtype=torch.long),
            "rng": _rng_state(np_rng),
        }
        if with_optimizer:
            ckpt["optimizer"] = optimizer.state_dict()
            ckpt["scheduler"] = scheduler.state_dict()
        atomic_torch_save(ckpt, path)

    use_amp = tc.amp and device.type == "cuda"
    t_start = time.time() - state.seconds
    deadline = t_start + tc.time_limit_minutes * 60 if tc.time_limit_minutes else float("inf")
    progress = None if quiet else epoch_progress()
    stopped = False
    world, rank = dist_info.world_size, dist_info.rank

    def step_inputs(chunks: list[np.ndarray]):
        """(PyG Batch of this rank's molecules, loss weight, global batch size) per step."""
        items = []
        for chunk in chunks:
            if not dist_info.enabled:
                items.append((chunk, 1.0, len(chunk)))
                continue
            local, weight = rank_share(chunk, rank, world, data.n_atoms)
            items.append((local, weight, len(chunk)))
        collate = _Collate(data)
        if tc.num_workers == 0:
            return map(collate, items)
        return torch.utils.data.DataLoader(
            items, batch_size=None, shuffle=False, collate_fn=collate, num_workers=tc.num_workers,
            pin_memory=device.type == "cuda", prefetch_factor=4,
        )

    model.train()
    try:
        last_plot = 0.0
        while state.epoch < tc.epochs and not stopped:
            batches = epoch_batches(state.epoch_seed)
            task = progress.add_task("train", total=len(batches), epoch=state.epoch + 1, loss=float("nan")) if progress else None
            if progress:
                progress.update(task, completed=state.epoch_step)
            running, running_n = state.epoch_loss_sum, state.epoch_loss_n  # non-zero after a mid-epoch resume
            for batch, weight, n_mols in step_inputs(batches[state.epoch_step:]):
                mols = model.dense(batch.to(device, non_blocking=True))
                target = mols
                if tc.coord_noise > 0:
                    if dist_info.enabled:  # a different, resume-proof noise stream on each rank
                        gen = torch.Generator(device=device)
                        gen.manual_seed((tc.seed * 1_000_003 + state.step) * world + rank)
                        noise = torch.randn(mols.pos.shape, generator=gen, device=device, dtype=mols.pos.dtype)
                    else:
                        noise = torch.randn_like(mols.pos)
                    noisy = mols.pos + tc.coord_noise * noise * mols.mask.unsqueeze(-1)
                    mols = type(mols)(mols.species, noisy, mols.mask)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    out_ = net(mols, permutation="straight_through", tau=tc.tau)
                parts = reconstruction_loss(out_, target, tc.lambda_type, tc.lambda_perm)
                if tc.lambda_smooth > 0:  # TrainConfig insists on coord_noise > 0 with it
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                        clean_z = model.encode(target).z
                    parts["loss"] = parts["loss"] + tc.lambda_smooth * code_smoothness(out_.encoding.z, clean_z)
                optimizer.zero_grad(set_to_none=True)
                if dist_info.enabled:
                    # DDP averages gradients over ranks: world * weight makes the sum of the
                    # atom-weighted rank losses, i.e. the per-atom mean over the global batch
                    (parts["loss"] * (world * weight)).backward()
                    step_loss = (parts["loss"].detach() * weight).reshape(1)
                    torch.distributed.all_reduce(step_loss)
                    step_loss = float(step_loss)
                else:
                    parts["loss"].backward()
                    step_loss = float(parts["loss"].detach())
                if tc.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                scheduler.step()
                state.step += 1
                state.epoch_step += 1
                running += step_loss * n_mols
                running_n += n_mols
                state.epoch_loss_sum, state.epoch_loss_n = running, running_n
                if progress:
                    progress.update(task, advance=1, loss=running / running_n)
                if state.step % tc.checkpoint_every == 0:
                    state.seconds = time.time() - t_start
                    save(last)
                over = time.time() > deadline
                if dist_info.enabled and math.isfinite(deadline):  # every rank stops at the same step
                    flag = torch.tensor([float(over)], device=device)
                    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
                    over = bool(flag.item() > 0)
                if over:
                    stopped = True
                    break
            if progress and task is not None:
                progress.remove_task(task)
            state.seconds = time.time() - t_start
            if stopped:
                save(last)
                if state.history and rank0:
                    write_learning_curve(state.history, out / "learning_curve.png")
                log(f"time limit reached at epoch {state.epoch + 1}, step {state.step}; {last} saved (use --resume)")
                break
            state.epoch += 1
            state.epoch_step = 0
            state.epoch_loss_sum, state.epoch_loss_n = 0.0, 0
            state.epoch_seed = int(np_rng.integers(2**31))
            val = validate(model, data, val_ids, config, device) if len(val_ids) and rank0 else {
                "val_loss": float("nan"), "val_rmsd": float("nan"), "val_element_accuracy": float("nan")}
            state.seconds = time.time() - t_start
            row = {"epoch": state.epoch, "step": state.step, "train_loss": running / max(1, running_n), **val,
                   "seconds": round(state.seconds, 1)}
            state.history.append(row)
            if val["val_rmsd"] < state.best_val_rmsd or not math.isfinite(state.best_val_rmsd):
                state.best_val_rmsd = val["val_rmsd"]
                meta["best_epoch"] = state.epoch
                meta["val_rmsd"] = val["val_rmsd"]
                meta["val_element_accuracy"] = val["val_element_accuracy"]
                save(out / "best.pt", with_optimizer=False)
            save(last)
            if rank0:
                write_metrics_csv(state.history, out / "metrics.csv")
            final = state.epoch == tc.epochs
            if rank0 and (final or time.time() - last_plot > 60):  # matplotlib costs ~0.3 s; not every tiny epoch
                write_learning_curve(state.history, out / "learning_curve.png")
                last_plot = time.time()
            if not quiet:
                log(
                    f"epoch {state.epoch}/{tc.epochs}  train_loss {row['train_loss']:.4f}  val_loss {val['val_loss']:.4f}  "
                    f"val_rmsd {val['val_rmsd']:.3f} Å  val_elem_acc {val['val_element_accuracy']:.3f}  "
                    f"({state.seconds:.0f} s)"
                )
        if dist_info.enabled:
            torch.distributed.barrier()  # rank 0 has written its last checkpoint
    finally:
        if progress:
            progress.stop()
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    return state
