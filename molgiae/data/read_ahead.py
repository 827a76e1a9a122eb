"""Positioned records of molecule files, read in line or in a child process ahead of the consumer.

Reading an SD file (RDKit parsing and sanitising, canonical SMILES, geometry checks) costs about
0.2 ms per molecule, a quarter of an ``embed`` run on 2 CPU cores when done between model calls.
:class:`ReadAhead` runs the same reading in a child process (a fresh interpreter: safe next to the
model's threads) that sends chunks of records through a pipe, so reading overlaps the model and
memory stays bounded (at most ``DEPTH`` chunks are held ahead). Both ways yield exactly the same
``(global position, item)`` pairs in the same order.

Shards: the record at global position p (every item the readers yield, good or bad, counts one
position) belongs to shard ``p % N``; other shards' records are read but not passed on.
"""
from __future__ import annotations

import os
import pickle
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from molgiae.data.molecules import perceive_smiles
from molgiae.data.readers import iter_records
from molgiae.data.record import ConformerRecord, RecordError

Item = ConformerRecord | RecordError

#: records per message from the reader process, and messages held ahead of the consumer
#: (64 × 256 records: more than one embedding window of 64 batches × 64; a few MiB)
CHUNK = 256
DEPTH = 64


class ReadAheadError(RuntimeError):
    """The reader process failed (its traceback is in the message) or died."""


def position(items: Iterable[Item], shard: tuple[int, int] | None = None, perceive: bool = False,
             sources: set[str] | None = None) -> Iterator[tuple[int, Item]]:
    """``(global position, item)`` of this shard's items, in input order.

    perceive: fill in missing SMILES of records by perception from geometry.
    sources: when given, every source seen (all shards) is added to it.
    """
    i, n = shard if shard is not None else (0, 1)
    for pos, item in enumerate(items):
        if sources is not None:
            sources.add(item.source)
        if pos % n != i:
            continue
        if perceive and isinstance(item, ConformerRecord) and not item.smiles:
            item.smiles = perceive_smiles(item)
        yield pos, item


def positioned_items(paths: Sequence[str | Path], reader_options: dict | None = None,
                     shard: tuple[int, int] | None = None, perceive: bool = False,
                     sources: set[str] | None = None) -> Iterator[tuple[int, Item]]:
    """:func:`position` over every record of ``paths`` (files or glob patterns, any format)."""
    yield from position(iter_records([str(p) for p in paths], **(reader_options or {})), shard, perceive, sources)


def read_positioned(paths: Sequence[str | Path], reader_options: dict | None = None, *,
                    shard: tuple[int, int] | None = None, perceive: bool = False,
                    read_ahead: bool = False) -> tuple[Iterator[tuple[int, Item]], set[str]]:
    """This shard's ``(position, item)`` pairs of ``paths`` and the set of sources seen.

    ``read_ahead``: read in a child process (:class:`ReadAhead`; the set is filled when
    iteration ends) instead of in line (filled as items are read).
    """
    if read_ahead:
        reader = ReadAhead(paths, reader_options, shard=shard, perceive=perceive)
        return iter(reader), reader.sources
    sources: set[str] = set()
    return positioned_items(paths, reader_options, shard, perceive, sources), sources


def _child_main() -> None:
    """The reader process: reads its arguments (pickled) from stdin, writes pickled messages
    ``("items", [(pos, item), ...])``… then ``("done", sources)`` or ``("error", traceback)`` to
    the pipe that was its stdout (its fd 1 is pointed at stderr, so stray prints cannot corrupt
    the stream)."""
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    try:
        args, chunk = pickle.load(sys.stdin.buffer)
        sources: set[str] = set()
        buf: list = []
        for pair in positioned_items(*args, sources=sources):
            buf.append(pair)
            if len(buf) >= chunk:
                pickle.dump(("items", buf), out, protocol=pickle.HIGHEST_PROTOCOL)
                buf = []
        pickle.dump(("items", buf), out, protocol=pickle.HIGHEST_PROTOCOL)
        pickle.dump(("done", sorted(sources)), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
    except (KeyboardInterrupt, BrokenPipeError):  # Ctrl-C, or the parent stopped reading
        pass
    except BaseException:  # noqa: BLE001 - reported to the parent
        try:
            pickle.dump(("error", traceback.format_exc()), out)
            out.flush()
        except OSError:
            pass


class ReadAhead:
    """Iterate ``(position, item)`` pairs read by a child process (see the module docstring).

    The child is a fresh ``python`` running :func:`_child_main` (not ``multiprocessing``: that
    would import the caller's ``__main__`` again). It sends pickled chunks of ``chunk`` records
    on a pipe; a thread of this process unpickles them into a queue of at most ``depth`` chunks,
    so the child can read that far ahead (more than one read-ahead window of the embedding loop)
    and memory stays bounded. ``sources`` holds every source seen once iteration has finished.
    The child is stopped when iteration ends, fails or is abandoned (:meth:`close`).
    """

    def __init__(self, paths: Sequence[str | Path], reader_options: dict | None = None, *,
                 shard: tuple[int, int] | None = None, perceive: bool = False,
                 chunk: int = CHUNK, depth: int = DEPTH):
        self.sources: set[str] = set()
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        self._process = subprocess.Popen(
            [sys.executable, "-c", "from molgiae.data.read_ahead import _child_main; _child_main()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
        )
        args = ([str(p) for p in paths], dict(reader_options or {}), shard, perceive)
        try:
            self._process.stdin.write(pickle.dumps((args, max(1, chunk))))
            self._process.stdin.close()
        except BrokenPipeError:
            pass  # the child died: reported when reading
        self._messages: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._pump = threading.Thread(target=self._pump_messages, name="molgiae-read-ahead", daemon=True)
        self._pump.start()

    def _pump_messages(self) -> None:
        """Thread: unpickle the child's messages into the queue; ("eof", None) at the end."""
        while True:
            try:
                message = pickle.load(self._process.stdout)
            except (EOFError, OSError, ValueError, pickle.UnpicklingError):
                message = ("eof", None)
            while not self._stop.is_set():
                try:
                    self._messages.put(message, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or message[0] in ("eof", "done", "error"):
                return

    def __iter__(self) -> Iterator[tuple[int, Item]]:
        try:
            while True:
                kind, payload = self._messages.get()
                if kind == "items":
                    yield from payload
                elif kind == "done":
                    self.sources.update(payload)
                    return
                elif kind == "error":
                    raise ReadAheadError(f"the reader process failed:\n{payload}")
                else:
                    code = self._process.wait()
                    raise ReadAheadError(f"the reader process exited unexpectedly (exit code {code})")
        finally:
            self.close()

    def close(self) -> None:
        """Stop the reader process (if it still runs) and the thread."""
        self._stop.set()
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._pump.join(timeout=10)
        self._process.stdout.close()
