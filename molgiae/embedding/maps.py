"""2-D maps of an embedding file (:func:`embedding_map`: PCA or t-SNE scatter PNG).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from molgiae.embedding.hdf5 import ROW_DATASETS
from molgiae.outputs import atomic_savefig, refuse_input_as_output


def project_2d(x: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """x [N, D] → (points [N, 2], axis labels). PCA via numpy SVD; t-SNE via scikit-learn."""
    x = np.asarray(x, dtype=np.float64)
    if method == "pca":
        centred = x - x.mean(0)
        _, s, vt = np.linalg.svd(centred, full_matrices=False)
        var = np.pad(s ** 2 / max(float((s ** 2).sum()), 1e-300), (0, 2))
        pts = np.pad(centred @ vt[:2].T, ((0, 0), (0, max(0, 2 - len(vt)))))
        return pts, (f"PC1 ({100 * var[0]:.1f} % of variance)", f"PC2 ({100 * var[1]:.1f} % of variance)")
    if method == "tsne":
        try:
            from sklearn.manifold import TSNE
        except ImportError:
            raise RuntimeError("t-SNE needs scikit-learn, which is not installed: pip install scikit-learn "
                               "(or use --method pca)") from None
        perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
        tsne = TSNE(n_components=2, perplexity=perplexity, random_state=seed, init="pca")
        return tsne.fit_transform(x), ("t-SNE 1", "t-SNE 2")
    raise ValueError(f"unknown method {method!r}: use pca or tsne")


def _color_values(f, color_by: str | None, labels_csv: Path | None, names: np.ndarray) -> np.ndarray | None:
    """Per-row values [N] to colour by: a labels-CSV column joined on ``name``, or an HDF5 dataset."""
    if color_by is None:
        return None
    if labels_csv is not None:
        import pandas as pd

        labels = pd.read_csv(labels_csv)
        if "name" not in labels.columns or color_by not in labels.columns:
            raise ValueError(f"{labels_csv} needs the columns 'name' and {color_by!r}; it has {list(labels.columns)}")
        table = labels.drop_duplicates("name").set_index("name")[color_by]
        return table.reindex(pd.Index(names)).to_numpy()
    if color_by not in f or f[color_by].ndim != 1 or f[color_by].shape[0] != len(names):
        per_row = [k for k in ROW_DATASETS if k != "embedding"]
        raise ValueError(f"--color-by {color_by!r}: not a per-row dataset of the file; use one of {per_row} "
                         f"or a column of a --labels CSV")
    ds = f[color_by]
    return ds.asstr()[:] if ds.dtype.kind == "O" else ds[:]


def embedding_map(h5: Path, out_png: Path, method: str = "pca", color_by: str | None = None,
                  labels_csv: Path | None = None, max_points: int = 100_000, seed: int = 0) -> int:
    """2-D map (PCA or t-SNE) of an embedding file as a scatter PNG; returns points drawn.

    ``color_by``: a column of ``labels_csv`` (joined on ``name``; missing labels grey) or a
    per-row dataset of the file such as ``n_atoms``. Above ``max_points`` rows a seeded random
    subset is drawn.
    """
    import h5py
    import matplotlib

    refuse_input_as_output(out_png, [h5] + ([labels_csv] if labels_csv is not None else []))
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with h5py.File(h5, "r") as f:
        if "embedding" not in f:
            raise ValueError(f"{h5} has no 'embedding' dataset; is it a molgiae embed output?")
        n = f["embedding"].shape[0]
        if n < 2:
            raise ValueError(f"{h5} has {n} embedding(s); a map needs at least 2")
        ids = np.arange(n)
        if n > max_points:
            ids = np.sort(np.random.default_rng(seed).choice(n, max_points, replace=False))
        x = f["embedding"][ids] if len(ids) < n else f["embedding"][:]
        names = f["name"].asstr()[ids] if len(ids) < n else f["name"].asstr()[:]
        values = _color_values(f, color_by, labels_csv, np.asarray(names))
        if values is not None and len(ids) < n and labels_csv is None:
            values = values[ids]
    pts, (xlabel, ylabel) = project_2d(x, method, seed)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=120)
    _scatter(ax, pts, values, color_by)
    ax.set_title(f"{Path(h5).name}: {method.upper() if method == 'pca' else 't-SNE'} of {len(pts):,} embeddings")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    atomic_savefig(fig, out_png)
    return len(pts)


def _scatter(ax, pts: np.ndarray, values: np.ndarray | None, label: str | None) -> None:
    """Scatter pts [N, 2]; numeric values → colour bar, else ≤ 20 categories → legend."""
    size = float(np.clip(2000 / np.sqrt(len(pts)), 1, 30))
    if values is None:
        ax.scatter(pts[:, 0], pts[:, 1], s=size, lw=0, alpha=0.7, rasterized=True)
        return
    numeric = np.asarray(values)
    if numeric.dtype.kind in "biuf":
        numeric = numeric.astype(float)
        missing = ~np.isfinite(numeric)
        ax.scatter(pts[missing, 0], pts[missing, 1], s=size, lw=0, c="lightgrey", rasterized=True)
        sc = ax.scatter(pts[~missing, 0], pts[~missing, 1], s=size, lw=0, c=numeric[~missing], cmap="viridis",
                        alpha=0.8, rasterized=True)
        ax.figure.colorbar(sc, ax=ax, label=label)
        return
    cats = np.array(["(none)" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for v in values])
    uniq, counts = np.unique(cats, return_counts=True)
    top = set(uniq[np.argsort(-counts)[:20]])
    for cat in sorted(top):
        sel = cats == cat
        ax.scatter(pts[sel, 0], pts[sel, 1], s=size, lw=0, alpha=0.8, label=cat, rasterized=True)
    rest = ~np.isin(cats, list(top))
    if rest.any():
        ax.scatter(pts[rest, 0], pts[rest, 1], s=size, lw=0, c="lightgrey", label="(other)", rasterized=True)
    ax.legend(title=label, fontsize="small", markerscale=2, loc="best")
