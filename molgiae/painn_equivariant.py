"""PaiNN-style SE(3)- and permutation-equivariant layers, the encoder and the decoders.

Dense, padded layout throughout (molecules are small and nearly fully connected within the
cutoff, so per-molecule pair tensors beat edge lists on CPU and GPU alike):

- ``s``: invariant features [B, N, F]
- ``v``: equivariant features [B, N, 3, F] (the Cartesian axis before the channel axis)
- ``mask``: real atoms [B, N] (bool)
- pair tensors [B, N, N, ...] indexed (receiver i, sender j)

The cross-product term ``Σ_j e_ij ⊙ (v_j × r̂_ij)`` makes the layers SE(3)- but not
O(3)-equivariant: mirror images get different invariant codes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from molgiae.config import ModelConfig


# ----------------------------------------------------------------------------- pure functions
def safe_norm(x: Tensor, dim: int = -1, keepdim: bool = False, eps: float = 1e-8) -> Tensor:
    """Euclidean norm with a finite gradient at 0."""
    return torch.sqrt((x * x).sum(dim=dim, keepdim=keepdim) + eps)


def gaussian_rbf(d: Tensor, num: int, cutoff: float) -> Tensor:
    """Gaussian radial basis on [0, cutoff]. d: [...] → [..., num]."""
    centers = torch.linspace(0.0, cutoff, num, device=d.device, dtype=d.dtype)
    width = cutoff / (num - 1)
    return torch.exp(-0.5 * ((d.unsqueeze(-1) - centers) / width) ** 2)


def cosine_cutoff(d: Tensor, cutoff: float) -> Tensor:
    """Smooth cutoff ``0.5 (cos(π d / r_c) + 1)`` for d < r_c, else 0. [...] → [...]."""
    return 0.5 * (torch.cos(math.pi * d / cutoff) + 1.0) * (d < cutoff).to(d.dtype)


@dataclass
class PairGeometry:
    """All pairs of a padded batch, indexed (receiver i, sender j).

    pos [B, N, 3] the atom (or slot) positions; rbf [B, N, N, R] radial features of d_ij;
    weight [B, N, N] cosine cutoff on real pairs i ≠ j (0 elsewhere); weight_over_d [B, N, N]
    the same divided by d_ij, so that ``weight · r̂_ij = weight_over_d · (x_j − x_i)``.
    """

    pos: Tensor
    rbf: Tensor
    weight: Tensor
    weight_over_d: Tensor
    _filter_inputs: tuple[Tensor, Tensor] | None = None

    @property
    def filter_inputs(self) -> tuple[Tensor, Tensor]:
        """``[rbf · w, w]`` and ``[rbf · w/d, w/d]`` [B, N, N, R + 1], computed once per batch
        and shared by every block: a linear filter of them is ``(W rbf + b) · w`` (resp. w/d),
        the cutoff weight folded into the filter's matmul (no [B, N, N, F] product per gate)."""
        if self._filter_inputs is None:
            w, wd = self.weight.unsqueeze(-1), self.weight_over_d.unsqueeze(-1)
            self._filter_inputs = (torch.cat([self.rbf * w, w], -1), torch.cat([self.rbf * wd, wd], -1))
        return self._filter_inputs

    @property
    def pos_and_one(self) -> Tensor:
        """[B, 4, N]: the coordinates transposed, with a row of ones."""
        return torch.cat([self.pos.transpose(1, 2), self.pos.new_ones(self.pos.shape[0], 1, self.pos.shape[1])], 1)


def pair_geometry(pos: Tensor, mask: Tensor, cutoff: float, num_rbf: int) -> PairGeometry:
    """Radial features and edge weights of all pairs within ``cutoff``. pos [B, N, 3], mask [B, N]."""
    r = pos.unsqueeze(1) - pos.unsqueeze(2)  # r[b, i, j] = x_j - x_i
    d = safe_norm(r, dim=-1, eps=1e-12)
    n = pos.shape[1]
    pair_mask = mask.unsqueeze(1) & mask.unsqueeze(2)
    pair_mask = pair_mask & ~torch.eye(n, dtype=torch.bool, device=pos.device)
    weight = cosine_cutoff(d, cutoff) * pair_mask.to(pos.dtype)
    return PairGeometry(pos, gaussian_rbf(d, num_rbf, cutoff), weight, weight / d.clamp_min(1e-6))


def sum_over_senders(gate: Tensor, x: Tensor) -> Tensor:
    """``Σ_j gate[b, i, j, f] · x[b, j, k, f]``. gate [B, N, N, F], x [B, N, K, F] → [B, N, K, F].

    K ≤ 3: broadcast-and-sum (fastest on CPU). K > 3: a matmul over (b, f), as fast there and
    without the [B, N, N, K, F] temporary (lower peak memory).
    """
    if x.shape[2] <= 3:
        return (gate.unsqueeze(3) * x.unsqueeze(1)).sum(2)
    return torch.matmul(gate.permute(0, 3, 1, 2), x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """``a × b`` along dim 2 in the wider of the two dtypes. Under bf16 autocast a matmul result
    is bf16 while positions stay fp32, and ``torch.linalg.cross`` (unlike ``torch.cross``) is on
    no autocast list and refuses mixed dtypes."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    return torch.linalg.cross(a.to(dtype), b.to(dtype), dim=2)


def sinusoidal_encoding(positions: Tensor, dim: int, max_period: float = 64.0) -> Tensor:
    """Sinusoidal encoding of integer positions. [...] → [..., dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=positions.device) / half)
    angles = positions.to(torch.float32).unsqueeze(-1) * freqs * (2 * math.pi / 4)
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)


def mlp(n_in: int, n_hidden: int, n_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_hidden), nn.SiLU(), nn.Linear(n_hidden, n_out))


# ----------------------------------------------------------------------------- layers
class PainnMessage(nn.Module):
    """PaiNN message block with an optional cross-product term.

    ``Δs_i = Σ_j a_ij``, ``Δv_i = Σ_j b_ij ⊙ v_j + c_ij ⊙ r̂_ij (+ e_ij ⊙ (v_j × r̂_ij))``
    with ``[a, b, c, e] = φ(s_j) ⊙ W(rbf(d_ij)) · f_cut(d_ij)``.

    Computed without pair vectors: with ``c'_ij = c_ij / d_ij`` (likewise e'),
    ``Σ_j c_ij r̂_ij = Σ_j c'_ij x_j − x_i Σ_j c'_ij`` and
    ``Σ_j e_ij (v_j × r̂_ij) = Σ_j e'_ij (v_j × x_j) − (Σ_j e'_ij v_j) × x_i``: sums over senders
    of per-atom quantities (K = 3 + 6 per channel instead of the 9 of an outer product), the same
    function to float rounding.
    """

    def __init__(self, features: int, num_rbf: int, cross_product: bool = True):
        super().__init__()
        self.features = features
        self.cross_product = cross_product
        gates = 4 if cross_product else 3
        self.phi = mlp(features, features, gates * features)
        self.filter = nn.Linear(num_rbf, gates * features)

    def forward(self, s: Tensor, v: Tensor, pairs: PairGeometry, v_is_zero: bool = False) -> tuple[Tensor, Tensor]:
        """s [B,N,F], v [B,N,3,F] → (Δs [B,N,F], Δv [B,N,3,F]).

        ``v_is_zero`` (first block): the terms in v vanish exactly and are skipped.
        """
        F = self.features
        phi = self.phi(s).unsqueeze(1)  # [B, 1, j, G·F]: φ(s_j)
        # (W rbf + b) · f_cut (gates a, b) and · f_cut / d (c', e') as one matmul each of the
        # cutoff-weighted radial features; the first block needs only a and c'
        weight = torch.cat([self.filter.weight, self.filter.bias.unsqueeze(1)], 1)  # [G·F, R + 1]
        rbf_w, rbf_wd = pairs.filter_inputs
        n_w = F if v_is_zero else 2 * F  # a (, b)
        c_rows = slice(2 * F, 3 * F) if v_is_zero or not self.cross_product else slice(2 * F, 4 * F)  # c' (, e')
        x_w = phi[..., :n_w] * nn.functional.linear(rbf_w, weight[:n_w])  # [B, i, j, F or 2F]
        x_wd = phi[..., c_rows] * nn.functional.linear(rbf_wd, weight[c_rows])
        pos = pairs.pos.unsqueeze(-1)  # [B, N, 3, 1]
        ds = x_w[..., :F].sum(2)
        # Σ_j c'_ij x_j and Σ_j c'_ij in one matmul ([x_j; 1] has no channel axis): [B, i, 4, F]
        sums = torch.matmul(pairs.pos_and_one.unsqueeze(1), x_wd[..., :F])
        dv = sums[:, :, :3] - pos * sums[:, :, 3:]
        if v_is_zero:
            return ds, dv
        dv = dv + sum_over_senders(x_w[..., F:], v)
        if self.cross_product:
            pos_f = pos.expand_as(v)
            v_cross_x = _cross(v, pos_f)
            sums = sum_over_senders(x_wd[..., F:], torch.cat([v_cross_x, v], dim=2))
            dv = dv + sums[:, :, :3] - _cross(sums[:, :, 3:], pos_f)
        return ds, dv


def bounded_inner(u: Tensor, v: Tensor, dim: int = 2) -> Tensor:
    """``⟨u, v⟩ / (1 + |u| |v|)`` along ``dim``: in (−1, 1), smooth, rotation-invariant.

    PaiNN's plain ``⟨u, v⟩`` grows quadratically with the vector features; in a trained model it
    reached a std of 40–160 with derivatives of ~1e4 before the norm layer divided it back,
    which made z steep in the coordinates. u, v [..., 3, ...] → [...] (``dim`` removed).
    """
    inner = (u * v).sum(dim)
    return inner / (1.0 + safe_norm(u, dim=dim) * safe_norm(v, dim=dim))


class PainnUpdate(nn.Module):
    """PaiNN update block: ``Δs = a_ss + a_sv ⟨Uv, Vv⟩``, ``Δv = a_vv ⊙ Uv``.

    ``bounded=True`` replaces ``⟨Uv, Vv⟩`` by :func:`bounded_inner`.
    """

    def __init__(self, features: int, bounded: bool = False):
        super().__init__()
        self.features = features
        self.bounded = bounded
        self.U = nn.Linear(features, features, bias=False)
        self.V = nn.Linear(features, features, bias=False)
        self.gates = mlp(2 * features, features, 3 * features)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """s [B,N,F], v [B,N,3,F] → (Δs, Δv) of the same shapes."""
        uv, vv = self.U(v), self.V(v)
        a_vv, a_sv, a_ss = torch.split(self.gates(torch.cat([s, safe_norm(vv, dim=2)], -1)), self.features, -1)
        ds = a_ss + a_sv * (bounded_inner(uv, vv) if self.bounded else (uv * vv).sum(2))
        dv = a_vv.unsqueeze(2) * uv
        return ds, dv


class EquivariantNorm(nn.Module):
    """LayerNorm on scalars; vectors divided by ``sqrt(1 + mean_f |v_f|²)`` (bounded, no noise blow-up)."""

    def __init__(self, features: int):
        super().__init__()
        self.scalar_norm = nn.LayerNorm(features)

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        scale = torch.sqrt(1.0 + (v * v).sum(2).mean(-1, keepdim=True)).unsqueeze(2)
        return self.scalar_norm(s), v / scale


class PainnBlock(nn.Module):
    """Message, update (both residual), then norm; padded atoms kept at zero."""

    def __init__(self, features: int, num_rbf: int, cross_product: bool, bounded_update: bool = False):
        super().__init__()
        self.message = PainnMessage(features, num_rbf, cross_product)
        self.update = PainnUpdate(features, bounded_update)
        self.norm = EquivariantNorm(features)

    def forward(self, s, v, pairs: PairGeometry, mask, v_is_zero: bool = False):
        m = mask.to(s.dtype)
        ds, dv = self.message(s, v, pairs, v_is_zero)
        s, v = s + ds, v + dv
        ds, dv = self.update(s, v)
        s, v = self.norm(s + ds, v + dv)
        return s * m.unsqueeze(-1), v * m[:, :, None, None]


# ----------------------------------------------------------------------------- encoder
#: The extensive half of a "mean_sum" code is the sum over atoms divided by this (QM9 molecules
#: have 9–29 atoms: the two halves are then of similar scale).
SUM_POOL_SCALE = 10.0


def pool_code(per_atom: Tensor, m: Tensor, pooling: str) -> Tensor:
    """Per-atom code features [B, N, D] and atom weights m [B, N] (1 real, 0 padding) → z [B, D].

    "mean": the mean over atoms (intensive). "mean_sum": the first D/2 channels averaged, the last
    D/2 summed / :data:`SUM_POOL_SCALE` (extensive: grows with the molecule, as counts and
    energies do). Both are invariant to rotation, translation and atom order.
    """
    total = (per_atom * m.unsqueeze(-1)).sum(1)
    count = m.sum(1, keepdim=True).clamp_min(1.0)
    if pooling == "mean":
        return total / count
    half = per_atom.shape[-1] // 2
    return torch.cat([total[:, :half] / count, total[:, half:] / SUM_POOL_SCALE], -1)

@dataclass
class EncoderOutput:
    """z [B, D] invariant code; frame_vectors [B, 2, 3] (v1, v2, equivariant);
    scores [B, N] per-atom permutation scores (invariant, permutation-equivariant);
    atom_noise [B, N, 3] the predicted input noise per atom (equivariant; None without a noise head)."""

    z: Tensor
    frame_vectors: Tensor
    scores: Tensor
    atom_noise: Tensor | None = None


class PainnEncoder(nn.Module):
    """Atoms (element index, centred xyz) → invariant code, two frame vectors, atom scores.

    The score is ``σ_i = band_gap · element_index_i + |x_i - centroid| + ε · MLP(s_i)``: element
    bands first (slot types are then fixed by the composition), distance from the centroid
    within a band (an order that is consistent across similar molecules from the first step),
    and a small learned correction.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        F = config.features
        self.config = config
        self.embedding = nn.Embedding(len(config.elements), F)
        bounded = config.update_product == "bounded"
        self.blocks = nn.ModuleList(
            PainnBlock(F, config.num_rbf, config.cross_product, bounded) for _ in range(config.encoder_layers)
        )
        self.code_head = mlp(F, F, config.embedding_dim)
        self.frame_vector_mix = nn.Linear(F, 2, bias=False)
        self.frame_position_weight = nn.Linear(F, 2)
        self.score_head = mlp(F, F, 1)
        if config.noise_head:  # gated equivariant readout: Σ_f (W v)_f · g_f(s)
            self.noise_vectors = nn.Linear(F, F, bias=False)
            self.noise_gates = mlp(F, F, F)

    def atom_features(self, species: Tensor, centred: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """Per-atom features after the PaiNN blocks: s [B, N, F] (invariant), v [B, N, 3, F]."""
        c = self.config
        pairs = pair_geometry(centred, mask, c.cutoff, c.num_rbf)
        s = self.embedding(species) * mask.to(centred.dtype).unsqueeze(-1)
        v = centred.new_zeros(*s.shape[:2], 3, s.shape[-1])
        for k, block in enumerate(self.blocks):
            s, v = block(s, v, pairs, mask, v_is_zero=k == 0)
        return s, v

    def forward(self, species: Tensor, centred: Tensor, mask: Tensor) -> EncoderOutput:
        """species [B, N] (vocabulary index), centred [B, N, 3] (centroid at 0), mask [B, N]."""
        c = self.config
        m = mask.to(centred.dtype)
        s, v = self.atom_features(species, centred, mask)
        count = m.sum(1, keepdim=True).clamp_min(1.0)
        z = pool_code(self.code_head(s), m, c.code_pooling)
        # Two equivariant vectors: mixed vector channels plus invariant-weighted positions.
        per_atom = self.frame_vector_mix(v) + centred.unsqueeze(-1) * self.frame_position_weight(s).unsqueeze(2)
        frame_vectors = ((per_atom * m[:, :, None, None]).sum(1) / count.unsqueeze(-1)).transpose(1, 2)
        radius = safe_norm(centred, dim=-1, eps=1e-12)
        scores = c.band_gap * species.to(centred.dtype) + radius
        scores = scores + c.score_learned_scale * self.score_head(s).squeeze(-1)
        noise = None
        if c.noise_head:
            noise = (self.noise_vectors(v) * self.noise_gates(s).unsqueeze(2)).sum(-1)
        return EncoderOutput(z=z, frame_vectors=frame_vectors, scores=scores, atom_noise=noise)


# ----------------------------------------------------------------------------- decoders
@dataclass
class DecoderOutput:
    """coords [B, N, 3] canonical conformer (slot order, centred); logits [B, N, V] element logits."""

    coords: Tensor
    logits: Tensor


def masked_centre(x: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(x.dtype).unsqueeze(-1)
    return (x - (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp_min(1.0)) * m


class SlotDecoder(nn.Module):
    """Shared part of both decoders: slot features ``h_k = MLP([z, PE(k), PE(n)])`` and the
    learnable start positions ``q_k`` (a mean-shape prior), then a design-specific ``refine``."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        F = config.features
        self.config = config
        self.pe_dim = 32
        self.slot_mlp = mlp(config.embedding_dim + 2 * self.pe_dim, 2 * F, F)
        self.start_positions = nn.Parameter(torch.randn(config.max_atoms, 3))
        self.type_head = mlp(F, F, len(config.elements))

    def slots(self, z: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """z [B, D], mask [B, N] (N ≤ max_atoms) → (h [B, N, F], q [B, N, 3])."""
        B, N = mask.shape
        k = torch.arange(N, device=z.device).expand(B, N)
        n = mask.sum(1, keepdim=True).expand(B, N)
        pe = torch.cat([sinusoidal_encoding(k, self.pe_dim), sinusoidal_encoding(n, self.pe_dim)], -1)
        h = self.slot_mlp(torch.cat([z.unsqueeze(1).expand(B, N, -1), pe.to(z.dtype)], -1))
        q = self.start_positions[:N].to(z.dtype).expand(B, N, 3)
        m = mask.to(z.dtype).unsqueeze(-1)
        return h * m, masked_centre(q, mask)

    def refine(self, h: Tensor, q: Tensor, mask: Tensor) -> DecoderOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, z: Tensor, mask: Tensor) -> DecoderOutput:
        h, q = self.slots(z, mask)
        return self.refine(h, q, mask)


class EquivariantDecoder(SlotDecoder):
    """The paper's decoder: start positions refined by PaiNN blocks on the complete slot graph.

    ``refine`` is SE(3)- and slot-permutation-equivariant: permuting ``h`` and rotating ``q``
    permutes and rotates the output (tested).
    """

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        F = config.features
        self.blocks = nn.ModuleList(
            PainnBlock(F, config.num_rbf, config.cross_product) for _ in range(config.decoder_layers)
        )
        self.displacement = nn.Linear(F, 1, bias=False)

    def refine(self, h: Tensor, q: Tensor, mask: Tensor) -> DecoderOutput:
        """h [B, N, F], q [B, N, 3] → canonical coordinates and element logits."""
        c = self.config
        pairs = pair_geometry(q, mask, c.decoder_cutoff, c.num_rbf)
        s, v = h, h.new_zeros(*h.shape[:2], 3, h.shape[-1])
        for k, block in enumerate(self.blocks):
            s, v = block(s, v, pairs, mask, v_is_zero=k == 0)
        coords = masked_centre(q + self.displacement(v).squeeze(-1), mask)
        return DecoderOutput(coords=coords, logits=self.type_head(s))


class TransformerDecoder(SlotDecoder):
    """A transformer over slot tokens emitting ``q_k + Δ_k`` directly (not equivariant; it only
    has to produce the canonical pose)."""

    def __init__(self, config: ModelConfig):
        super().__init__(config)
        F = config.features
        self.position_in = nn.Linear(3, F)
        layer = nn.TransformerEncoderLayer(
            F, config.transformer_heads, dim_feedforward=2 * F, dropout=0.0, batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, config.decoder_layers, enable_nested_tensor=False)
        self.coord_head = mlp(F, F, 3)

    def refine(self, h: Tensor, q: Tensor, mask: Tensor) -> DecoderOutput:
        x = self.transformer(h + self.position_in(q), src_key_padding_mask=~mask)
        coords = masked_centre(q + self.coord_head(x), mask)
        return DecoderOutput(coords=coords, logits=self.type_head(x))


def build_decoder(config: ModelConfig) -> SlotDecoder:
    return {"equivariant": EquivariantDecoder, "transformer": TransformerDecoder}[config.decoder](config)
