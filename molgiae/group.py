"""Group functions of SE(3) x S_n: rotation from two vectors, translation, permutations,
and a random rotation (Haar-uniform; the tests and the invariance metric draw from it).

Pure tensor functions, no parameters. Shapes: B molecules, N atoms (padded), ``mask`` [B, N]
marks real atoms.
"""
from __future__ import annotations

import torch
from torch import Tensor

_REFERENCE_AXES = torch.eye(3)


def _safe_normalize(v: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``v / |v|`` with the norm clamped at ``eps``; returns (unit vector, norm). v: [..., 3]."""
    norm = torch.linalg.vector_norm(v, dim=-1, keepdim=True)
    return v / norm.clamp_min(eps), norm


def gram_schmidt(v1: Tensor, v2: Tensor, eps: float = 1e-4) -> Tensor:
    """Proper rotation from two vectors: columns ``e1 = v1/|v1|``, ``e2`` ⟂ ``e1``, ``e3 = e1 × e2``.

    v1, v2: [B, 3] → R: [B, 3, 3] with det R = +1 and no NaN, ever. Where a vector vanishes
    (``|v| < eps``: symmetric molecules, whose equivariant vectors must be 0 or lie on the
    symmetry axis) it is replaced by the first reference axis not parallel to what is already
    fixed; the result is then still a proper rotation, and exactly equivariant whenever both
    vectors are longer than ``eps``.
    """
    ref = _REFERENCE_AXES.to(v1)
    e1, n1 = _safe_normalize(v1, eps)
    e1 = torch.where(n1 >= eps, e1, ref[0].expand_as(e1))

    def orthogonal_part(u: Tensor) -> Tensor:
        return u - (u * e1).sum(-1, keepdim=True) * e1

    u2 = orthogonal_part(v2)
    e2, n2 = _safe_normalize(u2, eps)
    # Fallback: the reference axis with the largest component orthogonal to e1.
    candidates = torch.stack([orthogonal_part(ref[i].expand_as(e1)) for i in range(3)], dim=1)
    best = torch.linalg.vector_norm(candidates, dim=-1).argmax(dim=1)
    fallback = candidates[torch.arange(len(best), device=best.device), best]
    fallback, _ = _safe_normalize(fallback, 1e-12)
    e2 = torch.where(n2 >= eps, e2, fallback)
    e3 = torch.linalg.cross(e1, e2, dim=-1)
    return torch.stack([e1, e2, e3], dim=-1)


def rotation_turn(R_a: Tensor, R_b: Tensor) -> Tensor:
    """How far apart two rotations are: ``‖R_a − R_b‖²_F`` = 4 (1 − cos θ) for θ the angle of
    ``R_aᵀ R_b`` (0 for the same frame, 8 for a half-turn). R_a, R_b: [..., 3, 3] → [...]."""
    return ((R_a - R_b) ** 2).sum((-2, -1))


def masked_centroid(pos: Tensor, mask: Tensor) -> Tensor:
    """Centroid of the real atoms. pos: [B, N, 3], mask: [B, N] → [B, 3].

    Equivariant: ``t(X Rᵀ + 1aᵀ) = R t(X) + a`` and invariant to atom order.
    """
    m = mask.to(pos.dtype).unsqueeze(-1)
    return (pos * m).sum(1) / m.sum(1).clamp_min(1.0)


def sorted_order(scores: Tensor, mask: Tensor) -> Tensor:
    """Atom index of each canonical slot: slot k holds the k-th smallest score. [B, N] → [B, N].

    Padding is sorted to the end.
    """
    big = torch.finfo(scores.dtype).max
    return torch.argsort(scores.masked_fill(~mask, big), dim=1, stable=True)


def hard_permutation(scores: Tensor, mask: Tensor) -> Tensor:
    """Exact permutation matrix ``P[b, k, i] = 1`` iff atom i fills slot k. [B, N] → [B, N, N].

    Rows (slots) and columns (atoms) beyond a molecule's atom count are zero.
    """
    order = sorted_order(scores, mask)
    P = torch.zeros(*scores.shape, scores.shape[1], dtype=scores.dtype, device=scores.device)
    P.scatter_(2, order.unsqueeze(-1), 1.0)
    return P * mask.unsqueeze(-1) * mask.unsqueeze(-2)


def soft_permutation(scores: Tensor, mask: Tensor, tau: float) -> Tensor:
    """Soft-sort relaxation ``P̂[k, i] = softmax_i(-|sort(σ)_k - σ_i| / τ)``. [B, N] → [B, N, N].

    Each valid row sums to 1; padded rows and columns are zero.
    """
    order = sorted_order(scores, mask)
    sorted_scores = torch.gather(scores, 1, order)
    logits = -(sorted_scores.unsqueeze(-1) - scores.unsqueeze(-2)).abs() / tau
    logits = logits.masked_fill(~mask.unsqueeze(-2), float("-inf"))
    P = torch.softmax(logits, dim=-1)
    return P * mask.unsqueeze(-1)


def straight_through_permutation(scores: Tensor, mask: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Hard permutation in the forward pass, soft-sort gradient in the backward pass.

    Returns (P, P_soft): P equals ``hard_permutation`` in value.
    """
    soft = soft_permutation(scores, mask, tau)
    hard = hard_permutation(scores, mask)
    return hard + soft - soft.detach(), soft


def permutation_entropy(P: Tensor, mask: Tensor) -> Tensor:
    """Mean row + column entropy of a soft permutation, per real atom. P: [B, N, N] → scalar."""
    logp = torch.log(P.clamp_min(1e-12))
    plogp = P * logp
    m = mask.to(P.dtype)
    rows = -(plogp.sum(-1) * m).sum()
    cols = -(plogp.sum(-2) * m).sum()
    return (rows + cols) / (2 * m.sum().clamp_min(1.0))


def apply_action(canonical: Tensor, P: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Put a canonical conformer in the input's pose and order: ``X̂ = Pᵀ Y Rᵀ + 1tᵀ``.

    canonical Y: [B, N, 3] (slot order), P: [B, N, N] (slot, atom), R: [B, 3, 3], t: [B, 3]
    → [B, N, 3] in atom order.
    """
    rotated = canonical @ R.transpose(1, 2)
    return torch.einsum("bki,bkc->bic", P, rotated) + t.unsqueeze(1)


def to_canonical(pos: Tensor, P: Tensor, R: Tensor, t: Tensor) -> Tensor:
    """Inverse of :func:`apply_action` for a hard P: ``Y = P (X - t) R``. [B, N, 3] → [B, N, 3]."""
    return torch.einsum("bki,bic->bkc", P, (pos - t.unsqueeze(1)) @ R)


def random_rotation(generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """A rotation drawn uniformly (Haar measure on SO(3)): [3, 3], orthogonal, det +1.

    QR of a 3×3 standard Gaussian matrix gives Q; multiplying each column of Q by the sign of
    the matching diagonal entry of R makes the factorisation unique, and Q is then Haar on O(3)
    (without the sign fix it is not). A Q with det -1 is negated: -I has det -1 in 3-D, so this
    maps O(3)'s other half onto SO(3), measure-preserving. Drawn in float64 from ``generator``
    (the global RNG when None), returned in ``dtype``.
    """
    g = torch.randn(3, 3, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    if torch.linalg.det(q) < 0:
        q = -q
    return q.to(dtype)
