"""Turn user paths into a :class:`ConformerSet` (QM9 npz fast path, any reader otherwise)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from molgiae.data.conformers import ConformerSet, load_qm9_npz
from molgiae.data.qm9_npz import is_qm9_npz
from molgiae.data.readers import iter_records, records_only
from molgiae.data.record import RecordError
from molgiae.data.split import molecule_key
from molgiae.data.store import concat_sets, is_store, read_store


def load_conformers(
    paths: Sequence[str | Path], on_error: Callable[[RecordError], None] | None = None, **reader_options
) -> ConformerSet:
    """Load every valid conformer of ``paths``. QM9 npz files are read as arrays (keys = QM9
    index); conformer stores (``molgiae data prepare``) with :func:`molgiae.data.store.read_store`
    (keys = molecule ids, plus Boltzmann weights); other formats go through the readers (keys from
    molecule names, so conformers of a molecule share a key and a split; ``gdb_N`` → N as in the
    QM9 npz files). Bad records are passed
    to ``on_error``."""
    expanded = [str(p) for p in paths]
    if expanded and all(Path(p).is_file() and is_qm9_npz(p) for p in expanded):
        return load_qm9_npz(expanded)
    stores = [is_store(p) for p in expanded]
    if any(stores):
        if not all(stores):
            raise ValueError("conformer stores (.h5 from `molgiae data prepare`) cannot be mixed with other "
                             "inputs; prepare one store from all of them")
        return concat_sets([read_store(p) for p in expanded])
    errors: list[RecordError] = []
    records = list(records_only(iter_records(expanded, **reader_options), errors))
    for e in errors:
        if on_error:
            on_error(e)
    if not records:
        raise ValueError(f"no valid molecules in {', '.join(expanded)}")
    keys = [molecule_key(r.name or f"{r.source}:{r.index}") for r in records]
    return ConformerSet.from_records(records, keys=np.asarray(keys, dtype=np.int64))
