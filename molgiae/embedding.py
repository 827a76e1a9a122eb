"""Batch jobs on molecule files: embeddings to HDF5, reconstructions to SDF, shard merging, maps.

Everything streams: records are read (in line, or by a reader process with ``read_ahead``:
:mod:`molgiae.data.read_ahead`), checked and processed in windows of ``window_batches``
batches, so memory does not grow with the input size. Inside a window the valid records are
sorted by atom count and cut into batches under an atom-pair budget
(:func:`~molgiae.data.batching.pair_budget_batches`: less padding, bounded memory), but rows
are always written in input order. Between windows the free C heap is returned to the system
(:func:`molgiae.runtime.release_free_memory`). Output files are written to ``OUT.tmp-<pid>`` next to ``OUT`` and
renamed at the end; an exception or Ctrl-C deletes the temporary file, so there is never a
half-written ``OUT``.

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
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from molgiae._version import __version__
from molgiae.data.batching import size_sorted_batches
from molgiae.data.molecules import perceive_smiles, rdkit_molecule
from molgiae.data.read_ahead import position, read_positioned
from molgiae.data.record import ConformerRecord, RecordError
from molgiae.outputs import atomic_output, atomic_savefig, refuse_input_as_output
from molgiae.runtime import release_free_memory

if TYPE_CHECKING:
    from molgiae.api import MolgiaeModel, ReconstructedMolecule

Item = ConformerRecord | RecordError
Progress = Callable[[int], Any]
OnError = Callable[[RecordError], Any]

FORMAT = "molgiae-embeddings-1"
ROW_DATASETS = ("embedding", "name", "source", "record", "smiles", "n_atoms", "hydrogens_added", "input_order")
ERROR_DATASETS = ("source", "record", "name", "reason", "input_order")
DEFAULT_WINDOW_BATCHES = 64
H5_CHUNK_ROWS = 1024


class NothingWrittenError(ValueError):
    """No record of the inputs could be used; no output file was written. ``summary`` says why."""

    def __init__(self, message: str, summary):
        super().__init__(message)
        self.summary = summary


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
class ReconstructSummary:
    """Counts and scores of one reconstruct run; rmsd in Å over the written molecules."""

    out: Path
    n_written: int = 0
    n_failed: int = 0
    n_records: int = 0
    n_files: int = 0
    rmsd_mean: float = float("nan")
    rmsd_median: float = float("nan")
    element_accuracy_mean: float = float("nan")
    seconds: float = 0.0


@dataclass
class MergeSummary:
    out: Path
    n_rows: int
    n_errors: int
    n_files: int
    missing_shards: list[str]


# =========================================================================== streaming core


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with 0 ≤ I < N; ValueError otherwise."""
    try:
        i, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {text!r}: need N >= 1 and 0 <= I < N (I is 0-based)")
    return i, n


#: Default per-molecule atom cap of the batch jobs (``--max-atoms``). The model's pair tensors are
#: dense ([B, N, N, F]): about 1 KiB per atom pair with the default model, so 500 atoms need about
#: 0.25 GiB and 2,000 atoms 4 GiB for one molecule. Larger records are error rows, not a crash.
DEFAULT_MAX_ATOMS = 500
_BYTES_PER_PAIR = 1024


def too_many_atoms(n_atoms: int, max_atoms: int | None) -> str | None:
    """The error reason of a record above the atom cap, or None."""
    if max_atoms is None or n_atoms <= max_atoms:
        return None
    gib = n_atoms * n_atoms * _BYTES_PER_PAIR / 2**30
    return (f"{n_atoms} atoms: above --max-atoms={max_atoms} (the model's dense pair tensors would need "
            f"about {gib:.1f} GiB for this molecule); raise --max-atoms to try it")


def _checked(model: "MolgiaeModel", item: Item, reconstruct: bool, max_atoms: int | None = None) -> Item:
    """The record itself, or a RecordError saying why this model cannot take it."""
    if isinstance(item, RecordError):
        return item
    reason = model.check(item, reconstruct=reconstruct) or too_many_atoms(item.n_atoms, max_atoms)
    return item if reason is None else RecordError(item.source, item.index, reason, item.name)


class _Failed:
    """The result slot of a record whose model call failed on its own."""

    def __init__(self, reason: str):
        self.reason = reason


def _run_batch(process: Callable[[list[ConformerRecord]], Sequence], records: list[ConformerRecord]) -> list:
    """``process(records)``; if it fails (out of memory, a model error), each record again on its own,
    so one bad molecule never takes the others down. A record that fails alone gets a ``_Failed``."""
    try:
        return list(process(records))
    except Exception as exc:  # noqa: BLE001 - MemoryError, torch's RuntimeError (incl. CUDA OOM), ...
        if len(records) == 1:
            return [_Failed(f"the model failed on this molecule ({type(exc).__name__}: {str(exc)[:300]})")]
    out = []  # (outside the except block: the failed batch's tensors are freed before the retries)
    for rec in records:
        out.extend(_run_batch(process, [rec]))
    return out


def _process_window(window: list[tuple[int, Item]], process: Callable[[list[ConformerRecord]], Sequence],
                    batch_size: int, on_error: OnError | None = None) -> Iterator[tuple[int, Item, Any]]:
    """Run ``process`` on the window's records in size-sorted batches (at most ``batch_size``
    records and a bounded number of atom pairs each: :func:`~molgiae.data.batching.size_sorted_batches`);
    yield in window order.

    Yields ``(position, item, result)``: result is the item's row of ``process``'s output, or
    None for errors. A batch whose call fails is retried one record at a time; a record that
    fails on its own becomes a RecordError (passed to ``on_error``).
    """
    valid = [k for k, (_, item) in enumerate(window) if isinstance(item, ConformerRecord)]
    results: list[Any] = [None] * len(window)
    # largest batch first: later, smaller batches reuse its freed blocks instead of growing the heap
    for batch in reversed(size_sorted_batches([window[k][1].n_atoms for k in valid], batch_size)):
        ks = [valid[b] for b in batch]
        for k, res in zip(ks, _run_batch(process, [window[k][1] for k in ks])):
            results[k] = res
    for (pos, item), res in zip(window, results):
        if isinstance(res, _Failed):
            item, res = RecordError(item.source, item.index, res.reason, item.name), None
            if on_error is not None:
                on_error(item)
        yield pos, item, res


def stream_results(
    model: "MolgiaeModel",
    items: Iterable[tuple[int, Item]],
    process: Callable[[list[ConformerRecord]], Sequence],
    *,
    batch_size: int = 64,
    reconstruct: bool = False,
    window_batches: int = DEFAULT_WINDOW_BATCHES,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    max_atoms: int | None = None,
) -> Iterator[tuple[int, Item, Any]]:
    """Check positioned items against the model and process the good ones, streaming.

    Holds at most ``window_batches * batch_size`` items (records or errors) at a time.
    Records above ``max_atoms`` atoms are errors (:func:`too_many_atoms`), and a record on
    which the model call fails is an error too (its batch is retried record by record).
    ``on_error`` sees each failed item as soon as it is read; ``progress(k)`` is told of every
    item read. Yields ``(position, ConformerRecord | RecordError, result | None)`` in input order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    capacity = batch_size * max(1, window_batches)
    window: list[tuple[int, Item]] = []
    for pos, item in items:
        item = _checked(model, item, reconstruct, max_atoms)
        if isinstance(item, RecordError) and on_error is not None:
            on_error(item)
        window.append((pos, item))
        if progress is not None:
            progress(1)
        if len(window) >= capacity:
            yield from _process_window(window, process, batch_size, on_error)
            window = []
            release_free_memory()  # resident memory flat in the number of molecules
    yield from _process_window(window, process, batch_size, on_error)


# =========================================================================== HDF5 writer


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


# =========================================================================== reconstruct


def _sdf_molecule(rec: "ReconstructedMolecule"):
    """RDKit molecule of one reconstruction: predicted elements, coords, perceived connectivity
    (no bonds when perception fails), title and ``molgiae_*`` SD properties."""
    from rdkit import Chem, rdBase
    from rdkit.Chem import rdDetermineBonds

    mol = rdkit_molecule(rec.elements, rec.coords)
    block = rdBase.BlockLogs()
    try:
        bonded = Chem.RWMol(mol)
        rdDetermineBonds.DetermineConnectivity(bonded)
        mol = bonded
    except Exception:  # noqa: BLE001 - keep the bond-less molecule
        pass
    finally:
        del block
    mol.UpdatePropertyCache(strict=False)
    mol.SetProp("_Name", rec.record.name)
    mol.SetProp("molgiae_rmsd", f"{rec.rmsd:.6f}")
    mol.SetProp("molgiae_element_accuracy", f"{rec.element_accuracy:.6f}")
    mol.SetProp("molgiae_source", rec.record.source)
    mol.SetProp("molgiae_record", str(rec.record.index))
    if rec.record.hydrogens_added:
        mol.SetProp("molgiae_hydrogens_added", f"{rec.record.hydrogens_added} (the input record had no explicit "
                                                "hydrogens; they were added with RDKit AddHs(addCoords=True))")
    return mol


def reconstruct_to_sdf(
    model: "MolgiaeModel",
    inputs: Sequence[str | Path],
    out: Path,
    canonical: bool = False,
    batch_size: int = 64,
    reader_options: dict | None = None,
    progress: Progress | None = None,
    on_error: OnError | None = None,
    *,
    window_batches: int = DEFAULT_WINDOW_BATCHES,
    read_ahead: bool = False,
) -> ReconstructSummary:
    """Reconstruct every conformer of ``inputs`` from its code and write an SDF (atomic).

    Each molecule: atoms = predicted elements in the input's atom order and pose (or slot order
    and the centred canonical pose when ``canonical``), title = record name, SD properties
    ``molgiae_rmsd`` (Å, against the input, no alignment), ``molgiae_element_accuracy``,
    ``molgiae_source``, ``molgiae_record``. Records the model cannot reconstruct (e.g. more
    than ``model.max_atoms`` atoms) are errors. Raises NothingWrittenError (no file) when none
    could be reconstructed. ``read_ahead``: read in a child process (see :func:`embed_to_hdf5`).
    """
    from rdkit import Chem

    out = Path(out)
    refuse_input_as_output(out, inputs)
    start = time.perf_counter()
    summary = ReconstructSummary(out=out)
    rmsds, accs = array("d"), array("d")
    positioned, sources = read_positioned(inputs, reader_options, read_ahead=read_ahead)
    process = lambda recs: model.reconstruct_records(recs, canonical=canonical)  # noqa: E731
    with atomic_output(out) as tmp:
        writer = Chem.SDWriter(str(tmp))
        try:
            for _, item, rec in stream_results(model, positioned, process,
                                               batch_size=batch_size, reconstruct=True,
                                               window_batches=window_batches, progress=progress,
                                               on_error=on_error):
                summary.n_records += 1
                if isinstance(item, RecordError):
                    summary.n_failed += 1
                    continue
                writer.write(_sdf_molecule(rec))
                rmsds.append(rec.rmsd)
                accs.append(rec.element_accuracy)
        finally:
            writer.close()
        summary.n_files = len(sources)
        summary.n_written = len(rmsds)
        if not rmsds:
            raise NothingWrittenError(f"no conformer could be reconstructed ({summary.n_failed} failed); "
                                      f"nothing written to {out}", summary)
    r = np.frombuffer(rmsds, dtype=np.float64)
    summary.rmsd_mean, summary.rmsd_median = float(r.mean()), float(np.median(r))
    summary.element_accuracy_mean = float(np.frombuffer(accs, dtype=np.float64).mean())
    summary.seconds = time.perf_counter() - start
    return summary


# =========================================================================== maps


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """x [N, D] → (points [N, 2], axis labels). PCA via numpy SVD; t-SNE via scikit-learn."""
    x = np.asarray(x, dtype=np.float64)
    if method == "pca":
        centred = x - x.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        var = np.pad(s ** 2 / max(float((s ** 2).sum()), 1e-300), (0, 2))
        pts = np.pad(centred @ vt[:2].T, ((0, 0), (0, max(0, 2 - len(vt)))))
        return pts, (f"PC1 ({100 * var[0]:.1f} % of variance)", f"PC2 ({100 * var[1]:.1f} % of variance)")
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise RuntimeError("t-SNE needs scikit-learn, which is not installed: pip install scikit-learn "
                               "(or use --method pca)") from None
        perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca")
        return tsne.fit_transform(x), ("t-SNE 1", "t-SNE 2")
    raise ValueError(f"unknown method {method!r}: use pca or tsne")


def _color_values(f, color_by: str | None, labels_csv: Path | None, names: np.ndarray) -> np.ndarray | None:
    """Per-row values [N] to colour by: a labels-CSV column joined on ``name``, or an HDF5 dataset."""
    if color_by is None:
        return None
    if labels_csv is not None:
        import pandas as pd

        labels = pd.read_csv(labels_csv)
        if "name" not in labels.columns or color_by not in labels.columns:
            raise ValueError(f"{labels_csv} needs the columns 'name' and {color_by!r}; it has {list(labels.columns)}")
        table = labels.drop_duplicates("name").set_index("name")[color_by]
        return table.reindex(pd.Index(names)).to_numpy()
    if color_by not in f or f[color_by].ndim != 1 or f[color_by].shape[0] != len(names):
        per_row = [k for k in ROW_DATASETS if k != "embedding"]
        raise ValueError(f"--color-by {color_by!r}: not a per-row dataset of the file; use one of {per_row} "
                         f"or a column of a --labels CSV")
    ds = f[color_by]
    return ds.asstr()[:] if ds.dtype.kind == "O" else ds[:]


def embedding_map(h5: Path, out_png: Path, method: str = "pca", color_by: str | None = None,
                  labels_csv: Path | None = None, max_points: int = 100_000, seed: int = 0) -> int:
    """2-D map (PCA or t-SNE) of an embedding file as a scatter PNG; returns points drawn.

    ``color_by``: a column of ``labels_csv`` (joined on ``name``; missing labels grey) or a
    per-row dataset of the file such as ``n_atoms``. Above ``max_points`` rows a seeded random
    subset is drawn.
    """
    import h5py
    import matplotlib

    refuse_input_as_output(out_png, [h5] + ([labels_csv] if labels_csv is not None else []))
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(h5, "r") as f:
        if "embedding" not in f:
            raise ValueError(f"{h5} has no 'embedding' dataset; is it a molgiae embed output?")
        n = f["embedding"].shape[0]
        if n < 2:
            raise ValueError(f"{h5} has {n} embedding(s); a map needs at least 2")
        ids = np.arange(n)
        if n > max_points:
            ids = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        x = f["embedding"][ids] if len(ids) < n else f["embedding"][:]
        names = f["name"].asstr()[ids] if len(ids) < n else f["name"].asstr()[:]
        values = _color_values(f, color_by, labels_csv, np.asarray(names))
        if values is not None and len(ids) < n and labels_csv is None:
            values = values[ids]
    pts, (xlabel, ylabel) = project_2d(x, method, seed)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    _scatter(ax, pts, values, color_by)
    ax.set_title(f"{Path(h5).name}: {method.upper() if method == 'pca' else 't-SNE'} of {len(pts):,} embeddings")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    atomic_savefig(fig, out_png)
    return len(pts)


def _scatter(ax, pts: np.ndarray, values: np.ndarray | None, label: str | None) -> None:
    """Scatter pts [N, 2]; numeric values → colour bar, else ≤ 20 categories → legend."""
    size = float(np.clip(2000 / np.sqrt(len(pts)), 1, 30))
    if values is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=size, lw=0, alpha=0.7, rasterized=True)
        return
    numeric = np.asarray(values)
    if numeric.dtype.kind in "biuf":
        numeric = numeric.astype(float)
        missing = ~np.isfinite(numeric)
        ax.scatter(pts[missing, 0], pts[missing, 1], s=size, lw=0, c="lightgrey", rasterized=True)
        sc = ax.scatter(pts[~missing, 0], pts[~missing, 1], s=size, lw=0, c=numeric[~missing], cmap="viridis",
                        alpha=0.8, rasterized=True)
        ax.figure.colorbar(sc, ax=ax, label=label)
        return
    cats = np.array(["(none)" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values])
    uniq, counts = np.unique(cats, return_counts=True)
    top = set(uniq[np.argsort(-counts)[:20]])
    for cat in sorted(top):
        sel = cats == cat
        ax.scatter(pts[sel, 0], pts[sel, 1], s=size, lw=0, alpha=0.8, label=cat, rasterized=True)
    rest = ~np.isin(cats, list(top))
    if rest.any():
        ax.scatter(pts[rest, 0], pts[rest, 1], s=size, lw=0, c="lightgrey", label="(other)", rasterized=True)
    ax.legend(title=label, fontsize="small", markerscale=2, loc="best")
