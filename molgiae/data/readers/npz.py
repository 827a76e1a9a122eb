"""``.npz`` files as records: molgiae QM9 npz files and conformer-ensemble npz files."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from molgiae.data.ensemble_npz import ENSEMBLE_NPZ_FORMAT, read_ensemble_npz
from molgiae.data.qm9_npz import Qm9NpzError, npz_format, read_qm9_npz
from molgiae.data.readers.common import Item, _Options
from molgiae.data.record import ConformerRecord, RecordError


def _read_qm9_npz(path: Path, source: str, opts: _Options) -> Iterator[Item]:
    """An npz: conformer ensembles (:mod:`molgiae.data.ensemble_npz`, e.g. the synthetic GEOM
    stand-in) or a molgiae QM9 npz (:mod:`molgiae.data.qm9_npz`): one record per molecule, name
    ``gdb_<QM9 index>``; a file of neither kind is one error."""
    if npz_format(path).startswith(ENSEMBLE_NPZ_FORMAT):
        yield from read_ensemble_npz(path, source)
        return
    try:
        q = read_qm9_npz(path)
    except Qm9NpzError as exc:
        yield RecordError(source, -1, str(exc))
        return
    for i in range(len(q.index)):
        a, b = int(q.ptr[i]), int(q.ptr[i + 1])
        props = {k: float(v) for k, v in zip(q.prop_names, q.props[i])} if q.props is not None else {}
        yield ConformerRecord(
            elements=q.Z[a:b], coords=q.R[a:b], name=f"gdb_{int(q.index[i])}", source=source,
            index=i, properties=props, smiles=str(q.smiles[i]) if q.smiles is not None else "",
        )
