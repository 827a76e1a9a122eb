"""Output-file safety for every command that writes (floor 1: knows nothing of molgiae).

* :func:`refuse_input_as_output`: an output path that resolves to one of the inputs (the same
  path, a symbolic link to it or a hard link of it) is refused before anything is written, so
  ``molgiae embed v.sdf -o v.sdf`` can never replace its own input.
* :func:`temp_path`: the ``OUT.tmp-<pid>`` name a command writes before renaming it to ``OUT``;
  stale temporary files of ``OUT`` left by processes that no longer run (killed with SIGKILL, a
  node that went down) are removed first. Files of a process that still runs are left alone.
* :func:`atomic_output`: the one way the package writes a file: a context manager yielding that
  temporary path, renamed to ``OUT`` when the block ends normally and removed when it raises
  (so a reader never sees a half-written file, and a failed write leaves nothing behind).
"""
from __future__ import annotations

import csv
import glob
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from molgiae.runtime import raise_if_interrupted


class OutputIsInputError(ValueError):
    """The output path resolves to an input file; nothing was written."""


def _expand(inputs: Iterable[str | os.PathLike]) -> Iterable[Path]:
    for p in inputs:
        p = str(p)
        if glob.has_magic(p):
            yield from (Path(m) for m in sorted(glob.glob(p)))
        else:
            yield Path(p)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths exist and name the same file (links and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (or cannot be stat'ed)
        return False


def refuse_input_as_output(out: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                           what: str = "output") -> None:
    """Raise :class:`OutputIsInputError` when ``out`` is one of ``inputs`` (glob patterns are
    expanded): same path, a link to it, or a hard link of it."""
    out = Path(out)
    if not out.exists():
        return
    for p in _expand(inputs):
        if same_file(out, p):
            how = "is" if out.absolute() == p.absolute() else "is the same file as"
            raise OutputIsInputError(f"the {what} {out} {how} the input {p}; refusing to overwrite an input "
                                     f"(choose another output name)")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(out: str | os.PathLike) -> list[Path]:
    """Delete the temporary files of ``out`` (``OUT.tmp-<pid>``, ``.OUT.<pid>.tmp``,
    ``.OUT.<pid>.parts``) whose process no longer runs; return what was removed."""
    out = Path(out)
    name = re.escape(out.name)
    patterns = [re.compile(rf"^{name}\.tmp-(\d+)$"), re.compile(rf"^\.{name}\.(\d+)\.(tmp|parts|tmp\.png)$")]
    removed = []
    try:
        entries = list(out.parent.iterdir()) if out.parent.is_dir() else []
    except OSError:
        return removed
    for entry in entries:
        for pat in patterns:
            m = pat.match(entry.name)
            if m and not _alive(int(m.group(1))):
                try:
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry)
                    else:
                        entry.unlink()
                    removed.append(entry)
                except OSError:
                    pass
                break
    return removed


def temp_path(out: str | os.PathLike) -> Path:
    """``OUT.tmp-<pid>`` next to ``OUT``, after removing stale temporary files of ``OUT``."""
    out = Path(out)
    remove_stale_temps(out)
    return out.with_name(f"{out.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield :func:`temp_path` of ``out``; on normal exit rename it to ``out`` (atomic on one
    file system), on any exception (KeyboardInterrupt and SIGTERM's SystemExit included) remove
    it and re-raise; also when an interruption arrived during the block but was swallowed
    (:func:`molgiae.runtime.raise_if_interrupted`). Whatever writes the temporary file must have closed it by the block's end."""
    out = Path(out)
    tmp = temp_path(out)
    try:
        yield tmp
        raise_if_interrupted()  # a Ctrl-C / SIGTERM whose exception was caught and dropped: no output either
        os.replace(tmp, out)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_output`."""
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def atomic_csv(path: str | os.PathLike, columns: Sequence[str], rows: Iterable[Mapping | Sequence]) -> None:
    """Write a CSV file (header ``columns``; a row is a mapping, read at ``columns``, or a
    sequence) through :func:`atomic_output`; ``rows`` may be a generator."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(columns)
        for r in rows:
            w.writerow([r[c] for c in columns] if isinstance(r, Mapping) else r)


def atomic_savefig(fig, path: str | os.PathLike, dpi: float | None = None) -> None:
    """Save a matplotlib figure as PNG (whatever the suffix of ``path``) through
    :func:`atomic_output`, and close it whatever happens."""
    import matplotlib.pyplot as plt  # optional and slow to import: only when a figure is saved

    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
