"""The one batch type from data into the models: molecules padded to a common atom count.

Readers give records, :mod:`molgiae.data.batching` turns records or a conformer set into a
:class:`DenseMolecules`, and every model takes it as is (the models map atomic numbers to their
own element vocabulary). Floor 1: torch and numpy only.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch
from torch import Tensor


@dataclass
class DenseMolecules:
    """B molecules padded to N atoms.

    numbers [B, N] long: atomic numbers (0 on padding); pos [B, N, 3] float: coordinates in Å
    (0 on padding); mask [B, N] bool: real atoms (the first ``n_atoms`` of each row);
    y [B, P] float64 or None: per-molecule targets (fine-tuning labels), when the batch carries them.
    """

    numbers: Tensor
    pos: Tensor
    mask: Tensor
    y: Tensor | None = None

    @property
    def n_atoms(self) -> Tensor:
        """[B] atoms per molecule."""
        return self.mask.sum(1)

    def __len__(self) -> int:
        return self.numbers.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "DenseMolecules":
        move = lambda t: None if t is None else t.to(device, non_blocking=non_blocking)  # noqa: E731
        return DenseMolecules(move(self.numbers), move(self.pos), move(self.mask), move(self.y))

    def pin_memory(self) -> "DenseMolecules":
        """Page-locked copies (DataLoader ``pin_memory=True``)."""
        pin = lambda t: None if t is None else t.pin_memory()  # noqa: E731
        return DenseMolecules(pin(self.numbers), pin(self.pos), pin(self.mask), pin(self.y))

    def with_pos(self, pos: Tensor) -> "DenseMolecules":
        """The same molecules at other coordinates pos [B, N, 3] (e.g. with input noise)."""
        return replace(self, pos=pos)


def pad_molecules(elements: Sequence[np.ndarray], coords: Sequence[np.ndarray],
                  y: np.ndarray | None = None) -> DenseMolecules:
    """Per-molecule arrays (elements [n_i], coords [n_i, 3]) → a padded float32 batch; ``y`` [B] or
    [B, P] targets (optional, float64)."""
    n = np.fromiter((len(e) for e in elements), dtype=np.int64, count=len(elements))
    B, N = len(n), int(n.max()) if len(n) else 0
    rows = np.repeat(np.arange(B), n)
    cols = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)
    numbers = np.zeros((B, N), dtype=np.int64)
    pos = np.zeros((B, N, 3), dtype=np.float32)
    mask = np.zeros((B, N), dtype=bool)
    if B:
        numbers[rows, cols] = np.concatenate(elements)
        pos[rows, cols] = np.concatenate(coords)
        mask[rows, cols] = True
    targets = None if y is None else torch.as_tensor(np.asarray(y, dtype=np.float64))
    return DenseMolecules(torch.from_numpy(numbers), torch.from_numpy(pos), torch.from_numpy(mask), targets)
