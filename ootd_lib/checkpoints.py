"""Training checkpoints and run folders: safetensors + JSON, written atomically, resumed exactly.

A checkpoint folder ``<output_dir>/checkpoints/checkpoint-N`` holds

* ``model.safetensors`` — the full weights of the trained model (both UNets, keys ``unet_garm.*`` / ``unet_vton.*``),
  or with ``trained_only`` (LoRA runs) only the parameters that train (``state.json``: ``"weights": "trained"``; the
  frozen base is rebuilt from the config on resume);
* ``optimizer.safetensors`` — the optimizer state, tensors keyed ``<parameter name>.<state key>``;
* ``ema.safetensors`` — the EMA shadow weights (with ``use_ema``);
* ``rng.safetensors`` — torch's RNG states;
* ``state.json`` — the step counters, the config the run was written with, and every scalar: optimizer param groups,
  LR scheduler, gradient scaler, EMA counters (``optimization_step``, decay, ...), python / numpy RNG.

Sharded training (FSDP) keeps no process with the full model, so collecting the state is a collective: **every
process calls** :func:`save_checkpoint` and :func:`load_checkpoint`, and only the main process writes. The state goes
through torch's distributed-checkpoint state-dict API (``get_state_dict`` / ``set_state_dict`` with
``full_state_dict=True``, what ``accelerator.get_state_dict`` uses for FSDP2), which serves plain and DDP models as
well, so there is one code path. (``accelerator.save_state`` would write pickles — ``optimizer.bin``,
``random_states_*.pkl`` — where this project keeps weights and state in safetensors and JSON.)

Run folders: a new run refuses to write over an earlier one (:func:`prepare_run_folder`), and a resumed run must use the
config its checkpoint was written with (:func:`config_changes`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, TrainingError

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint", "prune_checkpoints", "read_checkpoint_state",
           "config_changes", "prepare_run_folder", "flatten_optimizer", "unflatten_optimizer", "is_main_process",
           "trained_names", "RUN_OUTPUTS", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = 2  # 2: optimizer state keyed by parameter name, config and EMA counters in state.json
# What `train` writes into its output folder (the toy VAE stage's vae/, vae_checkpoints/, logs_vae/ are its inputs).
RUN_OUTPUTS = ("config.yaml", "checkpoints", "logs", "samples", "pipeline", "lora", "timing.json")
# Config keys a resumed run may change: where and how often it reports, not what it computes.
RESUME_FREE_KEYS = frozenset({"output_dir", "checkpointing_steps", "checkpoints_total_limit", "log_every",
                              "sample_every", "sample_pairs", "report_to", "num_workers", "torch_threads",
                              "mask_cache", "extra"})
# Schedules that do not depend on max_train_steps: with them a run may be extended on resume.
STEP_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def is_main_process() -> bool:
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


# --- optimizer state ↔ safetensors + JSON ---------------------------------------------------------------------------
def flatten_optimizer(state: dict) -> tuple[dict, dict]:
    """An optimizer state dict → (tensors for safetensors, the JSON-able rest). Tensor keys are
    ``<parameter id or name>.<state key>`` (``0.exp_avg``, ``unet_vton.conv_in.weight.exp_avg``)."""
    tensors, meta = {}, {"param_groups": state["param_groups"], "scalars": {}}
    for param, s in state["state"].items():
        for k, v in s.items():
            if torch.is_tensor(v):
                tensors[f"{param}.{k}"] = v.detach().cpu().contiguous()
            else:
                meta["scalars"][f"{param}.{k}"] = v
    return tensors, meta


def unflatten_optimizer(tensors: dict, meta: dict) -> dict:
    """Inverse of :func:`flatten_optimizer` (integer parameter ids come back as ints)."""
    state: dict = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        param, k = key.rsplit(".", 1)
        state.setdefault(int(param) if param.isdigit() else param, {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def _optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the torch one


# --- checkpoints ------------------------------------------------------------------------------------------------------
def trained_names(model) -> set[str]:
    """Names of the parameters of ``model`` (unwrapped from DDP) that train."""
    return {n for n, p in getattr(model, "module", model).named_parameters() if p.requires_grad}


def save_checkpoint(folder, model, optimizer, lr_scheduler, state: dict, ema=None, scaler=None,
                    trained_only: bool = False) -> Path | None:
    """Write ``folder`` atomically. Every process calls this (see the module docstring); the main process writes and
    gets the folder back, the others get None. ``trained_only``: ``model.safetensors`` holds only the parameters that
    require grad (a LoRA run: the adapters, not the frozen base).

    ``state``: the JSON-able training state (step, counters, the run's config). Everything goes into a temporary
    sibling folder renamed into place at the end, so a kill mid-write leaves either the previous checkpoint or the
    complete new one, never a broken one."""
    from safetensors.torch import save_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    # full (unsharded) tensors, on the CPU, on the main process only
    model_state, optim_state = get_state_dict(model, _optimizer(optimizer),
                                              options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not is_main_process():
        return None
    if trained_only:
        keep = trained_names(model)
        model_state = {k: v for k, v in model_state.items() if k in keep}
    folder = Path(folder)
    tmp = folder.with_name(f".tmp-{folder.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model_state.items()}, tmp / "model.safetensors")
    opt_tensors, opt_meta = flatten_optimizer(optim_state)
    save_file(opt_tensors, tmp / "optimizer.safetensors")
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, tmp / "rng.safetensors")
    ema_meta = None
    if ema is not None:  # EMAModel.state_dict(): the shadow tensors plus the counters its decay depends on
        ema_state = ema.state_dict()
        save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema_state.pop("shadow_params"))},
                  tmp / "ema.safetensors")
        ema_meta = ema_state
    np_state = np.random.get_state()
    meta = dict(state, format=CHECKPOINT_FORMAT, weights="trained" if trained_only else "all", optimizer=opt_meta,
                lr_scheduler=lr_scheduler.state_dict(), ema=ema_meta,
                scaler=scaler.state_dict() if scaler is not None else None,
                python_random=[random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
                numpy_random=[np_state[0], np_state[1].tolist(), *np_state[2:]])
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def load_checkpoint(folder, model, optimizer, lr_scheduler, ema=None, scaler=None) -> dict:
    """Restore what :func:`save_checkpoint` wrote; returns the training state (step, counters, ...). Every process
    calls this: each reads the full tensors and keeps its own shard."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    folder = Path(folder)
    if not (folder / "state.json").is_file() or not (folder / "model.safetensors").is_file():
        raise TrainingError(f"resume checkpoint {folder} is incomplete (state.json / model.safetensors missing); "
                            "pass another checkpoint folder or --resume latest")
    meta = read_checkpoint_state(folder)

    def step_of(p: Path) -> int:
        tail = p.name.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    def read(name):  # every file is read before anything is restored: a bad one leaves the run untouched
        try:
            return load_file(folder / name)
        except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: all one message
            earlier = sorted((p for p in folder.parent.glob("checkpoint-*") if 0 <= step_of(p) < step_of(folder)),
                             key=step_of)
            hint = f"resume from the previous one with --resume {earlier[-1]}" if earlier else "start without --resume"
            raise TrainingError(f"checkpoint file {folder / name} is truncated or unreadable ({type(exc).__name__}); "
                                f"{hint}") from exc

    tensors = {name: read(f"{name}.safetensors") for name in ("model", "optimizer", "rng")}
    shadow = read("ema.safetensors") if ema is not None and (folder / "ema.safetensors").is_file() else None
    optim_state = unflatten_optimizer(tensors["optimizer"], meta["optimizer"])
    partial = meta.get("weights") == "trained"  # the frozen base comes from the config, the rest from the file
    missing = sorted(trained_names(model) - set(tensors["model"])) if partial else []
    if missing:
        raise TrainingError(f"checkpoint {folder} holds only trained parameters but lacks {missing[:3]}...; resume "
                            "with the config it was written with (same lora_rank / lora_targets)")
    set_state_dict(model, _optimizer(optimizer), model_state_dict=tensors["model"],
                   optim_state_dict=optim_state, options=StateDictOptions(full_state_dict=True, strict=not partial))
    lr_scheduler.load_state_dict(meta["lr_scheduler"])
    rng = tensors["rng"]
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and "cuda0" in rng:
        torch.cuda.set_rng_state_all([rng[f"cuda{i}"] for i in range(torch.cuda.device_count()) if f"cuda{i}" in rng])
    py = meta["python_random"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npr = meta["numpy_random"]
    np.random.set_state((npr[0], np.array(npr[1], dtype=np.uint32), *npr[2:]))
    if ema is not None:
        if not meta.get("ema") or shadow is None:
            raise TrainingError(f"resume checkpoint {folder} has no EMA state but the config sets use_ema; resume "
                                "with use_ema: false or from a run trained with EMA")
        device = ema.shadow_params[0].device
        ema.load_state_dict(dict(meta["ema"], shadow_params=[shadow[str(i)].to(device) for i in range(len(shadow))]))
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    return meta


def read_checkpoint_state(folder) -> dict:
    """``state.json`` of a checkpoint written by this version (older ones cannot be resumed: their optimizer state is
    keyed by position, and they record no config to check the resumed run against)."""
    path = Path(folder) / "state.json"
    if not path.is_file():
        raise TrainingError(f"resume checkpoint {folder} is incomplete (state.json missing); pass another "
                            "checkpoint folder or --resume latest")
    meta = json.loads(path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"resume checkpoint {folder} was written by an older ootd_lib (checkpoint format "
                            f"{meta.get('format', 1)}, this version reads {CHECKPOINT_FORMAT}); finish that run with "
                            "the version that started it, or start again with --overwrite")
    return meta


def _step_of(path: Path) -> int:
    return int(path.name.split("-")[1])


def latest_checkpoint(output_dir) -> Path | None:
    ckpts = sorted(Path(output_dir, "checkpoints").glob("checkpoint-*"), key=_step_of)
    return ckpts[-1] if ckpts else None


def prune_checkpoints(output_dir, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints (``keep <= 0``: keep all)."""
    ckpts = sorted(Path(output_dir, "checkpoints").glob("checkpoint-*"), key=_step_of)
    for old in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# --- run folders ------------------------------------------------------------------------------------------------------
def config_changes(saved: dict, cfg) -> dict:
    """``{key: (saved value, new value)}`` for every key of ``cfg`` that changes what a resumed run computes."""
    import dataclasses

    free = RESUME_FREE_KEYS | ({"max_train_steps"} if cfg.lr_scheduler in STEP_FREE_SCHEDULES else set())
    new = cfg.to_dict()
    # a key the checkpoint predates (lora_rank, ...) had its default then
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    saved = {**{k: (list(v) if isinstance(v, tuple) else v) for k, v in defaults.items()}, **saved}
    if saved.get("toy_seed") is None:  # the run read whatever wardrobe was there; data.build_dataset checks it now
        free = free | {"toy_seed"}
    return {k: (saved.get(k), v) for k, v in new.items() if k not in free and saved.get(k) != v}


def prepare_run_folder(cfg, resume: str | None = None, overwrite: bool = False,
                       allow_config_change: bool = False) -> Path | None:
    """Check ``cfg.output_dir`` before a run starts; returns the checkpoint to resume from (None: start at step 0).

    * ``resume`` (``"latest"`` or a checkpoint folder): the checkpoint's saved config must match ``cfg`` in every key
      that changes the computation (``ConfigError`` naming them, unless ``allow_config_change``);
    * otherwise a folder holding an earlier run (``RUN_OUTPUTS``) is refused unless ``overwrite``, which deletes those.

    Every process calls this (so all of them raise alike); only the main process deletes and writes
    ``config.yaml``."""
    out = Path(cfg.output_dir)
    folder = None
    if resume:
        folder = latest_checkpoint(out) if resume == "latest" else Path(resume)
        if folder is None and is_main_process():
            print(f"--resume latest: no checkpoint in {out / 'checkpoints'}; starting from step 0")
        elif folder is not None:
            changes = config_changes(read_checkpoint_state(folder)["config"], cfg)
            if changes and not allow_config_change:
                listed = ", ".join(f"{k} {old!r} → {new!r}" for k, (old, new) in changes.items())
                raise ConfigError(f"checkpoint {folder} was written with another config: {listed}; resume with the "
                                  "config it was written with, start a new run in another --output-dir, or pass "
                                  "--allow-config-change to resume anyway")
    earlier = [] if resume else [name for name in RUN_OUTPUTS if (out / name).exists()]
    if earlier and not overwrite:
        raise ConfigError(f"output_dir {out} already holds a training run ({', '.join(earlier)}); pass --resume "
                          "latest to continue it, --overwrite to delete it and start again, or another --output-dir")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # every process has looked before the main one deletes and writes
    if is_main_process():
        for name in earlier:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        out.mkdir(parents=True, exist_ok=True)
        cfg.to_yaml(out / "config.yaml")  # the config this run (re)started with; each checkpoint keeps its own
    return folder
