"""molgiae: invariant embeddings of 3-D molecular conformers with a group-invariant autoencoder."""
from molgiae._version import __version__
from molgiae.runtime import tune_allocator  # (ctypes only: keeps `import molgiae` light)


def load_model(path=None, device="cpu"):
    """Load a trained model (the bundled default when ``path`` is None). See :mod:`molgiae.api`."""
    from molgiae.api import load_model as _load

    return _load(path, device=device)


__all__ = ["__version__", "load_model", "tune_allocator"]
