"""``ootd demo``: the whole try-on on CPU in well under two minutes.

1. small toy test sets in both layouts (generated on first run, reused after): VITON-HD for the hd model, Dress Code
   for the dc model;
2. the shipped toy checkpoint (``assets/toy_checkpoint``, both variants, trained with ``configs/toy.yaml`` and
   ``configs/toy_dc.yaml``);
3. try-on of unpaired pairs — each person gets *another* person's garment: hd rows (upper_body), then dc rows
   (lower_body, dresses);
4. ``outputs/demo.png`` with person | garment | mask | result | ground truth per row, and the toy metrics printed
   (garment identification, colour error against the same model given another garment, masked error beside the VAE
   floor).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

__all__ = ["run_demo", "demo_figure", "demo_rows"]

DEMO_SEED = 1  # the demo's toy test sets; the shipped checkpoint never saw their persons or garments
DEMO_TEST = 16  # test persons per category: garment identification compares with 16 candidate garments


def demo_figure(items, results, path, labels=None, notes=None):
    """Rows of person | garment | mask | result | ground truth (tensors in [-1,1]; results in [0,1]) → PNG.

    ``labels``: one text per row (left of it); ``notes``: one text per row under the result. Drawn on a
    ``matplotlib.figure.Figure`` (no pyplot state, no backend switch: safe inside notebooks)."""
    from matplotlib.figure import Figure

    cols = ["person", "garment", "mask", "result", "ground truth"]
    fig = Figure(figsize=(5 * 1.4, len(items) * 1.8))
    axes = fig.subplots(len(items), 5, squeeze=False)
    for r, (it, res) in enumerate(zip(items, results)):
        row = [(it["person"] + 1) / 2, (it["garment"] + 1) / 2, it["mask"].expand(3, -1, -1), res,
               (it["target"] + 1) / 2 if "target" in it else torch.ones_like(res)]
        for c, img in enumerate(row):
            ax = axes[r, c]
            ax.imshow(img.clamp(0, 1).permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        if labels is not None:
            axes[r, 0].set_ylabel(labels[r], fontsize=7)
        if notes is not None:
            axes[r, 3].set_xlabel(notes[r], fontsize=6)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return Path(path)


def demo_rows(n_pairs: int) -> dict:
    """How many rows each (variant, category) gets: half hd upper_body, a quarter each dc lower_body / dresses."""
    quarter = n_pairs // 4
    return {("hd", "upper_body"): n_pairs - 2 * quarter, ("dc", "lower_body"): quarter, ("dc", "dresses"): quarter}


def run_demo(out="outputs/demo.png", n_pairs: int = 8, steps: int = 20, seed: int = 0, data="data/toy_demo",
             checkpoint=None) -> dict:
    """Generate (or reuse) the toy test sets under ``data``, try on ``n_pairs`` unpaired pairs, write ``out``.

    Returns ``{(variant, category): evaluation.evaluate_toy result}`` for the pairs shown."""
    import json

    from .config import TOY_CHECKPOINT
    from .data import IMAGE_SUFFIXES, DressCodeDataset, MaskedTryOnDataset, VitonHDDataset, check_output_file
    from .errors import InputError
    from .evaluation import evaluate_toy
    from .pipeline import load_toy_pipeline
    from .toydata import toy_dataset

    for flag, value in (("--pairs", n_pairs), ("--steps", steps)):
        if int(value) < 1:
            raise InputError(f"{flag} must be >= 1, got {value}")
    check_output_file(out, IMAGE_SUFFIXES, "--out")
    t0 = time.time()
    data = Path(data)
    pipes, results, items, images, labels, notes = {}, {}, [], [], [], []
    for (variant, category), n in demo_rows(n_pairs).items():
        if n == 0:
            continue
        layout = "vitonhd" if variant == "hd" else "dresscode"
        root = toy_dataset(data / layout, layout=layout, n_train=0, n_test=DEMO_TEST, seed=DEMO_SEED, progress=False)
        if variant not in pipes:
            pipes[variant] = load_toy_pipeline(checkpoint or TOY_CHECKPOINT, variant=variant)
            pipes[variant].set_progress_bar_config(disable=True)
        pipe = pipes[variant]
        size = (pipe.config.height, pipe.config.width)
        base = (VitonHDDataset(root, "test", "unpaired", size=size) if layout == "vitonhd" else
                DressCodeDataset(root, "test", "unpaired", categories=(category,), size=size))
        dataset = MaskedTryOnDataset(base, variant, cache_dir=data / "mask_cache" / layout)
        info = json.loads((root / "toy_info.json").read_text())
        res = evaluate_toy(pipe, dataset, info, steps=steps, seed=seed, limit=n, keep_images=True)
        per = res.pop("per_image")
        images += list(res.pop("images"))
        items += [dataset[i] for i in range(n)]
        labels += [f"{variant} · {category}"] * n
        notes += [f"{'identified' if ok else 'not identified'} · colour err {c:.3f}"
                  for ok, c in zip(per["identified"], per["colour_error"])]
        results[(variant, category)] = res
    demo_figure(items, images, out, labels=labels, notes=notes)
    print(f"{len(items)} unpaired toy try-ons ({steps} UniPC steps, guidance 2.0) in {time.time() - t0:.0f} s → {out}")
    for (variant, category), r in results.items():
        print(f"{variant} {category:>10} ({r['n']} pairs): garment identified {r['identification']:.0%} "
              f"(chance {r['chance']:.0%}); colour error {r['colour_error']:.3f} vs {r['colour_error_other']:.3f} "
              f"given another garment ({r['colour_ratio']:.1f}x); masked error {r['masked_error']:.3f} "
              f"(VAE floor {r['vae_floor']:.3f})")
    return results
