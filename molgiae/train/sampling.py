"""Conformer sampling (``TrainConfig.conformer_sampling``): one conformer per molecule per epoch,
drawn uniformly or by normalised Boltzmann weight."""
from __future__ import annotations

import numpy as np

from molgiae.data.conformers import ConformerSet
from molgiae.data.store import normalised_weights


def conformer_weights(data: ConformerSet) -> np.ndarray:
    """Per-conformer Boltzmann weights normalised per molecule key: a store's ``weights``, else
    the ``boltzmann_weight`` property, else (or where unknown) uniform."""
    w = getattr(data, "weights", None)
    if w is not None:
        return np.asarray(w, dtype=np.float64)
    raw = np.full(len(data), np.nan)
    if "boltzmann_weight" in data.property_names:
        raw = data.properties[:, data.property_names.index("boltzmann_weight")]
    return normalised_weights(data.keys, raw)


def sample_conformers(keys: np.ndarray, weights: np.ndarray, ids: np.ndarray, mode: str,
                      rng: np.random.Generator) -> np.ndarray:
    """One conformer id per molecule key among ``ids`` (sorted), drawn ``"uniform"``ly or by
    ``"boltzmann"`` weight (renormalised over ``ids``; uniform for a molecule whose weights sum to 0)."""
    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) == 0:
        return ids
    k = np.asarray(keys)[ids]
    order = np.lexsort((ids, k))
    ids_s, k_s = ids[order], k[order]
    starts = np.flatnonzero(np.r_[True, k_s[1:] != k_s[:-1]])
    counts = np.diff(np.r_[starts, len(ids_s)])
    u = rng.random(len(starts))
    pick = starts + np.minimum((u * counts).astype(np.int64), counts - 1)
    if mode == "boltzmann":
        w = np.clip(np.nan_to_num(np.asarray(weights, dtype=np.float64)[ids_s]), 0.0, None)
        cw = np.cumsum(w)
        base = cw[starts] - w[starts]
        total = np.add.reduceat(w, starts)
        target = base + u * total
        by_weight = np.clip(np.searchsorted(cw, target, side="right"), starts, starts + counts - 1)
        pick = np.where(total > 0, by_weight, pick)
    elif mode != "uniform":
        raise ValueError(f"unknown conformer sampling {mode!r}")
    return np.sort(ids_s[pick])
