"""Process-wide settings for running models on CPU (floor 1: knows nothing of molgiae).

:func:`tune_allocator` keeps freed large blocks in glibc's heap. PyTorch frees and allocates
the same large pair tensors ([B, N, N, F], several MiB) on every batch; by default glibc serves
blocks above its (dynamic, ≤ 32 MiB) mmap threshold with fresh ``mmap`` calls whose pages are
faulted in again on first touch, and returns them on ``free``. Measured on 2 CPU cores with the
default model, batch size 64, model calls only: 880 molecules/s untuned, 2,100 tuned; one training
thread, batch size 32: 223 → 335 conformers/s (this and the message-block rewrite together). The cost: the process keeps
up to ``trim_threshold`` bytes of freed heap instead of returning it, so its resident memory
stays at the peak working set of one batch (bounded by batch size × atoms², flat in the number
of molecules).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import signal
import sys
import threading

_M_TRIM_THRESHOLD = -1  # mallopt parameters of glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_tuned = False


@functools.lru_cache(maxsize=1)
def _libc():
    """glibc through ctypes, or None (another C library or platform). Looked up once:
    ``find_library`` runs ``ldconfig``, and ``release_free_memory`` is called every window."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt, libc.malloc_trim  # glibc only
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator(mmap_threshold: int = 256 << 20, trim_threshold: int = 512 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds (bytes) for this process; True when applied.

    A no-op returning False where the C library is not glibc (macOS, musl, Windows). Calling it
    again does nothing. The commands that run models (train, evaluate, embed, reconstruct,
    finetune, predict) call it; call ``molgiae.tune_allocator()`` yourself before a long job
    through the Python API.
    """
    global _tuned
    if _tuned:
        return True
    libc = _libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    _tuned = ok
    return ok


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``; a no-op elsewhere).

    Long streaming loops call it between windows: model calls on batches of varying shapes
    leave free holes between live blocks, which ``malloc_trim`` returns (``madvise``) so the
    resident memory tracks what is in use instead of creeping up with the number of molecules.
    """
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) as our handler raises it. A subclass, not KeyboardInterrupt itself: CPython
    marks the process for a kill by SIGINT at exit (exit status -2 instead of our 130) when a bare
    KeyboardInterrupt escapes code run by ``exec``/``eval`` of a string (e.g. a dataclass being
    built) and only checks the exact type; under ``python -m molgiae`` that happened in half of the
    interrupted runs."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (what ``timeout``, SLURM and ``kill`` send first), raised like Ctrl-C's
    KeyboardInterrupt so that the same clean-up runs (temporary outputs removed)."""


_received: list[str] = []


def handle_interrupts() -> None:
    """Ctrl-C (SIGINT) raises KeyboardInterrupt and SIGTERM raises :class:`Terminated`, in the main
    thread, and :func:`interrupted_by` remembers which arrived (a no-op off the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _sigint(signum, frame):  # noqa: ARG001
        _received.append("Ctrl-C")
        raise Interrupted

    def _sigterm(signum, frame):  # noqa: ARG001
        _received.append("SIGTERM")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills at once
        raise Terminated("SIGTERM")

    signal.signal(signal.SIGINT, _sigint)
    signal.signal(signal.SIGTERM, _sigterm)
    if not getattr(sys.unraisablehook, "_molgiae_quiet", False):
        sys.unraisablehook = _quiet_about_interruptions(sys.unraisablehook)


def _quiet_about_interruptions(previous):
    """An unraisable hook that drops our interruption exceptions and passes every other one on.

    A signal that arrives while Python runs a callback whose exceptions it cannot raise (a weakref
    callback such as importlib's module-lock clean-up, a ``__del__``) has its exception printed as
    "Exception ignored in ..." with a traceback, and swallowed. Ours are recorded by the handler
    and raised again by :func:`raise_if_interrupted` where the run stops cleanly, so the traceback
    would only alarm the user."""
    def hook(unraisable):
        if not isinstance(unraisable.exc_value, (Interrupted, Terminated)):
            previous(unraisable)

    hook._molgiae_quiet = True
    return hook


def raise_if_interrupted() -> None:
    """Raise the interruption again if a signal arrived but its exception was swallowed by code
    that caught it (our handler recorded it). Not covered: RDKit's C++ sections (ETKDG,
    substructure search) install their own SIGINT handler, so ours never runs there."""
    if _received:
        raise Terminated("SIGTERM") if _received[0] == "SIGTERM" else Interrupted


def interrupted_by() -> str | None:
    """"Ctrl-C" or "SIGTERM" once one arrived (after :func:`handle_interrupts`), else None."""
    return _received[0] if _received else None
