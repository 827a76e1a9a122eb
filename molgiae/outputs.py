"""Output-file safety for every command that writes (floor 1: knows nothing of molgiae).

* :func:`refuse_input_as_output`: an output path that resolves to one of the inputs (the same
  path, a symbolic link to it or a hard link of it) is refused before anything is written, so
  ``molgiae embed v.sdf -o v.sdf`` can never replace its own input.
* :func:`temp_path`: the ``OUT.tmp-<pid>`` name a command writes before renaming it to ``OUT``;
  stale temporary files of ``OUT`` left by processes that no longer run (killed with SIGKILL, a
  node that went down) are removed first. Files of a process that still runs are left alone.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path


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
