"""What the two UNets are conditioned on: VAE latents and a CLIP-image "prompt".

Latent convention of the released pipeline (training follows it too):

* garment latents and masked-person latents enter the UNets **unscaled** — ``vae.encode(x).latent_dist.mode()``;
* the denoised latents live in the usual *scaled* space (``mode() * scaling_factor``), so the original person image
  used for repainting the unmasked region is encoded scaled (:func:`encode_repaint_target`) and decoding divides by
  the factor (:func:`decode_latents`).

The prompt is not text: the CLIP image embedding of the garment is placed among text tokens.

* ``hd`` (VITON-HD model): tokenise ``""`` to 2 tokens ``[BOS, EOS]``, run the text encoder, replace token 1 by the
  image embedding → (B, 2, D).
* ``dc`` (Dress Code model): tokenise ``upperbody`` / ``lowerbody`` / ``dress`` to 3 tokens, run the text encoder,
  append the image embedding → (B, 4, D).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .errors import InputError
from .masking import mask_to_latents

__all__ = ["encode_latents", "encode_repaint_target", "decode_latents", "garment_image_embeds",
           "prompt_from_image_embeds", "encode_prompt", "category_word", "CATEGORY_WORDS"]

# The word the dc model was trained with for each dataset category.
CATEGORY_WORDS = {"upper_body": "upperbody", "lower_body": "lowerbody", "dresses": "dress"}


def _vae_input(vae, images):
    p = next(vae.parameters())
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise InputError(f"images must be a (B,3,H,W) tensor in [-1,1], got "
                         f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
    return images.to(device=p.device, dtype=p.dtype)


def encode_latents(vae, images) -> torch.Tensor:
    """(B,3,H,W) images in [-1,1] → unscaled latents (garment, masked person): ``latent_dist.mode()`` of SD's VAE
    (a diagonal Gaussian per latent pixel; its mean, never a sample), or the toy ``AutoencoderTiny``'s deterministic
    ``latents``."""
    out = vae.encode(_vae_input(vae, images))
    return out.latent_dist.mode() if hasattr(out, "latent_dist") else out.latents


def encode_repaint_target(vae, images) -> torch.Tensor:
    """Original person image → ``mode() * scaling_factor``: the x0 the unmasked region is repainted with."""
    return encode_latents(vae, images) * vae.config.scaling_factor


def decode_latents(vae, latents) -> torch.Tensor:
    """Scaled latents → images in [-1, 1] (clamped)."""
    p = next(vae.parameters())
    latents = latents.to(device=p.device, dtype=p.dtype) / vae.config.scaling_factor
    return vae.decode(latents).sample.clamp(-1, 1)


# --- the CLIP-image prompt --------------------------------------------------------------------------------------------
def category_word(category: str) -> str:
    """``upper_body``/``lower_body``/``dresses`` (or already ``upperbody``/``lowerbody``/``dress``) → dc prompt word."""
    if category in CATEGORY_WORDS:
        return CATEGORY_WORDS[category]
    if category in CATEGORY_WORDS.values():
        return category
    raise InputError(f"unknown garment category {category!r}; use one of {list(CATEGORY_WORDS)}")


def _to_pil_list(images) -> list:
    """PIL image(s) or a (B,3,H,W)/(3,H,W) tensor in [-1,1] → list of PIL images (what CLIPImageProcessor expects)."""
    if isinstance(images, Image.Image):
        return [images.convert("RGB")]
    if isinstance(images, torch.Tensor):
        from .data import tensor_to_uint8

        arr = tensor_to_uint8(images[None] if images.ndim == 3 else images)
        return [Image.fromarray(a) for a in arr]
    if isinstance(images, (list, tuple)):
        return [im.convert("RGB") if isinstance(im, Image.Image) else _to_pil_list(im)[0] for im in images]
    if isinstance(images, np.ndarray):
        return [Image.fromarray(images)]
    raise InputError(f"garment images must be PIL images or a tensor in [-1,1], got {type(images).__name__}")


def garment_image_embeds(garment_images, image_encoder, feature_extractor) -> torch.Tensor:
    """Projected CLIP image embedding of each garment, (B, D)."""
    p = next(image_encoder.parameters())
    pixels = feature_extractor(images=_to_pil_list(garment_images), return_tensors="pt").pixel_values
    return image_encoder(pixels.to(device=p.device, dtype=p.dtype)).image_embeds


def _categories(category, batch: int) -> list[str]:
    cats = [category] * batch if isinstance(category, str) else list(category)
    if len(cats) != batch:
        raise InputError(f"got {len(cats)} categories for {batch} garments; pass one category or one per garment")
    return cats


def prompt_from_image_embeds(image_embeds, category: str | Sequence[str], model_type: str, tokenizer,
                             text_encoder) -> torch.Tensor:
    """Build the prompt embeddings from (B, D) image embeddings: (B, 2, D) for ``hd``, (B, 4, D) for ``dc``."""
    b = image_embeds.shape[0]
    if model_type == "hd":
        texts, max_length = [""] * b, 2
    elif model_type == "dc":
        texts, max_length = [category_word(c) for c in _categories(category, b)], 3
    else:
        raise InputError(f"model_type must be 'hd' or 'dc', got {model_type!r}")
    p = next(text_encoder.parameters())
    ids = tokenizer(texts, max_length=max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids.to(p.device)
    text = text_encoder(ids)[0]
    image = image_embeds.to(text.dtype)[:, None, :]
    if model_type == "hd":
        return torch.cat([text[:, :1], image], dim=1)  # [BOS, image]: token 1 replaced
    return torch.cat([text, image], dim=1)  # [BOS, word, EOS, image]


def encode_prompt(garment_images, category, model_type, tokenizer, text_encoder, image_encoder,
                  feature_extractor) -> torch.Tensor:
    """Garment image(s) → prompt embeddings (B, 2, D) for ``hd`` or (B, 4, D) for ``dc``.

    ``category``: one of ``upper_body``/``lower_body``/``dresses`` (or a list, one per garment); ignored by ``hd``.
    """
    embeds = garment_image_embeds(garment_images, image_encoder, feature_extractor)
    return prompt_from_image_embeds(embeds, category, model_type, tokenizer, text_encoder)


# --- a training batch: images → what the UNets consume ------------------------------------------------------------------
__all__ += ["encode_batch", "cache_latents", "CachedLatents"]


@torch.no_grad()
def encode_batch(batch: dict, comps: dict, model_type: str, device, dtype=torch.float32,
                 latent_mask: str | None = None) -> dict:
    """A :class:`~ootd_lib.data.MaskedTryOnDataset` batch → target latents (scaled), masked-person and garment latents
    (unscaled) and the CLIP-image prompt; with ``latent_mask`` (a mode of :func:`~ootd_lib.masking.mask_to_latents`)
    also ``mask``, the agnostic mask on the latent grid as repaint will see it.

    The frozen encoders run in whatever dtype they were cast to (``weight_dtype`` under mixed precision); the results
    come back in float32, the dtype of the loss target and of the trained UNets' master weights (autocast lowers the
    UNets' matmuls itself). Nothing here needs gradients."""
    vae = comps["vae"]
    garment = batch["garment"].to(device, dtype)
    prompt = encode_prompt(garment, list(batch["category"]), model_type, comps["tokenizer"], comps["text_encoder"],
                           comps["image_encoder"], comps["feature_extractor"])
    out = dict(target=encode_repaint_target(vae, batch["target"].to(device, dtype)),
               person=encode_latents(vae, batch["masked"].to(device, dtype)),
               garment=encode_latents(vae, garment), prompt=prompt)
    if latent_mask is not None:
        out["mask"] = mask_to_latents(batch["mask"].to(device), out["target"].shape[-2:], latent_mask)
    return {k: v.float() for k, v in out.items()}


class CachedLatents(torch.utils.data.Dataset):
    """Pre-computed :func:`encode_batch` outputs, one item per pair."""

    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


@torch.no_grad()
def cache_latents(dataset, comps: dict, model_type: str, device, batch_size: int = 16,
                  dtype=torch.float32, latent_mask: str | None = None) -> CachedLatents:
    """Encode the whole dataset once (frozen encoders, no augmentation → the encodings never change).

    The toy recipe uses this: on CPU the VAE encoder would otherwise cost as much as the UNets per step."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts = [{k: v.cpu() for k, v in encode_batch(b, comps, model_type, device, dtype, latent_mask).items()}
             for b in loader]
    return CachedLatents({k: torch.cat([p[k] for p in parts]) for k in parts[0]})
