"""The package version, in a module that imports nothing (read by pyproject.toml and by the
modules that stamp files with it)."""
__version__ = "0.1.0"
