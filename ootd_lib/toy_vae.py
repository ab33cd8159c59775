"""The toy recipe's first stage: pre-train the toy VAE (``ootd train-vae``), the stand-in for SD's pretrained VAE.

Real OOTDiffusion starts from Stable Diffusion's pretrained VAE; the toy world has none, and a random VAE cannot
reconstruct anything, so the toy recipe trains one first (:func:`pretrain_toy_vae`) and writes it to
``<output_dir>/vae``, which ``ootd train`` then loads (:func:`load_or_pretrain_vae`).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import Config
from .errors import ConfigError
from .progress import progress_enabled

__all__ = ["pretrain_toy_vae", "set_latent_scaling", "train_toy_vae", "load_or_pretrain_vae"]


def _vae_pool(dataset, garments: bool = True) -> torch.Tensor:
    """Every person (and garment) image of ``dataset``: what the toy VAE learns to reconstruct."""
    keys = ("person", "garment") if garments else ("person",)
    return torch.stack([dataset.base[i][k] for i in range(len(dataset)) for k in keys])


def pretrain_toy_vae(vae, dataset, steps: int, lr: float = 1e-3, batch_size: int = 8, crop=None, seed: int = 0,
                     kl_weight: float = 1e-6, l1_weight: float = 1.0, progress: bool = True, log=None,
                     start: int = 0, optimizer=None, checkpoint=None, checkpoint_every: int = 0,
                     garments: bool = True):
    """Teach the random toy VAE to reconstruct toy images (persons and garments).

    Reconstruction of the posterior mode (MSE + ``l1_weight`` × L1: L1 pins flat colours, MSE alone settles for colour
    casts), plus a tiny KL term that keeps the latents centred. ``crop=None`` trains on whole images, so GroupNorm
    sees the statistics it will see at inference (crops are cheaper but a uniform crop loses its colour to the
    normalisation).

    The batch of step ``s`` is a function of ``(seed, s)``, so ``start`` + ``optimizer`` (from a checkpoint) resume
    exactly; ``log(step, loss, lr)`` is called every step and ``checkpoint(step, vae, optimizer)`` every
    ``checkpoint_every`` steps. ``garments=False`` trains on the person images only.
    """
    from tqdm.auto import tqdm

    pool = _vae_pool(dataset, garments)
    vae.train()
    params = [p for p in vae.parameters() if p.requires_grad]  # the decoder only, with a frozen encoder
    opt = optimizer or torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    h, w = pool.shape[-2:]
    ch, cw = crop if crop else (h, w)
    bar = tqdm(range(start, steps), desc="toy VAE", disable=not progress_enabled(progress), initial=start, total=steps)
    for step in bar:
        for group in opt.param_groups:  # cosine decay as a pure function of the step (nothing extra to checkpoint)
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps, 1)))
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(pool), (batch_size,), generator=g)
        y = int(torch.randint(h - ch + 1, (1,), generator=g)) // 8 * 8
        x = int(torch.randint(w - cw + 1, (1,), generator=g)) // 8 * 8
        batch = pool[idx, :, y:y + ch, x:x + cw]
        encoded = vae.encode(batch)
        post = getattr(encoded, "latent_dist", None)  # AutoencoderKL: a Gaussian; AutoencoderTiny: latents
        # the mode, not a sample: the posterior starts with unit variance, which would drown the signal for hundreds
        # of steps; the pipeline only ever uses mode() latents anyway
        recon = vae.decode(post.mode() if post is not None else encoded.latents).sample
        loss = F.mse_loss(recon, batch)
        if post is not None:
            loss = loss + kl_weight * post.kl().mean()
        if l1_weight:
            loss = loss + l1_weight * F.l1_loss(recon, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log is not None:
            log(step, float(loss.detach()), opt.param_groups[0]["lr"])
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(step + 1, vae, opt)
    vae.eval()
    if all(p.requires_grad for p in vae.encoder.parameters()):  # a frozen encoder keeps its latents and their scale
        set_latent_scaling(vae, pool[: min(len(pool), 256)])
    return vae


@torch.no_grad()
def set_latent_scaling(vae, images) -> float:
    """Set ``scaling_factor`` = 1 / std of the latents (as SD's 0.18215 was chosen), so x0 has unit variance."""
    from .conditioning import encode_latents

    z = torch.cat([encode_latents(vae, images[i:i + 16]) for i in range(0, len(images), 16)])
    factor = float(1.0 / z.std())
    vae.register_to_config(scaling_factor=factor)
    return factor


def _save_vae_checkpoint(folder: Path, step: int, vae, opt) -> None:
    """``vae_checkpoints/step-N``: the VAE and optimizer as safetensors, the step as JSON (atomic; keeps two)."""
    from safetensors.torch import save_file

    from .checkpoints import flatten_optimizer

    tmp, final = folder / f".tmp-step-{step}", folder / f"step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp / "vae.safetensors")
    tensors, meta = flatten_optimizer(opt.state_dict())
    save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(json.dumps(dict(step=step, optimizer=meta)))
    os.replace(tmp, final)
    for old in sorted(folder.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
        shutil.rmtree(old, ignore_errors=True)


def train_toy_vae(cfg: Config, resume: str | None = None, progress: bool = True) -> Path:
    """The toy recipe's first stage (``ootd train-vae``): pre-train the toy VAE on the configured training images and
    write it to ``<output_dir>/vae``. Checkpoints (every ``checkpointing_steps``) go to ``<output_dir>/vae_checkpoints``;
    ``resume="latest"`` continues the same run exactly."""
    from safetensors.torch import load_file

    from .checkpoints import unflatten_optimizer
    from .data import build_dataset
    from .models import build_toy_components, load_vae
    from .viz import LossLog

    if cfg.profile != "toy":
        raise ConfigError(f"train-vae is the toy recipe's stage; profile {cfg.profile!r} starts from SD's pretrained VAE")
    if cfg.vae_init and not (Path(cfg.vae_init) / "config.json").is_file():
        raise ConfigError(f"vae_init={cfg.vae_init} holds no VAE (config.json missing); give a folder written by "
                          "`ootd train-vae` (<output_dir>/vae)")
    if not cfg.vae_train_encoder and not cfg.vae_init:
        raise ConfigError("vae_train_encoder: false trains the decoder of a trained VAE; set vae_init to its folder")
    if cfg.vae_train_encoder and not cfg.vae_train_garments:
        raise ConfigError("vae_train_garments: false is for a decoder-only stage (vae_train_encoder: false): the "
                          "encoder must still encode garments")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(cfg, cache_dir=None)
    vae = load_vae(cfg.vae_init) if cfg.vae_init else build_toy_components(cfg.seed)["vae"]
    vae.encoder.requires_grad_(cfg.vae_train_encoder)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=cfg.vae_pretrain_lr,
                            weight_decay=0.0)
    ckpts = out / "vae_checkpoints"
    start = 0
    if resume:
        done = sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        folder = (done[-1] if done else None) if resume == "latest" else Path(resume)
        if folder is not None:
            vae.load_state_dict(load_file(folder / "vae.safetensors"))
            meta = json.loads((folder / "state.json").read_text())
            opt.load_state_dict(unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta["optimizer"]))
            start = meta["step"]
            print(f"resumed the toy VAE from {folder} at step {start}")

    log = LossLog(out / "logs_vae", "csv", True)
    log.truncate(start)
    t0 = time.time()
    pretrain_toy_vae(vae, dataset, cfg.vae_pretrain_steps, lr=cfg.vae_pretrain_lr,
                     batch_size=cfg.vae_pretrain_batch_size, crop=cfg.vae_pretrain_crop, seed=cfg.seed,
                     l1_weight=cfg.vae_pretrain_l1_weight, progress=progress, start=start, optimizer=opt,
                     checkpoint=lambda step, vae, opt: _save_vae_checkpoint(ckpts, step, vae, opt),
                     checkpoint_every=cfg.checkpointing_steps, garments=cfg.vae_train_garments,
                     log=lambda s, l, lr: log(s + 1, l, lr, 0) if (s + 1) % 10 == 0 else None)
    vae.save_pretrained(out / "vae")
    steps = cfg.vae_pretrain_steps - start
    (out / "vae_timing.json").write_text(json.dumps(dict(steps=steps, seconds=round(time.time() - t0, 1),
                                                         seconds_per_step=round((time.time() - t0) / max(steps, 1), 3),
                                                         threads=torch.get_num_threads())))
    print(f"toy VAE trained ({steps} steps, {time.time() - t0:.0f} s), scaling_factor "
          f"{vae.config.scaling_factor:.4f} → {out / 'vae'}")
    return out / "vae"


def load_or_pretrain_vae(cfg: Config, accelerator):
    """The toy profile's VAE for ``train``: ``vae_path`` or ``<output_dir>/vae`` when present, else one pre-trained
    now (by the main process; the others wait) and saved there. None: keep the builder's VAE (other profiles, or
    ``vae_pretrain_steps: 0``)."""
    from .models import load_vae

    if cfg.profile != "toy":
        return None
    src = Path(cfg.vae_path) if cfg.vae_path else Path(cfg.output_dir) / "vae"
    if cfg.vae_path and not (src / "config.json").is_file():
        raise ConfigError(f"vae_path={cfg.vae_path} holds no VAE (config.json missing); train one with "
                          "`ootd train-vae --config ...` or remove vae_path to pre-train one here")
    with accelerator.main_process_first():  # the main process pre-trains it when missing; the others then load it
        if not (src / "config.json").is_file():
            if cfg.vae_pretrain_steps <= 0:
                return None
            train_toy_vae(cfg, progress=False)
        return load_vae(src).eval()
