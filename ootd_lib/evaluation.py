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

from pathlib import Path

import torch
import torch.nn.functional as F

from .errors import InputError
from .progress import progress_enabled

__all__ = ["to_unit", "ssim", "psnr", "masked_region_error", "garment_colour_error", "garment_pixel_error",
           "vae_round_trip", "vae_floor",
           "vae_metrics", "identification_candidates", "candidate_tensors", "identify_garments", "pattern_tensors",
           "identify_patterns", "evaluate_toy",
           "DistributionMetrics", "lpips_metric", "evaluate", "format_metrics"]

# Canonical labels of the garment itself (not the arms or legs a mask also repaints), per category.
GARMENT_COLOUR_LABELS = {"upper_body": (4,), "lower_body": (5, 6), "dresses": (7,)}


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


def garment_colour_error(a: torch.Tensor, truth: torch.Tensor, truth_parse: torch.Tensor, categories) -> torch.Tensor:
    """Per-image distance between the mean colours of ``a`` and of ``truth`` over the truth's garment pixels (mean
    absolute difference of the RGB means, images in [0, 1]). Toy only: it needs the truth's parse map (B,H,W).

    Colour is the first thing a try-on must transfer, and a mean over the garment ignores blur and pixel placement,
    so unlike a masked pixel error it does not reward a model that paints the average garment."""
    return torch.stack([(x[:, pix].mean(1) - y[:, pix].mean(1)).abs().mean()
                        for x, y, pix in _garment_pixels(a, truth, truth_parse, categories)])


def garment_pixel_error(a: torch.Tensor, truth: torch.Tensor, truth_parse: torch.Tensor, categories) -> torch.Tensor:
    """Per-image mean absolute RGB error over the truth's garment pixels at full resolution (images in [0, 1]; toy
    only, like :func:`garment_colour_error`). Unlike the colour mean and the 4×-pooled masked error it sees the
    garment's pattern: a blur that keeps the colours but loses stripes, dots or checks scores badly here."""
    return torch.stack([(x[:, pix] - y[:, pix]).abs().mean()
                        for x, y, pix in _garment_pixels(a, truth, truth_parse, categories)])


def _garment_pixels(a, truth, truth_parse, categories):
    """(image, truth, garment-pixel mask) per image, the garment being the truth's ``category`` labels."""
    _check_pair(a, truth)
    cats = [categories] * len(a) if isinstance(categories, str) else list(categories)
    for x, y, parse, cat in zip(a.float(), truth.float(), truth_parse, cats):
        pix = torch.isin(parse, torch.tensor(GARMENT_COLOUR_LABELS[cat]))
        if not pix.any():
            raise InputError(f"the truth's parse map has no {cat} garment pixels; is it the right category?")
        yield x, y, pix


@torch.no_grad()
def vae_round_trip(vae, images: torch.Tensor) -> torch.Tensor:
    """decode(encode(images)) through the pipeline's latent convention (mode, scaled, decoded, clamped), [-1, 1]."""
    from .conditioning import decode_latents, encode_repaint_target

    return torch.cat([decode_latents(vae, encode_repaint_target(vae, images[i:i + 16])).float().cpu()
                      for i in range(0, len(images), 16)])


@torch.no_grad()
def vae_floor(vae, truth01: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image :func:`masked_region_error` of the round-tripped truth (images in [0, 1]): no result decoded by this
    VAE can score better."""
    return masked_region_error(to_unit(vae_round_trip(vae, truth01 * 2 - 1)), truth01, mask)


@torch.no_grad()
def vae_metrics(vae, dataset, limit: int | None = None) -> dict:
    """How faithfully ``vae`` reconstructs held-out toy images: the floor of every try-on result decoded by it.

    ``dataset``: toy unpaired test items (person, garment, target, target_parse, mask, category). Returns
    ``pixel_mae`` (mean |decode(encode(x)) − x| over the persons and garments, [0, 1]: mostly background, so it
    hides a blurred figure), ``colour_error`` (:func:`garment_colour_error` of the round-tripped truth),
    ``garment_pixel_error`` (:func:`garment_pixel_error`: the garment's pattern) and ``masked_floor``
    (:func:`vae_floor`)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(n)]
    stack = lambda k: torch.stack([it[k] for it in items])  # noqa: E731
    images = torch.cat([stack("person"), stack("garment")])
    mae = (to_unit(vae_round_trip(vae, images)) - to_unit(images)).abs().mean()
    truth = stack("target")
    rt, t01 = to_unit(vae_round_trip(vae, truth)), to_unit(truth)
    cats, parse = [it["category"] for it in items], stack("target_parse")
    return dict(n=n, pixel_mae=float(mae), colour_error=float(garment_colour_error(rt, t01, parse, cats).mean()),
                garment_pixel_error=float(garment_pixel_error(rt, t01, parse, cats).mean()),
                # vae_floor(vae, t01, mask), from the round trip already made
                masked_floor=float(masked_region_error(rt, t01, stack("mask")).mean()))


def identification_candidates(n_test: int, garment: int, person: int, category: str, k: int = 16,
                              seed: int = 0) -> list[int]:
    """The right test garment first, then ``k - 1`` other test garments drawn with a fixed seed per (category, person)."""
    import numpy as np

    from .toydata import CATEGORIES

    if n_test < k:
        raise InputError(f"garment identification with K={k} needs at least {k} test garments, the data has {n_test}")
    rng = np.random.default_rng([seed, CATEGORIES.index(category), person])
    others = rng.choice([j for j in range(n_test) if j != garment], size=k - 1, replace=False)
    return [garment] + [int(j) for j in others]


def candidate_tensors(items: list, info: dict, size, k: int = 16, seed: int = 0) -> list:
    """For each toy unpaired test item, its K candidate renders (right garment first) as a (K,3,H,W) [0, 1] tensor at
    ``size``, resized as the dataset readers resize the truth (``info`` = the wardrobe's toy_info.json)."""
    from .toydata import candidate_renders

    return _render_tensors(items, info, size, lambda cat, person, garment: candidate_renders(
        info, cat, person, identification_candidates(info["n_test"], garment, person, cat, k, seed)))


def _render_tensors(items: list, info: dict, size, renders) -> list:
    """For each toy test item, ``renders(category, person index, garment index)`` (H,W,3 uint8 arrays) as one
    (N,3,H,W) [0, 1] tensor at ``size``, resized as the dataset readers resize the truth."""
    from PIL import Image

    from .data import image_to_tensor
    from .toydata import test_index

    out = []
    for it in items:
        cat, person = test_index(info["layout"], Path(it["person_name"]).stem)
        _, garment = test_index(info["layout"], Path(it["garment_name"]).stem)
        out.append(torch.stack([to_unit(image_to_tensor(Image.fromarray(r), size))
                                for r in renders(cat, person, garment)]))
    return out


def _identified(results: torch.Tensor, items: list, renders: list) -> torch.Tensor:
    hits = []
    for res, it, cands in zip(results, items, renders):
        err = masked_region_error(res[None].expand_as(cands), cands, it["mask"][None].expand(len(cands), -1, -1, -1))
        hits.append(int(err.argmin()) == 0)
    return torch.tensor(hits)


def identify_garments(results: torch.Tensor, items: list, info: dict, k: int = 16, seed: int = 0) -> torch.Tensor:
    """For each result (B,3,H,W in [0, 1]) of a toy unpaired test item: is its masked-region error lowest against the
    render of the person wearing the *right* garment, among K renders (right + K − 1 other test garments)? Toy only:
    the generator renders the candidates (``info`` = the wardrobe's toy_info.json). Returns a (B,) bool tensor."""
    return _identified(results, items, candidate_tensors(items, info, tuple(results.shape[-2:]), k, seed))


def pattern_tensors(items: list, info: dict, size) -> list:
    """For each toy unpaired test item, the person wearing its garment drawn in every garment family (its own first,
    :func:`ootd_lib.toydata.family_renders`) as a (F,3,H,W) [0, 1] tensor at ``size``, resized as the truth is."""
    from .toydata import family_renders

    return _render_tensors(items, info, size,
                           lambda cat, person, garment: family_renders(info, cat, person, garment)[1])


def identify_patterns(results: torch.Tensor, items: list, info: dict) -> torch.Tensor:
    """For each result (B,3,H,W in [0, 1]) of a toy unpaired test item: is its masked-region error lowest against the
    right garment in its own family, among the same garment drawn in every family (same colours, scale and phase)?
    Garment identification can be passed on colour alone; this one needs the pattern (chance 1/F: F = 6 families, 5 for
    lower_body). Toy only. Returns a (B,) bool tensor."""
    return _identified(results, items, pattern_tensors(items, info, tuple(results.shape[-2:])))


@torch.no_grad()
def evaluate_toy(pipe, dataset, info: dict, steps: int = 20, scale: float = 2.0, seed: int = 0, k: int = 16,
                 limit: int | None = None, baseline: bool = True, progress: bool = False,
                 keep_images: bool = False, latent_mask: str | None = None) -> dict:
    """The toy try-on metrics on unpaired test items with exact ground truth (see the module docstring).

    Returns ``n``, ``masked_error`` and the ``vae_floor`` beside it (``floor_ratio`` = their ratio),
    ``colour_error``, ``identification`` (top-1 among ``k`` candidate renders) and ``chance`` (1/k),
    ``pattern_identification`` (:func:`identify_patterns`) and its ``pattern_chance``, SSIM and PSNR;
    with ``baseline`` also the same model given another test garment (``*_other``) and ``colour_ratio`` (other / own:
    how much the garment it was given decides the colour). ``keep_images`` adds ``images`` (N,3,H,W in [0, 1]) and
    ``per_image`` values. Sample ``i`` uses seed ``seed + i``. ``latent_mask``: the pipeline's repaint-mask mode (None:
    its own)."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    items = [dataset[i] for i in range(n)]  # loaded once: both runs and every metric read them
    truth = to_unit(torch.stack([it["target"] for it in items]))
    parse, mask = torch.stack([it["target_parse"] for it in items]), torch.stack([it["mask"] for it in items])
    cats = [it["category"] for it in items]
    renders = candidate_tensors(items, info, tuple(truth.shape[-2:]), k, seed)  # the same for both runs
    families = pattern_tensors(items, info, tuple(truth.shape[-2:]))

    def measure(data) -> dict:
        res = evaluate(pipe, data, steps=steps, scale=scale, seed=seed, lpips=False, progress=progress,
                       keep_images=True, distribution=False, latent_mask=latent_mask)
        out = res["images"]
        return dict(images=out, ssim=res["metrics"]["ssim"], psnr=res["metrics"]["psnr"],
                    masked_error=masked_region_error(out, truth, mask),
                    colour_error=garment_colour_error(out, truth, parse, cats),
                    identification=_identified(out, items, renders).float(),
                    pattern_identification=_identified(out, items, families).float())

    own = measure(items)
    floor = vae_floor(pipe.vae, truth, mask)
    result = dict(n=n, steps=steps, scale=scale, seed=seed, k=k, chance=1 / k, ssim=own["ssim"], psnr=own["psnr"])
    result.update({key: float(own[key].mean()) for key in ("masked_error", "colour_error", "identification",
                                                             "pattern_identification")})
    result["pattern_chance"] = sum(1 / len(f) for f in families) / n
    result["vae_floor"] = float(floor.mean())
    result["floor_ratio"] = result["masked_error"] / result["vae_floor"]
    per_image = dict(masked_error=own["masked_error"].tolist(), colour_error=own["colour_error"].tolist(),
                     identified=own["identification"].bool().tolist(), vae_floor=floor.tolist())
    if baseline:  # item i with the garment of item i + 1: the same model given another test garment
        garment = lambda j: items[j]["garment"] if j < n else dataset[j]["garment"]  # noqa: E731
        other = measure([dict(it, garment=garment((i + 1) % len(dataset))) for i, it in enumerate(items)])
        result.update({f"{key}_other": float(other[key].mean())
                       for key in ("masked_error", "colour_error", "identification")})
        result["colour_ratio"] = result["colour_error_other"] / max(result["colour_error"], 1e-8)
    if keep_images:
        result.update(images=own["images"], per_image=per_image)
    return result


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
             keep_images: bool = False, distribution: bool = True, latent_mask: str | None = None) -> dict:
    """Run ``pipe`` on ``dataset`` (items with person, garment, mask, category and optional target) and measure.

    Returns ``{"n", "metrics": {name: mean}, "skipped": {name: reason}, "per_image": {...}}`` (+ ``"images"``, the
    generated (N,3,H,W) [0,1] tensor, when ``keep_images``). Sample ``i`` is generated with seed ``seed + i``, so
    results do not depend on the batch size. ``latent_mask`` is passed to the pipeline (None: its own).
    """
    from tqdm.auto import tqdm

    if limit is not None and int(limit) < 1:
        raise InputError(f"limit={limit} must be >= 1 (None: every pair)")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    if n == 0:
        raise InputError("evaluate: the dataset is empty (check --data, --layout and --pairing)")
    dist = DistributionMetrics(feature_extractor) if distribution else None
    lp, lp_reason = lpips_metric() if lpips else (None, "disabled")
    skipped = dict(dist.skipped) if dist is not None else {}
    per = {"ssim": [], "psnr": [], "masked_error": []}
    lp_sum, images = 0.0, []
    for start in tqdm(range(0, n, batch_size), desc="evaluate", disable=not progress_enabled(progress)):
        items = [dataset[i] for i in range(start, min(start + batch_size, n))]
        person = torch.stack([it["person"] for it in items])
        mask = torch.stack([it["mask"] for it in items])
        gens = [torch.Generator().manual_seed(seed + start + j) for j in range(len(items))]
        out = pipe(person, torch.stack([it["garment"] for it in items]), mask, [it["category"] for it in items],
                   num_inference_steps=steps, image_guidance_scale=scale, generator=gens, output_type="pt",
                   latent_mask=latent_mask).images
        out = out.float().cpu()
        if keep_images:
            images.append(out)
        if dist is not None:
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
    if dist is not None:
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
