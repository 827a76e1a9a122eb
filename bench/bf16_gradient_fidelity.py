"""How faithful is a bf16-autocast training gradient of a checkpoint? (``--cpu-bf16``'s risk)

    python bench/bf16_gradient_fidelity.py [--model CKPT|fresh] [--data QM9.npz] [--batches 3]

On seeded batches of 32 molecules with σ = 0.1 Å input noise, the training loss (reconstruction
+ code smoothness, straight-through permutation) and its gradient are computed in float32 and
under CPU bf16 autocast, with bf16 everywhere, only in the encoder, or only in the decoder.
Prints the loss of each, the cosine between the bf16 and float32 gradients and their norm ratio.
A float32 control with the input moved by 1e-5 Å shows how stable the float32 gradient itself
is. Not a test.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

from molgiae.checkpoint import load_checkpoint, model_from_checkpoint
from molgiae.data.batching import batch_from_set
from molgiae.data.conformers import load_qm9_npz
from molgiae.config import ModelConfig, TrainConfig
from molgiae.model import GroupInvariantAutoencoder
from molgiae.training import training_objective


def loss_and_grad(model, target, noise, parts: set[str], shift: float = 0.0):
    """(loss, flat gradient) of :func:`molgiae.training.training_objective` (σ = 0.1 Å, smoothness
    weight 1) with bf16 autocast around the named ``parts`` (encoder, decoder); ``shift`` moves the
    noisy input by that many Å more (a fixed Gaussian draw)."""
    def maybe_bf16(module, name):
        forward = module.forward

        def wrapped(*args, **kwargs):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=name in parts):
                return forward(*args, **kwargs)
        return wrapped
    tc = TrainConfig(coord_noise=0.1, lambda_smooth=1.0)
    if shift:
        noise = noise + shift / tc.coord_noise * torch.randn(noise.shape, generator=torch.Generator().manual_seed(9))
    saved = model.encoder.forward, model.decoder.forward
    model.encoder.forward, model.decoder.forward = maybe_bf16(model.encoder, "encoder"), maybe_bf16(model.decoder, "decoder")
    try:
        model.zero_grad()
        loss = training_objective(model, model, target, noise, tc, bf16=False)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    finally:
        model.encoder.forward, model.decoder.forward = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="molgiae/pretrained/molgiae-qm9.pt")
    ap.add_argument("--data", default="../shared/data/qm9/qm9_sample1000.npz")
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.model == "fresh":  # an untrained model of the default architecture, for contrast
        torch.manual_seed(0)
        model = GroupInvariantAutoencoder(ModelConfig(decoder="transformer"))
    else:
        model, _ = model_from_checkpoint(load_checkpoint(args.model))
    model.train()
    data = load_qm9_npz([args.data])
    rng = np.random.default_rng(0)
    variants = {"bf16 everywhere": ({"encoder", "decoder"}, 0.0), "bf16 encoder only": ({"encoder"}, 0.0),
                "bf16 decoder only": ({"decoder"}, 0.0), "float32, input +1e-5 Å": (set(), 1e-5)}
    for b in range(args.batches):
        target = batch_from_set(data, np.sort(rng.choice(len(data), 32, replace=False)))
        noise = torch.randn(target.pos.shape, generator=torch.Generator().manual_seed(b))
        ref_loss, ref = loss_and_grad(model, target, noise, set())
        line = [f"batch {b}: float32 loss {ref_loss:.4f}"]
        for name, (parts, shift) in variants.items():
            loss, grad = loss_and_grad(model, target, noise, parts, shift)
            cos = float(torch.nn.functional.cosine_similarity(grad, ref, dim=0))
            line.append(f"{name}: loss {loss:.4f} cos {cos:.3f} norm {float(grad.norm() / ref.norm()):.2f}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
