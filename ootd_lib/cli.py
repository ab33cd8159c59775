"""The ``ootd`` command: demo, toy-data, mask, tryon, train, evaluate.

Each sub-command only parses arguments and calls one library function (for mask, tryon, train, train-vae and
evaluate: the file-level entry points of :mod:`ootd_lib.app`), so everything the CLI does is also a plain Python call
in the notebooks. ``OOTDError``s are printed as one line (exit code 2), not as tracebacks, and
``OOTDWarning``s as one ``warning:`` line. What the user passed is checked before any model loads.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .config import LATENT_MASKS
from .errors import OOTDError, OOTDWarning


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r} must look like 256x192 (H x W)") from None
    return h, w


def _run_toy_data(args):
    from .data import check_output_dir
    from .toydata import generate_toy_dataset

    check_output_dir(args.out, "toy data folder")
    root = generate_toy_dataset(args.out, layout=args.layout, n_train=args.train, n_test=args.test,
                                seed=args.seed, size=args.size, progress=not args.quiet, overwrite=args.force,
                                patterns=args.patterns)
    print(f"toy {args.layout} dataset written to {root}")


def _run_mask(args):
    from .app import mask_person_file

    if args.device:  # only the released estimators use it; check it before they load
        from .pipeline import pick_device

        pick_device(args.device)
    mask_person_file(args.person, category=args.category, model_type=args.model_type, weights=args.weights,
                     out=args.out, device=args.device)


def _run_tryon(args):
    from .app import tryon_files

    tryon_files(person=args.person, garment=args.garment, category=args.category, mask=args.mask,
                model=args.model, official=args.official, variant=args.variant, steps=args.steps,
                scale=args.scale, seed=args.seed, samples=args.samples, out=args.out, device=args.device,
                weights=args.weights, paste_back=args.paste_back, lora=args.lora, lora_scale=args.lora_scale,
                latent_mask=args.latent_mask)


def _run_train(args):
    from .app import train_from_cli

    train_from_cli(config=args.config, output_dir=args.output_dir, max_steps=args.max_steps, resume=args.resume,
                   overwrite=args.overwrite, allow_config_change=args.allow_config_change)


def _run_train_vae(args):
    from .app import train_vae_from_cli

    train_vae_from_cli(config=args.config, output_dir=args.output_dir, max_steps=args.max_steps, resume=args.resume)


def _run_evaluate(args):
    from .app import evaluate_from_cli

    evaluate_from_cli(model=args.model, data=args.data, layout=args.layout, pairing=args.pairing, out=args.out,
                      steps=args.steps, scale=args.scale, seed=args.seed, limit=args.limit, device=args.device,
                      variant=args.variant, untrained=args.untrained, lora=args.lora, lora_scale=args.lora_scale,
                      latent_mask=args.latent_mask)


def _run_demo(args):
    from .demo import run_demo

    run_demo(out=args.out, n_pairs=args.pairs, steps=args.steps, seed=args.seed, data=args.data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ootd", description="OOTDiffusion course toolkit (toy profile on CPU, "
                                "released weights on GPU).")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("demo", help="toy try-on demo end to end: writes outputs/demo.png and prints metrics")
    s.add_argument("--out", type=Path, default=Path("outputs/demo.png"))
    s.add_argument("--pairs", type=int, default=8, help="number of unpaired toy test pairs in the grid")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--data", type=Path, default=Path("data/toy_demo"), help="toy test set (generated if absent)")
    s.set_defaults(func=_run_demo)

    s = sub.add_parser("toy-data", help="generate the procedural toy wardrobe in the VITON-HD or Dress Code layout")
    s.add_argument("out", type=Path)
    s.add_argument("--layout", choices=["vitonhd", "dresscode"], default="vitonhd")
    s.add_argument("--train", type=int, default=64)
    s.add_argument("--test", type=int, default=16)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--size", type=_size, default=(256, 192), help="H x W of the written images (default 256x192)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--force", action="store_true", help="write into a non-empty folder that holds no toy data")
    s.add_argument("--patterns", nargs="+", metavar="FAMILY", default=None,
                   help="garment families of the samples' garments, e.g. plaid (default: solid stripes dots checker "
                   "logo)")
    s.set_defaults(func=_run_toy_data)

    s = sub.add_parser("mask", help="agnostic mask for a person image (toy: dataset parse + keypoints; "
                       "real photos: released human parser + OpenPose)")
    s.add_argument("person", type=Path)
    s.add_argument("--category", choices=["upper_body", "lower_body", "dresses"], default="upper_body")
    s.add_argument("--model-type", choices=["hd", "dc"], default="hd")
    s.add_argument("--weights", default=None, help="folder holding checkpoints/{humanparsing,openpose} or a hub repo id")
    s.add_argument("--out", type=Path, default=Path("mask.png"))
    s.add_argument("--device", default=None)
    s.set_defaults(func=_run_mask)

    s = sub.add_parser("tryon", help="virtual try-on of one garment on one person")
    s.add_argument("--person", type=Path, required=True)
    s.add_argument("--garment", type=Path, required=True)
    s.add_argument("--category", choices=["upper_body", "lower_body", "dresses"], default="upper_body")
    s.add_argument("--mask", type=Path, default=None, help="mask PNG (white = repaint); computed when omitted")
    g = s.add_mutually_exclusive_group()
    g.add_argument("--model", default=None, help="pipeline folder (default: the shipped toy checkpoint)")
    g.add_argument("--official", default=None, help="released checkpoints folder or hub repo id (levihsu/OOTDiffusion)")
    s.add_argument("--variant", choices=["hd", "dc"], default=None,
                   help="hd | dc (default: the model folder's model_type; hd for the released weights)")
    s.add_argument("--weights", default=None, help="parser/OpenPose weights folder for the mask (official only)")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--scale", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--samples", type=int, default=1)
    s.add_argument("--device", default=None, help="cpu | cuda | mps (default: best available)")
    s.add_argument("--lora", type=Path, default=None,
                   help="LoRA adapter folder (a training run's lora/) to load into the model; it must be its base")
    s.add_argument("--lora-scale", type=float, default=1.0, help="scale of the adapter's updates (0 = the base model)")
    s.add_argument("--paste-back", action="store_true",
                   help="blend the result into the original photo outside the mask (feathered); off = as released")
    s.add_argument("--latent-mask", choices=LATENT_MASKS, default=None,
                   help="how the mask reaches the latents for repaint: nearest (as released) or any (a latent cell is "
                        "repainted when any of its pixels is masked: for masks thinner than 8 pixels); default: what "
                        "the model folder says (the toy checkpoint: any), else nearest")
    s.add_argument("--out", type=Path, default=Path("result.png"))
    s.set_defaults(func=_run_tryon)

    s = sub.add_parser("train", help="fine-tune both UNets with accelerate (see configs/)")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--output-dir", type=Path, default=None)
    s.add_argument("--max-steps", type=int, default=None)
    s.add_argument("--resume", default=None, help="'latest' or a checkpoint folder")
    s.add_argument("--overwrite", action="store_true", help="delete an earlier run in the output folder first")
    s.add_argument("--allow-config-change", action="store_true",
                   help="resume although the config differs from the one the checkpoint was written with")
    s.set_defaults(func=_run_train)

    s = sub.add_parser("train-vae", help="toy recipe, stage 1: pre-train the toy VAE (writes <output_dir>/vae)")
    s.add_argument("--config", type=Path, required=True)
    s.add_argument("--output-dir", type=Path, default=None)
    s.add_argument("--max-steps", type=int, default=None, help="overrides vae_pretrain_steps")
    s.add_argument("--resume", default=None, help="'latest' or a vae_checkpoints/step-N folder")
    s.set_defaults(func=_run_train_vae)

    s = sub.add_parser("evaluate", help="SSIM / PSNR / LPIPS / FID / KID (+ toy masked-region error)")
    s.add_argument("--model", default=None, help="pipeline folder (default: the shipped toy checkpoint)")
    s.add_argument("--data", type=Path, required=True)
    s.add_argument("--layout", choices=["vitonhd", "dresscode"], default="vitonhd")
    s.add_argument("--pairing", choices=["paired", "unpaired"], default="unpaired")
    s.add_argument("--steps", type=int, default=20)
    s.add_argument("--scale", type=float, default=2.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--variant", choices=["hd", "dc"], default=None,
                   help="UNets of a released-layout folder (default: dc for --layout dresscode, else hd)")
    s.add_argument("--limit", type=int, default=None, help="evaluate only the first N pairs (per category)")
    s.add_argument("--untrained", action="store_true",
                   help="the same model with freshly initialised UNets (the untrained reference)")
    s.add_argument("--lora", type=Path, default=None, help="LoRA adapter folder to load into the model (its base)")
    s.add_argument("--lora-scale", type=float, default=1.0, help="scale of the adapter's updates (0 = the base model)")
    s.add_argument("--latent-mask", choices=LATENT_MASKS, default=None,
                   help="repaint-mask mode, as for `ootd tryon` (default: the model's)")
    s.add_argument("--device", default=None)
    s.add_argument("--out", type=Path, default=Path("results.json"))
    s.set_defaults(func=_run_evaluate)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        default_show = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, OOTDWarning):  # tqdm.write: on its own line even while a progress bar runs
                from tqdm.auto import tqdm

                tqdm.write(f"ootd {args.command}: warning: {message}", file=sys.stderr)
            else:
                default_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        try:
            args.func(args)
        except OOTDError as exc:
            print(f"ootd {args.command}: error: {' '.join(str(exc).split())}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
