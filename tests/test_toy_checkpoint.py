"""The shipped toy checkpoint (assets/toy_checkpoint): its VAE meets the reconstruction targets, both variants load,
and assets/toy_eval.json — measured on it — meets the try-on targets (so a regression of the shipped weights or of
the recorded numbers fails CI). See assets/README.md for how both were made."""

import json
from pathlib import Path

import pytest
import torch

from ootd_lib.config import TOY_CHECKPOINT
from ootd_lib.data import DressCodeDataset, MaskedTryOnDataset, VitonHDDataset
from ootd_lib.evaluation import evaluate_toy, vae_metrics
from ootd_lib.models import weights_digest
from ootd_lib.pipeline import OOTDPipeline, load_toy_pipeline
from ootd_lib.toydata import generate_toy_dataset

ASSETS = Path(__file__).resolve().parent.parent / "assets"
OOTD = TOY_CHECKPOINT / "checkpoints" / "ootd"


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Toy test persons the VAE and the UNets never saw (the test split of seed 0; training used the train split),
    written at the wardrobe size and read at the model's 128×96. dc: the 64 per category that assets/README.md's VAE
    table and toy_eval.json measure."""
    root = tmp_path_factory.mktemp("held_out")
    dc = generate_toy_dataset(root / "dc", layout="dresscode", n_train=0, n_test=64, seed=0, progress=False)
    hd = generate_toy_dataset(root / "hd", layout="vitonhd", n_train=0, n_test=16, seed=0, progress=False)
    return hd, dc


def test_both_variants_are_small_safetensors_sharing_one_vae_and_encoders():
    files = [p for p in TOY_CHECKPOINT.rglob("*") if p.is_file()]
    assert files and all(p.suffix != ".bin" for p in files)
    for variant in ("hd", "dc"):
        other = "dc" if variant == "hd" else "hd"
        size = sum(p.stat().st_size for p in files if f"ootd_{other}" not in p.parts)
        assert size <= 20 * 10**6, (variant, size)  # one variant with the shared VAE and encoders: ≤ 20 MB
    hd, dc = load_toy_pipeline(variant="hd"), load_toy_pipeline(variant="dc")
    assert (hd.config.model_type, dc.config.model_type) == ("hd", "dc")
    assert (hd.config.height, hd.config.width) == (dc.config.height, dc.config.width) == (128, 96)
    assert hd.config.latent_mask == dc.config.latent_mask == "any"  # thin toy masks reach the 16×12 latents
    assert type(hd.vae).__name__ == "AutoencoderTiny" and hd.vae.config.scaling_factor != 1.0  # from the latent std
    assert not torch.equal(hd.unet_vton.conv_in.weight, dc.unet_vton.conv_in.weight)
    assert isinstance(OOTDPipeline.from_pretrained(TOY_CHECKPOINT), OOTDPipeline)  # the released layout, detected
    index = json.loads((OOTD / "model_index.json").read_text())
    assert index["unet_vton"] == ["diffusers", "UNet2DConditionModel"] and index["vae"] == ["diffusers", "AutoencoderTiny"]


def vae_results(held_out):
    vae = load_toy_pipeline().vae
    _, dc = held_out
    for category in ("upper_body", "lower_body", "dresses"):
        data = MaskedTryOnDataset(DressCodeDataset(dc, "test", "unpaired", categories=(category,), size=(128, 96)),
                                  "dc")
        yield category, vae_metrics(vae, data)


def test_the_shipped_vae_meets_the_reconstruction_targets(held_out):
    """The issue's targets on the 64 held-out pairs per category at 128×96: pixel MAE ≤ 0.04 (measured 0.019–0.020),
    garment mean-colour error ≤ 0.015 (0.011–0.013) and masked-region floor ≤ 0.03 (0.022, 0.026 and, lower_body,
    0.0299). The garment's full-resolution pixel error (0.060–0.075: the pattern is still blurred) is guarded at its
    measured level; no target is set for it."""
    for category, m in vae_results(held_out):
        assert m["n"] == 64, (category, m)
        assert m["pixel_mae"] <= 0.04 and m["colour_error"] <= 0.015 and m["masked_floor"] <= 0.03, (category, m)
        assert m["garment_pixel_error"] <= 0.085, (category, m)


VARIANTS = (("hd", ["upper_body"]), ("dc", ["upper_body", "lower_body", "dresses"]))


def recorded():
    ev = json.loads((ASSETS / "toy_eval.json").read_text())
    for variant, categories in VARIANTS:
        assert ev[variant]["weights_sha256"] == weights_digest(TOY_CHECKPOINT, variant), \
            f"{variant}: the UNets, the VAE or the latent mask changed; re-run assets/make_toy_eval.py"
        # measured as the checkpoint samples (its model_index.json), and once with the released mask
        assert ev[variant]["latent_masks"] == {"trained": "any", "untrained": "any", "trained_nearest": "nearest"}
        for cat in categories:
            r = ev[variant]["trained"][cat]
            assert r["n"] == 64 and r["k"] == 16 and r["steps"] == 20 and r["scale"] == 2.0
            yield variant, cat, r, ev[variant]["untrained"][cat]


def test_recorded_evaluation_belongs_to_the_shipped_weights_and_shows_garment_transfer():
    """toy_eval.json was measured on the shipped UNets, and no regression below what they reached: every model
    identifies the garment far above chance (1/16) and far above its untrained self, its colour follows the garment
    it is given (untrained: 1.0×), and the untrained model is at chance. The issue's remaining targets are the xfail
    below."""
    floors = {("hd", "upper_body"): 0.85, ("dc", "upper_body"): 0.75, ("dc", "lower_body"): 0.70,
              ("dc", "dresses"): 0.75}  # measured: 86 %, 86 %, 80 % (51 of 64), 81 %
    for variant, cat, r, untrained in recorded():
        assert r["identification"] >= floors[variant, cat], (variant, cat, r)
        assert untrained["identification"] < 0.2 and abs(untrained["colour_ratio"] - 1) < 0.05, (variant, cat)
        assert r["colour_ratio"] >= 3.0, (variant, cat, r)  # measured 3.7× (lower_body), 5.7–6.5×
        # measured 2.5–2.8×: the stage 1e decoder lowered the floor more than the results' error
        assert r["masked_error"] <= 3.2 * r["vae_floor"], (variant, cat, r)


def test_the_targets_met_so_far_stay_met():
    """The issue's try-on targets that the shipped checkpoint meets: hd identifies ≥ 85 % (86 %, 55 of 64 pairs:
    stage 4), dc upper_body and dresses ≥ 80 % (86 %, 81 %: dc stage 8); the colour error is ≥ 4× lower than given
    another garment for hd (6.0×), dc upper_body (5.7×) and dc dresses (6.5×)."""
    met = {(v, c): r for v, c, r, _ in recorded()}
    assert met["hd", "upper_body"]["identification"] >= 0.85
    assert met["dc", "upper_body"]["identification"] >= 0.80
    assert met["dc", "dresses"]["identification"] >= 0.80
    for key in (("hd", "upper_body"), ("dc", "upper_body"), ("dc", "dresses")):
        assert met[key]["colour_error_other"] >= 4 * met[key]["colour_error"], key


def test_latent_mask_any_is_why_the_toy_checkpoint_records_it():
    """assets/toy_eval.json also measures the trained models with the released ``nearest`` latent mask: ``any``
    (recorded in the checkpoint's model_index.json) identifies as many garments within one pair of 64 in every
    category or more (hd 1 more; dc upper_body 5 more, dresses 1 fewer), 12 more on lower_body (61 % → 80 %), and
    lowers the colour error there."""
    ev = json.loads((ASSETS / "toy_eval.json").read_text())
    pairs = lambda r: round(r["identification"] * r["n"])  # noqa: E731  (the file rounds to 4 decimals)
    for variant, categories in VARIANTS:
        for cat in categories:
            own, nearest = ev[variant]["trained"][cat], ev[variant]["trained_nearest"][cat]
            assert pairs(own) >= pairs(nearest) - 1, (variant, cat)
    lower, lower_nearest = ev["dc"]["trained"]["lower_body"], ev["dc"]["trained_nearest"]["lower_body"]
    assert pairs(lower) >= pairs(lower_nearest) + 8  # measured: +12 pairs (dc stage 5: +17)
    assert lower["colour_error"] < lower_nearest["colour_error"]


@pytest.mark.xfail(strict=True, reason="open (toy try-on issue): dc identifies 79.7 % (51 of 64) of lower_body "
                   "garments (target 80 %); the dc lower_body colour ratio is 3.7x (target 4x); masked error is "
                   "2.5-2.8x the VAE floor (target 2x)")
def test_recorded_evaluation_meets_the_issue_targets():
    for variant, cat, r, _ in recorded():
        assert r["identification"] >= (0.85 if variant == "hd" else 0.80), (variant, cat, r)
        assert r["colour_error_other"] >= 4 * r["colour_error"], (variant, cat, r)
        assert r["masked_error"] <= 2 * r["vae_floor"], (variant, cat, r)


def test_the_shipped_hd_model_identifies_garments_now(held_out):
    """A live spot check of the recorded numbers: 8 held-out hd pairs through the shipped weights."""
    hd, _ = held_out
    pipe = load_toy_pipeline(variant="hd")
    pipe.set_progress_bar_config(disable=True)
    data = MaskedTryOnDataset(VitonHDDataset(hd, "test", "unpaired", size=(128, 96)), "hd")
    r = evaluate_toy(pipe, data, json.loads((hd / "toy_info.json").read_text()), limit=8, baseline=False)
    assert r["identification"] >= 5 / 8 and r["masked_error"] <= 3.5 * r["vae_floor"], r
