"""LoRA adapters for OOTDiffusion's two UNets, through peft and diffusers' ``PeftAdapterMixin`` (no hand-written
low-rank layers).

Training (``lora_rank > 0``, :func:`add_lora`): both UNets are frozen and peft adds low-rank adapters on the target
groups of ``cfg.lora_targets`` — ``attn``: every transformer block's ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` (self-
and cross-attention; the fused self-attention processor calls these layers, so it sees the adapters); ``ff``: the
feed-forward linears; ``conv``: the resnets' ``conv1`` / ``conv2``. The garment UNet's unused tail (the layers after
the input of its last transformer block, :meth:`~ootd_lib.fusion.OutfittingFusion.unused_garment_parameters`) gets no
adapters: they could never learn anything.

The vton UNet's ``conv_in``: starting from Stable Diffusion 1.5 (profile ``sd15`` without ``init_unets``) its four
person-latent input channels are new (zero, :func:`~ootd_lib.models.widen_conv_in`), and a low-rank update of a zero
weight cannot teach the UNet to read them, so that ``conv_in`` is trained in full beside the adapters and saved with
them (``unet_vton/conv_in.safetensors``). From an OOTDiffusion base (``official``, ``toy``, or any ``init_unets``)
only the adapters train.

An adapter folder (:func:`save_adapter`)::

    lora/
      unet_garm/pytorch_lora_weights.safetensors     diffusers-native LoRA weights (save_lora_adapter)
      unet_vton/pytorch_lora_weights.safetensors
      unet_vton/conv_in.safetensors                  sd15 base only: the fully trained conv_in
      ootd_lora.json                                 what it was trained on (below)
      README.md

``ootd_lora.json`` names the base (profile, source, variant = model type, resolution), the adapter (rank, alpha,
targets, steps) and, per UNet, its config and a fingerprint of its base weights (:func:`fingerprint`).
:func:`check_adapter` refuses an adapter whose variant, UNet config or fingerprint does not match the pipeline's.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import torch
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.resnet import ResnetBlock2D
from torch import nn

from .errors import WeightsError
from .models import _swap_in

__all__ = ["add_lora", "target_modules", "fingerprint", "base_record", "adapter_meta", "save_adapter",
           "read_adapter", "check_adapter", "load_adapter", "unload_adapter", "trains_conv_in", "ADAPTER_NAME",
           "ADAPTER_FILE", "WEIGHT_NAME"]

ADAPTER_NAME = "ootd_lora"  # the peft adapter name in both UNets
ADAPTER_FILE = "ootd_lora.json"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' LoRA loaders look for
CONV_IN_FILE = "conv_in.safetensors"
ADAPTER_FORMAT = 1
UNETS = ("unet_garm", "unet_vton")
# Tensors no adapter ever touches (conv_in: except the sd15 one, restored on unload), so the fingerprint of a UNet with
# an adapter loaded or fused is still its base's.
FINGERPRINT_TENSORS = ("conv_in.weight", "time_embedding.linear_1.weight", "conv_out.weight")
PROBES_PER_TENSOR = 8
# The config keys an adapter's layer names and shapes depend on.
CONFIG_KEYS = ("in_channels", "out_channels", "block_out_channels", "layers_per_block", "cross_attention_dim",
               "attention_head_dim", "down_block_types", "up_block_types")


# --- training ---------------------------------------------------------------------------------------------------------
def target_modules(unet, targets=("attn",), exclude=()) -> list[str]:
    """Full names of the layers of ``unet`` that get adapters for the groups ``targets`` (attn, ff, conv), less
    those whose parameters are named in ``exclude``. Explicit names: peft matches each one exactly."""
    names = []
    for name, module in unet.named_modules():
        if isinstance(module, BasicTransformerBlock):
            if "attn" in targets:
                for attn in ("attn1", "attn2"):
                    if getattr(module, attn, None) is not None:
                        names += [f"{name}.{attn}.{proj}" for proj in ("to_q", "to_k", "to_v", "to_out.0")]
            if "ff" in targets:
                names += [f"{name}.ff.{n}" for n, m in module.ff.named_modules() if isinstance(m, nn.Linear)]
        if "conv" in targets and isinstance(module, ResnetBlock2D):
            names += [f"{name}.conv1", f"{name}.conv2"]
    excluded = {p.rsplit(".", 1)[0] for p in exclude}
    return [n for n in names if n not in excluded]


def trains_conv_in(cfg) -> bool:
    """The vton ``conv_in`` trains in full beside the adapters when the base is SD-1.5 itself (see the module
    docstring): profile ``sd15`` without ``init_unets``."""
    return cfg.profile == "sd15" and not cfg.init_unets


def add_lora(model, cfg) -> None:
    """Freeze both UNets of ``model`` (an ``OOTDModel``) and add peft LoRA adapters (``cfg.lora_rank``,
    ``lora_alpha``, ``lora_targets``, ``lora_dropout``); the garment UNet's unused tail gets none. Adapters start as
    peft initialises them (``lora_B`` zero: the model computes exactly what its base did)."""
    from peft import LoraConfig

    unused = model.fusion.unused_garment_parameters()  # before freezing: it looks at the trainable parameters
    model.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # peft draws lora_A from torch's global RNG: make it the run's seed
        torch.manual_seed(cfg.seed)
        for name, exclude in (("unet_garm", unused), ("unet_vton", ())):
            unet = getattr(model, name)
            targets = target_modules(unet, cfg.lora_targets, exclude)
            config = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha or cfg.lora_rank,
                                lora_dropout=cfg.lora_dropout, target_modules=targets)
            unet.add_adapter(config, ADAPTER_NAME)  # only the adapter's parameters require grad now
    if trains_conv_in(cfg):
        model.unet_vton.conv_in.requires_grad_(True)


# --- what an adapter was trained on ---------------------------------------------------------------------------------
def fingerprint(unet) -> dict:
    """A cheap fingerprint of a UNet's base weights: the sha256 of a few fixed tensors (:data:`FINGERPRINT_TENSORS`,
    as float32 bytes) and a few values sampled from each. The hash identifies the exact weights; the samples recognise
    the same base held in fp16 / bf16 (where the bytes differ)."""
    tensors = [unet.get_parameter(n).detach().to("cpu", torch.float32).contiguous() for n in FINGERPRINT_TENSORS]
    digest = hashlib.sha256(b"".join(t.numpy().tobytes() for t in tensors)).hexdigest()
    probes = [float(v) for t in tensors
              for v in t.flatten()[torch.linspace(0, t.numel() - 1, PROBES_PER_TENSOR).long()]]
    return dict(sha256=digest, probes=probes)


def _unet_config(unet) -> dict:
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in unet.config.items() if k in CONFIG_KEYS}


def base_record(unet_garm, unet_vton) -> dict:
    """Config and fingerprint of each base UNet, for ``ootd_lora.json``: call it on the unmodified base weights."""
    return {name: dict(config=_unet_config(u), fingerprint=fingerprint(u))
            for name, u in zip(UNETS, (unet_garm, unet_vton))}


def adapter_meta(cfg, base: dict, steps: int) -> dict:
    """The contents of ``ootd_lora.json`` for a run of ``cfg`` on the base UNets described by ``base``
    (:func:`base_record`)."""
    source = cfg.init_unets or cfg.pretrained or f"toy components built with seed {cfg.seed}"
    return dict(format=ADAPTER_FORMAT, profile=cfg.profile, base=str(source), model_type=cfg.model_type,
                resolution=list(cfg.resolution), rank=cfg.lora_rank, alpha=cfg.lora_alpha or cfg.lora_rank,
                targets=list(cfg.lora_targets), dropout=cfg.lora_dropout, steps=steps,
                full_modules={"unet_vton": ["conv_in"]} if trains_conv_in(cfg) else {}, unets=base)


_README = """# OOTDiffusion LoRA adapter

Low-rank adapters (peft LoRA, rank {rank}, alpha {alpha}, on {targets}) for both UNets of an OOTDiffusion model,
trained for {steps} steps at {height}×{width}.

* base: `{base}` (profile `{profile}`), variant **{model_type}**; `ootd_lora.json` records each base UNet's config and
  a fingerprint of its weights, and loading refuses any other base.
* `unet_garm/`, `unet_vton/`: diffusers-native LoRA weights (`{weight}`).{conv_in}

Use it with the model it was trained on:

    ootd tryon --person P --garment G --lora {folder} [--lora-scale 1.0]    (plus --model / --official: the base)

or in Python: `pipe.load_lora("{folder}", scale=1.0)`, then `pipe.fuse_lora()` / `unfuse_lora()` / `unload_lora()`.
"""


def save_adapter(folder, model, meta: dict, overwrite: bool = False) -> Path:
    """Write the adapters of ``model`` (an ``OOTDModel`` after :func:`add_lora`) and ``meta`` (:func:`adapter_meta`)
    to ``folder``: into a temporary sibling folder, renamed into place at the end. An existing ``folder`` is replaced
    only with ``overwrite``."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise WeightsError(f"adapter folder {folder} already exists; pick another folder or delete it first")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    for name in UNETS:
        _save_lora_quietly(getattr(model, name), tmp / name)
    if "conv_in" in meta["full_modules"].get("unet_vton", []):
        conv_in = model.unet_vton.conv_in.state_dict()
        save_file({k: v.detach().to("cpu", torch.float32).contiguous() for k, v in conv_in.items()},
                  tmp / "unet_vton" / CONV_IN_FILE)
    (tmp / ADAPTER_FILE).write_text(json.dumps(meta, indent=1) + "\n")
    h, w = meta["resolution"]
    conv_in_note = (f"\n* `unet_vton/{CONV_IN_FILE}`: the vton UNet's input layer, trained in full (its person-latent "
                    "channels are new on an SD-1.5 base)." if meta["full_modules"] else "")
    (tmp / "README.md").write_text(_README.format(**meta, height=h, width=w, weight=WEIGHT_NAME, conv_in=conv_in_note,
                                                  folder=folder))
    return _swap_in(tmp, folder)


def _save_lora_quietly(unet, folder: Path) -> None:
    """``save_lora_adapter`` calls ``unet.to(dtype=None)``, on which diffusers 0.42 warns that "modules ... should be
    kept in float32: []" (none are): silence that one message, which says nothing about the user's weights."""
    from diffusers.utils import logging as diffusers_logging

    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        unet.save_lora_adapter(folder, adapter_name=ADAPTER_NAME, weight_name=WEIGHT_NAME)
    finally:
        diffusers_logging.set_verbosity(verbosity)


# --- using an adapter -------------------------------------------------------------------------------------------------
def read_adapter(folder) -> dict:
    """``ootd_lora.json`` of an adapter folder, after checking the folder holds what it names."""
    folder = Path(folder)
    path = folder / ADAPTER_FILE
    if not path.is_file():
        raise WeightsError(f"{folder} is not an OOTDiffusion LoRA adapter folder ({ADAPTER_FILE} missing); pass the "
                           "lora/ folder a LoRA training run wrote (lora_rank > 0)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise WeightsError(f"{path} is not valid JSON ({exc}); export the adapter again") from None
    if meta.get("format") != ADAPTER_FORMAT:
        raise WeightsError(f"{path} has adapter format {meta.get('format')!r}, this version reads {ADAPTER_FORMAT}")
    needed = [folder / n / WEIGHT_NAME for n in UNETS]
    needed += [folder / n / CONV_IN_FILE for n, mods in meta["full_modules"].items() if "conv_in" in mods]
    missing = [str(p.relative_to(folder)) for p in needed if not p.is_file()]
    if missing:
        raise WeightsError(f"adapter folder {folder} is incomplete ({', '.join(missing)} missing); copy the whole "
                           "lora/ folder the training run wrote")
    return meta


def _same_base(record: dict, unet) -> bool:
    held = fingerprint(unet)
    if held["sha256"] == record["sha256"]:
        return True
    # the same base in half precision: fp16 / bf16 round each value by at most 2^-9 relative
    return torch.allclose(torch.tensor(held["probes"]), torch.tensor(record["probes"]), rtol=1e-2, atol=1e-4)


def check_adapter(meta: dict, folder, unet_garm, unet_vton, model_type: str) -> None:
    """Refuse (``WeightsError``) an adapter trained on another variant, UNet architecture or base weights than the
    pipeline holds."""
    trained_on = f"trained on the {meta['model_type']} variant of {meta['base']} (profile {meta['profile']})"
    if meta["model_type"] != model_type:
        raise WeightsError(f"LoRA adapter {folder} was {trained_on}, but the pipeline holds a {model_type} model; "
                           f"load the {meta['model_type']} model (--variant {meta['model_type']}) or an adapter "
                           f"trained on {model_type}")
    for name, unet in zip(UNETS, (unet_garm, unet_vton)):
        record = meta["unets"][name]
        held = _unet_config(unet)
        diff = [f"{k} ({record['config'].get(k)} vs {held.get(k)})" for k in CONFIG_KEYS
                if record["config"].get(k) != held.get(k)]
        if diff:
            raise WeightsError(f"LoRA adapter {folder} was {trained_on}, whose {name} differs from the pipeline's in "
                               f"{', '.join(diff)}; load the model it was trained on")
        if not _same_base(record["fingerprint"], unet):
            raise WeightsError(f"LoRA adapter {folder} was {trained_on}, but the pipeline's {name} holds other "
                               f"weights (fingerprint {fingerprint(unet)['sha256'][:12]}, the adapter's base "
                               f"{record['fingerprint']['sha256'][:12]}); load the base model it was trained on")


def load_adapter(folder, meta: dict, unet_garm, unet_vton, scale: float = 1.0) -> dict:
    """Load the adapter of ``folder`` into both UNets at ``scale`` (after :func:`check_adapter`); returns what
    :func:`unload_adapter` needs to restore the base (the replaced ``conv_in`` of an sd15-based adapter)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    restore = {}
    for name, unet in zip(UNETS, (unet_garm, unet_vton)):
        unet.load_lora_adapter(folder / name, prefix=None, adapter_name=ADAPTER_NAME, weight_name=WEIGHT_NAME)
        unet.set_adapters(ADAPTER_NAME, weights=float(scale))
        if "conv_in" in meta["full_modules"].get(name, []):
            weight = unet.conv_in.weight
            restore[name] = {k: v.detach().clone() for k, v in unet.conv_in.state_dict().items()}
            trained = load_file(folder / name / CONV_IN_FILE)
            unet.conv_in.load_state_dict({k: v.to(weight.device, weight.dtype) for k, v in trained.items()})
    return restore


def unload_adapter(unet_garm, unet_vton, restore: dict) -> None:
    """Remove the adapter from both UNets (unfuse first when fused: diffusers' unload would keep fused weights) and
    put back what :func:`load_adapter` replaced."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for name, unet in zip(UNETS, (unet_garm, unet_vton)):
        if any(m.merged for m in unet.modules() if isinstance(m, BaseTunerLayer)):
            unet.unfuse_lora()
        unet.unload_lora()
        if name in restore:
            unet.conv_in.load_state_dict(restore[name])
