"""Worker of ``test_training.py::test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes`` (run by torchrun).

Why torch's FSDP2 and not ``accelerate launch --config_file configs/accelerate/fsdp.yaml``: without GPUs neither
accelerate's FSDP nor torch's FSDP1 runs. accelerate 1.15 switches to ``DistributedType.FSDP`` only for GPU-like device
types (``AcceleratorState`` ignores ``ACCELERATE_USE_FSDP`` in a MULTI_CPU run), and torch's ``FullyShardedDataParallel``
(FSDP1) raises "FSDP needs a non-CPU accelerator device". torch's FSDP2 (``fully_shard``) runs on CPU with gloo, and it
is what accelerate applies with ``fsdp_version: 2``. So here the training code itself — ``trainable_model`` (the
garment pass), ``optimizer_step``, ``save_checkpoint`` / ``load_checkpoint`` (gathering and scattering the shards) —
runs under FSDP2 as ``train`` calls it; accelerate's own FSDP set-up around it is not exercised.

Writes ``<out>/fsdp/step-{2,3}`` (2 processes, every block sharded) and ``<out>/single/step-{2,3}`` (the same steps,
unsharded, on the same global batch of 4: 2 micro-batches × 2 processes × 1 row). Step 3 starts from a fresh model and
optimizer loaded from ``step-2``, as a resumed run does.
"""

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import GradientAccumulationPlugin
from torch.distributed.fsdp import fully_shard

from ootd_lib import training
from ootd_lib.checkpoints import load_checkpoint, save_checkpoint
from ootd_lib.config import Config
from ootd_lib.models import TOY_LATENT_CHANNELS, build_toy_components, make_noise_scheduler

OUT = Path(sys.argv[1])
CFG = Config.for_profile("toy", learning_rate=1e-3, train_batch_size=4, gradient_accumulation_steps=2)
ACCUM = CFG.gradient_accumulation_steps
accelerator = Accelerator(cpu=True, gradient_accumulation_plugin=GradientAccumulationPlugin(
    num_steps=ACCUM, sync_with_dataloader=False))
rank, world = accelerator.process_index, accelerator.num_processes
g = torch.Generator().manual_seed(0)
BATCH = {k: torch.randn(CFG.train_batch_size, *shape, generator=g) for k, shape in
         dict(target=(TOY_LATENT_CHANNELS, 8, 6), person=(TOY_LATENT_CHANNELS, 8, 6),
              garment=(TOY_LATENT_CHANNELS, 8, 6), prompt=(2, 64)).items()}


def parts(sharded: bool):
    model = training.trainable_model(build_toy_components(0), CFG)
    if sharded:  # what configs/accelerate/fsdp.yaml's wrap policy does: each unit, then the root
        for unit in [m for m in model.modules() if type(m).__name__ in training.FSDP_UNITS]:
            fully_shard(unit)
        fully_shard(model)
    optimizer, lr_scheduler = training.optimizer_parts(CFG, model, accelerator)
    return model, optimizer, lr_scheduler


def window(step: int, sharded: bool) -> list:
    """This process's (latents, rand) micro-batches of ``step``, laid out as train() lays them out."""
    parts_, out = (ACCUM * world, []) if sharded else (ACCUM, [])
    for j in range(ACCUM):
        part = j * world + rank if sharded else j
        n = CFG.train_batch_size // parts_
        latents = {k: v[part * n:(part + 1) * n] for k, v in BATCH.items()}
        rand = training.draw_randomness(CFG.seed, step - 1, CFG.train_batch_size, (TOY_LATENT_CHANNELS, 8, 6),
                                        CFG.outfitting_dropout, rank=part, world=parts_)
        out.append((latents, rand))
    return out


def run(model, optimizer, lr_scheduler, steps, sharded: bool):
    for step in steps:
        _, finite = training.optimizer_step(accelerator, model, optimizer, make_noise_scheduler(),
                                            window(step, sharded), CFG.max_grad_norm)
        assert finite
        lr_scheduler.step()


def save(folder: Path, model, optimizer, lr_scheduler, step: int):
    save_checkpoint(folder, model, optimizer, lr_scheduler, dict(step=step, nonfinite=0, world=world,
                                                                 config=CFG.to_dict()))
    accelerator.wait_for_everyone()  # the others read it next


for sharded, name in ((True, "fsdp"), (False, "single")):  # both processes run the unsharded reference too
    model, optimizer, lr_scheduler = parts(sharded)
    run(model, optimizer, lr_scheduler, (1, 2), sharded)
    save(OUT / name / "step-2", model, optimizer, lr_scheduler, 2)
    model, optimizer, lr_scheduler = parts(sharded)
    load_checkpoint(OUT / name / "step-2", model, optimizer, lr_scheduler)
    run(model, optimizer, lr_scheduler, (3,), sharded)
    save(OUT / name / "step-3", model, optimizer, lr_scheduler, 3)
accelerator.end_training()
