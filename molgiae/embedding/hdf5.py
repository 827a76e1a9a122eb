"""Embedding files: :func:`embed_to_hdf5` streams codes into HDF5, :func:`merge_hdf5` joins shards.

The file is written to ``OUT.tmp-<pid>`` next to ``OUT`` and renamed at the end
(:func:`molgiae.outputs.atomic_output`); an exception or Ctrl-C deletes the temporary file.

HDF5 layout of :func:`embed_to_hdf5` (N embedded conformers, D = embedding size)::

    embedding     float32 [N, D]  invariant codes z
    name          utf-8   [N]     record name (title line, gdb_N, SMILES-file name, ...)
    source        utf-8   [N]     the file it was read from, as given
    record        int64   [N]     0-based record index in that file
    smiles        utf-8   [N]     reader's SMILES, else perceived from 3-D geometry, else ""
    n_atoms       int32   [N]     atoms embedded, including hydrogens added by the reader
    hydrogens_added int32 [N]     hydrogens the reader added (SD record drawn without them), else 0
    input_order   int64   [N]     global position among all records of all inputs
    errors/       group, one row per failed record (K rows):
        source utf-8 [K], record int64 [K] (-1: whole file), name utf-8 [K],
        reason utf-8 [K], input_order int64 [K]
    attributes: format, model_sha256, model_name, molgiae_version, embedding_dim, created,
                shard ("I/N" or ""), inputs (JSON list), n_embedded, n_errors

Sharding: with ``shard=(I, N)`` (0-based I) the record at global position p (every item
the readers yield, good or bad, counts one position) belongs to shard ``p % N``. Every
shard still reads all inputs, but only checks, embeds and writes its own records.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from molgiae._version import __version__
from molgiae.data.molecules import perceive_smiles
from molgiae.data.read_ahead import position, read_positioned
from molgiae.data.record import ConformerRecord, RecordError
from molgiae.embedding.streaming import (
    DEFAULT_MAX_ATOMS, DEFAULT_WINDOW_BATCHES, Item, NothingWrittenError, OnError, Progress, parse_shard, stream_results,
)
from molgiae.outputs import atomic_output, refuse_input_as_output

if TYPE_CHECKING:
    from molgiae.api import MolgiaeModel


FORMAT = "molgiae-embeddings-1"
ROW_DATASETS = ("embedding", "name", "source", "record", "smiles", "n_atoms", "hydrogens_added", "input_order")
ERROR_DATASETS = ("source", "record", "name", "reason", "input_order")
H5_CHUNK_ROWS = 1024


class MergeError(ValueError):
    pass


@dataclass
class EmbedSummary:
    """Counts of one embed run (``n_records``: items of this shard, good and bad)."""

    out: Path
    n_embedded: int = 0
    n_failed: int = 0
    n_records: int = 0
    n_files: int = 0
    seconds: float = 0.0
    shard: str = ""


@dataclass
class MergeSummary:
    out: Path
    n_rows: int
    n_errors: int
    n_files: int
    missing_shards: list[str]


class _EmbeddingWriter:
    """Appends rows and errors to resizable, chunked, gzip-compressed HDF5 datasets.

    Rows are buffered and written ``chunk`` at a time, so memory stays bounded.
    """

    def __init__(self, path: Path, dim: int, attrs: dict[str, Any], chunk: int = H5_CHUNK_ROWS):
        import h5py

        self.f = h5py.File(path, "w")
        self.chunk = chunk
        for key, value in attrs.items():
            self.f.attrs[key] = value
        text = h5py.string_dtype("utf-8")
        self.rows = _Table(self.f, {
            "embedding": (np.float32, (dim,)), "name": (text, ()), "source": (text, ()),
            "record": (np.int64, ()), "smiles": (text, ()), "n_atoms": (np.int32, ()),
            "hydrogens_added": (np.int32, ()), "input_order": (np.int64, ()),
        }, chunk)
        self.errors = _Table(self.f.create_group("errors"), {
            "source": (text, ()), "record": (np.int64, ()), "name": (text, ()),
            "reason": (text, ()), "input_order": (np.int64, ()),
        }, chunk)

    def add_row(self, pos: int, record: ConformerRecord, z: np.ndarray, smiles: str) -> None:
        self.rows.add(embedding=z, name=record.name, source=record.source, record=record.index,
                      smiles=smiles, n_atoms=record.n_atoms, hydrogens_added=record.hydrogens_added,
                      input_order=pos)

    def add_error(self, pos: int, error: RecordError) -> None:
        self.errors.add(source=error.source, record=error.index, name=error.name,
                        reason=error.reason, input_order=pos)

    def close(self, **final_attrs) -> None:
        self.rows.flush()
        self.errors.flush()
        for key, value in final_attrs.items():
            self.f.attrs[key] = value
        self.f.close()


class _Table:
    """A set of same-length 1-row-per-item datasets in one HDF5 group, appended in blocks."""

    def __init__(self, group, columns: dict[str, tuple[Any, tuple[int, ...]]], chunk: int):
        self.chunk = chunk
        self.datasets = {
            name: group.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                                       chunks=(chunk, *shape), compression="gzip", compression_opts=4,
                                       shuffle=np.dtype(dtype).kind in "iu")
            for name, (dtype, shape) in columns.items()
        }
        self.buffer: dict[str, list] = {name: [] for name in columns}
        self.count = 0

    def add(self, **values) -> None:
        for name, value in values.items():
            self.buffer[name].append(value)
        if len(self.buffer["input_order"]) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        k = len(self.buffer["input_order"])
        if k == 0:
            return
        for name, ds in self.datasets.items():
            ds.resize(self.count + k, axis=0)
            values = self.buffer[name]
            ds[self.count:self.count + k] = np.array(values, dtype=object) if ds.dtype.kind == "O" else np.asarray(values, dtype=ds.dtype)
            values.clear()
        self.count += k


# =========================================================================== embed


def embed_to_hdf5(
    model: "MolgiaeModel",
    inputs: Sequence[str | Path],
    out: Path,
    batch_size: int = 64,
    shard: tuple[int, int] | None = None,
    reader_options: dict | None = None,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    *,
    smiles: bool = True,
    window_batches: int = DEFAULT_WINDOW_BATCHES,
    read_ahead: bool = False,
    max_atoms: int | None = DEFAULT_MAX_ATOMS,
) -> EmbedSummary:
    """Embed every conformer of ``inputs`` (files or glob patterns) into the HDF5 file ``out``.

    Args:
        model: a loaded :class:`~molgiae.api.MolgiaeModel`.
        inputs: molecule files in any format of :mod:`molgiae.data.readers`.
        out: the HDF5 file (layout in this module's docstring); replaced atomically.
        batch_size: conformers per model call.
        shard: ``(I, N)``: only the records at global positions p with p % N == I.
        reader_options: ``num_conformers``, ``seed``, ``smiles_column`` for the readers.
        progress: called with the number of items (records or errors) just read.
        on_error: called with each RecordError of this shard, as it is read.
        smiles: perceive SMILES from the geometry when a record has none.
        window_batches: read-ahead window, in batches, for size bucketing.
        read_ahead: read (and perceive SMILES) in a child process, overlapping the model
            (:mod:`molgiae.data.read_ahead`; ``molgiae embed`` does).
        max_atoms: records with more atoms are error rows (memory bound; None: no cap).

    Raises NothingWrittenError (and leaves no file) when no conformer could be embedded.
    """
    refuse_input_as_output(out, inputs)
    # the reader process perceives SMILES itself (once: a failed perception is not retried here)
    positioned, sources = read_positioned(inputs, reader_options, shard=shard, perceive=smiles and read_ahead,
                                          read_ahead=read_ahead)
    return _embed_positioned(model, positioned, sources, out, inputs=[str(p) for p in inputs], batch_size=batch_size,
                             shard=shard, progress=progress, on_error=on_error, smiles=smiles and not read_ahead,
                             window_batches=window_batches, max_atoms=max_atoms)


def embed_items_to_hdf5(
    model: "MolgiaeModel",
    items: Iterable[Item],
    out: Path,
    *,
    inputs: Sequence[str] = (),
    batch_size: int = 64,
    shard: tuple[int, int] | None = None,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    smiles: bool = True,
    window_batches: int = DEFAULT_WINDOW_BATCHES,
    max_atoms: int | None = DEFAULT_MAX_ATOMS,
) -> EmbedSummary:
    """:func:`embed_to_hdf5` on a stream of records/errors (e.g. ``iter_records(...)``);
    ``inputs`` is only recorded in the file's attributes."""
    sources: set[str] = set()
    return _embed_positioned(model, position(items, shard, sources=sources), sources, out, inputs=inputs,
                             batch_size=batch_size, shard=shard, progress=progress, on_error=on_error,
                             smiles=smiles, window_batches=window_batches, max_atoms=max_atoms)


def _embed_positioned(
    model: "MolgiaeModel",
    positioned: Iterable[tuple[int, Item]],
    sources: set[str],
    out: Path,
    *,
    inputs: Sequence[str],
    batch_size: int,
    shard: tuple[int, int] | None,
    progress: Progress | None,
    on_error: OnError | None,
    smiles: bool,
    window_batches: int,
    max_atoms: int | None,
) -> EmbedSummary:
    """The embedding loop over this shard's ``(position, item)`` pairs; ``sources`` is read at the end."""
    out = Path(out)
    start = time.perf_counter()
    shard_label = f"{shard[0]}/{shard[1]}" if shard else ""
    summary = EmbedSummary(out=out, shard=shard_label)
    attrs = {
        "format": FORMAT, "model_sha256": model.sha256, "model_name": model.path.name,
        "molgiae_version": __version__, "embedding_dim": model.embedding_dim,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shard": shard_label, "inputs": json.dumps(list(inputs)),
    }
    with atomic_output(out) as tmp:
        writer = _EmbeddingWriter(tmp, model.embedding_dim, attrs)
        try:
            results = stream_results(model, positioned, model.embed_records,
                                     batch_size=batch_size, window_batches=window_batches,
                                     progress=progress, on_error=on_error, max_atoms=max_atoms)
            for pos, item, z in results:
                summary.n_records += 1
                if isinstance(item, RecordError):
                    writer.add_error(pos, item)
                    summary.n_failed += 1
                else:
                    writer.add_row(pos, item, z, item.smiles or (perceive_smiles(item) if smiles else ""))
                    summary.n_embedded += 1
        finally:
            writer.close(n_embedded=summary.n_embedded, n_errors=summary.n_failed)
        summary.n_files = len(sources)
        if summary.n_embedded == 0:
            raise NothingWrittenError(f"no conformer could be embedded ({summary.n_failed} failed); "
                                      f"nothing written to {out}", summary)
    summary.seconds = time.perf_counter() - start
    return summary


# =========================================================================== merge


def _shard_attrs(f, path: Path) -> dict[str, Any]:
    attrs = dict(f.attrs)
    for key in ("model_sha256", "embedding_dim", "inputs", "shard"):
        if key not in attrs:
            raise MergeError(f"{path} is not a molgiae embedding file (attribute {key!r} missing)")
    return attrs


def _check_compatible(files: list, paths: Sequence[Path]) -> list[str]:
    """Same model, embedding size and inputs in all files; distinct shards. → missing shards."""
    first = _shard_attrs(files[0], paths[0])
    labels = []
    for f, path in zip(files, paths):
        attrs = _shard_attrs(f, path)
        for key, what in (("model_sha256", "model (sha256)"), ("embedding_dim", "embedding_dim"),
                          ("inputs", "inputs")):
            if str(attrs[key]) != str(first[key]):
                raise MergeError(f"{path} has a different {what} than {paths[0]}: "
                                 f"{attrs[key]} vs {first[key]}; merge only shards of one embed run")
        labels.append(str(attrs["shard"]))
    return _missing_shards(labels, paths)


def _missing_shards(labels: list[str], paths: Sequence[Path]) -> list[str]:
    seen: dict[str, Path] = {}
    for label, path in zip(labels, paths):
        if label in seen:
            what = f"shard {label}" if label else "unsharded output"
            raise MergeError(f"{path} and {seen[label]} are both {what}; each shard may be merged once")
        seen[label] = path
    if "" in seen and len(labels) > 1:
        raise MergeError(f"{seen['']} is an unsharded file; it cannot be merged with shards")
    counts = {parse_shard(label)[1] for label in labels if label}
    if len(counts) > 1:
        raise MergeError(f"shards of different counts N cannot be merged: {sorted(labels)}")
    if not counts:
        return []
    n = counts.pop()
    return [f"{i}/{n}" for i in range(n) if f"{i}/{n}" not in seen]


def _merge_plan(orders: list[np.ndarray], what: str, paths: Sequence[Path]) -> np.ndarray:
    """File id [M] of each merged row, in ascending ``input_order``.

    Each file's rows must already be in ascending order (embed writes them so); then the rows
    of one file keep their order and can be copied in contiguous slices.
    """
    for order, path in zip(orders, paths):
        if np.any(np.diff(order) <= 0):
            raise MergeError(f"{path}: {what} rows are not in increasing input_order")
    if not orders:
        return np.zeros(0, np.int64)
    allo = np.concatenate(orders)
    fid = np.concatenate([np.full(len(o), k, np.int64) for k, o in enumerate(orders)])
    perm = np.argsort(allo, kind="stable")
    if np.any(np.diff(allo[perm]) == 0):
        raise MergeError(f"the same {what} row (input_order) occurs in two files; are these shards of one run?")
    return fid[perm]


def _merge_group(sources: list, target, plan: np.ndarray, block: int = 65536) -> None:
    """Copy every dataset of the source groups into ``target`` in merged order, block by block."""
    for name, ds0 in sources[0].items():
        dst = target.create_dataset(name, shape=(len(plan), *ds0.shape[1:]), maxshape=(None, *ds0.shape[1:]),
                                    dtype=ds0.dtype, chunks=ds0.chunks,
                                    compression=ds0.compression, compression_opts=ds0.compression_opts,
                                    shuffle=ds0.shuffle)
        cursor = [0] * len(sources)
        for a in range(0, len(plan), block):
            ids = plan[a:a + block]
            buf = np.empty((len(ids), *ds0.shape[1:]), dtype=ds0.dtype)
            for k, src in enumerate(sources):
                take = ids == k
                count = int(take.sum())
                if count:
                    buf[take] = src[name][cursor[k]:cursor[k] + count]
                    cursor[k] += count
            dst[a:a + len(ids)] = buf


def merge_hdf5(shards: Sequence[Path], out: Path) -> MergeSummary:
    """Merge the shard files of one embed run into ``out`` (atomic), rows and errors sorted by
    ``input_order``. Checks model sha256, embedding_dim and inputs agree (MergeError naming the
    file otherwise). Memory: the ``input_order`` columns plus one block of rows."""
    import h5py

    shards = [Path(p) for p in shards]
    if not shards:
        raise MergeError("no shard files given")
    for p in shards:
        if not p.is_file():
            raise MergeError(f"shard file not found: {p}")
    out = Path(out)
    refuse_input_as_output(out, shards)
    files = []
    try:
        for p in shards:
            try:
                files.append(h5py.File(p, "r"))
            except OSError as exc:
                raise MergeError(f"cannot read {p} as HDF5: {exc}") from None
        missing = _check_compatible(files, shards)
        row_plan = _merge_plan([f["input_order"][:] for f in files], "embedding", shards)
        err_plan = _merge_plan([f["errors/input_order"][:] for f in files], "error", shards)
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as g:
            for key, value in files[0].attrs.items():
                g.attrs[key] = value
            g.attrs["shard"] = ",".join(str(f.attrs["shard"]) for f in files) if missing else ""
            g.attrs["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
            g.attrs["n_embedded"] = len(row_plan)
            g.attrs["n_errors"] = len(err_plan)
            common = [k for k in ROW_DATASETS if all(k in f for f in files)]  # older files: no hydrogens_added
            _merge_group([{k: f[k] for k in common} for f in files], g, row_plan)
            _merge_group([f["errors"] for f in files], g.create_group("errors"), err_plan)
    finally:
        for f in files:
            f.close()
    return MergeSummary(out=out, n_rows=len(row_plan), n_errors=len(err_plan), n_files=len(shards),
                        missing_shards=missing)
