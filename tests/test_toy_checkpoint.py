"""The shipped toy checkpoint (assets/toy_checkpoint): its VAE meets the reconstruction targets, both variants load,
and assets/toy_eval.json — measured on it — meets the try-on targets (so a regression of the shipped weights or of
the recorded numbers fails CI). See assets/README.md for how both were made."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from ootd_lib.config import TOY_CHECKPOINT
from ootd_lib.data import DressCodeDataset, VitonHDDataset
from ootd_lib.evaluation import evaluate_toy, vae_metrics
from ootd_lib.pipeline import load_toy_pipeline
from ootd_lib.toydata import generate_toy_dataset
from ootd_lib.training import MaskedTryOnDataset

ASSETS = Path(__file__).resolve().parent.parent / "assets"
OOTD = TOY_CHECKPOINT / "checkpoints" / "ootd"


def unet_digest(variant: str) -> str:
    """sha256 over a variant's UNet weight files: ties toy_eval.json to the weights it was measured on."""
    h = hashlib.sha256()
    for f in sorted((OOTD / f"ootd_{variant}").rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def held_out(tmp_path_factory):
    """Toy test persons the VAE and the UNets never saw (the test split of seed 0; training used the train split),
    written at the wardrobe size and read at the model's 128×96."""
    root = tmp_path_factory.mktemp("held_out")
    dc = generate_toy_dataset(root / "dc", layout="dresscode", n_train=0, n_test=16, seed=0, progress=False)
    hd = generate_toy_dataset(root / "hd", layout="vitonhd", n_train=0, n_test=16, seed=0, progress=False)
    return hd, dc


def test_both_variants_are_small_safetensors_sharing_one_vae_and_encoders():
    files = [p for p in TOY_CHECKPOINT.rglob("*") if p.is_file()]
    assert files and all(p.suffix != ".bin" for p in files)
    for variant in ("hd", "dc"):
        other = "dc" if variant == "hd" else "hd"
        size = sum(p.stat().st_size for p in files if f"ootd_{other}" not in p.parts)
        assert size <= 20 * 2**20, (variant, size)  # one variant with the shared VAE and encoders: ≤ 20 MB
    hd, dc = load_toy_pipeline(variant="hd"), load_toy_pipeline(variant="dc")
    assert (hd.config.model_type, dc.config.model_type) == ("hd", "dc")
    assert (hd.config.height, hd.config.width) == (dc.config.height, dc.config.width) == (128, 96)
    assert type(hd.vae).__name__ == "AutoencoderTiny" and hd.vae.config.scaling_factor != 1.0  # from the latent std
    assert not torch.equal(hd.unet_vton.conv_in.weight, dc.unet_vton.conv_in.weight)


def test_the_shipped_vae_meets_the_reconstruction_targets(held_out):
    """Targets of the toy try-on issue on held-out images at 128×96: pixel MAE ≤ 0.04, garment mean-colour error
    ≤ 0.015, masked-region floor (encode → decode of the exact truth, 4× pooling) ≤ 0.03."""
    vae = load_toy_pipeline().vae
    _, dc = held_out
    for category in ("upper_body", "lower_body", "dresses"):
        data = MaskedTryOnDataset(DressCodeDataset(dc, "test", "unpaired", categories=(category,), size=(128, 96)),
                                  "dc")
        m = vae_metrics(vae, data)
        assert m["pixel_mae"] <= 0.04 and m["colour_error"] <= 0.015 and m["masked_floor"] <= 0.03, (category, m)


def test_recorded_evaluation_meets_the_targets_and_belongs_to_the_shipped_weights():
    ev = json.loads((ASSETS / "toy_eval.json").read_text())
    for variant, categories in (("hd", ["upper_body"]), ("dc", ["upper_body", "lower_body", "dresses"])):
        assert ev[variant]["unet_sha256"] == unet_digest(variant), f"{variant}: re-run the evaluation (assets/README)"
        for cat in categories:
            r, untrained = ev[variant]["trained"][cat], ev[variant]["untrained"][cat]
            assert r["n"] == 64 and r["k"] == 16 and r["steps"] == 20 and r["scale"] == 2.0
            assert r["identification"] >= (0.85 if variant == "hd" else 0.80), (variant, cat, r)
            assert untrained["identification"] < 0.3  # near chance (1/16) without training
            assert r["colour_error_other"] >= 4 * r["colour_error"], (variant, cat, r)
            assert r["masked_error"] <= 2 * r["vae_floor"], (variant, cat, r)


def test_the_shipped_hd_model_identifies_garments_now(held_out):
    """A live spot check of the recorded numbers: 8 held-out hd pairs through the shipped weights."""
    hd, _ = held_out
    pipe = load_toy_pipeline(variant="hd")
    pipe.set_progress_bar_config(disable=True)
    data = MaskedTryOnDataset(VitonHDDataset(hd, "test", "unpaired", size=(128, 96)), "hd")
    r = evaluate_toy(pipe, data, json.loads((hd / "toy_info.json").read_text()), limit=8, baseline=False)
    assert r["identification"] >= 6 / 8 and r["masked_error"] <= 2.5 * r["vae_floor"], r
