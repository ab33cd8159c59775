"""Memory of one OOTDiffusion training step: full, full + checkpointing + 8-bit AdamW, and LoRA r = 16, at SD-1.5 size.

The step is the trainer's (``ootd_lib.training``): ``trainable_model`` on two randomly initialised SD-1.5-geometry UNets
(``UNet2DConditionModel(cross_attention_dim=768)``, the vton ``conv_in`` widened to 8 channels; random weights take
the memory real ones do, and nothing is downloaded), bf16 autocast around the forward as accelerate puts it, float32
master weights, then backward and the optimizer step. LoRA: peft adapters on ``to_q/to_k/to_v/to_out.0`` of both
UNets, the base layers held in bf16 (``training.cast_frozen``). Each config runs in its own subprocess, so peaks do
not mix, and two steps are taken: the second, with the optimizer states already there as in a running training, is
the one measured.

    python benchmarks/bench_train_memory.py                 # CPU (~16 min on 2 busy cores, ~11 GB RAM)
    python benchmarks/bench_train_memory.py --device cuda   # one GPU: every row measured (pip install bitsandbytes)

**CPU** (no GPU needed). The configs that fit in RAM (the LoRA ones) take their steps at 16×12 and at 32×24
latents, batch 1, and the peak RSS of each second step is measured (``VmHWM`` of the child, reset before the step;
minus the child's RSS before it built the models). Every config also runs its forward alone at both sizes; the RSS a
forward adds (saved activations, and the bf16 copies of float32 weights that autocast keeps until backward) is fitted
as ``fixed + per-pixel × h × w × batch``. A step needs more than its forward leaves: backward's buffers come on top.
That factor, κ = (step-peak growth) / (forward growth) between the two sizes, is measured on the LoRA config with the
same checkpointing setting, whose gradients and states are negligible, and applied to the per-pixel part. So the
activations at a size are ``fixed + κ × per-pixel × h × w × batch``, extrapolated to 512×384 and 1024×768 (64×48 and
128×96 latents): linear in the tokens, as with the memory-efficient attention kernels of CUDA and of CPU (a
materialised attention matrix would grow quadratically). Parameters, gradients and optimizer states are counted from
the instantiated models (:func:`state_bytes`); an estimated total adds the four (in backward, gradients fill while
activations are freed: for full fine-tuning this errs high). Full fine-tuning with float32 AdamW (two
860 M-parameter UNets: ~27 GB) is never run on CPU, and 8-bit AdamW needs CUDA; those rows are estimated.

**CUDA**: every config × resolution × batch is measured, ``torch.cuda.max_memory_allocated`` over the second step
(the activations column is then what the peak leaves over the counted parts).

The frozen VAE, text and image encoders (bf16, counted from instantiated models) are not in the rows; the goal lines
add them. Sizes are GiB (2^30 bytes).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

CONFIGS = {  # name: gradient checkpointing, optimizer, LoRA rank (0: full fine-tuning)
    "full": dict(checkpointing=False, optimizer="adamw", lora_rank=0),
    "full + ckpt + 8-bit": dict(checkpointing=True, optimizer="adamw8bit", lora_rank=0),
    "LoRA r=16": dict(checkpointing=False, optimizer="adamw", lora_rank=16),
    "LoRA r=16 + ckpt": dict(checkpointing=True, optimizer="adamw", lora_rank=16),
}
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
CPU_STEP_CONFIGS = ("LoRA r=16", "LoRA r=16 + ckpt")  # the ones that fit in this machine's 24 GB for a whole step
PROBE_LATENTS = ((16, 12), (32, 24))  # CPU forward probes (images 128×96 and 256×192), batch 1
RESOLUTIONS = ((512, 384), (1024, 768))
BATCHES = (1, 4)
GOALS = (("LoRA r=16", (512, 384), 4, 14), ("full + ckpt + 8-bit", (512, 384), 1, 24),
         ("full + ckpt + 8-bit", (512, 384), 4, 24))  # the goals (config, resolution, batch, GiB)
GIB = 2 ** 30
BNB_MIN_8BIT_SIZE, BNB_BLOCK = 4096, 256  # bitsandbytes' AdamW8bit: smaller tensors keep 32-bit states; block size


# --- the arithmetic (tested: tests/test_bench_train_memory.py) -------------------------------------------------------
def optimizer_state_bytes(numel: int, optimizer: str, element_size: int = 4) -> int:
    """Bytes of the optimizer states of one trained tensor of ``numel`` elements.

    ``adamw`` (torch): ``exp_avg`` and ``exp_avg_sq`` in the parameter's dtype, plus a float32 ``step``.
    ``adamw8bit`` (bitsandbytes ≥ 0.41): two uint8 states plus one float32 absmax per 256-element block each; tensors
    under 4 096 elements keep two float32 states."""
    if optimizer == "adamw":
        return 2 * numel * element_size + 4
    if optimizer != "adamw8bit":
        raise ValueError(f"optimizer={optimizer!r} must be 'adamw' or 'adamw8bit'")
    if numel < BNB_MIN_8BIT_SIZE:
        return 2 * numel * 4
    return 2 * numel + 2 * 4 * math.ceil(numel / BNB_BLOCK)


def state_bytes(model: torch.nn.Module, optimizer: str) -> dict:
    """Parameters (all, in their dtype), gradients and optimizer states (trained ones) of ``model``, in bytes, and
    the parameter counts."""
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    return dict(parameters=sum(p.numel() * p.element_size() for p in params),
                gradients=sum(p.numel() * p.element_size() for p in trained),
                optimizer=sum(optimizer_state_bytes(p.numel(), optimizer, p.element_size()) for p in trained),
                n_params=sum(p.numel() for p in params), n_trained=sum(p.numel() for p in trained))


def fit_activations(probes: list) -> tuple[float, float]:
    """``(fixed, per_pixel)`` bytes through two forward probes ``[(latent pixels × batch, bytes), …]`` (the first and
    the last): a forward adds ``fixed + per_pixel × h × w × batch``."""
    (x0, y0), (x1, y1) = probes[0], probes[-1]
    per_pixel = (y1 - y0) / (x1 - x0)
    return y0 - per_pixel * x0, per_pixel


def backward_factor(probes: list, peaks: list) -> float:
    """κ: how much faster a whole step's peak grows with the latent pixels than its forward's memory does (from
    ``[(pixels, bytes), …]`` of forwards and of step peaks at the same two sizes)."""
    return fit_activations(peaks)[1] / fit_activations(probes)[1]


def activation_bytes(fit: tuple[float, float], latent_hw: tuple[int, int], batch: int, kappa: float = 1.0) -> float:
    """Activation memory at ``latent_hw`` × ``batch``: the forward fit's fixed part plus κ × its per-pixel part."""
    fixed, per_pixel = fit
    return fixed + kappa * per_pixel * latent_hw[0] * latent_hw[1] * batch


# --- one config, in a child process -----------------------------------------------------------------------------------
def build_model(spec: dict, device: str):
    """``trainable_model`` on two random SD-1.5-geometry UNets, with this config's switches, on ``device``."""
    from diffusers import UNet2DConditionModel

    from ootd_lib.config import Config
    from ootd_lib.models import widen_conv_in
    from ootd_lib.training import cast_frozen, trainable_model

    torch.manual_seed(0)
    comps = dict(unet_garm=UNet2DConditionModel(cross_attention_dim=768),
                 unet_vton=widen_conv_in(UNet2DConditionModel(cross_attention_dim=768), 8))
    if spec["lora_rank"]:
        from peft import LoraConfig

        for unet in comps.values():
            unet.requires_grad_(False)
            unet.add_adapter(LoraConfig(r=spec["lora_rank"], lora_alpha=spec["lora_rank"],
                                        target_modules=LORA_TARGETS, init_lora_weights="gaussian"))
    cfg = Config.for_profile("sd15", gradient_checkpointing=spec["checkpointing"], mixed_precision="bf16")
    model = trainable_model(comps, cfg)
    if spec["lora_rank"]:
        cast_frozen(model, torch.bfloat16)
    return model.to(device)


def make_optimizer(model, name: str):
    trained = [p for p in model.parameters() if p.requires_grad]
    if name == "adamw8bit":
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(trained, lr=1e-5)
    return torch.optim.AdamW(trained, lr=1e-5)


def step_inputs(latent_hw, batch: int, device: str) -> tuple[dict, dict]:
    g = torch.Generator().manual_seed(1)
    shape = (batch, 4, *latent_hw)
    latents = {k: torch.randn(shape, generator=g).to(device) for k in ("target", "person", "garment")}
    latents["prompt"] = torch.randn(batch, 2, 768, generator=g).to(device)  # hd: CLIP image token + one text token
    rand = dict(noise=torch.randn(shape, generator=g), timesteps=torch.randint(0, 1000, (batch,), generator=g),
                keep=torch.ones(batch))
    return latents, rand


def forward_loss(model, latent_hw, batch: int, device: str):
    from ootd_lib.models import make_noise_scheduler
    from ootd_lib.training import training_step

    latents, rand = step_inputs(latent_hw, batch, device)
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):  # what accelerate's prepare() installs
        return training_step(model, make_noise_scheduler(), latents, rand)


def train_step(model, optimizer, latent_hw, batch: int, device: str):
    forward_loss(model, latent_hw, batch, device).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) * 1024


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux ≥ 4.0: VmHWM := the current RSS


def child_cpu(name: str) -> dict:
    """Counts, forward probes and (for the configs that fit) the measured peak of this config on the CPU."""
    spec, base = CONFIGS[name], rss()
    model = build_model(spec, "cpu")
    out = dict(state_bytes(model, spec["optimizer"]), config=name, rss_model=rss() - base, peaks=None)
    if name in CPU_STEP_CONFIGS:
        optimizer, out["peaks"] = make_optimizer(model, spec["optimizer"]), []
        for hw in PROBE_LATENTS:
            train_step(model, optimizer, hw, 1, "cpu")  # the first allocates the optimizer states
            reset_peak_rss()
            train_step(model, optimizer, hw, 1, "cpu")
            out["peaks"].append([hw[0] * hw[1], peak_rss() - base])
    out["probes"] = []
    for hw in PROBE_LATENTS:
        before = rss()
        loss = forward_loss(model, hw, 1, "cpu")
        out["probes"].append([hw[0] * hw[1], rss() - before])
        del loss
        model.fusion.clear()
    return out


def child_cuda(name: str, resolution, batch: int) -> dict:
    """Peak ``max_memory_allocated`` over the second of two steps of this config at ``resolution`` × ``batch``."""
    spec, latent_hw = CONFIGS[name], (resolution[0] // 8, resolution[1] // 8)
    model = build_model(spec, "cpu")  # counted on the CPU: a model that does not fit the GPU is still a row
    out = dict(state_bytes(model, spec["optimizer"]), config=name, resolution=list(resolution), batch=batch, peak=None)
    try:
        model = model.to("cuda")
        optimizer = make_optimizer(model, spec["optimizer"])
        train_step(model, optimizer, latent_hw, batch, "cuda")
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        train_step(model, optimizer, latent_hw, batch, "cuda")
        torch.cuda.synchronize()
        out["peak"] = torch.cuda.max_memory_allocated()
    except torch.cuda.OutOfMemoryError:
        out["peak"] = "OOM"
    return out


def run_child(*args) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"),
               MALLOC_MMAP_THRESHOLD_="131072")  # large blocks mmap'd, so freed memory leaves the RSS at once
    done = subprocess.run([sys.executable, __file__, "--child", json.dumps(args)], env=env, capture_output=True,
                          text=True)
    if done.returncode:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the table --------------------------------------------------------------------------------------------------------
def encoder_bytes() -> tuple[int, int]:
    """(parameters, bytes in bf16) of SD-1.5's VAE and text encoder and CLIP ViT-L/14's image encoder, counted from
    models instantiated on the meta device (no memory, no download)."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4)
        text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                            num_attention_heads=12, max_position_embeddings=77, projection_dim=768))
        image = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096,
                                                               num_hidden_layers=24, num_attention_heads=16,
                                                               patch_size=14, image_size=224, projection_dim=768))
    n = sum(p.numel() for m in (vae, text, image) for p in m.parameters())
    return n, 2 * n


def gib(x) -> str:
    return f"{x / GIB:.2f}"


def row(r: dict, acts: float, total: float, source: str, image_hw, latent_hw, batch: int) -> str:
    size = f"{image_hw[0]}×{image_hw[1]} ({latent_hw[0]}×{latent_hw[1]})"
    return (f"| {r['config']} | {size} | {batch} | {r['n_trained'] / 1e6:,.1f} M / {r['n_params'] / 1e6:,.0f} M | "
            f"{gib(r['parameters'])} | {gib(r['gradients'])} | {gib(r['optimizer'])} | {gib(acts)} | {gib(total)} | "
            f"{source} |")


def counted(r: dict) -> int:
    return r["parameters"] + r["gradients"] + r["optimizer"]


def kappas(results: dict) -> dict:
    """κ per checkpointing setting, from the config of that setting whose steps were measured."""
    return {CONFIGS[n]["checkpointing"]: backward_factor(r["probes"], r["peaks"]) for n, r in results.items()
            if r["peaks"]}


def cpu_table(results: dict) -> tuple[list[str], dict]:
    lines, totals, kappa = [], {}, kappas(results)
    for name, r in results.items():  # the small-latent rows: measured where the steps ran
        fit, k = fit_activations(r["probes"]), kappa[CONFIGS[name]["checkpointing"]]
        for i, hw in enumerate(PROBE_LATENTS):
            acts = activation_bytes(fit, hw, 1, k)
            image_hw = (hw[0] * 8, hw[1] * 8)
            if r["peaks"]:
                lines.append(row(r, acts, r["peaks"][i][1], f"measured (CPU RSS); estimate {gib(counted(r) + acts)}",
                                 image_hw, hw, 1))
            else:
                lines.append(row(r, acts, counted(r) + acts, "estimated (forwards measured on CPU)", image_hw, hw, 1))
    for name, r in results.items():
        fit, k = fit_activations(r["probes"]), kappa[CONFIGS[name]["checkpointing"]]
        for image_hw in RESOLUTIONS:
            for batch in BATCHES:
                latent_hw = (image_hw[0] // 8, image_hw[1] // 8)
                acts = activation_bytes(fit, latent_hw, batch, k)
                totals[name, image_hw, batch] = counted(r) + acts
                lines.append(row(r, acts, totals[name, image_hw, batch], "estimated", image_hw, latent_hw, batch))
    return lines, totals


def cuda_table(results: list) -> tuple[list[str], dict]:
    lines, totals = [], {}
    for r in results:
        image_hw, batch = tuple(r["resolution"]), r["batch"]
        latent_hw = (image_hw[0] // 8, image_hw[1] // 8)
        if r["peak"] == "OOM":
            lines.append(f"| {r['config']} | {image_hw[0]}×{image_hw[1]} | {batch} | | | | | | OOM | measured (CUDA) |")
            continue
        totals[r["config"], image_hw, batch] = r["peak"]
        lines.append(row(r, r["peak"] - counted(r), r["peak"], "measured (CUDA)", image_hw, latent_hw, batch))
    return lines, totals


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from CONFIGS")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child = json.loads(args.child)
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        print(json.dumps(child_cpu(*child[1:]) if child[0] == "cpu" else child_cuda(*child[1:])))
        return
    names = [n.strip() for n in args.configs.split(",")]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA GPU (torch.cuda.is_available() is False)")

    if args.device == "cpu":
        missing = {CONFIGS[n]["checkpointing"] for n in names} - {CONFIGS[n]["checkpointing"] for n in names
                                                                  if n in CPU_STEP_CONFIGS}
        if missing:
            raise SystemExit(f"on CPU, κ comes from a measured LoRA step: add {CPU_STEP_CONFIGS} to --configs")
        results = {}
        for name in names:
            results[name] = run_child("cpu", name)
            print(f"{name}: done", file=sys.stderr)
        lines, totals = cpu_table(results)
        cpu = platform.processor() or platform.machine()
        machine = f"CPU ({cpu}, {os.cpu_count()} cores), torch {torch.__version__}"
    else:
        runs = [run_child("cuda", n, hw, b) for n in names for hw in RESOLUTIONS for b in BATCHES]
        lines, totals = cuda_table(runs)
        machine = f"{torch.cuda.get_device_name()}, torch {torch.__version__}"
    n_enc, enc = encoder_bytes()

    print(f"Training-step memory, {machine}, {datetime.date.today()}; GiB. Trained / all parameters of the two "
          "UNets.\n")
    print("| config | image (latents) | batch | trained / all params | parameters | gradients | optimizer states | "
          "activations | total | source |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))
    print(f"\nNot in the rows: the frozen VAE, text and image encoders, {n_enc / 1e6:.0f} M parameters, "
          f"{gib(enc)} GiB in bf16.")
    if args.device == "cpu":
        kappa = kappas(results)
        for name in names:
            fixed, per_pixel = fit_activations(results[name]["probes"])
            print(f"- {name}: a forward adds {gib(fixed)} GiB + {per_pixel / 2 ** 20:.3f} MiB per latent pixel × "
                  f"batch; κ = {kappa[CONFIGS[name]['checkpointing']]:.2f}; the models took "
                  f"{gib(results[name]['rss_model'])} GiB of RSS "
                  f"({gib(results[name]['parameters'])} GiB of parameters)")
    print("\nGoals (the issue's), with the encoders:")
    for name, image_hw, batch, goal in GOALS:
        if (name, image_hw, batch) in totals:
            total = totals[name, image_hw, batch] + enc
            verdict = "meets it" if total <= goal * GIB else "misses it"
            print(f"- {name} at {image_hw[0]}×{image_hw[1]} batch {batch} within {goal} GiB: {gib(total)} GiB, "
                  f"{verdict}")


if __name__ == "__main__":
    main()
