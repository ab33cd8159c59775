"""Test support: miniature weight folders laid out like the real hub repos, written from the tiny toy configs.

* :func:`write_mini_official` — like ``levihsu/OOTDiffusion``: ``checkpoints/ootd/{vae,text_encoder,tokenizer,scheduler,
  feature_extractor,model_index.json}``, ``checkpoints/ootd/ootd_{hd,dc}/checkpoint-36000/unet_{garm,vton}``
  (UNet configs naming the released ``UNetGarm2DConditionModel`` / ``UNetVton2DConditionModel`` classes and
  diffusers 0.24; VAE and text encoder as ``.bin`` pickles as released) and ``checkpoints/clip-vit-large-patch14``
  (a full ``CLIPModel``, as ``openai/clip-vit-large-patch14`` is).
* :func:`write_mini_sd15` — like ``stable-diffusion-v1-5/stable-diffusion-v1-5`` (4-channel UNet, PNDM scheduler).
* :func:`write_mini_clip` — like ``openai/clip-vit-large-patch14``.

Used by the model-loading tests here and by the pipeline tests (``OOTDPipeline.from_official``). Nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import CLIPConfig, CLIPModel

from ootd_lib.models import (OFFICIAL_CHECKPOINT, TOY_LATENT_CHANNELS, build_toy_components, toy_text_config,
                             toy_vision_config)

RELEASED_UNET_CLASSES = {"unet_garm": "UNetGarm2DConditionModel", "unet_vton": "UNetVton2DConditionModel"}

# The released scheduler config as diffusers 0.24 wrote it (keys of that era included; solver_type midpoint → bh2).
RELEASED_SCHEDULER_CONFIG = {
    "_class_name": "UniPCMultistepScheduler", "_diffusers_version": "0.24.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "disable_corrector": [],
    "dynamic_thresholding_ratio": 0.995, "lower_order_final": True, "num_train_timesteps": 1000, "predict_x0": True,
    "prediction_type": "epsilon", "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True,
    "solver_order": 2, "solver_p": None, "solver_type": "midpoint", "steps_offset": 1, "thresholding": False,
    "timestep_spacing": "linspace", "trained_betas": None, "use_karras_sigmas": True,
}


def _save_bin(model, folder: Path, filename: str) -> None:
    """A transformers/diffusers model as config.json + a pickled state dict (the released .bin format)."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    for f in folder.glob("*.safetensors"):
        f.unlink()
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, folder / filename)


def _save_unet(unet, folder: Path, class_name: str, fp16_variant: bool) -> None:
    unet.save_pretrained(folder)
    if fp16_variant:  # what `save_pretrained(variant="fp16")` of a half-precision model writes
        save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()},
                  str(folder / "diffusion_pytorch_model.fp16.safetensors"), metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.update(_class_name=class_name, _diffusers_version="0.24.0")
    (folder / "config.json").write_text(json.dumps(config, indent=2))


def write_mini_clip(folder, seed: int = 0) -> Path:
    """A miniature ``openai/clip-vit-large-patch14``: full CLIPModel (text + vision) + preprocessor config."""
    folder = Path(folder)
    comps = build_toy_components(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)
        config = CLIPConfig(text_config=toy_text_config(comps["tokenizer"]).to_dict(),
                            vision_config=toy_vision_config().to_dict(), projection_dim=64)
        model = CLIPModel(config)
    model.save_pretrained(folder)
    comps["feature_extractor"].save_pretrained(folder)
    comps["tokenizer"].save_pretrained(folder)
    return folder


def mini_kl_vae(latent_channels: int = TOY_LATENT_CHANNELS, seed: int = 0):
    """A miniature of Stable Diffusion's VAE class (``AutoencoderKL``, factor 8): the released folders hold one, the
    toy checkpoint an ``AutoencoderTiny``; both must load."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 3)
        return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=1,
                             block_out_channels=(8, 16, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                             up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=8, sample_size=128).eval()


def write_mini_official(root, variants=("hd", "dc"), seed: int = 0, with_clip: bool = True,
                        fp16_variant: bool = False) -> dict:
    """Write a miniature of the released ``levihsu/OOTDiffusion`` layout under ``root``.

    Returns the components written per variant, ``{"hd": components, "dc": ..., "root": Path}``, so tests can
    compare loaded weights with the written ones. The two variants get different UNet weights (seed, seed + 1).
    """
    root = Path(root)
    ootd = root / "checkpoints" / "ootd"
    base = dict(build_toy_components(seed), vae=mini_kl_vae(seed=seed))
    _save_bin(base["vae"], ootd / "vae", "diffusion_pytorch_model.bin")
    _save_bin(base["text_encoder"], ootd / "text_encoder", "pytorch_model.bin")
    base["tokenizer"].save_pretrained(ootd / "tokenizer")
    base["feature_extractor"].save_pretrained(ootd / "feature_extractor")
    (ootd / "scheduler").mkdir(parents=True, exist_ok=True)
    (ootd / "scheduler" / "scheduler_config.json").write_text(json.dumps(RELEASED_SCHEDULER_CONFIG, indent=2))
    # model_index.json names the released repo's own UNet modules: a generic DiffusionPipeline cannot load it.
    (ootd / "model_index.json").write_text(json.dumps({
        "_class_name": "OotdPipeline", "_diffusers_version": "0.24.0",
        "feature_extractor": ["transformers", "CLIPImageProcessor"],
        "scheduler": ["diffusers", "UniPCMultistepScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet_garm": ["pipelines_ootd.unet_garm_2d_condition", "UNetGarm2DConditionModel"],
        "unet_vton": ["pipelines_ootd.unet_vton_2d_condition", "UNetVton2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    written = {"root": root}
    for i, variant in enumerate(variants):
        comps = base if i == 0 else dict(build_toy_components(seed + i), vae=base["vae"])
        folder = ootd / f"ootd_{variant}" / OFFICIAL_CHECKPOINT
        for name, cls in RELEASED_UNET_CLASSES.items():
            _save_unet(comps[name], folder / name, cls, fp16_variant)
        written[variant] = dict(base, unet_garm=comps["unet_garm"], unet_vton=comps["unet_vton"])
    if with_clip:
        write_mini_clip(root / "checkpoints" / "clip-vit-large-patch14", seed)
    return written


def write_mini_sd15(folder, seed: int = 0) -> dict:
    """Write a miniature Stable Diffusion 1.5 folder (4-channel UNet, VAE, text encoder, tokenizer, PNDM scheduler).

    Returns the components written (``unet`` is the 4-channel UNet).
    """
    from diffusers import PNDMScheduler, UNet2DConditionModel

    from ootd_lib.models import toy_unet_config

    folder = Path(folder)
    comps = dict(build_toy_components(seed), vae=mini_kl_vae(4, seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 7)
        unet = UNet2DConditionModel(**toy_unet_config(4))
    unet.save_pretrained(folder / "unet")
    comps["vae"].save_pretrained(folder / "vae")
    comps["text_encoder"].save_pretrained(folder / "text_encoder")
    comps["tokenizer"].save_pretrained(folder / "tokenizer")
    comps["feature_extractor"].save_pretrained(folder / "feature_extractor")
    PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True,
                  steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.6.0",
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "PNDMScheduler"], "feature_extractor": ["transformers", "CLIPImageProcessor"]}))
    return dict(comps, unet=unet)
