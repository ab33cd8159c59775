"""Try-on sampling: ``OOTDPipeline``, a stock ``diffusers.DiffusionPipeline`` around the two OOTDiffusion UNets.

One call does what the released inference does, in this order:

1. **inputs** — person and garment images are resized to the model resolution (``pipe.config.height × width``; 1024×768
   for the released models, 128×96 for the toy one) with PIL's bicubic filter and no aspect-ratio correction, as the
   released run script does; the mask (white / 1 = repaint) is resized with nearest neighbour and binarised at 0.5. The
   masked person is the person with the masked region painted grey (127, 127, 127).
2. **conditioning** — the garment's CLIP image embedding as a prompt (hd: 2 tokens, dc: 4), the garment and
   masked-person latents (``mode()``, unscaled) and the original person latents (``mode() × scaling_factor``, the
   repaint target).
3. **outfitting** — the garment UNet runs **once**, at t = 0, on ``[zero garment, garment]`` (just ``garment`` when the
   guidance scale is 1); its transformer-block inputs become extra keys/values of the vton UNet's self-attention,
   projected once and cached for all steps (:mod:`ootd_lib.fusion`).
4. **denoising** — UniPC with the released scheduler config (scaled_linear betas, Karras sigmas, order 2, bh2). At each
   step the vton UNet sees ``cat[x_t, person latents]``; with guidance the batch is doubled and combined as
   ``ε_u + s·(ε_c − ε_u)``. After each step the latents outside the mask are replaced by the original person noised to
   the next timestep with the *same* initial noise; after the last step by the clean original.
5. **decode** with the VAE.

The scheduler's last sigma: diffusers 0.24 (what the release used) ended the Karras schedule at ``sigma_min``; current
diffusers can also step to zero. The default is ``final_sigmas_type="sigma_min"`` (identical to the release); pass
``final_sigmas_type="zero"`` to :meth:`OOTDPipeline.from_official` / :func:`ootd_lib.models.make_scheduler` to
change it.

Also here: :func:`tryon` (mask from the estimators when none is given), :func:`load_pipeline` and :func:`pick_device`;
the ``ootd tryon`` command itself (files in, files out) is :func:`ootd_lib.app.tryon_files`.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DiffusionPipeline, ImagePipelineOutput, UNet2DConditionModel
from diffusers.schedulers import UniPCMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer, CLIPVisionModelWithProjection

from .conditioning import decode_latents, encode_latents, encode_prompt, encode_repaint_target
from .config import CATEGORIES, MODEL_TYPES, TOY_CHECKPOINT
from .data import LOAD_MAX_SIDE, image_to_tensor, load_mask, load_rgb, tensor_to_uint8, to_rgb
from .errors import InputError, OOTDWarning, WeightsError
from .fusion import OutfittingFusion, transformer_block_names
from .guidance import cfg_combine, uses_cfg
from .masking import check_latent_mask, mask_to_latents, masked_person
from .models import CLIPImageProcessor, exported_config
from .progress import progress_enabled

__all__ = ["OOTDPipeline", "tryon", "load_toy_pipeline", "default_resolution", "prepare_images",
           "prepare_masks", "repaint", "feathered_paste", "pick_device", "compute_mask", "load_pipeline",
           "mask_to_latents", "check_latent_mask"]

OFFICIAL_RESOLUTION = (1024, 768)  # (H, W) of both released models
TOY_RESOLUTION = (128, 96)  # the toy profile
HD_UPPER_BODY_ONLY = ("the hd variant was trained on upper_body only (VITON-HD); lower_body and dresses try-ons need "
                      "the dc variant (--variant dc)")


# --- inputs -----------------------------------------------------------------------------------------------------------
def default_resolution(vae) -> tuple[int, int]:
    """Profile resolution implied by the VAE when nothing else says it: the toy VAE (``AutoencoderTiny``, or an
    ``AutoencoderKL`` whose ``sample_size`` is at most 256) → 128×96; Stable Diffusion's VAE → the released 1024×768."""
    size = getattr(vae.config, "sample_size", None)
    if size is None:  # AutoencoderTiny records no size: it is the toy VAE
        return TOY_RESOLUTION
    height = int(size[0] if isinstance(size, (list, tuple)) else size)
    return (height, height * 3 // 4) if height <= 256 else OFFICIAL_RESOLUTION


def _as_list(x) -> list:
    """One input or a batch of inputs → list of single inputs (batched arrays / tensors are split)."""
    if isinstance(x, (list, tuple)):
        return list(x)
    if isinstance(x, np.ndarray) and x.ndim == 4:
        return list(x)
    if isinstance(x, torch.Tensor) and x.ndim == 4:
        return list(x)
    return [x]


def _image_tensor(img, size, what: str) -> tuple[torch.Tensor, tuple[int, int]]:
    """One image → ((3,H,W) tensor in [-1,1] at ``size`` (None: its own size), original (H, W)).

    PIL: any colour mode (RGBA is composited onto white). numpy: HxWx3, uint8 [0,255] or float [0,1].
    torch: (3,H,W) float in [-1,1].
    """
    if isinstance(img, np.ndarray):
        if img.ndim != 3 or img.shape[-1] != 3:
            raise InputError(f"{what}: numpy images must be H×W×3 (RGB), got shape {img.shape}")
        if img.dtype != np.uint8:
            if img.size and (img.min() < 0 or img.max() > 1):
                raise InputError(f"{what}: float numpy images must be in [0, 1], got [{img.min():.3g}, {img.max():.3g}]"
                                 "; pass uint8 for 0–255 values")
            img = (img * 255).round().astype(np.uint8)
        img = Image.fromarray(img)
    if isinstance(img, Image.Image):
        original = (img.height, img.width)
        h, w = size or original
        img = to_rgb(img)  # 16-bit scaled, transparency on white
        if img.size != (w, h):
            img = img.resize((w, h), Image.BICUBIC)
        return image_to_tensor(img), original
    if isinstance(img, torch.Tensor):
        if img.ndim != 3 or img.shape[0] != 3:
            raise InputError(f"{what}: tensors must be (3,H,W) or (B,3,H,W) in [-1,1], got shape {tuple(img.shape)}")
        x = img.detach().float().cpu()
        if x.numel() and (x.min() < -1.001 or x.max() > 1.001):
            raise InputError(f"{what}: tensor values must be in [-1, 1], got [{x.min():.3g}, {x.max():.3g}]; "
                             "convert with x / 127.5 - 1 (0–255) or x * 2 - 1 (0–1)")
        original = tuple(x.shape[-2:])
        h, w = size or original
        if original != (h, w):
            x = F.interpolate(x[None], size=(h, w), mode="bicubic", antialias=True, align_corners=False)[0]
        return x.clamp(-1, 1), original
    raise InputError(f"{what}: expected a PIL image, numpy array or tensor, got {type(img).__name__}")


def prepare_images(images, size, what: str = "image") -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """Image(s) → ((B,3,H,W) float tensor in [-1,1] at ``size`` (H, W), list of the original (H, W) sizes)."""
    items = _as_list(images)
    if not items:
        raise InputError(f"{what}: got an empty batch")
    pairs = [_image_tensor(im, size, f"{what}[{i}]" if len(items) > 1 else what) for i, im in enumerate(items)]
    if size is not None:
        for i, (_, original) in enumerate(pairs):
            _warn_if_stretched(original, size, f"{what}[{i}]" if len(items) > 1 else what)
    return torch.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def _warn_if_stretched(original, size, what: str):
    """The images are resized without keeping the aspect ratio (as released): say so when that visibly distorts."""
    (h, w), (th, tw) = original, size
    if min(h, w) < 32:
        warnings.warn(f"{what} is only {w}×{h} px; it is stretched to {tw}×{th} and carries almost no detail",
                      OOTDWarning, stacklevel=3)
    elif not 2 / 3 <= (w / h) / (tw / th) <= 3 / 2:
        g = math.gcd(tw, th)
        warnings.warn(f"{what} is {w}×{h} px, far from the model's {tw // g}:{th // g} ({tw}×{th}); it is stretched "
                      f"without keeping its aspect ratio: crop it to {tw // g}:{th // g} first", OOTDWarning,
                      stacklevel=3)


def _mask_tensor(mask, what: str) -> torch.Tensor:
    """One mask → (1,H,W) float in [0,1] at its own size."""
    if isinstance(mask, Image.Image):
        if mask.mode not in ("1", "L"):
            raise InputError(f"{what}: mask images must be mode 'L' or '1' (white = repaint), got mode {mask.mode!r}; "
                             "convert with mask.convert('L')")
        return torch.from_numpy(np.asarray(mask.convert("L")).copy()).float()[None] / 255
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(mask.copy())
    if isinstance(mask, torch.Tensor):
        m = mask.detach().cpu()
        m = m[0] if m.ndim == 3 and m.shape[0] == 1 else m
        if m.ndim != 2:
            raise InputError(f"{what}: masks must be (H,W), (1,H,W) or (B,1,H,W), got shape {tuple(mask.shape)}")
        m = m.float()
        if m.numel() and (m.min() < 0 or m.max() > 1):
            raise InputError(f"{what}: mask values must be in [0, 1] (1 = repaint), got [{m.min():.3g}, "
                             f"{m.max():.3g}]; divide a 0–255 mask by 255 or pass it as a PIL 'L' image")
        return m[None]
    raise InputError(f"{what}: expected a PIL 'L' image, bool / [0,1] array or tensor, got {type(mask).__name__}")


def prepare_masks(masks, sizes: Sequence[tuple[int, int]], size) -> torch.Tensor:
    """Mask(s) → (B,1,H,W) float {0,1} at ``size``. Each mask must have its person image's original size."""
    items = _as_list(masks)
    if isinstance(masks, (np.ndarray, torch.Tensor)) and masks.ndim == 3 and masks.shape[0] != 1 and len(sizes) > 1:
        items = list(masks)  # a (B,H,W) stack
    if len(items) != len(sizes):
        raise InputError(f"got {len(items)} masks for {len(sizes)} person images; pass one mask per person")
    out = []
    for i, (m, person_size) in enumerate(zip(items, sizes)):
        what = f"mask[{i}]" if len(items) > 1 else "mask"
        m = _mask_tensor(m, what)
        if tuple(m.shape[-2:]) != tuple(person_size):
            raise InputError(f"{what} is {m.shape[-1]}×{m.shape[-2]} (W×H) but its person image is "
                             f"{person_size[1]}×{person_size[0]}; compute the mask on the same image")
        m = F.interpolate(m[None], size=tuple(size), mode="nearest")[0]
        if not (m >= 0.5).any():
            warnings.warn(f"{what} is empty (all black): nothing is repainted and the result is the person unchanged; "
                          "white marks the region to repaint", OOTDWarning, stacklevel=2)
        out.append((m >= 0.5).float())
    return torch.stack(out)


def repaint(latents, original, noise, mask, scheduler) -> torch.Tensor:
    """Keep the sample inside the mask; outside it put the original latents noised to the sigma the scheduler's last
    ``step`` reached (after the last step: the clean original).

    The sigma is picked by the scheduler's step index, not by timestep value: Karras timesteps repeat at higher step
    counts (50 steps end ``…, 2, 1, 1, 0``) and a look-up by value finds the other one. So the scheduler must count
    from index 0: call ``scheduler.set_begin_index(0)`` after ``set_timesteps``.
    """
    step = scheduler.step_index
    if scheduler.begin_index is None or step is None:
        raise InputError("repaint needs the scheduler's step index: call scheduler.set_begin_index(0) after "
                         "set_timesteps and repaint after each scheduler.step")
    if step < len(scheduler.timesteps):
        # with a begin index set, add_noise uses sigmas[step_index]; the timestep only gives the batch shape
        original = scheduler.add_noise(original, noise, scheduler.timesteps[step:step + 1])
    return (1 - mask) * original + mask * latents


def feathered_paste(result, person, mask, feather: int) -> torch.Tensor:
    """Blend ``result`` into ``person`` (both (B,3,H,W)) with ``mask`` (B,1,H,W) feathered over ``feather`` pixels
    outside it: inside the mask the result, far outside it the original pixels, a soft ramp between. A user option
    (try-on tools commonly offer it): the released pipeline returns the decoded image, whose unmasked region has
    been through the VAE."""
    m = mask.to(result.dtype)
    if feather > 0:
        k = 2 * feather + 1
        grown = F.max_pool2d(m, k, stride=1, padding=feather)
        m = torch.maximum(m, F.avg_pool2d(grown, k, stride=1, padding=feather, count_include_pad=False))
    return m * result + (1 - m) * person.to(result.dtype)


def _broadcast(items: list, n: int, what: str) -> list:
    if len(items) == n:
        return items
    if len(items) == 1:
        return items * n
    raise InputError(f"got {len(items)} {what} for {n} pairs; pass one, or one per pair")


# --- the pipeline -----------------------------------------------------------------------------------------------------
class OOTDPipeline(DiffusionPipeline):
    """OOTDiffusion virtual try-on: person + garment + mask → person wearing the garment.

    Components: ``vae, text_encoder, tokenizer, image_encoder, feature_extractor, unet_garm, unet_vton, scheduler``
    (stock diffusers / transformers classes). Config: ``height``, ``width`` (the profile resolution) and
    ``model_type`` (``hd`` VITON-HD half-body, ``dc`` Dress Code with the category word in the prompt) and
    ``latent_mask``, how a call brings the mask to the latent grid unless told otherwise (:func:`mask_to_latents`:
    ``nearest`` as released; the toy checkpoint says ``any``).

    Load with :meth:`from_official` (released folder layout or hub repo; the shipped toy checkpoint uses that layout
    too) or :meth:`from_pretrained` (a ``save_pretrained`` folder, or a released-layout folder).
    """

    # the garment UNet and the encoders are needed once per call; the VAE encodes first and decodes last
    model_cpu_offload_seq = "text_encoder->image_encoder->unet_garm->unet_vton->vae"

    def __init__(self, vae: AutoencoderKL, text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer,
                 image_encoder: CLIPVisionModelWithProjection, feature_extractor: CLIPImageProcessor,
                 unet_garm: UNet2DConditionModel, unet_vton: UNet2DConditionModel,
                 scheduler: UniPCMultistepScheduler, height: int | None = None, width: int | None = None,
                 model_type: str = "hd", latent_mask: str = "nearest"):
        super().__init__()
        if model_type not in MODEL_TYPES:
            raise InputError(f"model_type={model_type!r} must be one of {MODEL_TYPES}")
        check_latent_mask(latent_mask)
        if unet_vton.config.in_channels != 2 * unet_garm.config.in_channels:
            raise InputError(f"unet_vton has in_channels={unet_vton.config.in_channels}, expected "
                             f"{2 * unet_garm.config.in_channels} (cat[noisy, masked-person latents])")
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                              feature_extractor=feature_extractor, unet_garm=unet_garm, unet_vton=unet_vton,
                              scheduler=scheduler)
        default_h, default_w = default_resolution(vae)
        self.register_to_config(height=int(height or default_h), width=int(width or default_w), model_type=model_type,
                                latent_mask=latent_mask)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)  # AutoencoderTiny records this key too

    # -- loading -------------------------------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, path_or_repo="levihsu/OOTDiffusion", variant: str | None = None, clip_model=None,
                      torch_dtype=None, final_sigmas_type: str = "sigma_min", height: int | None = None,
                      width: int | None = None, latent_mask: str | None = None) -> "OOTDPipeline":
        """Released weights (or a trained checkpoint, same layout) from a local folder or a hub repo id.

        ``variant``: ``hd`` or ``dc``. Not given: the ``model_type`` that training's export writes into
        ``model_index.json``, else the only variant a local folder holds, else ``hd``. The resolution likewise comes
        from the exported ``height`` / ``width``; the released files record none, so then from the VAE
        (:func:`default_resolution`). ``latent_mask`` likewise: given, else the index's, else ``nearest`` (as
        released)."""
        from .models import load_official_components, official_variant

        saved = exported_config(path_or_repo)
        variant = official_variant(path_or_repo, variant or saved.get("model_type"))
        comps = load_official_components(path_or_repo, variant, clip_model=clip_model, torch_dtype=torch_dtype,
                                         final_sigmas_type=final_sigmas_type)
        return cls(**comps, height=height or saved.get("height"), width=width or saved.get("width"),
                   model_type=variant, latent_mask=latent_mask or saved.get("latent_mask", "nearest"))

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, model_type: str | None = None,
                        **kwargs) -> "OOTDPipeline":
        """A ``save_pretrained`` folder; a folder in the released layout (``checkpoints/ootd`` or ``ootd/``) or the
        released hub repo id is handed to :meth:`from_official` with ``model_type`` as its variant (keywords:
        clip_model, torch_dtype, ...). A ``save_pretrained`` folder holds one model type: asking for another is an
        error."""
        from .hub import OFFICIAL_REPO

        path = Path(str(pretrained_model_name_or_path)).expanduser()
        released = path.is_dir() and ((path / "checkpoints" / "ootd").is_dir() or (path / "ootd").is_dir())
        if released or str(pretrained_model_name_or_path) == OFFICIAL_REPO:
            return cls.from_official(pretrained_model_name_or_path, variant=model_type, **kwargs)
        if path.is_dir() and not (path / "model_index.json").is_file():
            raise WeightsError(f"{path} holds neither model_index.json (an OOTDPipeline.save_pretrained folder) nor "
                               "checkpoints/ootd/ (the released layout); pass one of those")
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if model_type is not None and pipe.config.model_type != model_type:
            raise InputError(f"{path} holds a {pipe.config.model_type!r} model, not {model_type!r}; drop the variant "
                             f"or pass {pipe.config.model_type!r}")
        return pipe

    # -- LoRA adapters (ootd_lib.lora) ---------------------------------------------------------------------------------
    def load_lora(self, path, scale: float = 1.0) -> "OOTDPipeline":
        """Load the LoRA adapter folder ``path`` (a training run's ``lora/``) into both UNets, its low-rank updates
        scaled by ``scale`` (0: the base model). Refused with a ``WeightsError`` when it was trained on another variant
        or base. An adapter already loaded is unloaded first, so the new one replaces it (a refused one then leaves
        the base model). An sd15-based adapter's fully trained ``conv_in`` is not scaled."""
        from .lora import check_adapter, load_adapter, read_adapter

        meta = read_adapter(path)  # an incomplete folder leaves the loaded adapter in place
        if self.lora is not None:
            self.unload_lora()
        check_adapter(meta, path, self.unet_garm, self.unet_vton, self.config.model_type)
        trained, held = tuple(meta["resolution"]), (self.config.height, self.config.width)
        if trained != held:  # it loads and runs, but was never trained at this size
            warnings.warn(f"LoRA adapter {path} was trained at {trained[1]}×{trained[0]}, the pipeline samples at "
                          f"{held[1]}×{held[0]}", OOTDWarning, stacklevel=2)
        restore = load_adapter(path, meta, self.unet_garm, self.unet_vton, scale)
        self._lora = dict(path=str(path), meta=meta, scale=float(scale), fused=False, restore=restore)
        return self

    @property
    def lora(self) -> dict | None:
        """The loaded adapter: ``path``, ``meta`` (its ``ootd_lora.json``), ``scale``, ``fused``; None without one."""
        return getattr(self, "_lora", None)

    def _require_lora(self, what: str) -> dict:
        if self.lora is None:
            raise InputError(f"{what}: no LoRA adapter is loaded; call pipe.load_lora(path) first")
        return self.lora

    def fuse_lora(self) -> None:
        """Merge the adapter (at its scale) into the UNets' weights: sampling then costs what the base does."""
        if not self._require_lora("fuse_lora")["fused"]:
            self.unet_garm.fuse_lora()
            self.unet_vton.fuse_lora()
            self._lora["fused"] = True

    def unfuse_lora(self) -> None:
        """Undo :meth:`fuse_lora` (the base weights come back up to float rounding: W + ΔW − ΔW)."""
        if self._require_lora("unfuse_lora")["fused"]:
            self.unet_garm.unfuse_lora()
            self.unet_vton.unfuse_lora()
            self._lora["fused"] = False

    def unload_lora(self) -> None:
        """Remove the adapter from both UNets (unfusing it first): the pipeline is its base model again."""
        from .lora import unload_adapter

        unload_adapter(self.unet_garm, self.unet_vton, self._require_lora("unload_lora")["restore"])
        self._lora = None

    # -- pieces of a call ----------------------------------------------------------------------------------------------
    def prepare_inputs(self, person, garment, mask):
        """→ person (B,3,H,W), garment (B,3,H,W) in [-1,1] and mask (B,1,H,W) {0,1}, all at the model resolution."""
        size = (self.config.height, self.config.width)
        persons, sizes = prepare_images(person, size, "person")
        garments, _ = prepare_images(garment, size, "garment")
        if mask is None:
            raise InputError("mask is required (white / 1 = region to repaint); compute one with ootd_lib.tryon(...) "
                             "or `ootd mask`")
        masks = prepare_masks(mask, sizes, size)
        n = max(len(persons), len(garments))
        persons, masks = (torch.cat([t] * n) if len(t) == 1 else t for t in (persons, masks))
        garments = torch.cat([garments] * n) if len(garments) == 1 else garments
        if not len(persons) == len(garments) == len(masks):
            raise InputError(f"got {len(persons)} person images, {len(garments)} garments and {len(masks)} masks; "
                             "pass one garment for all persons or one per person")
        return persons, garments, masks

    def encode_conditions(self, person, garment, mask, categories, device, dtype):
        """Prompt embeddings, garment latents, masked-person latents (unscaled) and repaint target (scaled)."""
        prompt = encode_prompt(garment, categories, self.config.model_type, self.tokenizer, self.text_encoder,
                               self.image_encoder, self.feature_extractor)
        garment_latents = encode_latents(self.vae, garment.to(device, dtype))
        person_latents = encode_latents(self.vae, masked_person(person, mask).to(device, dtype))
        original = encode_repaint_target(self.vae, person.to(device, dtype))
        return [t.to(device, dtype) for t in (prompt, garment_latents, person_latents, original)]

    @contextmanager
    def outfitting_fusion(self):
        """Install outfitting fusion for one call and restore the vton UNet's previous attention processors after
        (so a training ``OOTDModel`` sharing these UNets keeps its own fusion)."""
        attn1 = [self.unet_vton.get_submodule(n).attn1 for n in transformer_block_names(self.unet_vton)]
        before = [a.processor for a in attn1]
        fusion = OutfittingFusion(self.unet_garm, self.unet_vton)
        try:
            yield fusion
        finally:
            fusion.remove()
            for a, p in zip(attn1, before):
                a.set_processor(p)

    def progress_bar(self, iterable=None, total=None):
        """diffusers' sampling bar, or none under ``OOTD_PROGRESS=0`` (:mod:`ootd_lib.progress`)."""
        if progress_enabled():
            return super().progress_bar(iterable, total)
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, disable=True)

    def predict_noise(self, x, t, person_latents, prompt, scale):
        """ε for the current latents; with guidance the batch is [unconditional, conditional]."""
        double = uses_cfg(scale)
        x_in = self.scheduler.scale_model_input(torch.cat([x, x]) if double else x, t)
        person = torch.cat([person_latents] * 2) if double else person_latents
        eps = self.unet_vton(torch.cat([x_in, person], 1), t, prompt, return_dict=False)[0]
        return cfg_combine(*eps.chunk(2), scale) if double else eps

    # -- the call ------------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, person, garment, mask, category="upper_body", num_inference_steps: int = 20,
                 image_guidance_scale: float = 2.0, num_images_per_prompt: int = 1, generator=None,
                 output_type: str = "pil", return_dict: bool = True, paste_back: bool = False,
                 latent_mask: str | None = None):
        """Try ``garment`` on ``person`` inside ``mask``.

        Args:
            person, garment: PIL image, numpy HxWx3 (uint8, or float in [0,1]), tensor (3,H,W) in [-1,1], or a list /
                batch of them (one garment may serve many persons). Resized to ``config.height × config.width``.
            mask: PIL 'L'/'1' image (white = repaint), bool / [0,1] array or tensor; one per person, of its size.
            category: ``upper_body`` | ``lower_body`` | ``dresses`` (or one per pair); used in the ``dc`` prompt.
            num_inference_steps: UniPC steps (20 as released).
            image_guidance_scale: garment guidance s (2.0 as released); s == 1 runs a single, undoubled batch.
            num_images_per_prompt: samples per pair; outputs are grouped by pair (pair 0's samples first).
            generator: ``torch.Generator`` or a list of them (one per output image), for reproducible noise.
            output_type: ``pil`` | ``np`` (B,H,W,3 in [0,1]) | ``pt`` (B,3,H,W in [0,1]) | ``latent``.
            paste_back: blend the result into the original person with a feathered mask (:func:`feathered_paste`), so
                pixels outside the mask are exactly the input's; off by default, as released.
            latent_mask: how the mask reaches the latent grid for repaint (:func:`mask_to_latents`): ``nearest`` as
                released, or ``any`` (a latent cell is repainted when any of its pixels is masked; for thin masks).
                None: ``config.latent_mask`` (``nearest`` unless the checkpoint's ``model_index.json`` says otherwise).
        Returns:
            ``ImagePipelineOutput`` with ``.images`` (or a tuple ``(images,)`` when ``return_dict=False``).
        """
        if output_type not in ("pil", "np", "pt", "latent"):
            raise InputError(f"output_type={output_type!r} must be 'pil', 'np', 'pt' or 'latent'")
        if int(num_inference_steps) < 1 or int(num_images_per_prompt) < 1:
            raise InputError(f"num_inference_steps={num_inference_steps} and num_images_per_prompt="
                             f"{num_images_per_prompt} must be at least 1")
        if image_guidance_scale < 0:
            raise InputError(f"image_guidance_scale={image_guidance_scale} must be >= 0 (1 = no guidance)")
        latent_mask = self.config.latent_mask if latent_mask is None else latent_mask
        check_latent_mask(latent_mask)
        device, dtype = self._execution_device, self.unet_vton.dtype

        # 1. inputs and conditioning (per pair), then one row per output image
        person, garment, mask = self.prepare_inputs(person, garment, mask)
        categories = _broadcast(_as_list(category), len(person), "categories")
        for c in categories:
            if c not in CATEGORIES:
                raise InputError(f"category {c!r} must be one of {CATEGORIES}")
        if self.config.model_type == "hd" and set(categories) - {"upper_body"}:
            warnings.warn(HD_UPPER_BODY_ONLY, OOTDWarning, stacklevel=2)
        conds = self.encode_conditions(person, garment, mask, categories, device, dtype)
        prompt, garment_latents, person_latents, original = (t.repeat_interleave(num_images_per_prompt, 0)
                                                             for t in conds)
        m = mask_to_latents(mask, original.shape[-2:], latent_mask).to(device, dtype)
        m = m.repeat_interleave(num_images_per_prompt, 0)

        # 2. the garment UNet, once: [zero garment, garment] for guidance
        double = uses_cfg(image_guidance_scale)
        garments = torch.cat([torch.zeros_like(garment_latents), garment_latents]) if double else garment_latents
        prompts = torch.cat([prompt, prompt]) if double else prompt
        with self.outfitting_fusion() as fusion:
            states = fusion.garment_states(garments, prompts)
            fusion.set_garment(states)

            # 3. UniPC denoising with repaint outside the mask
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            self.scheduler.set_begin_index(0)  # repaint picks its sigma by step index (Karras timesteps repeat)
            timesteps = self.scheduler.timesteps
            noise = randn_tensor(original.shape, generator=generator, device=device, dtype=dtype)
            x = noise * self.scheduler.init_noise_sigma
            with self.progress_bar(total=len(timesteps)) as bar:
                for i, t in enumerate(timesteps):
                    eps = self.predict_noise(x, t, person_latents, prompts, image_guidance_scale)
                    if i == 0:  # cache the garment keys/values only now: with CPU offload the vton UNet has just
                        # been moved to the execution device by this first call
                        fusion.set_garment(states, cache_kv=True)
                    x = self.scheduler.step(eps, t, x, return_dict=False)[0]
                    x = repaint(x, original, noise, m, self.scheduler)
                    bar.update()
            fusion.clear()

        # 4. decode (and optionally paste the result back into the original pixels)
        if output_type == "latent":
            images = x
        else:
            decoded = decode_latents(self.vae, x)
            if paste_back:
                n = num_images_per_prompt
                decoded = feathered_paste(decoded, person.repeat_interleave(n, 0).to(decoded.device),
                                          mask.repeat_interleave(n, 0).to(decoded.device),
                                          feather=max(1, self.config.height // 64))
            images = self._postprocess(decoded, output_type)
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    @staticmethod
    def _postprocess(images: torch.Tensor, output_type: str):
        images = ((images.float() + 1) / 2).clamp(0, 1).cpu()
        if output_type == "pt":
            return images
        arr = images.permute(0, 2, 3, 1).numpy()
        if output_type == "np":
            return arr
        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arr]


def load_toy_pipeline(path=None, torch_dtype=None, variant: str = "hd") -> OOTDPipeline:
    """The shipped trained toy checkpoint (``assets/toy_checkpoint``, released folder layout, 128×96): ``hd``
    (VITON-HD layout, upper_body) or ``dc`` (Dress Code layout, all three categories, label-text prompt). Both share
    one VAE and one set of encoders, as the release does."""
    path = Path(path) if path is not None else TOY_CHECKPOINT
    if not (path.is_dir() and any(path.iterdir())):
        raise WeightsError(f"toy checkpoint {path} is missing; train it with `ootd train --config configs/toy.yaml` "
                           "(see assets/README.md) or pass the folder of another checkpoint")
    return OOTDPipeline.from_official(path, variant=variant, torch_dtype=torch_dtype)


# --- convenience entry points -----------------------------------------------------------------------------------------
PARSE_SIZE = (512, 384)  # (H, W) the released parser, OpenPose and mask rules work at


def tryon(person_image, garment_image, category: str = "upper_body", pipe: OOTDPipeline | None = None,
          parser=None, pose=None, mask=None, **call_kwargs):
    """One try-on with the mask computed when not given; returns the pipeline output (``.images``).

    The mask comes from, in order: ``mask``; the estimators (``parser``: a ``HumanParser``, ``pose``: an
    ``OpenPoseBody``) run on the person resized to 384×512 as released; or, for a toy / dataset image given as a
    path, the parse map and keypoints stored next to it (``ootd_lib.data.find_annotations``).
    """
    if pipe is None:
        raise InputError("tryon needs a pipeline: pass pipe=OOTDPipeline.from_official(...) or load_toy_pipeline()")
    path = Path(person_image) if isinstance(person_image, (str, Path)) else None
    person = load_rgb(path, LOAD_MAX_SIDE) if path is not None else person_image
    garment = load_rgb(garment_image, LOAD_MAX_SIDE) if isinstance(garment_image, (str, Path)) else garment_image
    if isinstance(mask, (str, Path)):
        mask = load_mask(mask, LOAD_MAX_SIDE)
    if mask is None:
        mask = compute_mask(person, category, pipe.config.model_type, parser=parser, pose=pose, person_path=path)
    return pipe(person, garment, mask, category=category, **call_kwargs)


def compute_mask(person, category: str, model_type: str, parser=None, pose=None, person_path=None) -> Image.Image:
    """Agnostic mask (PIL 'L', the person's size) from the estimators, or from a dataset image's annotations."""
    from .masking import agnostic_mask

    if parser is not None and pose is not None:
        small = _to_pil(person).convert("RGB").resize(PARSE_SIZE[::-1], Image.BICUBIC)
        parse, keypoints = parser(small), pose(small)
    else:
        from .data import find_annotations

        found = find_annotations(person_path, size=PARSE_SIZE) if person_path is not None else None
        if found is None:
            raise InputError("no mask: pass mask=..., or parser= and pose= estimators (released weights), or the "
                             "person as a path to a toy / dataset image that has its parse map and keypoints")
        parse, keypoints = found["parse"], found["keypoints"]
    m = np.asarray(agnostic_mask(parse, keypoints, category, model_type), dtype=bool)
    w, h = _to_pil(person).size
    return Image.fromarray(m.astype(np.uint8) * 255, "L").resize((w, h), Image.NEAREST)


def _to_pil(img) -> Image.Image:
    """One person image (PIL, array or tensor) → PIL RGB at its own size."""
    if isinstance(img, Image.Image):
        return img
    x, _ = prepare_images(img, None, "person")
    if len(x) != 1:
        raise InputError(f"tryon takes one person image, got a batch of {len(x)}; call the pipeline for batches")
    return Image.fromarray(tensor_to_uint8(x[0]))


def pick_device(device: str | None = None) -> str:
    """``device`` checked (``cpu``, ``cuda``, ``cuda:N``, ``mps``), or the best available: cuda, then mps, then cpu.

    A device this machine does not have is one :class:`InputError`, before any model is loaded."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if not device:
        return "cuda" if torch.cuda.is_available() else "mps" if mps else "cpu"
    name = str(device)
    kind, _, index = name.partition(":")
    if kind == "cpu" and not index:
        return name
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise InputError("CUDA is not available on this machine; use --device cpu")
        if index and not (index.isdigit() and int(index) < torch.cuda.device_count()):
            raise InputError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA "
                             "device(s), cuda:0 and up; use --device cuda")
        return name
    if kind == "mps" and not index:
        if not mps:
            raise InputError("MPS (Apple-silicon GPU) is not available on this machine; use --device cpu")
        return name
    raise InputError(f"unknown device {name!r}; use --device cpu, cuda, cuda:N or mps")


def load_pipeline(model=None, official=None, variant: str | None = None, torch_dtype=None, lora=None,
                  lora_scale: float = 1.0) -> OOTDPipeline:
    """The pipeline ``ootd tryon`` / ``ootd evaluate`` run: ``official`` (released weights: folder or hub repo id),
    else ``model`` (a folder in the released layout, or an ``OOTDPipeline.save_pretrained`` folder), else the shipped
    toy checkpoint (both variants).

    ``variant`` (hd | dc) picks the UNets of a released-layout folder (default: hd, or the folder's only variant); a
    ``save_pretrained`` folder holds one variant, so asking for the other is an error. ``lora``: an adapter folder
    loaded at ``lora_scale`` (:meth:`OOTDPipeline.load_lora`); a missing or incomplete one is reported before the
    model loads."""
    if lora:
        from .lora import read_adapter

        read_adapter(lora)
    pipe = _load_base_pipeline(model, official, variant, torch_dtype)
    return pipe.load_lora(lora, scale=lora_scale) if lora else pipe


def _load_base_pipeline(model, official, variant, torch_dtype) -> OOTDPipeline:
    from .hub import OFFICIAL_REPO

    if variant is not None and variant not in MODEL_TYPES:
        raise InputError(f"variant={variant!r} must be one of {MODEL_TYPES}")
    if official:
        return OOTDPipeline.from_official(official, variant=variant, torch_dtype=torch_dtype)
    if not model:
        return load_toy_pipeline(torch_dtype=torch_dtype, variant=variant or "hd")
    path = Path(str(model)).expanduser()
    if (path / "checkpoints" / "ootd").is_dir() or (path / "ootd").is_dir() or str(model) == OFFICIAL_REPO:
        return OOTDPipeline.from_official(model, variant=variant, torch_dtype=torch_dtype)
    pipe = OOTDPipeline.from_pretrained(model, torch_dtype=torch_dtype)
    if variant is not None and pipe.config.model_type != variant:
        raise InputError(f"{model} holds a {pipe.config.model_type} pipeline, not {variant}; drop --variant or pass a "
                         f"{variant} model")
    return pipe
