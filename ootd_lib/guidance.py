"""Outfitting dropout (training) and image-guidance classifier-free guidance (sampling).

The "condition" OOTDiffusion guides with is the garment. During training each sample's garment latent is replaced by
zeros with probability ``p`` (0.1), so the model also learns the *unconditional* prediction ε(x, person, ∅). At sampling
time the batch is doubled — ``[zero garment, garment]`` — and the two predictions are combined:

    ε = ε_u + s · (ε_c − ε_u)        (s = 2.0 by default; s = 1 is plain conditional sampling, no doubling needed)

This is a single-condition scheme, not the InstructPix2Pix one (which drops text and image jointly with 2p/3p rules).
"""

from __future__ import annotations

import torch

from .errors import InputError

__all__ = ["outfitting_dropout", "dropout_keep_mask", "cfg_combine", "uses_cfg"]


def dropout_keep_mask(batch_size: int, p: float = 0.1, generator: torch.Generator | None = None,
                      device=None) -> torch.Tensor:
    """(B,) bool: True where the garment is kept. Each sample independently dropped with probability ``p``."""
    if not 0.0 <= p <= 1.0:
        raise InputError(f"outfitting dropout probability p={p} must be in [0, 1]")
    gen_device = generator.device if generator is not None else "cpu"
    keep = torch.rand(batch_size, generator=generator, device=gen_device) >= p
    return keep.to(device) if device is not None else keep


def outfitting_dropout(garment_latents: torch.Tensor, p: float = 0.1,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero each sample's garment latent with probability ``p`` (a new tensor; gradients pass through kept ones)."""
    keep = dropout_keep_mask(garment_latents.shape[0], p, generator, device=garment_latents.device)
    return garment_latents * keep.view(-1, *([1] * (garment_latents.ndim - 1))).to(garment_latents.dtype)


def uses_cfg(scale: float) -> bool:
    """Whether guidance needs the doubled (unconditional + conditional) batch."""
    return scale != 1.0


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale: float) -> torch.Tensor:
    """ε_u + s·(ε_c − ε_u)."""
    return eps_uncond + scale * (eps_cond - eps_uncond)
