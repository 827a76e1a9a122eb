"""Fine-tuning the autoencoder's encoder on QM9 property targets (pretrained vs from scratch).

- :mod:`~molgiae.data.targets`: labels in the target's unit (eV, atomization energies).
- :mod:`~molgiae.finetune.model`: :class:`PropertyModel` (encoder + atom-wise head), checkpoints.
- :mod:`~molgiae.finetune.loop`: :func:`finetune` (split, training, early stopping, artefacts).
- :mod:`~molgiae.finetune.compare`: :func:`compare` (pretrained vs scratch on identical splits).
"""
from molgiae.data.targets import ATOMREF, TARGET_NAMES, target_values
from molgiae.finetune.compare import compare
from molgiae.finetune.loop import FinetuneConfig, FinetuneResult, finetune
from molgiae.finetune.model import PROPERTY_FORMAT, PropertyModel, load_predictor, load_property_checkpoint

__all__ = [
    "ATOMREF", "PROPERTY_FORMAT", "TARGET_NAMES", "FinetuneConfig", "FinetuneResult", "PropertyModel",
    "compare", "finetune", "load_predictor", "load_property_checkpoint", "target_values",
]
