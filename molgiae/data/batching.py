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
