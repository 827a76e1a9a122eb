"""Does the code track conformers, and what holds the conformer figures back? One line per figure.

    python bench/conformer_diagnostics.py --model CKPT --ensembles ENSEMBLES.npz [--threads 1]

For every pair of conformers of one molecule in ENSEMBLES (same atom order): aligned rmsd of the
inputs and of their reconstructions, ‖Δz‖, and whether the two are one structure up to relabelled
atoms (symmetry-aware rmsd under ``molgiae.automorphism.SAME_STRUCTURE_RMSD``; a mirror image of a
chiral conformer is a distinct structure). Prints the reconstruction error, the
pair-rmsd distribution, Spearman ρ of input vs reconstructed pair rmsd (does the decoder resolve
conformers?) and of ‖Δz‖ vs each, and the variance of log(‖Δz‖/rmsd) — the conformer-metric term's
quantity — with and without relabelled pairs; then the same against the symmetry-aware rmsd
(``molgiae.quality.symmetric_rmsds``). Not a test (docs/method.md, section 10).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--ensembles", type=Path, required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch
    from scipy.stats import spearmanr

    from molgiae.checkpoint import load_checkpoint, model_from_checkpoint
    from molgiae.data.batching import make_batch, size_sorted_batches
    from molgiae.data.loading import load_conformers
    from molgiae.model import molecule_scores
    from molgiae.automorphism import SAME_STRUCTURE_RMSD
    from molgiae.quality import conformer_pairs, set_molecules, symmetric_rmsds

    torch.set_num_threads(args.threads)
    model, config = model_from_checkpoint(load_checkpoint(args.model))
    model.eval()
    ens = load_conformers([args.ensembles])
    ok = [i for i in range(len(ens)) if np.isin(ens.elements[ens.ptr[i]:ens.ptr[i + 1]], config.model.elements).all()
          and ens.ptr[i + 1] - ens.ptr[i] <= config.model.max_atoms]
    elements, coords = set_molecules(ens, np.asarray(ok))
    codes = np.zeros((len(ok), config.model.embedding_dim))
    recon, error = [None] * len(ok), np.zeros(len(ok))
    for ids in size_sorted_batches([len(e) for e in elements], 64):
        mols = make_batch([elements[i] for i in ids], [coords[i] for i in ids])
        with torch.no_grad():
            out = model(mols)
        rmsd, _ = molecule_scores(out, mols)
        for k, i in enumerate(ids):
            recon[i], error[i] = out.coords[k, :len(elements[i])].double().numpy(), float(rmsd[k])
            codes[i] = out.encoding.z[k].double().numpy()
    keys = np.asarray(ens.keys)[ok]
    dz, rmsd, _ = conformer_pairs(codes, keys, coords)
    _, rmsd_rec, _ = conformer_pairs(codes, keys, recon)
    sym = symmetric_rmsds(keys, coords, elements)
    same = sym < SAME_STRUCTURE_RMSD  # one structure: a copy or a relabelled copy (mirror images are apart)
    log_ratio = np.log(np.maximum(dz, 1e-6)) - np.log(rmsd)
    keep = ~same & (rmsd >= 0.05)
    print(f"model {args.model}; {len(ok)} conformers, {len(dz)} pairs of {args.ensembles.name}")
    print(f"reconstruction rmsd mean {error.mean():.3f}, median {np.median(error):.3f} Å")
    print(f"pair rmsd median {np.median(rmsd):.3f} (p10 {np.percentile(rmsd, 10):.3f}, p90 {np.percentile(rmsd, 90):.3f}) Å; "
          f"{np.mean(rmsd > np.median(error)):.2f} of pairs above the median reconstruction error")
    print(f"Spearman: input vs reconstructed pair rmsd {spearmanr(rmsd, rmsd_rec)[0]:.3f}; ‖Δz‖ vs input rmsd "
          f"{spearmanr(dz, rmsd)[0]:.3f}; ‖Δz‖ vs reconstructed rmsd {spearmanr(dz, rmsd_rec)[0]:.3f}")
    print(f"pairs that are one structure up to relabelled atoms: {same.sum()} ({same.mean():.1%}); their ‖Δz‖ / median ‖Δz‖ "
          f"{np.median(dz[same]) / np.median(dz) if same.any() else float('nan'):.3f}; ρ without them "
          f"{spearmanr(dz[~same], rmsd[~same])[0]:.3f}")
    print(f"variance of log(‖Δz‖/rmsd): all pairs {log_ratio.var():.3f}, without relabelled ones {log_ratio[keep].var():.3f}; "
          f"variance of log rmsd {np.log(rmsd[keep]).var():.3f}")
    apart = sym >= 0.05
    sym_ratio = np.log(np.maximum(dz, 1e-6)) - np.log(np.maximum(sym, 1e-6))
    print(f"symmetry-aware rmsd (min over atom relabellings keeping the bond graph): median {np.median(sym):.3f} Å, "
          f"{np.mean(~apart):.1%} of pairs under 0.05 Å; Spearman ‖Δz‖ vs it {spearmanr(dz, sym)[0]:.3f}, "
          f"reconstructed vs it {spearmanr(sym, rmsd_rec)[0]:.3f}")
    print(f"against it (pairs ≥ 0.05 Å): variance of log(‖Δz‖/rmsd) {sym_ratio[apart].var():.3f}, of log rmsd "
          f"{np.log(sym[apart]).var():.3f}")


if __name__ == "__main__":
    main()
