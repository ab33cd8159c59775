"""Outfitting fusion on two stock ``diffusers.UNet2DConditionModel``s.

OOTDiffusion runs a *garment* UNet (the outfitting UNet) once on the garment latents at timestep 0 and feeds what enters
each of its transformer blocks into the matching transformer block of the *denoising* ("vton") UNet. There, the person
tokens ``h`` (N of them) and the garment tokens ``g`` (M of them) are concatenated along the token axis, the vton block
runs on ``cat[h, g]`` and only the first N output tokens are kept. Everything in a transformer block is per-token except
self-attention, so the same result comes from a cheaper computation:

    q = to_q(norm1(h))      k, v = to_k / to_v(cat[norm1(h), norm1(g)])      (norm1 = the *vton* block's LayerNorm)

i.e. an attention processor on the vton ``attn1`` layers whose keys/values see the garment tokens. ``g`` does not
depend on the noisy latents, so at inference its keys/values are computed once per sampling call (``cache_kv=True``).

Layers are matched by name: the garment block ``down_blocks.0.attentions.0.transformer_blocks.0`` feeds the vton
processor ``down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor`` (both UNets share one block structure).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock

from .errors import InputError, UnsupportedError

__all__ = ["OutfittingFusion", "FusedSelfAttnProcessor", "transformer_block_names", "execution_key"]


def execution_key(name: str) -> tuple:
    """Sort key that orders UNet submodule names the way ``UNet2DConditionModel.forward`` runs them.

    ``named_modules()`` lists ``up_blocks`` before ``mid_block`` (registration order), so it cannot be used as is.
    """
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[name.split(".")[0]]
    return (stage,) + tuple(int(p) for p in name.split(".") if p.isdigit())


def transformer_block_names(unet) -> list[str]:
    """Names of the self-attention transformer blocks of a UNet, in execution order."""
    names = [n for n, m in unet.named_modules() if isinstance(m, BasicTransformerBlock)]
    return sorted(names, key=execution_key)


# Options of a diffusers ``Attention`` layer that FusedSelfAttnProcessor does not implement (it would skip them).
UNSUPPORTED_ATTENTION_OPTIONS = ("norm_q", "norm_k", "group_norm", "spatial_norm")


def check_supported(attn, name: str = "attn1") -> None:
    """Raise :class:`UnsupportedError` when the attention layer uses an option the fused processor does not apply."""
    used = [o for o in UNSUPPORTED_ATTENTION_OPTIONS if getattr(attn, o, None) is not None]
    if used:
        raise UnsupportedError(f"{name} uses {', '.join(used)}, which outfitting fusion does not implement; build "
                               "the UNets without them (stock SD-1.5 / toy UNet configs have none)")


def _refuse_cross_attention_kwargs(unet, args, kwargs):
    """Forward pre-hook on the vton UNet: the fused self-attention takes no cross_attention_kwargs (diffusers would
    only drop them with a log line). ``scale`` is the LoRA scale, applied by the UNet itself, so it passes."""
    extra = kwargs.get("cross_attention_kwargs", args[6] if len(args) > 6 else None) or {}
    extra = sorted(k for k in extra if k != "scale")
    if extra:
        raise UnsupportedError(f"cross_attention_kwargs {extra} are not implemented by outfitting fusion; call the "
                               "vton UNet without them")


class FusedSelfAttnProcessor:
    """Self-attention of a vton transformer block whose keys/values also cover the garment tokens.

    ``garment`` holds the pre-norm1 garment tokens (B, M, C) or, once cached, the projected ``(key, value)`` pair.
    With no garment set it is plain self-attention, so a vton UNet without a garment behaves like a stock UNet.
    """

    def __init__(self, norm1: torch.nn.Module):
        self.norm1 = norm1  # the vton block's norm1: garment tokens are normalised by the *receiving* block
        self.garment = None  # (B, M, C) pre-norm1 garment tokens
        self.garment_kv = None  # (key, value) of norm1(garment), when cached

    def __deepcopy__(self, memo):
        # a deep-copied UNet (EMA copies, reference models) gets a garment-less processor: the garment tensors are
        # usually non-leaf graph tensors, which cannot be deep-copied, and they belong to the original's fusion
        return FusedSelfAttnProcessor(copy.deepcopy(self.norm1, memo))

    def garment_key_value(self, attn):
        if self.garment_kv is not None:
            return self.garment_kv
        g = self.norm1(self.garment)
        return attn.to_k(g), attn.to_v(g)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        if encoder_hidden_states is not None or attention_mask is not None or hidden_states.ndim != 3:
            raise UnsupportedError("the fused processor handles the unmasked self-attention (attn1) of a "
                                   "BasicTransformerBlock only")
        check_supported(attn)
        b, n, _ = hidden_states.shape
        query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        if self.garment is not None or self.garment_kv is not None:
            gk, gv = self.garment_key_value(attn)
            if gk.shape[0] == 1 and b > 1:  # one garment for a whole batch
                gk, gv = gk.expand(b, -1, -1), gv.expand(b, -1, -1)
            if gk.shape[0] != b:
                raise InputError(f"garment states have batch size {gk.shape[0]} but the denoising UNet batch is {b}; "
                                 "compute garment_states on the same batch (for CFG: cat[zero garment, garment])")
            key, value = torch.cat([key, gk.to(key.dtype)], 1), torch.cat([value, gv.to(value.dtype)], 1)

        def heads(x):
            return x.view(b, -1, attn.heads, x.shape[-1] // attn.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(query), heads(key), heads(value), scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, n, -1).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))  # linear projection, dropout
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor


class OutfittingFusion:
    """Connects a garment UNet to a vton UNet (both stock ``UNet2DConditionModel``, same block structure).

    Installs a :class:`FusedSelfAttnProcessor` on every vton ``attn1`` and a capture hook on every garment transformer
    block. Typical use::

        fusion = OutfittingFusion(unet_garm, unet_vton)
        fusion.set_garment(fusion.garment_states(garment_latents, prompt_embeds), cache_kv=True)  # once per call
        eps = unet_vton(cat[noisy, person_latents], t, prompt_embeds).sample                       # every step
        fusion.clear()

    Calling ``unet_vton.set_attn_processor(...)`` afterwards removes the fusion (re-create the object then).
    """

    def __init__(self, unet_garm, unet_vton):
        self.unet_garm, self.unet_vton = unet_garm, unet_vton
        self.block_names = transformer_block_names(unet_vton)
        garm_names = transformer_block_names(unet_garm)
        if garm_names != self.block_names:
            raise InputError(f"garment and vton UNets do not share one transformer-block structure "
                             f"({len(garm_names)} vs {len(self.block_names)} blocks); build both from the same config "
                             "(only in_channels may differ)")
        self.processors: dict[str, FusedSelfAttnProcessor] = {}
        for name in self.block_names:
            block = unet_vton.get_submodule(name)
            check_supported(block.attn1, f"vton {name}.attn1")
            proc = FusedSelfAttnProcessor(block.norm1)
            block.attn1.set_processor(proc)
            self.processors[f"{name}.attn1.processor"] = proc
        self._captured: dict[str, torch.Tensor] | None = None  # filled only while garment_states runs
        self._hooks = [unet_garm.get_submodule(name).register_forward_pre_hook(self._capture_hook(name),
                                                                               with_kwargs=True)
                       for name in self.block_names]
        self._hooks.append(unet_vton.register_forward_pre_hook(_refuse_cross_attention_kwargs, with_kwargs=True))

    # -- garment side ------------------------------------------------------------------------------------------
    def _capture_hook(self, name):
        def hook(module, args, kwargs):
            if self._captured is not None:  # only inside garment_states (not a plain garment UNet call, a recompute)
                self._captured[f"{name}.attn1.processor"] = args[0] if args else kwargs["hidden_states"]
            return None

        return hook

    def garment_states(self, garment_latents, encoder_hidden_states, unet_garm=None) -> dict[str, torch.Tensor]:
        """Run the garment UNet at timestep 0 and return ``{vton attn1 processor name: (B, M, C) block input}``.

        The pass runs to the UNet's end, although nothing after the input of its last transformer block is used (that
        block, its ``proj_out`` and ``conv_out``: at SD scale one of 16 transformer blocks, forward only).
        A pass that returns normally keeps every module's forward hooks whole — FSDP reshards parameters after each
        forward, torch.compile traces one graph — where stopping it with an exception would skip them.
        No ``torch.no_grad`` here: in training the gradients flow back into the garment UNet through these states.
        ``unet_garm``: the module to call when a distributed wrapper stands in for the one given at construction.
        """
        unet = self.unet_garm if unet_garm is None else unet_garm
        t = torch.zeros(garment_latents.shape[0], dtype=torch.long, device=garment_latents.device)
        self._captured = {}
        try:
            unet(garment_latents, t, encoder_hidden_states, return_dict=False)
        finally:
            states, self._captured = self._captured, None
        missing = set(self.processors) - set(states)
        if missing:
            raise RuntimeError(f"garment UNet pass did not reach transformer blocks {sorted(missing)}")
        return states

    def unused_garment_parameters(self) -> list[str]:
        """Names of garment-UNet parameters that cannot influence the garment states (they never get gradients).

        With the released block structure: the last transformer block (only its input is used), the ``proj_out`` of
        its ``Transformer2DModel``, and ``conv_norm_out``/``conv_out``. Training freezes them (DDP then needs no
        ``find_unused_parameters``). Found exactly by one tiny autograd pass.
        """
        unet = self.unet_garm
        p = next(unet.parameters())
        side = 2 ** (len(unet.config.block_out_channels) - 1)
        x = torch.zeros(1, unet.config.in_channels, side, side, device=p.device, dtype=p.dtype)
        ehs = torch.zeros(1, 1, unet.config.cross_attention_dim, device=p.device, dtype=p.dtype)
        with torch.enable_grad():
            states = self.garment_states(x, ehs)
            used = torch.autograd.grad(sum(s.float().sum() for s in states.values()),
                                       [q for q in unet.parameters() if q.requires_grad], allow_unused=True)
        named = [n for n, q in unet.named_parameters() if q.requires_grad]
        return [n for n, g in zip(named, used) if g is None]

    # -- vton side ---------------------------------------------------------------------------------------------
    def set_garment(self, states: dict | None, cache_kv: bool = False) -> None:
        """Make the vton self-attention layers attend to ``states`` (from :meth:`garment_states`); ``None`` clears.

        ``cache_kv=True`` projects ``to_k/to_v(norm1(g))`` once now (inference: the garment is fixed for all steps).
        """
        if states is None:
            return self.clear()
        missing = set(self.processors) - set(states)
        if missing:
            raise InputError(f"garment states lack the layers {sorted(missing)[:3]}...; pass the dict returned by "
                             "OutfittingFusion.garment_states")
        for name, proc in self.processors.items():
            proc.garment, proc.garment_kv = states[name], None
            if cache_kv:
                attn = self.unet_vton.get_submodule(name.rsplit(".", 1)[0])
                proc.garment_kv = proc.garment_key_value(attn)
                proc.garment = None

    def clear(self) -> None:
        """Forget the garment: the vton UNet is a plain UNet again (and cached tensors are freed)."""
        for proc in self.processors.values():
            proc.garment = proc.garment_kv = None

    def remove(self) -> None:
        """Undo everything: remove the capture hooks and restore default processors on the vton UNet."""
        for h in self._hooks:
            h.remove()
        self.clear()
        from diffusers.models.attention_processor import AttnProcessor2_0

        for name in self.block_names:
            self.unet_vton.get_submodule(name).attn1.set_processor(AttnProcessor2_0())
