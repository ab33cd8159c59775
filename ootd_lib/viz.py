"""Figures: notebook helpers (matplotlib, no state) and training reports (the loss log and its plot, sample grids)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

# COCO-18 limbs (index pairs) for drawing skeletons.
COCO18_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
                (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]


def to_numpy_image(x) -> np.ndarray:
    """PIL / (3,H,W) or (1,3,H,W) tensor in [-1,1] / HxW(x3) array → uint8 HxWx3 (or HxW) array for plotting."""
    if isinstance(x, Image.Image):
        return np.asarray(x)
    if isinstance(x, torch.Tensor):
        from .data import tensor_to_uint8

        x = x[0] if x.ndim == 4 else x
        if x.ndim == 3 and x.shape[0] != 1:
            return tensor_to_uint8(x)
        return x.detach().float().cpu().numpy().reshape(x.shape[-2:])  # a (1,H,W) or (H,W) mask: values as they are
    return np.asarray(x)


def show_images(images, titles=None, ncols=None, size=2.2, cmap=None, suptitle=None):
    """Show a row (or grid) of images; returns the figure."""
    import matplotlib.pyplot as plt

    images = list(images)
    n = len(images)
    ncols = ncols or n
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 4 / 3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(images):
        ax = axes.flat[i]
        arr = to_numpy_image(img)
        ax.imshow(arr, cmap=cmap if arr.ndim == 2 else None)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def draw_skeleton(ax, keypoints, color="lime"):
    """Draw COCO-18 keypoints ((18,2), NaN = missing) and limbs onto a matplotlib axis."""
    kp = np.asarray(keypoints, dtype=float)
    for a, b in COCO18_LIMBS:
        if not (np.isnan(kp[a]).any() or np.isnan(kp[b]).any()):
            ax.plot([kp[a, 0], kp[b, 0]], [kp[a, 1], kp[b, 1]], color=color, lw=1.5)
    ok = ~np.isnan(kp).any(axis=1)
    ax.scatter(kp[ok, 0], kp[ok, 1], s=8, c="red", zorder=3)


def overlay_mask(image, mask, color=(255, 0, 0), alpha=0.45) -> np.ndarray:
    """Blend a boolean/0-1 mask over an image in a colour (uint8 HxWx3)."""
    img = to_numpy_image(image).astype(np.float32)
    m = np.asarray(mask, dtype=np.float32)
    m = m.squeeze()
    out = img * (1 - alpha * m[..., None]) + np.array(color, np.float32) * alpha * m[..., None]
    return out.clip(0, 255).astype(np.uint8)


# Colours for the canonical parse labels (ATR 0-17 + 18 neck), chosen to be told apart at a glance.
PARSE_COLOURS = np.array([
    (0, 0, 0), (128, 0, 0), (255, 0, 0), (0, 85, 0), (255, 140, 0), (0, 0, 255), (0, 119, 221), (85, 51, 0),
    (52, 86, 128), (0, 128, 0), (0, 255, 255), (255, 213, 170), (85, 255, 170), (170, 255, 85), (255, 255, 0),
    (170, 0, 255), (128, 128, 128), (255, 0, 170), (210, 130, 130)], np.uint8)


def parse_to_rgb(parse) -> np.ndarray:
    """Canonical parse map (H,W ints 0-18) → uint8 colour image with ``PARSE_COLOURS``."""
    return PARSE_COLOURS[np.asarray(parse, dtype=np.int64).clip(0, len(PARSE_COLOURS) - 1)]


def parse_legend(ax, parse=None, fontsize=7):
    """Add a legend of the canonical labels (only those present in ``parse`` when given) to a matplotlib axis."""
    from matplotlib.patches import Patch

    from .data import CANONICAL_LABELS

    ids = range(len(CANONICAL_LABELS)) if parse is None else np.unique(np.asarray(parse)).tolist()
    handles = [Patch(color=PARSE_COLOURS[i] / 255, label=f"{i} {CANONICAL_LABELS[i]}") for i in ids]
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=fontsize, frameon=False)


def plot_loss_curves(curves: dict, path, ylabel: str = "loss", smooth: int = 20, title: str | None = None):
    """Loss curves (raw, faint, and a moving average) of several runs in one PNG; ``curves``: {label: loss.csv}.

    Drawn on a ``matplotlib.figure.Figure``: no pyplot state, no backend switch (safe inside notebooks)."""
    import csv

    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.subplots()
    for label, csv_path in curves.items():
        with open(csv_path) as f:
            rows = list(csv.DictReader(f))
        steps = np.array([int(r["step"]) for r in rows])
        losses = np.array([float(r["loss"]) for r in rows])
        line, = ax.plot(steps, losses, alpha=0.25)
        if len(losses) >= smooth:
            ax.plot(steps[smooth - 1:], np.convolve(losses, np.ones(smooth) / smooth, "valid"), color=line.get_color(),
                    label=f"{label} (mean of {smooth})")
    ax.set(xlabel="step", ylabel=ylabel, yscale="log", title=title or "training loss")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
# --- training: the loss log, its plot, sample grids --------------------------------------------------------------------
class LossLog:
    """Appends ``step,loss,lr,nonfinite`` rows to ``loss.csv`` (and TensorBoard when asked and installed)."""

    def __init__(self, folder, report_to: str, enabled: bool):
        from pathlib import Path

        self.path = Path(folder) / "loss.csv"
        self.enabled, self.tb = enabled, None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            self.path.write_text("step,loss,lr,nonfinite\n")
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(folder) / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed: logging the loss to loss.csv only (pip install tensorboard)")

    def truncate(self, step: int):
        """On resume: drop rows written after the checkpoint so the curve has no duplicates."""
        if self.enabled and self.path.exists():
            rows = self.path.read_text().splitlines()
            self.path.write_text("\n".join([rows[0]] + [r for r in rows[1:] if int(r.split(",")[0]) <= step]) + "\n")

    def __call__(self, step: int, loss: float, lr: float, nonfinite: int):
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(f"{step},{loss:.6f},{lr:.3e},{nonfinite}\n")
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, step)


def read_loss_csv(path) -> tuple[np.ndarray, np.ndarray]:
    import csv

    with open(path) as f:
        rows = list(csv.DictReader(f))
    return np.array([int(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])


def plot_loss(csv_path, png_path, smooth: int = 20):
    """Loss curve (raw and moving average) as a PNG. A ``Figure`` of its own: pyplot's state (backend, open
    figures) is left as it was."""
    from matplotlib.figure import Figure

    steps, losses = read_loss_csv(csv_path)
    fig = Figure(figsize=(6, 3.2))
    ax = fig.subplots()
    ax.plot(steps, losses, alpha=0.3, label="loss")
    if len(losses) >= smooth:
        ax.plot(steps[smooth - 1:], np.convolve(losses, np.ones(smooth) / smooth, "valid"), label=f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="ε-MSE", yscale="log", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


@torch.no_grad()
def sample_grid(comps: dict, dataset, n: int, steps: int, seed: int, model_type: str,
                latent_mask: str = "nearest") -> Image.Image:
    """Rows of person | garment | mask | result for the first ``n`` items (a quick look at training progress), sampled
    with the run's ``latent_mask``."""
    from .data import tensor_to_uint8
    from .pipeline import OOTDPipeline

    pipe = OOTDPipeline(**{k: comps[k] for k in ("vae", "text_encoder", "tokenizer", "image_encoder",
                                                  "feature_extractor", "unet_garm", "unet_vton", "scheduler")},
                        model_type=model_type, latent_mask=latent_mask)
    pipe.set_progress_bar_config(disable=True)
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    persons = torch.stack([it["person"] for it in items])
    garments = torch.stack([it["garment"] for it in items])
    masks = torch.stack([it["mask"] for it in items])
    pipe.register_to_config(height=persons.shape[-2], width=persons.shape[-1])  # sample at the training resolution
    out = pipe(persons, garments, masks, [it["category"] for it in items], num_inference_steps=steps,
               generator=torch.Generator().manual_seed(seed), output_type="pt").images * 2 - 1
    rows = torch.cat([persons, garments, masks.expand(-1, 3, -1, -1) * 2 - 1, out.to(persons.dtype)], dim=3)
    grid = torch.cat(list(rows), dim=1)
    return Image.fromarray(tensor_to_uint8(grid))
