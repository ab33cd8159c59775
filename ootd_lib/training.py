"""Fine-tuning OOTDiffusion with accelerate: both UNets trained, everything else frozen.

One training step (paper recipe, :func:`training_step`)::

    x0      = vae.encode(person).mode() * scaling_factor        the target, scaled latents
    noise   ~ N(0, I);  t ~ U{0..999}                             SD-1.5 DDPM schedule
    x_t     = add_noise(x0, noise, t)
    garment = garment_latents * keep,  keep ~ Bernoulli(1 - p)    outfitting dropout (p = 0.1)
    eps     = OOTDModel(x_t, t, masked_person_latents, garment, clip_prompt)   garment UNet at t = 0 inside
    loss    = mse(eps, noise)                                   (loss_weighting: per-t weights, default none)

What this module adds around it: data (dataset + agnostic masks cached on disk), the accelerate loop (single process,
DDP, FSDP/DeepSpeed through ``accelerate launch --config_file configs/accelerate/...``), mixed precision, gradient
checkpointing, optional 8-bit AdamW and EMA, atomic safetensors checkpoints that resume the *same* run, non-finite loss
handling, CSV/TensorBoard logging, sample grids, and the toy recipe's VAE pre-training stage.

Randomness is a function of ``(seed, micro-step)`` and drawn for the *global* batch; each process takes its rows. So a
2-process run matches a 1-process run of the same global batch, and a resumed run matches an uninterrupted one.

Run it as ``ootd train --config configs/toy.yaml`` or ``accelerate launch -m ootd_lib.training --config ...``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import LOSS_WEIGHTINGS, Config
from .errors import ConfigError, DataError, TrainingError
from .progress import progress_enabled

__all__ = ["train", "train_from_cli", "training_step", "draw_randomness", "MaskedTryOnDataset", "build_dataset",
           "pretrain_toy_vae", "train_toy_vae", "set_latent_scaling", "encode_batch", "cache_latents", "save_checkpoint",
           "load_checkpoint", "latest_checkpoint", "main"]


# --- data ---------------------------------------------------------------------------------------------------------
class MaskedTryOnDataset(torch.utils.data.Dataset):
    """A try-on dataset plus the agnostic mask of each person (computed once, cached as PNG under ``cache_dir``).

    Items: ``person``, ``garment`` (3,H,W in [-1,1]), ``mask`` (1,H,W {0,1}), ``masked`` (the person greyed inside the
    mask, what the model sees), ``category``, ``target`` (the image to reconstruct: the person itself when paired).
    """

    def __init__(self, base, model_type: str = "hd", cache_dir=None):
        self.base, self.model_type = base, model_type
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self):
        return len(self.base)

    def mask(self, item) -> np.ndarray:
        from .masking import agnostic_mask

        h, w = item["parse"].shape
        name = f"{Path(item['person_name']).stem}_{item['category']}_{self.model_type}_{h}x{w}.png"
        path = self.cache_dir / name if self.cache_dir else None
        if path is not None and path.is_file():
            return np.asarray(Image.open(path)) > 127
        mask = agnostic_mask(item["parse"].numpy(), item["keypoints"].numpy(), item["category"], self.model_type)
        if path is not None:  # write-then-rename: a crash never leaves a half-written cache file
            tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp)
            os.replace(tmp, path)
        return mask

    def __getitem__(self, i):
        from .masking import masked_person

        item = self.base[i]
        mask = torch.from_numpy(self.mask(item)).float()[None]
        out = dict(person=item["person"], garment=item["garment"], mask=mask,
                   masked=masked_person(item["person"], mask), category=item["category"],
                   target=item.get("target", item["person"]))
        if "target_parse" in item:  # toy ground truth: evaluation reads the garment pixels from it
            out.update(target_parse=item["target_parse"], person_name=item["person_name"],
                       garment_name=item["garment_name"])
        return out


def build_dataset(cfg: Config, split: str = "train", pairing: str = "paired", cache_dir=None, generate: bool = True):
    """The configured dataset (generating the toy wardrobe first when the toy data folder is missing)."""
    from .data import DressCodeDataset, VitonHDDataset

    root = Path(cfg.data_root)
    if not root.exists():
        if cfg.profile != "toy" or not generate:
            raise DataError(f"data_root {root} does not exist; download the dataset (data/README.md) or fix the config")
        from .toydata import generate_toy_dataset

        print(f"data_root {root} does not exist: generating a toy wardrobe there")  # says so when it is a typo
        generate_toy_dataset(root, layout=cfg.layout, n_train=cfg.toy_train, n_test=cfg.toy_test, seed=cfg.seed,
                             progress=False)
    if cfg.layout == "vitonhd":
        base = VitonHDDataset(root, split, pairing, size=cfg.resolution)
    else:
        base = DressCodeDataset(root, split, pairing, categories=cfg.categories, size=cfg.resolution)
    return MaskedTryOnDataset(base, cfg.model_type, cache_dir)


class EpochSampler(torch.utils.data.Sampler):
    """A fresh permutation per epoch from ``(seed, epoch)``: the batch order is a pure function of the step, which
    makes resuming exact (no sampler state to save)."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __len__(self):
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


# --- conditioning (frozen encoders) -----------------------------------------------------------------------------------
@torch.no_grad()
def encode_batch(batch: dict, comps: dict, model_type: str, device, dtype=torch.float32) -> dict:
    """Images → what the UNets consume: target latents (scaled), masked-person and garment latents (unscaled),
    and the CLIP-image prompt. The encoders are frozen, so nothing here needs gradients."""
    from .conditioning import encode_latents, encode_prompt, encode_repaint_target

    vae = comps["vae"]
    garment = batch["garment"].to(device, dtype)
    prompt = encode_prompt(garment, list(batch["category"]), model_type, comps["tokenizer"], comps["text_encoder"],
                           comps["image_encoder"], comps["feature_extractor"])
    return dict(target=encode_repaint_target(vae, batch["target"].to(device, dtype)),
                person=encode_latents(vae, batch["masked"].to(device, dtype)),
                garment=encode_latents(vae, garment), prompt=prompt.to(dtype))


class _Cached(torch.utils.data.Dataset):
    def __init__(self, tensors: dict):
        self.tensors = tensors

    def __len__(self):
        return len(next(iter(self.tensors.values())))

    def __getitem__(self, i):
        return {k: v[i] for k, v in self.tensors.items()}


@torch.no_grad()
def cache_latents(dataset, comps: dict, model_type: str, device, batch_size: int = 16) -> _Cached:
    """Encode the whole dataset once (frozen encoders, no augmentation → the encodings never change).

    The toy recipe uses this: on CPU the VAE encoder would otherwise cost as much as the UNets per step."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts = [{k: v.cpu() for k, v in encode_batch(b, comps, model_type, device).items()} for b in loader]
    return _Cached({k: torch.cat([p[k] for p in parts]) for k in parts[0]})


# --- the toy VAE (stand-in for SD's pretrained VAE) ---------------------------------------------------------------------
def _vae_pool(dataset) -> torch.Tensor:
    """Every person and garment image of ``dataset``: what the toy VAE learns to reconstruct."""
    return torch.stack([dataset.base[i][k] for i in range(len(dataset)) for k in ("person", "garment")])


def pretrain_toy_vae(vae, dataset, steps: int, lr: float = 1e-3, batch_size: int = 8, crop=None, seed: int = 0,
                     kl_weight: float = 1e-6, l1_weight: float = 1.0, progress: bool = True, log=None,
                     start: int = 0, optimizer=None, checkpoint=None, checkpoint_every: int = 0):
    """Teach the random toy VAE to reconstruct toy images (persons and garments).

    Real OOTDiffusion starts from Stable Diffusion's pretrained VAE; the toy world has none, and a random VAE cannot
    reconstruct anything, so the toy recipe first trains one: reconstruction of the posterior mode (MSE + ``l1_weight``
    × L1: L1 pins flat colours, MSE alone settles for colour casts), plus a tiny KL term that keeps the latents centred.
    ``crop=None`` trains on whole images, so GroupNorm sees the statistics it will see at inference (crops are cheaper
    but a uniform crop loses its colour to the normalisation).

    The batch of step ``s`` is a function of ``(seed, s)``, so ``start`` + ``optimizer`` (from a checkpoint) resume
    exactly; ``checkpoint(step, vae, optimizer)`` is called every ``checkpoint_every`` steps.
    """
    from tqdm.auto import tqdm

    pool = _vae_pool(dataset)
    vae.train()
    opt = optimizer or torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    h, w = pool.shape[-2:]
    ch, cw = crop if crop else (h, w)
    for step in tqdm(range(start, steps), desc="toy VAE", disable=not progress_enabled(progress), initial=start,
                     total=steps):
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
            log(step, float(loss.detach()))
        if checkpoint is not None and checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < steps:
            checkpoint(step + 1, vae, opt)
    vae.eval()
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


# --- the step ------------------------------------------------------------------------------------------------------------
def draw_randomness(seed: int, micro_step: int, global_batch: int, latent_shape, p: float,
                    rank: int = 0, world: int = 1) -> dict:
    """Noise, timesteps and the dropout keep-mask for one micro-step, drawn for the global batch; returns this rank's
    rows. A function of ``(seed, micro_step)`` only, so resuming and data parallelism do not change the stream."""
    from .guidance import dropout_keep_mask

    g = torch.Generator().manual_seed(seed * 1_000_003 + micro_step)
    noise = torch.randn((global_batch, *latent_shape), generator=g)
    timesteps = torch.randint(0, 1000, (global_batch,), generator=g)
    keep = dropout_keep_mask(global_batch, p, generator=g)
    rows = slice(rank * global_batch // world, (rank + 1) * global_batch // world)
    return dict(noise=noise[rows], timesteps=timesteps[rows], keep=keep[rows])


def loss_weights(noise_scheduler, timesteps: torch.Tensor, weighting: str = "none") -> torch.Tensor:
    """Per-sample weights of the ε-MSE. ``none``: 1 (the paper's loss). ``truncated_snr``: max(1, 1/SNR(t)), the
    "truncated SNR" weighting of Salimans & Ho (2022) = x0-MSE × max(SNR, 1).

    Why it exists: an ε-prediction model's ε error is √SNR × its x0 error, so plain ε-MSE barely rewards getting x0
    right at high noise (SNR(800) = 0.04), where the garment must set the colours. Measured on the toy world (64×48,
    1 000 steps, same data and noise stream, ``configs/experiments/``): masked x0-MSE at t = 800 of 0.33 with it vs 0.47
    with plain ε-MSE (t = 950: 0.66 vs 1.26). The paper recipe and the shipped toy checkpoint use ``none``.
    """
    if weighting == "none":
        return torch.ones(timesteps.shape, dtype=torch.float32, device=timesteps.device)
    if weighting != "truncated_snr":
        raise ConfigError(f"loss_weighting={weighting!r} is not one of {LOSS_WEIGHTINGS}")
    alphas = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return (1 - alphas).div(alphas).clamp_min(1.0)


def training_step(model, noise_scheduler, latents: dict, rand: dict, weighting: str = "none") -> torch.Tensor:
    """ε-MSE loss of one batch (see the module docstring), optionally weighted per timestep (:func:`loss_weights`).
    ``latents``: target/person/garment/prompt; ``rand``: noise/timesteps/keep from :func:`draw_randomness`."""
    target = latents["target"]
    noise = rand["noise"].to(target.device, target.dtype)
    t = rand["timesteps"].to(target.device)
    keep = rand["keep"].to(target.device, target.dtype).view(-1, 1, 1, 1)
    noisy = noise_scheduler.add_noise(target, noise, t)
    eps = model(noisy, t, latents["person"], latents["garment"] * keep, latents["prompt"])
    if weighting == "none":
        return F.mse_loss(eps.float(), noise.float())
    per_sample = (eps.float() - noise.float()).pow(2).flatten(1).mean(1)
    return (per_sample * loss_weights(noise_scheduler, t, weighting)).mean()


# --- checkpoints (safetensors, atomic, resumable) ---------------------------------------------------------------------------
def _flatten_optimizer(state: dict) -> tuple[dict, dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for idx, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{idx}.{k}"] = v
    return tensors, meta


def _unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(folder, model, optimizer, lr_scheduler, state: dict, ema=None, scaler=None) -> Path:
    """Write ``folder`` atomically: model/optimizer/EMA tensors as safetensors, the rest as JSON.

    Everything goes into a temporary sibling folder that is renamed into place at the end, so a kill mid-write leaves
    either the previous checkpoint or the complete new one, never a broken one."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    opt_tensors, opt_meta = _flatten_optimizer(optimizer.state_dict())
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    if ema is not None:
        save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)},
                  tmp / "ema.safetensors")
    np_state = np.random.get_state()
    meta = dict(state, optimizer=opt_meta, lr_scheduler=lr_scheduler.state_dict(),
                python_random=[random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
                numpy_random=[np_state[0], np_state[1].tolist(), *np_state[2:]],
                scaler=scaler.state_dict() if scaler is not None else None)
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(folder, model, optimizer, lr_scheduler, ema=None, scaler=None) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the training state (step, counters, ...)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "state.json").is_file() or not (folder / "model.safetensors").is_file():
        raise TrainingError(f"resume checkpoint {folder} is incomplete (state.json / model.safetensors missing); "
                            "pass another checkpoint folder or --resume latest")

    def step_of(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    def read(name, load):  # every file is read before anything is restored: a bad one leaves the run untouched
        try:
            return load(folder / name)
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, JSONDecodeError...: all one message
            earlier = sorted((p for p in folder.parent.glob("checkpoint-*") if 0 <= step_of(p) < step_of(folder)),
                             key=step_of)
            hint = f"resume from the previous one with --resume {earlier[-1]}" if earlier else "start without --resume"
            raise TrainingError(f"checkpoint file {folder / name} is truncated or unreadable ({type(exc).__name__}); "
                                f"{hint}") from exc

    meta = read("state.json", lambda p: json.loads(p.read_text()))
    tensors = {name: read(f"{name}.safetensors", load_file) for name in ("model", "optimizer", "rng")}
    shadow = read("ema.safetensors", load_file) if ema is not None and (folder / "ema.safetensors").is_file() else None
    model.load_state_dict(tensors["model"])
    optimizer.load_state_dict(_unflatten_optimizer(tensors["optimizer"], meta["optimizer"]))
    lr_scheduler.load_state_dict(meta["lr_scheduler"])
    rng = tensors["rng"]
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    py = meta["python_random"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = meta["numpy_random"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), *npr[2:]))
    if shadow is not None:
        for i, p in enumerate(ema.shadow_params):
            p.data.copy_(shadow[str(i)])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


def latest_checkpoint(output_dir) -> Path | None:
    ckpts = sorted(Path(output_dir, "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return ckpts[-1] if ckpts else None


def _prune(output_dir, keep: int):
    ckpts = sorted(Path(output_dir, "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# --- logging and samples ----------------------------------------------------------------------------------------------------
class LossLog:
    """Appends ``step,loss,lr,nonfinite`` rows to ``loss.csv`` (and TensorBoard when asked and installed)."""

    def __init__(self, folder, report_to: str, enabled: bool):
        self.path = Path(folder) / "loss.csv"
        self.enabled, self.tb = enabled, None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text("step,loss,lr,nonfinite\n")
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed: logging the loss to loss.csv only (pip install tensorboard)")

    def truncate(self, step: int):
        """On resume: drop rows written after the checkpoint so the curve has no duplicates."""
        if self.enabled and self.path.exists():
            rows = self.path.read_text().splitlines()
            self.path.write_text("\n".join([rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) <= step]) + "\n")

    def __call__(self, step: int, loss: float, lr: float, nonfinite: int):
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(f"{step},{loss:.6f},{lr:.3e},{nonfinite}\n")
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)


def read_loss_csv(path) -> tuple[np.ndarray, np.ndarray]:
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def plot_loss(csv_path, png_path, smooth: int = 20):
    """Loss curve (raw and moving average) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = read_loss_csv(csv_path)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(steps, losses, alpha=0.3, label="loss")
    if len(losses) >= smooth:
        ax.plot(steps[smooth - 1:], np.convolve(losses, np.ones(smooth) / smooth, "valid"), label=f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="ε-MSE", yscale="log", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def sample_grid(comps: dict, dataset, n: int, steps: int, seed: int, model_type: str) -> Image.Image:
    """Rows of person | garment | mask | result for the first ``n`` items (a quick look at training progress)."""
    from .data import tensor_to_uint8
    from .pipeline import OOTDPipeline

    pipe = OOTDPipeline(**{k: comps[k] for k in ("vae", "text_encoder", "tokenizer", "image_encoder",
                                                  "feature_extractor", "unet_garm", "unet_vton", "scheduler")},
                        model_type=model_type)
    pipe.set_progress_bar_config(disable=True)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    persons = torch.stack([it["person"] for it in items])
    garments = torch.stack([it["garment"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    pipe.register_to_config(height=persons.shape[-2], width=persons.shape[-1])  # sample at the training resolution
    out = pipe(persons, garments, masks, [it["category"] for it in items], num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed), output_type="pt").images * 2 - 1
    rows = torch.cat([persons, garments, masks.expand(-1, 3, -1, -1) * 2 - 1, out.to(persons.dtype)], dim=3)
    grid = torch.cat(list(rows), dim=1)
    return Image.fromarray(tensor_to_uint8(grid))


# --- components -------------------------------------------------------------------------------------------------------------
def build_components(cfg: Config) -> dict:
    """Starting weights of the configured profile (the VAE may then be replaced, see :func:`train`)."""
    from .models import build_sd15_components, build_toy_components, load_official_components

    if cfg.profile == "toy":
        return build_toy_components(cfg.seed)
    if cfg.profile == "sd15":
        return build_sd15_components(cfg.pretrained, clip_model=cfg.clip_model or "openai/clip-vit-large-patch14")
    return load_official_components(cfg.pretrained, cfg.model_type, clip_model=cfg.clip_model)


def train_toy_vae(cfg: Config, resume: str | None = None, progress: bool = True) -> Path:
    """The toy recipe's first stage (``ootd train-vae``): pre-train the toy VAE on the configured training images and
    write it to ``<output_dir>/vae``. Checkpoints (every ``checkpointing_steps``) go to ``<output_dir>/vae_checkpoints``;
    ``resume="latest"`` continues the same run exactly."""
    from safetensors.torch import load_file, save_file

    from .models import build_toy_components

    if cfg.profile != "toy":
        raise ConfigError(f"train-vae is the toy recipe's stage; profile {cfg.profile!r} starts from SD's pretrained VAE")
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = build_dataset(cfg, cache_dir=None)
    vae = build_toy_components(cfg.seed)["vae"]
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_pretrain_lr, weight_decay=0.0)
    ckpts = out / "vae_checkpoints"
    start = 0
    if resume:
        done = sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        folder = (done[-1] if done else None) if resume == "latest" else Path(resume)
        if folder is not None:
            vae.load_state_dict(load_file(folder / "vae.safetensors"))
            meta = json.loads((folder / "state.json").read_text())
            opt.load_state_dict(_unflatten_optimizer(load_file(folder / "optimizer.safetensors"), meta["optimizer"]))
            start = meta["step"]
            print(f"resumed the toy VAE from {folder} at step {start}")

    def checkpoint(step, vae, opt):
        tmp, final = ckpts / f".tmp-step-{step}", ckpts / f"step-{step}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, tmp / "vae.safetensors")
        tensors, meta = _flatten_optimizer(opt.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        (tmp / "state.json").write_text(json.dumps(dict(step=step, optimizer=meta)))
        os.replace(tmp, final)
        for old in sorted(ckpts.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
            shutil.rmtree(old, ignore_errors=True)

    log = LossLog(out / "logs_vae", "csv", True)
    log.truncate(start)
    t0 = time.time()
    pretrain_toy_vae(vae, dataset, cfg.vae_pretrain_steps, lr=cfg.vae_pretrain_lr,
                     batch_size=cfg.vae_pretrain_batch_size, crop=cfg.vae_pretrain_crop, seed=cfg.seed,
                     l1_weight=cfg.vae_pretrain_l1_weight, progress=progress, start=start, optimizer=opt,
                     checkpoint=checkpoint, checkpoint_every=cfg.checkpointing_steps,
                     log=lambda s, l: log(s + 1, l, cfg.vae_pretrain_lr, 0) if (s + 1) % 10 == 0 else None)
    vae.save_pretrained(out / "vae")
    steps = cfg.vae_pretrain_steps - start
    (out / "vae_timing.json").write_text(json.dumps(dict(steps=steps, seconds=round(time.time() - t0, 1),
                                                         seconds_per_step=round((time.time() - t0) / max(steps, 1), 3),
                                                         threads=torch.get_num_threads())))
    print(f"toy VAE trained ({steps} steps, {time.time() - t0:.0f} s), scaling_factor "
          f"{vae.config.scaling_factor:.4f} → {out / 'vae'}")
    return out / "vae"


def _load_or_pretrain_vae(cfg: Config, comps: dict, out: Path, main_process: bool, accelerator) -> None:
    """Toy profile: use ``vae_path`` or ``<output_dir>/vae`` when present, else pre-train one and save it there."""
    from .models import load_vae

    if cfg.profile != "toy":
        return
    src = Path(cfg.vae_path) if cfg.vae_path else out / "vae"
    if (src / "config.json").is_file():
        comps["vae"] = load_vae(src).eval()
        return
    if cfg.vae_path:
        raise ConfigError(f"vae_path={cfg.vae_path} holds no VAE (config.json missing); train one with "
                          "`ootd train-vae --config ...` or remove vae_path to pre-train one here")
    if cfg.vae_pretrain_steps <= 0:
        return
    if main_process:
        train_toy_vae(cfg, progress=False)
    accelerator.wait_for_everyone()
    comps["vae"] = load_vae(out / "vae").eval()


# --- the loop -------------------------------------------------------------------------------------------------------------
def train(cfg: Config, resume: str | None = None, progress: bool = True) -> Path:
    """Train both UNets as configured; returns the folder of the exported pipeline (released layout).

    ``resume``: ``"latest"`` or a checkpoint folder. Writes under ``cfg.output_dir``: ``vae/`` (toy), ``checkpoints/``,
    ``logs/loss.csv`` (+ ``loss.png``), ``samples/step-N.png`` and ``pipeline/`` (the final weights).
    """
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedDataParallelKwargs
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    from .models import OOTDModel, make_noise_scheduler, save_components

    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    # torchrun without GPUs: accelerate only picks CPU data parallelism (gloo) when told it is a CPU run
    cpu_ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu_ddp, mixed_precision=cfg.mixed_precision,
                              gradient_accumulation_steps=cfg.gradient_accumulation_steps,
                              dataloader_config=DataLoaderConfiguration(split_batches=True),
                              # the garment UNet's layers after its last transformer block never get gradients
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    micro_batch = cfg.train_batch_size // cfg.gradient_accumulation_steps  # global, split across processes
    if micro_batch * cfg.gradient_accumulation_steps != cfg.train_batch_size or micro_batch % world:
        raise ConfigError(f"train_batch_size={cfg.train_batch_size} must be a multiple of gradient_accumulation_steps="
                          f"{cfg.gradient_accumulation_steps} × processes={world}")
    out = Path(cfg.output_dir)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml")
    accelerator.wait_for_everyone()

    # data and frozen parts
    dataset = build_dataset(cfg, cache_dir=cfg.mask_cache or out / "mask_cache", generate=main)
    comps = build_components(cfg)
    _load_or_pretrain_vae(cfg, comps, out, main, accelerator)
    device = accelerator.device
    for name in ("vae", "text_encoder", "image_encoder"):
        comps[name].requires_grad_(False).to(device)
    if cfg.cache_latents:
        train_data = cache_latents(dataset, comps, cfg.model_type, device)
    else:
        train_data = dataset
    sampler = EpochSampler(len(train_data), cfg.seed)
    loader = torch.utils.data.DataLoader(train_data, batch_size=micro_batch, sampler=sampler, drop_last=True,
                                         num_workers=cfg.num_workers)
    if len(loader) == 0:
        raise DataError(f"{cfg.data_root} has {len(train_data)} training pairs, fewer than one batch of {micro_batch}")

    # trained parts
    model = OOTDModel(comps["unet_garm"], comps["unet_vton"]).train()
    if cfg.gradient_checkpointing:
        comps["unet_garm"].enable_gradient_checkpointing()
        comps["unet_vton"].enable_gradient_checkpointing()
    optimizer_cls = torch.optim.AdamW
    if cfg.use_8bit_adam:
        try:
            import bitsandbytes as bnb

            optimizer_cls = bnb.optim.AdamW8bit
        except ImportError:
            accelerator.print("use_8bit_adam: bitsandbytes is not installed; using torch AdamW (pip install bitsandbytes)")
    optimizer = optimizer_cls(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                              weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    lr_scheduler = get_scheduler(cfg.lr_scheduler, optimizer, num_warmup_steps=cfg.lr_warmup_steps,
                                 num_training_steps=cfg.max_train_steps)
    ema = None
    if cfg.use_ema:
        from diffusers.training_utils import EMAModel

        ema = EMAModel(model.parameters(), decay=cfg.ema_decay)
    model, optimizer, loader, lr_scheduler = accelerator.prepare(model, optimizer, loader, lr_scheduler)
    if ema is not None:
        ema.to(device)
    noise_scheduler = make_noise_scheduler()
    raw_model = accelerator.unwrap_model(model)
    scaler = getattr(accelerator, "scaler", None)

    # resume
    step, nonfinite, in_a_row = 0, 0, 0
    log = LossLog(out / "logs", cfg.report_to, main)
    if resume:
        folder = latest_checkpoint(out) if resume == "latest" else Path(resume)
        if folder is None:
            accelerator.print(f"--resume latest: no checkpoint in {out / 'checkpoints'}; starting from step 0")
        else:
            meta = load_checkpoint(folder, raw_model, optimizer, lr_scheduler, ema, scaler)
            step, nonfinite = meta["step"], meta["nonfinite"]
            log.truncate(step)
            accelerator.print(f"resumed from {folder} at step {step}")

    # loop: one optimizer step = gradient_accumulation_steps micro-steps
    latent_shape = None
    per_epoch = len(loader)
    bar = tqdm(total=cfg.max_train_steps, initial=step, desc="train", disable=not progress_enabled(progress and main))
    t_start, steps_timed = time.time(), 0
    micro = step * cfg.gradient_accumulation_steps
    while step < cfg.max_train_steps:
        epoch, offset = divmod(micro, per_epoch)
        epoch_loader = accelerator.skip_first_batches(loader, offset) if offset else loader
        epoch_loader.set_epoch(epoch)  # accelerate's loader passes it to EpochSampler (and would reset it otherwise)
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                latents = batch if cfg.cache_latents else encode_batch(batch, comps, cfg.model_type, device)
                latent_shape = tuple(latents["target"].shape[1:])
                rand = draw_randomness(cfg.seed, micro, micro_batch, latent_shape, cfg.outfitting_dropout,
                                       rank, world)
                with accelerator.autocast():
                    loss = training_step(model, noise_scheduler, latents, rand, cfg.loss_weighting)
                finite = bool(torch.isfinite(accelerator.gather(loss.detach()[None])).all())
                if finite:
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    lr_scheduler.step()
                else:  # all ranks skip together; a zero loss keeps DDP's gradient hooks in step
                    accelerator.backward(sum((p * 0).sum() for p in model.parameters()))
                optimizer.zero_grad(set_to_none=True)
            micro += 1
            if not accelerator.sync_gradients:
                continue
            step += 1
            steps_timed += 1
            if finite:
                in_a_row = 0
                if ema is not None:
                    ema.step(raw_model.parameters())
            else:
                nonfinite += 1
                in_a_row += 1
                accelerator.print(f"step {step}: non-finite loss, step skipped ({in_a_row} in a row)")
                if in_a_row >= cfg.max_nonfinite_in_a_row:
                    raise TrainingError(f"{in_a_row} non-finite losses in a row at step {step}: lower learning_rate "
                                        f"(now {cfg.learning_rate}), check the data, or use mixed_precision=bf16 "
                                        "instead of fp16")
            loss_value = float(accelerator.gather(loss.detach()[None]).mean())
            if step % cfg.log_every == 0 or step == 1:
                log(step, loss_value, lr_scheduler.get_last_lr()[0], nonfinite)
            bar.update()
            bar.set_postfix(loss=f"{loss_value:.4f}")
            if step % cfg.checkpointing_steps == 0 or step == cfg.max_train_steps:
                if main:
                    save_checkpoint(out / "checkpoints" / f"checkpoint-{step}", raw_model, optimizer, lr_scheduler,
                                    dict(step=step, nonfinite=nonfinite, world=world), ema, scaler)
                    _prune(out, cfg.checkpoints_total_limit)
                accelerator.wait_for_everyone()
            if main and cfg.sample_every and step % cfg.sample_every == 0:
                _samples(cfg, comps, raw_model, ema, out, step)
            if step >= cfg.max_train_steps:
                break
    bar.close()
    seconds = time.time() - t_start
    identical = _ranks_identical(accelerator, raw_model)
    final = out / "pipeline"
    if main:
        if steps_timed:
            (out / "timing.json").write_text(json.dumps(dict(steps=steps_timed, seconds=round(seconds, 1),
                                                             seconds_per_step=round(seconds / steps_timed, 3),
                                                             processes=world, threads=torch.get_num_threads(),
                                                             ranks_identical=identical)))
        if ema is not None:
            ema.copy_to(raw_model.parameters())
        export = dict(comps, unet_garm=raw_model.unet_garm, unet_vton=raw_model.unet_vton)
        raw_model.fusion.clear()
        save_components({k: (v.to("cpu") if hasattr(v, "to") and k != "tokenizer" else v) for k, v in export.items()},
                        final, variant=cfg.model_type)
        _write_model_index(final / "checkpoints" / "ootd", type(comps["vae"]).__name__)
        if log.path.exists():
            plot_loss(log.path, out / "logs" / "loss.png")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final


def _write_model_index(folder: Path, vae_class: str = "AutoencoderKL"):
    """``model_index.json`` as in the released folder, but naming the stock classes each component loads with."""
    import diffusers

    index = {"_class_name": "OOTDPipeline", "_diffusers_version": diffusers.__version__,
             "feature_extractor": ["transformers", "CLIPImageProcessor"], "scheduler": ["diffusers", "UniPCMultistepScheduler"],
             "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
             "unet_garm": ["diffusers", "UNet2DConditionModel"], "unet_vton": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", vae_class]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def _ranks_identical(accelerator, model) -> bool:
    """Data parallelism must keep every process's weights bit-identical; compare per-tensor checksums."""
    sums = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(accelerator.device)
    every = accelerator.gather(sums[None])
    return bool((every == every[:1]).all())


def _samples(cfg, comps, raw_model, ema, out: Path, step: int):
    """A sample grid of the first test pairs (with EMA weights when enabled)."""
    try:
        test = build_dataset(cfg, split="test", pairing="unpaired", cache_dir=cfg.mask_cache or out / "mask_cache")
    except Exception as exc:  # sampling is a nicety: never stop training for it
        print(f"samples skipped at step {step}: {exc}")
        return
    if ema is not None:
        ema.store(raw_model.parameters())
        ema.copy_to(raw_model.parameters())
    raw_model.eval()
    grid = sample_grid(dict(comps, unet_garm=raw_model.unet_garm, unet_vton=raw_model.unet_vton), test,
                       cfg.sample_pairs, 20, cfg.seed, cfg.model_type)
    raw_model.train()
    if ema is not None:
        ema.restore(raw_model.parameters())
    (out / "samples").mkdir(exist_ok=True)
    grid.save(out / "samples" / f"step-{step}.png")


# --- entry points ----------------------------------------------------------------------------------------------------------------
def train_from_cli(config, output_dir=None, max_steps=None, resume=None) -> Path:
    """``ootd train``: load the YAML config, apply the command-line overrides, train."""
    cfg = Config.from_yaml(config, output_dir=str(output_dir) if output_dir else None, max_train_steps=max_steps)
    final = train(cfg, resume=resume)
    print(f"trained pipeline written to {final}")
    return final


def main(argv=None) -> int:
    """``python -m ootd_lib.training`` / ``accelerate launch -m ootd_lib.training`` (same options as ``ootd train``)."""
    p = argparse.ArgumentParser(prog="ootd_lib.training", description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--output-dir", default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--resume", default=None)
    args = p.parse_args(argv)
    train_from_cli(args.config, args.output_dir, args.max_steps, args.resume)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
