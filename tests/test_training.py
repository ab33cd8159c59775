"""Training: the step learns, dropout rate, exact resume, 2-process data parallelism, non-finite losses.

Everything runs the real ``ootd_lib.training.train`` loop on a tiny toy set at 64×48 (latents 4×16×12) with the toy
components (random VAE: the mechanics, not the pictures, are under test).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ootd_lib import training
from ootd_lib.conditioning import encode_latents
from ootd_lib.config import Config
from ootd_lib.errors import ConfigError, TrainingError
from ootd_lib.models import TOY_LATENT_CHANNELS, OOTDModel, build_toy_components, make_noise_scheduler
from ootd_lib.toydata import generate_toy_dataset

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_toy_dataset(tmp_path_factory.mktemp("train") / "toy", n_train=8, n_test=2, seed=0,
                                size=(128, 96), progress=False)


def tiny_config(data, out, **kw) -> Config:
    base = dict(data_root=str(data), output_dir=str(out), resolution=(64, 48), learning_rate=1e-3,
                max_train_steps=4, train_batch_size=4, cache_latents=True, checkpointing_steps=2,
                checkpoints_total_limit=1, log_every=1, sample_every=0, seed=3, torch_threads=1)
    base.update(kw)
    return Config.for_profile("toy", **base)


def unet_weights(folder: Path) -> dict:
    unets = folder / "checkpoints" / "ootd" / "ootd_hd" / "checkpoint-36000"
    return {f"{name}.{k}": v for name in ("unet_garm", "unet_vton")
            for k, v in load_file(unets / name / "diffusion_pytorch_model.safetensors").items()}


def fixed_batch(b=4, seed=0, c=TOY_LATENT_CHANNELS):
    g = torch.Generator().manual_seed(seed)
    return dict(target=torch.randn(b, c, 16, 12, generator=g), person=torch.randn(b, c, 16, 12, generator=g),
                garment=torch.randn(b, c, 16, 12, generator=g), prompt=torch.randn(b, 2, 64, generator=g))


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
    rand = training.draw_randomness(1, 0, 64, (4, 16, 12), p=0.5)
    training.training_step(Spy(), make_noise_scheduler(), latents, rand)
    zeroed = seen["garment"].flatten(1).abs().sum(1) == 0
    assert torch.equal(zeroed, ~rand["keep"]) and 10 < int(zeroed.sum()) < 54
    assert torch.equal(seen["garment"][~zeroed], latents["garment"][~zeroed])


def test_randomness_is_the_same_however_the_batch_is_split():
    whole = training.draw_randomness(5, 7, 8, (4, 2, 2), p=0.3)
    halves = [training.draw_randomness(5, 7, 8, (4, 2, 2), p=0.3, rank=r, world=2) for r in range(2)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([h[k] for h in halves]))


def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    full = training.train(tiny_config(tiny_data, tmp_path / "full"), progress=False)

    real_step, calls = training.training_step, {"n": 0}

    def killed_at_step_3(*args):
        calls["n"] += 1
        if calls["n"] == 3:  # after checkpoint-2 was written
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args)

    monkeypatch.setattr(training, "training_step", killed_at_step_3)
    cfg = tiny_config(tiny_data, tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, progress=False)
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["checkpoint-2"]
    monkeypatch.setattr(training, "training_step", real_step)
    resumed = training.train(cfg, resume="latest", progress=False)

    a, b = unet_weights(full), unet_weights(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # only the last checkpoint is kept (checkpoints_total_limit=1); the loss log has each step once
    assert [p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()] == ["checkpoint-4"]
    steps = [int(r.split(",")[0]) for r in (tmp_path / "resumed" / "logs" / "loss.csv").read_text().split()[1:]]
    assert steps == [1, 2, 3, 4]
    # and the weights moved away from the initialisation
    init = build_toy_components(3)["unet_vton"].state_dict()
    assert not torch.equal(init["conv_in.weight"], a["unet_vton.conv_in.weight"])


def test_checkpoint_files_are_safetensors_and_json(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, max_train_steps=2), progress=False)
    ckpt = tmp_path / "checkpoints" / "checkpoint-2"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["model.safetensors", "optimizer.safetensors", "rng.safetensors", "state.json"]
    assert json.loads((ckpt / "state.json").read_text())["step"] == 2
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_nonfinite_losses_are_skipped_then_stop_the_run(tiny_data, tmp_path, monkeypatch):
    real_step, calls = training.training_step, {"n": 0}

    def nan_at_step_2(*args):
        calls["n"] += 1
        loss = real_step(*args)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(training, "training_step", nan_at_step_2)
    training.train(tiny_config(tiny_data, tmp_path / "one", max_train_steps=3), progress=False)
    rows = (tmp_path / "one" / "logs" / "loss.csv").read_text().split()[1:]
    assert [int(r.split(",")[-1]) for r in rows] == [0, 1, 1]  # counted once, training went on

    monkeypatch.setattr(training, "training_step", lambda *a: real_step(*a) * float("inf"))
    with pytest.raises(TrainingError, match="non-finite losses in a row"):
        training.train(tiny_config(tiny_data, tmp_path / "all", max_train_steps=10, max_nonfinite_in_a_row=3),
                       progress=False)


def test_two_process_data_parallel_matches_one_process(tiny_data, tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 4 = 2 per process, vs. 1 process with batch 4."""
    single = tiny_config(tiny_data, tmp_path / "single", max_train_steps=3, checkpointing_steps=100)
    single.to_yaml(tmp_path / "single.yaml")
    ddp = tiny_config(tiny_data, tmp_path / "ddp", max_train_steps=3, checkpointing_steps=100)
    ddp.to_yaml(tmp_path / "ddp.yaml")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "ootd_lib.training", "--config", str(tmp_path / "ddp.yaml")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    training.train(single, progress=False)

    timing = json.loads((tmp_path / "ddp" / "timing.json").read_text())
    assert timing["processes"] == 2 and timing["ranks_identical"] is True
    a, b = unet_weights(tmp_path / "single" / "pipeline"), unet_weights(tmp_path / "ddp" / "pipeline")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-4, worst  # float summation order differs (gloo all-reduce); Adam steps are ~1e-3
    init = build_toy_components(3)["unet_vton"].state_dict()
    assert float((init["conv_in.weight"] - a["unet_vton.conv_in.weight"]).abs().max()) > 1e-3


@pytest.mark.parametrize("crop, l1_weight", [(None, 1.0), ((32, 24), 0.0)])
def test_toy_vae_pretraining_reduces_reconstruction_error_and_sets_the_latent_scale(tiny_data, tmp_path, crop,
                                                                                   l1_weight):
    cfg = tiny_config(tiny_data, tmp_path, vae_pretrain_crop=crop)
    assert Config.from_dict(cfg.to_dict()).vae_pretrain_crop == crop  # null (whole images) survives the YAML form
    dataset = training.build_dataset(cfg, cache_dir=tmp_path / "masks", generate=False)
    images = torch.stack([dataset.base[i]["person"] for i in range(4)])
    torch.manual_seed(0)
    vae = build_toy_components(0)["vae"]

    def error():
        with torch.no_grad():
            return float((vae.decode(encode_latents(vae, images)).sample - images).abs().mean())

    before = error()
    losses = []
    training.pretrain_toy_vae(vae, dataset, steps=25, lr=2e-3, batch_size=4, crop=crop, seed=0, l1_weight=l1_weight,
                              progress=False, log=lambda step, loss: losses.append(loss))
    assert len(losses) == 25 and all(isinstance(v, float) for v in losses)
    assert error() < 0.7 * before
    with torch.no_grad():
        z = encode_latents(vae, torch.stack([dataset.base[i][k] for i in range(len(dataset))
                                             for k in ("person", "garment")]))
    assert abs(float(z.std()) * vae.config.scaling_factor - 1) < 0.05
