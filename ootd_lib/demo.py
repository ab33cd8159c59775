"""``ootd demo``: the whole try-on on CPU in well under two minutes.

1. a small toy test set (generated on first run, reused after),
2. the shipped toy checkpoint (``assets/toy_checkpoint``, trained with ``ootd train --config configs/toy.yaml``),
3. try-on of unpaired pairs — each person gets *another* person's garment,
4. ``outputs/demo.png`` with person | garment | mask | result | ground truth per row, and the metrics printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

__all__ = ["run_demo", "demo_figure"]

DEMO_SEED = 1  # the demo's toy test set; the shipped checkpoint never saw its persons or garments


def demo_figure(items, results, path, metrics=None):
    """Rows of person | garment | mask | result | ground truth (tensors in [-1,1]; results in [0,1]) → PNG.

    A ``Figure`` of its own: pyplot's state (backend, open notebook figures) is left as it was."""
    from matplotlib.figure import Figure

    cols = ["person", "garment", "mask", "result", "ground truth"]
    fig = Figure(figsize=(5 * 1.4, len(items) * 1.75))
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
        if metrics is not None:
            axes[r, 3].set_xlabel(f"err {metrics['masked_error'][r]:.3f}", fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return Path(path)


def run_demo(out="outputs/demo.png", n_pairs: int = 8, steps: int = 20, seed: int = 0, data="data/toy_demo",
             checkpoint=None) -> dict:
    """Generate (or reuse) the toy test set under ``data``, try on ``n_pairs`` unpaired pairs, write ``out``.

    Returns the :func:`ootd_lib.evaluation.evaluate` result (metrics over the pairs shown)."""
    from .config import TOY_CHECKPOINT
    from .data import MaskedTryOnDataset, VitonHDDataset
    from .evaluation import evaluate, format_metrics
    from .pipeline import load_toy_pipeline
    from .toydata import generate_toy_dataset

    t0 = time.time()
    data = Path(data)
    if not (data / "test_pairs.txt").is_file():
        print(f"generating a toy test set in {data} ...")
        generate_toy_dataset(data, layout="vitonhd", n_train=0, n_test=max(n_pairs, 8), seed=DEMO_SEED,
                             progress=False)
    pipe = load_toy_pipeline(checkpoint or TOY_CHECKPOINT)
    pipe.set_progress_bar_config(disable=True)
    size = (pipe.config.height, pipe.config.width)
    dataset = MaskedTryOnDataset(VitonHDDataset(data, "test", "unpaired", size=size), pipe.config.model_type,
                                 cache_dir=data / "mask_cache")
    n = min(n_pairs, len(dataset))
    result = evaluate(pipe, dataset, steps=steps, seed=seed, limit=n, lpips=False, progress=False,
                      keep_images=True)
    items = [dataset[i] for i in range(n)]
    demo_figure(items, result.pop("images"), out, result["per_image"])
    print(f"{n} unpaired toy try-ons ({steps} UniPC steps, guidance 2.0) in {time.time() - t0:.0f} s → {out}")
    print(format_metrics(result))
    return result
