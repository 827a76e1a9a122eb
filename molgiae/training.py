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
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from molgiae._version import __version__
from molgiae.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_torch_save, load_checkpoint
from molgiae.batch import DenseMolecules
from molgiae.config import Config, TrainConfig
from molgiae.data.batching import batch_from_set, bucketed_batches, sized_batches
from molgiae.data.conformers import ConformerSet
from molgiae.data.split import seeded_subset, split_ids
from molgiae.group import rotation_turn
from molgiae.model import GroupInvariantAutoencoder, molecule_scores, reconstruction_loss
from molgiae.outputs import atomic_csv, atomic_savefig, atomic_write_text, remove_stale_temps
from molgiae.automorphism import SAME_STRUCTURE_RMSD, SetPairRmsd
from molgiae.symmetry import same_up_to_relabelling
from molgiae.train.distributed import (DistInfo, hardware_description, rank_share, setup_distributed,
                                       training_device, wrap_ddp)
from molgiae.train.engine import Engine, RunState
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
    """DataLoader collate: (local conformer ids, loss weight, global batch size, pairs [P, 2] of rows)
    → (DenseMolecules, weight, global batch size, pairs, pair rmsd [P] Å, groups [B]). The pairs'
    distances are ``pair_rmsd``'s (symmetry-aware, :class:`SetPairRmsd`; computed here, beside the
    batch, so a DataLoader's workers take them off the training loop); zeros without it. ``groups``:
    the molecule of each row as a small integer (rows of one molecule share it)."""

    def __init__(self, data: ConformerSet, pair_rmsd: SetPairRmsd | None = None):
        self.data = data
        self.pair_rmsd = pair_rmsd

    def __call__(self, item):
        ids, weight, n_global, pairs = item
        rmsd = np.zeros(len(pairs))
        if len(pairs) and self.pair_rmsd is not None:
            rmsd = self.pair_rmsd(ids[pairs[:, 0]], ids[pairs[:, 1]])
        groups = np.unique(self.data.keys[ids], return_inverse=True)[1].reshape(-1).astype(np.int64)
        return (batch_from_set(self.data, ids), weight, n_global, torch.from_numpy(pairs), torch.from_numpy(rmsd),
                torch.from_numpy(groups))


def conformer_siblings(keys: np.ndarray, ids: np.ndarray) -> dict[int, np.ndarray]:
    """For each of ``ids`` whose molecule key has other conformers among ``ids``: that key's conformer ids."""
    ids = np.asarray(ids)
    order = np.argsort(keys[ids], kind="stable")
    sorted_ids, sorted_keys = ids[order], keys[ids][order]
    bounds = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1], True])
    out: dict[int, np.ndarray] = {}
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a > 1:
            group = sorted_ids[a:b]
            out.update({int(i): group for i in group})
    return out


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


def frame_steadiness(noisy_rotation: torch.Tensor, clean_rotation: torch.Tensor) -> torch.Tensor:
    """How far input noise turns the predicted frame: ``mean_b ‖R̃_b − R_b‖²_F`` (= 4 (1 − cos θ)
    for a turn by θ; 0 … 8, scale-free). On a nearly degenerate frame (pooled vectors short or nearly
    parallel) R swings under 0.1 Å of noise, the canonical pose swings with it, and z must follow to
    reconstruct: on the steepest molecules ∂z/∂x is rank one along the direction R turns fastest.
    (The noise's own global rotation, ~0.01 rad at 0.1 Å, is left in: it is small.)

    noisy_rotation [B, 3, 3] (with gradient), clean_rotation [B, 3, 3] (a constant) → scalar."""
    return rotation_turn(noisy_rotation.float(), clean_rotation.detach().float()).mean()


def local_smoothness(model: GroupInvariantAutoencoder, target: DenseMolecules, clean_z: torch.Tensor, sigma: float,
                     bf16: bool) -> torch.Tensor:
    """:func:`code_smoothness` between the codes of ``target`` moved by N(0, sigma²) noise (with
    gradient) and of ``target`` itself, times ``(0.1 / sigma)²`` (so a locally linear z scores as at
    0.1 Å while a spike steeper at small scale than at 0.1 Å weighs more). One more encoder pass.

    target: B molecules, clean_z [B, D] their codes (a constant) → scalar."""
    noise = torch.randn_like(target.pos) * target.mask.unsqueeze(-1)
    with torch.autocast(target.pos.device.type, dtype=torch.bfloat16, enabled=bf16):
        moved_z = model.encode(target.with_pos(target.pos + sigma * noise)).z
    return code_smoothness(moved_z, clean_z) * (0.1 / sigma) ** 2


def aligned_pair_rmsd(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rmsd after the best rotation (Kabsch, proper rotations only) of conformer pairs given in the
    same atom order: a, b [P, N, 3], mask [P, N] → [P]."""
    m = mask.to(a.dtype).unsqueeze(-1)
    n = m.sum(1).clamp_min(1.0)  # [P, 1]
    a = (a - (a * m).sum(1, keepdim=True) / n.unsqueeze(1)) * m
    b = (b - (b * m).sum(1, keepdim=True) / n.unsqueeze(1)) * m
    u, sv, vt = torch.linalg.svd(a.transpose(1, 2) @ b)
    d = torch.sign(torch.linalg.det(u @ vt))
    overlap = sv[:, 0] + sv[:, 1] + d * sv[:, 2]
    msd = ((a ** 2).sum((1, 2)) + (b ** 2).sum((1, 2)) - 2 * overlap) / n.squeeze(-1)
    return msd.clamp_min(0.0).sqrt()


def conformer_metric(z: torch.Tensor, pairs: torch.Tensor, rmsd: torch.Tensor) -> torch.Tensor:
    """Variance over conformer pairs of ``log(|z_a − z_b| / rmsd_ab)``: 0 exactly when code distance
    is proportional to aligned rmsd (one constant for the batch), whatever the scale of z.

    z [B, D], pairs [P, 2] (rows of z), rmsd [P] (Å) → scalar; 0 for fewer than 2 pairs."""
    if len(pairs) < 2:
        return z.sum() * 0.0
    dz = (z[pairs[:, 0]] - z[pairs[:, 1]]).float().pow(2).sum(-1).clamp_min(1e-12).sqrt()
    return (dz.log() - rmsd.float().log()).var(unbiased=False)


def conformer_separation(z: torch.Tensor, pairs: torch.Tensor, groups: torch.Tensor,
                         margin: float = 1.5) -> torch.Tensor:
    """How often a conformer's partner is not nearer in z than every other molecule of the batch:
    over both ends a of each pair (a, b), ``mean relu(log(margin · |z_a − z_b|) − log min_c |z_a − z_c|)``
    with c over the rows of *other* molecules. 0 when each partner is ``margin`` times nearer than
    the nearest other molecule; scale-free (a common factor on z cancels), so it asks conformers of
    one molecule to gather relative to the spread of molecules, which the conformer-metric term
    (distances proportional to rmsd, up to a free constant) leaves open.

    z [B, D]; pairs [P, 2] rows of one molecule; groups [B] the molecule of each row → scalar; 0
    without pairs or without another molecule in the batch."""
    if len(pairs) == 0:
        return z.sum() * 0.0
    z = z.float()
    anchors = torch.cat([pairs[:, 0], pairs[:, 1]])
    partners = torch.cat([pairs[:, 1], pairs[:, 0]])
    d = torch.cdist(z[anchors], z).clamp_min(1e-6)  # [2P, B]
    other = groups[anchors].unsqueeze(1) != groups.unsqueeze(0)
    if not bool(other.any()):
        return z.sum() * 0.0
    # with two molecules in the batch every anchor has a row of another one: all minima are finite
    nearest_other = d.masked_fill(~other, float("inf")).min(1).values
    positive = d.gather(1, partners.unsqueeze(1)).squeeze(1)
    return torch.relu(torch.log(margin * positive) - torch.log(nearest_other)).mean()


#: pairs closer than this (Å) are left out of the conformer-metric term (near-duplicates, whose
#: log-ratio would be dominated by noise)
MIN_PAIR_RMSD = SAME_STRUCTURE_RMSD


def training_objective(net, model: GroupInvariantAutoencoder, target: DenseMolecules, noise: torch.Tensor | None,
                       tc: TrainConfig, bf16: bool, pairs: torch.Tensor | None = None,
                       pair_rmsd: torch.Tensor | None = None, groups: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of one batch: reconstruction of the clean ``target`` from the input moved
    by ``tc.coord_noise * noise`` ([B, N, 3] standard normal, or None without noise), plus
    ``lambda_smooth`` × :func:`code_smoothness`, ``lambda_smooth_local`` × :func:`local_smoothness`,
    ``lambda_denoise`` × :func:`noise_prediction_loss`, ``lambda_frame`` × :func:`frame_steadiness`
    and ``lambda_conformer`` × :func:`conformer_metric` over ``pairs`` [P, 2] (rows of the batch
    that are conformers of one molecule) at distances ``pair_rmsd`` [P] (Å; the symmetry-aware rmsd,
    :class:`molgiae.automorphism.SetPairRmsd`; None: the fixed-order Kabsch rmsd of the batch's
    coordinates); pairs under :data:`MIN_PAIR_RMSD` left out, and with the fixed-order rmsd also pairs
    that are one structure up to a relabelling of atoms or a mirror image (:func:`same_up_to_relabelling`,
    which cannot tell the two apart; the symmetry-aware distance can, so given distances keep mirror-image
    conformers, which the code must tell apart); ``lambda_separation`` × :func:`conformer_separation`
    over the same pairs, with ``groups`` [B] the molecule of each row. ``net`` runs the forward (the model, or its DDP wrapper),
    ``model.encode`` the clean code; ``bf16``: under bf16 autocast. → scalar."""
    mols = target
    if tc.coord_noise > 0:
        mols = target.with_pos(target.pos + tc.coord_noise * noise * target.mask.unsqueeze(-1))
    with torch.autocast(target.pos.device.type, dtype=torch.bfloat16, enabled=bf16):
        out = net(mols, permutation="straight_through", tau=tc.tau)
    loss = reconstruction_loss(out, target, tc.lambda_type, tc.lambda_perm)["loss"]
    if tc.lambda_smooth > 0 or tc.lambda_smooth_local > 0 or tc.lambda_frame > 0:
        with torch.no_grad(), torch.autocast(target.pos.device.type, dtype=torch.bfloat16, enabled=bf16):
            clean = model.encode(target)
    if tc.lambda_smooth > 0:  # TrainConfig insists on coord_noise > 0 with it (and with lambda_frame)
        loss = loss + tc.lambda_smooth * code_smoothness(out.encoding.z, clean.z)
    if tc.lambda_frame > 0:
        loss = loss + tc.lambda_frame * frame_steadiness(out.encoding.rotation, clean.rotation)
    if tc.lambda_smooth_local > 0:
        loss = loss + tc.lambda_smooth_local * local_smoothness(model, target, clean.z, tc.smooth_sigma, bf16)
    if tc.lambda_denoise > 0:  # coord_noise > 0 and a noise head: checked at the start
        loss = loss + tc.lambda_denoise * noise_prediction_loss(out.encoding.atom_noise, noise, target.mask)
    if tc.lambda_conformer > 0 and pairs is not None and len(pairs) >= 2:
        with torch.no_grad():
            if pair_rmsd is None:
                a, b, mask = target.pos[pairs[:, 0]], target.pos[pairs[:, 1]], target.mask[pairs[:, 0]]
                rmsd = aligned_pair_rmsd(a, b, mask)
                keep = ~same_up_to_relabelling(a, b, out.encoding.species[pairs[:, 0]], mask) & (rmsd >= MIN_PAIR_RMSD)
            else:  # relabelled copies are at ≈ 0 here; mirror images at their real distance
                rmsd = pair_rmsd.to(target.pos.dtype)
                keep = rmsd >= MIN_PAIR_RMSD
        loss = loss + tc.lambda_conformer * conformer_metric(out.encoding.z, pairs[keep], rmsd[keep])
        if tc.lambda_separation > 0 and groups is not None:
            loss = loss + tc.lambda_separation * conformer_separation(out.encoding.z, pairs[keep], groups)
    return loss


def noise_prediction_loss(predicted: torch.Tensor, noise: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Atom-level denoising: ``mean_i |ε̂_i − (ε_i − ε̄)|² / 3`` over real atoms, where ``ε`` [B, N, 3]
    is the standard-normal input noise and ``ε̄`` its mean over the molecule's atoms (the encoder
    sees centred coordinates, so a common shift is invisible). Predicting 0 scores ≈ 1.

    predicted [B, N, 3], noise [B, N, 3], mask [B, N] → scalar.
    """
    noise = noise.float()
    m = mask.to(noise.dtype).unsqueeze(-1)
    centred = (noise - (noise * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1)) * m
    return (((predicted.float() - centred) ** 2) * m).sum() / (3 * m.sum().clamp_min(1))


# ----------------------------------------------------------------------------- artefacts
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
def validate(model, data: ConformerSet, ids: np.ndarray, config: Config, device) -> dict:
    """Validation loss (as trained: straight-through permutation) and, from the same forward
    pass (its values are those of the hard permutation), mean rmsd and element accuracy."""
    model.eval()
    losses, weights, rmsd, accuracy = [], [], [], []
    for chunk in sized_batches(data.n_atoms, ids, config.train.batch_size):
        mols = batch_from_set(data, chunk).to(device)
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



# ----------------------------------------------------------------------------- the run
def run_config(out: Path, resume: bool) -> Config:
    """The config a run starts from: with ``resume``, OUT/config.json (else OUT/last.pt's config,
    e.g. the bundled checkpoint copied there), else the defaults. ValueError for an unusable file."""
    try:
        if resume and (out / "config.json").exists():
            return Config.from_dict(json.loads((out / "config.json").read_text()))
        if resume and (out / "last.pt").exists():
            return Config.from_dict(load_checkpoint(out / "last.pt")["config"])
    except CheckpointError as exc:
        raise ValueError(f"cannot resume: {exc}") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:  # an unreadable or hand-edited config.json
        raise ValueError(f"cannot resume: {out / 'config.json'} is unusable ({type(exc).__name__}: {exc})") from None
    return Config()


def training_splits(data: ConformerSet, config: Config) -> tuple[dict[str, np.ndarray], int]:
    """(the molecule-level split of ``data``, training conformers left out for exceeding ``max_atoms``)."""
    tc = config.train
    splits = split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)
    too_big = data.n_atoms[splits["train"]] > config.model.max_atoms
    splits["train"] = splits["train"][~too_big]
    return splits, int(too_big.sum())


def training_ids(config: Config, data: ConformerSet, splits: dict[str, np.ndarray],
                 log: Callable[[str], None]) -> tuple[np.ndarray, np.ndarray]:
    """(training conformer ids, validation conformer ids) after ``max_molecules`` and
    ``max_val_molecules``; clear errors for an empty training split or too large molecules."""
    tc = config.train
    train_ids = np.asarray(splits["train"])
    if tc.conformer_sampling != "all" and tc.max_molecules:  # a subset of molecules, each with all its conformers
        mol_keys = np.unique(data.keys[train_ids])
        if len(mol_keys) > tc.max_molecules:
            chosen = np.random.default_rng(tc.seed).choice(mol_keys, tc.max_molecules, replace=False)
            train_ids = train_ids[np.isin(data.keys[train_ids], chosen)]
    else:
        train_ids = seeded_subset(train_ids, tc.max_molecules, tc.seed)
    val_ids = seeded_subset(np.asarray(splits["val"]), tc.max_val_molecules, tc.seed + 1)
    if len(train_ids) == 0:
        raise ValueError("the training split is empty")
    if len(val_ids) == 0:
        log(f"warning: the validation split is empty ({len(np.unique(data.keys))} molecules, val_fraction "
            f"{tc.val_fraction}): val_loss, val_rmsd and val_element_accuracy will be NaN in metrics.csv and "
            f"best.pt follows the last epoch; use more molecules or a larger --val-fraction")
    too_big = data.n_atoms[train_ids] > config.model.max_atoms
    if too_big.any():
        raise ValueError(f"{int(too_big.sum())} training molecules exceed max_atoms={config.model.max_atoms}")
    return train_ids, val_ids


class AutoencoderTask:
    """The autoencoder as an engine :class:`~molgiae.train.engine.Task`: denoising reconstruction
    loss (plus the code-smoothness term), validation, ``best.pt``/``last.pt``, metrics and curve.

    Builds the model, optimiser and schedule; :meth:`start` restores ``--init-from`` weights or a
    ``--resume`` checkpoint and writes ``config.json`` and ``split.json``.
    """

    def __init__(self, config: Config, data: ConformerSet, splits: dict[str, np.ndarray], out: Path,
                 device: torch.device, dist_info: DistInfo, metadata: dict | None, log: Callable[[str], None],
                 quiet: bool):
        tc = self.tc = config.train
        self.config, self.data, self.out, self.device, self.dist = config, data, out, device, dist_info
        self.log, self.quiet, self.rank0 = log, quiet, dist_info.rank == 0
        torch.manual_seed(tc.seed)
        self.np_rng = np.random.default_rng(tc.seed)
        random.seed(tc.seed)
        self.train_ids, self.val_ids = training_ids(config, data, splits, log)
        if tc.lambda_denoise > 0 and not config.model.noise_head:
            raise ValueError("lambda_denoise needs a model with a noise head (--noise-head)")
        self.siblings = conformer_siblings(data.keys, self.train_ids) if tc.lambda_conformer > 0 else {}
        self._pair_pool: tuple[np.ndarray, np.ndarray] | None = None  # built on first use (conformer_pairs)
        self.pair_rmsd = SetPairRmsd(data) if tc.lambda_conformer > 0 else None  # the term's distances
        if tc.lambda_smooth_local > 0 and dist_info.enabled:
            raise ValueError("--lambda-smooth-local is not supported under torchrun yet (its encoder pass bypasses "
                             "the DDP wrapper); train on one process")
        if tc.lambda_conformer > 0:
            if dist_info.enabled:
                raise ValueError("--lambda-conformer is not supported under torchrun yet (its pairs would be split "
                                 "across processes); train on one process")
            if not self.siblings:
                raise ValueError("--lambda-conformer needs molecules with several conformers in the training split "
                                 "(e.g. a store from `molgiae data prepare` on conformer ensembles)")
            log(f"conformer-metric term: {len(self.siblings)} training conformers have another conformer of their molecule")
        self.sampling = tc.conformer_sampling != "all"
        self.weights = conformer_weights(data) if tc.conformer_sampling == "boltzmann" else None
        if self.weights is not None and getattr(data, "weights", None) is None \
                and "boltzmann_weight" not in data.property_names:
            log("note: the data has no Boltzmann weights; --conformer-sampling boltzmann samples uniformly")
        n_train_molecules = len(np.unique(data.keys[self.train_ids]))
        self.model = GroupInvariantAutoencoder(config.model).to(device)
        if tc.compile:  # in place: parameter names and checkpoints stay those of the eager model
            self.model.encoder.compile(dynamic=True)
        self.net = wrap_ddp(self.model, dist_info, device)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
        steps_per_epoch = math.ceil((n_train_molecules if self.sampling else len(self.train_ids)) / tc.batch_size)
        total_steps = steps_per_epoch * tc.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, tc.warmup_steps, total_steps, tc.min_lr_ratio))
        self.state = RunState(epoch_seed=int(self.np_rng.integers(2**31)))
        # molecule keys of each split, each once (conformers of a molecule share a key)
        self.split_keys = {k: list(dict.fromkeys(data.keys[v].tolist())) for k, v in splits.items()}
        self.meta = self._metadata(metadata, splits, n_train_molecules)
        self.use_amp = (tc.amp and device.type == "cuda") or (tc.cpu_bf16 and device.type == "cpu")
        self.last_plot = 0.0

    def _metadata(self, metadata: dict | None, splits: dict, n_train_molecules: int) -> dict:
        meta = dict(metadata or {})
        meta.update(
            molgiae_version=__version__, n_train=int(len(self.train_ids)), n_val=int(len(splits["val"])),
            n_test=int(len(splits["test"])), hardware=hardware_description(self.device),
            parameters=int(sum(p.numel() for p in self.model.parameters())),
        )
        if self.sampling:
            meta.update(n_train_molecules=int(n_train_molecules), conformer_sampling=self.tc.conformer_sampling)
        if self.dist.enabled:
            meta["world_size"] = self.dist.world_size
        return meta

    # -- start: warm start, resume, run files
    def start(self, resume: bool) -> RunState:
        """Restore ``--init-from`` weights or the ``--resume`` checkpoint; write config.json and split.json."""
        last = self.out / "last.pt"
        if self.tc.init_from and not (resume and last.exists()):
            self._init_from(self.tc.init_from)
        if resume and last.exists():
            self._resume(last)
        elif resume:
            self.log(f"--resume: no {last} yet, starting fresh")
        if self.rank0:
            atomic_write_text(self.out / "config.json", self.config.to_json())
            atomic_write_text(self.out / "split.json", json.dumps({"seed": self.tc.split_seed, **self.split_keys}))
        return self.state

    def _init_from(self, path: str) -> None:
        init = load_checkpoint(path, map_location=self.device)
        try:
            missing, unexpected = self.model.load_state_dict(init["model"], strict=False)
        except RuntimeError as exc:
            raise ValueError(f"--init-from {path}: its weights do not fit this model config: {exc}") from exc
        new_head = [k for k in missing if k.startswith(("encoder.noise_vectors.", "encoder.noise_gates."))]
        if unexpected or len(new_head) != len(missing):
            raise ValueError(f"--init-from {path}: its weights do not fit this model config: missing "
                             f"{[k for k in missing if k not in new_head]}, unexpected {list(unexpected)}")
        if new_head:
            self.log("note: the noise head starts fresh (the --init-from model has none)")
        done = init.get("metadata", {})
        self.meta["init_from"] = {"file": Path(path).name,
                                  **{k: done.get(k) for k in ("epochs_done", "steps", "wall_seconds")}}
        self.log(f"weights initialised from {path}")

    def _resume(self, last: Path) -> None:
        ckpt = load_checkpoint(last, map_location=self.device)
        lacking = [k for k in ("optimizer", "scheduler", "run_state", "rng") if k not in ckpt]
        if lacking:
            raise CheckpointError(f"{last} cannot be resumed: it has no {', '.join(lacking)} (a best.pt or an "
                                  f"exported model holds weights only); start a new run, or copy a last.pt there")
        if Config.from_dict(ckpt["config"]).model != self.config.model:
            raise ValueError(f"{last} was trained with a different model config; cannot resume")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = RunState.from_dict(ckpt["run_state"])
        _set_rng_state(ckpt["rng"], self.np_rng)
        self.log(f"resumed from {last}: epoch {self.state.epoch}, step {self.state.step}")

    def save(self, path: Path, state: RunState, with_optimizer: bool = True) -> None:
        """A checkpoint with config, weights, run state and RNG (and optimiser/schedule); rank 0 only."""
        if not self.rank0:
            return
        ckpt = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "run_state": state.to_dict(),
            "metadata": {**self.meta, "epochs_done": state.epoch, "steps": state.step, "wall_seconds": state.seconds},
            "test_keys": torch.tensor(self.split_keys["test"], dtype=torch.long),
            "rng": _rng_state(self.np_rng),
        }
        if with_optimizer:
            ckpt["optimizer"] = self.optimizer.state_dict()
            ckpt["scheduler"] = self.scheduler.state_dict()
        atomic_torch_save(ckpt, path)

    # -- the Task interface
    def epoch_inputs(self, state: RunState):
        """(steps in the epoch, (padded batch of this rank's molecules, loss weight, global batch size) per
        remaining step). The batch order is the same on every rank and a function of ``epoch_seed``."""
        rng = np.random.default_rng(state.epoch_seed)
        ids = self.train_ids
        if self.sampling:
            ids = sample_conformers(self.data.keys, self.weights, ids, self.tc.conformer_sampling, rng)
        batches = bucketed_batches(self.data.n_atoms, ids, self.tc.batch_size, rng)
        items = []
        for k in range(state.epoch_step, len(batches)):  # batch k's partners: seeded by (epoch, k), resumable
            chunk = batches[k]
            if self.dist.enabled:
                local, weight = rank_share(chunk, self.dist.rank, self.dist.world_size, self.data.n_atoms)
                items.append((local, weight, len(chunk), np.zeros((0, 2), dtype=np.int64)))
            else:
                ids_k, pairs = self.with_siblings(chunk, [state.epoch_seed, k])
                items.append((ids_k, 1.0, len(chunk), pairs))
        collate = _Collate(self.data, self.pair_rmsd)
        if self.tc.num_workers == 0:
            return len(batches), map(collate, items)
        return len(batches), torch.utils.data.DataLoader(
            items, batch_size=None, shuffle=False, collate_fn=collate, num_workers=self.tc.num_workers,
            pin_memory=self.device.type == "cuda", prefetch_factor=4,
        )

    def with_siblings(self, chunk: np.ndarray, seed: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(``chunk`` plus one other training conformer of the same molecule, drawn with ``seed``, for
        up to half of its conformers that have one, pairs [P, 2] of rows of the result) for the
        conformer-metric term; ``chunk`` and no pairs without the term. A sibling has the same
        atoms, so it pads nothing. With ``conformer_pairs`` K, a batch holding fewer than K such
        conformers also gets extra ones (each with a partner) whose size lies in the batch's range."""
        if not self.siblings:
            return chunk, np.zeros((0, 2), dtype=np.int64)
        rng = np.random.default_rng(seed)
        have = [i for i in chunk.tolist() if i in self.siblings]
        have = have[: max(len(chunk) // 2, 2)]
        extra = self._extra_pair_members(chunk, self.tc.conformer_pairs - len(have), rng)
        if len(have) + len(extra) < 2:
            return chunk, np.zeros((0, 2), dtype=np.int64)
        members = have + extra
        partners = [int(rng.choice(self.siblings[i][self.siblings[i] != i])) for i in members]
        ids = np.concatenate([chunk, np.asarray(extra + partners, dtype=chunk.dtype)])
        rows = {int(i): r for r, i in enumerate(chunk.tolist())}
        rows.update({i: len(chunk) + k for k, i in enumerate(extra)})
        first_partner = len(chunk) + len(extra)
        pairs = np.array([[rows[i], first_partner + k] for k, i in enumerate(members)], dtype=np.int64).reshape(-1, 2)
        return ids, pairs

    def _extra_pair_members(self, chunk: np.ndarray, need: int, rng: np.random.Generator) -> list[int]:
        """Up to ``need`` multi-conformer training conformers not in ``chunk`` whose atom count lies
        between the chunk's smallest and largest (so they add no padding), drawn with ``rng``."""
        if need <= 0:
            return []
        if self._pair_pool is None:  # the conformers that have a sibling, sorted by atom count
            pool = np.fromiter(self.siblings.keys(), dtype=np.int64)
            pool = pool[np.argsort(self.data.n_atoms[pool], kind="stable")]
            self._pair_pool = (pool, self.data.n_atoms[pool])
        pool, sizes = self._pair_pool
        sizes_in = self.data.n_atoms[chunk]
        lo, hi = np.searchsorted(sizes, sizes_in.min(), "left"), np.searchsorted(sizes, sizes_in.max(), "right")
        candidates = np.setdiff1d(pool[lo:hi], chunk)
        if len(candidates) == 0:
            return []
        return [int(i) for i in rng.choice(candidates, size=min(need, len(candidates)), replace=False)]

    def loss(self, item) -> tuple[torch.Tensor, float, int]:
        """Reconstruction loss of the clean conformer from (optionally) noisy coordinates, plus
        ``lambda_smooth`` times :func:`code_smoothness` (:func:`training_objective`)."""
        batch, weight, n_molecules, pairs, pair_rmsd, groups = item
        target = batch.to(self.device, non_blocking=True)
        noise = self._noise(target.pos) if self.tc.coord_noise > 0 else None
        loss = training_objective(self.net, self.model, target, noise, self.tc, self.use_amp, pairs.to(self.device),
                                  pair_rmsd.to(self.device), groups.to(self.device))
        return loss, weight, n_molecules

    def _noise(self, pos: torch.Tensor) -> torch.Tensor:
        """Standard normal noise like ``pos``; under torchrun a different, resume-proof stream per rank."""
        if not self.dist.enabled:
            return torch.randn_like(pos)
        gen = torch.Generator(device=self.device)
        gen.manual_seed((self.tc.seed * 1_000_003 + self.state.step) * self.dist.world_size + self.dist.rank)
        return torch.randn(pos.shape, generator=gen, device=self.device, dtype=pos.dtype)

    def checkpoint(self, state: RunState) -> None:
        self.save(self.out / "last.pt", state)

    def time_limit_reached(self, state: RunState) -> None:
        if state.history and self.rank0:
            write_learning_curve(state.history, self.out / "learning_curve.png")
        self.log(f"time limit reached at epoch {state.epoch + 1}, step {state.step}, after {state.seconds / 60:.1f} "
                 f"min of training (--time-limit {self.tc.time_limit_minutes:g} counts all resumes); "
                 f"{self.out / 'last.pt'} saved: --resume with a larger --time-limit trains on")

    def end_epoch(self, state: RunState, train_loss: float) -> bool:
        """Validate (rank 0), append the metrics row, save best.pt / last.pt, metrics.csv and the curve."""
        state.epoch_seed = int(self.np_rng.integers(2**31))
        t0 = time.time()
        nan = float("nan")
        val = validate(self.model, self.data, self.val_ids, self.config, self.device) \
            if len(self.val_ids) and self.rank0 else {"val_loss": nan, "val_rmsd": nan, "val_element_accuracy": nan}
        state.seconds += time.time() - t0
        row = {"epoch": state.epoch, "step": state.step, "train_loss": train_loss, **val,
               "seconds": round(state.seconds, 1)}
        state.history.append(row)
        if val["val_rmsd"] < state.best_val or not math.isfinite(state.best_val):
            state.best_val = val["val_rmsd"]
            self.meta.update(best_epoch=state.epoch, val_rmsd=val["val_rmsd"],
                             val_element_accuracy=val["val_element_accuracy"])
            self.save(self.out / "best.pt", state, with_optimizer=False)
        self.save(self.out / "last.pt", state)
        if self.rank0:
            write_metrics_csv(state.history, self.out / "metrics.csv")
            final = state.epoch == self.tc.epochs
            if final or time.time() - self.last_plot > 60:  # matplotlib costs ~0.3 s; not every tiny epoch
                write_learning_curve(state.history, self.out / "learning_curve.png")
                self.last_plot = time.time()
        if not self.quiet:
            self.log(f"epoch {state.epoch}/{self.tc.epochs}  train_loss {train_loss:.4f}  "
                     f"val_loss {val['val_loss']:.4f}  val_rmsd {val['val_rmsd']:.3f} Å  "
                     f"val_elem_acc {val['val_element_accuracy']:.3f}  ({state.seconds:.0f} s)")
        return False


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
    log = log or (lambda msg: print(msg, file=sys.stderr))
    if dist_info.rank != 0:
        quiet, log = True, (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if dist_info.rank == 0:  # temporary files of a run killed mid-write (SIGKILL): last.pt.tmp-<pid>, ...
        for name in ("last.pt", "best.pt", "config.json", "split.json", "learning_curve.png", "metrics.csv"):
            remove_stale_temps(out / name)
    device = training_device(tc.device, dist_info)
    try:
        task = AutoencoderTask(config, data, splits, out, device, dist_info, metadata, log, quiet)
        state = task.start(resume)
        engine = Engine(task.optimizer, task.scheduler, list(task.model.parameters()), epochs=tc.epochs,
                        grad_clip=tc.grad_clip, dist_info=dist_info, device=device,
                        checkpoint_every=tc.checkpoint_every, time_limit_minutes=tc.time_limit_minutes,
                        progress=None if quiet else epoch_progress())
        task.model.train()
        engine.fit(task, state)
        if dist_info.enabled:
            torch.distributed.barrier()  # rank 0 has written its last checkpoint
    finally:
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()
    return state
