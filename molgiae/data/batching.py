"""Batches: conformers → :class:`~molgiae.batch.DenseMolecules` (the one currency into the
models), and size-bucketed batch orders (padding waste is quadratic in the largest molecule of a
batch)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from molgiae.batch import DenseMolecules, pad_molecules
from molgiae.data.conformers import ConformerSet
from molgiae.data.record import ConformerRecord


def make_batch(elements: Sequence[np.ndarray], coords: Sequence[np.ndarray]) -> DenseMolecules:
    """Per-molecule arrays → the padded :class:`~molgiae.batch.DenseMolecules` every model takes."""
    return pad_molecules(elements, coords)


def batch_from_set(data: ConformerSet, ids: Sequence[int], targets: np.ndarray | None = None) -> DenseMolecules:
    """Conformers ``ids`` of ``data`` as one padded batch; ``targets`` [M] or [M, P] (one row per
    conformer of ``data``) puts ``targets[ids]`` in the batch's ``y``."""
    p = data.ptr
    return pad_molecules([data.elements[p[i]:p[i + 1]] for i in ids], [data.coords[p[i]:p[i + 1]] for i in ids],
                         None if targets is None else np.asarray(targets)[np.asarray(ids, dtype=np.int64)])


def batch_from_records(records: Sequence[ConformerRecord]) -> DenseMolecules:
    return pad_molecules([r.elements for r in records], [r.coords for r in records])


#: Molecules sorted together by :func:`bucketed_batches`: this many batches' worth. On all of QM9
#: (B = 32) the padded pairs Σ B·N_max² are 1.8 % above the real Σ n² at 64 (16: 6.7 %, a
#: whole-epoch sort: 0.03 %, random batches: 74 %); unlike a whole-epoch sort, a molecule's batch
#: companions change from epoch to epoch.
BUCKET_CHUNK_BATCHES = 64


def bucketed_batches(
    n_atoms: np.ndarray, ids: np.ndarray, batch_size: int, rng: np.random.Generator,
    chunk_batches: int | None = BUCKET_CHUNK_BATCHES,
) -> list[np.ndarray]:
    """Shuffled batches of molecules of similar size (padding waste is quadratic in a batch's
    largest molecule).

    Shuffle ``ids``, cut them into chunks of ``chunk_batches × batch_size`` molecules, sort each
    chunk by atom count (ties keep the shuffled order), cut it into batches, shuffle the batch
    order. ``chunk_batches=None`` sorts the whole epoch at once. Every id appears exactly once;
    only the epoch's last batch can be short (``ceil(len(ids) / batch_size)`` batches). The order
    depends on ``rng`` alone, so the same seed gives every DDP rank the same global order and a
    resumed run the same epoch.
    """
    ids = np.asarray(ids)
    order = ids[rng.permutation(len(ids))]
    chunk = batch_size * chunk_batches if chunk_batches else max(len(order), 1)
    batches: list[np.ndarray] = []
    for start in range(0, len(order), chunk):
        part = order[start:start + chunk]
        part = part[np.argsort(n_atoms[part], kind="stable")]
        batches.extend(part[i:i + batch_size] for i in range(0, len(part), batch_size))
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


#: Fixed cost of one more dense sub-batch in :func:`size_groups`, in padded atom pairs (the
#: per-call overhead of ~100 small ops, forward and backward, ≈ a few hundred pairs' work on CPU).
GROUP_COST_PAIRS = 500


def size_groups(n_atoms: Sequence[int], max_groups: int = 4, group_cost: float = GROUP_COST_PAIRS) -> list[np.ndarray]:
    """Split one batch of molecules of mixed size into at most ``max_groups`` sub-batches of
    similar size, for a dense [B, N, N, F] model run once per sub-batch.

    Positions 0..len-1 are sorted by atom count and cut where ``Σ_g (|g| · N_g² + group_cost)``
    (padded pairs, N_g the group's largest molecule) is least — exact, by dynamic programming
    over the cut points. Returns index arrays into ``n_atoms``, smallest molecules first; their
    concatenation is a permutation of 0..len-1. Per-molecule outputs are the same as from one
    padded batch (padding never changes a molecule's result), at a fraction of the pairs when a
    random batch holds one large molecule among small ones.
    """
    n = np.asarray(n_atoms, dtype=np.int64)
    order = np.argsort(n, kind="stable")
    size = n[order].astype(np.float64)
    m = len(size)
    if m == 0:
        return []
    # best[b]: least cost of the first b molecules (sorted) in the groups so far; cut[k][b]: start
    # of the last group in that optimum
    positions = np.arange(m + 1)
    best = np.full(m + 1, np.inf)
    best[0] = 0.0
    cuts = []
    for _ in range(max(1, max_groups)):
        new = np.full(m + 1, np.inf)
        arg = np.zeros(m + 1, dtype=np.int64)
        for b in range(1, m + 1):
            cost = best[:b] + (b - positions[:b]) * size[b - 1] ** 2 + group_cost
            a = int(np.argmin(cost))
            new[b], arg[b] = cost[a], a
        if new[m] >= best[m]:  # one more group does not pay
            break
        best = new
        cuts.append(arg)
    groups = []
    b = m
    for arg in reversed(cuts):
        a = int(arg[b])
        groups.append(order[a:b])
        b = a
        if b == 0:
            break
    return groups[::-1]
