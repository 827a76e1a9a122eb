"""Conformer-ensemble npz files (``format_version`` ``molgiae-conformers-npz-*``): many
conformers per molecule in one npz, e.g. the synthetic RDKit/MMFF94 ensembles of QM9 molecules
used to test multi-conformer code (a stand-in for GEOM, *not* GEOM). Schema: ``docs/data.md``.

:mod:`molgiae.data.readers` dispatches such files here; never imports torch.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from molgiae.data.record import ConformerRecord, RecordError

#: ``format_version`` prefix of a conformer-ensemble npz (files carry ``-<n>``, e.g. ``-1``)
ENSEMBLE_NPZ_FORMAT = "molgiae-conformers-npz"

Item = ConformerRecord | RecordError


def read_ensemble_npz(path: str | Path, source: str | None = None) -> Iterator[Item]:
    """A conformer-ensemble npz (``format_version`` ``molgiae-conformers-npz-*``), e.g. the
    synthetic RDKit/MMFF94 ensembles of QM9 molecules (a stand-in for GEOM, *not* GEOM).

    Keys: ``Z`` and ``atom_ptr`` (per molecule), ``R`` and ``conf_atom_ptr`` (per conformer),
    ``conf_mol`` (molecule of each conformer), optional ``index`` (QM9 index → name
    ``gdb_<index>``), ``smiles``, and per-conformer numbers such as ``boltzmann_weight`` and
    ``energy_mmff94`` (→ properties). One record per conformer, ``index`` = conformer position.
    """
    source = str(path) if source is None else source
    try:
        with np.load(path, allow_pickle=False) as d:
            missing = [k for k in ("Z", "atom_ptr", "R", "conf_atom_ptr", "conf_mol") if k not in d.files]
            if missing:
                yield RecordError(source, -1, f"conformer-ensemble npz lacks keys {missing}")
                return
            arrays = {k: d[k] for k in d.files}
    except Exception as exc:  # noqa: BLE001 - corrupt npz
        yield RecordError(source, -1, f"corrupt conformer-ensemble npz ({type(exc).__name__}: {exc})")
        return
    Z, atom_ptr, R = arrays["Z"], arrays["atom_ptr"].astype(np.int64), arrays["R"]
    conf_ptr, conf_mol = arrays["conf_atom_ptr"].astype(np.int64), arrays["conf_mol"].astype(np.int64)
    n_conf = len(conf_mol)
    mol_index = arrays.get("index")
    smiles = arrays.get("smiles")
    skip = {"conf_mol", "conf_atom_ptr", "n_confs", "conf_ptr"}
    per_conf = {k: v for k, v in arrays.items()
                if k not in skip and v.ndim == 1 and len(v) == n_conf and np.issubdtype(v.dtype, np.number)}
    for c in range(n_conf):
        m = int(conf_mol[c])
        name = f"gdb_{int(mol_index[m])}" if mol_index is not None else f"molecule_{m}"
        a, b = int(atom_ptr[m]), int(atom_ptr[m + 1])
        ca, cb = int(conf_ptr[c]), int(conf_ptr[c + 1])
        if cb - ca != b - a:
            yield RecordError(source, c, f"conformer has {cb - ca} coordinate rows, its molecule {b - a} atoms", name)
            continue
        yield ConformerRecord(
            elements=Z[a:b], coords=R[ca:cb], name=name, source=source, index=c,
            properties={k: float(v[c]) for k, v in per_conf.items()},
            smiles=str(smiles[m]) if smiles is not None else "",
        )
