"""Is z steep where the predicted frame swings? One printed line per figure.

    python bench/frame_steepness.py --model CKPT [--n 500] [--top 10] [--draws 4] [--threads 1] [--json OUT]

On ``--n`` held-out QM9 molecules (the checkpoint's test split, seeded choice): ‖∂z/∂x‖₂ per
molecule (power iteration, :func:`molgiae.quality.jacobian_spectral_norms`) and how far Gaussian
noise of 0.1 Å turns the predicted rotation R (``‖R̃ − R‖²_F`` = 4 (1 − cos θ), mean of ``--draws``
draws; the quantity of ``--lambda-frame``). Then, for the ``--top`` steepest molecules (float64, full
Jacobians): the first two singular values of ∂z/∂x, the largest of ∂R/∂x, and |cos| between the
steepest direction of z and that of R, and of 16 noise draws the one that turns R most: how far apart
the two canonical poses are, before and after matching same-element atoms. A rank-one ∂z/∂x aligned with R's swing says z is steep
because it follows a swinging canonical pose (docs/method.md, section 10). Not a test.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from embedding_quality import QM9, test_rows  # noqa: E402


def steepest_directions(model, elements, coords) -> dict:
    """float64 full Jacobians of z and R for one molecule: singular values and direction overlap."""
    import torch

    from molgiae.data.batching import make_batch

    mols = make_batch([elements], [coords])
    mols = mols.with_pos(mols.pos.double())
    p = mols.pos.reshape(-1).clone()
    jz = torch.autograd.functional.jacobian(lambda q: model.encode(mols.with_pos(q.view(1, -1, 3))).z[0], p)
    jr = torch.autograd.functional.jacobian(lambda q: model.encode(mols.with_pos(q.view(1, -1, 3))).rotation[0].reshape(-1), p)
    _, sz, vz = torch.linalg.svd(jz)
    _, sr, vr = torch.linalg.svd(jr)
    return {"jz1": float(sz[0]), "jz2": float(sz[1]), "jr1": float(sr[0]), "cos": abs(float(vz[0] @ vr[0]))}


def largest_flip(model, elements, coords, sigma: float, draws: int = 16, seed: int = 1) -> dict:
    """Of ``draws`` noise draws, the one that turns R most: its turn, how far apart the molecule's
    canonical coordinates ``(x − t) R`` are under the two frames (what the decoder would have to
    output), and the same after the best in-place matching of same-element atoms (a lower bound on
    any relabelling: near 0 would mean the flip is a near-symmetry of the molecule)."""
    import torch
    from scipy.optimize import linear_sum_assignment

    from molgiae.data.batching import make_batch
    from molgiae.group import rotation_turn

    gen = torch.Generator().manual_seed(seed)
    mols = make_batch([elements], [coords])
    with torch.no_grad():
        clean = model.encode(mols)
        turned = [model.encode(mols.with_pos(mols.pos + torch.randn(mols.pos.shape, generator=gen) * sigma)).rotation[0]
                  for _ in range(draws)]
    r0 = clean.rotation[0].double()
    turns = [float(rotation_turn(r.double(), r0)) for r in turned]
    r0, r1 = r0.numpy(), turned[int(np.argmax(turns))].double().numpy()
    x = np.asarray(coords, np.float64) - clean.translation[0].double().numpy()
    c0, c1 = x @ r0, x @ r1
    matched = c1.copy()
    for element in np.unique(elements):
        idx = np.flatnonzero(elements == element)
        rows, cols = linear_sum_assignment(((c0[idx, None] - c1[None, idx]) ** 2).sum(-1))
        matched[idx[rows]] = c1[idx[cols]]
    rms = lambda a: float(np.sqrt(((c0 - a) ** 2).sum(1).mean()))  # noqa: E731
    return {"largest_turn": max(turns), "poses_apart": rms(c1), "poses_apart_matched": rms(matched)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the bundled model)")
    ap.add_argument("--qm9", nargs="+", default=QM9)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--draws", type=int, default=4)
    ap.add_argument("--sigma", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    import torch
    from scipy.stats import spearmanr

    from molgiae.api import load_model
    from molgiae.checkpoint import load_checkpoint
    from molgiae.data.conformers import load_qm9_npz
    from molgiae.quality import frame_turns, jacobian_spectral_norms, set_molecules

    torch.set_num_threads(args.threads)
    t0 = time.time()
    loaded = load_model(str(args.model) if args.model else None)
    model, config = loaded.model.eval(), loaded.config
    data = load_qm9_npz(args.qm9)
    rows, origin = test_rows(load_checkpoint(loaded.path), data, config)
    rows = np.random.default_rng(args.seed).permutation(rows)[: args.n]
    elements, coords = set_molecules(data, rows)
    jz = jacobian_spectral_norms(model, elements, coords, iterations=20)
    turn = frame_turns(model, elements, coords, [args.sigma], args.draws, args.seed)[0]
    steep = jz > np.percentile(jz, 95)
    out = {"model": str(args.model or "bundled"), "n": int(len(rows)), "split": origin,
           "jacobian_p50": float(np.median(jz)), "jacobian_p99": float(np.percentile(jz, 99)), "jacobian_max": float(jz.max()),
           "frame_turn_mean": float(turn.mean()), "frame_turn_median": float(np.median(turn)),
           "frame_turn_p95": float(np.percentile(turn, 95)), "spearman_jacobian_turn": float(spearmanr(jz, turn)[0]),
           "frame_turn_mean_steepest_5pct": float(turn[steep].mean()), "frame_turn_mean_rest": float(turn[~steep].mean())}
    print(f"model {out['model']}; {out['n']} molecules ({origin})")
    print(f"|dz/dx| p50 {out['jacobian_p50']:.1f}, p99 {out['jacobian_p99']:.1f}, max {out['jacobian_max']:.0f} per Å")
    print(f"frame turn |R(x+e) - R(x)|_F^2 at {args.sigma} Å: mean {out['frame_turn_mean']:.3f}, median "
          f"{out['frame_turn_median']:.4f}, p95 {out['frame_turn_p95']:.3f}; Spearman with |dz/dx| "
          f"{out['spearman_jacobian_turn']:.3f}; mean on the steepest 5 % {out['frame_turn_mean_steepest_5pct']:.3f} "
          f"vs {out['frame_turn_mean_rest']:.3f}")
    import copy

    model64 = copy.deepcopy(model).double()
    details = []
    for k in np.argsort(-jz)[: args.top]:
        d = steepest_directions(model64, elements[k], np.asarray(coords[k], np.float64))
        d.update(largest_flip(model, elements[k], coords[k], args.sigma))
        details.append({"qm9_key": int(data.keys[rows[k]]), **d})
        print(f"  key {details[-1]['qm9_key']:6d}: |dz/dx| {d['jz1']:7.1f} (2nd {d['jz2']:5.1f}), |dR/dx| {d['jr1']:6.1f}, "
              f"|cos(top z direction, top R direction)| {d['cos']:.3f}; largest turn of 16 draws {d['largest_turn']:.2f}, "
              f"canonical poses {d['poses_apart']:.2f} Å apart ({d['poses_apart_matched']:.2f} after matching atoms)")
    out["steepest"] = details
    print(f"total {time.time() - t0:.1f} s wall ({args.threads} thread(s))")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
