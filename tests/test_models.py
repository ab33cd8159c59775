"""Model builders, conv_in widening, checkpoint loading from miniature hub-like folders, SD-1.5-size smoke test."""

import json
import time

import pytest
import torch
from diffusers import UNet2DConditionModel, UniPCMultistepScheduler

from minimodels import RELEASED_UNET_CLASSES, write_mini_clip, write_mini_official, write_mini_sd15
from ootd_lib.conditioning import encode_latents
from ootd_lib.errors import InputError, WeightsError
from ootd_lib.models import (COMPONENT_NAMES, TOY_LATENT_CHANNELS, OOTDModel, build_sd15_components,
                             build_toy_components, load_official_components, make_noise_scheduler, make_scheduler,
                             toy_unet_config, widen_conv_in)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


@pytest.fixture(scope="module")
def toy():
    return build_toy_components(0)


def test_toy_components_are_deterministic_small_and_shaped(toy):
    assert set(toy) == set(COMPONENT_NAMES)
    again, other = build_toy_components(0), build_toy_components(1)
    assert same_weights(toy["unet_vton"], again["unet_vton"]) and same_weights(toy["vae"], again["vae"])
    assert not same_weights(toy["unet_garm"], other["unet_garm"])
    params = sum(p.numel() for m in toy.values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    assert params * 4 <= 20e6  # the shipped fp32 toy checkpoint stays under 20 MB
    c = TOY_LATENT_CHANNELS  # the toy VAE's latent channels; the garment UNet takes them, the vton UNet twice them
    assert toy["unet_garm"].config.in_channels == c and toy["unet_vton"].config.in_channels == 2 * c
    assert toy["unet_vton"].config.out_channels == c
    with torch.no_grad():
        lat = encode_latents(toy["vae"], torch.zeros(1, 3, 128, 96))
    assert lat.shape == (1, c, 16, 12)  # f = 8, as SD's VAE


def test_builder_does_not_disturb_global_rng():
    torch.manual_seed(123)
    a = torch.rand(3)
    torch.manual_seed(123)
    build_toy_components(5)
    assert torch.equal(a, torch.rand(3))


def test_widen_conv_in_keeps_four_channel_behaviour_exactly():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**toy_unet_config(4)).eval()
    x, t, e = torch.randn(2, 4, 16, 12), torch.tensor([10, 500]), torch.randn(2, 2, 64)
    with torch.no_grad():
        before = unet(x, t, e).sample
        wide = widen_conv_in(unet, 8)
        after = wide(torch.cat([x, torch.zeros_like(x)], 1), t, e).sample
        moved = wide(torch.cat([x, torch.ones_like(x)], 1), t, e).sample
    assert wide is unet and wide.config.in_channels == 8 and wide.conv_in.weight.shape[1] == 8
    assert torch.equal(before, after)
    assert wide.conv_in.weight[:, 4:].abs().sum() == 0
    assert torch.equal(moved, before)  # zero-init: the extra channels start without influence...
    wide(torch.cat([x, torch.ones_like(x)], 1), t, e).sample.square().mean().backward()
    assert wide.conv_in.weight.grad[:, 4:].abs().sum() > 0  # ...but they do get gradients, so training uses them
    with pytest.raises(InputError):
        widen_conv_in(unet, 2)


def test_ootd_model_rejects_a_vton_unet_without_person_channels():
    torch.manual_seed(0)
    with pytest.raises(InputError, match="in_channels"):
        OOTDModel(UNet2DConditionModel(**toy_unet_config(4)), UNet2DConditionModel(**toy_unet_config(4)))


def test_schedulers_follow_the_released_config():
    s = make_scheduler()
    assert isinstance(s, UniPCMultistepScheduler)
    c = s.config
    assert (c.beta_schedule, c.beta_start, c.beta_end, c.solver_order, c.solver_type) == ("scaled_linear", 0.00085,
                                                                                          0.012, 2, "bh2")
    assert c.use_karras_sigmas and c.final_sigmas_type == "sigma_min" and c.prediction_type == "epsilon"
    s.set_timesteps(20)
    z = make_scheduler("zero")
    z.set_timesteps(20)
    assert len(s.timesteps) == 20 and torch.equal(s.timesteps, z.timesteps)
    assert s.sigmas[-1] > 0 and z.sigmas[-1] == 0  # the documented difference of the two final-sigma choices
    with pytest.raises(InputError):
        make_scheduler("last")
    n = make_noise_scheduler()
    assert n.config.num_train_timesteps == 1000 and n.config.beta_schedule == "scaled_linear"


@pytest.fixture(scope="module")
def mini_official(tmp_path_factory):
    root = tmp_path_factory.mktemp("ootd_release")
    return write_mini_official(root, fp16_variant=True)


@pytest.mark.parametrize("variant", ["hd", "dc"])
def test_official_loader_reads_the_released_layout(mini_official, variant):
    root = mini_official["root"]
    cfg = json.loads((root / f"checkpoints/ootd/ootd_{variant}/checkpoint-36000/unet_garm/config.json").read_text())
    assert cfg["_class_name"] == RELEASED_UNET_CLASSES["unet_garm"] and cfg["_diffusers_version"] == "0.24.0"
    assert (root / "checkpoints/ootd/vae/diffusion_pytorch_model.bin").is_file()
    comps = load_official_components(root, variant)
    assert set(comps) == set(COMPONENT_NAMES)
    for name in ("unet_garm", "unet_vton", "vae", "text_encoder"):
        assert same_weights(comps[name], mini_official[variant][name]), name
    assert type(comps["unet_garm"]) is UNet2DConditionModel
    assert comps["unet_vton"].config.in_channels == 2 * comps["unet_garm"].config.in_channels
    # the released scheduler config (solver_type midpoint → bh2), final sigma as diffusers 0.24
    assert comps["scheduler"].config.solver_type == "bh2" and comps["scheduler"].config.final_sigmas_type == "sigma_min"
    assert comps["tokenizer"]("", max_length=2, padding="max_length").input_ids == [comps["tokenizer"].bos_token_id,
                                                                                  comps["tokenizer"].eos_token_id]
    assert comps["image_encoder"].config.projection_dim == comps["unet_vton"].config.cross_attention_dim
    assert not comps["unet_garm"].training


def test_official_loader_variants_and_fp16(mini_official):
    root = mini_official["root"]
    hd = load_official_components(root / "checkpoints", "hd", torch_dtype=torch.float16)  # the checkpoints/ folder
    assert hd["unet_vton"].dtype == torch.float16 and hd["vae"].dtype == torch.float16
    dc = load_official_components(root, "dc")
    assert not same_weights(hd["unet_garm"], dc["unet_garm"])
    with pytest.raises(InputError):
        load_official_components(root, "xl")


def test_official_loader_explains_broken_downloads(mini_official, tmp_path):
    import shutil

    root = tmp_path / "broken"
    shutil.copytree(mini_official["root"], root)
    (root / "checkpoints/ootd/ootd_hd/checkpoint-36000/unet_vton/diffusion_pytorch_model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n")
    (root / "checkpoints/ootd/ootd_hd/checkpoint-36000/unet_vton/diffusion_pytorch_model.fp16.safetensors").unlink()
    with pytest.raises(WeightsError, match="Git-LFS pointer"):
        load_official_components(root, "hd")
    for f in (root / "checkpoints/ootd/ootd_dc/checkpoint-36000/unet_garm").glob("*.safetensors"):
        f.unlink()  # an interrupted download: config.json only
    with pytest.raises(WeightsError, match="no weight file"):
        load_official_components(root, "dc")
    shutil.rmtree(root / "checkpoints/ootd/ootd_dc")
    with pytest.raises(WeightsError, match="ootd_dc"):
        load_official_components(root, "dc")
    with pytest.raises(WeightsError, match="does not exist|neither"):
        load_official_components(tmp_path / "nowhere" / "x.y", "hd")


def test_sd15_builder_widens_the_sd_unet(tmp_path):
    written = write_mini_sd15(tmp_path / "sd15")
    clip = write_mini_clip(tmp_path / "clip")
    comps = build_sd15_components(tmp_path / "sd15", clip_model=clip)
    assert set(comps) == set(COMPONENT_NAMES)
    assert same_weights(comps["unet_garm"], written["unet"])
    vton, garm = comps["unet_vton"], comps["unet_garm"]
    assert vton is not garm and vton.config.in_channels == 8
    w = vton.conv_in.weight
    assert torch.equal(w[:, :4], written["unet"].conv_in.weight) and w[:, 4:].abs().sum() == 0
    assert torch.equal(vton.conv_in.bias, written["unet"].conv_in.bias)
    assert isinstance(comps["scheduler"], UniPCMultistepScheduler)
    assert same_weights(comps["vae"], written["vae"])


@pytest.mark.slow
def test_sd15_size_fused_forward_smoke():
    """One fused forward of two SD-1.5-geometry UNets (random weights) at 512×384 (latents 64×48) on CPU."""
    start = time.time()
    cfg = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280))
    with torch.device("meta"):  # skip the slow default init of ~1.7 B parameters; fill them with noise below
        garm, vton = UNet2DConditionModel(in_channels=4, **cfg), UNet2DConditionModel(in_channels=8, **cfg)
    gen = torch.Generator().manual_seed(0)
    pool = torch.randn(32_000_000, generator=gen) * 0.02  # slices of one noise pool: fast random-ish weights
    for unet in (garm, vton):
        unet.to_empty(device="cpu")
        with torch.no_grad():
            for i, (name, p) in enumerate(unet.named_parameters()):
                if p.ndim > 1:
                    off = (i * 7919) % (pool.numel() - p.numel() + 1)
                    p.copy_(pool[off:off + p.numel()].view_as(p))
                else:  # norm scales 1, biases 0
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
        unet.eval()
    model = OOTDModel(garm, vton)
    assert len(model.fusion.block_names) == 16  # fusion in all 16 transformer blocks
    x = torch.randn(1, 4, 64, 48, generator=gen)
    with torch.no_grad():
        eps = model(x, torch.tensor([500]), torch.randn(1, 4, 64, 48, generator=gen),
                    torch.randn(1, 4, 64, 48, generator=gen), torch.randn(1, 2, 768, generator=gen))
    assert eps.shape == (1, 4, 64, 48) and torch.isfinite(eps).all() and eps.std() > 0
    print(f"SD-1.5-size fused forward: {time.time() - start:.1f}s")


def test_save_components_round_trips_through_the_official_loader(toy, tmp_path):
    from ootd_lib.models import load_profile_components, save_components

    out = save_components(toy, tmp_path / "toy_ckpt", variant="hd")
    save_components(toy, out, variant="hd")  # overwriting an existing checkpoint works
    assert not list(tmp_path.glob(".toy_ckpt*"))  # no temp folders left behind
    loaded = load_profile_components("toy", pretrained=out, variant="hd")
    for name in ("unet_garm", "unet_vton", "vae", "text_encoder", "image_encoder"):
        assert same_weights(loaded[name], toy[name]), name
    assert loaded["tokenizer"]("dress").input_ids == toy["tokenizer"]("dress").input_ids
    assert loaded["scheduler"].config.solver_type == "bh2"
    with pytest.raises(InputError):
        load_profile_components("huge")


def test_a_stage_kept_in_float16_loads_back_as_the_rounded_float32_unets(toy, tmp_path):
    """assets/assemble_toy_checkpoint.py keeps a stage (and the shipped checkpoint) with float16 UNets: half the bytes,
    read back as float32 equal to the trained weights rounded to float16, the VAE and encoders untouched; the trained
    UNets passed in stay float32."""
    import importlib.util
    from pathlib import Path

    from ootd_lib.models import load_official_components, save_components
    from ootd_lib.training import _write_model_index

    spec = importlib.util.spec_from_file_location(
        "assemble", Path(__file__).resolve().parents[1] / "assets" / "assemble_toy_checkpoint.py")
    assemble = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(assemble)
    run = save_components(toy, tmp_path / "run" / "pipeline", variant="hd")  # as `ootd train` exports a run
    _write_model_index(run / "checkpoints/ootd", type(toy["vae"]).__name__, height=128, width=96, model_type="hd")
    stage = assemble.main(run, out=tmp_path / "stages" / "hd", unet_dtype=torch.float16)

    def size(folder, variant="hd"):
        return sum(f.stat().st_size for f in (folder / f"checkpoints/ootd/ootd_{variant}").rglob("*.safetensors"))

    assert 0.45 < size(stage) / size(run) < 0.55
    loaded = load_official_components(stage, "hd")
    for name in ("unet_garm", "unet_vton"):
        assert {p.dtype for p in loaded[name].parameters()} == {torch.float32}
        assert {p.dtype for p in toy[name].parameters()} == {torch.float32}
        want = {k: v.half().float() for k, v in toy[name].state_dict().items()}
        assert all(torch.equal(v, want[k]) for k, v in loaded[name].state_dict().items()), name
        # the rounding is real (a float32 copy would pass the line above only if nothing was rounded)
        assert not all(torch.equal(v, want[k]) for k, v in toy[name].state_dict().items())
    for name in ("vae", "text_encoder", "image_encoder"):
        assert same_weights(loaded[name], toy[name]), name
    index = json.loads((stage / "checkpoints/ootd/model_index.json").read_text())
    assert (index["latent_mask"], index["height"], index["width"]) == ("any", 128, 96)
    assert not list((tmp_path / "stages").glob(".*"))  # no temporary folders left behind
    # a dc line's stage alone, likewise
    dc_run = save_components(toy, tmp_path / "dc_run" / "pipeline", variant="dc")
    _write_model_index(dc_run / "checkpoints/ootd", type(toy["vae"]).__name__, model_type="dc")
    dc_stage = assemble.main(dc=dc_run, out=tmp_path / "stages" / "dc", unet_dtype=torch.float16)
    assert 0.45 < size(dc_stage, "dc") / size(dc_run, "dc") < 0.55 and not (dc_stage / "checkpoints/ootd/ootd_hd").exists()
    with pytest.raises(InputError, match="--hd, --dc or both"):
        assemble.main(out=tmp_path / "stages" / "none")


def test_hub_download_asks_only_for_the_needed_files(mini_official, monkeypatch):
    """The hub path with the hub faked by the miniature folders: only the chosen variant's files are requested."""
    import huggingface_hub

    root = mini_official["root"]
    repos = {"levihsu/OOTDiffusion": root, "openai/clip-vit-large-patch14": root / "checkpoints/clip-vit-large-patch14"}
    requested = {}

    def list_repo_files(repo_id, **kw):
        return sorted(str(p.relative_to(repos[repo_id])) for p in repos[repo_id].rglob("*") if p.is_file())

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        requested[repo_id] = list(allow_patterns)
        return str(repos[repo_id])

    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    comps = load_official_components("levihsu/OOTDiffusion", "hd", clip_model="openai/clip-vit-large-patch14")
    files = requested["levihsu/OOTDiffusion"]
    assert "checkpoints/ootd/ootd_hd/checkpoint-36000/unet_vton/diffusion_pytorch_model.safetensors" in files
    assert not any("ootd_dc" in f or ".fp16." in f or "clip-vit" in f for f in files)
    assert "checkpoints/ootd/vae/diffusion_pytorch_model.bin" in files
    assert set(requested["openai/clip-vit-large-patch14"]) >= {"config.json", "model.safetensors"}
    assert same_weights(comps["unet_vton"], mini_official["hd"]["unet_vton"])
    load_official_components("levihsu/OOTDiffusion", "dc", clip_model="openai/clip-vit-large-patch14",
                             torch_dtype=torch.float16)
    files = requested["levihsu/OOTDiffusion"]
    assert any(f.endswith("unet_garm/diffusion_pytorch_model.fp16.safetensors") for f in files)
    assert not any(f.endswith("unet_garm/diffusion_pytorch_model.safetensors") for f in files)


def test_notebook_components_fall_back_to_toy_without_official_weights(mini_official, tmp_path, monkeypatch):
    import huggingface_hub

    from ootd_lib.app import notebook_components

    def offline(*a, **kw):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", offline)
    comps, profile, device, dtype, note = notebook_components("official", tmp_path)
    assert profile == "toy" and note.startswith("skipped: official weights not available")
    assert comps["unet_vton"].config.cross_attention_dim == 64
    comps, profile, *_ = notebook_components("official", mini_official["root"])  # a local checkpoints/ folder
    assert profile == "official" and same_weights(comps["unet_garm"], mini_official["hd"]["unet_garm"])
