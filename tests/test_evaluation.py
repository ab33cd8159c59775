"""Metrics on known inputs: identical images, a known masked error, FID/KID with an injected feature extractor."""

import math

import pytest
import torch

from ootd_lib.errors import InputError
from ootd_lib.evaluation import DistributionMetrics, evaluate, masked_region_error, psnr, ssim, to_unit


def images(n=6, seed=0):
    return torch.rand(n, 3, 32, 24, generator=torch.Generator().manual_seed(seed))


class Features(torch.nn.Module):
    """A fixed feature extractor (uint8 images → 8 pooled colour/gradient features), standing in for Inception."""

    num_features = 8

    def forward(self, x):
        x = x.float() / 255
        dx = (x[..., 1:] - x[..., :-1]).abs().mean((2, 3))
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), dx.mean(1, keepdim=True) * 10,
                          x.amax((2, 3)).mean(1, keepdim=True) + 0.01 * torch.arange(len(x))[:, None]], 1).double()


def test_identical_images_give_perfect_reference_metrics():
    a = images()
    assert torch.allclose(ssim(a, a), torch.ones(len(a)), atol=1e-5)
    assert torch.isinf(psnr(a, a)).all()
    assert torch.equal(masked_region_error(a, a, torch.ones(len(a), 1, 32, 24)), torch.zeros(len(a)))


def test_psnr_and_masked_error_known_values():
    a = torch.zeros(1, 3, 32, 24)
    b = torch.full((1, 3, 32, 24), 0.1)
    assert math.isclose(psnr(a, b).item(), 20.0, rel_tol=1e-4)  # 10·log10(1/0.01)
    mask = torch.zeros(1, 1, 32, 24)
    mask[..., :16, :] = 1  # top half
    b = a.clone()
    b[..., :16, :] = 0.5  # wrong inside the mask
    b[..., 16:, :] = 1.0  # very wrong outside: must not count
    assert math.isclose(masked_region_error(b, a, mask).item(), 0.5, rel_tol=1e-6)
    assert to_unit(torch.tensor([-3.0, 0.0, 1.0])).tolist() == [0.0, 0.5, 1.0]


def test_fid_and_kid_with_an_injected_extractor():
    torch.manual_seed(0)  # KID draws its subsets from the global RNG
    real = images(12, seed=1)
    same = DistributionMetrics(Features(), kid_subset_size=6)
    same.update(real, real)
    near = same.compute()
    # FID of a set against itself is 0; KID is an unbiased estimate over random subsets, so only ≈ 0
    assert abs(near["fid"]) < 1e-6 and abs(near["kid"]) < 1e-2
    other = DistributionMetrics(Features(), kid_subset_size=6)
    other.update((real * 0.3 + 0.6).clamp(0, 1), real)  # washed-out copies: a different distribution
    far = other.compute()
    assert far["fid"] > 0.1 and far["kid"] > 10 * abs(near["kid"]), far


def test_missing_feature_network_is_skipped_with_a_reason(monkeypatch):
    import torchmetrics.image.fid as fid_module

    def unavailable(*args, **kwargs):
        raise ModuleNotFoundError("FrechetInceptionDistance metric requires that `Torch-fidelity` is installed.")

    monkeypatch.setattr(fid_module, "FrechetInceptionDistance", unavailable)
    m = DistributionMetrics()
    assert set(m.skipped) == {"fid", "kid"} and "feature_extractor" in m.skipped["fid"]
    m.update(images(2), images(2))
    assert m.compute() == {}


class PerfectPipe:
    """Returns the ground truth: every reference metric must be perfect."""

    def __init__(self, truths):
        self.truths = truths
        self.calls = 0

    def __call__(self, person, garment, mask, category, num_inference_steps, image_guidance_scale, generator,
                 output_type, latent_mask):
        out = to_unit(self.truths[self.calls:self.calls + len(person)])
        self.calls += len(person)
        return type("Out", (), {"images": out})


def test_evaluate_runs_the_protocol_over_a_dataset():
    truths = images(5, seed=2) * 2 - 1
    data = [dict(person=truths[i] * 0, garment=truths[i], mask=torch.ones(1, 32, 24), category="upper_body",
                 target=truths[i]) for i in range(5)]
    result = evaluate(PerfectPipe(truths), data, batch_size=2, feature_extractor=Features(), lpips=False,
                      progress=False)
    assert result["n"] == 5
    assert math.isclose(result["metrics"]["ssim"], 1.0, abs_tol=1e-5)
    assert result["metrics"]["masked_error"] == 0.0
    assert {"fid", "kid"} <= set(result["metrics"]) and result["skipped"] == {}


# --- toy try-on metrics ---------------------------------------------------------------------------------------------
def test_garment_colour_error_is_the_distance_of_mean_colours_over_the_truth_garment():
    from ootd_lib.evaluation import garment_colour_error

    truth = torch.zeros(2, 3, 16, 12)
    parse = torch.zeros(2, 16, 12, dtype=torch.int64)
    parse[:, 4:12, 3:9] = 4  # the upper garment
    truth[:, 0, 4:12, 3:9] = 0.8  # a red garment on black
    same = truth.clone()
    same[:, :, 4:12, 3:9] = torch.rand(2, 3, 8, 6, generator=torch.Generator().manual_seed(0)) * 0.02 + \
        torch.tensor([0.79, 0.0, 0.0]).view(1, 3, 1, 1)  # same mean colour ± noise: small error
    blue = truth.clone()
    blue[:, :, 4:12, 3:9] = torch.tensor([0.0, 0.0, 0.8]).view(1, 3, 1, 1)
    err_same = garment_colour_error(same, truth, parse, "upper_body")
    assert (err_same < 0.01).all()
    assert torch.allclose(garment_colour_error(blue, truth, parse, "upper_body"), torch.full((2,), 1.6 / 3))
    outside = truth.clone()
    outside[:, :, :4] = 1.0  # a wrong background does not count: only the truth's garment pixels do
    assert torch.equal(garment_colour_error(outside, truth, parse, ["upper_body", "upper_body"]), torch.zeros(2))
    with pytest.raises(InputError, match="no dresses garment pixels"):
        garment_colour_error(truth, truth, parse, "dresses")


def test_garment_pixel_error_sees_a_lost_pattern_that_the_colour_mean_does_not():
    from ootd_lib.evaluation import garment_colour_error, garment_pixel_error

    truth = torch.zeros(1, 3, 16, 12)
    parse = torch.zeros(1, 16, 12, dtype=torch.int64)
    parse[:, 4:12, 3:9] = 4  # the upper garment
    truth[:, 0, 4:12, 3:9] = 0.8
    truth[:, 0, 4:12:2, 3:9] = 0.2  # red stripes on a darker red: mean 0.5
    blurred = truth.clone()
    blurred[:, 0, 4:12, 3:9] = 0.5  # the stripes averaged away: the same mean colour
    assert float(garment_colour_error(blurred, truth, parse, "upper_body")) < 1e-6
    assert torch.allclose(garment_pixel_error(blurred, truth, parse, "upper_body"), torch.tensor([0.3 / 3]))
    outside = truth.clone()
    outside[:, :, :4] = 1.0  # only the truth's garment pixels count
    assert torch.equal(garment_pixel_error(outside, truth, parse, "upper_body"), torch.zeros(1))


@pytest.fixture(scope="module")
def toy16(tmp_path_factory):
    """16 unpaired toy test pairs at 128×96 (enough for K = 16 candidates), with masks."""
    import json

    from ootd_lib.data import VitonHDDataset
    from ootd_lib.toydata import generate_toy_dataset
    from ootd_lib.data import MaskedTryOnDataset

    root = generate_toy_dataset(tmp_path_factory.mktemp("toy16") / "vitonhd", layout="vitonhd", n_train=0,
                                n_test=16, seed=0, size=(128, 96), progress=False)
    dataset = MaskedTryOnDataset(VitonHDDataset(root, "test", "unpaired", size=(128, 96)), "hd")
    return dataset, json.loads((root / "toy_info.json").read_text())


def test_identification_picks_the_right_garment_for_the_truth_and_not_for_another(toy16):
    from ootd_lib.evaluation import identification_candidates, identify_garments

    dataset, info = toy16
    items = [dataset[i] for i in range(6)]
    truth = to_unit(torch.stack([it["target"] for it in items]))
    assert identify_garments(truth, items, info).all()  # the exact ground truth is always identified
    # the person wearing candidate 1 (a wrong garment) instead: never identified
    from ootd_lib.data import image_to_tensor
    from ootd_lib.toydata import candidate_renders, test_index
    from PIL import Image

    wrong = []
    for it in items:
        _, person = test_index("vitonhd", it["person_name"][:-4])
        _, garment = test_index("vitonhd", it["garment_name"][:-4])
        cands = identification_candidates(16, garment, person, "upper_body")
        assert cands[0] == garment and len(set(cands)) == 16 and person >= 0
        render = candidate_renders(info, "upper_body", person, [cands[1]])[0]
        wrong.append(to_unit(image_to_tensor(Image.fromarray(render), (128, 96))))
    assert not identify_garments(torch.stack(wrong), items, info).any()
    with pytest.raises(InputError, match="at least 32 test garments"):
        identification_candidates(16, 0, 0, "upper_body", k=32)


def test_vae_metrics_and_evaluate_toy_on_an_untrained_model(toy16):
    """The mechanics on a random toy model: a random VAE reconstructs nothing (floor high), and an untrained model
    identifies garments at about chance."""
    from ootd_lib.evaluation import evaluate_toy, vae_metrics
    from ootd_lib.models import build_toy_components
    from ootd_lib.pipeline import OOTDPipeline

    dataset, info = toy16
    comps = build_toy_components(0)
    m = vae_metrics(comps["vae"], dataset, limit=4)
    assert m["n"] == 4 and m["pixel_mae"] > 0.1 and m["masked_floor"] > 0.1 and m["colour_error"] > 0
    pipe = OOTDPipeline(**comps, model_type="hd")
    pipe.set_progress_bar_config(disable=True)
    r = evaluate_toy(pipe, dataset, info, steps=2, limit=4, keep_images=True)
    assert r["n"] == 4 and r["chance"] == 1 / 16 and r["images"].shape == (4, 3, 128, 96)
    assert {"masked_error_other", "colour_error_other", "identification_other", "colour_ratio"} <= set(r)
    assert r["vae_floor"] == pytest.approx(sum(r["per_image"]["vae_floor"]) / 4)
    assert m["masked_floor"] == pytest.approx(r["vae_floor"], rel=1e-5)  # one floor, whichever function reports it
    assert r["floor_ratio"] == pytest.approx(r["masked_error"] / r["vae_floor"])
