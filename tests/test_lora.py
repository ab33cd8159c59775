"""LoRA adapters (issue 16, items 1 and 2): training changes only the adapters, checkpoints hold only them and resume
exactly, the exported folder loads into a pipeline (fused = unfused, scale 0 / unload = the base), ``ootd tryon
--lora`` on the shipped toy checkpoint, and adapters for another variant or base are refused.

Everything runs on the toy components at 64×48 (the training tests: the real ``train`` loop on 7 toy pairs, as
tests/test_training.py does).
"""

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ootd_lib import lora, training
from ootd_lib.config import TOY_CHECKPOINT, Config
from ootd_lib.errors import ConfigError, InputError, WeightsError
from ootd_lib.models import OOTDModel, build_toy_components
from ootd_lib.pipeline import OOTDPipeline
from ootd_lib.toydata import generate_toy_dataset

H, W = 64, 48


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return generate_toy_dataset(tmp_path_factory.mktemp("lora") / "toy", n_train=7, n_test=2, seed=0,
                                size=(128, 96), progress=False)


def tiny_config(data, out, **kw) -> Config:
    base = dict(data_root=str(data), output_dir=str(out), resolution=(H, W), learning_rate=1e-3, max_train_steps=2,
                train_batch_size=2, cache_latents=True, checkpointing_steps=2, checkpoints_total_limit=1, log_every=1,
                sample_every=0, seed=3, torch_threads=1, lora_rank=4)
    base.update(kw)
    return Config.for_profile("toy", **base)


def capture_model(monkeypatch) -> dict:
    """Keep the model ``train`` builds, to look at its weights after the run."""
    real, seen = training.trainable_model, {}

    def build(*args, **kwargs):
        seen["model"] = real(*args, **kwargs)
        return seen["model"]

    monkeypatch.setattr(training, "trainable_model", build)
    return seen


def adapter_model(seed=0, lora_seed=1, rank=4, targets=("attn",)):
    """Toy UNets with LoRA adapters whose ``lora_B`` is random (peft starts it at zero: a no-op adapter), and the
    untouched base components."""
    comps = build_toy_components(seed)
    model = OOTDModel(copy.deepcopy(comps["unet_garm"]), copy.deepcopy(comps["unet_vton"]))
    cfg = Config.for_profile("toy", lora_rank=rank, lora_targets=targets, seed=seed, resolution=(H, W))
    lora.add_lora(model, cfg)
    g = torch.Generator().manual_seed(lora_seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    meta = lora.adapter_meta(cfg, lora.base_record(comps["unet_garm"], comps["unet_vton"]), steps=0)
    return model, comps, meta


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    person, garment = (torch.rand(3, H, W, generator=g) * 2 - 1 for _ in range(2))
    mask = torch.zeros(1, H, W)
    mask[:, 15:50, 10:38] = 1
    return person, garment, mask


def sample(pipe) -> torch.Tensor:
    return pipe(*inputs(), num_inference_steps=2, image_guidance_scale=2.0, output_type="latent",
                generator=torch.Generator().manual_seed(0)).images


# --- config -----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, match", [(dict(lora_targets=("attn", "mlp")), "lora_targets"),
                                       (dict(lora_targets=()), "at least one"),
                                       (dict(lora_alpha=0), "lora_alpha"),
                                       (dict(lora_dropout=1.0), "lora_dropout"),
                                       (dict(use_ema=True), "use_ema is not supported with lora_rank")])
def test_lora_config_is_validated(kw, match):
    with pytest.raises(ConfigError, match=match):
        Config.for_profile("toy", lora_rank=8, **kw)


# --- training ---------------------------------------------------------------------------------------------------------
def test_lora_training_changes_only_the_adapters_and_exports_an_adapter_folder(tiny_data, tmp_path, monkeypatch):
    seen = capture_model(monkeypatch)
    cfg = tiny_config(tiny_data, tmp_path, lora_targets=("attn", "ff", "conv"))
    final = training.train(cfg, progress=False)
    model, base = seen["model"], build_toy_components(3)

    # the base weights are bit-exact: frozen parameters are never written to (no optimizer holds them)
    for name in ("unet_garm", "unet_vton"):
        trained = getattr(model, name).state_dict()
        for k, v in base[name].state_dict().items():
            held = trained.get(k, trained.get(k.replace(".weight", ".base_layer.weight").replace(
                ".bias", ".base_layer.bias")))
            assert held is not None and torch.equal(held, v), f"{name}.{k}"
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    moved = [n for n, p in model.named_parameters() if ".lora_B." in n and p.abs().max() > 0]
    assert moved  # peft starts lora_B at zero: these learned
    # the garment UNet's unused tail (its last transformer block on) has no adapters
    tail = OOTDModel(base["unet_garm"], base["unet_vton"]).fusion.unused_garment_parameters()
    tail_modules = {p.rsplit(".", 1)[0] for p in tail}
    adapted = {n.split(".lora_")[0].removeprefix("unet_garm.") for n in trainable if n.startswith("unet_garm.")}
    assert tail_modules and adapted and not adapted & tail_modules

    # the checkpoint holds the trained parameters only, and says so
    ckpt = tmp_path / "checkpoints" / "checkpoint-2"
    assert set(load_file(ckpt / "model.safetensors")) == trainable
    assert json.loads((ckpt / "state.json").read_text())["weights"] == "trained"
    # the export: an adapter folder, not a pipeline
    assert final == tmp_path / "lora" and not (tmp_path / "pipeline").exists()
    meta = lora.read_adapter(final)
    assert (meta["profile"], meta["model_type"], meta["rank"], meta["alpha"], meta["steps"]) == ("toy", "hd", 4, 4, 2)
    assert meta["targets"] == ["attn", "ff", "conv"] and meta["resolution"] == [H, W]
    assert meta["unets"]["unet_vton"]["fingerprint"] == lora.fingerprint(base["unet_vton"])
    assert (final / "README.md").is_file() and not list(tmp_path.glob(".lora*"))


def test_bf16_lora_training_holds_the_base_in_bf16_and_the_adapters_in_float32(tiny_data, tmp_path, monkeypatch):
    seen = capture_model(monkeypatch)
    training.train(tiny_config(tiny_data, tmp_path, mixed_precision="bf16", max_train_steps=1,
                               checkpointing_steps=1), progress=False)
    dtypes = {p.requires_grad: set() for p in seen["model"].parameters()}
    for p in seen["model"].parameters():
        dtypes[p.requires_grad].add(p.dtype)
    assert dtypes == {True: {torch.float32}, False: {torch.bfloat16}}
    saved = load_file(tmp_path / "lora" / "unet_vton" / lora.WEIGHT_NAME)
    assert saved and all(v.dtype == torch.float32 for v in saved.values())


def test_resume_of_an_adapter_run_equals_the_uninterrupted_run(tiny_data, tmp_path, monkeypatch):
    """Killed after checkpoint-2, resumed with the base rebuilt from the config: the same adapters bit for bit (a
    resume replays the same operations in the same order: bit-identical by design, as in test_training)."""
    kw = dict(max_train_steps=4, checkpointing_steps=2)
    full = training.train(tiny_config(tiny_data, tmp_path / "full", **kw), progress=False)

    cfg = tiny_config(tiny_data, tmp_path / "resumed", **kw)
    real_step, calls = training.training_step, {"n": 0}

    def killed_at_step_3(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated kill")
        return real_step(*args)

    monkeypatch.setattr(training, "training_step", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        training.train(cfg, progress=False)
    monkeypatch.setattr(training, "training_step", real_step)
    resumed = training.train(cfg, resume="latest", progress=False)

    for name in ("unet_garm", "unet_vton"):
        a, b = (load_file(folder / name / lora.WEIGHT_NAME) for folder in (full, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    a, b = (load_file(p / "checkpoints" / "checkpoint-4" / "optimizer.safetensors")
            for p in (tmp_path / "full", tmp_path / "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_checkpoint_without_the_trained_parameters(tiny_data, tmp_path):
    training.train(tiny_config(tiny_data, tmp_path, lora_targets=("attn",)), progress=False)
    wider = tiny_config(tiny_data, tmp_path, lora_targets=("attn", "ff"), max_train_steps=3)
    with pytest.raises(ConfigError, match=r"lora_targets \['attn'\] → \['attn', 'ff'\]"):
        training.train(wider, resume="latest", progress=False)


# --- using adapters ---------------------------------------------------------------------------------------------------
def test_the_fused_self_attention_runs_through_the_adapters():
    """The fused processor calls attn.to_q / to_k / to_v / to_out: peft-wrapped layers, so the adapters act on the
    garment keys/values too. Scale 0 is the base model exactly (the adapter adds 0)."""
    model, comps, _ = adapter_model()
    base = OOTDModel(comps["unet_garm"], comps["unet_vton"])
    g = torch.Generator().manual_seed(0)
    noisy, person, garment = (torch.randn(1, 16, 8, 6, generator=g) for _ in range(3))
    prompt, t = torch.randn(1, 2, 64, generator=g), torch.tensor([500])
    with torch.no_grad():
        reference = base(noisy, t, person, garment, prompt)
        adapted = model(noisy, t, person, garment, prompt)
        for unet in (model.unet_garm, model.unet_vton):
            unet.set_adapters(lora.ADAPTER_NAME, weights=0.0)
        off = model(noisy, t, person, garment, prompt)
    assert (adapted - reference).abs().max() > 1e-3
    # same weights, same operations, plus an exact zero: equal up to nothing but the peft layers' dtype casts
    torch.testing.assert_close(off, reference, rtol=0, atol=1e-6)


def test_save_load_fuse_unfuse_scale_and_unload(tmp_path):
    model, comps, meta = adapter_model()
    folder = lora.save_adapter(tmp_path / "lora", model, meta)
    with pytest.raises(WeightsError, match="already exists"):
        lora.save_adapter(folder, model, meta)

    pipe = OOTDPipeline(**comps, height=H, width=W)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(InputError, match="no LoRA adapter is loaded"):
        pipe.fuse_lora()
    base = sample(pipe)
    pipe.load_lora(folder)
    unfused = sample(pipe)
    assert (unfused - base).abs().max() > 1e-2
    pipe.fuse_lora()
    fused = sample(pipe)
    # W·x + B·(A·x) vs (W + B·A)·x: float32 sums in another order, ~1e-6 relative per layer, through two UNets and
    # two sampling steps; latents are O(1)
    torch.testing.assert_close(fused, unfused, rtol=0, atol=1e-4)
    pipe.unfuse_lora()
    torch.testing.assert_close(sample(pipe), unfused, rtol=0, atol=1e-4)  # W + ΔW − ΔW: rounding only

    pipe.load_lora(folder, scale=0.0)  # a second load replaces the first
    assert list(pipe.unet_vton.peft_config) == [lora.ADAPTER_NAME] and pipe.lora["scale"] == 0.0
    # the adapter adds an exact zero, but the base weights still carry the rounding of the fuse/unfuse above
    torch.testing.assert_close(sample(pipe), base, rtol=0, atol=1e-4)
    pipe.load_lora(folder, scale=0.5)
    half = sample(pipe)
    assert 1e-3 < (half - base).abs().max() < (unfused - base).abs().max()
    pipe.fuse_lora()
    pipe.unload_lora()  # unfuses first: the base again, not the fused weights
    assert pipe.lora is None and not any(".lora_" in n for n, _ in pipe.unet_vton.named_parameters())
    torch.testing.assert_close(sample(pipe), base, rtol=0, atol=1e-4)


def test_an_adapter_for_another_variant_or_base_is_refused(tmp_path):
    model, comps, meta = adapter_model(seed=0)
    folder = lora.save_adapter(tmp_path / "lora", model, meta)

    dc = OOTDPipeline(**comps, height=H, width=W, model_type="dc")
    with pytest.raises(WeightsError, match=r"trained on the hd variant .* holds a dc model; load the hd model"):
        dc.load_lora(folder)
    other = OOTDPipeline(**build_toy_components(seed=1), height=H, width=W)
    with pytest.raises(WeightsError, match="unet_garm holds other weights .* load the base model it was trained on"):
        other.load_lora(folder)
    assert other.lora is None and not any(".lora_" in n for n, _ in other.unet_garm.named_parameters())

    # the same base in half precision is recognised (the bytes differ, the values agree to bf16 rounding)
    lora.check_adapter(meta, folder, comps["unet_garm"].to(torch.bfloat16), comps["unet_vton"].to(torch.bfloat16),
                       "hd")
    comps["unet_garm"].float(), comps["unet_vton"].float()

    edited = json.loads((folder / lora.ADAPTER_FILE).read_text())
    edited["unets"]["unet_vton"]["config"]["cross_attention_dim"] = 768
    (folder / lora.ADAPTER_FILE).write_text(json.dumps(edited))
    pipe = OOTDPipeline(**comps, height=H, width=W)
    with pytest.raises(WeightsError, match=r"unet_vton differs from the pipeline's in cross_attention_dim \(768 vs"):
        pipe.load_lora(folder)
    (folder / "unet_garm" / lora.WEIGHT_NAME).unlink()
    with pytest.raises(WeightsError, match=r"incomplete \(unet_garm/pytorch_lora_weights.safetensors missing\)"):
        lora.read_adapter(folder)
    with pytest.raises(WeightsError, match="not an OOTDiffusion LoRA adapter folder"):
        lora.read_adapter(tmp_path)


def test_ootd_tryon_lora_on_the_shipped_toy_checkpoint(tiny_data, tmp_path, capsys):
    """Train an adapter on the shipped toy checkpoint's hd UNets, then ``ootd tryon --lora`` with the default model
    (what a fresh clone has): a different picture than without; the dc variant refuses it."""
    from ootd_lib.cli import main as ootd

    cfg = tiny_config(tiny_data, tmp_path / "run", init_unets=str(TOY_CHECKPOINT), learning_rate=1e-2,
                      vae_path=str(TOY_CHECKPOINT / "checkpoints" / "ootd" / "vae"))
    adapter = training.train(cfg, progress=False)

    person = sorted((tiny_data / "test" / "image").glob("*.jpg"))[0]
    garment = sorted((tiny_data / "test" / "cloth").glob("*.jpg"))[1]
    w, h = Image.open(person).size
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (w // 4, h // 4, 3 * w // 4, 3 * h // 4))
    mask.save(tmp_path / "mask.png")
    args = ["tryon", "--person", str(person), "--garment", str(garment), "--mask", str(tmp_path / "mask.png"),
            "--steps", "2", "--device", "cpu"]
    assert ootd(args + ["--out", str(tmp_path / "base.png")]) == 0
    capsys.readouterr()
    assert ootd(args + ["--lora", str(adapter), "--out", str(tmp_path / "lora.png")]) == 0
    assert "warning: LoRA adapter" in capsys.readouterr().err  # trained at 64×48, the toy checkpoint samples 128×96
    base, adapted = (np.asarray(Image.open(tmp_path / f"{n}.png"), dtype=np.int16) for n in ("base", "lora"))
    assert base.shape == adapted.shape and np.abs(base - adapted).max() > 0
    capsys.readouterr()
    assert ootd(args + ["--variant", "dc", "--lora", str(adapter), "--out", str(tmp_path / "dc.png")]) == 2
    assert "trained on the hd variant" in capsys.readouterr().err and not (tmp_path / "dc.png").exists()
    assert ootd(args + ["--lora", str(tmp_path), "--out", str(tmp_path / "none.png")]) == 2  # not an adapter folder

    # ootd evaluate --lora measures the adapted model (and records which adapter it measured)
    ev = ["evaluate", "--data", str(tiny_data), "--limit", "1", "--steps", "2", "--device", "cpu"]
    assert ootd(ev + ["--out", str(tmp_path / "base.json")]) == 0
    assert ootd(ev + ["--lora", str(adapter), "--out", str(tmp_path / "lora.json")]) == 0
    without, with_ = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("base", "lora"))
    assert without["lora"] is None and with_["lora"] == str(adapter) and with_["lora_scale"] == 1.0
    assert with_["toy"]["upper_body"]["masked_error"] != without["toy"]["upper_body"]["masked_error"]
    capsys.readouterr()
    assert ootd(ev + ["--lora", str(adapter), "--untrained", "--out", str(tmp_path / "x.json")]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_the_playground_loads_an_adapter_into_the_pipeline_of_its_variant(tmp_path):
    pytest.importorskip("ipywidgets")
    from ootd_lib.playground import TryOnPlayground

    model, comps, meta = adapter_model()
    folder = lora.save_adapter(tmp_path / "lora", model, meta)
    hd = OOTDPipeline(**comps, height=H, width=W)
    dc = OOTDPipeline(**build_toy_components(seed=0), height=H, width=W, model_type="dc")
    TryOnPlayground({"hd": hd, "dc": dc}, lora=folder, lora_scale=0.5)
    assert hd.lora["scale"] == 0.5 and dc.lora is None
    with pytest.raises(InputError, match="trained on the hd variant, but the playground holds \\['dc'\\]"):
        TryOnPlayground({"dc": dc}, lora=folder)


def test_an_sd15_base_trains_the_vton_conv_in_in_full_and_unload_restores_it(tmp_path):
    """From SD-1.5 the vton conv_in's person channels are new (zero): it trains beside the adapters, is saved with
    them and replaced on load; unload puts the base one back (a saved copy: bit-exact by design)."""
    comps = build_toy_components(0)
    model = OOTDModel(copy.deepcopy(comps["unet_garm"]), copy.deepcopy(comps["unet_vton"]))
    cfg = Config.for_profile("sd15", lora_rank=4, resolution=(H, W))
    lora.add_lora(model, cfg)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"unet_vton.conv_in.weight", "unet_vton.conv_in.bias"} <= trainable
    assert not any("conv_in" in n for n in trainable if n.startswith("unet_garm."))
    with torch.no_grad():
        model.unet_vton.conv_in.weight.add_(1.0)  # stands in for training
    meta = lora.adapter_meta(cfg, lora.base_record(comps["unet_garm"], comps["unet_vton"]), steps=0)
    folder = lora.save_adapter(tmp_path / "lora", model, meta)
    assert meta["full_modules"] == {"unet_vton": ["conv_in"]}
    assert (folder / "unet_vton" / "conv_in.safetensors").is_file()

    pipe = OOTDPipeline(**comps, height=H, width=W)
    before = pipe.unet_vton.conv_in.weight.detach().clone()
    pipe.load_lora(folder)
    torch.testing.assert_close(pipe.unet_vton.conv_in.weight, before + 1.0)  # the trained one, float add
    pipe.unload_lora()
    assert torch.equal(pipe.unet_vton.conv_in.weight, before)


def test_resuming_a_checkpoint_older_than_the_lora_keys_sees_no_config_change(tiny_data, tmp_path):
    from ootd_lib.checkpoints import config_changes

    cfg = tiny_config(tiny_data, tmp_path, lora_rank=0)
    saved = {k: v for k, v in cfg.to_dict().items() if not k.startswith("lora_")}  # written before they existed
    assert config_changes(saved, cfg) == {}
    assert config_changes(saved, tiny_config(tiny_data, tmp_path)) == {"lora_rank": (0, 4)}
    # toy_seed: a run that did not state it read the wardrobe it found (build_dataset now checks the folder's seed)
    assert config_changes(saved, tiny_config(tiny_data, tmp_path, lora_rank=0, toy_seed=0)) == {}
    stated = dict(saved, toy_seed=0)
    assert config_changes(stated, tiny_config(tiny_data, tmp_path, lora_rank=0, toy_seed=1)) == {"toy_seed": (0, 1)}
