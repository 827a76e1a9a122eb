"""The group-invariant autoencoder: encode → (z, R, t, P), decode z → canonical conformer,
apply the action to reconstruct in the input's pose and order, and the training loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from molgiae import group
from molgiae.batch import DenseMolecules  # noqa: F401 - the models' input type, re-exported
from molgiae.config import ModelConfig
from molgiae.painn_equivariant import DecoderOutput, PainnEncoder, build_decoder


@dataclass
class Encoding:
    """z [B, D]; rotation [B, 3, 3] (det +1); translation [B, 3]; scores [B, N]; species [B, N]
    the input atoms' vocabulary indices (0 on padding; the element targets of the loss)."""

    z: Tensor
    rotation: Tensor
    translation: Tensor
    scores: Tensor
    species: Tensor
    atom_noise: Tensor | None = None  # [B, N, 3] predicted input noise (models with a noise head)


@dataclass
class Reconstruction:
    """Everything one forward pass produces.

    canonical: decoder output in slot order (coords [B, N, 3], logits [B, N, V]);
    coords [B, N, 3] and logits [B, N, V]: reconstruction in the input's pose and atom order;
    permutation [B, N, N] (slot, atom) used; soft_permutation its soft-sort relaxation (or None).
    """

    encoding: Encoding
    canonical: DecoderOutput
    coords: Tensor
    logits: Tensor
    permutation: Tensor
    soft_permutation: Tensor | None


class ElementVocabulary(nn.Module):
    """Atomic numbers → the model's element vocabulary indices.

    Shared by every model that reads atoms (autoencoder, property model); holds no weights.
    """

    def __init__(self, elements: tuple[int, ...]):
        super().__init__()
        self.elements = tuple(elements)
        lookup = torch.full((119,), -1, dtype=torch.long)
        for i, z in enumerate(self.elements):
            lookup[z] = i
        self.register_buffer("lookup", lookup, persistent=False)

    def species(self, atomic_numbers: Tensor, mask: Tensor | None = None) -> Tensor:
        """Atomic numbers [...] → vocabulary indices [...] (0 where ``mask`` is False: padding);
        raises ValueError for elements outside the vocabulary."""
        idx = self.lookup[atomic_numbers.clamp(0, 118)]
        bad = (idx < 0) | (atomic_numbers > 118)
        if mask is not None:
            bad = bad & mask
        if bad.any():
            found = sorted(set(atomic_numbers[bad].tolist()))
            raise ValueError(f"elements {found} are not in the model's vocabulary {list(self.elements)}")
        return idx if mask is None else idx.masked_fill(~mask, 0)


class GroupInvariantAutoencoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.vocabulary = ElementVocabulary(config.elements)
        self.encoder = PainnEncoder(config)
        self.decoder = build_decoder(config)

    # ------------------------------------------------------------------ inputs
    def species(self, atomic_numbers: Tensor, mask: Tensor | None = None) -> Tensor:
        """Atomic numbers → vocabulary indices (0 on padding); see :class:`ElementVocabulary`."""
        return self.vocabulary.species(atomic_numbers, mask)

    # ------------------------------------------------------------------ encode / decode
    def encode(self, mols: DenseMolecules) -> Encoding:
        t = group.masked_centroid(mols.pos, mols.mask)
        centred = (mols.pos - t.unsqueeze(1)) * mols.mask.unsqueeze(-1)
        species = self.species(mols.numbers, mols.mask)
        out = self.encoder(species, centred, mols.mask)
        with torch.autocast(mols.pos.device.type, enabled=False):  # the group action in full precision
            frame = out.frame_vectors.to(mols.pos.dtype)
            R = group.gram_schmidt(frame[:, 0], frame[:, 1])
        return Encoding(z=out.z, rotation=R, translation=t, scores=out.scores.to(mols.pos.dtype),
                        species=species, atom_noise=out.atom_noise)

    def decode(self, z: Tensor, mask: Tensor) -> DecoderOutput:
        """z [B, D], mask [B, N] of the slots to fill (first n per row) → canonical conformer."""
        n_max = mask.shape[1]
        if n_max > self.config.max_atoms:
            raise ValueError(
                f"cannot reconstruct a molecule of {n_max} atoms: this model decodes at most "
                f"{self.config.max_atoms} (embedding still works)"
            )
        return self.decoder(z, mask)

    def forward(self, mols: DenseMolecules, permutation: str = "hard", tau: float = 0.3) -> Reconstruction:
        """Encode, decode and reconstruct.

        permutation: "hard" (exact argsort; inference), "straight_through" (hard forward,
        soft-sort gradient; training) or "soft" (soft-sort forward).
        """
        enc = self.encode(mols)
        canonical = self.decode(enc.z, mols.mask)
        soft = None
        if permutation == "hard":
            P = group.hard_permutation(enc.scores, mols.mask)
        elif permutation == "straight_through":
            P, soft = group.straight_through_permutation(enc.scores, mols.mask, tau)
        elif permutation == "soft":
            P = soft = group.soft_permutation(enc.scores, mols.mask, tau)
        else:
            raise ValueError(f"unknown permutation mode {permutation!r}")
        with torch.autocast(mols.pos.device.type, enabled=False):  # bf16 autocast: act in full precision
            dtype = mols.pos.dtype
            coords = group.apply_action(canonical.coords.to(dtype), P.to(dtype), enc.rotation, enc.translation)
            logits = torch.einsum("bki,bkv->biv", P.to(dtype), canonical.logits.to(dtype))
        return Reconstruction(enc, canonical, coords, logits, P, soft)

    @torch.no_grad()
    def embed(self, mols: DenseMolecules) -> Tensor:
        """Invariant codes z [B, D]."""
        return self.encode(mols).z


def reconstruction_loss(
    out: Reconstruction, mols: DenseMolecules, lambda_type: float = 1.0, lambda_perm: float = 0.025
) -> dict[str, Tensor]:
    """``mean_i |X̂_i - X_i|² + λ_type CE(types) + λ_perm H(P̂)``, averaged per real atom.

    Returns the total ``loss`` and its parts ``coord``, ``type``, ``perm`` (detached except loss).
    """
    m = mols.mask
    count = m.sum().clamp_min(1)
    sq = ((out.coords - mols.pos) ** 2).sum(-1)
    coord = (sq * m).sum() / count
    ce = F.cross_entropy(out.logits[m].float(), out.encoding.species[m])
    loss = coord + lambda_type * ce
    perm = torch.zeros((), device=coord.device)
    if out.soft_permutation is not None and lambda_perm > 0:
        perm = group.permutation_entropy(out.soft_permutation, m)
        loss = loss + lambda_perm * perm
    return {"loss": loss, "coord": coord.detach(), "type": ce.detach(), "perm": perm.detach()}


@torch.no_grad()
def molecule_scores(out: Reconstruction, mols: DenseMolecules) -> tuple[Tensor, Tensor]:
    """Per-molecule rmsd [B] (Å, the reconstruction as given, no alignment) and element
    accuracy [B] (fraction of atoms whose most likely element is the input's)."""
    n = mols.mask.sum(1)
    sq = ((out.coords - mols.pos) ** 2).sum(-1) * mols.mask
    correct = (out.logits.argmax(-1) == out.encoding.species) & mols.mask
    return torch.sqrt(sq.sum(1) / n), correct.sum(1) / n
