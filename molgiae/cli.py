"""The ``molgiae`` command line: parse, call the library, print. Heavy imports stay inside
commands so ``molgiae --help`` is instant."""
from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="molgiae: invariant embeddings of 3-D molecular conformers (SE(3) x S_n autoencoder).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


#: What an interruption leaves behind, set by the command as it learns its output.
_INTERRUPT_NOTE = ["stopped before any output was written"]


def err(msg: str) -> None:
    typer.echo(msg, err=True)


def fail(msg: str, code: int = 1) -> None:
    err(f"error: {msg}")
    raise typer.Exit(code)


def _open_model(model: Optional[Path], device: str = "cpu"):
    from molgiae.api import load_model
    from molgiae.checkpoint import CheckpointError
    from molgiae.train.distributed import select_device

    try:
        return load_model(model, device=select_device(device))
    except (CheckpointError, RuntimeError) as exc:
        fail(str(exc))


# ----------------------------------------------------------------------------- train
#: files `train` / `finetune` write into their run directory (never one of the data files)
RUN_FILES = ("config.json", "split.json", "last.pt", "best.pt", "metrics.csv", "learning_curve.png")
FINETUNE_FILES = ("metrics.csv", "result.json", "predictions.csv", "finetuned.pt", "learning_curve.png")
# ``--data A B C`` as well as ``--data A --data B``: extra positional arguments are more data paths.
MULTI_PATH = {"allow_extra_args": True}


def _with_extra_paths(ctx: typer.Context, paths: List[Path]) -> List[Path]:
    extra = [a for a in ctx.args if a.startswith("-")]
    if extra:
        fail(f"unknown option(s): {' '.join(extra)}")
    return list(paths) + [Path(a) for a in ctx.args]


def _training_data(data: list[Path], out: Path, cfg, announce: bool):
    """(the conformers of ``data``, their molecule-level split) after checking the run directory
    ``out``; bad records are reported and skipped."""
    from molgiae.data.loading import load_conformers
    from molgiae.training import training_splits

    missing = [str(p) for p in data if not p.exists()]
    if missing:
        fail(f"data file(s) not found: {', '.join(missing)}")
    _check_run_dir(out, data, RUN_FILES)
    try:
        dataset = load_conformers(data, on_error=lambda e: err(f"skipped: {e}"))
    except ValueError as exc:
        fail(str(exc))
    splits, too_big = training_splits(dataset, cfg)
    if too_big:
        err(f"note: {too_big} training molecules have more than max_atoms={cfg.model.max_atoms} atoms; left out")
    if announce:
        err(f"{len(dataset)} conformers: {len(splits['train'])} train, {len(splits['val'])} val, "
            f"{len(splits['test'])} test (split seed {cfg.train.split_seed})")
    return dataset, splits


def _config_options(section, given: dict) -> dict:
    """The command-line values (``None`` = not given) named like the fields of a config section."""
    return {f.name: given[f.name] for f in dataclasses.fields(section) if f.name in given}


@app.command(context_settings=MULTI_PATH)
def train(
    ctx: typer.Context,
    data: List[Path] = typer.Option(..., "--data", help="QM9 npz files or any molecule files (SDF, XYZ, ...)."),
    out: Path = typer.Option(..., "--out", help="Run directory (config.json, last.pt, best.pt, metrics.csv, ...)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: 10)."),
    batch_size: Optional[int] = typer.Option(None, help="Molecules per batch (default: 64)."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate (default: 5e-4)."),
    seed: Optional[int] = typer.Option(None, help="Random seed (default: 0)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/last.pt (its config.json wins)."),
    features: Optional[int] = typer.Option(None, help="Feature width F (default: 64)."),
    embedding_dim: Optional[int] = typer.Option(None, help="Size of the invariant code z (default: 128)."),
    encoder_layers: Optional[int] = typer.Option(None, help="Encoder PaiNN blocks (default: 3)."),
    decoder_layers: Optional[int] = typer.Option(None, help="Decoder blocks (default: 3)."),
    decoder: Optional[str] = typer.Option(None, help="equivariant | transformer (default: equivariant)."),
    max_atoms: Optional[int] = typer.Option(None, help="Largest molecule the decoder reconstructs (default: 29)."),
    update_product: Optional[str] = typer.Option(None, help="bounded | plain: the update block's ⟨Uv, Vv⟩ (default: bounded)."),
    code_pooling: Optional[str] = typer.Option(None, help="mean_sum | mean: how atoms pool into z (default: mean_sum)."),
    coord_noise: Optional[float] = typer.Option(None, help="Denoising: std (Å) of Gaussian noise on the input "
                                                "coordinates; the target stays clean (default: 0)."),
    weight_decay: Optional[float] = typer.Option(None, help="AdamW weight decay (default: 0)."),
    lambda_smooth: Optional[float] = typer.Option(None, "--lambda-smooth", help="Weight of the code-smoothness term: "
                                                  "how far --coord-noise moves z, over the batch's spread of z (default: 0)."),
    lambda_smooth_local: Optional[float] = typer.Option(None, "--lambda-smooth-local", help="Weight of the local "
                                                        "code-smoothness term: a second encoder pass at "
                                                        "--smooth-sigma noise (default: 0)."),
    smooth_sigma: Optional[float] = typer.Option(None, "--smooth-sigma", help="Noise (Å) of the local smoothness "
                                                 "term's pass (default: 0.01)."),
    noise_head: Optional[bool] = typer.Option(None, "--noise-head/--no-noise-head", help="A per-atom head "
                                              "that predicts the input noise (default: off)."),
    lambda_denoise: Optional[float] = typer.Option(None, "--lambda-denoise", help="Weight of the atom-level "
                                                   "denoising term: the noise head predicts --coord-noise's noise "
                                                   "(default: 0)."),
    lambda_conformer: Optional[float] = typer.Option(None, "--lambda-conformer", help="Weight of the "
                                                     "conformer-metric term: for conformers of one molecule in a "
                                                     "batch, |z_a - z_b| proportional to their aligned rmsd "
                                                     "(default: 0; needs multi-conformer data)."),
    conformer_pairs: Optional[int] = typer.Option(None, "--conformer-pairs", help="With --lambda-conformer: at "
                                                  "least this many conformer pairs per batch, adding multi-conformer "
                                                  "molecules of the batch's sizes (default: 0, only those it holds)."),
    lambda_separation: Optional[float] = typer.Option(None, "--lambda-separation", help="Weight of the "
                                                      "conformer-separation term: each conformer's partner nearer "
                                                      "in z than any other molecule of the batch (default: 0; "
                                                      "needs --lambda-conformer)."),
    lambda_frame: Optional[float] = typer.Option(None, "--lambda-frame", help="Weight of the frame-steadiness "
                                                 "term: how far --coord-noise turns the predicted rotation "
                                                 "(default: 0; needs --coord-noise)."),
    cpu_bf16: Optional[bool] = typer.Option(None, "--cpu-bf16/--no-cpu-bf16", help="bf16 autocast on the CPU "
                                            "(as on CUDA; faster on CPUs with AMX / AVX-512 BF16; default: off)."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the encoder "
                                           "(~1.3x faster CPU steps after a ~2-min compile; default: off)."),
    init_from: Optional[Path] = typer.Option(None, "--init-from", help="Start from this checkpoint's weights "
                                             "(same parameter shapes; fresh optimizer and schedule)."),
    max_molecules: Optional[int] = typer.Option(None, help="Train on a seeded subset of this many molecules."),
    val_fraction: Optional[float] = typer.Option(None, help="Validation fraction of molecules (default: 0.05)."),
    test_fraction: Optional[float] = typer.Option(None, help="Test fraction of molecules (default: 0.05)."),
    split_seed: Optional[int] = typer.Option(None, help="Seed of the molecule-level split (default: 0)."),
    time_limit: Optional[float] = typer.Option(None, help="Stop cleanly after this many minutes of training, counted over all resumes "
                                                "(a run resumed after 60 min with --time-limit 90 trains 30 more)."),
    checkpoint_every: Optional[int] = typer.Option(None, help="Steps between last.pt writes (default: 500)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    conformer_sampling: Optional[str] = typer.Option(None, "--conformer-sampling", help="all | uniform | boltzmann: "
                                                     "every conformer per epoch, or one per molecule [all]."),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader processes building batches (default: 0)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
):
    """Train the autoencoder; writes checkpoints, metrics.csv and learning_curve.png to OUT.

    Multi-GPU / multi-node: launch with torchrun (`torchrun --nproc_per_node=K -m molgiae train ...`);
    --batch-size is then the global batch, split across the K processes. Only rank 0 writes OUT.
    """
    import torch

    from molgiae.checkpoint import CheckpointError
    from molgiae.config import ModelConfig, TrainConfig
    from molgiae.training import run_config
    from molgiae.training import train as run_training

    data = _with_extra_paths(ctx, data)
    if threads:
        torch.set_num_threads(threads)
    given = {**locals(), "time_limit_minutes": time_limit, "init_from": str(init_from) if init_from else None}
    try:
        cfg = run_config(out, resume).with_options(_config_options(ModelConfig, given),
                                                   _config_options(TrainConfig, given))
    except ValueError as exc:
        fail(str(exc))
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 talks

    dataset, splits = _training_data(data, out, cfg, announce=not quiet and rank0)
    meta = {"data": [Path(p).name for p in data], "split_seed": cfg.train.split_seed}
    try:
        state = run_training(cfg, dataset, splits, out, resume=resume, quiet=quiet, metadata=meta)
    except (ValueError, CheckpointError) as exc:
        fail(str(exc))
    if rank0:
        typer.echo(f"done: {state.epoch} epochs, {state.step} steps, best val rmsd {state.best_val:.3f} Å; "
                   f"checkpoints in {out}")


# ----------------------------------------------------------------------------- evaluate
@app.command(context_settings=MULTI_PATH)
def evaluate(
    ctx: typer.Context,
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint file or bundled model name (default: the bundled default model)."),
    data: List[Path] = typer.Option(..., "--data", help="QM9 npz or molecule files."),
    split: str = typer.Option("all", help="all | test | val | train: molecules of this split of the checkpoint."),
    limit: Optional[int] = typer.Option(None, help="Evaluate at most N molecules (seeded choice)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the summary here too."),
    batch_size: int = typer.Option(64),
    device: str = typer.Option("cpu"),
    ensembles: Optional[Path] = typer.Option(None, "--ensembles", help="Conformer-ensemble file (e.g. the "
                                             "molgiae-conformers npz): adds conformer awareness (Spearman ρ of "
                                             "‖Δz‖ vs aligned rmsd, sibling-NN rate)."),
    embedding_metrics: bool = typer.Option(True, "--embedding-metrics/--no-embedding-metrics",
                                           help="Add the `embedding` section: noise robustness, Jacobian norms, "
                                                "linear probe (labelled data), conformer awareness (--ensembles)."),
    quality_molecules: int = typer.Option(1000, "--quality-molecules", min=2, help="Molecules of the split for "
                                          "noise robustness (the probe fits 1,000 and tests 4,000 of the split)."),
    jacobian_molecules: int = typer.Option(200, "--jacobian-molecules", min=1, help="Molecules for ‖∂z/∂x‖₂."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Reconstruction quality: rmsd (hard P, predicted R and t, no alignment), element accuracy,
    aligned rmsd (diagnostic), invariance error; symmetric molecules reported separately. Then the
    invariant code's quality (the `embedding` section, on the whole split; --limit does not apply)."""
    from molgiae.data.loading import load_conformers
    from molgiae.data.split import seeded_subset
    from molgiae.metrics import evaluation_rows, invariance_error, score_molecules, summarize
    from molgiae.outputs import atomic_write_text

    data = _with_extra_paths(ctx, data)
    m = _open_model(model, device)
    try:
        dataset = load_conformers(data, on_error=lambda e: err(f"skipped: {e}"))
    except ValueError as exc:
        fail(str(exc))
    pool = evaluation_rows(dataset, m.config, split)
    ids = seeded_subset(pool, limit)
    if ensembles is not None and not ensembles.is_file():
        fail(f"ensemble file not found: {ensembles}")
    if len(ids) == 0:
        fail("no molecules to evaluate (check --split and the model's vocabulary / max_atoms)")
    progress = None
    if not quiet:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task("evaluate", total=len(ids))
        progress = lambda k: bar.advance(task, k)  # noqa: E731
    scores = score_molecules(m.model, dataset, ids, batch_size, m.device, aligned=True, progress=progress)
    if progress:
        bar.stop()
    inv = invariance_error(m.model, dataset, ids[:64], device=m.device)
    summary = summarize(scores, inv)
    summary["model"] = str(m.path)
    summary["split"] = split
    if embedding_metrics:
        summary["embedding"] = _embedding_section(m, dataset, pool, ensembles, quality_molecules, jacobian_molecules,
                                                  batch_size, quiet)
    text = json.dumps(summary, indent=2)
    typer.echo(text)
    if json_out:
        atomic_write_text(json_out, text + "\n")


def _embedding_section(m, dataset, pool, ensembles: Optional[Path], n_noise: int, n_jacobian: int,
                       batch_size: int, quiet: bool) -> dict:
    from molgiae.data.loading import load_conformers
    from molgiae.quality import embedding_metrics, summary_lines

    ens = None
    if ensembles is not None:
        try:
            ens = load_conformers([ensembles], on_error=lambda e: None if quiet else err(f"skipped: {e}"))
        except ValueError as exc:
            fail(str(exc))
    section = embedding_metrics(m.model, dataset, pool, ens, n_noise=n_noise, n_jacobian=n_jacobian,
                                batch_size=batch_size, device=m.device, log=None if quiet else err)
    if not quiet:
        for line in summary_lines(section):
            err(line)
    return section


# ----------------------------------------------------------------------------- info
@app.command()
def info(model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint file or bundled model name (default: the bundled default model).")):
    """Print a model's card: data, split, training, size and measured metrics."""
    m = _open_model(model)
    meta = m.metadata
    card = {
        "checkpoint": str(m.path),
        "sha256": m.sha256,
        "parameters": sum(p.numel() for p in m.model.parameters()),
        "embedding_dim": m.embedding_dim,
        "elements": list(m.elements),
        "max_atoms": m.max_atoms,
        "decoder": m.config.model.decoder,
        **{k: v for k, v in meta.items()},
    }
    def show(key: str, value, indent: int = 0) -> None:
        pad = " " * indent
        if isinstance(value, dict):
            typer.echo(f"{pad}{key}:")
            for k, v in value.items():
                show(k, v, indent + 2)
        else:
            text = json.dumps(value) if isinstance(value, list) else (f"{value:.4g}" if isinstance(value, float) else value)
            typer.echo(f"{pad}{key}: {text}")

    for k, v in card.items():
        show(k, v)


# ----------------------------------------------------------------------------- embed / reconstruct / merge / map
_INPUT_HELP = ("Molecule files or glob patterns: .sdf .sd .mol .xyz .extxyz (optionally .gz), .smi .csv, "
               "QM9 .npz, .tar(.gz/.bz2/.xz) of xyz, .pdb .cif .traj .json.")


class _Feedback:
    """Progress bar (rich, on stderr) and per-record error lines for the batch commands."""

    def __init__(self, label: str, quiet: bool):
        self.quiet = quiet
        self.bar = None
        if not quiet:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self.bar = Progress(SpinnerColumn(), TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                TextColumn("records"), TimeElapsedColumn(),
                                console=Console(stderr=True), transient=True)
            self.task = self.bar.add_task(label, total=None)

    def __enter__(self):
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False

    def progress(self, k: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, k)

    def on_error(self, error) -> None:
        if not self.quiet:
            err(f"skipped: {error}")


def _reader_options(num_conformers: int, seed: int, smiles_column: Optional[str]) -> dict:
    if num_conformers < 1:
        raise typer.BadParameter("must be >= 1", param_hint="--num-conformers")
    return {"num_conformers": num_conformers, "seed": seed, "smiles_column": smiles_column}


def _check_out_dir(out: Path, inputs=()) -> None:
    """A usable output path that is none of the inputs (same file, link or hard link)."""
    from molgiae.outputs import OutputIsInputError, refuse_input_as_output

    if out.is_dir():
        fail(f"output path is a directory: {out}")
    if not out.parent.is_dir():
        fail(f"output directory does not exist: {out.parent}")
    try:
        refuse_input_as_output(out, inputs)
    except OutputIsInputError as exc:
        fail(str(exc))
    state = "an earlier file there is unchanged" if out.exists() else "there is no such file"
    _INTERRUPT_NOTE[0] = f"no output was written to {out} ({state}; its temporary file was removed)"


def _check_run_dir(out: Path, data, written: tuple[str, ...]) -> None:
    """No data file is one of the files a run writes into ``out``."""
    from molgiae.outputs import OutputIsInputError, refuse_input_as_output

    for name in written:
        try:
            refuse_input_as_output(out / name, data)
        except OutputIsInputError as exc:
            fail(str(exc))
    _INTERRUPT_NOTE[0] = (f"the run in {out} stopped; last.pt (if written) is its last checkpoint, "
                          f"continue with --resume" if "last.pt" in written else
                          f"the run in {out} stopped before it finished; its files there are incomplete")


def _files_word(n: int) -> str:
    return f"{n} file" if n == 1 else f"{n} files"


@app.command()
def embed(
    inputs: List[str] = typer.Argument(..., help=_INPUT_HELP, show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output HDF5 file (replaced atomically)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint file or bundled model name (default: the bundled model)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Conformers per model call."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    shard: Optional[str] = typer.Option(None, help="I/N: embed only records whose global position p has "
                                                   "p % N == I (0-based I); merge the shards with `molgiae merge`."),
    max_atoms: int = typer.Option(500, "--max-atoms", min=1, help="Records with more atoms are skipped with a "
                                                                 "reason (memory grows with atoms²: ~0.25 GiB at 500)."),
    num_conformers: int = typer.Option(1, "--num-conformers", help="Conformers per SMILES (.smi/.csv)."),
    seed: int = typer.Option(0, help="Base seed of SMILES conformer embedding."),
    smiles_column: Optional[str] = typer.Option(None, "--smiles-column", help="SMILES column of a .csv (default: auto-detect)."),
    no_smiles: bool = typer.Option(False, "--no-smiles", help="Do not perceive SMILES from 3-D geometry "
                                                              "for records without one."),
    read_ahead: bool = typer.Option(True, "--read-ahead/--no-read-ahead",
                                    help="Read the inputs in a second process, overlapping the model."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no per-record error lines."),
):
    """Embed every conformer of the inputs into an HDF5 file of invariant codes z.

    Bad records are skipped (listed on stderr and in the file's errors table). Exit code 0 when
    at least one conformer was embedded, 1 when none was (then no file is written).
    """
    from molgiae.embedding.hdf5 import embed_to_hdf5
    from molgiae.embedding.streaming import NothingWrittenError, parse_shard

    try:
        shard_spec = parse_shard(shard) if shard else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--shard") from None
    options = _reader_options(num_conformers, seed, smiles_column)
    _check_out_dir(out, inputs)
    m = _open_model(model, device)
    with _Feedback("embed", quiet) as fb:
        try:
            s = embed_to_hdf5(m, inputs, out, batch_size=batch_size, shard=shard_spec, reader_options=options,
                              progress=fb.progress, on_error=fb.on_error, smiles=not no_smiles,
                              read_ahead=read_ahead, max_atoms=max_atoms)
        except NothingWrittenError as exc:
            s = exc.summary
    err(f"embedded {s.n_embedded} conformers from {_files_word(s.n_files)}; {s.n_failed} failed"
        + (f" (see the errors table in {out})" if s.n_embedded else ""))
    if s.n_embedded == 0:
        fail(f"nothing was embedded; {out} was not written")


@app.command()
def reconstruct(
    inputs: List[str] = typer.Argument(..., help=_INPUT_HELP, show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output SDF file (replaced atomically)."),
    canonical: bool = typer.Option(False, "--canonical", help="Write the canonical conformer (centred, the "
                                                              "model's own frame and atom order) instead of "
                                                              "the reconstruction in the input's pose and order."),
    model: Optional[Path] = typer.Option(None, "--model", help="Checkpoint file or bundled model name (default: the bundled model)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Conformers per model call."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    num_conformers: int = typer.Option(1, "--num-conformers", help="Conformers per SMILES (.smi/.csv)."),
    seed: int = typer.Option(0, help="Base seed of SMILES conformer embedding."),
    smiles_column: Optional[str] = typer.Option(None, "--smiles-column", help="SMILES column of a .csv (default: auto-detect)."),
    read_ahead: bool = typer.Option(True, "--read-ahead/--no-read-ahead",
                                    help="Read the inputs in a second process, overlapping the model."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no per-record error lines."),
):
    """Encode and decode every conformer; write the reconstructions as SDF with their rmsd.

    SD properties: molgiae_rmsd (Å vs the input, no alignment), molgiae_element_accuracy,
    molgiae_source, molgiae_record. Exit code as for `embed`.
    """
    from molgiae.embedding.reconstruct import reconstruct_to_sdf
    from molgiae.embedding.streaming import NothingWrittenError

    options = _reader_options(num_conformers, seed, smiles_column)
    _check_out_dir(out, inputs)
    m = _open_model(model, device)
    with _Feedback("reconstruct", quiet) as fb:
        try:
            s = reconstruct_to_sdf(m, inputs, out, canonical=canonical, batch_size=batch_size,
                                   reader_options=options, progress=fb.progress, on_error=fb.on_error,
                                   read_ahead=read_ahead)
        except NothingWrittenError as exc:
            s = exc.summary
    err(f"reconstructed {s.n_written} conformers from {_files_word(s.n_files)}; {s.n_failed} failed")
    if s.n_written == 0:
        fail(f"nothing was reconstructed; {out} was not written")
    typer.echo(f"rmsd mean {s.rmsd_mean:.4f} Å, median {s.rmsd_median:.4f} Å; "
               f"element accuracy {s.element_accuracy_mean:.4f} ({s.n_written} conformers, {out})")


@app.command()
def merge(
    shards: List[Path] = typer.Argument(..., help="Shard files of one `molgiae embed --shard I/N` run.",
                                        show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Merged HDF5 file."),
):
    """Merge embed shards into one file, rows in input order (as an unsharded run writes them)."""
    from molgiae.embedding.hdf5 import MergeError, merge_hdf5

    _check_out_dir(out, shards)
    try:
        s = merge_hdf5(shards, out)
    except MergeError as exc:
        fail(str(exc))
    if s.missing_shards:
        err(f"warning: shard(s) {', '.join(s.missing_shards)} missing; {out} holds only part of the run")
    err(f"merged {s.n_rows} embeddings and {s.n_errors} errors from {_files_word(s.n_files)} into {out}")


@app.command(name="map")
def map_(
    h5: Path = typer.Argument(..., help="An embedding file of `molgiae embed`.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG."),
    method: str = typer.Option("pca", help="pca | tsne (t-SNE needs scikit-learn)."),
    color_by: Optional[str] = typer.Option(None, "--color-by", help="A column of --labels (joined on name), "
                                                                   "or a dataset of the file such as n_atoms."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="CSV with a 'name' column and label columns."),
):
    """Draw a 2-D map (PCA or t-SNE) of the embeddings as a scatter PNG."""
    if method not in ("pca", "tsne"):
        raise typer.BadParameter("use pca or tsne", param_hint="--method")
    if not h5.is_file():
        fail(f"file not found: {h5}")
    if labels is not None and not labels.is_file():
        fail(f"labels file not found: {labels}")
    if labels is not None and color_by is None:
        raise typer.BadParameter("--labels needs --color-by COLUMN", param_hint="--color-by")
    _check_out_dir(out, [h5] + ([labels] if labels is not None else []))
    from molgiae.embedding.maps import embedding_map

    try:
        n = embedding_map(h5, out, method=method, color_by=color_by, labels_csv=labels)
    except (ValueError, RuntimeError, OSError) as exc:
        fail(str(exc))
    err(f"wrote {out}: {method} map of {n} embeddings")


# ----------------------------------------------------------------------------- finetune / predict
_TARGET_LIST = "mu, alpha, homo, lumo, gap, r2, zpve, U0, U, H, G, Cv"


def _check_finetune_options(fraction: float, lr: float, compare_runs: bool, scratch: bool,
                            minimums: dict[str, tuple[int, int]], atom_reference: str = "element") -> None:
    """Fail on a fine-tuning option out of range (``minimums``: option -> (value, lowest allowed))."""
    if not 0.0 < fraction <= 1.0:
        fail(f"--fraction must be in (0, 1] (a share of the training split), got {fraction}")
    for name, (value, low) in minimums.items():
        if value < low:
            fail(f"{name} must be >= {low}, got {value}")
    if not lr > 0:
        fail(f"--lr must be > 0, got {lr}")
    from molgiae.finetune.model import ATOM_REFERENCES

    if atom_reference not in ATOM_REFERENCES:
        fail(f"--atom-reference must be {' or '.join(map(repr, ATOM_REFERENCES))}, got {atom_reference!r}")
    if compare_runs and scratch:
        fail("--compare runs both the pretrained and the scratch model; drop --scratch")


def _finetune_start(pretrained: Optional[Path], scratch: bool) -> Optional[Path]:
    """The autoencoder checkpoint to fine-tune: --pretrained, else the default model (None when it
    is missing and --scratch is given)."""
    from molgiae.api import default_checkpoint_path, resolve_checkpoint

    if pretrained is not None:
        pretrained = resolve_checkpoint(pretrained)  # a path or a bundled model's name
    if pretrained is not None and not pretrained.is_file():
        fail(f"checkpoint not found: {pretrained}")
    if pretrained is None:
        default = default_checkpoint_path()
        if default.is_file():
            pretrained = default
        elif scratch:
            err(f"note: no default model ({default}); --scratch uses the default ModelConfig")
        else:
            fail(f"the default model is missing ({default}); pass --pretrained CKPT (an "
                 f"autoencoder checkpoint of `molgiae train`) or --scratch")
    return pretrained


def _finetune_data(data: List[Path], threads: Optional[int], quiet: bool):
    """Set the torch threads and load the fine-tuning data (bad records reported unless quiet)."""
    import torch

    from molgiae.data.loading import load_conformers

    if threads:
        torch.set_num_threads(threads)
    try:
        return load_conformers(data, on_error=lambda e: None if quiet else err(f"skipped: {e}"))
    except ValueError as exc:
        fail(str(exc))


@app.command(name="finetune", context_settings=MULTI_PATH)
def finetune_cmd(
    ctx: typer.Context,
    target: str = typer.Option(..., "--target", help=f"QM9 target: {_TARGET_LIST}. Energies in eV; U0/U/H/G "
                                                     "as atomization energies."),
    data: List[Path] = typer.Option(..., "--data", help="Labelled molecules: QM9 npz files (other files need "
                                                       "labels named like QM9's, in QM9's units)."),
    out: Path = typer.Option(..., "--out", help="Run directory: metrics.csv, result.json, predictions.csv, "
                                                "finetuned.pt, learning_curve.png."),
    fraction: float = typer.Option(1.0, "--fraction", help="Train on this share of the training split, in (0, 1] "
                                                           "(a seeded subset of its molecules)."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Autoencoder checkpoint whose encoder "
                                                                        "starts the run (default: the bundled model)."),
    scratch: bool = typer.Option(False, "--scratch", help="Random initialisation. Architecture and split from "
                                                          "--pretrained if given, else from the bundled model, "
                                                          "else the default ModelConfig (5 % val, 5 % test, "
                                                          "split seed 0)."),
    freeze_encoder: bool = typer.Option(False, "--freeze-encoder", help="Train only the atom-wise head."),
    encoder_lr_ratio: float = typer.Option(1.0, "--encoder-lr-ratio", help="The pretrained encoder's learning "
                                           "rate as a fraction of --lr (the head's); scratch runs use 1."),
    atom_reference: str = typer.Option("element", "--atom-reference", help="Extensive targets (U0, alpha, Cv, ...): "
                                       "'element' fits a per-element offset to the training labels by least "
                                       "squares on element counts; 'mean' uses one per-atom mean."),
    epochs: int = typer.Option(30, "--epochs", help="Epochs (warm-up + cosine schedule over them)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the head initialisation, training subset and batch order."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    batch_size: int = typer.Option(32, "--batch-size", help="Molecules per batch."),
    lr: float = typer.Option(5e-4, "--lr", help="Peak learning rate (AdamW)."),
    patience: int = typer.Option(10, "--patience", help="Early stopping after this many epochs without a better "
                                                        "validation MAE (0 = off)."),
    max_val: int = typer.Option(0, "--max-val", help="Validate on a fixed subset of at most N molecules (0 = all)."),
    max_test: int = typer.Option(0, "--max-test", help="Test on a fixed subset of at most N molecules (0 = all)."),
    compare_runs: bool = typer.Option(False, "--compare", help="Run pretrained and scratch on identical splits and "
                                                               "seeds into OUT/pretrained-seedS and OUT/scratch-seedS; "
                                                               "writes compare.csv, compare.md and compare.png."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or per-epoch lines."),
):
    """Fine-tune the pretrained encoder (or train from scratch) on one QM9 property.

    Uses the pretraining run's molecule-level split, so the autoencoder's test molecules are
    never trained on. Test MAE is reported in meV for energies.
    """
    from molgiae.data.targets import get_target

    if compare_runs and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("--compare runs as one process; launch pretrained and --scratch runs under torchrun separately")
    data = _with_extra_paths(ctx, data)
    try:
        spec = get_target(target)
    except ValueError as exc:
        fail(str(exc))
    _check_finetune_options(fraction, lr, compare_runs, scratch, {"--epochs": (epochs, 1), "--batch-size": (batch_size, 1),
                            "--patience": (patience, 0), "--max-val": (max_val, 0), "--max-test": (max_test, 0)},
                            atom_reference)
    pretrained = _finetune_start(pretrained, scratch)
    missing = [str(p) for p in data if not p.exists()]
    if missing:
        fail(f"data file(s) not found: {', '.join(missing)}")
    _check_run_dir(out, data, FINETUNE_FILES)
    from molgiae.checkpoint import CheckpointError

    dataset = _finetune_data(data, threads, quiet)
    options = dict(fraction=fraction, epochs=epochs, device=device, batch_size=batch_size, lr=lr, patience=patience,
                   freeze_encoder=freeze_encoder, max_val=max_val, max_test=max_test, quiet=quiet,
                   metadata={"data": [Path(p).name for p in data]}, encoder_lr_ratio=encoder_lr_ratio if not scratch else 1.0,
                   atom_reference=atom_reference)
    try:
        if compare_runs:
            from molgiae.finetune.compare import compare, markdown_table, summarize

            rows = compare(dataset, target, out, pretrained, seeds=[seed], **options)
            typer.echo(markdown_table(rows, summarize(rows)), nl=False)
            typer.echo(f"compare.csv, compare.md and compare.png in {out}")
            return
        from molgiae.finetune.loop import finetune as run_finetune

        res = run_finetune(dataset, target, out, pretrained=pretrained, scratch=scratch, seed=seed, **options)
    except (ValueError, CheckpointError) as exc:
        fail(str(exc))
    r = res.result
    if int(os.environ.get("RANK", "0")) != 0:
        return
    typer.echo(f"{target}: test MAE {r['test_mae']:.2f} {spec.report_unit} on {r['n_test']} molecules "
               f"({r['init']}{', frozen encoder' if r['frozen'] else ''}, {r['n_train']} training molecules, "
               f"best epoch {r['best_epoch']}/{r['epochs_run']}); model in {out / 'finetuned.pt'}")


@app.command(name="predict")
def predict_cmd(
    inputs: List[str] = typer.Argument(..., help=_INPUT_HELP, show_default=False),
    model: Path = typer.Option(..., "--model", help="A fine-tuned model (finetuned.pt of `molgiae finetune`)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output CSV (replaced atomically)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Conformers per model call."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    max_atoms: int = typer.Option(500, "--max-atoms", min=1, help="Records with more atoms are skipped with a "
                                                                 "reason (memory grows with atoms²: ~0.25 GiB at 500)."),
    num_conformers: int = typer.Option(1, "--num-conformers", help="Conformers per SMILES (.smi/.csv)."),
    seed: int = typer.Option(0, help="Base seed of SMILES conformer embedding."),
    smiles_column: Optional[str] = typer.Option(None, "--smiles-column", help="SMILES column of a .csv (default: auto-detect)."),
    no_smiles: bool = typer.Option(False, "--no-smiles", help="Do not perceive SMILES from 3-D geometry "
                                                              "for records without one."),
    read_ahead: bool = typer.Option(True, "--read-ahead/--no-read-ahead",
                                    help="Read the inputs in a second process, overlapping the model."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no per-record error lines."),
):
    """Predict a fine-tuned model's property for every conformer of the inputs into a CSV.

    Columns: source, record, name, smiles, n_atoms, <target>_<unit>, in_domain (false: size or
    elements outside the training molecules, an extrapolation), note. Bad records are skipped
    (listed on stderr). Exit code 0 when at least one conformer was predicted, 1 when none was
    (then no file is written).
    """
    from molgiae.embedding.streaming import NothingWrittenError
    from molgiae.finetune.model import load_predictor, prediction_column, predict_to_csv
    from molgiae.checkpoint import CheckpointError
    from molgiae.train.distributed import select_device

    options = _reader_options(num_conformers, seed, smiles_column)
    _check_out_dir(out, inputs)
    try:
        predictor = load_predictor(model, device=select_device(device))
    except (CheckpointError, RuntimeError) as exc:
        fail(str(exc))
    with _Feedback("predict", quiet) as fb:
        try:
            s = predict_to_csv(predictor, inputs, out, batch_size=batch_size, reader_options=options,
                               progress=fb.progress, on_error=fb.on_error, smiles=not no_smiles,
                               read_ahead=read_ahead, max_atoms=max_atoms)
        except NothingWrittenError as exc:
            s = exc.summary
    err(f"predicted {prediction_column(predictor.target)} for {s.n_predicted} conformers from "
        f"{_files_word(s.n_files)}; {s.n_failed} failed")
    if s.n_predicted == 0:
        fail(f"nothing was predicted; {out} was not written")
    if s.n_out_of_domain:
        err(f"warning: {s.n_out_of_domain} of {s.n_predicted} predictions are for molecules outside the training "
            f"domain (size or elements; in_domain = false and a note in {out}): extrapolations, not to be trusted")


# ----------------------------------------------------------------------------- data prepare
data_app = typer.Typer(help="Conformer data: convert sources into one HDF5 conformer store.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("prepare")
def data_prepare(
    inputs: List[str] = typer.Argument(..., show_default=False, help=(
        "GEOM rdkit_folder (a directory with summary_qm9.json / summary_drugs.json), GEOM .msgpack, "
        "QM9 .npz, conformer-ensemble .npz, or any molecule file (SDF, XYZ, ...); glob patterns allowed.")),
    out: Path = typer.Option(..., "--out", "-o", help="Output HDF5 store (replaced atomically)."),
    group_by: str = typer.Option("name", "--group-by", help="name | smiles: what makes conformers one molecule "
                                                            "(molecule id, split and sampling unit)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar, no per-record error lines."),
):
    """Convert conformer sources into one store for `molgiae train --data STORE.h5`.

    WARNING: a GEOM rdkit_folder is read by unpickling its *.pickle files, and unpickling executes code from the file. Only prepare GEOM data from a source you trust. Training never unpickles: it reads the store.

    Molecule ids (the split and sampling unit) are QM9 indices for gdb_N records, else a hash of the name (GEOM: the SMILES). Boltzmann weights are renormalised per molecule (uniform when unknown). Bad records are skipped and listed in the store's errors table.
    """  # noqa: E501
    if group_by not in ("name", "smiles"):
        raise typer.BadParameter("use name or smiles", param_hint="--group-by")
    _check_out_dir(out, inputs)
    from molgiae.data.store import prepare_store

    with _Feedback("prepare", quiet) as fb:
        try:
            s = prepare_store(inputs, out, group_by=group_by, on_error=fb.on_error, progress=fb.progress)
        except ValueError as exc:
            fail(str(exc))
    err(f"wrote {out}: {s.n_conformers} conformers of {s.n_molecules} molecules ({s.n_atoms} atoms); "
        f"{s.n_errors} records skipped" + (" (see the store's errors table)" if s.n_errors else ""))


def main() -> None:
    """The ``molgiae`` command. Ctrl-C and SIGTERM stop it cleanly (temporary outputs removed) with a
    line saying what happened to the output; exit code 130 (Ctrl-C) or 143 (SIGTERM)."""
    from molgiae.runtime import handle_interrupts, interrupted_by, tune_allocator

    tune_allocator()  # faster CPU model calls (see molgiae/runtime.py); a no-op off glibc
    handle_interrupts()
    try:
        app()
    except SystemExit:
        how = interrupted_by()  # typer turns KeyboardInterrupt (and Terminated) into exit code 130
        if how is None:
            raise
        err(f"interrupted ({how}): {_INTERRUPT_NOTE[0]}")
        sys.exit(143 if how == "SIGTERM" else 130)


if __name__ == "__main__":
    main()
