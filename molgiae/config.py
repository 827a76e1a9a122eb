"""The one configuration object every checkpoint carries.

Ground floor: plain dataclasses, JSON-serialisable, no torch.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from molgiae.chem import QM9_ELEMENTS


@dataclass
class ModelConfig:
    """Architecture of the autoencoder (see ``docs/method.md``).

    ``elements`` is the vocabulary (atomic numbers) in canonical band order;
    ``max_atoms`` bounds what the decoder can reconstruct (the encoder is size-free).
    """

    elements: tuple[int, ...] = QM9_ELEMENTS
    max_atoms: int = 29
    features: int = 64
    num_rbf: int = 20
    cutoff: float = 5.0
    encoder_layers: int = 3
    decoder_layers: int = 3
    embedding_dim: int = 128
    decoder: str = "equivariant"  # "equivariant" (start positions + PaiNN refinement) | "transformer"
    decoder_cutoff: float = 10.0
    cross_product: bool = True  # SE(3) (chiral) rather than O(3) equivariance
    score_learned_scale: float = 0.1  # ε in σ = band(Z) + ρ + ε·MLP(s)
    band_gap: float = 1000.0  # score offset between element bands (Å-scale ρ stays inside a band)
    transformer_heads: int = 4
    # "bounded": the update's scalar product ⟨Uv, Vv⟩ / (1 + |Uv||Vv|) (|·| ≤ 1, smooth z);
    # "plain": PaiNN's unbounded ⟨Uv, Vv⟩ (models of molgiae ≤ 0.1: steep, see docs/method.md)
    update_product: str = "bounded"
    # "mean_sum": z = [mean over atoms (D/2), sum over atoms / 10 (D/2)] (intensive and extensive
    # parts: a linear model reads size and composition); "mean": z = mean over atoms (≤ 0.1)
    code_pooling: str = "mean_sum"
    # a per-atom equivariant head that predicts the input-coordinate noise (denoising pretraining
    # of the atom features, Zaidi et al. 2023; trained with TrainConfig.lambda_denoise)
    noise_head: bool = False

    def __post_init__(self) -> None:
        self.elements = tuple(int(e) for e in self.elements)
        if self.decoder not in ("equivariant", "transformer"):
            raise ValueError(f"decoder must be 'equivariant' or 'transformer', not {self.decoder!r}")
        if self.update_product not in ("bounded", "plain"):
            raise ValueError(f"update_product must be 'bounded' or 'plain', not {self.update_product!r}")
        if self.code_pooling not in ("mean_sum", "mean"):
            raise ValueError(f"code_pooling must be 'mean_sum' or 'mean', not {self.code_pooling!r}")
        if self.code_pooling == "mean_sum" and self.embedding_dim % 2:
            raise ValueError(f"code_pooling 'mean_sum' needs an even embedding_dim, not {self.embedding_dim}")


#: Model settings that checkpoints written before a field existed were trained with: a saved
#: config without the field gets this value, not today's default.
LEGACY_MODEL_DEFAULTS = {"update_product": "plain", "code_pooling": "mean"}


@dataclass
class TrainConfig:
    """Optimisation and data settings of a training run."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 5e-4
    min_lr_ratio: float = 0.05  # cosine decay to lr * min_lr_ratio
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 10.0
    seed: int = 0
    tau: float = 0.3  # soft-sort temperature (gradient path of the straight-through permutation)
    lambda_type: float = 1.0
    lambda_perm: float = 0.025
    coord_noise: float = 0.0  # std (Å) of Gaussian noise on input coordinates while training
    # weight of the code-smoothness term (training.code_smoothness; needs coord_noise > 0)
    lambda_smooth: float = 0.0
    # weight of the local code-smoothness term: code_smoothness of a second encoder pass at
    # coordinate noise smooth_sigma (Å), scaled by (0.1 / smooth_sigma)² — the steep spots of z
    # are local (1e-2 Å moves some codes by more than 0.1 Å does), so the input noise misses them
    lambda_smooth_local: float = 0.0
    smooth_sigma: float = 0.01
    # weight of the atom-level denoising term (training.noise_prediction_loss; needs coord_noise > 0
    # and ModelConfig.noise_head)
    lambda_denoise: float = 0.0
    # weight of the conformer-metric term (training.conformer_metric): for pairs of conformers of
    # one molecule, code distance proportional to aligned rmsd; needs molecules with several conformers
    lambda_conformer: float = 0.0
    # with the conformer term: at least this many conformer pairs per batch (0: only the pairs the
    # batch happens to hold); extra multi-conformer molecules of the batch's size range are added
    conformer_pairs: int = 0
    # weight of the conformer-separation term (training.conformer_separation): each conformer's
    # partner nearer in z than any other molecule of the batch; rides on the conformer term's pairs
    lambda_separation: float = 0.0
    # weight of the frame-steadiness term (training.frame_steadiness): how far --coord-noise turns the
    # predicted rotation R; needs coord_noise > 0. On the steepest molecules z's steepest direction is the
    # one in which R swings (a nearly degenerate frame), and z follows the swinging canonical pose
    lambda_frame: float = 0.0
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    split_seed: int = 0
    max_molecules: int = 0  # 0 = all; else a seeded subset of the training split
    max_val_molecules: int = 1000  # validation every epoch on at most this many
    checkpoint_every: int = 500  # steps between last.pt writes (and every epoch end)
    time_limit_minutes: float = 0.0  # 0 = none: stop cleanly after this wall time
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA
    cpu_bf16: bool = False  # bf16 autocast on the CPU too (AMX/AVX-512 BF16 CPUs; see docs/method.md)
    # torch.compile the encoder in place (inductor, dynamic shapes; checkpoints unchanged): a
    # ~1.3x faster CPU step after a one-off compile of ~2 min (bench/compile_step.py)
    compile: bool = False
    # per epoch: "all" conformers, or one conformer per molecule drawn "uniform"ly or by "boltzmann" weight
    conformer_sampling: str = "all"
    num_workers: int = 0  # DataLoader worker processes building batches (0: in the training process)
    # warm start: a checkpoint whose weights (same parameter names and shapes) start a fresh run
    init_from: str = ""

    def __post_init__(self) -> None:
        if self.conformer_sampling not in ("all", "uniform", "boltzmann"):
            raise ValueError(f"conformer_sampling must be 'all', 'uniform' or 'boltzmann', not {self.conformer_sampling!r}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, not {self.num_workers}")
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, not {self.epochs} (nothing would be trained or written)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, not {self.batch_size}")
        if self.lambda_denoise > 0 and not self.coord_noise > 0:
            raise ValueError(f"lambda_denoise {self.lambda_denoise} needs coord_noise > 0 (the term predicts "
                             f"the noise added to the input coordinates); pass --coord-noise too")
        if self.lambda_conformer < 0:
            raise ValueError(f"lambda_conformer must be >= 0, not {self.lambda_conformer}")
        if self.conformer_pairs < 0:
            raise ValueError(f"conformer_pairs must be >= 0, not {self.conformer_pairs}")
        if self.conformer_pairs > 0 and not self.lambda_conformer > 0:
            raise ValueError(f"conformer_pairs {self.conformer_pairs} needs lambda_conformer > 0 (the pairs feed "
                             f"the conformer-metric term); pass --lambda-conformer too")
        if self.lambda_separation < 0:
            raise ValueError(f"lambda_separation must be >= 0, not {self.lambda_separation}")
        if self.lambda_separation > 0 and not self.lambda_conformer > 0:
            raise ValueError(f"lambda_separation {self.lambda_separation} needs lambda_conformer > 0 (it uses the "
                             f"conformer term's pairs); pass --lambda-conformer too")
        if self.lambda_smooth_local < 0 or not self.smooth_sigma > 0:
            raise ValueError(f"lambda_smooth_local must be >= 0 and smooth_sigma > 0, not "
                             f"{self.lambda_smooth_local} and {self.smooth_sigma}")
        if self.lambda_frame < 0:
            raise ValueError(f"lambda_frame must be >= 0, not {self.lambda_frame}")
        if self.lambda_frame > 0 and not self.coord_noise > 0:
            raise ValueError(f"lambda_frame {self.lambda_frame} needs coord_noise > 0 (the term measures how far "
                             f"that noise turns the frame); without it the term would be silently off")
        if self.lambda_smooth > 0 and not self.coord_noise > 0:
            raise ValueError(f"lambda_smooth {self.lambda_smooth} needs coord_noise > 0 (the term measures how far "
                             f"that noise moves z); without it the term would be silently off")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"]["elements"] = list(self.model.elements)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Config":
        def build(klass, values):
            names = {f.name for f in dataclasses.fields(klass)}
            unknown = set(values) - names
            if unknown:
                raise ValueError(f"unknown {klass.__name__} keys: {sorted(unknown)}")
            return klass(**values)

        model = {**LEGACY_MODEL_DEFAULTS, **d.get("model", {})}
        return cls(model=build(ModelConfig, model), train=build(TrainConfig, d.get("train", {})))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def with_options(self, model: dict[str, Any] | None = None, train: dict[str, Any] | None = None) -> "Config":
        """A copy with every given option (``None`` = not given) set, re-validated: ValueError
        names a bad value or an unknown option."""
        d = self.to_dict()
        for section, options in (("model", model or {}), ("train", train or {})):
            d[section].update({k: v for k, v in options.items() if v is not None})
        train = train or {}
        if train.get("lambda_conformer") == 0:  # the term turned off takes its pairs' users with it
            for rider in ("conformer_pairs", "lambda_separation"):
                if train.get(rider) is None:
                    d["train"][rider] = 0
        return Config.from_dict(d)
