"""Outfitting fusion == the paper's concat → transformer block → keep-first-half formulation, on tiny UNets."""

import copy

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ootd_lib.errors import InputError, UnsupportedError
from ootd_lib.fusion import FusedSelfAttnProcessor, OutfittingFusion, transformer_block_names
from ootd_lib.models import OOTDModel, toy_unet_config

H, W, D = 16, 12, 64  # latent size, prompt width


def tiny_unets(seed=0):
    torch.manual_seed(seed)
    garm, vton = UNet2DConditionModel(**toy_unet_config(4)), UNet2DConditionModel(**toy_unet_config(4, vton=True))
    # default init leaves some output projections tiny; perturb so every path carries signal
    with torch.no_grad():
        for p in list(garm.parameters()) + list(vton.parameters()):
            p.add_(0.02 * torch.randn_like(p))
    return garm.eval(), vton.eval()


def inputs(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    noisy, person, garment = (torch.randn(b, 4, H, W, generator=g) for _ in range(3))
    prompt = torch.randn(b, 2, D, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    return noisy, t, person, garment, prompt


# --- the independent reference: capture the garment block inputs, concatenate tokens, run the stock block, slice ---
def reference_garment_states(unet_garm, garment, prompt):
    unet_garm = copy.deepcopy(unet_garm)
    states, hooks = {}, []
    for name, m in unet_garm.named_modules():
        if isinstance(m, BasicTransformerBlock):
            def hook(mod, args, kwargs, name=name):
                states[name] = args[0] if args else kwargs["hidden_states"]
            hooks.append(m.register_forward_pre_hook(hook, with_kwargs=True))
    unet_garm(garment, torch.zeros(garment.shape[0], dtype=torch.long), prompt)  # full pass, t = 0
    return states


def reference_forward(unet_vton, states, noisy, t, person, prompt):
    unet_vton = copy.deepcopy(unet_vton)
    for name, block in unet_vton.named_modules():
        if isinstance(block, BasicTransformerBlock):
            block.attn1.set_processor(AttnProcessor2_0())  # stock self-attention, whatever was installed
            def concat_forward(hidden_states, *args, _orig=block.forward, _g=states[name], **kwargs):
                n = hidden_states.shape[1]
                return _orig(torch.cat([hidden_states, _g], dim=1), *args, **kwargs)[:, :n]
            block.forward = concat_forward
    return unet_vton(torch.cat([noisy, person], 1), t, prompt).sample


def test_block_names_match_and_run_in_order():
    garm, vton = tiny_unets()
    names = transformer_block_names(vton)
    assert names == transformer_block_names(garm)
    assert len(names) == 7 and names[2].startswith("mid_block") and names[-1].startswith("up_blocks.2")


def test_fused_forward_equals_concat_then_slice():
    garm, vton = tiny_unets()
    noisy, t, person, garment, prompt = inputs(2)
    with torch.no_grad():
        expected = reference_forward(vton, reference_garment_states(garm, garment, prompt), noisy, t, person, prompt)
        got = OOTDModel(garm, vton)(noisy, t, person, garment, prompt)
    assert got.shape == (2, 4, H, W)
    assert (got - expected).abs().max() <= 1e-5
    # the garment really matters: another garment gives another prediction
    with torch.no_grad():
        other = OOTDModel(*tiny_unets())(noisy, t, person, garment.flip(0), prompt)
    assert (other - got).abs().max() > 1e-3


@pytest.mark.parametrize("cache_kv", [False, True])
def test_cfg_batch_and_cached_kv_equal_reference(cache_kv):
    garm, vton = tiny_unets()
    noisy, t, person, garment, prompt = inputs(2)
    # CFG: the unconditional half uses the features of a zero garment latent, same prompt, same noisy latents
    g2 = torch.cat([torch.zeros_like(garment), garment])
    x2, p2, e2, t2 = (torch.cat([v, v]) for v in (noisy, person, prompt, t))
    fusion = OutfittingFusion(garm, vton)
    with torch.no_grad():
        fusion.set_garment(fusion.garment_states(g2, e2), cache_kv=cache_kv)
        if cache_kv:
            assert all(p.garment is None and p.garment_kv is not None for p in fusion.processors.values())
        outs = [vton(torch.cat([x2, p2], 1), t2, e2).sample for _ in range(2)]  # two "steps" reuse the cache
        fusion.clear()
        fusion.remove()
        expected = reference_forward(vton, reference_garment_states(garm, g2, e2), x2, t2, p2, e2)
    for out in outs:
        assert (out - expected).abs().max() <= 1e-5
    uncond, cond = outs[0].chunk(2)
    assert (uncond - cond).abs().max() > 1e-3


def test_garment_states_are_pre_norm_block_inputs_and_the_pass_ends_normally():
    garm, vton = tiny_unets()
    _, _, _, garment, prompt = inputs(2)
    fusion = OutfittingFusion(garm, vton)
    calls = []
    hook = garm.register_forward_hook(lambda *a: calls.append(1))  # runs only when forward returns (FSDP relies on it)
    with torch.no_grad():
        states = fusion.garment_states(garment, prompt)
        assert calls == [1], "the garment pass must end normally, not by an exception"
        hook.remove()
        ref = reference_garment_states(garm, garment, prompt)
    assert set(states) == {f"{n}.attn1.processor" for n in fusion.block_names}
    for name in fusion.block_names:
        assert torch.equal(states[f"{name}.attn1.processor"], ref[name])
    assert states["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"].shape == (2, H * W, 32)
    unused = fusion.unused_garment_parameters()
    assert "conv_out.weight" in unused and "up_blocks.2.attentions.1.proj_out.weight" in unused
    assert not any(n.startswith(("down_blocks", "mid_block", "conv_in", "time_embedding")) for n in unused)


def test_gradients_reach_the_garment_unet_and_match_reference():
    garm, vton = tiny_unets()
    noisy, t, person, garment, prompt = inputs(2)
    model = OOTDModel(garm, vton).train()
    model(noisy, t, person, garment, prompt).square().mean().backward()
    grad = garm.conv_in.weight.grad.clone()
    assert grad.abs().sum() > 0 and vton.conv_in.weight.grad.abs().sum() > 0

    ref_garm = copy.deepcopy(garm)
    ref_garm.zero_grad()
    states = {}
    for name, m in ref_garm.named_modules():
        if isinstance(m, BasicTransformerBlock):
            def hook(mod, a, k, name=name):
                states[name] = a[0] if a else k["hidden_states"]
            m.register_forward_pre_hook(hook, with_kwargs=True)
    ref_garm(garment, torch.zeros(2, dtype=torch.long), prompt)
    reference_forward(vton, states, noisy, t, person, prompt).square().mean().backward()
    torch.testing.assert_close(grad, ref_garm.conv_in.weight.grad, rtol=1e-4, atol=1e-7)


def test_gradient_checkpointing_gives_the_same_gradients():
    grads = []
    for checkpointing in (False, True):
        garm, vton = tiny_unets()
        if checkpointing:
            garm.enable_gradient_checkpointing()
            vton.enable_gradient_checkpointing()
        model = OOTDModel(garm, vton).train()
        noisy, t, person, garment, prompt = inputs(2)
        model(noisy, t, person, garment, prompt).square().mean().backward()
        grads.append(torch.cat([garm.conv_in.weight.grad.flatten(), vton.conv_in.weight.grad.flatten()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-7)


def test_no_garment_is_the_stock_unet_and_batch_mismatch_is_an_error():
    garm, vton = tiny_unets()
    noisy, t, person, garment, prompt = inputs(2)
    stock = copy.deepcopy(vton)
    fusion = OutfittingFusion(garm, vton)
    x = torch.cat([noisy, person], 1)
    with torch.no_grad():
        torch.testing.assert_close(vton(x, t, prompt).sample, stock(x, t, prompt).sample, rtol=0, atol=1e-5)
        states = fusion.garment_states(garment[:1].repeat(3, 1, 1, 1), prompt[:1].repeat(3, 1, 1))
        fusion.set_garment(states)
        with pytest.raises(InputError, match="batch size 3"):
            vton(x, t, prompt)
        # a single garment broadcasts over the batch
        fusion.set_garment(fusion.garment_states(garment[:1], prompt[:1]))
        one = vton(x, t, prompt).sample
        fusion.set_garment(fusion.garment_states(garment[:1].repeat(2, 1, 1, 1), prompt[:1].repeat(2, 1, 1)))
        torch.testing.assert_close(one, vton(x, t, prompt).sample, rtol=0, atol=1e-5)
    with pytest.raises(InputError, match="missing|lack"):
        fusion.set_garment({"x": states["down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor"]})


def test_mismatched_unets_are_refused():
    cfg = toy_unet_config(4)
    cfg["down_block_types"] = ("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D")
    cfg["up_block_types"] = ("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D")
    with pytest.raises(InputError, match="structure"):
        OutfittingFusion(UNet2DConditionModel(**cfg), UNet2DConditionModel(**toy_unet_config(4, vton=True)))


@pytest.mark.parametrize("option, attention_kwargs", [
    ("norm_q, norm_k", dict(qk_norm="layer_norm")),
    ("group_norm", dict(norm_num_groups=4)),
    ("spatial_norm", dict(spatial_norm_dim=8)),
])
def test_attention_options_the_fusion_does_not_implement_are_refused(option, attention_kwargs):
    # a stand-alone layer with the option: the processor refuses it instead of skipping the normalisation
    attn = Attention(query_dim=32, heads=2, dim_head=16, **attention_kwargs)
    proc = FusedSelfAttnProcessor(torch.nn.LayerNorm(32))
    with pytest.raises(UnsupportedError, match=option):
        proc(attn, torch.randn(1, 6, 32))
    # the same option on a vton UNet's self-attention: refused when the fusion is installed, naming the layer
    garm, vton = tiny_unets()
    name = transformer_block_names(vton)[2]
    for o in option.split(", "):
        setattr(vton.get_submodule(name).attn1, o, getattr(attn, o))
    with pytest.raises(UnsupportedError, match=f"{name}.attn1 uses {option}"):
        OutfittingFusion(garm, vton)


def test_cross_attention_kwargs_are_refused_while_fused():
    garm, vton = tiny_unets()
    noisy, t, person, garment, prompt = inputs(1)
    x = torch.cat([noisy, person], 1)
    fusion = OutfittingFusion(garm, vton)
    with torch.no_grad():
        fusion.set_garment(fusion.garment_states(garment, prompt))
        with pytest.raises(UnsupportedError, match=r"cross_attention_kwargs \['ip_adapter_masks'\]"):
            vton(x, t, prompt, cross_attention_kwargs={"ip_adapter_masks": None})
        with pytest.raises(NotImplementedError):  # still a NotImplementedError for callers that catch that
            vton(x, t, prompt, None, None, None, {"temb": None})  # positional cross_attention_kwargs too
        fused = vton(x, t, prompt).sample
        torch.testing.assert_close(vton(x, t, prompt, cross_attention_kwargs={"scale": 1.0}).sample, fused)  # LoRA
        fusion.remove()
        vton(x, t, prompt, cross_attention_kwargs={"ip_adapter_masks": None})  # the stock UNet again: no hook left
