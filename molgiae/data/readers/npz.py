"""QM9 ``.npz`` files (and the dispatch to conformer-ensemble npz files).
"""
from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from molgiae.data.ensemble_npz import ENSEMBLE_NPZ_FORMAT, read_ensemble_npz
from molgiae.data.readers.common import Item, _Options
from molgiae.data.record import ConformerRecord, RecordError


# --------------------------------------------------------------------------- QM9 npz


def _read_qm9_npz(path: Path, source: str, opts: _Options) -> Iterator[Item]:
    """A ``molgiae-qm9-npz`` file: one record per molecule, name ``gdb_<QM9 index>``."""
    if not zipfile.is_zipfile(path):
        yield RecordError(source, -1, "not a readable .npz file (not a zip archive)")
        return
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        yield RecordError(source, -1, f"not a readable .npz file ({exc})")
        return
    if not isinstance(data, np.lib.npyio.NpzFile):
        yield RecordError(source, -1, "not an .npz archive (a single .npy array)")
        return
    if _is_ensemble_npz(data):  # conformer ensembles (molgiae.data.ensemble_npz), e.g. the synthetic GEOM stand-in
        data.close()
        yield from read_ensemble_npz(path, source)
        return
    with data:
        try:
            version = str(data["format_version"]) if "format_version" in data.files else ""
            if not version.startswith("molgiae-qm9-npz"):
                yield RecordError(
                    source, -1,
                    f"not a molgiae QM9 npz (format_version {version!r}, expected "
                    f"'molgiae-qm9-npz-*'); other .npz layouts are not supported",
                )
                return
            missing = [k for k in ("index", "ptr", "Z", "R", "props", "prop_names") if k not in data.files]
            if missing:
                yield RecordError(source, -1, f"QM9 npz lacks keys {missing}")
                return
            qm9_index, ptr, Z, R = data["index"], data["ptr"], data["Z"], data["R"]
            props, names = data["props"], [str(s) for s in data["prop_names"]]
            smiles = data["smiles"] if "smiles" in data.files else None
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
            yield RecordError(source, -1, f"corrupt .npz file ({exc})")
            return
    for i in range(len(qm9_index)):
        a, b = int(ptr[i]), int(ptr[i + 1])
        yield ConformerRecord(
            elements=Z[a:b], coords=R[a:b], name=f"gdb_{int(qm9_index[i])}", source=source,
            index=i, properties={k: float(v) for k, v in zip(names, props[i])},
            smiles=str(smiles[i]) if smiles is not None else "",
        )


def _is_ensemble_npz(data) -> bool:
    try:
        return "format_version" in data.files and str(data["format_version"]).startswith(ENSEMBLE_NPZ_FORMAT)
    except Exception:  # noqa: BLE001 - a corrupt member: let the QM9 path report it
        return False
