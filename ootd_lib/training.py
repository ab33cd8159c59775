"""Fine-tuning OOTDiffusion with accelerate: both UNets trained, everything else frozen.

One training step (paper recipe, :func:`training_step`)::

    x0      = vae.encode(person).mode() * scaling_factor        the target, scaled latents
    noise   ~ N(0, I);  t ~ U{0..999}                             SD-1.5 DDPM schedule
    x_t     = add_noise(x0, noise, t)
    garment = garment_latents * keep,  keep ~ Bernoulli(1 - p)    outfitting dropout (p = 0.1)
    prompt  = its image token * keep_prompt                       prompt_dropout (toy option; paper: none)
    eps     = OOTDModel(x_t, t, masked_person_latents, garment, clip_prompt)   garment UNet at t = 0 inside
    loss    = mse(eps, noise)                                   (loss_weighting: per-t weights, default none;
                                                                 loss_outside_mask: per-cell weights, default 1)

:func:`train` runs the stages in order, each from the module that owns it:

1. the run folder — an earlier run is never overwritten silently, a resume must use its checkpoint's config
   (:mod:`ootd_lib.checkpoints`);
2. data — the dataset with its agnostic masks (:func:`ootd_lib.data.build_dataset`), the frozen encoders (the toy
   profile's pre-trained VAE: :mod:`ootd_lib.toy_vae`), latents encoded once with ``cache_latents``
   (:mod:`ootd_lib.conditioning`);
3. the trained model — ``OOTDModel`` with the garment UNet's unused tail frozen, AdamW (8-bit optional), the LR
   schedule, EMA;
4. the loop — one optimizer step = ``gradient_accumulation_steps`` micro-batches (:func:`optimizer_step`), with a
   non-finite-loss guard; checkpoints, the loss log and sample grids (:mod:`ootd_lib.viz`);
5. the export — the released folder layout, with the resolution and model type in ``model_index.json``.

LoRA (``lora_rank > 0``, :mod:`ootd_lib.lora`): the same loop on the same data, with both UNets frozen (held in the
mixed-precision dtype) and peft adapters training in float32; checkpoints hold the adapters only, and the export is an
adapter folder ``lora/`` instead of a whole pipeline.

Exact by construction: the samples of every micro-batch (:class:`StepBatchSampler`) and its noise, timesteps and
dropout (:func:`draw_randomness`) are pure functions of ``(seed, optimizer step, micro-step, process)``, drawn for the
global batch. A resumed run (at any step, mid-epoch too) is bit-identical to an uninterrupted one; accumulation and
data parallelism match a single process with the same global batch up to float summation order.

Run it as ``ootd train --config configs/toy.yaml`` or ``accelerate launch -m ootd_lib.training --config ...``; what was
verified for single process, DDP, FSDP and DeepSpeed is listed in the README ("Training").
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import is_main_process, load_checkpoint, prepare_run_folder, prune_checkpoints, save_checkpoint
from .conditioning import cache_latents, encode_batch
from .config import LOSS_WEIGHTINGS, Config
from .data import build_dataset
from .errors import ConfigError, DataError, OOTDError, TrainingError
from .progress import progress_enabled
from .viz import LossLog, plot_loss, sample_grid

__all__ = ["train", "training_step", "optimizer_step", "draw_randomness", "loss_weights",
           "StepBatchSampler", "build_components", "trainable_model", "optimizer_parts", "make_ema", "full_unets",
           "export_lora", "FSDP_UNITS", "main", "adamw_class", "cast_frozen"]


# --- the step ------------------------------------------------------------------------------------------------------------
def draw_randomness(seed: int, step: int, global_batch: int, latent_shape, p: float,
                    rank: int = 0, world: int = 1, p_prompt: float = 0.0) -> dict:
    """Noise, timesteps and the dropout keep-mask of optimizer step ``step``, drawn for its whole global batch (every
    micro-step of every process); returns part ``rank`` of ``world`` equal parts of the rows. :func:`train` asks for
    part ``micro-step × processes + process`` of ``accumulation × processes``, so neither resuming, accumulation nor
    data parallelism changes the stream. ``p_prompt > 0`` adds ``keep_prompt``, drawn after the rest, so the other
    draws stay those of a run without it."""
    from .guidance import dropout_keep_mask

    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    noise = torch.randn((global_batch, *latent_shape), generator=g)
    timesteps = torch.randint(0, 1000, (global_batch,), generator=g)
    keep = dropout_keep_mask(global_batch, p, generator=g)
    rows = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    out = dict(noise=noise[rows], timesteps=timesteps[rows], keep=keep[rows])
    if p_prompt > 0:
        out["keep_prompt"] = dropout_keep_mask(global_batch, p_prompt, generator=g)[rows]
    return out


def loss_weights(noise_scheduler, timesteps: torch.Tensor, weighting: str = "none") -> torch.Tensor:
    """Per-sample weights of the ε-MSE. ``none``: 1 (the paper's loss). ``truncated_snr``: max(1, 1/SNR(t)), the
    "truncated SNR" weighting of Salimans & Ho (2022) = x0-MSE × max(SNR, 1).

    Why it exists: an ε-prediction model's ε error is √SNR × its x0 error, so plain ε-MSE barely rewards getting x0
    right at high noise (SNR(800) = 0.04), where the garment must set the colours. Measured on the first toy world
    (64×48, 1 000 steps, same data and noise stream): masked x0-MSE at t = 800 of 0.33 with it vs 0.47 with plain
    ε-MSE (t = 950: 0.66 vs 1.26). The paper recipe uses ``none``; every stage of the shipped toy checkpoint uses
    ``truncated_snr``.
    """
    if weighting == "none":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    if weighting != "truncated_snr":
        raise ConfigError(f"loss_weighting={weighting!r} is not one of {LOSS_WEIGHTINGS}")
    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return (1 - alphas).div(alphas).clamp_min(1.0)


def training_step(model, noise_scheduler, latents: dict, rand: dict, weighting: str = "none",
                  outside: float = 1.0) -> torch.Tensor:
    """ε-MSE loss of one batch (see the module docstring), optionally weighted per timestep (:func:`loss_weights`).
    ``latents``: target/person/garment/prompt (and ``mask``, the latent mask, when ``outside < 1``); ``rand``:
    noise/timesteps/keep (and ``keep_prompt`` with prompt dropout) from :func:`draw_randomness`.

    Prompt dropout zeroes the prompt's last token, the garment's CLIP image embedding (the dc label words stay), of
    the samples ``keep_prompt`` drops. Why: a toy checkpoint reads the garment mostly from that one global vector and
    hardly from the garment latents that outfitting fusion attends to (hd, 64 held-out pairs: another garment's prompt
    raises the masked x0 error by 0.04-0.07 at t = 450-950, zeroing the garment latents by 0.006-0.015), yet only the
    garment latents can carry where a stripe or a sleeve end is. Dropping the prompt makes the fusion path pay. The
    paper has no prompt dropout.

    ``outside < 1`` weights the error on latent cells outside the mask by ``outside`` and takes each sample's
    weighted mean. Why: at sampling, repaint replaces every cell outside the mask with the noised original after each
    step, so the prediction there is never used, yet it holds two thirds of the shipped hd checkpoint's loss (0.059 of
    0.092 on 64 held-out pairs, assets/loss_split.py) and three quarters of what wider UNets gained on it. The
    paper's loss is ``outside = 1``."""
    target = latents["target"]
    noise = rand["noise"].to(target.device, target.dtype)
    t = rand["timesteps"].to(target.device)
    keep = rand["keep"].to(target.device, target.dtype).view(-1, 1, 1, 1)
    noisy = noise_scheduler.add_noise(target, noise, t)
    prompt = latents["prompt"]
    if "keep_prompt" in rand:
        keep_prompt = rand["keep_prompt"].to(prompt.device, prompt.dtype).view(-1, 1, 1)
        prompt = torch.cat([prompt[:, :-1], prompt[:, -1:] * keep_prompt], dim=1)
    eps = model(noisy, t, latents["person"], latents["garment"] * keep, prompt)
    if weighting == "none" and outside == 1.0:
        return F.mse_loss(eps.float(), noise.float())
    error = (eps.float() - noise.float()).pow(2)
    if outside == 1.0:
        per_sample = error.flatten(1).mean(1)
    else:
        w = (latents["mask"] + outside * (1 - latents["mask"])).to(error.device).expand_as(error).flatten(1)
        per_sample = (error.flatten(1) * w).sum(1) / w.sum(1).clamp_min(1e-8)  # an empty mask with outside=0: 0
    return (per_sample * loss_weights(noise_scheduler, t, weighting)).mean()


def optimizer_step(accelerator, model, optimizer, noise_scheduler, window: list, max_grad_norm: float = 0.0,
                   weighting: str = "none", outside: float = 1.0) -> tuple[float, bool]:
    """One optimizer step over ``window``, a list of ``(latents, rand)`` micro-batches; returns (mean loss over the
    micro-batches and processes, whether the step was taken).

    Gradients accumulate over the window and are synchronised on its last micro-batch only (``accelerator.accumulate``).
    The step is taken only if every micro-batch's loss on every process is finite; otherwise the whole window's
    gradients are dropped on all processes alike."""
    losses = []
    for latents, rand in window:
        with accelerator.accumulate(model):
            loss = training_step(model, noise_scheduler, latents, rand, weighting, outside)
            accelerator.backward(loss)
        losses.append(loss.detach())
    losses = accelerator.gather(torch.stack(losses)[None])
    finite = bool(torch.isfinite(losses).all())
    if finite:
        if max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(losses.mean()), finite


class StepBatchSampler(torch.utils.data.Sampler):
    """This process's indices of every micro-batch from optimizer step ``start`` on (endless), as a pure function of
    ``(seed, step)``: an exact resume needs no sampler state, and no distributed wrapper can lose an epoch.

    Epoch ``e`` is the permutation drawn from ``seed * 100_003 + e``, read in windows of ``micro_batch ×
    accumulation`` samples, one per optimizer step; an incomplete window at the epoch's end is dropped, so step ``s``
    sees exactly the samples of one batch of ``micro_batch × accumulation``. Each micro-batch is split across
    processes, ``rank`` taking its ``1 / world`` share (accelerate's ``split_batches`` layout)."""

    def __init__(self, n: int, seed: int, micro_batch: int, accumulation: int = 1, rank: int = 0, world: int = 1,
                 start: int = 0):
        self.n, self.seed, self.micro_batch, self.accumulation = n, seed, micro_batch, accumulation
        self.rank, self.world, self.start = rank, world, start
        self.steps_per_epoch = n // (micro_batch * accumulation)

    def __iter__(self):
        per, step, order = self.micro_batch // self.world, self.start, None
        while True:
            epoch, k = divmod(step, self.steps_per_epoch)
            if k == 0 or order is None:
                order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
                order = order.tolist()
            for j in range(self.accumulation):
                first = (k * self.accumulation + j) * self.micro_batch + self.rank * per
                yield order[first:first + per]
            step += 1


# --- the parts ----------------------------------------------------------------------------------------------------------
# The FSDP units. The garment UNet's states are captured inside it and its output is unused, so a unit whose output
# is not on the gradient's way back (the last up block, the garment UNet as a whole) would be resharded after forward
# and never gathered again for backward. Transformer blocks and resnets are: every captured state is one's output or
# an op of the root unit (OOTDModel, which FSDP does not reshard after forward), and the one unit off the way back,
# the garment UNet's last transformer block, is frozen (it needs no backward).
FSDP_UNITS = ("BasicTransformerBlock", "ResnetBlock2D")


def check_fsdp_units(accelerator) -> None:
    """Under FSDP, the accelerate config must wrap exactly :data:`FSDP_UNITS` (``configs/accelerate/fsdp.yaml``)."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    if not _sharded(accelerator) or plugin is None:
        return
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is not transformer_auto_wrap_policy or set(plugin.transformer_cls_names_to_wrap or ()) != set(FSDP_UNITS):
        raise ConfigError("FSDP must wrap OOTDiffusion's transformer blocks and resnets, one unit each: set "
                          "fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP and fsdp_transformer_layer_cls_to_wrap: "
                          f"{','.join(FSDP_UNITS)} (see configs/accelerate/fsdp.yaml)")


def make_accelerator(cfg: Config):
    """accelerate's ``Accelerator`` for this run: mixed precision, and accumulation counted by optimizer steps (not
    synchronised at the end of the data, which :class:`StepBatchSampler` does not have)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, GradientAccumulationPlugin

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # a process may train several times (a notebook, the tests); accelerate's process-wide state would refuse a
    # different mixed_precision the second time
    AcceleratorState._reset_state()
    # torchrun without GPUs: accelerate only picks CPU data parallelism (gloo) when told it is a CPU run
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    plugin = GradientAccumulationPlugin(num_steps=cfg.gradient_accumulation_steps, sync_with_dataloader=False)
    accelerator = Accelerator(cpu=cpu_ddp, mixed_precision=cfg.mixed_precision, gradient_accumulation_plugin=plugin)
    check_fsdp_units(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        accelerator.print("warning: DeepSpeed has never been run with ootd_lib (README, \"Training\"); prefer FSDP")
    return accelerator


def _weight_dtype(accelerator) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)


def _sharded(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def build_components(cfg: Config) -> dict:
    """Starting weights of the configured profile (the toy VAE is replaced in :func:`frozen_components`), with the
    UNets of ``init_unets`` when set. For the toy profile, an ``init_unets`` in the released layout gives every
    component (its encoders were trained with its UNets); a ``checkpoint-N`` folder only the UNets."""
    from .models import (build_sd15_components, build_toy_components, held_variants, load_official_components,
                         load_unets)

    if cfg.profile == "toy" and cfg.init_unets and not (Path(cfg.init_unets) / "unet_garm").is_dir():
        # a trained toy checkpoint (released layout): its frozen encoders belong to its UNets, so they come along
        # (building them from cfg.seed would pair the UNets with encoders they were never trained with). A folder
        # that holds only the other variant starts the run from that one: a dc run fine-tuned from hd UNets
        held = held_variants(cfg.init_unets)
        variant = held[0] if len(held) == 1 else cfg.model_type
        comps = load_official_components(cfg.init_unets, variant, clip_model=cfg.clip_model)
        widths = tuple(comps["unet_vton"].config.block_out_channels)
        if widths != tuple(cfg.toy_unet_channels):
            raise ConfigError(f"init_unets {cfg.init_unets} holds UNets of widths {list(widths)}, but config field "
                              f"toy_unet_channels is {list(cfg.toy_unet_channels)}; set toy_unet_channels: "
                              f"{list(widths)} to continue them")
        return comps
    if cfg.profile == "toy":
        comps = build_toy_components(cfg.seed, cfg.toy_unet_channels)
    elif cfg.profile == "sd15":
        comps = build_sd15_components(cfg.pretrained, clip_model=cfg.clip_model or "openai/clip-vit-large-patch14")
    else:
        comps = load_official_components(cfg.pretrained, cfg.model_type, clip_model=cfg.clip_model)
    if cfg.init_unets:
        comps.update(load_unets(cfg.init_unets, cfg.model_type, like=(comps["unet_garm"], comps["unet_vton"])))
    return comps


def frozen_components(cfg: Config, accelerator, device="cpu", dtype=torch.float32) -> dict:
    """The profile's components with the toy profile's pre-trained VAE (trained first when missing, see
    :func:`ootd_lib.toy_vae.load_or_pretrain_vae`); the frozen encoders on ``device`` in ``dtype``."""
    from .toy_vae import load_or_pretrain_vae

    comps = build_components(cfg)
    vae = load_or_pretrain_vae(cfg, accelerator)
    comps = comps if vae is None else dict(comps, vae=vae)
    for name in ("vae", "text_encoder", "image_encoder"):
        comps[name].requires_grad_(False).to(device)
        if dtype != torch.float32:  # (a float32 .to() would only make diffusers warn about an empty list of modules)
            cast_frozen(comps[name], dtype)
    return comps


def cast_frozen(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Hold the frozen parts of ``module`` in ``dtype`` (the mixed-precision dtype: half of float32's memory) and
    leave its trained parameters float32 master weights; returns ``module``.

    A wholly frozen module (the VAE and the encoders) is cast whole, buffers included. In a partly trained one every
    wholly frozen submodule is, the trained ones and parameters held directly by a mixed module stay float32: under
    LoRA (:func:`trainable_model`) the base UNets' layers are cast and their adapters kept float32. Such a module
    computes under autocast only (accelerate's, in training). Full fine-tuning leaves its UNets alone: the garment
    UNet's frozen tail is 2.4 M of its 860 M parameters, not worth a mixed UNet."""
    if not any(p.requires_grad for p in module.parameters()):
        return module.to(dtype)
    for child in module.children():
        cast_frozen(child, dtype)
    return module


def training_data(cfg: Config, comps: dict, accelerator, dtype):
    """The training set with its masks, or its latents encoded once (``cache_latents``). The main process goes first
    (it writes the toy wardrobe when it is missing); the others then read it. With ``category_repeats``, a view that
    repeats the pairs of the named categories."""
    with accelerator.main_process_first():
        dataset = build_dataset(cfg, cache_dir=cfg.mask_cache or Path(cfg.output_dir) / "mask_cache",
                                generate=accelerator.is_main_process, outlines=cfg.train_mask_outline)
    categories = [pair[2] for pair in dataset.base.pairs]
    if cfg.cache_latents:
        dataset = cache_latents(dataset, comps, cfg.model_type, accelerator.device, dtype=dtype,
                                latent_mask=loss_latent_mask(cfg))
    if not cfg.category_repeats:
        return dataset
    return torch.utils.data.Subset(dataset, repeated_indices(categories, cfg.category_repeats))


def repeated_indices(categories: list[str], repeats: dict[str, int]) -> list[int]:
    """Each index ``i`` ``repeats[categories[i]]`` times (1 for a category not named), in order: the training set of
    ``category_repeats``, which the step sampler then shuffles like any other."""
    return [i for i, c in enumerate(categories) for _ in range(repeats.get(c, 1))]


def trainable_model(comps: dict, cfg: Config, dtype: torch.dtype = torch.float32):
    """``OOTDModel`` on the two UNets, with the garment UNet's unused tail frozen: the layers after the input of its
    last transformer block never influence the loss, so freezing them changes nothing but lets DDP run without
    ``find_unused_parameters`` and keeps them out of the optimizer.

    ``lora_rank > 0``: both UNets frozen with LoRA adapters (:func:`ootd_lib.lora.add_lora`); the frozen weights in
    ``dtype`` (the mixed-precision one), what trains in float32 (:func:`cast_frozen`)."""
    from .models import OOTDModel

    model = OOTDModel(comps["unet_garm"], comps["unet_vton"]).train()
    if cfg.lora_rank:
        from .lora import add_lora

        add_lora(model, cfg)
        if dtype != torch.float32:
            cast_frozen(model, dtype)
    else:
        for name in model.fusion.unused_garment_parameters():
            model.unet_garm.get_parameter(name).requires_grad_(False)
    if cfg.gradient_checkpointing:
        model.unet_garm.enable_gradient_checkpointing()
        model.unet_vton.enable_gradient_checkpointing()
    return model


def adamw_class(cfg: Config, device) -> type:
    """torch's AdamW, or bitsandbytes' 8-bit one with ``use_8bit_adam`` (CUDA only).

    A ``use_8bit_adam`` run that cannot have it is a :class:`ConfigError`, not a fallback to 32-bit AdamW: the
    fallback would cost 6 more bytes per trained parameter (10 GB for the two SD-1.5 UNets, an out-of-memory far from
    its cause), and its ``config.yaml`` and checkpoints would claim an optimizer it never ran (whose states an 8-bit
    resume cannot load)."""
    if not cfg.use_8bit_adam:
        return torch.optim.AdamW
    if torch.device(device).type != "cuda":
        raise ConfigError(f"use_8bit_adam: true needs a CUDA GPU (bitsandbytes' 8-bit AdamW runs CUDA kernels) but "
                          f"this run is on {device}; set use_8bit_adam: false")
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise ConfigError("use_8bit_adam: true needs bitsandbytes, which is not installed: pip install bitsandbytes, "
                          "or set use_8bit_adam: false") from None
    return bnb.optim.AdamW8bit


def optimizer_parts(cfg: Config, model, accelerator) -> tuple:
    """AdamW (:func:`adamw_class`) over ``model``'s trained parameters, and the LR schedule."""
    from diffusers.optimization import get_scheduler

    optimizer_cls = adamw_class(cfg, accelerator.device)
    optimizer = optimizer_cls([p for p in model.parameters() if p.requires_grad], lr=cfg.learning_rate,
                              betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.adam_weight_decay,
                              eps=cfg.adam_epsilon)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)
    return optimizer, lr_scheduler


def make_ema(cfg: Config, model, accelerator):
    """diffusers' ``EMAModel`` over ``model``'s parameters with ``use_ema`` (else None)."""
    if not cfg.use_ema:
        return None
    if _sharded(accelerator):
        raise ConfigError("use_ema is not supported under FSDP (the EMA would be a full copy of the weights on every "
                          "process); set use_ema: false or train with DDP")
    from diffusers.training_utils import EMAModel

    return EMAModel(model.parameters(), decay=cfg.ema_decay)


def full_unets(model, sharded: bool) -> tuple | None:
    """``(unet_garm, unet_vton)`` with their full weights on the main process, None on the others. Sharded (FSDP)
    weights are gathered into fresh CPU copies, a collective: every process calls this. Otherwise the trained modules
    themselves."""
    raw = getattr(model, "module", model)  # inside DDP's (or FSDP1's) wrapper
    if not sharded:
        return (raw.unet_garm, raw.unet_vton) if is_main_process() else None
    from diffusers import UNet2DConditionModel
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main_process():
        return None
    copies = []
    for name in ("unet_garm", "unet_vton"):
        unet = UNet2DConditionModel.from_config(getattr(raw, name).config)
        unet.load_state_dict({k[len(name) + 1:]: v for k, v in state.items() if k.startswith(f"{name}.")})
        copies.append(unet)
    return tuple(copies)


def next_window(batches, cfg: Config, comps: dict, step: int, rank: int, world: int, device, dtype) -> list:
    """The ``(latents, rand)`` micro-batches of optimizer step ``step`` (1-based) on this process: the next
    ``gradient_accumulation_steps`` batches (encoded unless cached) and their rows of the step's randomness."""
    accum, window = cfg.gradient_accumulation_steps, []
    for j in range(accum):
        batch = next(batches)
        latents = ({k: v.to(device) for k, v in batch.items()} if cfg.cache_latents
                   else encode_batch(batch, comps, cfg.model_type, device, dtype, loss_latent_mask(cfg)))
        rand = draw_randomness(cfg.seed, step - 1, cfg.train_batch_size, tuple(latents["target"].shape[1:]),
                               cfg.outfitting_dropout, rank=j * world + rank, world=accum * world,
                               p_prompt=cfg.prompt_dropout)
        window.append((latents, rand))
    return window


def skipped_step(accelerator, cfg: Config, step: int, in_a_row: int):
    """Report a step skipped for a non-finite loss; stop the run after ``max_nonfinite_in_a_row`` in a row."""
    accelerator.print(f"step {step}: non-finite loss, step skipped ({in_a_row} in a row)")
    if in_a_row >= cfg.max_nonfinite_in_a_row:
        raise TrainingError(f"{in_a_row} non-finite losses in a row at step {step}: lower learning_rate "
                            f"(now {cfg.learning_rate}), check the data, or use mixed_precision=bf16 instead of fp16")


# --- the loop -------------------------------------------------------------------------------------------------------------
def train(cfg: Config, resume: str | None = None, progress: bool = True, overwrite: bool = False,
          allow_config_change: bool = False) -> Path:
    """Train both UNets as configured; returns the folder of the exported pipeline (released layout), or of the
    adapter folder ``lora/`` of a LoRA run (``lora_rank > 0``).

    ``resume``: ``"latest"`` or a checkpoint folder. ``overwrite``: delete an earlier run in ``cfg.output_dir``
    (refused otherwise). ``allow_config_change``: resume although the config differs from the checkpoint's. Writes
    under ``cfg.output_dir``: ``config.yaml``, ``vae/`` (toy), ``checkpoints/``, ``logs/loss.csv`` (+ ``loss.png``),
    ``samples/step-N.png``, ``timing.json`` and ``pipeline/`` (the final weights) or ``lora/`` (the adapters).
    """
    from tqdm.auto import tqdm

    from .models import make_noise_scheduler

    accelerator = make_accelerator(cfg)
    adamw_class(cfg, accelerator.device)  # refuse an unusable 8-bit AdamW before minutes of data preparation
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    accum, device, out = cfg.gradient_accumulation_steps, accelerator.device, Path(cfg.output_dir)
    micro_batch = cfg.train_batch_size // accum  # global, split across processes
    if micro_batch * accum != cfg.train_batch_size or micro_batch % world:
        raise ConfigError(f"train_batch_size={cfg.train_batch_size} must be a multiple of gradient_accumulation_steps="
                          f"{accum} × processes={world}")
    checkpoint = prepare_run_folder(cfg, resume, overwrite, allow_config_change)
    accelerator.wait_for_everyone()

    # data and the frozen encoders (in weight_dtype under mixed precision)
    dtype = _weight_dtype(accelerator)
    comps = frozen_components(cfg, accelerator, device, dtype)
    train_data = training_data(cfg, comps, accelerator, dtype)
    if len(train_data) < cfg.train_batch_size:
        raise DataError(f"{cfg.data_root} has {len(train_data)} training pairs, fewer than one batch of "
                        f"{cfg.train_batch_size}")

    # the trained model (LoRA: the base UNets' record is taken before adapters and casts touch them)
    if cfg.lora_rank and _sharded(accelerator):
        raise ConfigError("lora_rank > 0 is not supported under FSDP (the adapters are small: train them with DDP)")
    from .lora import base_record

    lora_base = base_record(comps["unet_garm"], comps["unet_vton"]) if cfg.lora_rank else None
    model = trainable_model(comps, cfg, dtype)
    optimizer, lr_scheduler = optimizer_parts(cfg, model, accelerator)
    model, optimizer = accelerator.prepare(model, optimizer)  # not the LR schedule: it steps at every step, skipped too
    raw_model, noise_scheduler, sharded = accelerator.unwrap_model(model), make_noise_scheduler(), _sharded(accelerator)
    ema = make_ema(cfg, raw_model, accelerator)
    step, nonfinite, in_a_row = 0, 0, 0
    if checkpoint is not None:
        meta = load_checkpoint(checkpoint, model, optimizer, lr_scheduler, ema, getattr(accelerator, "scaler", None))
        step, nonfinite = meta["step"], meta["nonfinite"]
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    log = LossLog(out / "logs", cfg.report_to, main)
    log.truncate(step)

    # the loop: one optimizer step = `accum` micro-batches, each split across the processes
    sampler = StepBatchSampler(len(train_data), cfg.seed, micro_batch, accum, rank, world, start=step)
    batches = iter(torch.utils.data.DataLoader(train_data, batch_sampler=sampler, num_workers=cfg.num_workers))
    bar = tqdm(total=cfg.max_train_steps, initial=step, desc="train", disable=not progress_enabled(progress and main))
    t_start, first = time.time(), step
    for step in range(step + 1, cfg.max_train_steps + 1):
        window = next_window(batches, cfg, comps, step, rank, world, device, dtype)
        loss, finite = optimizer_step(accelerator, model, optimizer, noise_scheduler, window, cfg.max_grad_norm,
                                      cfg.loss_weighting, cfg.loss_outside_mask)
        lr_scheduler.step()  # a skipped step too: the learning rate stays a function of the step
        nonfinite, in_a_row = nonfinite + (not finite), (0 if finite else in_a_row + 1)
        if finite and ema is not None:
            ema.step(raw_model.parameters())
        if not finite:
            skipped_step(accelerator, cfg, step, in_a_row)
        if step % cfg.log_every == 0 or step == 1:
            log(step, loss, lr_scheduler.get_last_lr()[0], nonfinite)
        bar.update()
        bar.set_postfix(loss=f"{loss:.4f}")
        if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
            save_checkpoint(out / "checkpoints" / f"checkpoint-{step}", model, optimizer, lr_scheduler,
                            dict(step=step, nonfinite=nonfinite, world=world, config=cfg.to_dict()), ema,
                            getattr(accelerator, "scaler", None), trained_only=bool(cfg.lora_rank))
            if main:
                prune_checkpoints(out, cfg.checkpoints_total_limit)
            accelerator.wait_for_everyone()
        if cfg.sample_every and step % cfg.sample_every == 0:
            write_samples(cfg, model, ema, comps, step, sharded)
    bar.close()

    # the export (EMA weights when enabled)
    write_timing(accelerator, raw_model, out, cfg.max_train_steps - first, time.time() - t_start, sharded)
    if ema is not None:
        ema.copy_to(raw_model.parameters())
    raw_model.fusion.clear()
    if cfg.lora_rank:
        final = export_lora(cfg, raw_model, lora_base)
    else:
        final = export_pipeline(cfg, comps if dtype == torch.float32 else frozen_components(cfg, accelerator),
                                full_unets(model, sharded))
    if main and (out / "logs" / "loss.csv").exists():
        plot_loss(out / "logs" / "loss.csv", out / "logs" / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


# --- reports and the export -----------------------------------------------------------------------------------------------
def write_samples(cfg: Config, model, ema, comps: dict, step: int, sharded: bool):
    """``samples/step-N.png``: a sample grid of the first test pairs (with EMA weights when enabled). Every process
    calls this (gathering sharded weights is a collective); the main process samples."""
    unets = full_unets(model, sharded)
    if unets is None:
        return
    unets = tuple(unet.to(next(comps["vae"].parameters()).device) for unet in unets)  # gathered copies: on the CPU
    out = Path(cfg.output_dir)
    try:
        test = build_dataset(cfg, split="test", pairing="unpaired", cache_dir=cfg.mask_cache or out / "mask_cache")
    except OOTDError as exc:  # sampling is a nicety: never stop training for it
        print(f"samples skipped at step {step}: {exc}")
        return
    raw = getattr(model, "module", model)
    if ema is not None:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
    for unet in unets:
        unet.eval()
    grid = sample_grid(dict(comps, unet_garm=unets[0], unet_vton=unets[1]), test, cfg.sample_pairs, 20, cfg.seed,
                       cfg.model_type, latent_mask=run_latent_mask(cfg))
    for unet in unets:
        unet.train()
    if ema is not None:
        ema.restore(raw.parameters())
    (out / "samples").mkdir(exist_ok=True)
    grid.save(out / "samples" / f"step-{step}.png")


def write_timing(accelerator, model, out: Path, steps: int, seconds: float, sharded: bool):
    """``timing.json`` (main process): seconds per step, processes, threads, and whether data parallelism kept every
    process's weights bit-identical (None under FSDP, where each process holds a shard)."""
    identical = None if sharded else _ranks_identical(accelerator, model)
    if accelerator.is_main_process and steps:
        (out / "timing.json").write_text(json.dumps(dict(
            steps=steps, seconds=round(seconds, 1), seconds_per_step=round(seconds / steps, 3),
            processes=accelerator.num_processes, threads=torch.get_num_threads(), ranks_identical=identical)))


def _ranks_identical(accelerator, model) -> bool:
    """Data parallelism must keep every process's weights bit-identical; compare per-tensor checksums."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(accelerator.device)
    every = accelerator.gather(sums[None])
    return bool((every == every[:1]).all())


def export_pipeline(cfg: Config, comps: dict, unets) -> Path:
    """``<output_dir>/pipeline`` in the released folder layout (main process; ``unets`` None elsewhere), with the
    training resolution and model type in ``model_index.json``, so ``OOTDPipeline.from_pretrained`` loads it as
    trained."""
    from .models import save_components

    out = Path(cfg.output_dir)
    final = out / "pipeline"
    if unets is None:
        return final
    export = dict(comps, unet_garm=unets[0], unet_vton=unets[1])
    save_components({k: (v.to("cpu") if hasattr(v, "to") and k != "tokenizer" else v) for k, v in export.items()},
                    final, variant=cfg.model_type)
    height, width = cfg.resolution
    _write_model_index(final / "checkpoints" / "ootd", type(comps["vae"]).__name__, height=height, width=width,
                       model_type=cfg.model_type, latent_mask=run_latent_mask(cfg))
    return final


def loss_latent_mask(cfg: Config) -> str | None:
    """The latent-mask mode the loss needs (the one the run's model is sampled with), or None for the paper's
    uniform loss (``loss_outside_mask = 1``), whose batches then carry no mask."""
    return run_latent_mask(cfg) if cfg.loss_outside_mask < 1 else None


def run_latent_mask(cfg: Config) -> str:
    """How the run's model is sampled (``pipeline.mask_to_latents``): as the released-layout folder it started from
    says (``init_unets``; the toy checkpoint: ``any``), else ``nearest`` as released. A fine-tuned toy model keeps it."""
    from .models import exported_config

    return exported_config(cfg.init_unets).get("latent_mask", "nearest") if cfg.init_unets else "nearest"


def export_lora(cfg: Config, model, base: dict) -> Path:
    """``<output_dir>/lora``: the adapters of both UNets and what they were trained on (main process only;
    :func:`ootd_lib.lora.save_adapter`). Replaces the one an earlier stretch of this run wrote (a resumed run)."""
    from .lora import adapter_meta, save_adapter

    final = Path(cfg.output_dir) / "lora"
    if is_main_process():
        save_adapter(final, model, adapter_meta(cfg, base, cfg.max_train_steps), overwrite=True)
    return final


def _write_model_index(folder: Path, vae_class: str = "AutoencoderKL", **config):
    """``model_index.json`` as in the released folder, naming the stock classes each component loads with, plus the
    pipeline's config (``height``, ``width``, ``model_type``) as ``DiffusionPipeline.save_pretrained`` writes it."""
    import diffusers

    index = {"_class_name": "OOTDPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": ["transformers", "CLIPImageProcessor"], "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet_garm": ["diffusers", "UNet2DConditionModel"], "unet_vton": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", vae_class], **config}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


# --- entry point ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    """``python -m ootd_lib.training`` / ``accelerate launch -m ootd_lib.training`` (same options as ``ootd train``)."""
    p = argparse.ArgumentParser(prog="ootd_lib.training", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", default=None)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--allow-config-change", action="store_true")
    args = p.parse_args(argv)
    cfg = Config.from_yaml(args.config, output_dir=args.output_dir or None, max_train_steps=args.max_steps)
    final = train(cfg, resume=args.resume, overwrite=args.overwrite, allow_config_change=args.allow_config_change)
    print(f"trained {'LoRA adapter' if cfg.lora_rank else 'pipeline'} written to {final}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
