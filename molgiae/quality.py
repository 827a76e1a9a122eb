"""Embedding-quality metrics of the invariant code z (the ``embedding`` section of
``molgiae evaluate``, the model card and ``bench/embedding_quality.py``).

* noise robustness: self-retrieval of noisy copies among the clean codes, and ‖Δz‖ relative to
  the median nearest-neighbour distance, at coordinate noise σ (Å);
* the Jacobian spectral norm ‖∂z/∂x‖₂ per molecule (power iteration with autograd);
* frame stability: how far the predicted rotation R turns under the same coordinate noise (where R
  flips, the canonical pose flips and z must jump with it: ``bench/results/frame_study.md``);
* conformer awareness on a conformer-ensemble file: Spearman ρ between ‖Δz‖ and aligned rmsd over
  conformer pairs of one molecule (fixed atom order, and symmetry-aware), and the
  sibling-nearest-neighbour rate;
* a linear (ridge) probe of z against the element-count baseline on QM9 targets.

The pure functions take codes, an encode function or a ``pos → z`` function, so they work for any
checkpoint (or any encoder). An *encode function* maps per-molecule lists (atomic numbers [n_i],
coordinates [n_i, 3] in Å) to codes float [M, D].
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from molgiae.data.batching import make_batch, size_sorted_batches
from molgiae.data.targets import get_target, target_values
from molgiae.group import rotation_turn
from molgiae.automorphism import SAME_STRUCTURE_RMSD, atom_symmetry, bond_graph, symmetric_pair_rmsds

EncodeFn = Callable[[Sequence[np.ndarray], Sequence[np.ndarray]], np.ndarray]

NOISE_SIGMAS: tuple[float, ...] = (0.01, 0.05, 0.1)
PROBE_TARGETS: tuple[str, ...] = ("U0", "gap", "homo", "mu", "alpha", "Cv")
COUNT_ELEMENTS: tuple[int, ...] = (1, 6, 7, 8, 9)
RIDGE_ALPHAS: tuple[float, ...] = tuple(float(a) for a in np.logspace(-3, 3, 7))


# ----------------------------------------------------------------------------- encoders
def model_encoder(model, batch_size: int = 64, device: str | torch.device = "cpu") -> EncodeFn:
    """An encode function of a :class:`~molgiae.model.GroupInvariantAutoencoder` (size-sorted,
    pair-budget batches; codes in input order)."""
    @torch.no_grad()
    def encode(elements: Sequence[np.ndarray], coords: Sequence[np.ndarray]) -> np.ndarray:
        model.eval()
        out = np.zeros((len(elements), model.config.embedding_dim), np.float32)
        for ids in size_sorted_batches([len(e) for e in elements], batch_size):
            batch = make_batch([elements[i] for i in ids], [coords[i] for i in ids]).to(device)
            out[ids] = model.embed(batch).float().cpu().numpy()
        return out

    return encode


def set_molecules(data, ids: Sequence[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per-molecule (atomic numbers [n], coordinates float64 [n, 3]) of ``ids`` of a ConformerSet."""
    p = data.ptr
    return ([np.asarray(data.elements[p[i]:p[i + 1]]) for i in ids],
            [np.asarray(data.coords[p[i]:p[i + 1]], dtype=np.float64) for i in ids])


# ----------------------------------------------------------------------------- nearest neighbours
def nearest_neighbours(queries: np.ndarray, base: np.ndarray, self_index: np.ndarray | None = None,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``base`` [K, D] for each row of ``queries`` [M, D] (Euclidean, float64).

    ``self_index`` [M]: query i is row self_index[i] of ``base`` and may not pick it (nearest
    *other*). Returns (index into base [M], distance [M])."""
    q, b = np.asarray(queries, np.float64), np.asarray(base, np.float64)
    b2 = (b * b).sum(1)
    idx, dist = np.zeros(len(q), np.int64), np.zeros(len(q))
    for s in range(0, len(q), chunk):
        qc, rows = q[s:s + chunk], np.arange(min(chunk, len(q) - s))
        d2 = (qc * qc).sum(1)[:, None] + b2[None, :] - 2.0 * qc @ b.T
        if self_index is not None:
            d2[rows, np.asarray(self_index)[s:s + chunk]] = np.inf
        k = np.argmin(d2, 1)
        idx[s:s + chunk], dist[s:s + chunk] = k, np.sqrt(np.maximum(d2[rows, k], 0.0))
    return idx, dist


# ----------------------------------------------------------------------------- noise robustness
def noise_robustness(encode_fn: EncodeFn, elements: Sequence[np.ndarray], coords: Sequence[np.ndarray],
                     sigmas: Sequence[float] = NOISE_SIGMAS, seed: int = 0,
                     clean: np.ndarray | None = None) -> dict:
    """Codes of noisy copies against the clean codes of N molecules.

    Clean codes Z0 [N, D] (``clean`` if given, else ``encode_fn`` of the inputs); median NN
    distance = median over i of min_{j≠i} ‖Z0_i − Z0_j‖. For each σ (Å) every coordinate gets
    N(0, σ²) noise (seeded; one draw per σ, in order): codes Zσ; ``self_retrieval`` = fraction of i
    whose nearest clean code to Zσ_i is Z0_i; ``ratio_median`` / ``ratio_max`` = median / max over i
    of ‖Zσ_i − Z0_i‖ / median NN distance."""
    z0 = encode_fn(elements, coords) if clean is None else np.asarray(clean)
    _, nn = nearest_neighbours(z0, z0, self_index=np.arange(len(z0)))
    scale = float(np.median(nn))
    rng = np.random.default_rng(seed)
    out: dict = {"n_molecules": len(z0), "median_nn_distance": scale}
    for sigma in sigmas:
        noisy = [x + rng.normal(0.0, sigma, size=np.shape(x)) for x in coords]
        zs = encode_fn(elements, noisy)
        hit, _ = nearest_neighbours(zs, z0)
        ratio = np.linalg.norm(np.asarray(zs, np.float64) - z0, axis=1) / scale
        out[f"sigma_{sigma:g}"] = {"sigma": float(sigma), "self_retrieval": float(np.mean(hit == np.arange(len(z0)))),
                                   "ratio_median": float(np.median(ratio)), "ratio_max": float(np.max(ratio))}
    return out


# ----------------------------------------------------------------------------- frame stability
FLIP_TURN = 4.0  # ‖R̃ − R‖²_F above 4 = a turn by more than 90°


@torch.no_grad()
def frame_turns(model, elements: Sequence[np.ndarray], coords: Sequence[np.ndarray], sigmas: Sequence[float],
                draws: int = 1, seed: int = 0, batch_size: int = 64, device: str | torch.device = "cpu") -> np.ndarray:
    """Per noise level σ_k and molecule, the mean over ``draws`` draws of ε ~ N(0, σ_k²) (seeded
    ``seed + k``) of ``‖R(x + ε) − R(x)‖²_F`` (:func:`molgiae.group.rotation_turn`: 0 … 8), R the
    predicted rotation; the clean R is computed once per batch for every σ. Per-molecule lists as
    for an encode function → float64 [len(sigmas), M]."""
    model.eval()
    gens = [torch.Generator().manual_seed(seed + k) for k in range(len(sigmas))]
    out = np.zeros((len(sigmas), len(elements)))
    for ids in size_sorted_batches([len(e) for e in elements], batch_size):
        mols = make_batch([elements[i] for i in ids], [coords[i] for i in ids])
        clean = model.encode(mols.to(device)).rotation
        for k, (sigma, gen) in enumerate(zip(sigmas, gens)):
            for _ in range(draws):
                noise = torch.randn(mols.pos.shape, generator=gen, dtype=mols.pos.dtype) * sigma * mols.mask.unsqueeze(-1)
                turned = model.encode(mols.with_pos(mols.pos + noise).to(device)).rotation
                out[k, ids] += rotation_turn(turned, clean).double().cpu().numpy() / draws
    return out


def turn_summary(turns: np.ndarray) -> dict:
    """mean / median / p95 of per-molecule frame turns [M] and ``flip_rate``, the fraction above
    :data:`FLIP_TURN`."""
    t = np.asarray(turns, np.float64)
    return {"n_molecules": int(len(t)), "turn_mean": float(t.mean()), "turn_median": float(np.median(t)),
            "turn_p95": float(np.percentile(t, 95)), "flip_rate": float(np.mean(t > FLIP_TURN))}


def frame_stability(model, elements: Sequence[np.ndarray], coords: Sequence[np.ndarray],
                    sigmas: Sequence[float] = NOISE_SIGMAS, seed: int = 0, batch_size: int = 64,
                    device: str | torch.device = "cpu") -> dict:
    """:func:`turn_summary` of :func:`frame_turns` (one draw) at each σ (Å), keyed ``sigma_<σ>``."""
    turns = frame_turns(model, elements, coords, sigmas, 1, seed, batch_size, device)
    return {f"sigma_{s:g}": {"sigma": float(s), **turn_summary(t)} for s, t in zip(sigmas, turns)}


# ----------------------------------------------------------------------------- Jacobian norms
def spectral_norms(fn: Callable[[torch.Tensor], torch.Tensor], pos: torch.Tensor, mask: torch.Tensor,
                   iterations: int = 20, generator: torch.Generator | None = None) -> torch.Tensor:
    """Largest singular value of ∂z_b/∂x_b for each row b, by power iteration on JᵀJ.

    ``fn``: pos [B, N, 3] → z [B, D], row b depending only on pos[b] (a block-diagonal Jacobian);
    ``mask`` [B, N] marks the real atoms (padding gets no perturbation). One forward pass; each
    iteration is J v (double backward through the vjp) and Jᵀ(J v). → [B]."""
    x = pos.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        z = fn(x)
        u = torch.zeros_like(z, requires_grad=True)
        jt_u = torch.autograd.grad(z, x, u, create_graph=True)[0]  # Jᵀu, linear in u
        m = mask.to(x.dtype)[..., None]
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * m
        sigma = torch.zeros(len(x), dtype=x.dtype, device=x.device)
        for _ in range(max(1, iterations)):
            v = v / v.flatten(1).norm(dim=1).clamp_min(1e-30)[:, None, None]
            jv = torch.autograd.grad(jt_u, u, v, retain_graph=True)[0]
            sigma = jv.norm(dim=1)
            v = torch.autograd.grad(z, x, jv, retain_graph=True)[0] * m
    return sigma.detach()


def jacobian_spectral_norms(model, elements: Sequence[np.ndarray], coords: Sequence[np.ndarray],
                            iterations: int = 20, batch_size: int = 32, seed: int = 0,
                            device: str | torch.device = "cpu") -> np.ndarray:
    """‖∂z/∂x‖₂ (x the [n, 3] coordinates flattened, Å) of each molecule under an autoencoder.
    → float64 [M], in code units per Å."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    out = np.zeros(len(elements))
    for ids in size_sorted_batches([len(e) for e in elements], batch_size):
        mols = make_batch([elements[i] for i in ids], [coords[i] for i in ids]).to(device)

        def fn(pos: torch.Tensor, mols=mols) -> torch.Tensor:
            return model.encode(mols.with_pos(pos)).z

        out[ids] = spectral_norms(fn, mols.pos, mols.mask, iterations, gen).double().cpu().numpy()
    return out


def norm_summary(norms: np.ndarray) -> dict:
    """p50, p99 and max of per-molecule norms."""
    return {"n_molecules": int(len(norms)), "p50": float(np.percentile(norms, 50)),
            "p99": float(np.percentile(norms, 99)), "max": float(np.max(norms))}


# ----------------------------------------------------------------------------- conformer awareness
def pair_rmsds(coords: np.ndarray) -> np.ndarray:
    """Aligned rmsd (Kabsch after centring, proper rotations; as :func:`molgiae.metrics.kabsch_rmsd`)
    of every pair a < b of conformers coords [C, n, 3] in one atom order, batched. → [C(C−1)/2]
    in ``np.triu_indices(C, 1)`` order."""
    P = np.asarray(coords, np.float64)
    P = P - P.mean(1, keepdims=True)
    ia, ib = np.triu_indices(len(P), 1)
    U, S, Vt = np.linalg.svd(np.einsum("pni,pnj->pij", P[ia], P[ib]))
    d = np.sign(np.linalg.det(U @ Vt))
    sq = (P * P).sum((1, 2))
    overlap = S[:, 0] + S[:, 1] + d * S[:, 2]
    return np.sqrt(np.maximum(sq[ia] + sq[ib] - 2.0 * overlap, 0.0) / P.shape[1])


def conformer_groups(keys: np.ndarray) -> list[np.ndarray]:
    """Indices of the conformers of each molecule with ≥ 2 conformers (keys [C]), molecules in key
    order, conformers in input order: the grouping behind every pairwise figure below."""
    keys = np.asarray(keys)
    order = np.argsort(keys, kind="stable")
    starts = np.flatnonzero(np.r_[True, keys[order][1:] != keys[order][:-1]])
    return [members for members in np.split(order, starts[1:]) if len(members) >= 2]


def conformer_pairs(codes: np.ndarray, keys: np.ndarray, coords: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of conformers sharing a key (same molecule, same atom order).

    Returns ‖z_a − z_b‖ [P], aligned rmsd [P] (Å) and the pair's key [P], molecules in key order."""
    keys = np.asarray(keys)
    codes = np.asarray(codes, np.float64)
    dz, rmsd, owner = [], [], []
    for members in conformer_groups(keys):
        ia, ib = np.triu_indices(len(members), 1)
        dz.append(np.linalg.norm(codes[members[ia]] - codes[members[ib]], axis=1))
        rmsd.append(pair_rmsds(np.stack([coords[i] for i in members])))
        owner.append(np.full(len(ia), keys[members[0]]))
    if not dz:
        return np.zeros(0), np.zeros(0), keys[:0]
    return np.concatenate(dz), np.concatenate(rmsd), np.concatenate(owner)


def symmetric_rmsds(keys: np.ndarray, coords: Sequence[np.ndarray], elements: Sequence[np.ndarray]) -> np.ndarray:
    """For the pairs of :func:`conformer_pairs` (same order): the symmetry-aware rmsd, minimised over
    the relabellings of atoms that keep the bond graph (perceived from the molecule's first
    conformer; :func:`molgiae.automorphism.best_relabelling`). → [P] Å."""
    out = []
    for members in conformer_groups(keys):
        x = np.stack([np.asarray(coords[i], np.float64) for i in members])
        numbers = np.asarray(elements[members[0]])
        out.append(symmetric_pair_rmsds(x, atom_symmetry(numbers, bond_graph(numbers, x[0]))))
    return np.concatenate(out) if out else np.zeros(0)


def _per_molecule_rho(dz: np.ndarray, rmsd: np.ndarray, owner: np.ndarray) -> float:
    """Mean over molecules with ≥ 3 pairs of the Spearman ρ of their pairs (NaN-free ones)."""
    from scipy.stats import spearmanr

    per = [spearmanr(dz[owner == k], rmsd[owner == k])[0] for k in np.unique(owner) if (owner == k).sum() >= 3]
    per = [r for r in per if np.isfinite(r)]
    return float(np.mean(per)) if per else float("nan")


def conformer_awareness(codes: np.ndarray, keys: np.ndarray, coords: Sequence[np.ndarray],
                        elements: Sequence[np.ndarray] | None = None) -> dict:
    """How z orders conformers of one molecule. codes [C, D]; keys [C] molecule of each conformer;
    coords: C arrays [n, 3] (conformers of one molecule in one atom order); elements: C arrays [n]
    (atomic numbers), for the symmetry-aware figures.

    ``spearman_rho``: Spearman ρ of ‖Δz‖ vs fixed-order aligned rmsd pooled over all same-molecule
    pairs (the headline of earlier reports); ``spearman_rho_per_molecule_mean``: mean of the
    per-molecule ρ over molecules with ≥ 3 pairs; ``sibling_nn_rate``: fraction of conformers of
    molecules with ≥ 2 conformers whose nearest other conformer in z (among all C) belongs to the
    same molecule. With ``elements``: ``spearman_rho_symmetric`` (and its per-molecule mean), the
    same against the symmetry-aware rmsd (:func:`symmetric_rmsds`), the distance a
    permutation-invariant code can follow; ``n_relabelled_pairs``, the pairs that are one structure
    (symmetry-aware rmsd under :data:`~molgiae.automorphism.SAME_STRUCTURE_RMSD`: copies and relabelled
    copies; mirror images of a chiral geometry are distinct, as they are to the encoder) and
    ``spearman_rho_distinct``, the fixed-order ρ over the other pairs."""
    from scipy.stats import spearmanr

    keys = np.asarray(keys)
    dz, rmsd, owner = conformer_pairs(codes, keys, coords)
    _, counts = np.unique(keys, return_counts=True)
    out = {"n_conformers": int(len(keys)), "n_molecules": int(len(counts)),
           "n_multi_conformer_molecules": int((counts >= 2).sum()), "n_pairs": int(len(dz))}
    if len(dz) < 2:
        return {**out, "spearman_rho": float("nan"), "spearman_rho_per_molecule_mean": float("nan"),
                "sibling_nn_rate": float("nan")}
    out["spearman_rho"] = float(spearmanr(dz, rmsd)[0])
    out["spearman_rho_per_molecule_mean"] = _per_molecule_rho(dz, rmsd, owner)
    if elements is not None:
        sym = symmetric_rmsds(keys, coords, elements)
        out["spearman_rho_symmetric"] = float(spearmanr(dz, sym)[0])
        out["spearman_rho_symmetric_per_molecule_mean"] = _per_molecule_rho(dz, sym, owner)
        out["median_pair_rmsd"], out["median_pair_rmsd_symmetric"] = float(np.median(rmsd)), float(np.median(sym))
        same = sym < SAME_STRUCTURE_RMSD
        out["n_relabelled_pairs"] = int(same.sum())
        out["spearman_rho_distinct"] = float(spearmanr(dz[~same], rmsd[~same])[0]) if (~same).sum() >= 2 else float("nan")
    rows = np.flatnonzero(np.isin(keys, np.unique(owner)))
    nn, _ = nearest_neighbours(np.asarray(codes)[rows], codes, self_index=rows)
    out["sibling_nn_rate"] = float(np.mean(keys[nn] == keys[rows]))
    return out


# ----------------------------------------------------------------------------- linear probe
def ridge_fit(X: np.ndarray, y: np.ndarray, alpha: float) -> Callable[[np.ndarray], np.ndarray]:
    """Ridge regression in closed form on standardised features (fit-set mean/std; the intercept is
    not penalised). X [M, F], y [M] → predict(X' [K, F]) → [K]."""
    X = np.asarray(X, np.float64)
    mean, std = X.mean(0), X.std(0)
    std = np.where(std > 1e-12, std, 1.0)
    Xs = (X - mean) / std
    y_mean = float(np.mean(y))
    w = np.linalg.solve(Xs.T @ Xs + alpha * np.eye(X.shape[1]), Xs.T @ (np.asarray(y, np.float64) - y_mean))
    return lambda Xn: ((np.asarray(Xn, np.float64) - mean) / std) @ w + y_mean


def ridge_cv_alpha(X: np.ndarray, y: np.ndarray, alphas: Sequence[float] = RIDGE_ALPHAS, folds: int = 5,
                   seed: int = 0) -> float:
    """The α of ``alphas`` with the lowest mean absolute error in ``folds``-fold CV (seeded folds)."""
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    errors = []
    for alpha in alphas:
        e = [np.abs(ridge_fit(X[fold != k], y[fold != k], alpha)(X[fold == k]) - y[fold == k]).mean()
             for k in range(folds)]
        errors.append(np.mean(e))
    return float(alphas[int(np.argmin(errors))])


def ridge_probe(X_fit: np.ndarray, y_fit: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                alphas: Sequence[float] = RIDGE_ALPHAS, folds: int = 5, seed: int = 0) -> dict:
    """Ridge on X_fit [M, F] → y_fit [M] with α by CV on the fit set; test MAE on X_test, y_test."""
    alpha = ridge_cv_alpha(X_fit, y_fit, alphas, folds, seed)
    pred = ridge_fit(X_fit, y_fit, alpha)(X_test)
    return {"mae": float(np.abs(pred - y_test).mean()), "alpha": alpha}


def element_counts(elements: Sequence[np.ndarray], symbols: Sequence[int] = COUNT_ELEMENTS) -> np.ndarray:
    """Counts of each atomic number of ``symbols`` (default H, C, N, O, F) per molecule. → [M, S]."""
    return np.array([[int(np.sum(np.asarray(e) == s)) for s in symbols] for e in elements], dtype=np.float64)


def linear_probe(codes: np.ndarray, counts: np.ndarray, targets: dict[str, np.ndarray], units: dict[str, str],
                 n_fit: int = 1000, n_test: int = 4000, seed: int = 0) -> dict:
    """Ridge probe of z [M, D] and of the element counts [M, S] on each target [M] (NaN = unlabelled):
    a seeded choice of ``n_fit`` molecules to fit, ``n_test`` others to test (both scaled down in
    proportion when fewer are labelled). Per target: test MAE of z and of the counts (in
    ``units[name]``), and ``ratio`` = MAE z / MAE counts."""
    out = {}
    for name, y in targets.items():
        ok = np.flatnonzero(np.isfinite(y))
        f, t = n_fit, n_test
        if len(ok) < n_fit + n_test:
            f = int(round(len(ok) * n_fit / (n_fit + n_test)))
            t = len(ok) - f
        if f < 10 or t < 1:
            out[name] = {"skipped": f"only {len(ok)} labelled molecules"}
            continue
        chosen = np.random.default_rng(seed).permutation(ok)
        fit, test = chosen[:f], chosen[f:f + t]
        z = ridge_probe(codes[fit], y[fit], codes[test], y[test], seed=seed)
        c = ridge_probe(counts[fit], y[fit], counts[test], y[test], seed=seed)
        out[name] = {"unit": units.get(name, ""), "n_fit": int(f), "n_test": int(t), "mae_z": z["mae"],
                     "mae_counts": c["mae"], "ratio": z["mae"] / c["mae"] if c["mae"] > 0 else float("inf"),
                     "alpha_z": z["alpha"], "alpha_counts": c["alpha"]}
    return out


# ----------------------------------------------------------------------------- the whole section
def probe_targets(data, ids: np.ndarray, names: Sequence[str] = PROBE_TARGETS) -> tuple[dict, dict]:
    """Labels of ``names`` for molecules ``ids`` of a ConformerSet, in each target's report unit
    (:mod:`molgiae.data.targets`: U0 as atomization energy; energies in meV, mu in D, alpha in
    a0^3, Cv in cal/(mol K)). Targets the data does not label are left out. → (values, units)."""
    values, units = {}, {}
    for name in names:
        spec = get_target(name)
        try:
            values[name] = target_values(data, name)[ids] * spec.report_scale
        except ValueError:
            continue
        units[name] = spec.report_unit
    return values, units


def ensemble_metrics(encode_fn: EncodeFn, ensembles, vocabulary: Sequence[int] | None = None) -> dict:
    """:func:`conformer_awareness` of every conformer of a ConformerSet (keys = molecule ids), those
    with elements outside ``vocabulary`` left out."""
    ids = np.arange(len(ensembles))
    if vocabulary is not None:
        ids = np.array([i for i in ids if set(np.unique(ensembles.elements[ensembles.ptr[i]:ensembles.ptr[i + 1]]).tolist())
                        <= set(vocabulary)], dtype=np.int64)
    elements, coords = set_molecules(ensembles, ids)
    return conformer_awareness(encode_fn(elements, coords), np.asarray(ensembles.keys)[ids], coords, elements)


def embedding_metrics(model, data, ids: np.ndarray, ensembles=None, n_noise: int = 1000, n_jacobian: int = 200,
                      n_fit: int = 1000, n_test: int = 4000, sigmas: Sequence[float] = NOISE_SIGMAS, seed: int = 0,
                      iterations: int = 20, batch_size: int = 64, device: str | torch.device = "cpu",
                      log: Callable[[str], None] | None = None) -> dict:
    """The ``embedding`` section of ``molgiae evaluate`` / the model card for an autoencoder.

    ``ids``: the pool of molecules of ``data`` (e.g. the checkpoint's test split). A seeded
    permutation of it is encoded once: its first ``n_noise`` molecules give the noise robustness
    and the frame stability,
    its first ``n_jacobian`` the Jacobian norms, its first ``n_fit + n_test`` the linear probe (when
    ``data`` has QM9 labels). ``ensembles``: a ConformerSet of conformer ensembles, or None."""
    log = log or (lambda s: None)
    encode = model_encoder(model, batch_size, device)
    order = np.random.default_rng(seed).permutation(np.asarray(ids))
    pool = order[:max(n_noise, n_fit + n_test, n_jacobian)]
    elements, coords = set_molecules(data, pool)
    out: dict = {"seed": seed, "n_pool": int(len(ids))}
    seconds: dict = {}
    t = time.perf_counter()
    codes = encode(elements, coords)
    k = min(n_noise, len(pool))
    out["noise"] = noise_robustness(encode, elements[:k], coords[:k], sigmas, seed, clean=codes[:k])
    seconds["noise"] = time.perf_counter() - t
    log(f"noise robustness: {seconds['noise']:.1f} s")
    t = time.perf_counter()
    out["frame"] = frame_stability(model, elements[:k], coords[:k], sigmas, seed, batch_size, device)
    seconds["frame"] = time.perf_counter() - t
    t = time.perf_counter()
    k = min(n_jacobian, len(pool))
    norms = jacobian_spectral_norms(model, elements[:k], coords[:k], iterations, seed=seed, device=device)
    out["jacobian"] = {**norm_summary(norms), "iterations": iterations, "unit": "code units / Å"}
    seconds["jacobian"] = time.perf_counter() - t
    log(f"Jacobian norms: {seconds['jacobian']:.1f} s")
    if ensembles is not None:
        t = time.perf_counter()
        out["conformers"] = ensemble_metrics(encode, ensembles, model.config.elements)
        seconds["conformers"] = time.perf_counter() - t
        log(f"conformer awareness: {seconds['conformers']:.1f} s")
    values, units = probe_targets(data, pool)
    if values:
        t = time.perf_counter()
        out["probe"] = linear_probe(codes, element_counts(elements), values, units, n_fit, n_test, seed)
        seconds["probe"] = time.perf_counter() - t
    out["seconds"] = seconds
    return out


def summary_lines(section: dict) -> list[str]:
    """One human-readable line per figure of an ``embedding`` section."""
    lines = []
    noise = section.get("noise")
    if noise:
        lines.append(f"median NN distance of clean codes: {noise['median_nn_distance']:.4g} ({noise['n_molecules']} molecules)")
        for key, v in noise.items():
            if key.startswith("sigma_"):
                lines.append(f"noise σ={v['sigma']:g} Å: self-retrieval {v['self_retrieval']:.3f}, ‖Δz‖/NN median "
                             f"{v['ratio_median']:.3f}, max {v['ratio_max']:.3f}")
    for v in section.get("frame", {}).values():
        lines.append(f"frame turn ‖R̃ − R‖²_F at σ={v['sigma']:g} Å ({v['n_molecules']} molecules): mean {v['turn_mean']:.3f}, "
                     f"median {v['turn_median']:.4f}, p95 {v['turn_p95']:.3f}; turned > 90°: {v['flip_rate']:.3f}")
    jac = section.get("jacobian")
    if jac:
        lines.append(f"‖∂z/∂x‖₂ ({jac['n_molecules']} molecules, {jac['unit']}): p50 {jac['p50']:.4g}, "
                     f"p99 {jac['p99']:.4g}, max {jac['max']:.4g}")
    conf = section.get("conformers")
    if conf:
        lines.append(f"conformers ({conf['n_conformers']} of {conf['n_molecules']} molecules, {conf['n_pairs']} pairs): "
                     f"Spearman ρ(‖Δz‖, rmsd) {conf['spearman_rho']:.3f} (per-molecule mean "
                     f"{conf['spearman_rho_per_molecule_mean']:.3f}), sibling-NN rate {conf['sibling_nn_rate']:.3f}")
        if "spearman_rho_symmetric" in conf:
            lines.append(f"  against the symmetry-aware rmsd (min over atom relabellings that keep the bond graph; median "
                         f"{conf['median_pair_rmsd_symmetric']:.3f} vs {conf['median_pair_rmsd']:.3f} Å): ρ "
                         f"{conf['spearman_rho_symmetric']:.3f} (per-molecule mean {conf['spearman_rho_symmetric_per_molecule_mean']:.3f})")
        if "spearman_rho_distinct" in conf:
            lines.append(f"  without the {conf['n_relabelled_pairs']} pairs that are one structure up to relabelled "
                         f"atoms: ρ {conf['spearman_rho_distinct']:.3f}")
    for name, p in section.get("probe", {}).items():
        if "skipped" in p:
            lines.append(f"probe {name}: skipped ({p['skipped']})")
        else:
            lines.append(f"probe {name} test MAE [{p['unit']}] ({p['n_fit']} fit / {p['n_test']} test): z {p['mae_z']:.4g}, "
                         f"element counts {p['mae_counts']:.4g}, ratio {p['ratio']:.3f}")
    return lines
