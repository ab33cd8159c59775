"""One config object for every profile and stage.

``Config`` is a flat-ish dataclass with three groups (model, data, training/inference). Profiles ``toy``, ``sd15`` and
``official`` only change defaults; YAML files in ``configs/`` override fields. Unknown keys are an error so typos
do not silently fall back to defaults.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PROFILES = ("toy", "sd15", "official")
MODEL_TYPES = ("hd", "dc")
LOSS_WEIGHTINGS = ("none", "truncated_snr")
CATEGORIES = ("upper_body", "lower_body", "dresses")
LAYOUTS = ("vitonhd", "dresscode")

# Where the shipped toy checkpoint lives (released folder layout, see assets/README.md).
TOY_CHECKPOINT = Path(__file__).resolve().parent.parent / "assets" / "toy_checkpoint"


@dataclass
class Config:
    # --- model -------------------------------------------------------------------------------------------------
    profile: str = "toy"  # toy | sd15 | official
    model_type: str = "hd"  # hd (VITON-HD prompt/mask rules) | dc (Dress Code)
    resolution: tuple[int, int] = (128, 96)  # (H, W) of images fed to the model
    pretrained: str | None = None  # sd15: SD-1.5 folder or repo id; official: checkpoints folder or repo id
    clip_model: str | None = None  # official: CLIP ViT-L/14 folder or repo id (default openai/clip-vit-large-patch14)

    # --- data --------------------------------------------------------------------------------------------------
    data_root: str = "data/toy_vitonhd"
    layout: str = "vitonhd"  # vitonhd | dresscode
    categories: tuple[str, ...] = ("upper_body",)
    toy_train: int = 512  # pairs generated when data_root does not exist (toy only)
    toy_test: int = 64
    mask_cache: str | None = None  # folder for cached agnostic masks (default: <output_dir>/mask_cache)

    # --- training (paper defaults where they apply) ----------------------------------------------------------
    output_dir: str = "runs/toy"
    seed: int = 0
    learning_rate: float = 5e-5
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    lr_warmup_steps: int = 0
    max_train_steps: int = 36_000
    train_batch_size: int = 64  # global batch = train_batch_size (per process × processes × accumulation)
    gradient_accumulation_steps: int = 1
    outfitting_dropout: float = 0.1
    loss_weighting: str = "none"  # none (paper: plain ε-MSE) | truncated_snr (see training.loss_weights)
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    num_workers: int = 0
    checkpointing_steps: int = 1000
    checkpoints_total_limit: int = 3
    log_every: int = 10
    sample_every: int = 1000
    max_nonfinite_in_a_row: int = 5
    report_to: str = "csv"  # csv | tensorboard | csv,tensorboard
    lr_scheduler: str = "constant"  # any diffusers.optimization.get_scheduler name (constant, cosine, ...)
    sample_pairs: int = 4  # test pairs in each sample grid (sample_every)
    cache_latents: bool = False  # encode the dataset once with the frozen VAE/CLIP (no augmentation; toy: on)
    torch_threads: int | None = None  # torch.set_num_threads for CPU runs
    # toy recipe only: the stand-in for SD's pretrained VAE is trained first (see ootd_lib.training.pretrain_toy_vae)
    vae_path: str | None = None  # a trained toy VAE folder to reuse (skips pre-training)
    vae_pretrain_steps: int = 0
    vae_pretrain_lr: float = 1e-3
    vae_pretrain_batch_size: int = 8
    vae_pretrain_crop: tuple[int, int] | None = (64, 48)  # random crops (H, W) keep CPU steps cheap; null: whole images
    vae_pretrain_l1_weight: float = 0.0  # loss = MSE + this × L1 (the shipped toy VAE: 0)

    # --- inference ---------------------------------------------------------------------------------------------
    num_inference_steps: int = 20
    image_guidance_scale: float = 2.0
    final_sigmas_type: str = "sigma_min"  # sigma_min (diffusers 0.24, as released) | zero

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried along (never interpreted)

    def __post_init__(self):
        self.resolution = tuple(int(v) for v in self.resolution)
        self.categories = tuple(self.categories)
        if self.vae_pretrain_crop is not None:
            self.vae_pretrain_crop = tuple(int(v) for v in self.vae_pretrain_crop)
        self.validate()

    def validate(self) -> None:
        def check(name, value, allowed):
            if value not in allowed:
                raise ConfigError(f"config field {name}={value!r} is not one of {allowed}")

        check("profile", self.profile, PROFILES)
        check("model_type", self.model_type, MODEL_TYPES)
        check("layout", self.layout, LAYOUTS)
        check("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        check("final_sigmas_type", self.final_sigmas_type, ("sigma_min", "zero"))
        check("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        for c in self.categories:
            check("categories[]", c, CATEGORIES)
        h, w = self.resolution
        if len(self.resolution) != 2 or h % 8 or w % 8:
            raise ConfigError(f"config field resolution={self.resolution!r} must be (H, W), both multiples of 8")
        # p = 1 (garment always dropped) is allowed for the ablation baseline only: such a model ignores the garment
        if not 0.0 <= self.outfitting_dropout <= 1.0:
            raise ConfigError(f"config field outfitting_dropout={self.outfitting_dropout} must be in [0, 1]")

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def for_profile(cls, profile: str = "toy", **overrides) -> "Config":
        """Defaults of a profile (``toy``, ``sd15``, ``official``) with keyword overrides."""
        if profile not in PROFILES:
            raise ConfigError(f"unknown profile {profile!r}; choose one of {PROFILES}")
        base = {**_PROFILE_DEFAULTS[profile], **overrides}
        base["profile"] = profile
        return cls.from_dict(base)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}; valid keys are {sorted(names)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> "Config":
        """Load a YAML file; a ``profile:`` key picks the profile defaults the file then overrides."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist; see configs/ for examples")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path} must hold a mapping of config keys")
        values.update({k: v for k, v in overrides.items() if v is not None})
        profile = values.pop("profile", "toy")
        return cls.for_profile(profile, **values)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolution"] = list(self.resolution)
        d["categories"] = list(self.categories)
        d["vae_pretrain_crop"] = list(self.vae_pretrain_crop) if self.vae_pretrain_crop is not None else None
        return d

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": dict(resolution=(128, 96)),
    "sd15": dict(resolution=(512, 384), pretrained="stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "official": dict(resolution=(1024, 768), pretrained="levihsu/OOTDiffusion",
                     clip_model="openai/clip-vit-large-patch14"),
}
