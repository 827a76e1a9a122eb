"""Pretrained vs from-scratch fine-tuning on identical splits, seeds and settings.

For every seed, :func:`compare` runs :func:`molgiae.finetune.loop.finetune` twice into
``OUT/pretrained-seed<S>`` and ``OUT/scratch-seed<S>``: once starting from the autoencoder's
encoder, once from a fresh initialisation of the same architecture. Both runs see the same
split (the pretraining run's), the same training subset, the same head initialisation, the
same batch order and the same hyperparameters. It writes ``compare.csv`` (one row per run),
``compare.md`` (the runs and a mean ± std summary) and ``compare.png`` (validation curves).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from molgiae.data.conformers import ConformerSet
from molgiae.data.targets import get_target
from molgiae.finetune.loop import finetune, finish_curve_figure
from molgiae.outputs import atomic_csv, atomic_write_text

COMPARE_COLUMNS = ("target", "fraction", "seed", "init", "frozen", "n_train", "n_val", "n_test", "epochs_run",
                   "best_epoch", "val_mae", "test_mae", "report_unit", "wall_seconds")


def summarize(rows: Sequence[dict]) -> list[dict]:
    """Mean ± sample std of test MAE (report unit) per (target, fraction, init)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["fraction"], r["init"]), []).append(r)
    out = []
    for (target, fraction, init), rs in groups.items():
        mae = np.array([r["test_mae"] for r in rs], dtype=float)
        out.append({
            "target": target, "fraction": fraction, "init": init, "n_seeds": len(rs),
            "n_train": rs[0]["n_train"], "test_mae_mean": float(np.mean(mae)),
            "test_mae_std": float(np.std(mae, ddof=1)) if len(mae) > 1 else float("nan"),
            "report_unit": rs[0]["report_unit"],
        })
    return out


def _fmt(mean: float, std: float) -> str:
    return f"{mean:.1f}" if not np.isfinite(std) else f"{mean:.1f} ± {std:.1f}"


def markdown_table(rows: Sequence[dict], summary: Sequence[dict]) -> str:
    lines = ["| target | fraction | seed | init | frozen | n_train | epochs run | best epoch | val MAE | test MAE | unit |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['target']} | {r['fraction']:g} | {r['seed']} | {r['init']} | {r['frozen']} | {r['n_train']} "
                     f"| {r['epochs_run']} | {r['best_epoch']} | {r['val_mae']:.2f} | {r['test_mae']:.2f} | {r['report_unit']} |")
    lines += ["", "| target | fraction | n_train | seeds | pretrained test MAE | scratch test MAE | unit |",
              "|---|---:|---:|---:|---:|---:|---|"]
    by_key: dict[tuple, dict[str, dict]] = {}
    for s in summary:
        by_key.setdefault((s["target"], s["fraction"]), {})[s["init"]] = s
    for (target, fraction), d in by_key.items():
        p, s = d.get("pretrained"), d.get("scratch")
        any_ = p or s
        lines.append(
            f"| {target} | {fraction:g} | {any_['n_train']} | {any_['n_seeds']} "
            f"| {_fmt(p['test_mae_mean'], p['test_mae_std']) if p else '–'} "
            f"| {_fmt(s['test_mae_mean'], s['test_mae_std']) if s else '–'} | {any_['report_unit']} |")
    return "\n".join(lines) + "\n"


def write_compare_plot(histories: Sequence[tuple[str, int, list[dict]]], path: Path, report_unit: str,
                       report_scale: float, title: str = "") -> None:
    """Validation MAE per epoch: pretrained (solid, C0) and scratch (dashed, C1), one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    seen = set()
    for init, seed, hist in histories:
        style = {"color": "C0" if init == "pretrained" else "C1", "ls": "-" if init == "pretrained" else "--"}
        label = init if init not in seen else None
        seen.add(init)
        ep = [r["epoch"] for r in hist]
        ax[0].plot(ep, [r["train_loss"] for r in hist], marker="o", ms=3, label=label, **style)
        ax[1].plot(ep, [r["val_mae"] * report_scale for r in hist], marker="o", ms=3, label=label, **style)
    ax[1].legend()
    finish_curve_figure(fig, ax, path, report_unit, title)


def compare(
    data: ConformerSet,
    target: str,
    out_dir: str | Path,
    pretrained: str | Path,
    *,
    seeds: Sequence[int] = (0,),
    freeze_encoder: bool = False,
    encoder_lr_ratio: float = 1.0,
    atom_reference: str = "element",
    fraction: float = 1.0,
    epochs: int = 30,
    device: str = "auto",
    batch_size: int = 32,
    lr: float = 5e-4,
    patience: int = 10,
    max_val: int = 0,
    max_test: int = 0,
    quiet: bool = False,
    metadata: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    """Run pretrained and scratch fine-tuning for each seed; write compare.csv/.md/.png to ``out_dir``.

    The scratch runs take their architecture (and split) from ``pretrained``. ``freeze_encoder``
    applies to both (a frozen random encoder is the usual "random features" baseline);
    ``encoder_lr_ratio`` (the encoder's learning rate over the head's) to the pretrained runs only:
    a scratch encoder learns at the full rate.
    Returns one row per run (columns ``COMPARE_COLUMNS``).
    """
    spec = get_target(target)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows, histories = [], []
    for seed in seeds:
        for init in ("pretrained", "scratch"):
            res = finetune(data, target, out / f"{init}-seed{seed}", pretrained=pretrained, scratch=init == "scratch",
                           freeze_encoder=freeze_encoder, fraction=fraction, atom_reference=atom_reference,
                           encoder_lr_ratio=encoder_lr_ratio if init == "pretrained" else 1.0, epochs=epochs, seed=seed, device=device,
                           batch_size=batch_size, lr=lr, patience=patience, max_val=max_val, max_test=max_test,
                           quiet=quiet, metadata=metadata, log=log)
            r = res.result
            rows.append({"target": target, "fraction": fraction, "seed": seed, "init": init, "frozen": r["frozen"],
                         "n_train": r["n_train"], "n_val": r["n_val"], "n_test": r["n_test"],
                         "epochs_run": r["epochs_run"], "best_epoch": r["best_epoch"], "val_mae": r["val_mae"],
                         "test_mae": r["test_mae"], "report_unit": r["report_unit"], "wall_seconds": r["wall_seconds"]})
            histories.append((init, seed, res.history))
    atomic_csv(out / "compare.csv", COMPARE_COLUMNS, rows)

    title = f"{target}: pretrained vs scratch, fraction {fraction:g}, seeds {', '.join(map(str, seeds))}"
    atomic_write_text(out / "compare.md", f"# {title}\n\n" + markdown_table(rows, summarize(rows)))
    write_compare_plot(histories, out / "compare.png", spec.report_unit, spec.report_scale, title)
    return rows
