"""Python API: ``load_model`` → an object that embeds and reconstructs molecules.

Inputs may be file paths (any format of :mod:`molgiae.data.readers`), :class:`ConformerRecord`
objects, RDKit molecules (every conformer) or ASE ``Atoms``.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from molgiae.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint
from molgiae.config import Config
from molgiae.data.batching import batch_from_records, size_sorted_batches
from molgiae.data.molecules import rdkit_atomic_numbers
from molgiae.data.readers import read_records
from molgiae.data.record import ConformerRecord, RecordError, check_record
from molgiae.model import GroupInvariantAutoencoder, molecule_scores

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_CHECKPOINT = PRETRAINED_DIR / "molgiae-qm9.pt"


def default_checkpoint_path() -> Path:
    """Where the default model is: ``$MOLGIAE_DEFAULT_MODEL`` when set (e.g. a site-wide model on
    a cluster), else the checkpoint bundled with the package."""
    return Path(os.environ.get("MOLGIAE_DEFAULT_MODEL") or DEFAULT_CHECKPOINT)


def default_checkpoint() -> Path:
    """Path of the default checkpoint; a clear error when it is missing."""
    path = default_checkpoint_path()
    if not path.is_file():
        raise CheckpointError(f"the default model is missing ({path}); reinstall molgiae or pass --model")
    return path


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def as_records(inputs, **reader_options) -> Iterator[ConformerRecord | RecordError]:
    """Normalise API inputs to records (and errors), in input order."""
    if isinstance(inputs, (str, Path, ConformerRecord)) or not isinstance(inputs, Iterable):
        inputs = [inputs]
    for k, item in enumerate(inputs):
        if isinstance(item, (str, Path)):
            yield from read_records(item, **reader_options)
        elif isinstance(item, ConformerRecord):
            yield item
        elif type(item).__module__.startswith("rdkit"):
            yield from _rdkit_records(item, k)
        elif type(item).__module__.startswith("ase"):
            yield ConformerRecord(
                elements=item.get_atomic_numbers(), coords=item.get_positions(),
                name=str(item.info.get("name", item.get_chemical_formula())), source="<ase.Atoms>", index=k,
            )
        else:
            yield RecordError("<input>", k, f"cannot embed an object of type {type(item).__name__}")


def _rdkit_records(mol, k: int) -> Iterator[ConformerRecord | RecordError]:
    name = mol.GetProp("_Name") if mol.HasProp("_Name") else f"mol_{k}"
    if mol.GetNumConformers() == 0:
        yield RecordError("<rdkit.Mol>", k, "molecule has no conformer (embed it first)", name)
        return
    elements = rdkit_atomic_numbers(mol)
    for conf in mol.GetConformers():
        yield ConformerRecord(elements=elements, coords=conf.GetPositions(), name=name, source="<rdkit.Mol>", index=k)


@dataclass
class ReconstructedMolecule:
    """One reconstruction: coords [n, 3] in the input's pose and order (or the canonical pose and
    slot order when ``canonical``), elements [n] predicted atomic numbers, and its scores against
    the input (rmsd in Å, hard permutation, no alignment; element accuracy)."""

    record: ConformerRecord
    coords: np.ndarray
    elements: np.ndarray
    rmsd: float
    element_accuracy: float
    canonical: bool = False


class MolgiaeModel:
    """A loaded autoencoder with its config and checkpoint metadata."""

    def __init__(self, model: GroupInvariantAutoencoder, config: Config, path: Path, metadata: dict,
                 device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.config = config
        self.path = Path(path)
        self.metadata = metadata
        self.device = torch.device(device)
        self._sha256: str | None = None

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    @property
    def embedding_dim(self) -> int:
        return self.config.model.embedding_dim

    @property
    def elements(self) -> tuple[int, ...]:
        return self.config.model.elements

    @property
    def max_atoms(self) -> int:
        return self.config.model.max_atoms

    def check(self, record: ConformerRecord, reconstruct: bool = False) -> str | None:
        """Why this model cannot take a record (geometry, vocabulary, size), or None."""
        return check_record(record, self.elements, self.max_atoms if reconstruct else None)

    # ---------------------------------------------------------------- batched cores
    @torch.no_grad()
    def embed_records(self, records: Sequence[ConformerRecord]) -> np.ndarray:
        """Invariant codes of valid records (check them first). → float32 [len(records), D]."""
        if not records:
            return np.zeros((0, self.embedding_dim), np.float32)
        mols = batch_from_records(records).to(self.device)
        return self.model.embed(mols).float().cpu().numpy()

    @torch.no_grad()
    def reconstruct_records(self, records: Sequence[ConformerRecord], canonical: bool = False) -> list[ReconstructedMolecule]:
        if not records:
            return []
        mols = batch_from_records(records).to(self.device)
        out = self.model(mols, permutation="hard")
        coords = out.coords.float().cpu().numpy()
        pred_species = out.logits.argmax(-1)
        rmsd, acc = (x.cpu().numpy() for x in molecule_scores(out, mols))
        vocab = np.asarray(self.elements)
        if canonical:
            # canonical pose: decoder output Y in slot order (centred, the model's own frame)
            coords = out.canonical.coords.float().cpu().numpy()
            pred_species = out.canonical.logits.argmax(-1)
        result = []
        species = pred_species.cpu().numpy()
        for b, rec in enumerate(records):
            k = rec.n_atoms
            result.append(ReconstructedMolecule(
                record=rec, coords=coords[b, :k].astype(np.float64), elements=vocab[species[b, :k]],
                rmsd=float(rmsd[b]), element_accuracy=float(acc[b]), canonical=canonical,
            ))
        return result

    # ---------------------------------------------------------------- convenience
    def _valid(self, inputs, reconstruct: bool, errors: list | None, reader_options) -> list[ConformerRecord]:
        good = []
        for item in as_records(inputs, **reader_options):
            if isinstance(item, RecordError):
                problem = item
            else:
                reason = self.check(item, reconstruct=reconstruct)
                if reason is None:
                    good.append(item)
                    continue
                problem = RecordError(item.source, item.index, reason, item.name)
            if errors is None:
                raise ValueError(str(problem))
            errors.append(problem)
        return good

    def embed(self, inputs, batch_size: int = 64, errors: list | None = None, **reader_options) -> np.ndarray:
        """Embeddings float32 [N, D] of every valid conformer in ``inputs``, in input order.

        Bad records raise ``ValueError`` unless an ``errors`` list is given to collect them.
        """
        records = self._valid(inputs, False, errors, reader_options)
        out = np.zeros((len(records), self.embedding_dim), np.float32)
        for ids in size_sorted_batches([r.n_atoms for r in records], batch_size):
            out[ids] = self.embed_records([records[i] for i in ids])
        return out

    def reconstruct(self, inputs, canonical: bool = False, batch_size: int = 64, errors: list | None = None,
                    **reader_options) -> list[ReconstructedMolecule]:
        """Decode every valid conformer from its invariant code, in the input's pose and order."""
        records = self._valid(inputs, True, errors, reader_options)
        out: list = [None] * len(records)
        for ids in size_sorted_batches([r.n_atoms for r in records], batch_size):
            for i, rec in zip(ids, self.reconstruct_records([records[i] for i in ids], canonical)):
                out[i] = rec
        return out


def bundled_models() -> list[str]:
    """Names of the checkpoints shipped with the package (``load_model(name)`` loads one)."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob("*.pt"))


def resolve_checkpoint(path: str | Path | None) -> Path:
    """None → the default model; an existing file → itself; the bare name of a bundled
    checkpoint (e.g. ``molgiae-qm9-smooth``) → that file in the package."""
    if path is None:
        return default_checkpoint()
    path = Path(path)
    if not path.exists() and path.parent == Path(".") and (PRETRAINED_DIR / f"{path.stem}.pt").is_file():
        return PRETRAINED_DIR / f"{path.stem}.pt"
    return path


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> MolgiaeModel:
    """Load a checkpoint (``weights_only=True``): a path, the name of a bundled model
    (:func:`bundled_models`), or the default model when ``path`` is None."""
    path = resolve_checkpoint(path)
    ckpt = load_checkpoint(path, map_location=device)
    model, config = model_from_checkpoint(ckpt)
    return MolgiaeModel(model, config, path, dict(ckpt.get("metadata", {})), device)
