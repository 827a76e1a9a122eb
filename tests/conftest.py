"""Shared fixtures: a tiny untrained checkpoint (built once per session) and the QM9 fixture path."""
from __future__ import annotations

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def pytest_configure(config):
    """One torch thread: the test tensors are small, and a second thread that competes with
    another busy process spin-waits (measured: 10x slower on a shared 2-core machine)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def qm9_fixture_npz() -> Path:
    """131 real QM9 molecules in the molgiae-qm9-npz-1 schema."""
    return FIXTURES / "qm9_fixture.npz"


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A small, untrained (seeded) molgiae checkpoint: QM9 vocabulary, max_atoms 29, D = 16."""
    from tests.equivariance import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("checkpoint") / "tiny.pt", seed=0, name="test-model")


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint):
    """The tiny checkpoint loaded on the CPU (a MolgiaeModel)."""
    from molgiae.api import load_model

    return load_model(tiny_checkpoint, device="cpu")
