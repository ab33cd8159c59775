"""The arithmetic of ``benchmarks/bench_train_memory.py`` (the benchmark itself is not run here): byte counts of
parameters, gradients and optimizer states from a real model's parameters, checked against a real torch AdamW's states,
bitsandbytes' 8-bit state sizes, and the activation fit and its extrapolation."""

import importlib.util
from pathlib import Path

import pytest
import torch

from ootd_lib import training
from ootd_lib.config import Config
from ootd_lib.models import build_toy_components

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_train_memory.py"
spec = importlib.util.spec_from_file_location("bench_train_memory", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def toy_model():
    return training.trainable_model(build_toy_components(0), Config.for_profile("toy"))


def test_state_bytes_of_full_fine_tuning_match_the_model_and_a_real_adamw():
    model = toy_model()
    n_all = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    counts = bench.state_bytes(model, "adamw")
    assert 0 < n_trained < n_all  # the garment UNet's tail is frozen, so it has no gradient and no states
    assert (counts["n_params"], counts["n_trained"]) == (n_all, n_trained)
    assert (counts["parameters"], counts["gradients"]) == (4 * n_all, 4 * n_trained)  # float32
    # the optimizer's states as torch allocates them after a step (exp_avg, exp_avg_sq, step per tensor)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    optimizer.step()
    real = sum(t.numel() * t.element_size() for s in optimizer.state.values() for t in s.values())
    assert counts["optimizer"] == real
    assert bench.state_bytes(model, "adamw8bit")["optimizer"] < real / 3  # 2 of 8 bytes for the large tensors


def test_state_bytes_of_a_partly_frozen_bf16_model_count_each_parameter_in_its_dtype():
    """Under LoRA the frozen base is bf16 (``cast_frozen``) and only the trained float32 parameters have gradients."""
    unet = build_toy_components(0)["unet_garm"]
    for name, p in unet.named_parameters():
        p.requires_grad_(".to_q." in name)
    training.cast_frozen(unet, torch.bfloat16)
    n_q = sum(p.numel() for n, p in unet.named_parameters() if ".to_q." in n)
    n_rest = sum(p.numel() for p in unet.parameters()) - n_q
    counts = bench.state_bytes(unet, "adamw")
    assert counts["parameters"] == 4 * n_q + 2 * n_rest
    assert counts["gradients"] == 4 * n_q
    tensors = sum(1 for n, _ in unet.named_parameters() if ".to_q." in n)
    assert counts["optimizer"] == 8 * n_q + 4 * tensors


def test_8bit_adam_state_sizes():
    # two uint8 states + two float32 absmax per 256-element block; under 4 096 elements two float32 states
    assert bench.optimizer_state_bytes(4096, "adamw8bit") == 2 * 4096 + 2 * 4 * 16
    assert bench.optimizer_state_bytes(4097, "adamw8bit") == 2 * 4097 + 2 * 4 * 17
    assert bench.optimizer_state_bytes(4095, "adamw8bit") == 8 * 4095
    assert bench.optimizer_state_bytes(1000, "adamw") == 8 * 1000 + 4
    with pytest.raises(ValueError, match="adamw8bit"):
        bench.optimizer_state_bytes(10, "sgd")


def test_activation_fit_recovers_a_line_and_extrapolates_by_latent_area_times_batch():
    fixed, per_pixel = 3.0e9, 2.5e5  # what two forwards at 16×12 and 32×24 latents, batch 1, would add
    probes = [[16 * 12, fixed + per_pixel * 16 * 12], [32 * 24, fixed + per_pixel * 32 * 24]]
    fit = bench.fit_activations(probes)
    # double-precision arithmetic on numbers ~1e9: rounding is ~1e-15 relative, far inside 1e-9
    assert fit == pytest.approx((fixed, per_pixel), rel=1e-9)
    assert bench.activation_bytes(fit, (64, 48), 4) == pytest.approx(fixed + per_pixel * 64 * 48 * 4, rel=1e-9)


def test_backward_factor_is_the_ratio_of_the_step_peak_growth_to_the_forward_growth():
    probes = [[192, 1.0e8], [768, 4.0e8]]  # the forward grows 3e8 bytes over 576 pixels
    peaks = [[192, 5.0e9], [768, 5.9e9]]  # the whole step's peak 9e8
    assert bench.backward_factor(probes, peaks) == pytest.approx(3.0, rel=1e-12)
    fit = bench.fit_activations(probes)
    assert bench.activation_bytes(fit, (64, 48), 1, kappa=3.0) == pytest.approx(
        fit[0] + 3.0 * fit[1] * 64 * 48, rel=1e-12)
