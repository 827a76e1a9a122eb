"""Plug-in for the shared side-by-side harness (``../shared/bench/peer_painn.py``): molgiae's
``PainnEncoder`` at schnetpack's PaiNN configuration (128 features, 3 blocks, 20 Gaussians, 5 Å,
atom-wise sum head), on this checkout's code, so the comparison follows the code as it changes.

    cd ../shared/bench && PYTHONPATH=/path/to/molgiae python peer_painn.py --impl bench.peer_plugin:build ...

(or put this directory on PYTHONPATH and use ``peer_plugin:build``).

Contract (see the harness header): ``build(hidden, layers, cutoff, n_rbf) -> module``,
``module(Z, R, batch, edge_index) -> [M]`` per-molecule prediction. The dense layout is built
from (Z, R, batch) inside the step (its time counts; molgiae pays it too); ``edge_index`` is not
used (the dense layout covers every pair, the cosine cutoff zeroes those beyond 5 Å).

``build``: the harness's random batch is split by :func:`molgiae.data.batching.size_groups` into
≤ 4 sub-batches of similar size, each run as one dense batch (a random batch of 32 QM9 molecules
then pads ~10 % above its real pairs instead of ~73 %); per-molecule outputs are those of one
padded batch (tested: ``tests/test_batching.py``). ``build_single``: one padded batch, as
``../shared/bench/molgiae_plugin.py`` (the "before"). ``build_o3``: no cross-product term. ``build_compiled``, ``build_bf16``, ``build_compiled_bf16``: the
`molgiae train` switches `--compile` and `--cpu-bf16` (give the harness `--warmup 4` or more).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from molgiae.config import ModelConfig
from molgiae.data.batching import size_groups
from molgiae.painn_equivariant import PainnEncoder, mlp

VOCAB = {1: 0, 6: 1, 7: 2, 8: 3, 9: 4}


def dense_molecules(species, R, counts):
    """Atoms of consecutive molecules (``counts`` atoms each) → species [B, N], centred pos
    [B, N, 3], mask [B, N]."""
    B, N = len(counts), int(counts.max())
    mask = torch.arange(N).unsqueeze(0) < counts.unsqueeze(1)
    spec = species.new_zeros(B, N)
    pos = R.new_zeros(B, N, 3)
    spec[mask] = species
    pos = pos.masked_scatter(mask.unsqueeze(-1), R)
    m = mask.to(pos.dtype).unsqueeze(-1)
    centred = (pos - (pos * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)) * m
    return spec, centred, mask


class MolgiaeEncoderRegressor(nn.Module):
    def __init__(self, hidden, layers, cutoff, n_rbf, cross_product=True, max_groups=4,
                 compiled=False, bf16=False):
        super().__init__()
        cfg = ModelConfig(features=hidden, encoder_layers=layers, cutoff=cutoff, num_rbf=n_rbf,
                          cross_product=cross_product)
        self.encoder = PainnEncoder(cfg)
        self.head = mlp(hidden, hidden // 2, 1)
        self.max_groups = max_groups
        lut = torch.full((10,), -1, dtype=torch.long)
        for z, i in VOCAB.items():
            lut[z] = i
        self.register_buffer("lut", lut)
        # what `molgiae train --compile` / `--cpu-bf16` do: the encoder compiled with dynamic
        # shapes (one graph for every size group), bf16 autocast around the forward
        self.atom_features = self.encoder.atom_features
        if compiled:
            self.atom_features = torch.compile(self.encoder.atom_features, dynamic=True)
        self.bf16 = bf16

    def per_molecule(self, species, R, counts):
        spec, centred, mask = dense_molecules(species, R, counts)
        s, _ = self.atom_features(spec, centred, mask)
        return (self.head(s).squeeze(-1) * mask).sum(1)

    def forward(self, Z, R, batch, edge_index=None):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self.grouped(Z, R, batch).float()

    def grouped(self, Z, R, batch):
        species = self.lut[Z]
        counts = torch.bincount(batch)
        if self.max_groups <= 1:
            return self.per_molecule(species, R, counts)
        ptr = np.concatenate([[0], np.cumsum(counts.numpy())])
        outs, order = [], []
        for g in size_groups(counts.numpy(), self.max_groups):
            g = np.sort(g)
            atoms = torch.from_numpy(np.concatenate([np.arange(ptr[k], ptr[k + 1]) for k in g]))
            outs.append(self.per_molecule(species[atoms], R[atoms], counts[torch.from_numpy(g)]))
            order.append(g)
        inverse = torch.from_numpy(np.argsort(np.concatenate(order)))
        return torch.cat(outs)[inverse]


def build(hidden=128, layers=3, cutoff=5.0, n_rbf=20, **kw):
    return MolgiaeEncoderRegressor(hidden, layers, cutoff, n_rbf)


def build_single(hidden=128, layers=3, cutoff=5.0, n_rbf=20, **kw):
    """One padded batch (no size groups)."""
    return MolgiaeEncoderRegressor(hidden, layers, cutoff, n_rbf, max_groups=1)


def build_o3(hidden=128, layers=3, cutoff=5.0, n_rbf=20, **kw):
    """Without the cross-product term: the same function class as schnetpack's PaiNN."""
    return MolgiaeEncoderRegressor(hidden, layers, cutoff, n_rbf, cross_product=False)


def build_compiled(hidden=128, layers=3, cutoff=5.0, n_rbf=20, **kw):
    """``build`` with the encoder under ``torch.compile`` (as ``molgiae train --compile``); give
    the harness ``--warmup 4`` or more so the compilations (train, then no-grad) fall in warm-up."""
    return MolgiaeEncoderRegressor(hidden, layers, cutoff, n_rbf, compiled=True)


def build_bf16(hidden=128, layers=3, cutoff=5.0, n_rbf=20, **kw):
    """``build`` under CPU bf16 autocast (as ``molgiae train --cpu-bf16``); not float32, so not
    the same precision as the schnetpack reference."""
    return MolgiaeEncoderRegressor(hidden, layers, cutoff, n_rbf, bf16=True)


def build_compiled_bf16(hidden=128, layers=3, cutoff=5.0, n_rbf=20, **kw):
    """Both switches (``molgiae train --compile --cpu-bf16``)."""
    return MolgiaeEncoderRegressor(hidden, layers, cutoff, n_rbf, compiled=True, bf16=True)
