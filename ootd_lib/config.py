"""One config object for every profile and stage.

``Config`` is a flat-ish dataclass with three groups (model, data, training/inference). Profiles ``toy``, ``sd15`` and
``official`` only change defaults; YAML files in ``configs/`` override fields. Unknown keys are an error so typos
do not silently fall back to defaults.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

PROFILES = ("toy", "sd15", "official")
MODEL_TYPES = ("hd", "dc")
LATENT_MASKS = ("nearest", "any")  # how repaint brings the mask to the latent grid (pipeline.mask_to_latents)
LOSS_WEIGHTINGS = ("none", "truncated_snr")
CATEGORIES = ("upper_body", "lower_body", "dresses")
LAYOUTS = ("vitonhd", "dresscode")
LORA_TARGETS = ("attn", "ff", "conv")  # layer groups LoRA adapters may go on (ootd_lib.lora.target_modules)
TRAIN_OUTLINES = ("released", "hull", "box")  # training masks (ootd_lib.masking.training_mask)
TOY_UNET_CHANNELS = (32, 64, 64)  # the shipped toy UNets' widths per level (ootd_lib.models.toy_unet_config)

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
    # toy only: the UNets' widths per level (models.toy_unet_config); each a multiple of 16 (GroupNorm groups)
    toy_unet_channels: tuple[int, int, int] = TOY_UNET_CHANNELS

    # --- data --------------------------------------------------------------------------------------------------
    data_root: str = "data/toy_vitonhd"
    layout: str = "vitonhd"  # vitonhd | dresscode
    categories: tuple[str, ...] = ("upper_body",)
    toy_train: int = 512  # pairs generated when data_root does not exist (toy only)
    toy_test: int = 64
    # the toy wardrobe's seed: it generates a missing data_root and must match an existing one (a later stage that
    # reuses an earlier stage's data_root with new batches states the wardrobe's seed here); null: seed, unchecked
    toy_seed: int | None = None
    # garment families of the toy wardrobe (null: the default ones; e.g. [plaid], see ootd_lib.toydata.ALL_PATTERNS);
    # a data_root written with other families is refused
    toy_patterns: tuple[str, ...] | None = None
    mask_cache: str | None = None  # folder for cached agnostic masks (default: <output_dir>/mask_cache)
    # e.g. {lower_body: 2}: every training pair of that category appears twice per epoch (others once), so batches
    # lean towards a category the model finds hard (training only; the data on disk is unchanged)
    category_repeats: dict[str, int] | None = None
    # e.g. {lower_body: box}: training pairs of that category are greyed with a coarser mask (hull | box) whose outline
    # does not show the old garment's kind (ootd_lib.masking.training_mask); evaluation and inference keep the released
    train_mask_outline: dict[str, str] | None = None

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
    prompt_dropout: float = 0.0  # zero the prompt's image token of a training sample (0: paper; training.training_step)
    loss_weighting: str = "none"  # none (paper: plain ε-MSE) | truncated_snr (see training.loss_weights)
    loss_outside_mask: float = 1.0  # weight of the latent cells repaint keeps (1: paper; 0: training.training_step)
    mixed_precision: str = "no"  # no | fp16 | bf16
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    num_workers: int = 0
    checkpointing_steps: int = 1000  # >= 1 (a final checkpoint is always written)
    checkpoints_total_limit: int = 3  # 0 keeps all
    log_every: int = 10  # >= 1
    sample_every: int = 1000  # 0 = no sample grids
    max_nonfinite_in_a_row: int = 5
    report_to: str = "csv"  # csv | tensorboard | csv,tensorboard
    lr_scheduler: str = "constant"  # any diffusers.optimization.get_scheduler name (constant, cosine, ...)
    sample_pairs: int = 4  # test pairs in each sample grid (sample_every)
    cache_latents: bool = False  # encode the dataset once with the frozen VAE/CLIP (no augmentation; toy: on)
    torch_threads: int | None = None  # torch.set_num_threads for CPU runs
    # toy recipe only: the stand-in for SD's pretrained VAE is trained first (see ootd_lib.training.pretrain_toy_vae)
    vae_path: str | None = None  # a trained toy VAE folder to reuse (skips pre-training)
    # start from trained UNets instead of the profile's: a released-layout folder (an exported run's pipeline/, the
    # toy checkpoint; its model_type variant; the toy profile takes its frozen encoders too) or a checkpoint-N/ folder
    init_unets: str | None = None
    # LoRA (ootd_lib.lora): rank 0 trains both UNets in full (the paper); rank > 0 freezes them and trains low-rank
    # adapters on the target groups: attn (to_q/to_k/to_v/to_out.0), ff (feed-forward linears), conv (resnet convs)
    lora_rank: int = 0
    lora_alpha: float | None = None  # the adapters' scale is alpha / rank; null: alpha = rank (scale 1)
    lora_targets: tuple[str, ...] = ("attn",)
    lora_dropout: float = 0.0
    vae_pretrain_steps: int = 0
    vae_pretrain_lr: float = 1e-3
    vae_pretrain_batch_size: int = 8
    vae_pretrain_crop: tuple[int, int] | None = (64, 48)  # random crops (H, W) keep CPU steps cheap; null: whole images
    vae_pretrain_l1_weight: float = 0.0  # loss = MSE + this × L1 (the shipped toy VAE: 0)
    vae_init: str | None = None  # train-vae: continue this trained VAE folder instead of a random one
    # False: train the decoder only. The encoder and scaling_factor stay as they were, so UNets trained on this VAE's
    # latents stay valid while the decoder keeps learning
    vae_train_encoder: bool = True
    # False: train on the person images only. The pipeline decodes nothing but person latents (garment latents only
    # condition the garment UNet), so a decoder-only stage spends its capacity where results are decoded
    vae_train_garments: bool = True

    # --- inference ---------------------------------------------------------------------------------------------
    num_inference_steps: int = 20
    image_guidance_scale: float = 2.0
    final_sigmas_type: str = "sigma_min"  # sigma_min (diffusers 0.24, as released) | zero

    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried along (never interpreted)

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field's type (YAML lists become tuples, integers floats), length, range and allowed values;
        a :class:`ConfigError` names the key, the value and what is expected."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            setattr(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))

        def check(name, value, allowed):
            if value not in allowed:
                raise ConfigError(f"config field {name}={value!r} is not one of {allowed}")

        def at_least(low, *names):
            for name in names:
                value = getattr(self, name)
                if value is not None and value < low:
                    raise ConfigError(f"config field {name}={value!r} must be >= {low}")

        def positive(*names):
            for name in names:
                if not getattr(self, name) > 0:
                    raise ConfigError(f"config field {name}={getattr(self, name)!r} must be > 0")

        def fraction(*names, top_open=False):
            for name in names:
                value = getattr(self, name)
                if not (0.0 <= value < 1.0 if top_open else 0.0 <= value <= 1.0):
                    raise ConfigError(f"config field {name}={value!r} must be in [0, 1{')' if top_open else ']'}")

        check("profile", self.profile, PROFILES)
        check("model_type", self.model_type, MODEL_TYPES)
        check("layout", self.layout, LAYOUTS)
        check("mixed_precision", self.mixed_precision, ("no", "fp16", "bf16"))
        check("final_sigmas_type", self.final_sigmas_type, ("sigma_min", "zero"))
        check("loss_weighting", self.loss_weighting, LOSS_WEIGHTINGS)
        for c in self.categories:
            check("categories[]", c, CATEGORIES)
        for t in self.lora_targets:
            check("lora_targets[]", t, LORA_TARGETS)
        for c, n in (self.category_repeats or {}).items():  # the counts are integers already (_coerce)
            check("category_repeats key", c, self.categories)
            if n < 1:
                raise ConfigError(f"config field category_repeats[{c}]={n!r} must be >= 1 (how many times each pair "
                                  "of that category appears per epoch)")
        for c, outline in (self.train_mask_outline or {}).items():
            check("train_mask_outline key", c, self.categories)
            check(f"train_mask_outline[{c}]", outline, TRAIN_OUTLINES)
        if self.category_repeats is not None and all(n == 1 for n in self.category_repeats.values()):
            self.category_repeats = None  # repeats nothing: the same run as without, and a resume must see it so
        if self.lora_rank and (not self.lora_targets or len(set(self.lora_targets)) != len(self.lora_targets)):
            raise ConfigError(f"config field lora_targets={list(self.lora_targets)!r} must name each of {LORA_TARGETS} "
                              "at most once, and at least one of them when lora_rank > 0")
        if self.lora_alpha is not None and not self.lora_alpha > 0:
            raise ConfigError(f"config field lora_alpha={self.lora_alpha!r} must be > 0 or null (alpha = rank)")
        if self.lora_rank and self.use_ema:
            raise ConfigError("use_ema is not supported with lora_rank > 0 (the EMA would shadow the frozen base "
                              "too); set use_ema: false or lora_rank: 0")
        h, w = self.resolution
        if h <= 0 or w <= 0 or h % 8 or w % 8:
            raise ConfigError(f"config field resolution={list(self.resolution)!r} must be [H, W], both positive "
                              "multiples of 8")
        if len(self.toy_unet_channels) != 3 or any(c <= 0 or c % 16 for c in self.toy_unet_channels):
            raise ConfigError(f"config field toy_unet_channels={list(self.toy_unet_channels)!r} must be three widths, "
                              "each a positive multiple of 16 (the toy UNets' GroupNorm groups), e.g. [32, 64, 64]")
        if self.toy_patterns is not None and not self.toy_patterns:  # the names are checked by the toy generator
            raise ConfigError("config field toy_patterns=[] must name one or more garment families, or be null "
                              "(the default families)")
        if self.vae_pretrain_crop is not None and min(self.vae_pretrain_crop) <= 0:
            raise ConfigError(f"config field vae_pretrain_crop={list(self.vae_pretrain_crop)!r} must be [H, W] > 0 "
                              "or null (whole images)")
        # 0 would mean "never", but the training loop divides by them: a checkpoint and a log line every N >= 1 steps
        at_least(1, "max_train_steps", "train_batch_size", "gradient_accumulation_steps", "checkpointing_steps",
                 "log_every", "max_nonfinite_in_a_row", "sample_pairs", "num_inference_steps",
                 "vae_pretrain_batch_size", "torch_threads")
        at_least(0, "lora_rank", "lr_warmup_steps", "toy_train", "toy_test", "toy_seed", "num_workers",
                 "checkpoints_total_limit", "sample_every", "vae_pretrain_steps", "max_grad_norm", "adam_weight_decay",
                 "vae_pretrain_l1_weight", "image_guidance_scale")
        positive("learning_rate", "adam_epsilon", "vae_pretrain_lr")
        fraction("adam_beta1", "adam_beta2", "lora_dropout", top_open=True)
        # p = 1 (garment always dropped) is allowed for the ablation baseline only: such a model ignores the garment
        fraction("outfitting_dropout", "ema_decay", "loss_outside_mask", "prompt_dropout")

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
        try:
            return cls.for_profile(profile, **values)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["resolution"] = list(self.resolution)
        d["categories"] = list(self.categories)
        d["toy_unet_channels"] = list(self.toy_unet_channels)
        d["lora_targets"] = list(self.lora_targets)
        d["toy_patterns"] = list(self.toy_patterns) if self.toy_patterns is not None else None
        d["vae_pretrain_crop"] = list(self.vae_pretrain_crop) if self.vae_pretrain_crop is not None else None
        return d

    def to_yaml(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _expected(tp) -> str:
    """How a type reads in an error message."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_expected(a) for a in args if a is not type(None)) + " or null"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_expected(args[0]).split(' ', 1)[1]}s"
        return f"a list of {len(args)} {_expected(args[0]).split(' ', 1)[1]}s"
    if origin is dict and args[1] is not Any:
        return f"a mapping of {_expected(args[0]).split(' ', 1)[1]}s to {_expected(args[1]).split(' ', 1)[1]}s"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            dict: "a mapping"}.get(origin or tp, str(tp))


def _coerce(name: str, value, tp):
    """``value`` checked against the annotation ``tp`` of field ``name``: lists → tuples, integers → floats."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # our unions are all "X | None"
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        try:
            return _coerce(name, value, inner)
        except ConfigError:
            raise ConfigError(f"config field {name}={value!r} must be {_expected(tp)}") from None
    if tp is Any:
        return value
    bad = ConfigError(f"config field {name}={value!r} must be {_expected(tp)}, got {type(value).__name__}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        if len(value) != len(items):
            raise ConfigError(f"config field {name}={list(value)!r} must be {_expected(tp)}, got {len(value)} item(s)")
        try:
            return tuple(_coerce(name, v, a) for v, a in zip(value, items))
        except ConfigError:
            raise bad from None
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise bad
        if not args:
            return value
        try:  # the values by their annotation (keys as they are: YAML mapping keys are strings already)
            return {k: _coerce(name, v, args[1]) for k, v in value.items()}
        except ConfigError:
            raise bad from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise bad
        return int(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise bad
        return float(value)
    if tp is str and not isinstance(value, str):
        raise bad
    return value


_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "toy": dict(resolution=(128, 96)),
    "sd15": dict(resolution=(512, 384), pretrained="stable-diffusion-v1-5/stable-diffusion-v1-5"),
    "official": dict(resolution=(1024, 768), pretrained="levihsu/OOTDiffusion",
                     clip_model="openai/clip-vit-large-patch14"),
}
