"""Seconds per toy UNet training step on CPU: float32 against bfloat16 autocast, measured in the same run.

The toy recipe trains both UNets at 16×12 latents (128×96 images through the f=8 toy VAE), batch 16. Run:

    python benchmarks/bench_train_step.py [--threads 1] [--batch 16] [--steps 12]

It prints s/step for each precision and the ratio fp32 / bf16 (> 1: bf16 is faster). bf16 autocast needs a CPU with
native bf16 (AVX-512 BF16 / AMX); elsewhere it is emulated and slower, which the ratio shows.
"""

import argparse
import time

import torch

from ootd_lib.models import TOY_DIM, TOY_LATENT_CHANNELS, OOTDModel, build_toy_components, make_noise_scheduler
from ootd_lib.training import draw_randomness, training_step


def seconds_per_step(model, opt, sched, latents, steps: int, bf16: bool) -> float:
    times = []
    for s in range(steps + 2):
        rand = draw_randomness(0, s, len(latents["target"]), tuple(latents["target"].shape[1:]), 0.1)
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = training_step(model, sched, latents, rand)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s >= 2:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, TOY_LATENT_CHANNELS, 16, 12)
    latents = dict(target=torch.randn(shape, generator=g), person=torch.randn(shape, generator=g),
                   garment=torch.randn(shape, generator=g), prompt=torch.randn(args.batch, 2, TOY_DIM, generator=g))
    sched = make_noise_scheduler()
    results = {}
    for name, bf16 in (("fp32", False), ("bf16 autocast", True)):
        comps = build_toy_components(0)
        model = OOTDModel(comps["unet_garm"], comps["unet_vton"]).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        results[name] = seconds_per_step(model, opt, sched, latents, args.steps, bf16)
        print(f"{name:>14}: {results[name]:.3f} s/step (median of {args.steps}, batch {args.batch}, "
              f"{args.threads} thread(s))")
    print(f"ratio fp32 / bf16: {results['fp32'] / results['bf16 autocast']:.2f}x")


if __name__ == "__main__":
    main()
