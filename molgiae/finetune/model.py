"""A property-prediction model: the autoencoder's PaiNN encoder plus an atom-wise head.

Standardisation (stored as buffers, so a checkpoint predicts in the target's unit):

- **extensive** targets (alpha, r2, zpve, U0, U, H, G, Cv) pool atom contributions by **sum**:
  ``ŷ = Σ_i (μ_{Z_i} + σ a_i)`` with ``μ_Z`` a per-element reference (``element_reference``)
  and ``σ`` the training-set std of the residual ``y − Σ_i μ_{Z_i}`` (a molecule-level
  scale). The standardised target is ``t = (y − Σ_i μ_{Z_i}) / σ``. ``μ_Z`` is fitted on the
  training labels (``reference="element"``, the default): a least-squares fit of ``y`` on the
  molecule's element counts, ridge-shrunk towards the per-atom mean ``mean(y / n)`` so that an
  element seen in few (or no) training molecules gets about that mean. With
  ``reference="mean"`` every element gets the per-atom mean (``ŷ = n μ + σ Σ_i a_i``: the
  behaviour of checkpoints written before the per-element fit).
- **intensive** targets (mu, homo, lumo, gap) pool by **mean**: ``ŷ = μ + σ mean_i a_i`` with
  ``μ``, ``σ`` the training-set mean and std of ``y``; ``t = (y − μ) / σ``.

``forward`` returns the standardised prediction ``t̂``, so ``|t̂ − t| · σ`` is exactly the
molecule's error in the target's unit (an L1 loss on ``t`` is the MAE divided by σ, for both
kinds). ``a_i`` is an MLP of the encoder's invariant atom features ``s_i``.
"""
from __future__ import annotations

import csv
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from molgiae import group
from molgiae.checkpoint import CHECKPOINT_FORMAT, load_checkpoint
from molgiae.chem import symbol
from molgiae.config import Config, ModelConfig
from molgiae.data.batching import batch_from_records
from molgiae.data.molecules import perceive_smiles
from molgiae.data.read_ahead import read_positioned
from molgiae.data.record import RecordError, check_record
from molgiae.data.targets import get_target
from molgiae.embedding.streaming import NothingWrittenError, stream_results
from molgiae.model import DenseMolecules, ElementVocabulary
from molgiae.outputs import atomic_output, refuse_input_as_output
from molgiae.painn_equivariant import PainnEncoder, mlp

PROPERTY_FORMAT = "molgiae-property-1"


class PropertyModel(nn.Module):
    """PaiNN encoder (the autoencoder's architecture) → atom-wise MLP → sum/mean pooling.

    Buffers ``target_mean`` and ``target_std`` hold the standardisation (see the module
    docstring); ``pooling`` is "sum" for extensive targets and "mean" for intensive ones.
    """

    def __init__(self, config: ModelConfig, target: str, pooling: str | None = None,
                 mean: float = 0.0, std: float = 1.0):
        super().__init__()
        spec = get_target(target)
        self.config = config
        self.target = target
        self.pooling = pooling or ("sum" if spec.extensive else "mean")
        if self.pooling not in ("sum", "mean"):
            raise ValueError(f"pooling must be 'sum' or 'mean', not {self.pooling!r}")
        self.vocabulary = ElementVocabulary(config.elements)
        self.encoder = PainnEncoder(config)
        self.head = mlp(config.features, config.features, 1)
        # Zero output layer: the untrained model predicts the training mean (t̂ = 0) instead of
        # a sum of up to n random O(1) atom terms; gradients reach the hidden layer after one step.
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)
        self.register_buffer("target_mean", torch.tensor(float(mean), dtype=torch.float64))
        self.register_buffer("target_std", torch.tensor(float(std), dtype=torch.float64))
        # per-element offsets of sum-pooled targets [V] (vocabulary order); unused by mean pooling
        self.register_buffer("element_reference",
                             torch.full((len(config.elements),), float(mean), dtype=torch.float64))

    # ------------------------------------------------------------------ constructors
    @classmethod
    def from_scratch(cls, config: ModelConfig, target: str, seed: int = 0, pooling: str | None = None) -> "PropertyModel":
        """Fresh initialisation of the whole model under ``torch.manual_seed(seed)``."""
        torch.manual_seed(seed)
        return cls(config, target, pooling)

    @classmethod
    def from_autoencoder(cls, checkpoint: dict, target: str, seed: int = 0, pooling: str | None = None) -> "PropertyModel":
        """The encoder of a loaded autoencoder checkpoint (weights copied exactly) and a fresh head.

        The head is initialised under ``torch.manual_seed(seed)`` exactly as in
        :meth:`from_scratch`, so the pretrained and scratch models of one seed start from the
        same head and differ only in the encoder.
        """
        config = Config.from_dict(checkpoint["config"]).model
        model = cls.from_scratch(config, target, seed, pooling)
        prefix = "encoder."
        state = {k[len(prefix):]: v for k, v in checkpoint["model"].items() if k.startswith(prefix)}
        model.encoder.load_state_dict(state, strict=True)
        return model

    # ------------------------------------------------------------------ inputs
    def species(self, atomic_numbers: Tensor, mask: Tensor | None = None) -> Tensor:
        """Atomic numbers → vocabulary indices (0 on padding)."""
        return self.vocabulary.species(atomic_numbers, mask)

    # ------------------------------------------------------------------ forward
    def forward(self, mols: DenseMolecules) -> Tensor:
        """Standardised prediction ``t̂`` [B]."""
        t = group.masked_centroid(mols.pos, mols.mask)
        centred = (mols.pos - t.unsqueeze(1)) * mols.mask.unsqueeze(-1)
        s, _ = self.encoder.atom_features(self.species(mols.numbers, mols.mask), centred, mols.mask)
        m = mols.mask.to(s.dtype)
        a = self.head(s).squeeze(-1) * m
        if self.pooling == "sum":
            return a.sum(1)
        return a.sum(1) / m.sum(1).clamp_min(1.0)

    def offset(self, mols: DenseMolecules) -> Tensor:
        """The prediction at ``t̂ = 0`` (target's unit, float64) [B]: ``Σ_i μ_{Z_i}`` for sum
        pooling, ``μ`` for mean pooling."""
        if self.pooling == "mean":
            return self.target_mean.expand(mols.mask.shape[0])
        ref = self.element_reference[self.species(mols.numbers, mols.mask)]
        return (ref * mols.mask).sum(1)

    def standardise(self, y: Tensor, mols: DenseMolecules) -> Tensor:
        """Target ``y`` [B] in its unit → standardised ``t`` (float32) [B]."""
        return ((y.to(torch.float64) - self.offset(mols)) / self.target_std).to(torch.float32)

    def unstandardise(self, t: Tensor, mols: DenseMolecules) -> Tensor:
        """Standardised ``t̂`` [B] → prediction in the target's unit (float64) [B]."""
        return t.to(torch.float64) * self.target_std + self.offset(mols)

    @torch.no_grad()
    def predict(self, mols: DenseMolecules) -> Tensor:
        """Predictions in the target's unit (float64) [B]."""
        return self.unstandardise(self.forward(mols), mols)

    def set_standardisation(self, y: np.ndarray, counts: np.ndarray, reference: str = "element") -> tuple[float, float]:
        """Set the standardisation from training labels ``y`` [M] and element counts ``counts``
        [M, V] (vocabulary order, :func:`molgiae.quality.element_counts`). → (μ, σ).

        Sum pooling: ``reference="element"`` fits ``element_reference`` (see the module
        docstring); ``"mean"`` sets every element to the per-atom mean ``μ = mean(y / n)``.
        """
        if reference not in ATOM_REFERENCES:
            raise ValueError(f"reference must be one of {ATOM_REFERENCES}, not {reference!r}")
        y = np.asarray(y, dtype=np.float64)
        counts = np.asarray(counts, dtype=np.float64)
        if self.pooling == "sum":
            mean = float(np.mean(y / counts.sum(1)))
            ref = np.full(counts.shape[1], mean)
            if reference == "element":
                ref = ref + fit_element_offsets(counts, y - counts @ ref)
            std = float(np.std(y - counts @ ref))
        else:
            mean, std, ref = float(np.mean(y)), float(np.std(y)), np.zeros(counts.shape[1])
        if not np.isfinite(std) or std <= 1e-12:
            std = 1.0  # one training molecule or constant labels: no scale to learn from
        self.target_mean.fill_(mean)
        self.target_std.fill_(std)
        self.element_reference.copy_(torch.as_tensor(ref, dtype=torch.float64))
        return mean, std


ATOM_REFERENCES = ("element", "mean")


def fit_element_offsets(counts: np.ndarray, residual: np.ndarray, shrinkage: float = 1.0) -> np.ndarray:
    """Ridge fit ``residual ≈ counts @ δ``: ``δ = (CᵀC + λ I)⁻¹ Cᵀ r``. → float64 [V].

    ``counts`` [M, V], ``residual`` [M]; ``shrinkage`` λ is worth about one molecule with one
    atom of the element, so an element absent from the training molecules gets ``δ = 0``.
    """
    gram = counts.T @ counts + shrinkage * np.eye(counts.shape[1])
    return np.linalg.solve(gram, counts.T @ residual)


# ----------------------------------------------------------------------------- checkpoints
def property_checkpoint(model: PropertyModel, autoencoder_config: Config, metadata: dict | None = None,
                        finetune_config: dict | None = None) -> dict:
    """A ``weights_only``-loadable dict: format, the autoencoder config, the property head's
    description (target, unit, pooling, standardisation), the weights and metadata."""
    spec = get_target(model.target)
    return {
        "format": PROPERTY_FORMAT,
        "config": autoencoder_config.to_dict(),
        "property": {
            "target": model.target,
            "unit": spec.unit,
            "report_unit": spec.report_unit,
            "report_scale": spec.report_scale,
            "extensive": spec.extensive,
            "atomization": spec.atomization,
            "pooling": model.pooling,
            "mean": float(model.target_mean),
            "std": float(model.target_std),
            "element_reference": [float(v) for v in model.element_reference],
            "standardisation": ("per-element reference sum_i ref[Z_i], std of y - sum_i ref[Z_i]"
                                if model.pooling == "sum" else "mean and std of y"),
        },
        "finetune": dict(finetune_config or {}),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }


def load_property_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a fine-tuned checkpoint with ``weights_only=True``; CheckpointError when it is not one."""
    return load_checkpoint(
        path, map_location, expected_format=PROPERTY_FORMAT, what="a fine-tuned molgiae property model",
        required=("config", "property", "model"),
        hints={CHECKPOINT_FORMAT: " (an autoencoder checkpoint: fine-tune it first with `molgiae finetune`)"},
    )


def model_from_property_checkpoint(ckpt: dict) -> PropertyModel:
    config = Config.from_dict(ckpt["config"]).model
    prop = ckpt["property"]
    model = PropertyModel(config, prop["target"], prop["pooling"])
    state = dict(ckpt["model"])
    if "element_reference" not in state:  # written before the per-element fit: n * mean
        state["element_reference"] = torch.full_like(model.element_reference, float(state["target_mean"]))
    model.load_state_dict(state)
    model.eval()
    return model


@dataclass
class PropertyPredictor:
    """A loaded fine-tuned model for inference on records (the ``molgiae predict`` engine).

    ``check`` has the signature of :meth:`molgiae.api.MolgiaeModel.check`, so the streaming
    helpers of :mod:`molgiae.embedding` accept it.
    """

    model: PropertyModel
    path: Path
    info: dict
    metadata: dict
    device: torch.device

    @property
    def target(self) -> str:
        return self.model.target

    @property
    def unit(self) -> str:
        return get_target(self.model.target).unit

    @property
    def elements(self) -> tuple[int, ...]:
        return self.model.config.elements

    def check(self, record, reconstruct: bool = False) -> str | None:
        """Why the model cannot take ``record`` (geometry, vocabulary), or None."""
        return check_record(record, self.elements)

    @property
    def domain(self) -> dict:
        """The training domain: ``n_atoms_min``, ``n_atoms_max``, ``elements`` of the fine-tuning
        training molecules (``training_domain`` in the checkpoint's metadata); for checkpoints
        written before it was recorded, the autoencoder's ``max_atoms`` and vocabulary."""
        d = self.metadata.get("training_domain")
        if isinstance(d, dict) and d.get("elements"):
            return d
        return {"n_atoms_min": 1, "n_atoms_max": int(self.model.config.max_atoms),
                "elements": [int(z) for z in self.elements]}

    def domain_note(self, record) -> str:
        """"" when ``record`` lies inside the training domain, else why not (a prediction far
        outside it, e.g. a 200-atom alkane for a QM9 model, is an extrapolation)."""
        d = self.domain
        notes = []
        n = record.n_atoms
        if not d["n_atoms_min"] <= n <= d["n_atoms_max"]:
            notes.append(f"{n} atoms, training molecules had {d['n_atoms_min']}-{d['n_atoms_max']}")
        unseen = sorted(set(record.elements.tolist()) - set(d["elements"]))
        if unseen:
            notes.append(f"element(s) {', '.join(symbol(z) for z in unseen)} not in the training molecules")
        return "; ".join(notes)

    @torch.no_grad()
    def predict_records(self, records: Sequence) -> np.ndarray:
        """Predictions (target unit) of valid records. → float64 [len(records)]."""
        if not records:
            return np.zeros(0)
        mols = batch_from_records(records).to(self.device)
        return self.model.predict(mols).cpu().numpy()


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> PropertyPredictor:
    device = torch.device(device)
    ckpt = load_property_checkpoint(path, map_location=device)
    model = model_from_property_checkpoint(ckpt).to(device)
    return PropertyPredictor(model=model, path=Path(path), info=dict(ckpt["property"]),
                             metadata=dict(ckpt.get("metadata", {})), device=device)


def encoder_state(model_or_ckpt: Any) -> dict[str, Tensor]:
    """Encoder weights of a PropertyModel, or of an autoencoder checkpoint dict (``encoder.*``)."""
    if isinstance(model_or_ckpt, PropertyModel):
        return {k: v.detach().clone() for k, v in model_or_ckpt.encoder.state_dict().items()}
    return {k[len("encoder."):]: v for k, v in model_or_ckpt["model"].items() if k.startswith("encoder.")}


# ----------------------------------------------------------------------------- predictions to CSV
def prediction_column(target: str) -> str:
    """CSV column of a target's predictions: ``<target>_<unit>`` with the unit made file-safe
    (``U0_eV``, ``alpha_a0^3``, ``Cv_cal_per_mol_K``)."""
    unit = get_target(target).unit.replace("/", "_per_")
    return f"{target}_{re.sub(r'[^A-Za-z0-9^]+', '_', unit).strip('_')}"


@dataclass
class PredictSummary:
    """Counts of one predict run (``n_records``: items read, good and bad)."""

    out: Path
    n_predicted: int = 0
    n_out_of_domain: int = 0
    n_failed: int = 0
    n_records: int = 0
    n_files: int = 0
    seconds: float = 0.0


def predict_to_csv(predictor: PropertyPredictor, inputs: Sequence[str | Path], out: str | Path, *,
                   batch_size: int = 64, reader_options: dict | None = None, progress=None, on_error=None,
                   smiles: bool = True, read_ahead: bool = False, max_atoms: int | None = 500) -> PredictSummary:
    """Predict the target for every conformer of ``inputs`` (any format of the readers) into a CSV.

    Columns: source, record, name, smiles, n_atoms, ``<target>_<unit>``, ``in_domain`` (``true``
    when the molecule's size and elements lie within the training molecules',
    :meth:`PropertyPredictor.domain_note`) and ``note`` (why not, and hydrogens added by the
    reader); rows in input order.
    Bad records are skipped and passed to ``on_error`` (the same checks and streaming as
    ``molgiae embed``). The file is written to a temporary name and renamed; when nothing could
    be predicted, :class:`molgiae.embedding.streaming.NothingWrittenError` is raised and no file is left.
    ``read_ahead``: read (and perceive SMILES) in a child process, overlapping the model.
    ``max_atoms``: records with more atoms are errors (memory bound; None: no cap).
    """
    out = Path(out)
    refuse_input_as_output(out, inputs)
    start = time.perf_counter()
    summary = PredictSummary(out=out)
    positioned, sources = read_positioned(inputs, reader_options, perceive=smiles and read_ahead,
                                          read_ahead=read_ahead)
    column = prediction_column(predictor.target)
    with atomic_output(out) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["source", "record", "name", "smiles", "n_atoms", column, "in_domain", "note"])
            for _, item, value in stream_results(predictor, positioned, predictor.predict_records,
                                                 batch_size=batch_size, progress=progress, on_error=on_error,
                                                 max_atoms=max_atoms):
                summary.n_records += 1
                if isinstance(item, RecordError):
                    summary.n_failed += 1
                    continue
                smi = item.smiles or (perceive_smiles(item) if smiles and not read_ahead else "")
                outside = predictor.domain_note(item)
                notes = [f"outside the training domain: {outside}"] if outside else []
                if item.hydrogens_added:
                    notes.append(f"{item.hydrogens_added} hydrogens added by the reader")
                w.writerow([item.source, item.index, item.name, smi, item.n_atoms, repr(float(value)),
                            "false" if outside else "true", "; ".join(notes)])
                summary.n_predicted += 1
                summary.n_out_of_domain += bool(outside)
        summary.n_files = len(sources)
        if summary.n_predicted == 0:
            raise NothingWrittenError(f"no conformer could be predicted ({summary.n_failed} failed); "
                                      f"nothing written to {out}", summary)
    summary.seconds = time.perf_counter() - start
    return summary
