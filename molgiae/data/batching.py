"""Batches: conformers → PyG ``Batch`` (the one currency into the model), and size-bucketed
batch orders (padding waste is quadratic in the largest molecule of a batch)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from molgiae.data.conformers import ConformerSet
from molgiae.data.record import ConformerRecord


def make_batch(elements: Sequence[np.ndarray], coords: Sequence[np.ndarray]):
    """Per-molecule arrays → ``torch_geometric.data.Batch`` with ``atomic_numbers`` [A] (long),
    ``pos`` [A, 3] (float32), ``batch`` [A] and ``ptr`` [B+1]."""
    from torch_geometric.data import Batch

    n = torch.tensor([len(e) for e in elements], dtype=torch.long)
    return Batch(
        atomic_numbers=torch.from_numpy(np.concatenate(elements).astype(np.int64)),
        pos=torch.from_numpy(np.concatenate(coords).astype(np.float32)),
        batch=torch.repeat_interleave(torch.arange(len(n)), n),
        ptr=torch.cat([torch.zeros(1, dtype=torch.long), n.cumsum(0)]),
    )


def batch_from_set(data: ConformerSet, ids: Sequence[int]):
    p = data.ptr
    return make_batch([data.elements[p[i]:p[i + 1]] for i in ids], [data.coords[p[i]:p[i + 1]] for i in ids])


def batch_from_records(records: Sequence[ConformerRecord]):
    return make_batch([r.elements for r in records], [r.coords for r in records])


def bucketed_batches(n_atoms: np.ndarray, ids: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of molecules of similar size.

    Sort ``ids`` by atom count with random tie-breaking, cut into batches, shuffle the batch
    order. Every id appears exactly once.
    """
    ids = np.asarray(ids)
    jitter = rng.random(len(ids))
    order = ids[np.lexsort((jitter, n_atoms[ids]))]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def sized_batches(n_atoms: np.ndarray, ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Deterministic size-sorted batches (evaluation)."""
    ids = np.asarray(ids)
    order = ids[np.argsort(n_atoms[ids], kind="stable")]
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


#: Inference batches hold at most ``batch_size × PAIR_BUDGET_ATOMS²`` atom pairs: QM9-sized
#: molecules fill whole batches, larger ones get fewer per batch, so the [B, N, N, F] pair tensors
#: (and the process's memory) stay bounded whatever the molecules' size.
PAIR_BUDGET_ATOMS = 32


def pair_budget_batches(n_atoms: Sequence[int], batch_size: int, max_pairs: int | None = None) -> list[list[int]]:
    """Cut positions 0..len-1, in the given order (sort by size first), into consecutive batches
    of at most ``batch_size`` molecules and at most ``max_pairs`` padded atom pairs
    (``len(batch) × max(n)²``; default ``batch_size × PAIR_BUDGET_ATOMS²``). A molecule above the
    budget on its own gets a batch of one."""
    if max_pairs is None:
        max_pairs = batch_size * PAIR_BUDGET_ATOMS**2
    batches: list[list[int]] = []
    current: list[int] = []
    widest = 0
    for k, n in enumerate(n_atoms):
        w = max(widest, int(n))
        if current and (len(current) + 1 > batch_size or (len(current) + 1) * w * w > max_pairs):
            batches.append(current)
            current, w = [], int(n)
        current.append(k)
        widest = w
    if current:
        batches.append(current)
    return batches


def size_sorted_batches(n_atoms: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices 0..len-1 sorted by atom count (stable: ties keep input order), cut by
    :func:`pair_budget_batches`. Inference batching: similar sizes (less padding), bounded memory."""
    order = sorted(range(len(n_atoms)), key=lambda i: n_atoms[i])
    return [[order[k] for k in batch] for batch in pair_budget_batches([n_atoms[i] for i in order], batch_size)]
