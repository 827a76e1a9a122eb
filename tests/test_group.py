"""Group functions: Gram–Schmidt rotation, translation, soft/hard permutations."""
import pytest
import torch

from molgiae import group


def test_gram_schmidt_is_a_proper_rotation_and_equivariant():
    torch.manual_seed(0)
    v1, v2 = torch.randn(16, 3), torch.randn(16, 3)
    R = group.gram_schmidt(v1, v2)
    eye = torch.eye(3).expand(16, 3, 3)
    assert torch.allclose(R.transpose(1, 2) @ R, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(R), torch.ones(16), atol=1e-5)
    Q = group.random_rotation()
    R2 = group.gram_schmidt(v1 @ Q.T, v2 @ Q.T)
    assert torch.allclose(R2, Q @ R, atol=1e-5)


def test_gram_schmidt_vanishing_vectors_still_give_proper_rotations():
    zero = torch.zeros(1, 3)
    axis = torch.tensor([[0.0, 0.0, 2.0]])
    for v1, v2 in [(zero, zero), (axis, zero), (zero, axis), (axis, 3 * axis), (axis, 1e-9 * axis)]:
        v1 = v1.clone().requires_grad_(True)
        R = group.gram_schmidt(v1, v2)
        assert torch.isfinite(R).all()
        assert torch.allclose(torch.linalg.det(R), torch.ones(1), atol=1e-5)
        assert torch.allclose(R[0].T @ R[0], torch.eye(3), atol=1e-5)
        R.sum().backward()
        assert torch.isfinite(v1.grad).all()
    # v1 along the axis is kept as the first frame vector when v2 vanishes
    R = group.gram_schmidt(axis, zero)
    assert torch.allclose(R[0, :, 0], torch.tensor([0.0, 0.0, 1.0]))


def test_centroid_is_equivariant_and_ignores_padding():
    torch.manual_seed(1)
    pos = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pos[0, 3:] = 100.0  # padding must not count
    t = group.masked_centroid(pos, mask)
    assert torch.allclose(t[0], pos[0, :3].mean(0))
    R, a = group.random_rotation(), torch.randn(3)
    t2 = group.masked_centroid(pos @ R.T + a, mask)
    assert torch.allclose(t2, t @ R.T + a, atol=1e-5)


def test_hard_permutation_sorts_scores_and_handles_padding():
    scores = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    P = group.hard_permutation(scores, mask)
    assert torch.equal(P[0, :3, :3], torch.tensor([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    assert P[0, 3].sum() == 0 and P[0, :, 3].sum() == 0
    x = torch.tensor([[[3.0, 0, 0], [1, 0, 0], [2, 0, 0], [0, 0, 0]]])
    assert torch.equal((P @ x)[0, :3, 0], torch.tensor([1.0, 2.0, 3.0]))


def test_hard_permutation_composes_with_input_permutation():
    torch.manual_seed(2)
    scores = torch.randn(1, 7)
    mask = torch.ones(1, 7, dtype=torch.bool)
    perm = torch.randperm(7)
    P = group.hard_permutation(scores, mask)[0]
    P2 = group.hard_permutation(scores[:, perm], mask)[0]
    Pi = torch.eye(7)[perm]  # (Pi x)[k] = x[perm[k]]
    assert torch.equal(P2, P @ Pi.T)


def test_soft_permutation_is_doubly_stochastic_in_the_limit_and_straight_through_is_hard():
    torch.manual_seed(3)
    scores = torch.randn(2, 6, requires_grad=True)
    mask = torch.ones(2, 6, dtype=torch.bool)
    soft = group.soft_permutation(scores, mask, tau=1e-3)
    assert torch.allclose(soft.sum(-1), torch.ones(2, 6), atol=1e-5)
    assert torch.allclose(soft, group.hard_permutation(scores, mask), atol=1e-4)
    P, soft = group.straight_through_permutation(scores, mask, tau=0.5)
    assert torch.allclose(P, group.hard_permutation(scores, mask))
    x = torch.randn(2, 6, 3)
    (P @ x).pow(2).sum().backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0


def test_permutation_entropy_zero_for_hard_and_positive_for_soft():
    scores = torch.tensor([[0.0, 1.0, 2.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    assert group.permutation_entropy(group.hard_permutation(scores, mask), mask) < 1e-6
    assert group.permutation_entropy(group.soft_permutation(scores, mask, tau=1.0), mask) > 0.1


def test_apply_action_and_to_canonical_are_inverse():
    torch.manual_seed(4)
    Y = torch.randn(1, 5, 3)
    P = group.hard_permutation(torch.randn(1, 5), torch.ones(1, 5, dtype=torch.bool))
    R, t = group.random_rotation().unsqueeze(0), torch.randn(1, 3)
    X = group.apply_action(Y, P, R, t)
    assert torch.allclose(group.to_canonical(X, P, R, t), Y, atol=1e-5)


def test_random_rotation_is_a_proper_rotation_seeded_and_in_dtype():
    gen = torch.Generator().manual_seed(7)
    R = torch.stack([group.random_rotation(gen, dtype=torch.float64) for _ in range(200)])
    assert R.dtype == torch.float64
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(200, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(R), torch.ones(200, dtype=torch.float64), atol=1e-12)
    again = group.random_rotation(torch.Generator().manual_seed(7))
    assert again.dtype == torch.float32 and torch.equal(again, R[0].float())


def test_random_rotation_is_haar_uniform():
    """Haar on SO(3): E[R] = 0, E[R_ij²] = 1/3, and the rotation angle θ has the density
    (1 − cos θ)/π, CDF (θ − sin θ)/π. QR without the sign fix fails the first and the last."""
    import numpy as np
    from scipy import stats

    gen = torch.Generator().manual_seed(0)
    R = torch.stack([group.random_rotation(gen, dtype=torch.float64) for _ in range(4000)]).numpy()
    assert np.abs(R.mean(0)).max() < 0.05  # one entry's std over 4000 draws: 0.009
    assert np.abs((R**2).mean(0) - 1 / 3).max() < 0.02
    angle = np.arccos(np.clip((np.trace(R, axis1=1, axis2=2) - 1) / 2, -1, 1))
    assert stats.kstest(angle, lambda t: (t - np.sin(t)) / np.pi).pvalue > 1e-3


def test_rotation_turn_is_four_times_one_minus_cos_of_the_angle_between_frames():
    import math

    Q = group.random_rotation(torch.Generator().manual_seed(3), dtype=torch.float64)
    for theta in (0.0, 0.3, math.pi / 2, math.pi):
        c, s = math.cos(theta), math.sin(theta)
        turn = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
        # the same turn about another axis, and in either order: a distance between frames
        P = group.random_rotation(torch.Generator().manual_seed(4), dtype=torch.float64)
        about_other_axis = P @ turn @ P.T
        for a, b in [(Q @ turn, Q), (Q, Q @ turn), (Q @ about_other_axis, Q)]:
            assert float(group.rotation_turn(a, b)) == pytest.approx(4 * (1 - c), abs=1e-12)
    batch = torch.stack([Q, -Q.T])
    assert group.rotation_turn(batch, batch).shape == (2,)
