"""The version lives in ``molgiae/_version.py`` (no imports), and pyproject.toml reads it there."""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import molgiae
from molgiae import _version

ROOT = Path(__file__).resolve().parents[1]


def test_version_module_imports_nothing_and_is_the_package_version():
    tree = ast.parse(Path(_version.__file__).read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert molgiae.__version__ == _version.__version__
    assert _version.__version__.count(".") >= 2


def test_pyproject_takes_the_version_from_the_version_module():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "molgiae._version.__version__"}


def test_setuptools_resolves_the_same_version():
    from setuptools.config.pyprojecttoml import read_configuration

    config = read_configuration(ROOT / "pyproject.toml", expand=True)
    assert config["project"]["version"] == _version.__version__
