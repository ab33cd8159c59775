"""Metrics on known inputs: identical images, a known masked error, FID/KID with an injected feature extractor."""

import math

import torch

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
                 output_type):
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
