"""Devices and distributed data parallel under ``torchrun``: join the process group, and split
each global batch across the ranks (rank r takes molecules r, r+K, ...) with loss weights that
make K processes take the same steps as one.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but CUDA is not available on this machine")
    return torch.device(name)


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    return f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


@dataclass
class DistInfo:
    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    owns_group: bool = False  # init_process_group was called here (so destroy it at the end)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def setup_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1 in the environment).

    torchrun sets ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
    the backend is NCCL when this process trains on CUDA, gloo otherwise.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = False
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(local)
        dist.init_process_group("nccl" if cuda else "gloo")
        owns = True
    return DistInfo(world, rank, local, owns)


def shard_batch(chunk: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This rank's molecules of a global batch: ``chunk[rank::world_size]`` (sizes balanced,
    since a bucketed batch is sorted by atom count)."""
    return chunk[rank::world_size]


def rank_share(chunk: np.ndarray, rank: int, world_size: int, n_atoms: np.ndarray) -> tuple[np.ndarray, float]:
    """This rank's molecules of a global batch and its loss weight: its share of the batch's atoms
    (the loss is a per-atom mean). A rank left without a molecule runs the batch's first one
    with weight 0, so that it still joins the all-reduce."""
    local = shard_batch(chunk, rank, world_size)
    if len(local) == 0:
        return chunk[:1], 0.0
    return local, float(n_atoms[local].sum() / n_atoms[chunk].sum())


def training_device(name: str, dist_info: DistInfo) -> torch.device:
    """The device a training process uses: ``name`` (auto | cpu | cuda), and under torchrun on CUDA
    the GPU of this process's local rank."""
    device = select_device(name)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    return device


def wrap_ddp(model: torch.nn.Module, dist_info: DistInfo, device: torch.device,
             find_unused_parameters: bool = False) -> torch.nn.Module:
    """``model`` in DistributedDataParallel under torchrun (gradients averaged over ranks), else itself."""
    if not dist_info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)
