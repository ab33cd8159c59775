"""File-level entry points: what ``ootd mask / tryon / train / train-vae / evaluate`` and the notebooks call.

Each function here reads the user's files, checks what was passed (before any model loads), picks the device, loads
the models and writes the results; the work itself is done by the stage modules below it:

* :func:`tryon_files` (``ootd tryon``) — :func:`ootd_lib.pipeline.load_pipeline`, the mask from the dataset's
  annotations or the released estimators (:func:`ootd_lib.pipeline.compute_mask`), then the pipeline;
* :func:`mask_person_file` (``ootd mask``) — :func:`ootd_lib.masking.agnostic_mask`;
* :func:`train_from_cli` (``ootd train``) — :func:`ootd_lib.training.train`;
* :func:`train_vae_from_cli` (``ootd train-vae``) — :func:`ootd_lib.toy_vae.train_toy_vae`;
* :func:`evaluate_from_cli` (``ootd evaluate``) — :func:`ootd_lib.evaluation.evaluate` / ``evaluate_toy``;
* :func:`notebook_components` — the components the notebooks load, with the toy fallback.

The stage modules never import this one. The heavy ones (diffusers, accelerate) are imported inside the functions, so
a bad argument is reported in milliseconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import CATEGORIES, TOY_CHECKPOINT, Config
from .data import IMAGE_SUFFIXES, LOAD_MAX_SIDE, check_output_file, find_annotations, load_mask, load_rgb
from .errors import DataError, InputError, WeightsError
from .masking import agnostic_mask, masked_person

__all__ = ["tryon_files", "mask_person_file", "train_from_cli", "train_vae_from_cli", "evaluate_from_cli",
           "notebook_components"]


def tryon_files(person, garment, category="upper_body", mask=None, model=None, official=None, variant=None,
                steps=20, scale=2.0, seed=0, samples=1, out="result.png", device=None, weights=None,
                paste_back=False, lora=None, lora_scale=1.0, latent_mask=None) -> list[Path]:
    """``ootd tryon``: read the images, load the model (default: the shipped toy checkpoint), write the result(s).

    ``variant``: ``hd`` / ``dc`` for ``model`` and ``official`` (None: what the folder says, else ``hd``).
    ``lora``: a LoRA adapter folder loaded into the model at ``lora_scale`` (:meth:`OOTDPipeline.load_lora`).
    ``latent_mask``: ``nearest`` (as released) or ``any`` (:func:`~ootd_lib.pipeline.mask_to_latents`); None: what the
    model's folder says.

    With ``samples > 1`` the files are ``out`` with ``_0``, ``_1``, ... before the suffix. Returns the written paths.
    Everything the user passed is checked before a model loads: the device, the image files (decoded), the output
    path, the step and sample counts.
    """
    from .pipeline import check_latent_mask, compute_mask, load_pipeline, pick_device

    device = pick_device(device)
    person_img, garment_img = load_rgb(person, LOAD_MAX_SIDE), load_rgb(garment, LOAD_MAX_SIDE)
    mask_img = load_mask(mask, LOAD_MAX_SIDE) if mask else None
    out = check_output_file(out, IMAGE_SUFFIXES, "--out")
    for flag, value in (("--steps", steps), ("--samples", samples)):
        if int(value) < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    if category not in CATEGORIES:
        raise InputError(f"category {category!r} must be one of {CATEGORIES}")
    if latent_mask is not None:
        check_latent_mask(latent_mask)
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    pipe = load_pipeline(model, official, variant, torch_dtype=dtype, lora=lora, lora_scale=lora_scale)
    pipe.to(device)
    parser = pose = None
    if mask_img is None:
        if find_annotations(person) is None:  # a real photo: the released human parser and OpenPose
            from .estimators import load_estimators

            parser, pose = load_estimators(weights or official, device=device)
        mask_img = compute_mask(person_img, category, pipe.config.model_type, parser=parser, pose=pose,
                                person_path=Path(person))
    generator = torch.Generator("cpu").manual_seed(int(seed))
    result = pipe(person_img, garment_img, mask_img, category=category, num_inference_steps=steps,
                  image_guidance_scale=scale, num_images_per_prompt=samples, generator=generator,
                  paste_back=paste_back, latent_mask=latent_mask)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if samples == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(samples)]
    for img, p in zip(result.images, paths):
        img.save(p)
        print(f"wrote {p}")
    return paths


def _estimate_annotations(image: Image.Image, weights, device):
    """Parse map + keypoints of a real photo with the released estimators, both at 512×384."""
    from .estimators import load_estimators

    parser, pose = load_estimators(weights, device=device or "cpu")
    return parser(image), pose(image)


def mask_person_file(person, category: str = "upper_body", model_type: str = "hd", weights=None, out="mask.png",
                     device=None) -> tuple[Path, Path]:
    """CLI ``ootd mask``: write the mask PNG (white = repaint) and ``<out>_masked.png`` (the grey-filled person).

    Images of a VITON-HD / Dress Code layout folder (real or toy) use the dataset's own parse map and keypoints, so no
    weights are needed; any other photo goes through the released human parser and OpenPose (``weights``: a local
    folder laid out like levihsu/OOTDiffusion, or the hub repo id).
    """
    person = Path(person)
    image = load_rgb(person, LOAD_MAX_SIDE)  # missing, a folder, not an image: one ImageFileError naming the file
    out = check_output_file(out, (".png",), "--out")  # a mask must be lossless
    ann = find_annotations(person)
    if ann is None:
        parse, keypoints = _estimate_annotations(image, weights, device)
    else:
        parse, keypoints = np.asarray(ann["parse"]), np.asarray(ann["keypoints"])
    mask = agnostic_mask(parse, keypoints, category, model_type)
    if mask.shape != (image.height, image.width):  # annotations at another size: bring the mask to the photo's size
        mask = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.NEAREST)) > 0
    out.parent.mkdir(parents=True, exist_ok=True)
    masked_out = out.with_name(out.stem + "_masked.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(out)
    masked_person(image, mask).save(masked_out)
    print(f"mask ({category}, {model_type}, {mask.mean():.1%} of the image) written to {out}; masked person to "
          f"{masked_out}")
    return out, masked_out


def train_from_cli(config, output_dir=None, max_steps=None, resume=None, overwrite=False,
                   allow_config_change=False) -> Path:
    """``ootd train``: load the YAML config, apply the command-line overrides, train."""
    from .training import train

    cfg = Config.from_yaml(config, output_dir=str(output_dir) if output_dir else None, max_train_steps=max_steps)
    final = train(cfg, resume=resume, overwrite=overwrite, allow_config_change=allow_config_change)
    print(f"trained {'LoRA adapter' if cfg.lora_rank else 'pipeline'} written to {final}")
    return final


def train_vae_from_cli(config, output_dir=None, max_steps=None, resume=None) -> Path:
    """``ootd train-vae``: load the YAML config, apply the command-line overrides, pre-train the toy VAE."""
    from .toy_vae import train_toy_vae

    overrides = dict(output_dir=str(output_dir) if output_dir else None, vae_pretrain_steps=max_steps)
    return train_toy_vae(Config.from_yaml(config, **overrides), resume=resume)


def evaluate_from_cli(model=None, data=None, layout="vitonhd", pairing="unpaired", out="results.json", steps=20,
                      scale=2.0, seed=0, limit=None, device=None, variant=None, untrained=False, lora=None,
                      lora_scale=1.0, latent_mask=None) -> dict:
    """``ootd evaluate``: the test split of a dataset through a pipeline folder (default: the shipped toy checkpoint).
    The options, the data folder and the output path are checked before the model loads.

    On a toy wardrobe (its ``toy_info.json`` beside the data) with unpaired pairs, the toy try-on metrics of
    :func:`~ootd_lib.evaluation.evaluate_toy` are measured per category too. ``untrained``: the same VAE and encoders
    with freshly initialised UNets (the reference a trained model is compared with). ``lora``: an adapter folder
    loaded at ``lora_scale`` (as ``ootd tryon --lora``). ``latent_mask``: the repaint-mask mode (None: the model's
    own)."""
    from .data import DressCodeDataset, MaskedTryOnDataset, VitonHDDataset
    from .evaluation import evaluate, evaluate_toy, format_metrics
    from .pipeline import check_latent_mask, load_pipeline, pick_device

    if data is None or not Path(data).is_dir():
        raise DataError(f"--data {data} is not a folder; pass a dataset root (make a toy one with `ootd toy-data`)")
    if limit is not None and int(limit) < 1:
        raise InputError(f"--limit must be >= 1, got {limit} (leave it out to evaluate every pair)")
    if int(steps) < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    if latent_mask is not None:
        check_latent_mask(latent_mask)
    device = pick_device(device)
    check_output_file(out, what="--out")
    if lora and untrained:
        raise InputError("--lora and --untrained exclude each other: an adapter only fits the UNets it was trained on")
    variant = variant or ("dc" if layout == "dresscode" else "hd")
    pipe = load_pipeline(model, variant=variant, lora=lora, lora_scale=lora_scale)
    if untrained:
        from .models import build_toy_components

        fresh = build_toy_components(seed)
        pipe.register_modules(unet_garm=fresh["unet_garm"], unet_vton=fresh["unet_vton"])
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    latent_mask = pipe.config.latent_mask if latent_mask is None else latent_mask  # the model's own unless told
    size = (pipe.config.height, pipe.config.width)
    info_path = Path(data) / "toy_info.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else None
    categories = ["upper_body"] if layout == "vitonhd" else (info or {}).get("categories", ["upper_body", "lower_body",
                                                                                            "dresses"])
    summary = dict(model=str(model or TOY_CHECKPOINT), variant=variant, untrained=untrained,
                   lora=str(lora) if lora else None, lora_scale=lora_scale if lora else None, data=str(data),
                   layout=layout, pairing=pairing, steps=steps, scale=scale, seed=seed,
                   latent_mask=latent_mask)
    if info is not None and pairing == "unpaired":
        summary["toy"] = {}
        for cat in categories:
            base = (VitonHDDataset(data, "test", pairing, size=size) if layout == "vitonhd"
                    else DressCodeDataset(data, "test", pairing, categories=(cat,), size=size))
            res = evaluate_toy(pipe, MaskedTryOnDataset(base, pipe.config.model_type), info, steps=steps,
                               scale=scale, seed=seed, limit=limit, k=min(16, info["n_test"]),
                               latent_mask=latent_mask)
            summary["toy"][cat] = {k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}
            print(f"{cat}: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items() if isinstance(v, float)))
    else:
        base = (VitonHDDataset(data, "test", pairing, size=size) if layout == "vitonhd"
                else DressCodeDataset(data, "test", pairing, size=size))
        result = evaluate(pipe, MaskedTryOnDataset(base, pipe.config.model_type), steps=steps, scale=scale, seed=seed,
                          limit=limit, latent_mask=latent_mask)
        print(format_metrics(result))
        summary.update(n=result["n"], metrics=result["metrics"], skipped=result["skipped"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2))
    print(f"results written to {out}")
    return summary


def notebook_components(profile: str = "toy", root=".", variant: str = "hd"):
    """What the notebooks load: ``(components, profile_used, device, dtype, note)``.

    ``official`` reads ``<root>/checkpoints`` when present, else the hub; when the weights cannot be had it says
    "skipped: ..." in ``note`` and falls back to ``toy``. ``toy`` uses the trained toy checkpoint when it exists.
    """
    from .models import load_profile_components

    root = Path(root)
    if profile == "official":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if device == "cuda" else torch.float32
        local = root if (root / "checkpoints" / "ootd").is_dir() else None
        try:
            comps = load_profile_components("official", pretrained=local, variant=variant, torch_dtype=dtype)
            return ({k: v.to(device) if isinstance(v, torch.nn.Module) else v for k, v in comps.items()}, "official",
                    device, dtype, f"official {variant} weights on {device}")
        except WeightsError as err:
            note = f"skipped: official weights not available ({err}); falling back to the toy profile. "
    else:
        note = ""
    comps = load_profile_components("toy", variant=variant)
    trained = TOY_CHECKPOINT.is_dir() and any(TOY_CHECKPOINT.iterdir())
    note += ("toy profile: trained toy checkpoint" if trained else
             "toy profile: random (untrained) toy weights — the mechanics are real, the pictures are noise")
    return comps, "toy", "cpu", torch.float32, note
