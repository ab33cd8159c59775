"""Measure the toy LoRA demonstration and write assets/toy_lora_eval.json (read by notebook 06 and its test).

    python assets/make_toy_lora_eval.py        # ~14 min on 1 thread

The shipped hd toy checkpoint learns plaid (a garment family it never saw, ``toy_patterns: [plaid]``) two ways:
the adapter ``assets/toy_lora_plaid`` (1 000 steps: ``ootd train --config configs/toy_lora_plaid.yaml``), the same
recipe for 3 000 steps (``configs/toy_lora_plaid_long.yaml``, runs/toy_lora_plaid_long/lora) and full fine-tuning for
1 000 steps (``configs/toy_full_plaid.yaml``, exported to runs/toy_full_plaid/pipeline). Each model is measured on the 64
unpaired plaid test pairs and on the ordinary hd test pairs (what it may have forgotten), 20 UniPC steps, s = 2,
seed 0, with ``evaluation.evaluate_toy``: garment identification (K = 16 candidates of the same family) and pattern
identification (the right garment drawn in each of the six families). The ceiling beside them: the same two
identifications of the exact ground truth after a VAE round trip (every result is decoded by that VAE).
"""

import json
import sys
from pathlib import Path

import torch

from ootd_lib.config import TOY_CHECKPOINT, Config
from ootd_lib.data import MaskedTryOnDataset, VitonHDDataset
from ootd_lib.evaluation import evaluate_toy, identify_garments, identify_patterns, to_unit, vae_round_trip
from ootd_lib.models import load_unets, safetensors_digest, weights_digest
from ootd_lib.pipeline import load_toy_pipeline
from ootd_lib.toydata import toy_dataset

ROOT = Path(__file__).resolve().parent.parent
ADAPTER = ROOT / "assets" / "toy_lora_plaid"
LONG = ROOT / "runs" / "toy_lora_plaid_long" / "lora"
FULL = ROOT / "runs" / "toy_full_plaid" / "pipeline"
RUNS = {"lora": "toy_lora_plaid", "lora_3000": "toy_lora_plaid_long", "full": "toy_full_plaid"}  # their timing.json
KEYS = ("identification", "pattern_identification", "colour_error", "masked_error", "vae_floor", "chance",
        "pattern_chance")


def folder_size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def measure(pipe, root: Path, limit: int) -> dict:
    info = json.loads((root / "toy_info.json").read_text())
    data = MaskedTryOnDataset(VitonHDDataset(root, "test", "unpaired", size=(pipe.config.height, pipe.config.width)),
                              pipe.config.model_type)
    res = evaluate_toy(pipe, data, info, steps=20, scale=2.0, seed=0, k=16, limit=limit, baseline=False)
    print(f"  {root.name}: " + ", ".join(f"{k} {res[k]:.3f}" for k in KEYS))
    return {k: round(res[k], 4) for k in ("n",) + KEYS}


def ceiling(vae, root: Path, limit: int) -> dict:
    """Both identifications of the round-tripped ground truth: what a perfect UNet could reach through ``vae``."""
    info = json.loads((root / "toy_info.json").read_text())
    data = MaskedTryOnDataset(VitonHDDataset(root, "test", "unpaired", size=(128, 96)), "hd")
    items = [data[i] for i in range(min(limit, len(data)))]
    decoded = to_unit(vae_round_trip(vae, torch.stack([it["target"] for it in items])))
    garment = identify_garments(decoded, items, info, k=16).float().mean()
    pattern = identify_patterns(decoded, items, info).float().mean()
    return {"n": len(items), "identification": round(float(garment), 4),
            "pattern_identification": round(float(pattern), 4)}


def main(limit: int = 64):
    torch.set_num_threads(1)  # one thread: two OpenMP threads slow down 10x whenever anything else runs
    lora_cfg = Config.from_yaml(ROOT / "configs" / "toy_lora_plaid.yaml")
    plaid = toy_dataset(ROOT / lora_cfg.data_root, layout="vitonhd", n_train=lora_cfg.toy_train,
                        n_test=lora_cfg.toy_test, seed=0, patterns=lora_cfg.toy_patterns, progress=False)
    ordinary = toy_dataset(ROOT / "data" / "toy_vitonhd", layout="vitonhd", n_train=1024, n_test=64, seed=0,
                           progress=False)
    unets = TOY_CHECKPOINT / "checkpoints" / "ootd" / "ootd_hd"
    result = {"base_sha256": weights_digest(TOY_CHECKPOINT, "hd"), "adapter_sha256": safetensors_digest(ADAPTER),
              "sizes_bytes": {"unets": folder_size(unets), "adapter": folder_size(ADAPTER)}, "models": {}}
    pipe = load_toy_pipeline(variant="hd")
    pipe.set_progress_bar_config(disable=True)
    result["vae_ceiling"] = {"plaid": ceiling(pipe.vae, plaid, limit), "ordinary": ceiling(pipe.vae, ordinary, limit)}
    print("VAE ceiling", result["vae_ceiling"])
    print("base")
    result["models"]["base"] = {"plaid": measure(pipe, plaid, limit), "ordinary": measure(pipe, ordinary, limit)}
    pipe.load_lora(ADAPTER)
    print("LoRA")
    result["models"]["lora"] = {"plaid": measure(pipe, plaid, limit), "ordinary": measure(pipe, ordinary, limit)}
    pipe.unload_lora()
    if LONG.is_dir():
        pipe.load_lora(LONG)
        print("LoRA, 3 000 steps")
        result["models"]["lora_3000"] = {"plaid": measure(pipe, plaid, limit),
                                         "ordinary": measure(pipe, ordinary, limit)}
        pipe.unload_lora()
    if FULL.is_dir():  # its UNets in the shipped pipeline: the same VAE decoder and latent mask as the others
        pipe.register_modules(**load_unets(FULL, "hd", like=(pipe.unet_garm, pipe.unet_vton)))
        print("full fine-tuning")
        result["models"]["full"] = {"plaid": measure(pipe, plaid, limit), "ordinary": measure(pipe, ordinary, limit)}
    for name, run in RUNS.items():
        timing = ROOT / "runs" / run / "timing.json"
        if timing.is_file():
            result.setdefault("timing", {})[name] = json.loads(timing.read_text())
    out = ROOT / "assets" / "toy_lora_eval.json"
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(out)
    print(f"written {out}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
