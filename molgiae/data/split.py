"""Deterministic molecule-level train/val/test split.

Each molecule key is hashed with the seed to a number in [0, 1); the split depends only on
(key, seed, fractions), never on file order or on which other molecules are present, so
conformers of one molecule always land together and a molecule keeps its split when data
is added.
"""
from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np


def name_key(name: str) -> int:
    """A stable non-negative int64 molecule key from a name (conformers of one molecule share it)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") >> 1


_QM9_NAME = re.compile(r"^gdb_(\d+)$")


def molecule_key(name: str) -> int:
    """The molecule key of a record name: ``N`` for a QM9 name ``gdb_N`` (the key the QM9 npz
    files give it, so a molecule read from XYZ, an ensemble file or a store lands in the same
    split as from the npz), else :func:`name_key`."""
    m = _QM9_NAME.match(name)
    return int(m.group(1)) if m else name_key(name)


def key_fractions(keys: np.ndarray, seed: int) -> np.ndarray:
    """Uniform pseudo-random number in [0, 1) per key (deterministic). [M] → float64 [M]."""
    out = np.empty(len(keys), dtype=np.float64)
    cache: dict[int, float] = {}
    for i, k in enumerate(np.asarray(keys).tolist()):
        if k not in cache:
            h = hashlib.blake2b(f"{seed}:{k}".encode(), digest_size=8).digest()
            cache[k] = int.from_bytes(h, "little") / 2.0**64
        out[i] = cache[k]
    return out


def split_ids(keys: np.ndarray, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Row ids of each split: ``{"train", "val", "test"}``; test = lowest fractions, then val."""
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions val={val_fraction} test={test_fraction}")
    u = key_fractions(keys, seed)
    test = u < test_fraction
    val = (u >= test_fraction) & (u < test_fraction + val_fraction)
    return {
        "train": np.flatnonzero(~(test | val)),
        "val": np.flatnonzero(val),
        "test": np.flatnonzero(test),
    }


def seeded_subset(ids: np.ndarray, limit: int | None, seed: int | Sequence[int] = 0) -> np.ndarray:
    """At most ``limit`` of ``ids``: a seeded choice without replacement, sorted; ``ids`` itself
    when there is no limit or no more than ``limit`` of them."""
    if limit and len(ids) > limit:
        return np.sort(np.random.default_rng(seed).choice(ids, limit, replace=False))
    return ids
