"""An in-memory set of conformers in flat arrays (fast to batch), built from QM9 npz files or
from any records."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from molgiae.data.qm9_npz import Qm9NpzError, read_qm9_npz
from molgiae.data.record import ConformerRecord



@dataclass
class ConformerSet:
    """Conformers as flat arrays.

    elements: uint8/int [A]; coords: float32 [A, 3]; ptr: int64 [M+1] (conformer i is rows
    ptr[i]:ptr[i+1]); keys: int64 [M] molecule identity used for splitting (QM9 index, or the
    molecule id shared by conformers of one molecule); names: str [M]; properties: float64 [M, P]
    named by ``property_names`` (NaN where unknown).
    """

    elements: np.ndarray
    coords: np.ndarray
    ptr: np.ndarray
    keys: np.ndarray
    names: np.ndarray
    properties: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    property_names: tuple[str, ...] = ()
    smiles: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ptr) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        return np.diff(self.ptr)

    def record(self, i: int) -> ConformerRecord:
        a, b = self.ptr[i], self.ptr[i + 1]
        props = {}
        if len(self.property_names):
            props = {n: float(v) for n, v in zip(self.property_names, self.properties[i]) if np.isfinite(v)}
        return ConformerRecord(
            elements=self.elements[a:b], coords=self.coords[a:b], name=str(self.names[i]),
            index=i, properties=props, smiles="" if self.smiles is None else str(self.smiles[i]),
        )

    def subset(self, ids: Sequence[int]) -> "ConformerSet":
        ids = np.asarray(ids, dtype=np.int64)
        n = self.n_atoms[ids]
        rows = np.concatenate([np.arange(self.ptr[i], self.ptr[i + 1]) for i in ids]) if len(ids) else np.zeros(0, int)
        return ConformerSet(
            elements=self.elements[rows], coords=self.coords[rows], ptr=np.r_[0, np.cumsum(n)].astype(np.int64),
            keys=self.keys[ids], names=self.names[ids],
            properties=self.properties[ids] if self.properties.size else self.properties,
            property_names=self.property_names, smiles=None if self.smiles is None else self.smiles[ids],
        )

    @classmethod
    def from_records(cls, records: Iterable[ConformerRecord], keys: Sequence[int] | None = None) -> "ConformerSet":
        recs = list(records)
        names = sorted({k for r in recs for k in r.properties})
        props = np.full((len(recs), len(names)), np.nan)
        for i, r in enumerate(recs):
            for j, k in enumerate(names):
                props[i, j] = r.properties.get(k, np.nan)
        n = [r.n_atoms for r in recs]
        return cls(
            elements=np.concatenate([r.elements for r in recs]).astype(np.uint8) if recs else np.zeros(0, np.uint8),
            coords=np.concatenate([r.coords for r in recs]).astype(np.float32) if recs else np.zeros((0, 3), np.float32),
            ptr=np.r_[0, np.cumsum(n)].astype(np.int64),
            keys=np.asarray(keys if keys is not None else np.arange(len(recs)), dtype=np.int64),
            names=np.array([r.name for r in recs], dtype=object),
            properties=props, property_names=tuple(names),
            smiles=np.array([r.smiles for r in recs], dtype=object),
        )


def load_qm9_npz(paths: Sequence[str | Path]) -> ConformerSet:
    """Concatenate QM9 npz files (:mod:`molgiae.data.qm9_npz`) into one set; keys = QM9 index.

    Properties and SMILES are kept only when every file has them (a compact training file such
    as ``tools/gpu_prepare.py`` writes has neither)."""
    parts = []
    for p in paths:
        try:
            parts.append(read_qm9_npz(p))
        except Qm9NpzError as exc:
            raise ValueError(f"{p}: {exc}") from None
    n = np.concatenate([np.diff(p.ptr) for p in parts])
    index = np.concatenate([p.index for p in parts])
    with_props = all(p.props is not None for p in parts)
    with_smiles = all(p.smiles is not None for p in parts)
    return ConformerSet(
        elements=np.concatenate([p.Z for p in parts]),
        coords=np.concatenate([p.R for p in parts]).astype(np.float32),
        ptr=np.r_[0, np.cumsum(n)].astype(np.int64),
        keys=index,
        names=np.array([f"gdb_{i}" for i in index], dtype=object),
        properties=np.concatenate([p.props for p in parts]) if with_props else np.zeros((len(index), 0)),
        property_names=parts[0].prop_names if with_props else (),
        smiles=np.concatenate([p.smiles for p in parts]).astype(object) if with_smiles else None,
    )
