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

from molgiae._version import __version__
from molgiae.api import file_sha256
from molgiae.checkpoint import atomic_torch_save, load_checkpoint
from molgiae.config import Config, ModelConfig, TrainConfig
from molgiae.data.batching import batch_from_set, bucketed_batches, sized_batches
from molgiae.data.conformers import ConformerSet
from molgiae.data.split import seeded_subset, split_ids
from molgiae.data.targets import get_target, target_values
from molgiae.finetune.model import ATOM_REFERENCES, PropertyModel, property_checkpoint
from molgiae.outputs import atomic_csv, atomic_savefig, atomic_write_text
from molgiae.quality import element_counts
from molgiae.train.distributed import DistInfo, setup_distributed, shard_batch, training_device, wrap_ddp
from molgiae.train.engine import Engine, RunState
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
    # sum-pooled targets: per-element offsets fitted on the training labels, or one per-atom mean
    atom_reference: str = "element"
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
        if self.atom_reference not in ATOM_REFERENCES:
            raise ValueError(f"atom_reference must be one of {ATOM_REFERENCES}, not {self.atom_reference!r}")
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
        splits[name] = seeded_subset(splits[name], limit, [tc.split_seed, salt])
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
        mols = batch_from_set(data, chunk).to(device)
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


class PropertyTask:
    """Fine-tuning as an engine :class:`~molgiae.train.engine.Task`: the loss on the standardised
    target, the validation MAE each epoch, the best epoch's weights and early stopping."""

    def __init__(self, model: PropertyModel, net: torch.nn.Module, data: ConformerSet, labels: np.ndarray,
                 splits: dict[str, np.ndarray], cfg: FinetuneConfig, device: torch.device, dist_info: DistInfo,
                 on_epoch: Callable[[list[dict]], None], log: Callable[[str], None], quiet: bool):
        self.model, self.net, self.data, self.labels, self.cfg = model, net, data, labels, cfg
        self.train_ids, self.val_ids = splits["train"], splits["val"]
        self.device, self.dist, self.on_epoch, self.log, self.quiet = device, dist_info, on_epoch, log, quiet
        self.loss_fn = F.l1_loss if cfg.loss == "l1" else F.mse_loss
        self.rng = np.random.default_rng([cfg.seed, 3])
        self.targets = np.nan_to_num(labels)  # training molecules are labelled; NaN elsewhere
        self.eval_batch = max(64, cfg.batch_size)
        self.history: list[dict] = []
        self.best = {"val_mae": math.inf, "epoch": 0, "state": None}
        self.stopped_early = False

    def epoch_inputs(self, state: RunState):
        """(steps, their molecule ids): size-bucketed batches of the training split in a fresh order."""
        batches = bucketed_batches(self.data.n_atoms, self.train_ids, self.cfg.batch_size, self.rng)
        return len(batches), batches

    def loss(self, chunk: np.ndarray) -> tuple[torch.Tensor, float, int]:
        """L1 (or MSE) on the standardised target. Under torchrun each rank takes molecules rank,
        rank+K, ... of the global batch; the loss is a per-molecule mean, so a rank's weight is its
        share of molecules (a rank left without one runs a molecule with weight 0 to join the all-reduce)."""
        local = shard_batch(chunk, self.dist.rank, self.dist.world_size) if self.dist.enabled else chunk
        weight = len(local) / len(chunk)
        local = local if len(local) else chunk[:1]
        mols = batch_from_set(self.data, local, targets=self.targets).to(self.device)
        t = self.model.standardise(mols.y, mols)
        return self.loss_fn(self.net(mols), t), weight, len(chunk)

    def checkpoint(self, state: RunState) -> None:
        """Fine-tuning keeps its best weights in memory and writes them at the end."""

    def time_limit_reached(self, state: RunState) -> None:
        """Fine-tuning has no time limit."""

    def end_epoch(self, state: RunState, train_loss: float) -> bool:
        """Validation MAE, the metrics row, the best weights so far; True to stop early."""
        cfg, spec = self.cfg, get_target(self.cfg.target)
        if len(self.val_ids):
            val_pred = predict_ids(self.model, self.data, self.val_ids, self.eval_batch, self.device)
            val_mae = float(np.mean(np.abs(val_pred - self.labels[self.val_ids])))
        else:
            val_mae = float("nan")
        row = {"epoch": state.epoch, "train_loss": train_loss, "val_mae": val_mae, "seconds": round(state.seconds, 2)}
        self.history.append(row)
        self.on_epoch(self.history)
        improved = not math.isfinite(self.best["val_mae"]) or val_mae < self.best["val_mae"]
        if improved or not len(self.val_ids):
            self.best = {"val_mae": val_mae, "epoch": state.epoch,
                         "state": {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
        if not self.quiet:
            self.log(f"epoch {state.epoch}/{cfg.epochs}  train_loss {train_loss:.4f}  "
                     f"val_mae {val_mae * spec.report_scale:.2f} {spec.report_unit}"
                     f"{'  *' if improved else ''}  ({row['seconds']:.0f} s)")
        if cfg.patience and len(self.val_ids) and state.epoch - self.best["epoch"] >= cfg.patience:
            self.stopped_early = state.epoch < cfg.epochs
            if not self.quiet and self.stopped_early:
                self.log(f"early stop: no validation improvement for {cfg.patience} epochs "
                         f"(best epoch {self.best['epoch']})")
            return True
        return False


def _check_vocabulary(data: ConformerSet, splits: dict[str, np.ndarray], elements: list[int]) -> None:
    used = np.concatenate([splits["train"], splits["val"], splits["test"]])
    present = set(np.unique(np.concatenate([data.elements[data.ptr[i]:data.ptr[i + 1]] for i in used])).tolist())
    if present - set(elements):
        raise ValueError(f"the data has elements {sorted(present - set(elements))} outside the model's vocabulary "
                         f"{sorted(elements)}")


def _property_model(cfg: FinetuneConfig, ae_config: Config, ae_ckpt: dict | None, train_labels: np.ndarray,
                    train_elements: list[np.ndarray], device: torch.device) -> PropertyModel:
    """The model to fine-tune: the checkpoint's encoder (or a fresh one of its architecture), a new
    head standardised on the training labels (``train_elements``: each training molecule's atomic
    numbers, all in the vocabulary: ``_check_vocabulary`` ran); the encoder frozen if asked."""
    if ae_ckpt is not None:
        model = PropertyModel.from_autoencoder(ae_ckpt, cfg.target, cfg.seed)
    else:
        model = PropertyModel.from_scratch(ae_config.model, cfg.target, cfg.seed)
    counts = element_counts(train_elements, ae_config.model.elements)
    model.set_standardisation(train_labels, counts, cfg.atom_reference)
    model.to(device)
    if cfg.freeze_encoder:
        model.encoder.requires_grad_(False)
    return model


def _optimizer(model: PropertyModel, cfg: FinetuneConfig, steps_per_epoch: int):
    """AdamW with the encoder at ``encoder_lr_ratio`` times the head's rate; warm-up and cosine decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    encoder_params = {id(p) for p in model.encoder.parameters()}
    groups = [{"params": [p for p in params if id(p) not in encoder_params], "lr": cfg.lr},
              {"params": [p for p in params if id(p) in encoder_params], "lr": cfg.lr * cfg.encoder_lr_ratio}]
    optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = max(1, int(round(cfg.warmup_fraction * total_steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, warmup, total_steps, cfg.min_lr_ratio))
    return optimizer, scheduler, params


def finetune(
    data: ConformerSet, target: str, out_dir: str | Path, *,
    pretrained: str | Path | None = None, scratch: bool = False, freeze_encoder: bool = False,
    encoder_lr_ratio: float = 1.0, atom_reference: str = "element", fraction: float = 1.0, epochs: int = 30,
    seed: int = 0, device: str = "auto",
    batch_size: int = 32, lr: float = 5e-4, patience: int = 10, quiet: bool = False, loss: str = "l1",
    weight_decay: float = 0.01, max_val: int = 0, max_test: int = 0,
    model_config: ModelConfig | None = None, train_config: TrainConfig | None = None,
    metadata: dict | None = None, log: Callable[[str], None] | None = None,
) -> FinetuneResult:
    """Fine-tune (or train from scratch) a :class:`PropertyModel` on ``target`` and write the artefacts.

    ``pretrained``: an autoencoder checkpoint. Without ``scratch`` its encoder weights are the
    starting point; with ``scratch`` only its architecture and split are used. Without a
    checkpoint (``scratch`` only) the architecture is ``model_config`` (default ModelConfig)
    and the split comes from ``train_config`` (default TrainConfig: 5 % val, 5 % test, seed 0,
    the pretraining defaults). ``atom_reference`` ("element" or "mean"): the offset of
    sum-pooled targets (:meth:`PropertyModel.set_standardisation`).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr))
    cfg = FinetuneConfig(target=target, fraction=fraction, epochs=epochs, seed=seed, batch_size=batch_size,
                         lr=lr, weight_decay=weight_decay, loss=loss, patience=patience,
                         freeze_encoder=freeze_encoder, encoder_lr_ratio=encoder_lr_ratio,
                         atom_reference=atom_reference, max_val=max_val,
                         max_test=max_test, device=device)
    cfg.validate()
    labels = target_values(data, target)
    pretrained = Path(pretrained) if pretrained is not None else None
    ae_config, ae_ckpt, sha = _resolve_architecture(pretrained, scratch, model_config, train_config)
    dist_info = setup_distributed(device)
    if dist_info.rank != 0:
        quiet, log = True, (lambda msg: None)
    dev = training_device(device, dist_info)
    splits, split_info = finetune_splits(data, labels, ae_config.train, fraction, seed, max_val, max_test)
    if len(splits["train"]) == 0:
        raise ValueError("no labelled molecules in the training split")
    _check_vocabulary(data, splits, ae_config.model.elements)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_elements = [data.elements[data.ptr[i]:data.ptr[i + 1]] for i in splits["train"]]
    model = _property_model(cfg, ae_config, None if scratch else ae_ckpt, labels[splits["train"]],
                            train_elements, dev)
    # the autoencoder's code, frame and score heads are part of the encoder but unused here
    net = wrap_ddp(model, dist_info, dev, find_unused_parameters=True)
    optimizer, scheduler, params = _optimizer(model, cfg, math.ceil(len(splits["train"]) / batch_size))

    def write_metrics(history: list[dict]) -> None:
        if dist_info.rank == 0:
            atomic_csv(out / "metrics.csv", METRIC_COLUMNS, history)

    task = PropertyTask(model, net, data, labels, splits, cfg, dev, dist_info, write_metrics, log, quiet)
    if not quiet:
        log(f"fine-tuning {target} ({'scratch' if scratch else 'pretrained'}"
            f"{', frozen encoder' if freeze_encoder else ''}): {len(splits['train'])} train, "
            f"{len(splits['val'])} val, {len(splits['test'])} test molecules; device {dev}")
    engine = Engine(optimizer, scheduler, params, epochs=epochs, grad_clip=cfg.grad_clip, dist_info=dist_info,
                    device=dev, progress=None if quiet else epoch_progress(stderr=True))
    t0 = time.time()
    model.train()
    engine.fit(task, RunState())
    model.load_state_dict(task.best["state"])
    model.eval()
    test_pred = predict_ids(model, data, splits["test"], task.eval_batch, dev)
    result = _result(cfg, task, splits, split_info, labels, test_pred, time.time() - t0, scratch=scratch,
                     pretrained=pretrained, sha=sha, ae_config=ae_config, model_config=model_config,
                     data=data, device=dev, metadata=metadata, log=log)
    if dist_info.enabled:
        result["world_size"] = dist_info.world_size
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    if dist_info.rank == 0:  # every rank holds the same model; only rank 0 writes
        _write_artefacts(out, model, task, result, ae_config, data, labels, splits, test_pred, dev, quiet, log)
    return FinetuneResult(result=result, history=task.history, model=model.cpu().eval(), out_dir=out, splits=splits)


def _result(cfg: FinetuneConfig, task: PropertyTask, splits: dict, split_info: dict, labels: np.ndarray,
            test_pred: np.ndarray, wall: float, *, scratch: bool, pretrained: Path | None, sha: str | None,
            ae_config: Config, model_config: ModelConfig | None, data: ConformerSet, device: torch.device,
            metadata: dict | None, log: Callable[[str], None]) -> dict:
    """The content of ``result.json``."""
    spec = get_target(cfg.target)
    test_ids = splits["test"]
    test_mae = float(np.mean(np.abs(test_pred - labels[test_ids]))) if len(test_ids) else float("nan")
    if not len(test_ids):
        log("note: the test split is empty; test_mae is NaN")
    model, best = task.model, task.best
    return {
        "target": cfg.target,
        "unit": spec.unit,
        "report_unit": spec.report_unit,
        "test_mae": test_mae * spec.report_scale,
        "test_mae_target_unit": test_mae,
        "val_mae": best["val_mae"] * spec.report_scale,
        "val_mae_target_unit": best["val_mae"],
        "best_epoch": best["epoch"],
        "n_train": int(len(splits["train"])),
        "n_val": int(len(splits["val"])),
        "n_test": int(len(test_ids)),
        "n_train_split": split_info["n_train_split"],
        "n_unlabelled_skipped": split_info["unlabelled"],
        "fraction": cfg.fraction,
        "init": "scratch" if scratch else "pretrained",
        "frozen": bool(cfg.freeze_encoder),
        "encoder_lr_ratio": float(cfg.encoder_lr_ratio),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "epochs_run": len(task.history),
        "stopped_early": task.stopped_early,
        "wall_seconds": round(wall, 2),
        "pretrained_checkpoint": str(pretrained) if pretrained is not None and not scratch else None,
        "pretrained_sha256": sha if not scratch else None,
        "architecture_from": str(pretrained) if pretrained is not None else "ModelConfig" + (
            " (given)" if model_config is not None else " (defaults)"),
        "architecture_sha256": sha,
        "split": {"val_fraction": ae_config.train.val_fraction, "test_fraction": ae_config.train.test_fraction,
                  "split_seed": ae_config.train.split_seed},
        "pooling": model.pooling,
        "training_domain": training_domain(data, splits["train"]),
        "target_mean": float(model.target_mean),
        "target_std": float(model.target_std),
        "atom_reference": cfg.atom_reference,
        "element_reference": dict(zip((int(z) for z in ae_config.model.elements),
                                      (float(v) for v in model.element_reference))) if model.pooling == "sum" else None,
        "hyperparameters": dataclasses.asdict(cfg),
        "device": str(device),
        "metadata": dict(metadata or {}),
        "molgiae_version": __version__,
    }


def _write_artefacts(out: Path, model: PropertyModel, task: PropertyTask, result: dict, ae_config: Config,
                     data: ConformerSet, labels: np.ndarray, splits: dict, test_pred: np.ndarray,
                     device: torch.device, quiet: bool, log: Callable[[str], None]) -> None:
    """finetuned.pt, predictions.csv, result.json and learning_curve.png (each written atomically)."""
    cfg, spec = task.cfg, get_target(task.cfg.target)
    model.cpu()
    ckpt = property_checkpoint(model, ae_config, metadata={k: v for k, v in result.items() if k != "hyperparameters"},
                               finetune_config=dataclasses.asdict(cfg))
    atomic_torch_save(ckpt, out / "finetuned.pt")

    def prediction_rows():
        model.to(device)
        for name in ("train", "val", "test"):
            ids = splits[name]
            pred = test_pred if name == "test" else predict_ids(model, data, ids, task.eval_batch, device)
            for i, p in zip(ids, pred):
                yield {"name": data.names[i], "key": int(data.keys[i]), "split": name,
                       "target": repr(float(labels[i])), "prediction": repr(float(p))}

    atomic_csv(out / "predictions.csv", PREDICTION_COLUMNS, prediction_rows())
    model.cpu().eval()
    atomic_write_text(out / "result.json", json.dumps(result, indent=2) + "\n")
    write_finetune_curve(task.history, out / "learning_curve.png", spec.report_unit, spec.report_scale,
                         title=f"{cfg.target} ({result['init']}{', frozen' if cfg.freeze_encoder else ''}, "
                               f"fraction {cfg.fraction:g})")
    if not quiet:
        log(f"test MAE {result['test_mae']:.2f} {spec.report_unit} on {result['n_test']} molecules "
            f"(best epoch {result['best_epoch']}, {result['wall_seconds']:.0f} s); artefacts in {out}")
