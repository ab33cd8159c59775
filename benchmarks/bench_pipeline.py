"""OOTDPipeline against the released formulation: same weights, same inputs, same noise.

The reference below is written the way the released inference code computes outfitting fusion:

* in every vton transformer block the person tokens and the garment tokens are **concatenated along the token axis**,
  the block's norm1 and a full self-attention run on all 2N tokens, and the first N outputs are kept — recomputed at
  every denoising step (queries, keys and values of the garment tokens included);
* the garment UNet runs once per call, to the end;
* the classifier-free-guidance batch is **always doubled**, whatever the scale.

``OOTDPipeline`` computes the same numbers with queries from the person tokens only, the garment keys/values projected
once per call, the garment UNet stopped after its last transformer block's input, and no doubled batch at scale 1.
Conditioning (VAE encoding, CLIP prompt), the scheduler, the repaint and the VAE decode are shared code.

Usage (CPU, a few minutes)::

    python benchmarks/bench_pipeline.py                       # toy and medium
    python benchmarks/bench_pipeline.py --configs sd15        # SD-1.5-size UNets at 512×384, 2 steps (slow, ~7 GB RAM)
    python benchmarks/bench_pipeline.py --configs sd15 --device cuda --dtype fp16 --height 1024 --width 768 --steps 20

Weights are random (the speed and the equality do not depend on them). Times are the minimum over repeats, per image.
"""

from __future__ import annotations

import argparse
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, CLIPVisionConfig, CLIPVisionModelWithProjection

from ootd_lib.conditioning import decode_latents
from ootd_lib.fusion import transformer_block_names
from ootd_lib.guidance import cfg_combine
from ootd_lib.models import TOY_TOKENIZER, build_toy_components, make_scheduler, toy_feature_extractor
from ootd_lib.pipeline import OOTDPipeline, repaint

# name: (H, W), steps, repeats, warm-up calls, what the UNets look like
CONFIGS = {
    "toy": dict(size=(128, 96), steps=20, repeats=3, warmup=1, note="toy UNets (32/64/64), toy VAE (÷8, 16 ch)"),
    "medium": dict(size=(256, 192), steps=6, repeats=2, warmup=0,
                   note="UNets 64/128/256/256 (SD block layout, 1 layer/block), light VAE 16/32/64 (÷4), "
                        "64×48 latents"),
    "sd15": dict(size=(512, 384), steps=2, repeats=1, warmup=0,
                 note="SD-1.5 UNets (320/640/1280/1280, 2 layers/block, 768-d), SD VAE (÷8), 64×48 latents"),
}


# --- components -------------------------------------------------------------------------------------------------------
def unet(in_channels: int, widths, layers: int, cross_dim: int) -> UNet2DConditionModel:
    """SD-1.5 block layout (3 cross-attention levels + 1 plain) at the given widths."""
    return UNet2DConditionModel(in_channels=in_channels, out_channels=4, block_out_channels=widths,
                                layers_per_block=layers, cross_attention_dim=cross_dim, attention_head_dim=8,
                                norm_num_groups=32)


def encoders(dim: int) -> dict:
    """Tiny CLIP text/image encoders whose output width is ``dim`` (they run once per call and are not compared)."""
    tokenizer = CLIPTokenizer.from_pretrained(TOY_TOKENIZER)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim,
                                        num_hidden_layers=1, num_attention_heads=8, max_position_embeddings=8,
                                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                        pad_token_id=tokenizer.pad_token_id))
    image = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                                           num_attention_heads=4, image_size=64, patch_size=8,
                                                           projection_dim=dim))
    return dict(tokenizer=tokenizer, text_encoder=text, image_encoder=image, feature_extractor=toy_feature_extractor())


def build_components(name: str, seed: int = 0) -> dict:
    if name == "toy":
        return build_toy_components(seed)
    torch.manual_seed(seed)
    if name == "medium":
        widths, layers, dim = (64, 128, 256, 256), 1, 64
        # a small SD-like VAE (factor 4, 4 latent channels): what it costs is the UNets, not the VAE
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                            block_out_channels=(16, 32, 64), down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16, sample_size=128)
    else:  # sd15
        widths, layers, dim = (320, 640, 1280, 1280), 2, 768
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512)
    comps = dict(encoders(dim), vae=vae, unet_garm=unet(4, widths, layers, dim), unet_vton=unet(8, widths, layers, dim),
                 scheduler=make_scheduler())
    for m in comps.values():
        if isinstance(m, torch.nn.Module):
            m.eval()
    return comps


# --- the reference: the released formulation --------------------------------------------------------------------------
class ConcatSelfAttnProcessor:
    """Self-attention of a vton block over cat[person tokens, garment tokens], first half kept, every step.

    The block hands in norm1(h); the garment tokens g (its block input before norm1) are normalised here with the same
    norm1 — identical to applying norm1 to cat[h, g], which is what the released block does.
    """

    def __init__(self, norm1):
        self.norm1, self.garment = norm1, None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        b, n, _ = hidden_states.shape
        x = torch.cat([hidden_states, self.norm1(self.garment)], dim=1)  # 2N tokens

        def heads(t):
            return t.view(b, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(attn.to_q(x)), heads(attn.to_k(x)), heads(attn.to_v(x)),
                                             scale=attn.scale)
        out = out.transpose(1, 2).reshape(b, 2 * n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        return out[:, :n] / attn.rescale_output_factor  # keep the person half


@contextmanager
def released_fusion(unet_garm, unet_vton):
    """Install concat processors on the vton attn1 layers and capture hooks on the garment blocks; undo on exit.

    Yields ``capture(garment_latents, prompt)``: runs the whole garment UNet at t = 0 and hands each captured block
    input to the matching vton processor.
    """
    names = transformer_block_names(unet_vton)
    attn1 = [unet_vton.get_submodule(n).attn1 for n in names]
    before = [a.processor for a in attn1]
    procs = [ConcatSelfAttnProcessor(unet_vton.get_submodule(n).norm1) for n in names]
    for a, p in zip(attn1, procs):
        a.set_processor(p)
    hooks = [unet_garm.get_submodule(n).register_forward_pre_hook(
        lambda mod, args, kwargs, p=p: setattr(p, "garment", args[0] if args else kwargs["hidden_states"]),
        with_kwargs=True) for n, p in zip(names, procs)]

    def capture(garment_latents, prompt):
        t = torch.zeros(garment_latents.shape[0], dtype=torch.long, device=garment_latents.device)
        unet_garm(garment_latents, t, prompt)

    try:
        yield capture
    finally:
        for h in hooks:
            h.remove()
        for a, p in zip(attn1, before):
            a.set_processor(p)


@torch.no_grad()
def reference_call(pipe: OOTDPipeline, person, garment, mask, steps, scale, generator):
    """The released sampling loop on the pipeline's components; returns images in [0, 1] like output_type='pt'."""
    device, dtype = pipe._execution_device, pipe.unet_vton.dtype
    person, garment, mask = pipe.prepare_inputs(person, garment, mask)
    prompt, garm, pers, x0 = pipe.encode_conditions(person, garment, mask, ["upper_body"] * len(person), device, dtype)
    m = F.interpolate(mask, size=x0.shape[-2:], mode="nearest").to(device, dtype)
    prompts, persons = torch.cat([prompt, prompt]), torch.cat([pers, pers])
    sched = pipe.scheduler
    with released_fusion(pipe.unet_garm, pipe.unet_vton) as capture:
        capture(torch.cat([torch.zeros_like(garm), garm]), prompts)
        sched.set_timesteps(steps, device=device)
        sched.set_begin_index(0)  # repaint picks its sigma by step index
        noise = randn_tensor(x0.shape, generator=generator, device=device, dtype=dtype)
        x = noise * sched.init_noise_sigma
        for i, t in enumerate(sched.timesteps):
            x_in = sched.scale_model_input(torch.cat([x, x]), t)  # always doubled
            eps = pipe.unet_vton(torch.cat([x_in, persons], 1), t, prompts).sample
            x = sched.step(cfg_combine(*eps.chunk(2), scale), t, x).prev_sample
            x = repaint(x, x0, noise, m, sched)
    return ((decode_latents(pipe.vae, x).float() + 1) / 2).clamp(0, 1).cpu()


# --- measuring --------------------------------------------------------------------------------------------------------
def timed(fn, device):
    """(seconds, peak GPU MiB or None, result) of one call."""
    cuda = str(device).startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = fn()
    if cuda:
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return time.perf_counter() - start, peak, out


def inputs(size, seed=0):
    g = torch.Generator().manual_seed(seed)
    h, w = size
    person = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    garment = torch.rand(1, 3, h, w, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, h, w)
    mask[..., h // 6: 5 * h // 6, w // 5: 4 * w // 5] = 1
    return person, garment, mask


def bench(name, args, scales):
    cfg = dict(CONFIGS[name])
    size = (args.height or cfg["size"][0], args.width or cfg["size"][1])
    steps, repeats = args.steps or cfg["steps"], args.repeats or cfg["repeats"]
    warmup = cfg["warmup"] if args.warmup is None else args.warmup
    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    comps = build_components(name)
    pipe = OOTDPipeline(**comps, height=size[0], width=size[1]).to(args.device)
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    person, garment, mask = inputs(size)
    gen = lambda: torch.Generator("cpu").manual_seed(0)  # noqa: E731
    rows = []
    for scale in scales:
        ours = lambda: pipe(person, garment, mask, num_inference_steps=steps, image_guidance_scale=scale,  # noqa: E731
                            generator=gen(), output_type="pt").images
        ref = lambda: reference_call(pipe, person, garment, mask, steps, scale, gen())  # noqa: E731
        for _ in range(warmup):
            ours(), ref()
        t_ours, t_ref, peaks = [], [], [None, None]
        for _ in range(repeats):  # alternate, so both see the same machine load
            t, peaks[0], a = timed(ours, args.device)
            t_ours.append(t)
            t, peaks[1], b = timed(ref, args.device)
            t_ref.append(t)
        diff = (a.float() - b.float()).abs().max().item()
        rows.append(dict(config=name, size=f"{size[0]}×{size[1]}", steps=steps, scale=scale, ours=min(t_ours),
                         ref=min(t_ref), diff=diff, peak_ours=peaks[0], peak_ref=peaks[1]))
        print_row(rows[-1], args.device)
    return rows


def print_header(device):
    mem = " | peak MiB ours / ref" if str(device).startswith("cuda") else ""
    print(f"| config | H×W | steps | scale | ours s/img | released s/img | speed-up | max abs diff{mem} |")
    print("|---|---|---|---|---|---|---|---|" + ("---|" if mem else ""), flush=True)


def print_row(r, device):
    mem = f" | {r['peak_ours']:.0f} / {r['peak_ref']:.0f}" if str(device).startswith("cuda") else ""
    print(f"| {r['config']} | {r['size']} | {r['steps']} | {r['scale']:g} | {r['ours']:.3f} | {r['ref']:.3f} | "
          f"{r['ref'] / r['ours']:.2f}× | {r['diff']:.1e}{mem} |", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="toy,medium", help="comma-separated: toy, medium, sd15")
    p.add_argument("--scales", default="2.0", help="comma-separated guidance scales (1.0 shows the undoubled batch)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["fp32", "fp16"], default="fp32")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--steps", type=int, default=None, help="override the configuration's steps")
    p.add_argument("--repeats", type=int, default=None, help="override the configuration's repeats (min is kept)")
    p.add_argument("--warmup", type=int, default=None, help="override the configuration's warm-up calls")
    p.add_argument("--height", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    scales = [float(s) for s in args.scales.split(",")]
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    print(f"torch {torch.__version__}, {gpu}, {args.dtype}")
    for name in args.configs.split(","):
        print(f"- {name}: {CONFIGS[name]['note']}")
    print_header(args.device)
    for name in args.configs.split(","):
        bench(name, args, scales)


if __name__ == "__main__":
    main()
