"""The HDF5 conformer store: many conformers per molecule, one file, random access.

``molgiae data prepare`` turns any supported source (GEOM rdkit_folder / msgpack, QM9 npz,
SDF, XYZ, conformer-ensemble npz such as the synthetic GEOM stand-in, ...) into one store with
:func:`write_store`; ``molgiae train --data STORE.h5`` reads it with :func:`read_store`.

Layout (C conformers, A atoms in all, P properties)::

    elements       uint8   [A]      atomic numbers (contiguous, uncompressed: memory-mappable)
    coords         float32 [A, 3]   Å (contiguous, uncompressed: memory-mappable)
    atom_ptr       int64   [C+1]    conformer c is rows atom_ptr[c]:atom_ptr[c+1]
    molecule       int64   [C]      molecule id, shared by the conformers of one molecule
    weight         float32 [C]      Boltzmann weight normalised per molecule (uniform when unknown)
    name           utf-8   [C]      molecule name (GEOM: the SMILES key; QM9: gdb_N)
    smiles         utf-8   [C]      SMILES when known, else ""
    properties     float64 [C, P]   NaN where unknown; attribute ``names`` = JSON list of the P names
    source_id      int32   [C]      index into the ``sources`` table (the input each conformer came from)
    record         int64   [C]      0-based record index in that source
    sources        utf-8   [S]
    errors/        one row per record that could not be used (K rows):
        source utf-8 [K], record int64 [K] (-1: whole file), name utf-8 [K], reason utf-8 [K]
    attributes: format, molgiae_version, created, inputs (JSON list), n_conformers, n_molecules,
                n_atoms, n_errors, group_by

Molecule ids: ``N`` for a record named ``gdb_N`` (QM9 npz/xyz and the QM9-derived ensembles, so
a molecule has the same split key as in ``molgiae train --data qm9.npz``), otherwise a stable
63-bit hash of the record's name (or SMILES with ``group_by="smiles"``), the same key that
:func:`molgiae.data.loading.load_conformers` gives the molecule when it reads the source file
directly. Splits are by molecule id, so all conformers of a molecule land in one split.

Weights: a conformer's raw weight is its ``boltzmann_weight`` property. Per molecule, when every
kept conformer has a finite raw weight and their sum is positive they are renormalised to sum
to 1 (conformers dropped as unreadable no longer count); otherwise every conformer gets
``1 / n_conformers``. The raw value stays in ``properties``.

Writing streams: records go to raw temporary files next to the output (memory holds only the
small per-conformer columns), the HDF5 file is built in ``OUT.tmp-<pid>`` and renamed at the
end; an exception leaves no partial store.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from molgiae._version import __version__
from molgiae.data.conformers import ConformerSet
from molgiae.data.readers import iter_records
from molgiae.data.record import ConformerRecord, RecordError
from molgiae.data.split import molecule_key, name_key
from molgiae.outputs import atomic_output, refuse_input_as_output, remove_stale_temps

STORE_FORMAT = "molgiae-conformer-store-1"
STORE_SUFFIXES = (".h5", ".hdf5")
_BLOCK_ROWS = 1 << 22  # rows copied per block when the HDF5 file is assembled

Item = ConformerRecord | RecordError


# --------------------------------------------------------------------------- molecule ids


def molecule_id(record: ConformerRecord, group_by: str = "name") -> int:
    """The int64 molecule id of a record (see the module docstring)."""
    if group_by == "smiles":
        return name_key(record.smiles or record.name or f"{record.source}:{record.index}")
    if group_by == "name":
        if record.name:
            return molecule_key(record.name)  # gdb_N -> N
        return name_key(record.smiles or f"{record.source}:{record.index}")
    raise ValueError(f"group_by must be 'name' or 'smiles', not {group_by!r}")


def normalised_weights(molecule: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Per-molecule normalised weights (uniform for a molecule with any unknown/invalid weight)."""
    molecule = np.asarray(molecule)
    raw = np.asarray(raw, dtype=np.float64)
    if len(molecule) == 0:
        return np.zeros(0, np.float64)
    _, inv, counts = np.unique(molecule, return_inverse=True, return_counts=True)
    ok = np.isfinite(raw) & (raw >= 0)
    bad = np.bincount(inv, weights=(~ok).astype(np.float64), minlength=len(counts)) > 0
    total = np.bincount(inv, weights=np.where(ok, raw, 0.0), minlength=len(counts))
    use_raw = ~bad & (total > 0)
    return np.where(use_raw[inv], np.where(ok, raw, 0.0) / np.where(total > 0, total, 1.0)[inv], 1.0 / counts[inv])


# --------------------------------------------------------------------------- the set a store reads into


@dataclass
class StoreConformerSet(ConformerSet):
    """A :class:`ConformerSet` read from a store, with conformer-sampling metadata.

    ``keys`` are the molecule ids (so splits are by molecule); ``weights`` [M] are the
    per-molecule normalised Boltzmann weights (uniform where unknown).
    """

    weights: np.ndarray | None = None

    def subset(self, ids: Sequence[int]) -> "StoreConformerSet":
        base = ConformerSet.subset(self, ids)
        w = None if self.weights is None else self.weights[np.asarray(ids, dtype=np.int64)]
        return StoreConformerSet(**{f.name: getattr(base, f.name) for f in fields(ConformerSet)}, weights=w)


# --------------------------------------------------------------------------- writing


@dataclass
class StoreSummary:
    path: Path
    n_conformers: int
    n_molecules: int
    n_atoms: int
    n_errors: int
    seconds: float


class _Spool:
    """Raw temporary files for the big columns and in-memory arrays for the small ones."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir()
        self.elements = open(folder / "elements.u8", "wb")
        self.coords = open(folder / "coords.f32", "wb")
        self.text = open(folder / "text.jsonl", "w", encoding="utf-8")  # [name, smiles, {props}] per conformer
        self.n_atoms = array("q")
        self.molecule = array("q")
        self.raw_weight = array("d")
        self.source_id = array("i")
        self.record = array("q")
        self.prop_names: dict[str, None] = {}
        self.sources: dict[str, int] = {}
        self.errors: list[RecordError] = []

    def add(self, r: ConformerRecord, mol_id: int) -> None:
        el = np.asarray(r.elements)
        if len(el) == 0 or el.min() < 1 or el.max() > 255:
            raise ValueError(f"atomic numbers out of range 1..255 in {r.source}, record {r.index}")
        el.astype(np.uint8).tofile(self.elements)
        np.asarray(r.coords, dtype=np.float32).tofile(self.coords)
        self.n_atoms.append(len(el))
        self.molecule.append(mol_id)
        self.raw_weight.append(float(r.properties.get("boltzmann_weight", np.nan)))
        self.source_id.append(self.sources.setdefault(r.source, len(self.sources)))
        self.record.append(int(r.index))
        for k in r.properties:
            self.prop_names.setdefault(k, None)
        self.text.write(json.dumps([r.name, r.smiles, r.properties]) + "\n")

    def close(self) -> None:
        for fh in (self.elements, self.coords, self.text):
            fh.close()


def _write_atoms(f, spool_dir: Path, n_total: int) -> None:
    """The ``elements`` and ``coords`` datasets, copied from the spool in blocks."""
    el = f.create_dataset("elements", shape=(n_total,), dtype=np.uint8)
    xyz = f.create_dataset("coords", shape=(n_total, 3), dtype=np.float32)
    for start in range(0, n_total, _BLOCK_ROWS):
        k = min(_BLOCK_ROWS, n_total - start)
        el[start:start + k] = np.fromfile(spool_dir / "elements.u8", np.uint8, k, offset=start)
        xyz[start:start + k] = np.fromfile(spool_dir / "coords.f32", np.float32, 3 * k,
                                           offset=12 * start).reshape(k, 3)


def _write_text_columns(f, spool_dir: Path, n_conf: int, prop_names: list[str], text) -> None:
    """The ``name``, ``smiles`` and ``properties`` datasets, from the spool's JSON lines in blocks."""
    chunk = min(n_conf, 1 << 16)
    names = f.create_dataset("name", shape=(n_conf,), dtype=text, chunks=(chunk,), compression="gzip")
    smiles = f.create_dataset("smiles", shape=(n_conf,), dtype=text, chunks=(chunk,), compression="gzip")
    props = f.create_dataset("properties", shape=(n_conf, len(prop_names)), dtype=np.float64)
    props.attrs["names"] = json.dumps(prop_names)
    column = {k: j for j, k in enumerate(prop_names)}
    with open(spool_dir / "text.jsonl", encoding="utf-8") as fh:
        start = 0
        while start < n_conf:
            lines = [json.loads(fh.readline()) for _ in range(min(_BLOCK_ROWS // 16, n_conf - start))]
            block = np.full((len(lines), len(prop_names)), np.nan)
            for i, (_, _, p) in enumerate(lines):
                for k, v in p.items():
                    block[i, column[k]] = v
            names[start:start + len(lines)] = np.array([x[0] for x in lines], dtype=object)
            smiles[start:start + len(lines)] = np.array([x[1] for x in lines], dtype=object)
            if prop_names:
                props[start:start + len(lines)] = block
            start += len(lines)


def _write_errors(g, errs: list[RecordError], text) -> None:
    """The ``errors`` group: one row per failed record."""
    g.create_dataset("source", data=np.array([e.source for e in errs], dtype=object), dtype=text)
    g.create_dataset("record", data=np.array([e.index for e in errs], dtype=np.int64))
    g.create_dataset("name", data=np.array([e.name for e in errs], dtype=object), dtype=text)
    g.create_dataset("reason", data=np.array([e.reason for e in errs], dtype=object), dtype=text)


def write_store(
    items: Iterable[Item],
    path: str | Path,
    *,
    inputs: Sequence[str] = (),
    group_by: str = "name",
    on_error: Callable[[RecordError], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> StoreSummary:
    """Stream records (and errors) into a new store at ``path`` (replaced atomically).

    ``items``: ``ConformerRecord`` / ``RecordError`` items (e.g. ``iter_records(paths)``);
    errors go to the store's ``errors`` table and to ``on_error``. Raises ``ValueError`` (and
    writes nothing) when there is no valid conformer.
    """
    import h5py

    t0 = time.time()
    path = Path(path)
    remove_stale_temps(path)  # OUT.tmp-<pid> / .OUT.<pid>.parts of runs that were killed
    spool_dir = path.with_name(f".{path.name}.{os.getpid()}.parts")
    if spool_dir.exists():
        shutil.rmtree(spool_dir)
    spool = _Spool(spool_dir)
    try:
        for item in items:
            if isinstance(item, RecordError):
                spool.errors.append(item)
                if on_error:
                    on_error(item)
            else:
                spool.add(item, molecule_id(item, group_by))
            if progress:
                progress(1)
        spool.close()
        n_conf = len(spool.n_atoms)
        if n_conf == 0:
            raise ValueError("no valid conformers in the input(s); no store written")
        n_atoms = np.frombuffer(spool.n_atoms, dtype=np.int64)
        atom_ptr = np.r_[0, np.cumsum(n_atoms)].astype(np.int64)
        n_total = int(atom_ptr[-1])
        molecule = np.frombuffer(spool.molecule, dtype=np.int64)
        weight = normalised_weights(molecule, np.frombuffer(spool.raw_weight, dtype=np.float64))
        prop_names = sorted(spool.prop_names)
        text = h5py.string_dtype("utf-8")
        with atomic_output(path) as tmp, h5py.File(tmp, "w") as f:
            _write_atoms(f, spool_dir, n_total)
            f.create_dataset("atom_ptr", data=atom_ptr)
            f.create_dataset("molecule", data=molecule)
            f.create_dataset("weight", data=weight.astype(np.float32))
            f.create_dataset("source_id", data=np.frombuffer(spool.source_id, dtype=np.int32))
            f.create_dataset("record", data=np.frombuffer(spool.record, dtype=np.int64))
            f.create_dataset("sources", data=np.array(list(spool.sources), dtype=object), dtype=text)
            _write_text_columns(f, spool_dir, n_conf, prop_names, text)
            errs = spool.errors
            _write_errors(f.create_group("errors"), errs, text)
            n_mol = int(len(np.unique(molecule)))
            f.attrs.update({
                "format": STORE_FORMAT, "molgiae_version": __version__,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "inputs": json.dumps([str(p) for p in inputs]), "n_conformers": n_conf, "n_molecules": n_mol,
                "n_atoms": n_total, "n_errors": len(errs), "group_by": group_by,
            })
    except BaseException:
        spool.close()
        raise
    finally:
        shutil.rmtree(spool_dir, ignore_errors=True)
    return StoreSummary(path=path, n_conformers=n_conf, n_molecules=n_mol, n_atoms=n_total,
                        n_errors=len(spool.errors), seconds=time.time() - t0)


def prepare_store(
    inputs: Sequence[str | Path],
    out: str | Path,
    *,
    group_by: str = "name",
    on_error: Callable[[RecordError], None] | None = None,
    progress: Callable[[int], None] | None = None,
    **reader_options,
) -> StoreSummary:
    """Read every input with the molgiae readers (GEOM, QM9 npz, ensemble npz, SDF, XYZ, ...)
    and write one store. GEOM rdkit_folder pickles are unpickled here (which executes code
    from them; see :mod:`molgiae.data.geom`)."""
    inputs = [str(p) for p in inputs]
    refuse_input_as_output(out, inputs, what="store")
    return write_store(iter_records(inputs, **reader_options), out, inputs=inputs, group_by=group_by,
                       on_error=on_error, progress=progress)


# --------------------------------------------------------------------------- reading


def is_store(path: str | Path) -> bool:
    """True for an HDF5 file written by :func:`write_store`."""
    p = Path(path)
    if not p.is_file() or not p.name.lower().endswith(STORE_SUFFIXES):
        return False
    import h5py

    try:
        with h5py.File(p, "r") as f:
            return str(f.attrs.get("format", "")).startswith(STORE_FORMAT.rsplit("-", 1)[0])
    except OSError:
        return False


def _array(ds, path: Path, mmap: bool) -> np.ndarray:
    """A dataset as a read-only memory map when it is contiguous and uncompressed, else in memory."""
    if mmap and ds.chunks is None and ds.compression is None and ds.size > 0:
        offset = ds.id.get_offset()
        if offset is not None:
            return np.memmap(path, dtype=ds.dtype, mode="r", offset=offset, shape=ds.shape)
    return ds[...]


def read_store(path: str | Path, mmap: bool = True) -> StoreConformerSet:
    """The conformers of a store as a :class:`StoreConformerSet`.

    ``keys`` = molecule ids (splits by molecule), ``weights`` = normalised Boltzmann weights.
    With ``mmap`` (default) elements and coordinates are memory-mapped: conformers are read
    from disk on access (random access; the page cache keeps what is used), so a store larger
    than memory can be trained on. The small per-conformer columns are read into memory.
    """
    import h5py

    path = Path(path)
    with h5py.File(path, "r") as f:
        fmt = str(f.attrs.get("format", ""))
        if fmt != STORE_FORMAT:
            raise ValueError(f"{path} is not a molgiae conformer store (format {fmt!r}, expected {STORE_FORMAT!r})")
        prop_names = tuple(json.loads(f["properties"].attrs["names"]))
        props = f["properties"][...] if prop_names else np.zeros((len(f["molecule"]), 0))
        return StoreConformerSet(
            elements=_array(f["elements"], path, mmap),
            coords=_array(f["coords"], path, mmap),
            ptr=f["atom_ptr"][...].astype(np.int64),
            keys=f["molecule"][...].astype(np.int64),
            names=np.asarray(f["name"].asstr()[...], dtype=object),
            properties=props,
            property_names=prop_names,
            smiles=np.asarray(f["smiles"].asstr()[...], dtype=object),
            weights=f["weight"][...].astype(np.float64),
        )


def read_store_errors(path: str | Path) -> list[RecordError]:
    import h5py

    with h5py.File(path, "r") as f:
        g = f["errors"]
        return [RecordError(s, int(i), r, n) for s, i, n, r in zip(
            g["source"].asstr()[...], g["record"][...], g["name"].asstr()[...], g["reason"].asstr()[...])]


def concat_sets(sets: Sequence[StoreConformerSet]) -> StoreConformerSet:
    """Concatenate store sets (several stores into one training set); properties by name."""
    if len(sets) == 1:
        return sets[0]
    names = sorted({n for s in sets for n in s.property_names})
    props = []
    for s in sets:
        block = np.full((len(s), len(names)), np.nan)
        for j, n in enumerate(s.property_names):
            block[:, names.index(n)] = s.properties[:, j]
        props.append(block)
    offsets = np.cumsum([0] + [int(s.ptr[-1]) for s in sets[:-1]])
    return StoreConformerSet(
        elements=np.concatenate([s.elements for s in sets]),
        coords=np.concatenate([s.coords for s in sets]),
        ptr=np.concatenate([[0]] + [s.ptr[1:] + o for s, o in zip(sets, offsets)]).astype(np.int64),
        keys=np.concatenate([s.keys for s in sets]),
        names=np.concatenate([s.names for s in sets]),
        properties=np.concatenate(props), property_names=tuple(names),
        smiles=np.concatenate([s.smiles for s in sets]),
        # each store's weights are normalised per molecule; renormalise over the union
        weights=normalised_weights(np.concatenate([s.keys for s in sets]), np.concatenate([s.weights for s in sets])),
    )
