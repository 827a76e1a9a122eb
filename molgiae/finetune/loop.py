"""Fine-tuning the encoder on one QM9 target: splits, training loop, artefacts.

Decisions (see also :mod:`molgiae.finetune.model` for standardisation and pooling):

- **Split**: the molecule-level split of the pretraining run, reproduced from the autoencoder
  checkpoint's ``config.train`` (``val_fraction``, ``test_fraction``, ``split_seed``) with
  :func:`molgiae.data.split.split_ids`, so molecules the autoencoder was tested on are never
  trained on. ``fraction`` keeps a seeded subset of the training split's molecules (nested:
  for one seed, the 1 % subset is inside the 5 % subset). Validation and test sets do not
  shrink with ``fraction``; ``max_val``/``max_test`` optionally evaluate a fixed (seed-independent)
  subset of them to save time.
- **Optimiser and schedule**: AdamW (weight decay 0.01) with a linear warm-up over the first
  5 % of steps, then cosine decay to 2 % of the peak rate over the planned epochs (the same
  ``lr_factor`` as pretraining). A fixed schedule keeps pretrained and scratch runs comparable
  epoch for epoch; early stopping only cuts it short.
- **Loss**: L1 on the standardised target (default; equal to the MAE in the target's unit
  divided by σ, i.e. the metric we report) or MSE.
- **Early stopping**: on the validation MAE, evaluated every epoch; stop after ``patience``
  epochs without improvement (0 = never); the best epoch's weights are restored before the
  test evaluation and saved.

Artefacts in ``out_dir`` (all written atomically): ``metrics.csv`` (epoch, train_loss,
val_mae, seconds; val_mae in the target's unit), ``result.json``, ``predictions.csv`` (name,
key, split, target, prediction; target's unit), ``finetuned.pt`` (format ``molgiae-property-1``,
loadable with ``weights_only=True``) and ``learning_curve.png``.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from molgiae._version import __version__
from molgiae.api import file_sha256
from molgiae.checkpoint import atomic_torch_save, load_checkpoint
from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.batching import batch_from_set, bucketed_batches, sized_batches
from molgiae.data.conformers import ConformerSet
from molgiae.data.split import split_ids
from molgiae.data.targets import get_target, target_values
from molgiae.finetune.model import PropertyModel, property_checkpoint
from molgiae.outputs import atomic_csv, atomic_savefig, atomic_write_text
from molgiae.train.distributed import select_device, setup_distributed, shard_batch
from molgiae.train.progress import epoch_progress
from molgiae.train.schedule import lr_factor

METRIC_COLUMNS = ("epoch", "train_loss", "val_mae", "seconds")
PREDICTION_COLUMNS = ("name", "key", "split", "target", "prediction")


@dataclass
class FinetuneConfig:
    """Hyperparameters of one fine-tuning run (stored in ``finetuned.pt`` and ``result.json``)."""

    target: str = "U0"
    fraction: float = 1.0
    epochs: int = 30
    seed: int = 0
    batch_size: int = 32
    lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.02
    loss: str = "l1"  # l1 | mse, on the standardised target
    patience: int = 10  # epochs without validation improvement before stopping; 0 = never
    grad_clip: float = 10.0
    freeze_encoder: bool = False
    # the encoder's learning rate as a fraction of the head's (pretrained encoders keep what they learnt)
    encoder_lr_ratio: float = 1.0
    max_val: int = 0  # 0 = the whole validation split
    max_test: int = 0  # 0 = the whole test split
    device: str = "auto"

    def validate(self) -> None:
        get_target(self.target)
        if not (isinstance(self.fraction, (int, float)) and 0.0 < self.fraction <= 1.0):
            raise ValueError(f"fraction must be in (0, 1] (a share of the training split), got {self.fraction}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 < self.encoder_lr_ratio <= 1.0:
            raise ValueError(f"encoder_lr_ratio must be in (0, 1], got {self.encoder_lr_ratio}")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        if self.loss not in ("l1", "mse"):
            raise ValueError(f"loss must be 'l1' or 'mse', not {self.loss!r}")
        if self.max_val < 0 or self.max_test < 0:
            raise ValueError("max_val and max_test must be >= 0 (0 = all)")


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the ``result.json`` content, the per-epoch history,
    the model with the best weights (on the CPU) and the output directory."""

    result: dict
    history: list[dict]
    model: PropertyModel
    out_dir: Path
    splits: dict[str, np.ndarray] = field(default_factory=dict)


# ----------------------------------------------------------------------------- splits
def finetune_splits(
    data: ConformerSet,
    labels: np.ndarray,
    train_config: TrainConfig,
    fraction: float = 1.0,
    seed: int = 0,
    max_val: int = 0,
    max_test: int = 0,
) -> tuple[dict[str, np.ndarray], dict]:
    """Row ids of the fine-tuning train/val/test sets and counts of what was left out.

    The split is the pretraining run's (``train_config``'s fractions and split seed), restricted
    to labelled conformers; ``fraction`` keeps a seeded, nested subset of the training
    molecules (by key); ``max_val``/``max_test`` a fixed subset of val/test.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1] (a share of the training split), got {fraction}")
    tc = train_config
    base = split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)
    labelled = np.isfinite(labels)
    splits = {k: v[labelled[v]] for k, v in base.items()}
    info = {"unlabelled": int((~labelled).sum()), "n_train_split": int(len(splits["train"]))}
    train = splits["train"]
    if fraction < 1.0 and len(train):
        keys = np.unique(data.keys[train])
        k = max(1, int(round(fraction * len(keys))))
        chosen = np.random.default_rng([seed, 17]).permutation(keys)[:k]
        train = train[np.isin(data.keys[train], chosen)]
    splits["train"] = np.sort(train)
    for name, limit, salt in (("val", max_val, 1), ("test", max_test, 2)):
        ids = splits[name]
        if limit and len(ids) > limit:
            splits[name] = np.sort(np.random.default_rng([tc.split_seed, salt]).choice(ids, limit, replace=False))
    return splits, info


# ----------------------------------------------------------------------------- evaluation
@torch.no_grad()
def training_domain(data: ConformerSet, train_ids: np.ndarray) -> dict:
    """What the model was trained on, for ``predict``'s in-domain flag: the atom-count range
    and the elements of the training molecules."""
    train_ids = np.asarray(train_ids, dtype=np.int64)
    if len(train_ids) == 0:
        return {"n_atoms_min": 0, "n_atoms_max": 0, "elements": []}
    n = np.asarray(data.n_atoms)[train_ids]
    atom_conf = np.repeat(np.arange(len(data.n_atoms)), np.asarray(data.n_atoms))
    elements = np.unique(np.asarray(data.elements)[np.isin(atom_conf, train_ids)])
    return {"n_atoms_min": int(n.min()), "n_atoms_max": int(n.max()), "elements": [int(z) for z in elements]}


def predict_ids(model: PropertyModel, data: ConformerSet, ids: np.ndarray, batch_size: int,
                device: torch.device) -> np.ndarray:
    """Predictions (target unit, float64) for rows ``ids`` of ``data``, in the order of ``ids``."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.empty(len(ids), dtype=np.float64)
    if len(ids) == 0:
        return out
    was_training = model.training
    model.eval()
    position = {int(i): k for k, i in enumerate(ids)}
    for chunk in sized_batches(data.n_atoms, ids, batch_size):
        mols = model.dense(batch_from_set(data, chunk).to(device))
        pred = model.predict(mols).cpu().numpy()
        out[[position[int(i)] for i in chunk]] = pred
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- artefacts
def write_finetune_curve(history: list[dict], path: Path, report_unit: str, report_scale: float, title: str = "") -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    ep = [r["epoch"] for r in history]
    ax[0].plot(ep, [r["train_loss"] for r in history], "o-")
    ax[1].plot(ep, [r["val_mae"] * report_scale for r in history], "o-", color="C2")
    finish_curve_figure(fig, ax, path, report_unit, title)


def finish_curve_figure(fig, ax, path: Path, report_unit: str, title: str = "") -> None:
    """Label the (train loss, val MAE) axes of a fine-tuning curve figure and save it atomically."""
    from matplotlib.ticker import MaxNLocator

    ax[0].set_xlabel("epoch"), ax[0].set_ylabel("train loss (standardised)"), ax[0].set_yscale("log")
    ax[1].set_xlabel("epoch"), ax[1].set_ylabel(f"val MAE ({report_unit})"), ax[1].set_yscale("log")
    for a in ax:
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)


# ----------------------------------------------------------------------------- the loop
def _resolve_architecture(pretrained: Path | None, scratch: bool, model_config: ModelConfig | None,
                          train_config: TrainConfig | None) -> tuple[Config, dict | None, str | None]:
    """(autoencoder config, its checkpoint or None, sha256 of the checkpoint file or None)."""
    if pretrained is not None:
        ckpt = load_checkpoint(pretrained)
        return Config.from_dict(ckpt["config"]), ckpt, file_sha256(pretrained)
    if not scratch:
        raise ValueError("pass a pretrained autoencoder checkpoint, or scratch=True to train from scratch")
    return Config(model=model_config or ModelConfig(), train=train_config or TrainConfig()), None, None


def finetune(
    data: ConformerSet,
    target: str,
    out_dir: str | Path,
    *,
    pretrained: str | Path | None = None,
    scratch: bool = False,
    freeze_encoder: bool = False,
    encoder_lr_ratio: float = 1.0,
    fraction: float = 1.0,
    epochs: int = 30,
    seed: int = 0,
    device: str = "auto",
    batch_size: int = 32,
    lr: float = 5e-4,
    patience: int = 10,
    quiet: bool = False,
    loss: str = "l1",
    weight_decay: float = 0.01,
    max_val: int = 0,
    max_test: int = 0,
    model_config: ModelConfig | None = None,
    train_config: TrainConfig | None = None,
    metadata: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune (or train from scratch) a :class:`PropertyModel` on ``target`` and write the artefacts.

    ``pretrained``: an autoencoder checkpoint. Without ``scratch`` its encoder weights are the
    starting point; with ``scratch`` only its architecture and split are used. Without a
    checkpoint (``scratch`` only) the architecture is ``model_config`` (default ModelConfig)
    and the split comes from ``train_config`` (default TrainConfig: 5 % val, 5 % test, seed 0,
    the pretraining defaults).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = FinetuneConfig(target=target, fraction=fraction, epochs=epochs, seed=seed, batch_size=batch_size,
                         lr=lr, weight_decay=weight_decay, loss=loss, patience=patience,
                         freeze_encoder=freeze_encoder, encoder_lr_ratio=encoder_lr_ratio, max_val=max_val,
                         max_test=max_test, device=device)
    cfg.validate()
    spec = get_target(target)
    labels = target_values(data, target)
    pretrained = Path(pretrained) if pretrained is not None else None
    ae_config, ae_ckpt, sha = _resolve_architecture(pretrained, scratch, model_config, train_config)
    init = "scratch" if scratch else "pretrained"

    dist_info = setup_distributed(device)
    world, rank0 = dist_info.world_size, dist_info.rank == 0
    if not rank0:
        quiet, log = True, (lambda msg: None)
    dev = select_device(device)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
    splits, split_info = finetune_splits(data, labels, ae_config.train, fraction, seed, max_val, max_test)
    train_ids, val_ids, test_ids = splits["train"], splits["val"], splits["test"]
    if len(train_ids) == 0:
        raise ValueError("no labelled molecules in the training split")
    vocab = set(ae_config.model.elements)
    used = np.concatenate([train_ids, val_ids, test_ids])
    present = set(np.unique(np.concatenate([data.elements[data.ptr[i]:data.ptr[i + 1]] for i in used])).tolist())
    if present - vocab:
        raise ValueError(f"the data has elements {sorted(present - vocab)} outside the model's vocabulary "
                         f"{sorted(vocab)}")

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if ae_ckpt is not None and not scratch:
        model = PropertyModel.from_autoencoder(ae_ckpt, target, seed)
    else:
        model = PropertyModel.from_scratch(ae_config.model, target, seed)
    model.set_standardisation(labels[train_ids], data.n_atoms[train_ids])
    model.to(dev)
    if freeze_encoder:
        model.encoder.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    net = model
    if dist_info.enabled:  # gradients of the trainable parameters are averaged over ranks
        # the autoencoder's code, frame and score heads are part of the encoder but unused here
        net = DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None,
                                      find_unused_parameters=True)
    encoder_params = {id(p) for p in model.encoder.parameters()}
    groups = [{"params": [p for p in params if id(p) not in encoder_params], "lr": lr},
              {"params": [p for p in params if id(p) in encoder_params], "lr": lr * cfg.encoder_lr_ratio}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(train_ids) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, int(round(cfg.warmup_fraction * total_steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.min_lr_ratio))
    loss_fn = F.l1_loss if loss == "l1" else F.mse_loss
    rng = np.random.default_rng([seed, 3])
    y_all = torch.from_numpy(np.nan_to_num(labels))
    eval_batch = max(64, batch_size)

    if not quiet:
        log(f"fine-tuning {target} ({init}{', frozen encoder' if freeze_encoder else ''}): "
            f"{len(train_ids)} train, {len(val_ids)} val, {len(test_ids)} test molecules; device {dev}")
    history: list[dict] = []
    best = {"val_mae": math.inf, "epoch": 0, "state": None}
    t0 = time.time()
    task = None
    progress = None if quiet else epoch_progress(stderr=True)
    stopped_early = False
    model.train()
    try:
        for epoch in range(1, epochs + 1):
            batches = bucketed_batches(data.n_atoms, train_ids, batch_size, rng)
            if progress:
                task = progress.add_task("train", total=len(batches), epoch=epoch, loss=float("nan"))
            running, count = 0.0, 0
            for chunk in batches:
                # under torchrun each rank takes molecules rank, rank+K, ... of the global batch;
                # the loss is a per-molecule mean, so a rank's weight is its share of molecules
                # (a rank left without one runs a molecule with weight 0 to join the all-reduce)
                local = shard_batch(chunk, dist_info.rank, world) if dist_info.enabled else chunk
                weight = len(local) / len(chunk)
                local = local if len(local) else chunk[:1]
                mols = model.dense(batch_from_set(data, local).to(dev))
                t = model.standardise(y_all[local].to(dev), mols.n_atoms)
                value = loss_fn(net(mols), t)
                optimizer.zero_grad(set_to_none=True)
                (value * (world * weight)).backward()
                if dist_info.enabled:
                    value = (value.detach() * weight).reshape(1)
                    torch.distributed.all_reduce(value)
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                optimizer.step()
                scheduler.step()
                running += float(value.detach()) * len(chunk)
                count += len(chunk)
                if progress:
                    progress.update(task, advance=1, loss=running / count)
            if progress:
                progress.remove_task(task)
            if len(val_ids):
                val_pred = predict_ids(model, data, val_ids, eval_batch, dev)
                val_mae = float(np.mean(np.abs(val_pred - labels[val_ids])))
            else:
                val_mae = float("nan")
            row = {"epoch": epoch, "train_loss": running / max(1, count), "val_mae": val_mae,
                   "seconds": round(time.time() - t0, 2)}
            history.append(row)
            if rank0:
                atomic_csv(out / "metrics.csv", METRIC_COLUMNS, history)
            improved = not math.isfinite(best["val_mae"]) or val_mae < best["val_mae"]
            if improved or not len(val_ids):
                best = {"val_mae": val_mae, "epoch": epoch,
                        "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
            if not quiet:
                log(f"epoch {epoch}/{epochs}  train_loss {row['train_loss']:.4f}  "
                    f"val_mae {val_mae * spec.report_scale:.2f} {spec.report_unit}"
                    f"{'  *' if improved else ''}  ({row['seconds']:.0f} s)")
            if patience and len(val_ids) and epoch - best["epoch"] >= patience:
                stopped_early = epoch < epochs
                if not quiet and stopped_early:
                    log(f"early stop: no validation improvement for {patience} epochs (best epoch {best['epoch']})")
                break
    finally:
        if progress:
            progress.stop()
    model.load_state_dict(best["state"])
    model.eval()

    test_pred = predict_ids(model, data, test_ids, eval_batch, dev)
    test_mae = float(np.mean(np.abs(test_pred - labels[test_ids]))) if len(test_ids) else float("nan")
    wall = time.time() - t0
    if not len(test_ids):
        log("note: the test split is empty; test_mae is NaN")
    result = {
        "target": target,
        "unit": spec.unit,
        "report_unit": spec.report_unit,
        "test_mae": test_mae * spec.report_scale,
        "test_mae_target_unit": test_mae,
        "val_mae": best["val_mae"] * spec.report_scale,
        "val_mae_target_unit": best["val_mae"],
        "best_epoch": best["epoch"],
        "n_train": int(len(train_ids)),
        "n_val": int(len(val_ids)),
        "n_test": int(len(test_ids)),
        "n_train_split": split_info["n_train_split"],
        "n_unlabelled_skipped": split_info["unlabelled"],
        "fraction": fraction,
        "init": init,
        "frozen": bool(freeze_encoder),
        "encoder_lr_ratio": float(cfg.encoder_lr_ratio),
        "seed": seed,
        "epochs": epochs,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "wall_seconds": round(wall, 2),
        "pretrained_checkpoint": str(pretrained) if pretrained is not None and not scratch else None,
        "pretrained_sha256": sha if not scratch else None,
        "architecture_from": str(pretrained) if pretrained is not None else "ModelConfig" + (
            " (given)" if model_config is not None else " (defaults)"),
        "architecture_sha256": sha,
        "split": {"val_fraction": ae_config.train.val_fraction, "test_fraction": ae_config.train.test_fraction,
                  "split_seed": ae_config.train.split_seed},
        "pooling": model.pooling,
        "training_domain": training_domain(data, train_ids),
        "target_mean": float(model.target_mean),
        "target_std": float(model.target_std),
        "hyperparameters": dataclasses.asdict(cfg),
        "device": str(dev),
        "metadata": dict(metadata or {}),
    }
    result["molgiae_version"] = __version__
    if dist_info.enabled:
        result["world_size"] = world
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    if not rank0:  # every rank holds the same model; only rank 0 writes
        return FinetuneResult(result=result, history=history, model=model.cpu().eval(), out_dir=out, splits=splits)
    model.cpu()
    ckpt = property_checkpoint(model, ae_config, metadata={k: v for k, v in result.items() if k != "hyperparameters"},
                               finetune_config=dataclasses.asdict(cfg))
    atomic_torch_save(ckpt, out / "finetuned.pt")

    def prediction_rows():
        model.to(dev)
        for name, ids in (("train", train_ids), ("val", val_ids), ("test", test_ids)):
            pred = test_pred if name == "test" else predict_ids(model, data, ids, eval_batch, dev)
            for i, p in zip(ids, pred):
                yield {"name": data.names[i], "key": int(data.keys[i]), "split": name,
                       "target": repr(float(labels[i])), "prediction": repr(float(p))}

    atomic_csv(out / "predictions.csv", PREDICTION_COLUMNS, prediction_rows())
    model.cpu().eval()
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    write_finetune_curve(history, out / "learning_curve.png", spec.report_unit, spec.report_scale,
                         title=f"{target} ({init}{', frozen' if freeze_encoder else ''}, fraction {fraction:g})")
    if not quiet:
        log(f"test MAE {result['test_mae']:.2f} {spec.report_unit} on {len(test_ids)} molecules "
            f"(best epoch {best['epoch']}, {wall:.0f} s); artefacts in {out}")
    return FinetuneResult(result=result, history=history, model=model, out_dir=out, splits=splits)
