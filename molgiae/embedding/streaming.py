"""The streaming driver of the batch jobs (embed, reconstruct, predict): read, check, batch,
process and yield in input order, window by window.

Records are read (in line, or by a reader process with ``read_ahead``:
:mod:`molgiae.data.read_ahead`), checked and processed in windows of ``window_batches``
batches, so memory does not grow with the input size. Inside a window the valid records are
sorted by atom count and cut into batches under an atom-pair budget
(:func:`~molgiae.data.batching.pair_budget_batches`: less padding, bounded memory), but rows
are always yielded in input order. Between windows the free C heap is returned to the system
(:func:`molgiae.runtime.release_free_memory`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from molgiae.data.batching import size_sorted_batches
from molgiae.data.record import ConformerRecord, RecordError
from molgiae.runtime import raise_if_interrupted, release_free_memory

if TYPE_CHECKING:
    from molgiae.api import MolgiaeModel


Item = ConformerRecord | RecordError
Progress = Callable[[int], Any]
OnError = Callable[[RecordError], Any]


DEFAULT_WINDOW_BATCHES = 64


class NothingWrittenError(ValueError):
    """No record of the inputs could be used; no output file was written. ``summary`` says why."""

    def __init__(self, message: str, summary):
        super().__init__(message)
        self.summary = summary


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
        raise_if_interrupted()  # stop early after a swallowed Ctrl-C (atomic_output would not commit anyway)
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
