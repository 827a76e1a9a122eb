"""The shared data folder that a few tests read (QM9 atom references, the out-of-distribution
SDF, the synthetic conformer ensembles; the layouts are in docs/data.md): ``$MOLGIAE_SHARED_DATA``,
else ``shared/data`` beside the repository (``../shared/data``, where CI puts a copy).

:func:`shared_file` skips the calling test when the file is absent, except under CI (the ``CI``
environment variable set), where the data is expected and an absent file fails the test.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("MOLGIAE_SHARED_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def shared_file(relative: str) -> Path:
    """``SHARED_DATA / relative``; skip (fail under CI) when it is not there."""
    path = SHARED_DATA / relative
    if not path.is_file():
        message = f"{path} is absent (point MOLGIAE_SHARED_DATA at the shared data folder)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI expects it", pytrace=False)
        pytest.skip(message)
    return path
