"""Autoencoder checkpoints: the format tag, a loader with clear errors (``weights_only=True``),
the model a checkpoint holds, and atomic saving (floor 3: above ``model`` and ``config``).

A checkpoint is a dict with ``format`` (:data:`CHECKPOINT_FORMAT`), ``config``
(:meth:`molgiae.config.Config.to_dict`) and ``model`` (the state dict); training checkpoints add
the optimiser, scheduler, RNG and progress state (:mod:`molgiae.training`), fine-tuned ones use
their own tag (:mod:`molgiae.finetune.model`) and the same loader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from molgiae.config import Config
from molgiae.model import GroupInvariantAutoencoder
from molgiae.outputs import atomic_output

CHECKPOINT_FORMAT = "molgiae-checkpoint-1"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """Write to a temporary file in the same directory, then rename (never a half file)."""
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


class CheckpointError(RuntimeError):
    pass


def load_checkpoint(
    path: str | Path,
    map_location: str | torch.device = "cpu",
    expected_format: str = CHECKPOINT_FORMAT,
    what: str = "a molgiae checkpoint",
    hints: dict[str, str] | None = None,
    required: tuple[str, ...] = ("config", "model"),
) -> dict:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing, corrupt or
    foreign files, and for files with the right format tag but without the ``required`` keys or
    with an invalid config. ``hints`` maps a wrong file's format to advice appended to the error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    found = ckpt.get("format") if isinstance(ckpt, dict) else None
    if found != expected_format:
        hint = (hints or {}).get(found, "")
        raise CheckpointError(f"{path} is not {what} (format {expected_format}){hint}")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} has the {expected_format} format tag but lacks {', '.join(map(repr, missing))}: "
                              f"a damaged or hand-made file")
    if "config" in required:
        try:
            Config.from_dict(ckpt["config"])
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CheckpointError(f"{path} has an unusable config: {type(exc).__name__}: {exc}") from None
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[GroupInvariantAutoencoder, Config]:
    config = Config.from_dict(ckpt["config"])
    model = GroupInvariantAutoencoder(config.model)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model, config
