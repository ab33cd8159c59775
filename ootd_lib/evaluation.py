"""Evaluating try-on results: SSIM, PSNR, LPIPS, FID, KID (torchmetrics) and the toy masked-region error.

Protocols (as in the paper): **paired** — each person wears their own garment, the person photo is the ground truth,
so reference metrics (SSIM, PSNR, LPIPS) apply; **unpaired** — a different garment, no ground truth on real data,
so only distribution metrics (FID, KID: generated images vs real person images) apply. The toy world also has the
exact unpaired ground truth (``tryon-unpaired/``), so there everything is measured, plus

    masked-region error = mean |generated − truth| (RGB in [0, 1]) inside the mask, after 4× average pooling.

The pooling keeps colour and coarse pattern (checks, wide stripes) and forgives pixel-exact placement of fine detail;
it is what "did the garment's colour and pattern land in the masked region" means in numbers.

FID / KID / LPIPS need pretrained feature networks (Inception-v3 through torch-fidelity, AlexNet/VGG through
torchvision). Where those cannot be loaded (offline, package missing) the metric is *skipped* and the reason is
reported — or pass your own ``feature_extractor`` (any module mapping uint8 (B,3,H,W) images to (B,D) features).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = ["to_unit", "ssim", "psnr", "masked_region_error", "DistributionMetrics", "lpips_metric", "evaluate",
           "evaluate_from_cli", "format_metrics"]


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1] (clamped), float32."""
    return ((images.float() + 1) / 2).clamp(0, 1)


def _check_pair(a: torch.Tensor, b: torch.Tensor):
    if a.shape != b.shape or a.ndim != 4 or a.shape[1] != 3:
        raise InputError(f"metrics need two (B,3,H,W) image batches of the same shape, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of images in [0, 1] (Gaussian window 11, σ 1.5, as torchmetrics and the try-on papers use)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    _check_pair(a, b)
    return structural_similarity_index_measure(a.float(), b.float(), data_range=1.0, reduction="none")


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) of images in [0, 1]; identical images give +inf."""
    _check_pair(a, b)
    mse = (a.float() - b.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse)


def masked_region_error(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """Per-image mean absolute RGB error inside ``mask`` (B,1,H,W) after ``pool``× average pooling; images in [0, 1].

    Pooled cells are weighted by the fraction of their pixels inside the mask, so the mask border counts partially."""
    _check_pair(a, b)
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[-2:] != a.shape[-2:]:
        raise InputError(f"mask must be (B,1,H,W) of the images' size {tuple(a.shape[-2:])}, got {tuple(mask.shape)}")
    pa, pb, pm = (F.avg_pool2d(x.float(), pool) for x in (a, b, mask))
    err = (pa - pb).abs().mean(1, keepdim=True)
    return (err * pm).flatten(1).sum(1) / pm.flatten(1).sum(1).clamp_min(1e-8)


class DistributionMetrics:
    """FID and KID between generated and real images, with torchmetrics.

    ``feature_extractor``: ``None`` uses torchmetrics' Inception-v3 (torch-fidelity, weights downloaded once);
    a module mapping uint8 (B,3,H,W) to (B,D) is used as is (offline, tests, custom features). If neither works,
    :attr:`skipped` says why and :meth:`compute` returns no FID/KID.
    """

    def __init__(self, feature_extractor=None, kid_subset_size: int = 50):
        self.skipped: dict[str, str] = {}
        self.fid = self.kid = None
        self.kid_subset_size = kid_subset_size
        try:
            from torchmetrics.image.fid import FrechetInceptionDistance
            from torchmetrics.image.kid import KernelInceptionDistance

            feature = feature_extractor if feature_extractor is not None else 2048
            self.fid = FrechetInceptionDistance(feature=feature, reset_real_features=True)
            # KID's subsets are re-drawn from the global RNG; the caller seeds it for reproducible numbers
            self.kid = KernelInceptionDistance(feature=feature_extractor if feature_extractor is not None else 2048,
                                               subset_size=kid_subset_size)
        except Exception as exc:  # torch-fidelity missing, offline download, ...
            reason = (f"no Inception-v3 feature network ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                      "install torch-fidelity and run online once, or pass feature_extractor=")
            self.skipped = {"fid": reason, "kid": reason}
            self.fid = self.kid = None
        self.n = 0

    @staticmethod
    def _uint8(images01: torch.Tensor) -> torch.Tensor:
        return (images01.clamp(0, 1) * 255).round().to(torch.uint8)

    def update(self, generated01: torch.Tensor, real01: torch.Tensor):
        if self.fid is None:
            return
        g, r = self._uint8(generated01), self._uint8(real01)
        for m in (self.fid, self.kid):
            m.update(r, real=True)
            m.update(g, real=False)
        self.n += len(g)

    def compute(self) -> dict:
        out = {}
        if self.fid is None:
            return out
        out["fid"] = float(self.fid.compute())
        if self.n > 1:
            self.kid.subset_size = min(self.kid_subset_size, self.n)
            out["kid"] = float(self.kid.compute()[0])
        else:
            self.skipped["kid"] = "KID needs at least 2 images"
        return out


def lpips_metric(net_type: str = "alex"):
    """torchmetrics LPIPS, or ``(None, reason)`` when its backbone (torchvision + pretrained weights) is unavailable."""
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type=net_type, normalize=True, reduction="sum"), None
    except Exception as exc:
        return None, (f"no LPIPS backbone ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); install torchvision "
                      "and run online once")


@torch.no_grad()
def evaluate(pipe, dataset, steps: int = 20, scale: float = 2.0, seed: int = 0, batch_size: int = 8,
             limit: int | None = None, feature_extractor=None, lpips: bool = True, progress: bool = True,
             keep_images: bool = False) -> dict:
    """Run ``pipe`` on ``dataset`` (items with person, garment, mask, category and optional target) and measure.

    Returns ``{"n", "metrics": {name: mean}, "skipped": {name: reason}, "per_image": {...}}`` (+ ``"images"``, the
    generated (N,3,H,W) [0,1] tensor, when ``keep_images``). Sample ``i`` is generated with seed ``seed + i``, so
    results do not depend on the batch size.
    """
    from tqdm.auto import tqdm

    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise InputError("evaluate: the dataset is empty (check --data, --layout and --pairing)")
    dist = DistributionMetrics(feature_extractor)
    lp, lp_reason = lpips_metric() if lpips else (None, "disabled")
    skipped = dict(dist.skipped)
    per = {"ssim": [], "psnr": [], "masked_error": []}
    lp_sum, images = 0.0, []
    for start in tqdm(range(0, n, batch_size), desc="evaluate", disable=not progress):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        person = torch.stack([it["person"] for it in items])
        mask = torch.stack([it["mask"] for it in items])
        gens = [torch.Generator().manual_seed(seed + start + j) for j in range(len(items))]
        out = pipe(person, torch.stack([it["garment"] for it in items]), mask, [it["category"] for it in items],
                   num_inference_steps=steps, image_guidance_scale=scale, generator=gens, output_type="pt").images
        out = out.float().cpu()
        if keep_images:
            images.append(out)
        dist.update(out, to_unit(person))
        if all("target" in it for it in items):
            truth = to_unit(torch.stack([it["target"] for it in items]))
            per["ssim"] += ssim(out, truth).tolist()
            per["psnr"] += psnr(out, truth).tolist()
            per["masked_error"] += masked_region_error(out, truth, mask).tolist()
            if lp is not None:
                lp_sum += float(lp(out, truth))
    metrics = {k: sum(v) / len(v) for k, v in per.items() if v}
    if not per["ssim"]:
        for k in ("ssim", "psnr", "masked_error", "lpips"):
            skipped[k] = "no ground truth for these pairs (real unpaired data): reference metrics do not apply"
    elif lp is not None:
        metrics["lpips"] = lp_sum / n
    elif lpips:
        skipped["lpips"] = lp_reason
    metrics.update(dist.compute())
    skipped.update({k: v for k, v in dist.skipped.items() if k not in metrics})
    result = dict(n=n, metrics=metrics, skipped=skipped, per_image={k: v for k, v in per.items() if v})
    if keep_images:
        result["images"] = torch.cat(images)
    return result


def format_metrics(result: dict) -> str:
    """One line per metric, then one per skipped metric with its reason."""
    lines = [f"{k:>13}: {v:.4f}" for k, v in result["metrics"].items()]
    lines += [f"{k:>13}: skipped — {why}" for k, why in result["skipped"].items()]
    return "\n".join(lines)


def evaluate_from_cli(model=None, data=None, layout="vitonhd", pairing="unpaired", out="results.json", steps=20,
                      scale=2.0, seed=0, limit=None, device=None) -> dict:
    """``ootd evaluate``: the test split of a dataset through a pipeline folder (default: the shipped toy checkpoint)."""
    from .config import TOY_CHECKPOINT
    from .data import DressCodeDataset, MaskedTryOnDataset, VitonHDDataset
    from .errors import DataError
    from .pipeline import OOTDPipeline, pick_device

    if data is None or not Path(data).is_dir():
        raise DataError(f"--data {data} is not a folder; pass a dataset root (make a toy one with `ootd toy-data`)")
    pipe = OOTDPipeline.from_pretrained(model or TOY_CHECKPOINT)
    pipe.to(pick_device(device))
    pipe.set_progress_bar_config(disable=True)
    size = (pipe.config.height, pipe.config.width)
    base = (VitonHDDataset(data, "test", pairing, size=size) if layout == "vitonhd"
            else DressCodeDataset(data, "test", pairing, size=size))
    dataset = MaskedTryOnDataset(base, pipe.config.model_type)
    result = evaluate(pipe, dataset, steps=steps, scale=scale, seed=seed, limit=limit)
    print(format_metrics(result))
    summary = dict(model=str(model or TOY_CHECKPOINT), data=str(data), layout=layout, pairing=pairing, steps=steps,
                   scale=scale, seed=seed, n=result["n"], metrics=result["metrics"], skipped=result["skipped"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(summary, indent=2))
    print(f"results written to {out}")
    return summary
