"""Reconstruction metrics (docs/method.md, section 7): rmsd (hard P, predicted R and t, no alignment),
element accuracy, aligned rmsd (Kabsch + same-element Hungarian; diagnostic) and the
invariance error of z under random group elements."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from molgiae.data.batching import batch_from_set, make_batch, sized_batches
from molgiae.config import Config
from molgiae.data.conformers import ConformerSet
from molgiae.data.split import split_ids
from molgiae.group import random_rotation
from molgiae.model import GroupInvariantAutoencoder, molecule_scores
from molgiae.symmetry import is_symmetric


def kabsch_rmsd(pred: np.ndarray, ref: np.ndarray) -> tuple[float, np.ndarray]:
    """RMSD after the best proper rotation + translation of ``pred`` onto ``ref`` ([n, 3] each).

    Returns (rmsd, aligned pred)."""
    p = pred - pred.mean(0)
    q = ref - ref.mean(0)
    U, _, Vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(U @ Vt))
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt
    aligned = p @ R + ref.mean(0)
    return float(np.sqrt(((aligned - ref) ** 2).sum(1).mean())), aligned


def aligned_rmsd(pred: np.ndarray, ref: np.ndarray, elements: np.ndarray, iterations: int = 3) -> float:
    """Shape error whatever the predicted action: alternate Kabsch alignment and same-element
    Hungarian matching of predicted to reference atoms; the best rmsd seen."""
    order = np.arange(len(ref))
    best = np.inf
    for _ in range(iterations):
        rmsd, aligned = kabsch_rmsd(pred[order], ref)
        best = min(best, rmsd)
        new = order.copy()
        for e in np.unique(elements):
            idx = np.flatnonzero(elements == e)
            cost = ((aligned[idx][:, None, :] - ref[idx][None, :, :]) ** 2).sum(-1)  # [pred slot, ref atom]
            rows, cols = linear_sum_assignment(cost)
            new[idx[cols]] = order[idx[rows]]
        if np.array_equal(new, order):
            break
        order = new
    rmsd, _ = kabsch_rmsd(pred[order], ref)
    return min(best, rmsd)


def random_group_element(n: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random (R, t, π): R Haar-uniform (:func:`molgiae.group.random_rotation`), t ~ N(0, 5² Å²),
    π uniform; all drawn from ``generator``."""
    R = random_rotation(generator)
    t = 5.0 * torch.randn(3, generator=generator)
    perm = torch.randperm(n, generator=generator)
    return R, t, perm


@dataclass
class MoleculeScores:
    """Per-molecule arrays [M]: rmsd, aligned rmsd (NaN when not computed), element accuracy,
    symmetric flag, atom count."""

    rmsd: np.ndarray
    rmsd_aligned: np.ndarray
    element_accuracy: np.ndarray
    symmetric: np.ndarray
    n_atoms: np.ndarray


@torch.no_grad()
def score_molecules(
    model: GroupInvariantAutoencoder,
    data: ConformerSet,
    ids: np.ndarray,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    aligned: bool = True,
    progress=None,
) -> MoleculeScores:
    """Reconstruct each molecule with the hard permutation and score it."""
    model.eval()
    ids = np.asarray(ids)
    pos_of = {int(i): k for k, i in enumerate(ids)}
    M = len(ids)
    rmsd, rmsd_al, acc = np.full(M, np.nan), np.full(M, np.nan), np.full(M, np.nan)
    for chunk in sized_batches(data.n_atoms, ids, batch_size):
        mols = batch_from_set(data, chunk).to(device)
        out = model(mols, permutation="hard")
        r, ok = (x.cpu().numpy() for x in molecule_scores(out, mols))
        pred = out.coords.float().cpu().numpy()
        for b, i in enumerate(chunk):
            k = pos_of[int(i)]
            rmsd[k], acc[k] = r[b], float(ok[b])
            if aligned:
                a, e = data.ptr[i], data.ptr[i + 1]
                rmsd_al[k] = aligned_rmsd(pred[b, : e - a], data.coords[a:e].astype(np.float64), data.elements[a:e])
        if progress is not None:
            progress(len(chunk))
    symmetric = np.array([is_symmetric(data.elements[data.ptr[i]:data.ptr[i + 1]], data.coords[data.ptr[i]:data.ptr[i + 1]]) for i in ids])
    return MoleculeScores(rmsd, rmsd_al, acc, symmetric, data.n_atoms[ids])


@torch.no_grad()
def invariance_error(
    model: GroupInvariantAutoencoder, data: ConformerSet, ids: np.ndarray, trials: int = 3, seed: int = 0,
    device: str | torch.device = "cpu",
) -> float:
    """max |z(g·X) - z(X)| over molecules ``ids`` and ``trials`` random g ∈ SE(3) × S_n each."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    ids = np.asarray(ids)
    base = model.embed(batch_from_set(data, ids).to(device))
    for _ in range(trials):
        elements, coords = [], []
        for i in ids:
            a, b = data.ptr[i], data.ptr[i + 1]
            R, t, perm = random_group_element(b - a, gen)
            x = torch.from_numpy(data.coords[a:b].astype(np.float32))
            coords.append(((x @ R.T + t)[perm]).numpy())
            elements.append(data.elements[a:b][perm.numpy()])
        z = model.embed(make_batch(elements, coords).to(device))
        worst = max(worst, float((z - base).abs().max()))
    return worst


def summarize(scores: MoleculeScores, invariance: float | None = None) -> dict:
    """The JSON summary of ``molgiae evaluate``."""

    def block(mask: np.ndarray) -> dict:
        if not mask.any():
            return {"n_molecules": 0}
        out = {
            "n_molecules": int(mask.sum()),
            "rmsd_mean": float(np.mean(scores.rmsd[mask])),
            "rmsd_median": float(np.median(scores.rmsd[mask])),
            "element_accuracy": float(np.mean(scores.element_accuracy[mask])),
        }
        if np.isfinite(scores.rmsd_aligned[mask]).any():
            out["rmsd_aligned_mean"] = float(np.nanmean(scores.rmsd_aligned[mask]))
        return out

    everything = np.ones(len(scores.rmsd), dtype=bool)
    summary = block(everything)
    summary["element_accuracy_atoms"] = float(
        np.sum(scores.element_accuracy * scores.n_atoms) / max(1, np.sum(scores.n_atoms))
    )
    if invariance is not None:
        summary["invariance_error"] = invariance
    summary["symmetric"] = block(scores.symmetric)
    summary["asymmetric"] = block(~scores.symmetric)
    return summary


def evaluation_rows(data: ConformerSet, config: Config, split: str = "all") -> np.ndarray:
    """Rows of ``data`` a model of ``config`` can evaluate (at most ``max_atoms`` atoms, elements in
    its vocabulary), restricted to one split of its training run (``train`` | ``val`` | ``test``)
    or ``all``."""
    vocab = set(config.model.elements)
    ids = np.flatnonzero(data.n_atoms <= config.model.max_atoms)
    ids = np.array([i for i in ids if set(data.elements[data.ptr[i]:data.ptr[i + 1]].tolist()) <= vocab],
                   dtype=np.int64)
    if split != "all":
        tc = config.train
        ids = np.intersect1d(ids, split_ids(data.keys, tc.val_fraction, tc.test_fraction, tc.split_seed)[split])
    return ids
