"""Test helpers: random group elements (rotations from molgiae.group.random_rotation) and
molecules from the fixture."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from molgiae.data.conformers import load_qm9_npz
from molgiae.group import random_rotation
from molgiae.model import DenseMolecules, GroupInvariantAutoencoder

FIXTURES = Path(__file__).parent / "fixtures"
QM9_FIXTURE = FIXTURES / "qm9_fixture.npz"


def fixture_set():
    return load_qm9_npz([QM9_FIXTURE])


def molecule(data, i: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(atomic numbers [n], coordinates [n, 3]) of fixture molecule i."""
    a, b = data.ptr[i], data.ptr[i + 1]
    return torch.from_numpy(data.elements[a:b].astype(np.int64)), torch.from_numpy(data.coords[a:b]).to(dtype)


def find(data, smiles: str) -> int:
    return int(np.flatnonzero(data.smiles == smiles)[0])


def random_action(n: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random (R, t, π): Haar rotation, Gaussian translation (5 Å), uniform permutation (global RNG)."""
    return random_rotation(dtype=dtype), 5.0 * torch.randn(3, dtype=dtype), torch.randperm(n)


def act(R, t, perm, x: torch.Tensor) -> torch.Tensor:
    """g·X = P_π X Rᵀ + 1tᵀ."""
    return (x @ R.T + t)[perm]


def dense(model: GroupInvariantAutoencoder, mols: list[tuple[torch.Tensor, torch.Tensor]]) -> DenseMolecules:
    """Pad a list of (Z, X) into a DenseMolecules batch (keeping X's dtype and autograd graph;
    ``model`` checks the elements are in its vocabulary)."""
    N = max(len(z) for z, _ in mols)
    B = len(mols)
    dtype = mols[0][1].dtype
    numbers = torch.zeros(B, N, dtype=torch.long)
    pos = torch.zeros(B, N, 3, dtype=dtype)
    mask = torch.zeros(B, N, dtype=torch.bool)
    for b, (z, x) in enumerate(mols):
        model.species(z)
        numbers[b, : len(z)] = z
        pos[b, : len(z)] = x
        mask[b, : len(z)] = True
    return DenseMolecules(numbers, pos, mask)


def write_tiny_checkpoint(path: Path, seed: int = 0, name: str = "test-model", **train) -> Path:
    """An untrained, seeded autoencoder checkpoint (F = 16, D = 16, one block each side);
    ``train`` overrides TrainConfig fields (e.g. the split fractions)."""
    from molgiae.config import Config, ModelConfig, TrainConfig
    from molgiae.checkpoint import CHECKPOINT_FORMAT

    torch.manual_seed(seed)
    cfg = Config(model=ModelConfig(features=16, embedding_dim=16, encoder_layers=1, decoder_layers=1),
                 train=TrainConfig(**train))
    model = GroupInvariantAutoencoder(cfg.model)
    torch.save({"format": CHECKPOINT_FORMAT, "config": cfg.to_dict(), "model": model.state_dict(),
                "metadata": {"name": name}}, path)
    return path
