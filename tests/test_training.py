"""Training: the step learns, dropout rate, the randomness and batch streams, accumulation, exact resume (mid-epoch,
with EMA, two processes), FSDP2 on two CPU processes, bf16 on CPU, non-finite losses, run-folder and resume checks,
the exported pipeline.

Everything runs the real ``ootd_lib.training.train`` loop on a tiny toy set at 64×48 with the toy components (random
VAE: the mechanics, not the pictures, are under test). The set has 7 training pairs, so epochs are odd: with a
micro-batch of 2 an epoch holds 3 micro-batches, and with batches of 2 a resume at step 4 lands mid-epoch 1.

Comparisons. A resume replays the same operations in the same order on the same machine, so it is bit-identical by
design and compared with ``torch.equal``. Accumulation, data parallelism and FSDP sum the same gradients in another
order (float32: ~1e-7 relative per sum); Adam then divides each element by its own running magnitude, so an element
whose gradient is at rounding level may move by up to ~lr either way: single elements can differ by 2e-4 after three
steps at lr 1e-3 (more than the old 1e-4 bound allowed), while the update as a whole agrees to ~1e-4. Those runs are
compared by the relative difference of their updates (:func:`update_mismatch`) against 1e-2; another batch order or
noise draw gives ~0.6, bf16 rounding ~0.2.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ootd_lib import training
from ootd_lib.conditioning import encode_latents
from ootd_lib.config import Config
from ootd_lib.errors import ConfigError, TrainingError, WeightsError
from ootd_lib.models import TOY_LATENT_CHANNELS, OOTDModel, build_toy_components, make_noise_scheduler
from ootd_lib.toydata import generate_toy_dataset

REPO = Path(__file__).resolve().parent.parent
N_TRAIN = 7


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_toy_dataset(tmp_path_factory.mktemp("train") / "toy", n_train=N_TRAIN, n_test=2, seed=0,
                                size=(128, 96), progress=False)


def tiny_config(data, out, **kw) -> Config:
    base = dict(data_root=str(data), output_dir=str(out), resolution=(64, 48), learning_rate=1e-3,
                max_train_steps=4, train_batch_size=4, cache_latents=True, checkpointing_steps=2,
                checkpoints_total_limit=1, log_every=1, sample_every=0, seed=3, torch_threads=1)
    base.update(kw)
    return Config.for_profile("toy", **base)


def unet_weights(folder: Path, variant: str = "hd") -> dict:
    unets = folder / "checkpoints" / "ootd" / f"ootd_{variant}" / "checkpoint-36000"
    return {f"{name}.{k}": v for name in ("unet_garm", "unet_vton")
            for k, v in load_file(unets / name / "diffusion_pytorch_model.safetensors").items()}


def initial_weights(seed: int) -> dict:
    comps = build_toy_components(seed)
    return {f"{name}.{k}": v for name in ("unet_garm", "unet_vton") for k, v in comps[name].state_dict().items()}


def update_mismatch(a: dict, b: dict, init: dict) -> float:
    """‖(b − init) − (a − init)‖ / ‖a − init‖ over all tensors: how differently two runs moved the weights."""
    diff = sum(float((b[k] - a[k]).double().pow(2).sum()) for k in a)
    moved = sum(float((a[k] - init[k]).double().pow(2).sum()) for k in a)
    assert moved > 0, "the weights did not move"
    return (diff / moved) ** 0.5


def loss_rows(out: Path) -> list[list[str]]:
    return [r.split(",") for r in (out / "logs" / "loss.csv").read_text().split()[1:]]


def fixed_batch(b=4, seed=0, c=TOY_LATENT_CHANNELS):
    g = torch.Generator().manual_seed(seed)
    return dict(target=torch.randn(b, c, 16, 12, generator=g), person=torch.randn(b, c, 16, 12, generator=g),
                garment=torch.randn(b, c, 16, 12, generator=g), prompt=torch.randn(b, 2, 64, generator=g))


def kill_at_call(monkeypatch, n: int):
    """Make the n-th training_step call raise, as a kill -9 between two steps would stop the run."""
    real_step, calls = training.training_step, {"n": 0}

    def step(*args):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args)

    monkeypatch.setattr(training, "training_step", step)
    return real_step


# --- the step ------------------------------------------------------------------------------------------------------
def test_a_few_steps_decrease_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    comps = build_toy_components(0)
    model = OOTDModel(comps["unet_garm"], comps["unet_vton"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    latents, sched = fixed_batch(), make_noise_scheduler()
    rand = training.draw_randomness(0, 0, 4, (TOY_LATENT_CHANNELS, 16, 12), p=0.0)
    losses = []
    for _ in range(8):
        loss = training.training_step(model, sched, latents, rand)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.8 * losses[0], losses


def test_loss_weighting_none_is_plain_eps_mse_and_truncated_snr_weights_high_noise():
    sched = make_noise_scheduler()
    t = torch.arange(0, 1000, 37)
    assert torch.equal(training.loss_weights(sched, t, "none"), torch.ones(len(t)))
    w = training.loss_weights(sched, t, "truncated_snr")
    snr = sched.alphas_cumprod[t] / (1 - sched.alphas_cumprod[t])
    assert torch.allclose(w, torch.maximum(1 / snr, torch.ones(())).float())
    assert (w[t < 300] == 1).all() and w[-1] > 100 and (w.diff() >= 0).all()  # 1 at low noise, 1/SNR at high noise

    class Echo(torch.nn.Module):  # predicts zero noise: the per-sample loss is the noise's mean square
        def forward(self, noisy, t, person, garment, prompt):
            return torch.zeros_like(noisy)

    latents = fixed_batch(b=4)
    rand = training.draw_randomness(2, 0, 4, (TOY_LATENT_CHANNELS, 16, 12), p=0.0)
    plain = training.training_step(Echo(), sched, latents, rand)
    assert torch.allclose(plain, rand["noise"].pow(2).mean())
    weighted = training.training_step(Echo(), sched, latents, rand, "truncated_snr")
    per_sample = rand["noise"].pow(2).flatten(1).mean(1)
    expected = (per_sample * training.loss_weights(sched, rand["timesteps"], "truncated_snr")).mean()
    assert torch.allclose(weighted, expected) and weighted > plain  # the sample t's are not all below SNR 1
    with pytest.raises(ConfigError, match="loss_weighting"):
        Config.for_profile("toy", loss_weighting="snr")


def test_loss_outside_mask_weights_the_cells_repaint_replaces():
    sched = make_noise_scheduler()
    latents = fixed_batch(b=4)
    mask = torch.zeros(4, 1, 16, 12)
    mask[:, :, 4:12, 3:9] = 1  # 48 of 192 cells
    mask[3] = 0  # a sample with an empty mask
    latents["mask"] = mask
    rand = training.draw_randomness(2, 0, 4, (TOY_LATENT_CHANNELS, 16, 12), p=0.0)

    class Off(torch.nn.Module):  # predicts the noise off by `inside` in the mask and by `outside` elsewhere
        def __init__(self, inside, outside):
            super().__init__()
            self.inside, self.outside = inside, outside

        def forward(self, noisy, t, person, garment, prompt):
            return rand["noise"] + self.inside * mask + self.outside * (1 - mask)

    # 0: only the masked cells count, each sample's mean over them; the empty mask adds 0
    assert torch.allclose(training.training_step(Off(0.5, 3.0), sched, latents, rand, "none", 0.0),
                          torch.tensor(0.25 * 3 / 4))
    assert torch.equal(training.training_step(Off(0.5, 3.0), sched, latents, rand, "none", 0.0),
                       training.training_step(Off(0.5, 7.0), sched, latents, rand, "none", 0.0))
    # 1: the paper's loss, bit for bit, with or without a mask in the batch
    no_mask = {k: v for k, v in latents.items() if k != "mask"}
    for weighting in ("none", "truncated_snr"):
        assert torch.equal(training.training_step(Off(0.5, 3.0), sched, latents, rand, weighting, 1.0),
                           training.training_step(Off(0.5, 3.0), sched, no_mask, rand, weighting))
    # in between: a weighted mean per sample, then the per-t weights
    w = training.loss_weights(sched, rand["timesteps"], "truncated_snr")
    cells = mask.flatten(1).sum(1)
    per_sample = (cells * 0.25 + 0.5 * (192 - cells) * 9.0) / (cells + 0.5 * (192 - cells))
    assert torch.allclose(training.training_step(Off(0.5, 3.0), sched, latents, rand, "truncated_snr", 0.5),
                          (per_sample * w).mean())
    with pytest.raises(ConfigError, match="loss_outside_mask"):
        Config.for_profile("toy", loss_outside_mask=1.5)


def test_prompt_dropout_zeroes_the_image_token_of_dropped_samples_only():
    plain = training.draw_randomness(5, 3, 64, (TOY_LATENT_CHANNELS, 16, 12), p=0.1)
    both = training.draw_randomness(5, 3, 64, (TOY_LATENT_CHANNELS, 16, 12), p=0.1, p_prompt=0.5)
    assert "keep_prompt" not in plain  # a run without it keeps its stream and its loss bit for bit
    assert all(torch.equal(plain[k], both[k]) for k in plain)
    dropped = ~both["keep_prompt"]
    assert 10 < int(dropped.sum()) < 54 and not torch.equal(dropped, ~both["keep"])  # drawn on its own
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, noisy, t, person, garment, prompt):
            seen["prompt"] = prompt
            return noisy

    latents = fixed_batch(b=64)
    latents["prompt"] = torch.randn(64, 4, 64)  # dc: [BOS, word, EOS, image]
    training.training_step(Spy(), make_noise_scheduler(), latents, both)
    got = seen["prompt"]
    assert torch.equal(got[:, :-1], latents["prompt"][:, :-1])  # the label words stay
    assert not got[dropped, -1].any() and torch.equal(got[~dropped, -1], latents["prompt"][~dropped, -1])
    with pytest.raises(ConfigError, match="prompt_dropout"):
        Config.for_profile("toy", prompt_dropout=-0.1)


def test_a_masked_loss_run_carries_the_latent_mask_it_is_sampled_with(tiny_data, tmp_path, monkeypatch):
    from ootd_lib.data import build_dataset
    from ootd_lib.masking import mask_to_latents

    seen = []
    real_step = training.training_step

    def spy(model, sched, latents, rand, weighting="none", outside=1.0):
        seen.append((latents.get("mask"), outside))
        return real_step(model, sched, latents, rand, weighting, outside)

    monkeypatch.setattr(training, "training_step", spy)
    for outside in (1.0, 0.0):
        training.train(tiny_config(tiny_data, tmp_path / str(outside), max_train_steps=1, train_batch_size=N_TRAIN,
                                   loss_outside_mask=outside), progress=False)
    assert seen[0] == (None, 1.0)  # the paper's loss: the batches carry no mask
    mask, outside = seen[1]
    assert outside == 0.0
    # one batch of all 7 pairs: the same masks, in the sampler's order, on the 8x6 latent grid, `nearest` (no init)
    pixel = torch.stack([build_dataset(tiny_config(tiny_data, tmp_path), cache_dir=tmp_path / "mc")[i]["mask"]
                         for i in range(N_TRAIN)])
    expected = mask_to_latents(pixel, (8, 6), "nearest")
    assert mask.shape == (N_TRAIN, 1, 8, 6) and 0 < mask.mean() < 1
    assert sorted(mask.flatten(1).sum(1).tolist()) == sorted(expected.flatten(1).sum(1).tolist())


def test_dropout_is_applied_at_the_configured_rate():
    keep = torch.cat([training.draw_randomness(0, s, 1000, (1, 1, 1), p=0.1)["keep"] for s in range(4)])
    assert abs(1 - keep.float().mean().item() - 0.1) < 0.015
    assert not training.draw_randomness(0, 0, 64, (1, 1, 1), p=1.0)["keep"].any()
    assert training.draw_randomness(0, 0, 64, (1, 1, 1), p=0.0)["keep"].all()

    seen = {}

    class Spy(torch.nn.Module):  # records the garment latents the model receives
        def forward(self, noisy, t, person, garment, prompt):
            seen["garment"] = garment
            return noisy

    latents = fixed_batch(b=64)
    rand = training.draw_randomness(1, 0, 64, (TOY_LATENT_CHANNELS, 16, 12), p=0.5)
    training.training_step(Spy(), make_noise_scheduler(), latents, rand)
    zeroed = seen["garment"].flatten(1).abs().sum(1) == 0
    assert torch.equal(zeroed, ~rand["keep"]) and 10 < int(zeroed.sum()) < 54
    assert torch.equal(seen["garment"][~zeroed], latents["garment"][~zeroed])


def test_randomness_is_the_same_however_the_batch_is_split():
    whole = training.draw_randomness(5, 7, 8, (4, 2, 2), p=0.3)
    halves = [training.draw_randomness(5, 7, 8, (4, 2, 2), p=0.3, rank=r, world=2) for r in range(2)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([h[k] for h in halves]))


def test_step_batches_split_one_batch_across_micro_steps_and_processes():
    one = iter(training.StepBatchSampler(N_TRAIN, seed=3, micro_batch=4))
    parts = [iter(training.StepBatchSampler(N_TRAIN, seed=3, micro_batch=2, accumulation=2, rank=r, world=2))
             for r in range(2)]
    for step in range(4):  # one step per epoch: 7 // 4; the 3 samples left over are dropped
        rows = [next(p) for _ in range(2) for p in parts]  # micro-step 0 (rank 0, 1), micro-step 1 (rank 0, 1)
        assert sum(rows, []) == next(one)
        expected = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(3 * 100_003 + step))[:4]
        assert sum(rows, []) == expected.tolist()  # epoch e: the permutation drawn from seed * 100_003 + e
    resumed = iter(training.StepBatchSampler(N_TRAIN, seed=3, micro_batch=2, start=4))  # 3 steps per epoch
    full = iter(training.StepBatchSampler(N_TRAIN, seed=3, micro_batch=2))
    assert [next(resumed) for _ in range(5)] == [next(full) for _ in range(9)][4:]


# --- the loop: streams, accumulation, resume -------------------------------------------------------------------------
def test_category_repeats_lean_the_training_set_towards_a_category(toy_dresscode, tmp_path):
    """``category_repeats: {lower_body: 3}``: each lower_body pair appears three times, the others once, and every
    entry is the pair it names; a key outside ``categories`` or a count below 1 is a ConfigError."""
    from collections import Counter

    kw = dict(layout="dresscode", model_type="dc", categories=("upper_body", "lower_body", "dresses"),
              cache_latents=False, mask_cache=str(tmp_path / "masks"))
    plain_cfg = tiny_config(toy_dresscode, tmp_path / "plain", **kw)
    cfg = tiny_config(toy_dresscode, tmp_path / "weighted", category_repeats={"lower_body": 3}, **kw)
    accelerator = training.make_accelerator(cfg)
    plain = training.training_data(plain_cfg, {}, accelerator, torch.float32)
    weighted = training.training_data(cfg, {}, accelerator, torch.float32)
    per_category = Counter(pair[2] for pair in plain.base.pairs)
    assert len(set(per_category.values())) == 1  # the toy wardrobe: as many pairs in each category
    counts = Counter(plain.base.pairs[i][2] for i in weighted.indices)
    assert counts == {c: n * (3 if c == "lower_body" else 1) for c, n in per_category.items()}
    assert len(weighted) == sum(counts.values())
    for j in (0, len(weighted) // 2, len(weighted) - 1):
        got, want = weighted[j], plain[weighted.indices[j]]
        assert got["category"] == want["category"] and torch.equal(got["person"], want["person"])
    # the cached latents (what the toy recipe trains on) are repeated the same way: entry j holds the encoding of the
    # pair it names (one image encoded alone vs in a batch of 16: float32 rounding, ~1e-6)
    cached = tiny_config(toy_dresscode, tmp_path / "cached", category_repeats={"lower_body": 3},
                         **dict(kw, cache_latents=True))
    comps = training.frozen_components(cached, accelerator)
    latents = training.training_data(cached, comps, accelerator, torch.float32)
    assert latents.indices == weighted.indices
    for j in (0, len(latents) // 2, len(latents) - 1):
        want = encode_latents(comps["vae"], plain[latents.indices[j]]["garment"][None])[0]
        torch.testing.assert_close(latents[j]["garment"], want, rtol=1e-4, atol=1e-5)
    assert tiny_config(toy_dresscode, tmp_path, category_repeats={"lower_body": 1}, **kw).category_repeats is None
    for bad in ({"shoes": 2}, {"lower_body": 0}, {"lower_body": 1.5}):
        with pytest.raises(ConfigError, match="category_repeats"):
            tiny_config(toy_dresscode, tmp_path / "bad", category_repeats=bad, **kw)
    with pytest.raises(ConfigError, match="category_repeats"):  # a category this run does not train on
        tiny_config(toy_dresscode, tmp_path / "bad", category_repeats={"dresses": 2},
                    **dict(kw, categories=("upper_body",)))


def test_train_mask_outline_greys_that_category_with_the_coarser_mask(toy_dresscode, tmp_path):
    """``train_mask_outline: {lower_body: box}``: the training set greys lower_body pairs with
    :func:`~ootd_lib.masking.training_mask`'s box and every other pair with the released mask, from its own cache files
    (a released cache in the same folder is neither read nor overwritten); evaluation data keeps the released mask.
    An unknown outline, or a category the run does not train, is a ConfigError."""
    from ootd_lib.data import build_dataset
    from ootd_lib.masking import GREY, training_mask

    kw = dict(layout="dresscode", model_type="dc", categories=("upper_body", "lower_body", "dresses"),
              cache_latents=False, mask_cache=str(tmp_path / "masks"))
    accelerator = training.make_accelerator(tiny_config(toy_dresscode, tmp_path / "plain", **kw))
    plain = training.training_data(tiny_config(toy_dresscode, tmp_path / "plain", **kw), {}, accelerator,
                                   torch.float32)
    cfg = tiny_config(toy_dresscode, tmp_path / "box", train_mask_outline={"lower_body": "box"}, **kw)
    boxed = training.training_data(cfg, {}, accelerator, torch.float32)
    seen = set()
    for i, pair in enumerate(boxed.base.pairs):
        item, base = boxed[i], boxed.base[i]
        want = training_mask(base["parse"].numpy(), base["keypoints"].numpy(), pair[2], "dc",
                             "box" if pair[2] == "lower_body" else "released")
        assert np.array_equal(item["mask"][0].numpy() > 0, want)
        assert torch.equal(item["masked"][:, torch.from_numpy(want)],
                           torch.full_like(item["masked"][:, torch.from_numpy(want)], GREY / 127.5 - 1))
        same = torch.equal(item["mask"], plain[i]["mask"])
        assert same == (pair[2] != "lower_body"), pair  # the box is larger than every released lower_body mask
        seen.add(pair[2])
    assert seen == {"upper_body", "lower_body", "dresses"}
    test = build_dataset(cfg, split="test", pairing="unpaired", cache_dir=cfg.mask_cache)
    lower = next(i for i, p in enumerate(test.base.pairs) if p[2] == "lower_body")
    base = test.base[lower]
    assert np.array_equal(test[lower]["mask"][0].numpy() > 0,
                          training_mask(base["parse"].numpy(), base["keypoints"].numpy(), "lower_body", "dc"))
    for bad in ({"lower_body": "circle"}, {"shoes": "box"}):
        with pytest.raises(ConfigError, match="train_mask_outline"):
            tiny_config(toy_dresscode, tmp_path / "bad", train_mask_outline=bad, **kw)
    with pytest.raises(ConfigError, match="train_mask_outline"):
        tiny_config(toy_dresscode, tmp_path / "bad", train_mask_outline={"lower_body": "box"},
                    **dict(kw, categories=("upper_body",)))


def test_toy_recipe_stream_is_the_documented_one(tiny_data, tmp_path):
    """What the shipped toy checkpoints rely on (single process, no accumulation, no EMA, cached latents): step s
    trains on batch s mod E of the permutation of epoch s // E and on draw_randomness(seed, s, ...). A plain loop
    written from that description gives the same weights bit for bit (same operations, same order, same machine)."""
    from torch.utils.data import default_collate

    from ootd_lib.conditioning import cache_latents
    from ootd_lib.data import build_dataset

    cfg = tiny_config(tiny_data, tmp_path / "run", train_batch_size=2, max_train_steps=4)  # 3 steps per epoch
    trained = unet_weights(training.train(cfg, progress=False))

    comps = build_toy_components(cfg.seed)
    data = cache_latents(build_dataset(cfg, cache_dir=tmp_path / "masks"), comps, "hd", "cpu")
    model = OOTDModel(comps["unet_garm"], comps["unet_vton"]).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(cfg.adam_beta1, cfg.adam_beta2),
                            weight_decay=cfg.adam_weight_decay, eps=cfg.adam_epsilon)
    sched, b = make_noise_scheduler(), cfg.train_batch_size
    for step in range(cfg.max_train_steps):
        epoch, k = divmod(step, len(data) // b)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(cfg.seed * 100_003 + epoch))
        batch = default_collate([data[i] for i in order.tolist()[k * b:(k + 1) * b]])
        rand = training.draw_randomness(cfg.seed, step, b, tuple(batch["target"].shape[1:]), cfg.outfitting_dropout)
        training.training_step(model, sched, batch, rand).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
    reference = {f"{n}.{k}": v for n in ("unet_garm", "unet_vton") for k, v in getattr(model, n).state_dict().items()}
    assert all(torch.equal(trained[k], reference[k]) for k in reference)


def test_gradient_accumulation_equals_one_batch_of_the_same_global_size(tiny_data, tmp_path):
    """2 micro-batches of 2 = 1 batch of 4, although an epoch holds 3 micro-batches (issue #13, claim 1)."""
    accumulated = tiny_config(tiny_data, tmp_path / "accum", gradient_accumulation_steps=2, max_train_steps=3)
    single = tiny_config(tiny_data, tmp_path / "single", max_train_steps=3)
    a, b = (unet_weights(training.train(cfg, progress=False)) for cfg in (single, accumulated))
    assert update_mismatch(a, b, initial_weights(3)) < 1e-2


@pytest.mark.parametrize("accumulation, ema", [(2, False), (1, True)])
def test_resume_mid_epoch_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch, accumulation, ema):
    """Killed after checkpoint-4 (mid-epoch 1: 3 steps per epoch), resumed: the same weights and EMA bit for bit."""
    kw = dict(train_batch_size=2, gradient_accumulation_steps=accumulation, max_train_steps=6, checkpointing_steps=4,
              use_ema=ema, ema_decay=0.9)
    full = training.train(tiny_config(tiny_data, tmp_path / "full", **kw), progress=False)

    cfg = tiny_config(tiny_data, tmp_path / "resumed", **kw)
    real_step = kill_at_call(monkeypatch, 4 * accumulation + 1)  # the first micro-step of step 5
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, progress=False)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["checkpoint-4"]
    monkeypatch.setattr(training, "training_step", real_step)
    resumed = training.train(cfg, resume="latest", progress=False)

    ckpt = "checkpoints/checkpoint-6/model.safetensors"  # the trained weights (the export holds the EMA ones)
    a, b = load_file(tmp_path / "full" / ckpt), load_file(tmp_path / "resumed" / ckpt)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    exported_a, exported_b = unet_weights(full), unet_weights(resumed)
    assert all(torch.equal(exported_a[k], exported_b[k]) for k in exported_a)
    if ema:  # the export holds the EMA weights: the last checkpoint's shadow, not its trained weights
        names = [n for n, _ in training.trainable_model(build_toy_components(3), cfg).named_parameters()]
        shadow = load_file(tmp_path / "full" / "checkpoints" / "checkpoint-6" / "ema.safetensors")
        assert all(torch.equal(exported_a[n], shadow[str(i)]) for i, n in enumerate(names))
        assert not torch.equal(exported_a["unet_vton.conv_in.weight"], a["unet_vton.conv_in.weight"])
    # only the last checkpoint is kept (checkpoints_total_limit=1); the loss log has each step once
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["checkpoint-6"]
    assert [int(r[0]) for r in loss_rows(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_files_are_safetensors_and_json(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, max_train_steps=2), progress=False)
    ckpt = tmp_path / "checkpoints" / "checkpoint-2"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 2 and state["config"]["learning_rate"] == 1e-3
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    # the garment UNet's unused tail is frozen: no optimizer state for it, and it never changes
    optimizer = load_file(ckpt / "optimizer.safetensors")
    assert "unet_vton.conv_out.weight.exp_avg" in optimizer and "unet_garm.conv_out.weight.exp_avg" not in optimizer


# --- non-finite losses -------------------------------------------------------------------------------------------------
def test_nonfinite_losses_are_skipped_then_stop_the_run(tiny_data, tmp_path, monkeypatch):
    real_step, calls = training.training_step, {"n": 0}

    def nan_at_step_2(*args):
        calls["n"] += 1
        loss = real_step(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(training, "training_step", nan_at_step_2)
    training.train(tiny_config(tiny_data, tmp_path / "one", max_train_steps=3), progress=False)
    assert [int(r[-1]) for r in loss_rows(tmp_path / "one")] == [0, 1, 1]  # counted once, training went on

    monkeypatch.setattr(training, "training_step", lambda *a: real_step(*a) * float("inf"))
    with pytest.raises(TrainingError, match="non-finite losses in a row"):
        training.train(tiny_config(tiny_data, tmp_path / "all", max_train_steps=10, max_nonfinite_in_a_row=3),
                       progress=False)


@pytest.mark.parametrize("accumulation, nan_call, counted", [(2, 1, [1, 1, 1, 1]), (1, 2, [0, 1, 1, 1])])
def test_a_nonfinite_micro_step_skips_its_whole_step_and_the_schedule_still_follows_the_step(
        tiny_data, tmp_path, monkeypatch, accumulation, nan_call, counted):
    """NaN in the first of the two micro-steps of step 1, or in step 2 without accumulation: that step is skipped and
    counted, and the linear schedule's learning rate at step s is still lr × (1 − s / 4) (issue #13, claim 6)."""
    real_step, calls = training.training_step, {"n": 0}

    def nan_once(*args):
        calls["n"] += 1
        loss = real_step(*args)
        return loss * float("nan") if calls["n"] == nan_call else loss

    monkeypatch.setattr(training, "training_step", nan_once)
    cfg = tiny_config(tiny_data, tmp_path, gradient_accumulation_steps=accumulation, lr_scheduler="linear")
    training.train(cfg, progress=False)
    rows = loss_rows(tmp_path)
    assert [int(r[-1]) for r in rows] == counted
    assert [float(r[2]) for r in rows] == pytest.approx([1e-3 * (1 - s / 4) for s in range(1, 5)], rel=1e-3)


# --- mixed precision -----------------------------------------------------------------------------------------------------
def test_bf16_autocast_on_cpu(tiny_data, tmp_path, monkeypatch):
    """mixed_precision=bf16 on CPU: the UNets compute in bf16 under the single autocast accelerate's prepare()
    installs, the frozen encoders run in bf16, the trained and exported weights stay float32, and the losses agree
    with float32 training up to bf16 rounding (issue #13, claim 6)."""
    from ootd_lib import conditioning

    seen = {"linear": set(), "vae": set()}
    real_linear, real_encode = torch.nn.functional.linear, conditioning.encode_latents

    def spy_linear(x, *args, **kwargs):
        out = real_linear(x, *args, **kwargs)
        seen["linear"].add(out.dtype)
        return out

    def spy_encode(vae, images):
        seen["vae"].add(next(vae.parameters()).dtype)
        return real_encode(vae, images)

    monkeypatch.setattr(torch.nn.functional, "linear", spy_linear)
    monkeypatch.setattr(conditioning, "encode_latents", spy_encode)
    cfg = tiny_config(tiny_data, tmp_path / "bf16", mixed_precision="bf16", max_train_steps=2, sample_every=2,
                      sample_pairs=1)
    bf16 = unet_weights(training.train(cfg, progress=False))
    monkeypatch.undo()
    assert seen["vae"] == {torch.bfloat16}  # the frozen VAE (cache_latents encodes with it)
    assert torch.bfloat16 in seen["linear"]  # the UNets' linear layers under autocast
    assert all(v.dtype == torch.float32 for v in bf16.values())
    exported_vae = load_file(tmp_path / "bf16" / "pipeline" / "checkpoints" / "ootd" / "vae" /
                             "diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float32 for v in exported_vae.values())  # exported from its float32 source
    assert (tmp_path / "bf16" / "samples" / "step-2.png").is_file()  # sampling with bf16 encoders, float32 UNets
    assert not torch.equal(bf16["unet_vton.conv_in.weight"], initial_weights(3)["unet_vton.conv_in.weight"])
    training.train(tiny_config(tiny_data, tmp_path / "fp32", max_train_steps=2), progress=False)
    # same weights, batches and noise: only rounding differs. bf16 keeps 8 significant bits (2^-9 ≈ 2e-3 relative per
    # value); the loss averages ~1 500 squared errors, so its own error is far smaller (measured: 4e-5)
    bf16_loss, fp32_loss = ([float(r[1]) for r in loss_rows(tmp_path / name)] for name in ("bf16", "fp32"))
    assert bf16_loss == pytest.approx(fp32_loss, rel=2e-3) and bf16_loss != fp32_loss


# --- run folders, resume checks, the export ------------------------------------------------------------------------
def test_a_finished_run_is_not_overwritten_without_overwrite(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, tmp_path, max_train_steps=2)
    training.train(cfg, progress=False)
    with pytest.raises(ConfigError, match="already holds a training run.*--overwrite"):
        training.train(cfg, progress=False)
    training.train(cfg, progress=False, overwrite=True)
    assert [int(r[0]) for r in loss_rows(tmp_path)] == [1, 2]  # started again: no duplicated rows


def test_resume_with_a_changed_config_is_refused(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, max_train_steps=2), progress=False)
    changed = tiny_config(tiny_data, tmp_path, max_train_steps=3, learning_rate=2e-3, resolution=(32, 24))
    with pytest.raises(ConfigError, match=r"resolution \[64, 48\] → \[32, 24\], learning_rate 0\.001 → 0\.002;"):
        training.train(changed, resume="latest", progress=False)
    assert "learning_rate: 0.001" in (tmp_path / "config.yaml").read_text()  # config.yaml still tells the truth
    # reporting keys and, with a constant schedule, max_train_steps may change
    training.train(tiny_config(tiny_data, tmp_path, max_train_steps=3, checkpointing_steps=3), resume="latest",
                   progress=False)
    assert [int(r[0]) for r in loss_rows(tmp_path)] == [1, 2, 3]


def test_a_dc_model_trains_exports_and_tries_on_from_the_command_line(toy_dresscode, tmp_path):
    """train → export (resolution and model type in model_index.json) → from_pretrained → ``ootd tryon --variant dc``
    (issue #13, claim 5)."""
    from PIL import Image

    from ootd_lib.cli import main as ootd
    from ootd_lib.pipeline import OOTDPipeline

    cfg = tiny_config(toy_dresscode, tmp_path / "dc", layout="dresscode", model_type="dc", max_train_steps=2)
    final = training.train(cfg, progress=False)
    pipe = OOTDPipeline.from_pretrained(final)
    assert (pipe.config.height, pipe.config.width, pipe.config.model_type) == (64, 48, "dc")
    assert pipe.text_encoder.dtype == torch.float32

    images = sorted((toy_dresscode / "upper_body" / "images").glob("*.jpg"))
    person, garment = next(p for p in images if p.stem.endswith("_0")), next(p for p in images if p.stem.endswith("_1"))
    w, h = Image.open(person).size
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (w // 4, h // 4, 3 * w // 4, h // 2))
    mask.save(tmp_path / "mask.png")
    args = ["tryon", "--model", str(final), "--person", str(person), "--garment", str(garment),
            "--mask", str(tmp_path / "mask.png"), "--steps", "2", "--device", "cpu"]
    assert ootd(args + ["--variant", "dc", "--out", str(tmp_path / "dc.png")]) == 0
    assert Image.open(tmp_path / "dc.png").size == (48, 64)  # the training resolution, honoured on load
    assert ootd(args + ["--out", str(tmp_path / "default.png")]) == 0  # no --variant: the folder's model type
    assert ootd(args + ["--variant", "hd", "--out", str(tmp_path / "hd.png")]) == 2  # not in the folder: an error
    assert not (tmp_path / "hd.png").exists()


# --- distributed ----------------------------------------------------------------------------------------------------------
def torchrun(args: list, port: int) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port)] + args
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_two_processes_match_one_and_resume_mid_epoch(tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 2 = 1 per process: the toy data is generated by rank 0 while
    rank 1 waits; a resume from checkpoint-4 (mid-epoch 1) is bit-identical; one process agrees (issue #13, claim 3)."""
    kw = dict(toy_train=N_TRAIN, toy_test=1, train_batch_size=2, max_train_steps=5, checkpointing_steps=4,
              checkpoints_total_limit=2)
    ddp = tiny_config(tmp_path / "data", tmp_path / "ddp", **kw)  # the data folder does not exist yet
    ddp.to_yaml(tmp_path / "ddp.yaml")
    torchrun(["-m", "ootd_lib.training", "--config", str(tmp_path / "ddp.yaml")], port=29517)
    timing = json.loads((tmp_path / "ddp" / "timing.json").read_text())
    assert timing["processes"] == 2 and timing["ranks_identical"] is True
    uninterrupted = unet_weights(tmp_path / "ddp" / "pipeline")

    resume = tmp_path / "ddp" / "checkpoints" / "checkpoint-4"
    torchrun(["-m", "ootd_lib.training", "--config", str(tmp_path / "ddp.yaml"), "--resume", str(resume)],
             port=29518)
    resumed = unet_weights(tmp_path / "ddp" / "pipeline")
    assert all(torch.equal(uninterrupted[k], resumed[k]) for k in uninterrupted)

    single = unet_weights(training.train(tiny_config(tmp_path / "data", tmp_path / "single", **kw), progress=False))
    assert update_mismatch(single, uninterrupted, initial_weights(3)) < 1e-2


def test_fsdp2_on_two_cpu_processes_matches_one_process_and_resumes(tmp_path):
    """The model under torch FSDP2 (``fully_shard``, 2 CPU processes, gloo): the garment pass, the optimizer step,
    and the checkpoint save / load that gather and scatter the shards (issue #13, claim 4). See fsdp_worker.py for
    why this is torch's FSDP2 and not an ``accelerate launch``."""
    torchrun([str(REPO / "tests" / "fsdp_worker.py"), str(tmp_path)], port=29519)
    init = initial_weights(0)
    for name in ("step-2", "step-3"):
        sharded = load_file(tmp_path / "fsdp" / name / "model.safetensors")
        single = load_file(tmp_path / "single" / name / "model.safetensors")
        assert sharded.keys() == single.keys() == init.keys()
        assert update_mismatch(single, sharded, init) < 1e-2
    # step 3 ran in fresh processes from the step-2 checkpoint: its optimizer state was restored, not restarted
    state = load_file(tmp_path / "fsdp" / "step-3" / "optimizer.safetensors")
    assert float(state["unet_vton.conv_in.weight.step"]) == 3


def test_the_fsdp_config_wraps_the_units_training_requires():
    """configs/accelerate/fsdp.yaml, read as accelerate reads it, passes train()'s check; a size-based policy (units
    around whole up blocks, off the garment's gradient path) is refused with the fix."""
    from types import SimpleNamespace

    import yaml
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    def accelerator(**plugin):
        return SimpleNamespace(distributed_type=DistributedType.FSDP,
                               state=SimpleNamespace(fsdp_plugin=FullyShardedDataParallelPlugin(**plugin)))

    shipped = yaml.safe_load((REPO / "configs" / "accelerate" / "fsdp.yaml").read_text())["fsdp_config"]
    training.check_fsdp_units(accelerator(fsdp_version=shipped["fsdp_version"],
                                          auto_wrap_policy=shipped["fsdp_auto_wrap_policy"],
                                          transformer_cls_names_to_wrap=shipped["fsdp_transformer_layer_cls_to_wrap"]))
    with pytest.raises(ConfigError, match="TRANSFORMER_BASED_WRAP.*BasicTransformerBlock,ResnetBlock2D"):
        training.check_fsdp_units(accelerator(fsdp_version=2, auto_wrap_policy="SIZE_BASED_WRAP"))


# --- module boundaries -------------------------------------------------------------------------------------------------
def test_only_the_entry_points_import_training_and_no_module_switches_the_matplotlib_backend():
    """training builds on the stages; only the layer above them (app: the file-level entry points, cli) imports it."""
    import ast

    for path in sorted((REPO / "ootd_lib").glob("*.py")):
        tree = ast.parse(path.read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.module
                     for a in node.names}
        if path.stem not in ("training", "cli", "app"):
            assert "training" not in imported and "ootd_lib.training" not in imported, path.name
        if path.stem == "evaluation":
            assert "training" not in imported
        calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                 and isinstance(node.func, ast.Attribute) and node.func.attr == "use"
                 and isinstance(node.func.value, ast.Name) and node.func.value.id == "matplotlib"]
        assert not calls, f"{path.name} calls matplotlib.use"


def test_loss_plot_leaves_pyplot_alone(tmp_path):
    import matplotlib
    import matplotlib.pyplot as plt

    from ootd_lib.viz import LossLog, plot_loss

    log = LossLog(tmp_path, "csv", True)
    for step in range(1, 30):
        log(step, 1.0 / step, 1e-3, 0)
    backend = matplotlib.get_backend()
    plt.switch_backend("svg")  # a backend other than Agg, with a figure open, as in a notebook
    mine = plt.figure()
    try:
        plot_loss(log.path, tmp_path / "loss.png")
        assert (tmp_path / "loss.png").stat().st_size > 1000
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == [mine.number]
    finally:
        plt.close(mine)
        plt.switch_backend(backend)


# --- the toy VAE stage -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("crop, l1_weight", [(None, 0.0), ((48, 32), 1.0)])
def test_toy_vae_pretraining_reduces_reconstruction_error_and_sets_the_latent_scale(tiny_data, tmp_path, crop,
                                                                                   l1_weight):
    from ootd_lib.data import build_dataset
    from ootd_lib.toy_vae import pretrain_toy_vae

    cfg = tiny_config(tiny_data, tmp_path, vae_pretrain_crop=crop)
    assert Config.from_dict(cfg.to_dict()).vae_pretrain_crop == crop  # null (whole images) survives the YAML form
    dataset = build_dataset(cfg, cache_dir=tmp_path / "masks", generate=False)
    images = torch.stack([dataset.base[i]["person"] for i in range(4)])
    torch.manual_seed(0)
    vae = build_toy_components(0)["vae"]

    def error():
        with torch.no_grad():
            return float((vae.decode(encode_latents(vae, images)).sample - images).abs().mean())

    before = error()
    losses = []
    pretrain_toy_vae(vae, dataset, steps=25, lr=1e-3, batch_size=4, crop=crop, seed=0, l1_weight=l1_weight,
                     progress=False, log=lambda step, loss, lr: losses.append((loss, lr)))
    assert len(losses) == 25 and all(isinstance(v, float) for v, _ in losses)
    lrs = [lr for _, lr in losses]  # the cosine schedule's rate, logged as it was used
    assert lrs[0] == 1e-3 and all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] < 0.01 * 1e-3
    assert error() < 0.7 * before
    with torch.no_grad():
        z = encode_latents(vae, torch.stack([dataset.base[i][k] for i in range(len(dataset))
                                             for k in ("person", "garment")]))
    assert abs(float(z.std()) * vae.config.scaling_factor - 1) < 0.05


def test_decoder_only_vae_training_keeps_the_encoder_and_latent_scale_and_lowers_the_error(tiny_data, tmp_path):
    """The toy recipe's VAE may keep training its decoder after the UNets were trained on its latents: the encoder
    (so every cached latent) and ``scaling_factor`` must not move, while reconstruction improves."""
    from ootd_lib.data import build_dataset
    from ootd_lib.models import load_vae
    from ootd_lib.toy_vae import train_toy_vae

    first = train_toy_vae(tiny_config(tiny_data, tmp_path / "a", vae_pretrain_steps=15, vae_pretrain_batch_size=4,
                                      vae_pretrain_crop=None, vae_pretrain_l1_weight=1.0), progress=False)
    cfg = tiny_config(tiny_data, tmp_path / "b", vae_init=str(first), vae_train_encoder=False,
                      vae_pretrain_steps=30, vae_pretrain_batch_size=4, vae_pretrain_crop=None,
                      vae_pretrain_l1_weight=1.0, seed=5)
    second = train_toy_vae(cfg, progress=False)
    a, b = load_vae(first), load_vae(second)
    dataset = build_dataset(cfg, cache_dir=tmp_path / "masks", generate=False)
    images = torch.stack([dataset.base[i]["person"] for i in range(4)])
    with torch.no_grad():
        za, zb = encode_latents(a, images), encode_latents(b, images)
        err = [float((v.decode(z).sample - images).abs().mean()) for v, z in ((a, za), (b, zb))]
    assert torch.equal(za, zb)  # bit-identical: frozen weights are never written
    assert b.config.scaling_factor == a.config.scaling_factor
    assert err[1] < err[0]
    with pytest.raises(ConfigError, match="vae_init"):
        train_toy_vae(tiny_config(tiny_data, tmp_path / "c", vae_train_encoder=False, vae_pretrain_steps=1))


def test_a_decoder_only_stage_can_train_on_the_persons_alone(tiny_data, tmp_path, monkeypatch):
    """``vae_train_garments: false``: the decoder sees only the person images (the only latents the pipeline ever
    decodes); a stage that also trains the encoder is refused, since the encoder must still encode garments."""
    from ootd_lib import toy_vae
    from ootd_lib.data import build_dataset

    cfg = tiny_config(tiny_data, tmp_path / "a", vae_pretrain_steps=2, vae_pretrain_batch_size=4)
    dataset = build_dataset(cfg, cache_dir=tmp_path / "masks", generate=False)
    persons = torch.stack([dataset.base[i]["person"] for i in range(len(dataset))])
    assert torch.equal(toy_vae._vae_pool(dataset, garments=False), persons)
    assert len(toy_vae._vae_pool(dataset)) == 2 * len(dataset)
    pools = []
    real_pool = toy_vae._vae_pool
    monkeypatch.setattr(toy_vae, "_vae_pool", lambda d, g=True: pools.append(g) or real_pool(d, g))
    first = toy_vae.train_toy_vae(cfg, progress=False)
    toy_vae.train_toy_vae(tiny_config(tiny_data, tmp_path / "b", vae_init=str(first), vae_train_encoder=False,
                                      vae_train_garments=False, vae_pretrain_steps=2, vae_pretrain_batch_size=4),
                          progress=False)
    assert pools == [True, False]
    with pytest.raises(ConfigError, match="vae_train_garments"):
        toy_vae.train_toy_vae(tiny_config(tiny_data, tmp_path / "c", vae_train_garments=False, vae_pretrain_steps=1))


def test_init_unets_starts_a_run_from_trained_unets_keeps_their_latent_mask_and_refuses_misfits(tiny_data, tmp_path):
    from ootd_lib.models import load_unets, toy_unet_config
    from ootd_lib.pipeline import OOTDPipeline
    from ootd_lib.training import build_components

    src = training.train(tiny_config(tiny_data, tmp_path / "first"), progress=False)  # released layout
    # another seed: a toy run from a released-layout folder takes that folder's frozen encoders, not the seed's
    comps = build_components(tiny_config(tiny_data, tmp_path / "second", init_unets=str(src), seed=11))
    trained = unet_weights(src)
    for name in ("unet_garm", "unet_vton"):
        for k, v in comps[name].state_dict().items():
            assert torch.equal(v, trained[f"{name}.{k}"]), k  # loaded from the same file: bit-identical
    shipped = build_toy_components(3)  # tiny_config's seed: the encoders the first run was built with
    for name in ("text_encoder", "image_encoder"):
        for k, v in comps[name].state_dict().items():
            assert torch.equal(v, shipped[name].state_dict()[k]), (name, k)
    # a dc run may start from a folder of hd UNets only (the wide toy dc line does), and then takes those
    dc = build_components(tiny_config(tiny_data, tmp_path / "dc", init_unets=str(src), model_type="dc",
                                      layout="dresscode"))
    assert all(torch.equal(v, trained[f"unet_vton.{k}"]) for k, v in dc["unet_vton"].state_dict().items())
    # a checkpoint-N folder (holding unet_garm/, unet_vton/) works too
    unets = src / "checkpoints" / "ootd" / "ootd_hd" / "checkpoint-36000"
    assert torch.equal(load_unets(unets)["unet_vton"].conv_in.weight, comps["unet_vton"].conv_in.weight)
    from diffusers import UNet2DConditionModel

    other = UNet2DConditionModel(**dict(toy_unet_config(latent_channels=4), block_out_channels=(32, 64, 96)))
    with pytest.raises(WeightsError, match="block_out_channels"):
        load_unets(unets, like=(other, other))
    with pytest.raises(WeightsError, match="holds neither"):
        load_unets(unets / "unet_garm")  # one level too deep: neither unet_garm/ inside nor a released layout
    with pytest.raises(ConfigError, match=r"widths \[32, 64, 64\].*toy_unet_channels: \[32, 64, 64\]"):
        build_components(tiny_config(tiny_data, tmp_path / "third", init_unets=str(src), toy_unet_channels=(48, 96, 96)))
    # the export keeps the latent mask of the folder it started from (the toy checkpoint's any), else nearest
    index = src / "checkpoints" / "ootd" / "model_index.json"
    assert json.loads(index.read_text())["latent_mask"] == "nearest"  # trained from scratch: as released
    index.write_text(json.dumps({**json.loads(index.read_text()), "latent_mask": "any"}))
    cfg = tiny_config(tiny_data, tmp_path / "second", init_unets=str(src), seed=11)
    again = training.export_pipeline(cfg, comps, (comps["unet_garm"], comps["unet_vton"]))
    assert OOTDPipeline.from_pretrained(again).config.latent_mask == "any"


def test_toy_unet_channels_widens_both_unets_and_leaves_the_encoders_of_the_seed():
    """``toy_unet_channels`` sets the toy UNets' widths per level; the frozen encoders are drawn before the UNets, so
    for one seed they are the same at every width (a wider run conditions on what the shipped UNets saw). Widths
    GroupNorm cannot split into 16 groups are a ConfigError."""
    from ootd_lib.training import build_components

    narrow = build_components(Config.for_profile("toy", seed=5))
    wide = build_components(Config.for_profile("toy", seed=5, toy_unet_channels=(48, 96, 96)))
    for name in ("unet_garm", "unet_vton"):
        assert tuple(narrow[name].config.block_out_channels) == (32, 64, 64)
        assert tuple(wide[name].config.block_out_channels) == (48, 96, 96)
        assert wide[name].conv_in.weight.shape[0] == 48
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(wide["unet_vton"]) > 2 * count(narrow["unet_vton"])
    for name in ("text_encoder", "image_encoder", "vae"):
        for (k, a), b in zip(narrow[name].state_dict().items(), wide[name].state_dict().values()):
            assert torch.equal(a, b), (name, k)
    assert Config.from_dict(Config.for_profile("toy", toy_unet_channels=(48, 96, 96)).to_dict()).toy_unet_channels \
        == (48, 96, 96)
    for bad in [(32, 64), (32, 64, 72), (0, 64, 64)]:
        with pytest.raises(ConfigError, match="toy_unet_channels"):
            Config.for_profile("toy", toy_unet_channels=bad)


# --- memory-lean full fine-tuning switches (issue 16, item 3) ----------------------------------------------------------
def _grads_of_one_step(cfg: Config, seed: int = 0):
    """Gradients of every trained parameter after one training step of ``trainable_model`` on a fixed batch, and how
    many times the transformer blocks of both UNets ran forward."""
    from diffusers.models.attention import BasicTransformerBlock

    model = training.trainable_model(build_toy_components(seed), cfg)
    runs = {"unet_garm": 0, "unet_vton": 0}
    for name, m in model.named_modules():
        if isinstance(m, BasicTransformerBlock):
            unet = name.split(".")[0]
            m.register_forward_pre_hook(lambda *_, unet=unet: runs.__setitem__(unet, runs[unet] + 1))
    latents = fixed_batch(2)
    rand = training.draw_randomness(0, 0, 2, tuple(latents["target"].shape[1:]), 0.0)
    training.training_step(model, make_noise_scheduler(), latents, rand).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad}, runs


def test_gradient_checkpointing_switch_recomputes_both_unets_and_keeps_the_gradients():
    """``gradient_checkpointing: true`` checkpoints both UNets (their transformer blocks run again in backward, the
    vton ones with the garment states the fusion installed) and gives the gradients of the plain step."""
    plain, plain_runs = _grads_of_one_step(Config.for_profile("toy"))
    ckpt, ckpt_runs = _grads_of_one_step(Config.for_profile("toy", gradient_checkpointing=True))
    assert plain_runs == {"unet_garm": 7, "unet_vton": 7}  # the toy UNets' 7 fused blocks, once each
    # recomputed in backward: all 7 vton blocks, and the garment blocks but its last (the frozen tail, off the
    # gradient's way: only its input is used)
    assert ckpt_runs == {"unet_garm": 7 + 6, "unet_vton": 7 + 7}
    assert plain.keys() == ckpt.keys() and all(g is not None for g in ckpt.values())
    # the recompute runs the same float32 ops on the same inputs (bit-identical here); the bound leaves room for a
    # kernel picked differently on a recompute (another summation order, ~1e-7 relative)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-8, msg=name)


def test_unused_garment_tail_is_out_of_the_optimizer_and_every_optimized_parameter_gets_a_gradient():
    """The garment UNet's tail (after its last transformer block's input) is frozen: none of it is in the optimizer's
    param groups, and every parameter that is gets a gradient (so DDP needs no ``find_unused_parameters``)."""
    from types import SimpleNamespace

    cfg = Config.for_profile("toy")
    fresh = build_toy_components(0)
    tail = OOTDModel(fresh["unet_garm"], fresh["unet_vton"]).fusion.unused_garment_parameters()
    grads, _ = _grads_of_one_step(cfg)
    model = training.trainable_model(build_toy_components(0), cfg)
    optimizer, _ = training.optimizer_parts(cfg, model, SimpleNamespace(device=torch.device("cpu")))
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    named = dict(model.named_parameters())
    assert "conv_out.weight" in tail and len(tail) > 4
    assert not any(id(named[f"unet_garm.{n}"]) in in_optimizer for n in tail)
    assert {n for n, p in named.items() if id(p) not in in_optimizer} == {f"unet_garm.{n}" for n in tail}
    assert set(grads) == {n for n, p in named.items() if id(p) in in_optimizer}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_8bit_adam_needs_cuda_and_bitsandbytes_else_a_config_error(tiny_data, tmp_path, monkeypatch):
    """``use_8bit_adam`` is refused with the fix named, never silently replaced by 32-bit AdamW (see
    ``adamw_class``); with CUDA and bitsandbytes (both faked here) the optimizer is ``bnb.optim.AdamW8bit``."""
    import types
    from types import SimpleNamespace

    cfg = Config.for_profile("toy", use_8bit_adam=True)
    assert training.adamw_class(Config.for_profile("toy"), "cpu") is torch.optim.AdamW
    with pytest.raises(ConfigError, match="needs a CUDA GPU.*on cpu; set use_8bit_adam: false"):
        training.adamw_class(cfg, "cpu")
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(ConfigError, match="pip install bitsandbytes, or set use_8bit_adam: false"):
        training.adamw_class(cfg, torch.device("cuda"))
    # a train() call fails at once, before the run folder or the data are touched
    with pytest.raises(ConfigError, match="use_8bit_adam"):
        training.train(tiny_config(tiny_data, tmp_path / "run", use_8bit_adam=True), progress=False)
    assert not (tmp_path / "run").exists()

    class AdamW8bit(torch.optim.AdamW):  # stands in for bitsandbytes' class (the real one needs CUDA)
        pass

    fake = types.ModuleType("bitsandbytes")
    fake.optim = SimpleNamespace(AdamW8bit=AdamW8bit)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    model = training.trainable_model(build_toy_components(0), cfg)
    optimizer, _ = training.optimizer_parts(cfg, model, SimpleNamespace(device=torch.device("cuda")))
    assert type(optimizer) is AdamW8bit and optimizer.defaults["lr"] == cfg.learning_rate


def test_frozen_encoders_are_held_in_bf16_and_the_trained_unets_stay_float32(tmp_path):
    cfg = Config.for_profile("toy", mixed_precision="bf16", output_dir=str(tmp_path))
    accelerator = training.make_accelerator(cfg)
    dtype = training._weight_dtype(accelerator)
    comps = training.frozen_components(cfg, accelerator, accelerator.device, dtype)
    model = training.trainable_model(comps, cfg)
    assert dtype == torch.bfloat16
    for name in ("vae", "text_encoder", "image_encoder"):
        assert {p.dtype for p in comps[name].parameters()} == {torch.bfloat16}, name
        assert not any(p.requires_grad for p in comps[name].parameters()), name
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_cast_frozen_casts_the_frozen_layers_of_a_partly_trained_unet_and_it_still_trains_under_autocast():
    """The hook the LoRA setup uses: in a UNet whose attention projections alone are trained (as LoRA adapters are),
    every frozen layer goes to bf16, the trained ones stay float32 and get float32 gradients under bf16 autocast."""
    unet = build_toy_components(0)["unet_garm"].train()
    trained = ("to_q", "to_k", "to_v", "to_out.0")
    for name, p in unet.named_parameters():
        p.requires_grad_(any(f".{t}." in name for t in trained))
    assert training.cast_frozen(unet, torch.bfloat16) is unet
    dtypes = {n: (p.dtype, p.requires_grad) for n, p in unet.named_parameters()}
    assert {d for d, trains in dtypes.values() if trains} == {torch.float32}
    assert {d for d, trains in dtypes.values() if not trains} == {torch.bfloat16}
    x = fixed_batch(2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unet(x["garment"], torch.tensor([10, 500]), x["prompt"]).sample
    out.float().square().mean().backward()
    grads = [p.grad for p in unet.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_memory_switches_default_to_the_paper_recipe():
    """Config defaults: every memory switch off. The paper configs: the paper's optimizer (32-bit AdamW, no EMA);
    they turn gradient checkpointing on, which recomputes instead of storing and changes no gradient (tested above)."""
    cfg = Config()
    assert (cfg.gradient_checkpointing, cfg.use_8bit_adam, cfg.mixed_precision, cfg.use_ema) == (False, False, "no",
                                                                                                 False)
    for name in ("vitonhd_512", "vitonhd_1024", "dresscode_1024"):
        paper = Config.from_yaml(REPO / "configs" / f"{name}.yaml")
        assert not paper.use_8bit_adam and not paper.use_ema and paper.learning_rate == 5e-5, name


def test_every_shipped_config_loads_and_the_toy_vae_stages_keep_the_encoder():
    """Each configs/*.yaml passes the config checks; the decoder-only VAE stages after stage 1 never train the encoder
    (the UNets were trained on its latents), and the person-only ones are decoder-only by construction."""
    configs = {p.stem: Config.from_yaml(p) for p in sorted((REPO / "configs").glob("*.yaml"))}
    assert len(configs) >= 10
    stages = [c for name, c in configs.items() if name.startswith("toy_vae_decoder")]
    assert stages and all(not c.vae_train_encoder and c.vae_init for c in stages)
    assert any(not c.vae_train_garments for c in stages)
    # stages that share a data_root name one wardrobe: on a fresh clone whichever runs first generates it, so a stage
    # with new batches (another seed) must still state the wardrobe's seed, or it would generate other people
    wardrobes = {}
    for name, c in configs.items():
        if c.profile == "toy":
            assert c.toy_seed is not None, f"{name}: state toy_seed (the wardrobe of {c.data_root})"
            wardrobes.setdefault(c.data_root, set()).add((c.layout, c.toy_train, c.toy_test, c.toy_seed,
                                                          c.toy_patterns))
    assert all(len(w) == 1 for w in wardrobes.values()), wardrobes
