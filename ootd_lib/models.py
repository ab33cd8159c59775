"""The OOTDiffusion model: two stock UNets joined by outfitting fusion, and the builders for each profile.

* :class:`OOTDModel` — the training-time module: garment UNet (t = 0) → fusion → vton UNet on ``cat[noisy, person]``.
* :func:`build_toy_components` — tiny models from configs (CPU, seconds, no downloads).
* :func:`build_sd15_components` — both UNets initialised from Stable Diffusion 1.5 (vton ``conv_in`` widened 4 → 8).
* :func:`load_official_components` — the released OOTDiffusion weights (local folder or the hub repo).

Every builder returns the same dict: ``vae, text_encoder, tokenizer, image_encoder, feature_extractor, unet_garm,
unet_vton, scheduler`` — exactly the components of ``OOTDPipeline``.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, AutoencoderTiny, DDPMScheduler, UNet2DConditionModel, UniPCMultistepScheduler
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection
from transformers.utils import logging as transformers_logging

try:  # transformers >= 5: the PIL implementation by name. There the plain name means the torchvision backend, which
    # warns on every run and falls back to PIL when torchvision is missing; we feed it PIL images anyway.
    from transformers import CLIPImageProcessorPil as CLIPImageProcessor
except ImportError:  # transformers 4: CLIPImageProcessor is the PIL implementation
    from transformers import CLIPImageProcessor

from .config import TOY_UNET_CHANNELS
from .errors import InputError, WeightsError
from .fusion import OutfittingFusion
from .hub import CLIP_REPO, OFFICIAL_REPO, check_weight_file, redownload_hint, resolve_files

__all__ = ["OOTDModel", "build_toy_components", "build_sd15_components", "load_official_components", "widen_conv_in",
           "make_scheduler", "make_noise_scheduler", "toy_unet_config", "TOY_TOKENIZER", "COMPONENT_NAMES",
           "OFFICIAL_CHECKPOINT", "load_profile_components", "save_components", "add_variant", "load_vae",
           "official_variant", "exported_config", "weights_digest", "safetensors_digest"]

COMPONENT_NAMES = ("vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "unet_garm", "unet_vton",
                   "scheduler")
TOY_TOKENIZER = Path(__file__).resolve().parent / "resources" / "toy_tokenizer"
OFFICIAL_CHECKPOINT = "checkpoint-36000"  # the released UNets: checkpoints/ootd/ootd_{hd,dc}/checkpoint-36000/unet_*
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


# --- the model ---
class OOTDModel(nn.Module):
    """Garment UNet + vton UNet with outfitting fusion: what training optimises.

    ``forward`` runs the garment UNet once at t = 0, installs its block inputs in the vton self-attention layers, and
    predicts the noise of ``noisy_latents`` (scaled space) from ``cat[noisy_latents, person_latents]`` (unscaled).
    The garment states stay installed after ``forward`` so gradient checkpointing can recompute blocks in backward;
    the next ``forward`` replaces them (call ``self.fusion.clear()`` to free them).
    """

    def __init__(self, unet_garm: UNet2DConditionModel, unet_vton: UNet2DConditionModel):
        super().__init__()
        if unet_vton.config.in_channels != 2 * unet_garm.config.in_channels:
            raise InputError(f"vton UNet has in_channels={unet_vton.config.in_channels}; it takes cat[noisy, person] "
                             f"latents, so it needs {2 * unet_garm.config.in_channels} (see widen_conv_in)")
        self.unet_garm, self.unet_vton = unet_garm, unet_vton
        self.fusion = OutfittingFusion(unet_garm, unet_vton)

    def forward(self, noisy_latents, timesteps, person_latents, garment_latents, encoder_hidden_states) -> torch.Tensor:
        # self.unet_garm, not the fusion's reference: a distributed wrapper (FSDP1) may have replaced the attribute
        states = self.fusion.garment_states(garment_latents, encoder_hidden_states, self.unet_garm)
        self.fusion.set_garment(states)
        x = torch.cat([noisy_latents, person_latents], dim=1)
        return self.unet_vton(x, timesteps, encoder_hidden_states, return_dict=False)[0]


def widen_conv_in(unet: UNet2DConditionModel, in_channels: int = 8) -> UNet2DConditionModel:
    """Give ``unet`` more input channels (in place; returned for chaining).

    The old weights are kept for the first channels, the new ones are zero and the bias is copied, so with a zero extra
    input the widened UNet computes exactly what the original did.
    """
    old = unet.conv_in
    if in_channels < old.in_channels:
        raise InputError(f"widen_conv_in: in_channels={in_channels} is smaller than the current {old.in_channels}")
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


# --- schedulers ---
def make_scheduler(final_sigmas_type: str = "sigma_min") -> UniPCMultistepScheduler:
    """The released sampling scheduler: UniPC, SD-1.5 betas (scaled_linear 0.00085–0.012), Karras sigmas, order 2, bh2.

    ``final_sigmas_type="sigma_min"`` reproduces diffusers 0.24 (what the released model was run with): the last
    step ends at the smallest Karras sigma. ``"zero"`` (current diffusers default) steps all the way to sigma 0; the
    results differ by ~0.5 % in the final latents.
    """
    if final_sigmas_type not in ("sigma_min", "zero"):
        raise InputError(f"final_sigmas_type={final_sigmas_type!r} must be 'sigma_min' or 'zero'")
    return UniPCMultistepScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", prediction_type="epsilon", solver_order=2,
                                   solver_type="bh2", predict_x0=True, lower_order_final=True,
                                   use_karras_sigmas=True, timestep_spacing="linspace", steps_offset=1,
                                   final_sigmas_type=final_sigmas_type)


def make_noise_scheduler() -> DDPMScheduler:
    """Stable Diffusion 1.5's training noise schedule (ε-prediction, 1000 steps, scaled_linear 0.00085–0.012)."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         clip_sample=False, prediction_type="epsilon", steps_offset=1)


# --- toy profile ---
TOY_DIM = 64  # text/image embedding width = UNet cross_attention_dim
TOY_LATENT_CHANNELS = 16  # the toy VAE's latents (SD-1.5: 4); the UNets' in/out channels follow


def toy_unet_config(latent_channels: int = TOY_LATENT_CHANNELS, vton: bool = False,
                    channels: tuple[int, int, int] = TOY_UNET_CHANNELS) -> dict:
    """Tiny SD-like UNet (~1.5 M parameters at the default ``channels``): 3 levels, cross-attention in the two upper
    ones and the mid block → 7 fused transformer blocks (SD-1.5 has 16). The vton UNet takes ``cat[noisy, person]``,
    twice the latent channels. At the default widths all toy components together stay under 20 MB in fp32."""
    in_channels = 2 * latent_channels if vton else latent_channels
    return dict(sample_size=16, in_channels=in_channels, out_channels=latent_channels, layers_per_block=1,
                block_out_channels=tuple(channels),
                down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                cross_attention_dim=TOY_DIM, attention_head_dim=8, norm_num_groups=16)


def toy_vae_config() -> dict:
    """The toy VAE: diffusers' ``AutoencoderTiny`` (TAESD's architecture), downsampling factor 8 as SD's VAE, so a
    128×96 image becomes 16×16×12 latents.

    Chosen by measurement (assets/README.md, "Toy VAE"): a GroupNorm VAE (``AutoencoderKL``) this small learns colour
    slowly on CPU (after 700 steps it still painted every garment brown), while TAESD's norm-free blocks keep colours
    from the first few hundred steps and train on crops. 16 latent channels (SD: 4) carry an 8×8×3 pixel block with
    its stripes; 48 channels per level keep one variant's checkpoint under 20 MB. ``scaling_factor`` is set from the
    trained latents' std."""
    return dict(in_channels=3, out_channels=3, encoder_block_out_channels=(48,) * 4,
                decoder_block_out_channels=(48,) * 4, num_encoder_blocks=(1, 2, 2, 2), num_decoder_blocks=(2, 2, 2, 1),
                latent_channels=TOY_LATENT_CHANNELS, scaling_factor=1.0)


# The VAE classes a weights folder may name (never import a class by name from a file).
VAE_CLASSES = {"AutoencoderKL": AutoencoderKL, "AutoencoderTiny": AutoencoderTiny}


def load_vae(folder, **kwargs):
    """The VAE in ``folder``: SD's ``AutoencoderKL`` (released weights) or the toy ``AutoencoderTiny``, as its
    ``config.json`` names it."""
    config = Path(folder) / "config.json"
    name = json.loads(config.read_text()).get("_class_name", "AutoencoderKL") if config.is_file() else "AutoencoderKL"
    if name not in VAE_CLASSES:
        raise WeightsError(f"{config} names the VAE class {name!r}; expected one of {sorted(VAE_CLASSES)}")
    if name != "AutoencoderTiny":
        return VAE_CLASSES[name].from_pretrained(folder, **kwargs)
    # AutoencoderTiny registers a `block_out_channels` key of its own, saves it, and then warns on every load that the
    # key is unexpected (diffusers 0.42): silence that one message, which says nothing about the user's files
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        return AutoencoderTiny.from_pretrained(folder, **kwargs)
    finally:
        diffusers_logging.set_verbosity(verbosity)


def toy_text_config(tokenizer) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=TOY_DIM, intermediate_size=128, num_hidden_layers=2,
                          num_attention_heads=4, max_position_embeddings=8, projection_dim=TOY_DIM,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)


def toy_vision_config() -> CLIPVisionConfig:
    return CLIPVisionConfig(hidden_size=TOY_DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                            image_size=64, patch_size=8, projection_dim=TOY_DIM)


def toy_feature_extractor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64}, do_resize=True,
                              do_center_crop=True, do_normalize=True, image_mean=CLIP_MEAN, image_std=CLIP_STD)


def build_toy_components(seed: int = 0, unet_channels: tuple[int, int, int] = TOY_UNET_CHANNELS) -> dict:
    """Tiny randomly initialised components (deterministic for ``seed``), same keys as the other builders. The
    encoders are drawn before the UNets, so ``unet_channels`` leaves them as they are for the same ``seed``."""
    tokenizer = CLIPTokenizer.from_pretrained(TOY_TOKENIZER)
    with torch.random.fork_rng(devices=[]):  # don't disturb the caller's global RNG stream
        torch.manual_seed(seed)
        vae = AutoencoderTiny(**toy_vae_config())
        text_encoder = CLIPTextModel(toy_text_config(tokenizer))
        image_encoder = CLIPVisionModelWithProjection(toy_vision_config())
        unet_garm = UNet2DConditionModel(**toy_unet_config(channels=unet_channels))
        unet_vton = UNet2DConditionModel(**toy_unet_config(vton=True, channels=unet_channels))
    for m in (vae, text_encoder, image_encoder, unet_garm, unet_vton):
        m.eval()
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, image_encoder=image_encoder,
                feature_extractor=toy_feature_extractor(), unet_garm=unet_garm, unet_vton=unet_vton,
                scheduler=make_scheduler())


# --- loading helpers ---
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_MODEL_FOLDERS = {"", "vae", "text_encoder", "unet", "unet_garm", "unet_vton"}  # folders that must hold weights
# the config file each component folder cannot load without (by the folder's last name; "" = a CLIP repo's root)
_CONFIG_FILES = {**{name: "config.json" for name in _MODEL_FOLDERS}, "scheduler": "scheduler_config.json",
                 "feature_extractor": "preprocessor_config.json"}


def _weight_files(names: list[str], want_fp16: bool) -> list[str]:
    """From the files of one component folder, the weights to load: the fp16 variant when asked for and present,
    else the plain ones; safetensors preferred over .bin (diffusers/transformers pick the same way)."""
    weights = [n for n in names if n.endswith(_WEIGHT_SUFFIXES)]
    fp16 = [n for n in weights if ".fp16." in n]
    plain = [n for n in weights if ".fp16." not in n]
    pool = fp16 if (want_fp16 and fp16) else plain or fp16
    safe = [n for n in pool if n.endswith(".safetensors")]
    return safe or pool


def _is_fp16(torch_dtype) -> bool:
    return torch_dtype in (torch.float16, torch.bfloat16)


def _relative(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` when it lies directly inside it (``folder`` "" = the repo root), else None."""
    prefix = f"{folder}/" if folder else ""
    rest = path[len(prefix):] if path.startswith(prefix) else None
    return rest if rest and "/" not in rest else None


def _select_files(source, subfolders: list[str], repo_id: str, torch_dtype) -> tuple[Path, dict]:
    """Folder with the needed files of each component subfolder (downloading only those for a hub repo id).

    Returns (root, {subfolder: from_pretrained kwargs naming the variant and weight format}). Pickled ``.bin``
    weights are read by the libraries' weights-only ``torch.load`` path.
    """
    local = Path(source).expanduser()
    if local.is_dir():
        listing = {sub: sorted(p.name for p in (local / sub).glob("*") if p.is_file()) for sub in subfolders}
    elif isinstance(source, Path) or str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise WeightsError(f"weights folder {source} does not exist; pass a local folder laid out like "
                           f"https://huggingface.co/{repo_id} or a hub repo id such as {repo_id!r}")
    else:
        try:
            from huggingface_hub import list_repo_files

            files = list_repo_files(str(source))
        except Exception as exc:  # offline, typo in the repo id, ...
            raise WeightsError(f"cannot list the hub repo {source!r} ({type(exc).__name__}); pass a local folder laid "
                               f"out like https://huggingface.co/{repo_id} instead") from exc
        listing = {sub: sorted(_relative(f, sub) for f in files if _relative(f, sub)) for sub in subfolders}
    patterns, variants = [], {}
    for sub in subfolders:
        names = listing[sub]
        if not names:
            raise WeightsError(f"{source}: the folder {sub}/ is missing or empty; download it from "
                               f"https://huggingface.co/{repo_id}/tree/main/{sub}")
        config = _CONFIG_FILES.get(sub.rsplit("/", 1)[-1])
        if config and config not in names:
            rel = f"{sub}/{config}".lstrip("/")
            raise WeightsError(f"{source}: {rel} is missing, the folder is incomplete; {redownload_hint(rel, repo_id)}")
        weights = _weight_files(names, _is_fp16(torch_dtype))
        if not weights and sub.rsplit("/", 1)[-1] in _MODEL_FOLDERS:
            raise WeightsError(f"{source}: {sub or 'the folder'}/ holds no weight file (.safetensors or .bin); "
                               f"download it from https://huggingface.co/{repo_id}/tree/main/{sub}")
        variants[sub] = dict(variant="fp16" if any(".fp16." in w for w in weights) else None,
                             use_safetensors=all(w.endswith(".safetensors") for w in weights))
        patterns += [f"{sub}/{n}".lstrip("/") for n in names if n.endswith((".json", ".txt")) or n in weights]
    root = resolve_files(source, patterns, repo_id=repo_id)
    for pat in patterns:
        if pat.endswith(_WEIGHT_SUFFIXES):
            check_weight_file(root / pat, pat, repo_id=repo_id, complete=True)
    return root, variants


def _load_unet(folder: Path, file_kwargs: dict, torch_dtype) -> UNet2DConditionModel:
    """Stock UNet2DConditionModel from a folder whose config may name the released UNetGarm/UNetVton class.

    diffusers ignores an unknown ``_class_name`` when the class is asked for explicitly, so no patching is needed.
    """
    return UNet2DConditionModel.from_pretrained(folder, **file_kwargs, torch_dtype=torch_dtype)


def load_unets(folder, variant: str = "hd", like: tuple | None = None) -> dict:
    """``{"unet_garm", "unet_vton"}`` from a folder holding ``unet_garm/`` and ``unet_vton/`` (a released
    ``checkpoint-N/``), or from the ``variant`` of a released-layout folder (an exported run's ``pipeline/``, the toy
    checkpoint). ``like``: the (garm, vton) UNets they replace; a config that differs in shape (channels, latent
    channels, cross-attention width) is a ``WeightsError`` naming the keys."""
    folder = Path(folder)
    if not (folder / "unet_garm").is_dir() and folder.is_dir():
        _, pre = _official_root(folder)
        folder = folder / pre / "ootd" / f"ootd_{official_variant(folder, variant)}" / OFFICIAL_CHECKPOINT
    out = {}
    for i, name in enumerate(("unet_garm", "unet_vton")):
        sub = folder / name
        if not (sub / "config.json").is_file():
            raise WeightsError(f"{sub} holds no UNet (config.json missing); init_unets must name a folder with "
                               "unet_garm/ and unet_vton/, such as a finished run's pipeline/")
        unet = _load_unet(sub, {}, None)
        if like is not None:
            keys = ("in_channels", "out_channels", "block_out_channels", "cross_attention_dim", "layers_per_block")
            diff = [k for k in keys if tuple(_listify(unet.config[k])) != tuple(_listify(like[i].config[k]))]
            if diff:
                raise WeightsError(f"{sub} does not fit this profile's {name}: {', '.join(diff)} differ "
                                   f"({[unet.config[k] for k in diff]} vs {[like[i].config[k] for k in diff]})")
        out[name] = unet
    return out


def _listify(value):
    return value if isinstance(value, (list, tuple)) else [value]


def _load_clip_vision(clip_model, torch_dtype):
    """CLIP ViT image encoder + its processor (None when absent) from a local folder or a hub repo id."""
    root, variants = _select_files(clip_model, [""], repo_id=CLIP_REPO, torch_dtype=torch_dtype)
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()  # the full CLIPModel checkpoint's text weights are skipped on purpose
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(root, **variants[""], torch_dtype=torch_dtype)
    finally:
        transformers_logging.set_verbosity(verbosity)
    processor = CLIPImageProcessor.from_pretrained(root) if (root / "preprocessor_config.json").is_file() else None
    return encoder, processor


def _eval(components: dict) -> dict:
    for m in components.values():
        if isinstance(m, nn.Module):
            m.eval()
    return components


# --- sd15 profile ---
def build_sd15_components(path_or_repo="stable-diffusion-v1-5/stable-diffusion-v1-5", clip_model=CLIP_REPO,
                          torch_dtype=None) -> dict:
    """Components for training from Stable Diffusion 1.5: both UNets start as SD-1.5's UNet, the vton one with
    ``conv_in`` widened to 8 channels (zero new weights); VAE / text encoder / tokenizer from SD-1.5, CLIP image encoder
    from ``clip_model`` (ViT-L/14: its 768-d embedding matches SD-1.5's cross-attention width)."""
    subs = ["unet", "vae", "text_encoder", "tokenizer"]
    root, variants = _select_files(path_or_repo, subs, repo_id=str(path_or_repo), torch_dtype=torch_dtype)
    unet = UNet2DConditionModel.from_pretrained(root / "unet", **variants["unet"], torch_dtype=torch_dtype)
    image_encoder, feature_extractor = _load_clip_vision(clip_model, torch_dtype)
    if feature_extractor is None:
        raise WeightsError(f"{clip_model}: preprocessor_config.json is missing; download it from "
                           f"https://huggingface.co/{CLIP_REPO}")
    unet_vton = widen_conv_in(copy.deepcopy(unet), 2 * unet.config.in_channels)
    return _eval(dict(
        vae=AutoencoderKL.from_pretrained(root / "vae", **variants["vae"], torch_dtype=torch_dtype),
        text_encoder=CLIPTextModel.from_pretrained(root / "text_encoder", **variants["text_encoder"],
                                                   torch_dtype=torch_dtype),
        tokenizer=CLIPTokenizer.from_pretrained(root / "tokenizer"),
        image_encoder=image_encoder, feature_extractor=feature_extractor,
        unet_garm=unet, unet_vton=unet_vton, scheduler=make_scheduler()))


# --- official profile ---
def _official_root(path_or_repo) -> tuple[str | Path, str]:
    """(source, prefix): accepts the repo root (holding checkpoints/) or the checkpoints folder itself."""
    local = Path(str(path_or_repo)).expanduser()
    if local.is_dir():
        if (local / "checkpoints" / "ootd").is_dir():
            return local, "checkpoints/"
        if (local / "ootd").is_dir():
            return local, ""
        raise WeightsError(f"{local} holds neither checkpoints/ootd/ nor ootd/; pass the folder laid out like "
                           f"https://huggingface.co/{OFFICIAL_REPO} (the one that contains checkpoints/)")
    return path_or_repo, "checkpoints/"


def held_variants(folder) -> list[str]:
    """The variants (``hd``, ``dc``) whose UNets a local released-layout folder holds."""
    _, pre = _official_root(Path(folder))
    return [v for v in ("hd", "dc") if (Path(folder) / pre / "ootd" / f"ootd_{v}").is_dir()]


def official_variant(path_or_repo, variant: str | None = None) -> str:
    """``variant`` (hd | dc) checked against what a local released-layout folder holds; ``None`` picks hd, or the
    folder's only variant (a folder with just ``ootd_dc/`` needs no ``--variant dc``)."""
    if variant is not None and variant not in ("hd", "dc"):
        raise InputError(f"variant={variant!r} must be 'hd' (VITON-HD) or 'dc' (Dress Code)")
    local = Path(str(path_or_repo)).expanduser()
    if not local.is_dir():
        return variant or "hd"
    held, pre = held_variants(local), _official_root(local)[1]
    if variant is None:
        return held[0] if len(held) == 1 else "hd"
    if held and variant not in held:
        raise WeightsError(f"{local} holds only the {held[0]} variant ({pre}ootd/ootd_{held[0]}/), not {variant!r}; "
                           f"pass --variant {held[0]}, or download {pre}ootd/ootd_{variant}/ from "
                           f"https://huggingface.co/{OFFICIAL_REPO}")
    return variant


def load_official_components(path_or_repo=OFFICIAL_REPO, variant=None, clip_model=None, torch_dtype=None,
                             final_sigmas_type="sigma_min") -> dict:
    """The released OOTDiffusion weights (``variant`` hd = VITON-HD half-body, dc = Dress Code full-body; ``None``:
    see :func:`official_variant`).

    ``path_or_repo``: a local folder laid out like the hub repo (or its ``checkpoints/`` folder), or a hub repo id;
    from the hub only the files of the chosen variant are downloaded. ``clip_model`` defaults to
    ``<root>/checkpoints/clip-vit-large-patch14`` when that folder exists, else ``openai/clip-vit-large-patch14``.
    fp16 weight files are used when ``torch_dtype`` is half precision and they exist.
    """
    variant = official_variant(path_or_repo, variant)
    source, pre = _official_root(path_or_repo)
    unets = f"{pre}ootd/ootd_{variant}/{OFFICIAL_CHECKPOINT}"
    subs = [f"{pre}ootd/{s}" for s in ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor")]
    subs += [f"{unets}/unet_garm", f"{unets}/unet_vton"]
    root, variants = _select_files(source, subs, repo_id=OFFICIAL_REPO, torch_dtype=torch_dtype)

    if clip_model is None:
        local_clip = root / pre / "clip-vit-large-patch14"
        clip_model = local_clip if local_clip.is_dir() else CLIP_REPO
    image_encoder, _ = _load_clip_vision(clip_model, torch_dtype)  # the processor: ootd/feature_extractor below

    def sub(name):
        return root / f"{pre}ootd/{name}"

    feature_extractor = CLIPImageProcessor.from_pretrained(sub("feature_extractor"))
    scheduler = UniPCMultistepScheduler.from_pretrained(sub("scheduler"), final_sigmas_type=final_sigmas_type)
    components = dict(
        vae=load_vae(sub("vae"), **variants[f"{pre}ootd/vae"], torch_dtype=torch_dtype),
        text_encoder=CLIPTextModel.from_pretrained(sub("text_encoder"), **variants[f"{pre}ootd/text_encoder"],
                                                   torch_dtype=torch_dtype),
        tokenizer=CLIPTokenizer.from_pretrained(sub("tokenizer")),
        image_encoder=image_encoder, feature_extractor=feature_extractor,
        unet_garm=_load_unet(root / f"{unets}/unet_garm", variants[f"{unets}/unet_garm"], torch_dtype),
        unet_vton=_load_unet(root / f"{unets}/unet_vton", variants[f"{unets}/unet_vton"], torch_dtype),
        scheduler=scheduler)
    if components["unet_vton"].config.in_channels != 2 * components["unet_garm"].config.in_channels:
        raise WeightsError(f"{root / unets}/unet_vton has in_channels={components['unet_vton'].config.in_channels}, "
                           "expected 8; the folder does not hold OOTDiffusion UNets")
    return _eval(components)


# --- one entry point for notebooks and the CLI ---
def load_profile_components(profile: str = "toy", pretrained=None, variant: str = "hd", clip_model=None,
                            torch_dtype=None, seed: int = 0) -> dict:
    """Components for a profile.

    * ``toy``: the shipped trained toy checkpoint (``assets/toy_checkpoint``, or ``pretrained``) when present, else
      :func:`build_toy_components` (random weights: the mechanics work, the pictures are noise);
    * ``official``: :func:`load_official_components` (``pretrained`` defaults to the hub repo);
    * ``sd15``: :func:`build_sd15_components`.
    """
    from .config import PROFILES, TOY_CHECKPOINT

    if profile == "toy":
        folder = Path(pretrained) if pretrained else TOY_CHECKPOINT
        if folder.is_dir() and any(folder.iterdir()):
            return load_official_components(folder, variant, clip_model=clip_model, torch_dtype=torch_dtype)
        return build_toy_components(seed)
    if profile == "official":
        return load_official_components(pretrained or OFFICIAL_REPO, variant, clip_model=clip_model,
                                        torch_dtype=torch_dtype)
    if profile == "sd15":
        return build_sd15_components(pretrained or "stable-diffusion-v1-5/stable-diffusion-v1-5",
                                     clip_model=clip_model or CLIP_REPO, torch_dtype=torch_dtype)
    raise InputError(f"unknown profile {profile!r}; choose one of {PROFILES}")


def save_components(components: dict, folder, variant: str = "hd") -> Path:
    """Write components in the released folder layout (safetensors everywhere), atomically.

    ``folder/checkpoints/ootd/{vae,text_encoder,tokenizer,scheduler,feature_extractor}``,
    ``folder/checkpoints/ootd/ootd_<variant>/checkpoint-36000/unet_{garm,vton}`` and the image encoder in
    ``folder/checkpoints/clip-vit-large-patch14`` — so :func:`load_official_components` reads it back.
    """
    import tempfile

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    ootd = tmp / "checkpoints" / "ootd"
    for name in ("vae", "text_encoder", "tokenizer", "scheduler", "feature_extractor"):
        components[name].save_pretrained(ootd / name)
    unets = ootd / f"ootd_{variant}" / OFFICIAL_CHECKPOINT
    components["unet_garm"].save_pretrained(unets / "unet_garm")
    components["unet_vton"].save_pretrained(unets / "unet_vton")
    clip = tmp / "checkpoints" / "clip-vit-large-patch14"
    components["image_encoder"].save_pretrained(clip)
    components["feature_extractor"].save_pretrained(clip)
    return _swap_in(tmp, folder)


def _swap_in(tmp: Path, folder: Path) -> Path:
    """Rename the finished ``tmp`` folder to ``folder``, replacing what was there: a reader sees the old folder or the
    new one, never a half-written one."""
    import os
    import shutil

    old = folder.with_name(f".{folder.name}.old")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
    return folder


def add_variant(folder, unet_garm, unet_vton, variant: str, dtype: torch.dtype | None = None) -> Path:
    """Add (or replace) one variant's UNets in a released-layout folder written by :func:`save_components`:
    ``checkpoints/ootd/ootd_<variant>/checkpoint-36000/unet_{garm,vton}``. The release keeps both variants beside one
    VAE and one set of encoders; so does the toy checkpoint. Written to a temporary folder and renamed into place.

    ``dtype``: store copies of the UNets in it (``torch.float16`` halves the files, as the release's ``.fp16``
    variants do); the UNets passed in are left as they are. The loaders read such weights back as float32."""
    import tempfile

    from .config import MODEL_TYPES

    if variant not in MODEL_TYPES:
        raise InputError(f"variant={variant!r} must be one of {MODEL_TYPES}")
    ootd = Path(folder) / "checkpoints" / "ootd"
    if not (ootd / "vae").is_dir():
        raise WeightsError(f"{folder} is not a released-layout folder (checkpoints/ootd/vae missing); write one with "
                           "save_components first")
    tmp = Path(tempfile.mkdtemp(prefix=f".ootd_{variant}.", dir=ootd))
    for name, unet in (("unet_garm", unet_garm), ("unet_vton", unet_vton)):
        if dtype is not None:  # torch's own .to: diffusers' warns of float32-only modules, which UNets have none of
            unet = torch.nn.Module.to(copy.deepcopy(unet), dtype)
        unet.save_pretrained(tmp / OFFICIAL_CHECKPOINT / name)
    return _swap_in(tmp, ootd / f"ootd_{variant}")


def weights_digest(folder, variant: str) -> str:
    """sha256 over everything a variant's try-ons depend on in a released-layout folder (the toy checkpoint): its
    UNets' and the shared VAE's weight files and the latent mask its ``model_index.json`` names. A recorded
    evaluation (``assets/toy_eval.json``) keeps it, so a retrained UNet, decoder or mask mode must be measured again."""
    ootd = Path(folder) / "checkpoints" / "ootd"
    parts = (ootd / f"ootd_{variant}", ootd / "vae")
    if not any(f for part in parts for f in part.rglob("*.safetensors")):
        raise WeightsError(f"{ootd} holds no ootd_{variant} or vae weights (*.safetensors)")
    return safetensors_digest(*parts, suffix=exported_config(folder).get("latent_mask", "nearest").encode())


def safetensors_digest(*folders, suffix: bytes = b"") -> str:
    """sha256 over the ``*.safetensors`` files under each folder in turn (sorted within a folder), then ``suffix``:
    what a recorded measurement keeps to name the weights it was made on (a LoRA adapter folder, a checkpoint)."""
    import hashlib

    h = hashlib.sha256()
    for folder in folders:
        for f in sorted(Path(folder).rglob("*.safetensors")):
            h.update(f.read_bytes())
    h.update(suffix)
    return h.hexdigest()


def exported_config(path_or_repo) -> dict:
    """``height`` / ``width`` / ``model_type`` that training's export wrote into a local released-layout folder's
    ``model_index.json`` (and ``latent_mask``, which the toy checkpoint's assembly writes); ``{}`` for the released
    weights (their index has none) and hub repo ids."""
    local = Path(str(path_or_repo)).expanduser()
    for folder in (local / "checkpoints" / "ootd", local / "ootd"):
        index_path = folder / "model_index.json"
        if index_path.is_file():
            index = json.loads(index_path.read_text())
            return {k: index[k] for k in ("height", "width", "model_type", "latent_mask") if index.get(k) is not None}
    return {}
