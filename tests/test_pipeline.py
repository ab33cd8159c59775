"""OOTDPipeline on tiny random models: equals an independent sampling loop, round-trips, offloads, validates inputs."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ootd_lib import conditioning as cond
from ootd_lib.cli import main as cli_main
from ootd_lib.errors import InputError, WeightsError
from ootd_lib.models import OOTDModel, build_toy_components
from ootd_lib.app import tryon_files
from ootd_lib.pipeline import OOTDPipeline, load_toy_pipeline, tryon

H, W = 64, 48  # half the toy resolution: the tests only need the mechanics, and run 4x faster
STEPS = 2


def make_inputs(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    person = torch.rand(batch, 3, H, W, generator=g) * 2 - 1
    garment = torch.rand(batch, 3, H, W, generator=g) * 2 - 1
    mask = torch.zeros(batch, 1, H, W)
    mask[..., 15:50, 10:38] = 1
    return person, garment, mask


@pytest.fixture(scope="module")
def components():
    return build_toy_components(seed=0)


@pytest.fixture(scope="module")
def pipe(components):
    p = OOTDPipeline(**components, height=H, width=W)
    p.set_progress_bar_config(disable=True)
    return p


def run(pipe, *inputs, steps=STEPS, seed=0, **kw):
    kw.setdefault("output_type", "pt")
    return pipe(*inputs, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **kw).images


@torch.no_grad()
def reference_loop(c, person, garment, mask, scale, steps=STEPS, seed=0, trace=None):
    """The released algorithm written out with OOTDModel, which re-runs the garment UNet at every step and never caches
    the garment keys/values — a different code path from the pipeline's. ``trace``: a list that receives the latents
    each step starts from."""
    model = OOTDModel(c["unet_garm"], c["unet_vton"])
    vae, sched = c["vae"], c["scheduler"]
    prompt = cond.encode_prompt(garment, "upper_body", "hd", c["tokenizer"], c["text_encoder"], c["image_encoder"],
                                c["feature_extractor"])
    garm = cond.encode_latents(vae, garment)
    masked = torch.where(mask > 0, torch.tensor(127 / 127.5 - 1), person)
    pers = cond.encode_latents(vae, masked)
    x0 = cond.encode_repaint_target(vae, person)
    m = F.interpolate(mask, size=x0.shape[-2:], mode="nearest")
    sched.set_timesteps(steps)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
    x = noise.clone()
    for i, t in enumerate(sched.timesteps):
        if trace is not None:
            trace.append(x)
        e_c = model(x, t, pers, garm, prompt)
        e_u = model(x, t, pers, torch.zeros_like(garm), prompt)
        eps = e_u + scale * (e_c - e_u)
        x = sched.step(eps, t, x).prev_sample
        if i + 1 < steps:  # the original noised to the sigma this step reached, number i + 1, by index; UniPC's
            sigma = sched.sigmas[i + 1]  # variance-preserving form written out: x = α·x0 + α·σ·ε, α = 1/√(1+σ²)
            alpha = 1 / (1 + sigma ** 2) ** 0.5
            known = alpha * x0 + alpha * sigma * noise
        else:
            known = x0
        x = (1 - m) * known + m * x
    model.fusion.set_garment(None)
    return ((cond.decode_latents(vae, x) + 1) / 2).clamp(0, 1)


def test_pipeline_equals_independent_loop(pipe, components):
    person, garment, mask = make_inputs()
    expected = reference_loop(components, person, garment, mask, scale=2.0)
    got = run(pipe, person, garment, mask, image_guidance_scale=2.0)
    assert got.shape == (1, 3, H, W)
    assert (got - expected).abs().max() < 1e-5
    # the pipeline restores the processors it found: the OOTDModel fusion made above still works afterwards
    again = reference_loop(components, person, garment, mask, scale=2.0)
    assert (again - expected).abs().max() < 1e-6


@pytest.mark.parametrize("steps", [20, 50, 100])
def test_repaint_sigma_by_step_index_at_any_step_count(pipe, components, steps):
    """Karras timesteps repeat at higher step counts (50 steps end ..., 2, 1, 1, 0; 100 steps repeat 4, 2, 1 and 0):
    a repaint that looks its sigma up by timestep value noises the original to the wrong level after such a step.
    Compared step by step with the reference loop: a wrong sigma shows as 3e-2 outside the mask after the repeated
    step (in the decoded image the random toy UNets shrink it below 1e-5)."""
    sched = components["scheduler"]
    sched.set_timesteps(steps)
    assert (len(set(sched.timesteps.tolist())) < steps) == (steps > 20)  # the repeats this test is about
    person, garment, mask = make_inputs()
    expected = []
    reference_loop(components, person, garment, mask, scale=2.0, steps=steps, trace=expected)
    got, c = [], expected[0].shape[1]
    hook = pipe.unet_vton.register_forward_pre_hook(lambda mod, args: got.append(args[0][:1, :c].clone()))
    try:
        run(pipe, person, garment, mask, image_guidance_scale=2.0, steps=steps)
    finally:
        hook.remove()
    assert len(got) == len(expected) == steps
    # relative to the latents' scale (up to ~50 with random toy UNets): float32 rounding of the same arithmetic in
    # another order stays near 1e-6 of it after 100 steps; a wrong sigma is 6e-4
    worst = max(((g - e).abs().max() / e.abs().max()).item() for g, e in zip(got, expected))
    assert worst < 1e-5, worst


def test_repaint_without_a_step_index_is_a_clear_error():
    from ootd_lib.models import make_scheduler
    from ootd_lib.pipeline import repaint

    sched, x = make_scheduler(), torch.zeros(1, 4, 2, 2)
    sched.set_timesteps(5)  # no set_begin_index(0): a sigma could only be looked up by timestep value
    with pytest.raises(InputError, match="set_begin_index"):
        repaint(x, x, x, x, sched)


def test_repaint_keeps_the_person_outside_the_mask(pipe, components):
    person, garment, mask = make_inputs()
    latents = run(pipe, person, garment, mask, output_type="latent")
    x0 = cond.encode_repaint_target(components["vae"], person)
    m = F.interpolate(mask, size=x0.shape[-2:], mode="nearest")
    assert torch.equal(latents * (1 - m), x0 * (1 - m))  # the clean original pasted on the last step
    assert (latents * m - x0 * m).abs().max() > 0.1  # and the inside was sampled


def test_scale_one_runs_a_single_batch(pipe):
    person, garment, mask = make_inputs()
    seen = {"vton": [], "garm": []}
    hooks = [pipe.unet_vton.register_forward_pre_hook(lambda m, a: seen["vton"].append(a[0].shape[0])),
             pipe.unet_garm.register_forward_pre_hook(lambda m, a: seen["garm"].append(a[0].shape[0]))]
    try:
        run(pipe, person, garment, mask, image_guidance_scale=1.0)
        single = dict(vton=list(seen["vton"]), garm=list(seen["garm"]))
        seen["vton"].clear(), seen["garm"].clear()
        run(pipe, person, garment, mask, image_guidance_scale=2.0)
    finally:
        for h in hooks:
            h.remove()
    assert single == dict(vton=[1] * STEPS, garm=[1])  # garment UNet once per call, no doubled batch
    assert seen == dict(vton=[2] * STEPS, garm=[2])


def test_guidance_scale_changes_only_the_masked_region(pipe):
    person, garment, mask = make_inputs()
    a = run(pipe, person, garment, mask, image_guidance_scale=1.0)
    b = run(pipe, person, garment, mask, image_guidance_scale=3.0)
    assert (a - b).abs().max() > 1e-3


def test_batches_broadcasting_and_samples(pipe):
    person, garment, mask = make_inputs(batch=2, seed=1)
    both = run(pipe, person, garment[:1], mask, num_images_per_prompt=2)
    assert both.shape == (4, 3, H, W)
    # one generator per output image reproduces a single-pair call
    gens = [torch.Generator().manual_seed(s) for s in (5, 6, 7, 8)]
    batch = pipe(person, garment[:1], mask, num_inference_steps=STEPS, num_images_per_prompt=2, generator=gens,
                 output_type="pt").images
    single = pipe(person[1:], garment[:1], mask[1:], num_inference_steps=STEPS, num_images_per_prompt=2,
                  generator=[torch.Generator().manual_seed(s) for s in (7, 8)], output_type="pt").images
    assert (batch[2:] - single).abs().max() < 1e-5


def test_pil_numpy_and_tensor_inputs_agree(pipe):
    person, garment, mask = make_inputs()
    to_u8 = lambda t: ((t[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    person, garment = (torch.from_numpy(to_u8(t)).permute(2, 0, 1)[None].float() / 127.5 - 1 for t in (person, garment))
    pil_mask = Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8), "L")
    from_tensor = run(pipe, person, garment, mask)
    from_pil = run(pipe, Image.fromarray(to_u8(person)), Image.fromarray(to_u8(garment)), pil_mask)
    from_np = run(pipe, to_u8(person), to_u8(garment), mask[0, 0].numpy().astype(bool))
    assert (from_tensor - from_pil).abs().max() < 1e-5 and (from_tensor - from_np).abs().max() < 1e-5
    pil = run(pipe, Image.fromarray(to_u8(person)), Image.fromarray(to_u8(garment)), pil_mask, output_type="pil")
    assert isinstance(pil[0], Image.Image) and pil[0].size == (W, H)
    # larger photos are resized to the model resolution (the mask with them)
    big = run(pipe, Image.fromarray(to_u8(person)).resize((96, 128)), Image.fromarray(to_u8(garment)),
              pil_mask.resize((96, 128), Image.NEAREST))
    assert big.shape == (1, 3, H, W)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask=torch.zeros(2, 1, 32, 24)), "person image is 48×64"),
    (dict(mask=[Image.new("RGB", (W, H))] * 2), "mode 'L'"),
    (dict(mask=torch.full((2, 1, H, W), 255.0)), r"mask values must be in \[0, 1\]"),
    (dict(person=torch.zeros(1, 3, H, W) + 5), r"person: tensor values must be in \[-1, 1\]"),
    (dict(garment=np.zeros((H, W, 4), np.uint8)), "H×W×3"),
    (dict(garment=torch.zeros(3, 3, H, W)), "one garment for all persons or one per person"),
    (dict(category="shoes"), "category 'shoes'"),
    (dict(mask=None), "mask is required"),
    (dict(output_type="jpg"), "output_type"),
    (dict(num_inference_steps=0), "num_inference_steps"),
])
def test_input_validation(pipe, kwargs, match):
    person, garment, mask = make_inputs(batch=2)
    args = dict(person=person, garment=garment, mask=mask)
    args.update(kwargs)
    with pytest.raises(InputError, match=match):
        pipe(**args)


def test_save_pretrained_round_trip(pipe, tmp_path):
    person, garment, mask = make_inputs()
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = OOTDPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert (loaded.config.height, loaded.config.width, loaded.config.model_type) == (H, W, "hd")
    assert isinstance(loaded.unet_vton, type(pipe.unet_vton))
    for name in ("unet_garm", "unet_vton", "vae", "text_encoder", "image_encoder"):  # safetensors stores fp32 exactly
        saved, original = getattr(loaded, name).state_dict(), getattr(pipe, name).state_dict()
        assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved), name
    # Same weights, but the loaded tensors live in other buffers (memory-mapped files), and CPU kernels may block a
    # matmul differently for another alignment (seen on AVX-512 machines): last-bit differences (~1e-7) that the
    # sampling steps and the decoder amplify to ~1e-6. A wrong weight or config changes the images by > 1e-2.
    torch.testing.assert_close(run(loaded, person, garment, mask), run(pipe, person, garment, mask), rtol=0, atol=1e-4)
    with pytest.raises(WeightsError, match="model_index.json"):
        OOTDPipeline.from_pretrained(tmp_path)
    # the latent mask travels with the folder; a folder written before it existed loads as released
    assert loaded.config.latent_mask == "nearest"
    index = tmp_path / "pipe" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "latent_mask": "any"}))
    assert OOTDPipeline.from_pretrained(tmp_path / "pipe").config.latent_mask == "any"
    index.write_text(json.dumps({k: v for k, v in json.loads(index.read_text()).items() if k != "latent_mask"}))
    assert OOTDPipeline.from_pretrained(tmp_path / "pipe").config.latent_mask == "nearest"


def test_from_official_layout_and_dc_prompt(tmp_path):
    from minimodels import write_mini_official

    written = write_mini_official(tmp_path / "ootd", variants=("hd", "dc"))
    hd = OOTDPipeline.from_pretrained(tmp_path / "ootd")  # released layout detected → from_official
    dc = OOTDPipeline.from_official(tmp_path / "ootd", variant="dc", height=H, width=W)
    assert (hd.config.height, hd.config.width, hd.config.model_type) == (128, 96, "hd")  # toy VAE → toy resolution
    assert dc.config.model_type == "dc"
    assert hd.scheduler.config.use_karras_sigmas and hd.scheduler.config.final_sigmas_type == "sigma_min"
    assert torch.equal(dc.unet_vton.conv_in.weight, written["dc"]["unet_vton"].conv_in.weight)
    person, garment, mask = make_inputs()
    dc.set_progress_bar_config(disable=True)
    upper, dress = run(dc, person, garment, mask), run(dc, person, garment, mask, category="dresses")
    assert (upper - dress).abs().max() > 1e-4  # the dc prompt carries the category word
    assert hd.config.latent_mask == "nearest"  # the released index names none: as released
    index = tmp_path / "ootd" / "checkpoints" / "ootd" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "latent_mask": "any"}))
    any_ = OOTDPipeline.from_official(tmp_path / "ootd", variant="dc", height=H, width=W)
    any_.set_progress_bar_config(disable=True)
    assert any_.config.latent_mask == "any"  # a folder's own choice becomes the pipeline's default ...
    torch.testing.assert_close(run(any_, person, garment, mask), run(dc, person, garment, mask, latent_mask="any"),
                               rtol=0, atol=0)
    torch.testing.assert_close(run(any_, person, garment, mask, latent_mask="nearest"), upper, rtol=0, atol=0)
    released = OOTDPipeline.from_pretrained(tmp_path / "ootd", model_type="dc", latent_mask="nearest")
    assert released.config.latent_mask == "nearest"  # ... and a caller's choice overrides the folder's


def test_model_cpu_offload_equals_plain_call(tmp_path):
    p = OOTDPipeline(**build_toy_components(seed=0), height=H, width=W)
    p.set_progress_bar_config(disable=True)
    person, garment, mask = make_inputs()
    plain = run(p, person, garment, mask)
    p.enable_model_cpu_offload(device="cpu")
    assert hasattr(p.unet_garm, "_hf_hook") and hasattr(p.unet_vton, "_hf_hook")
    offloaded = run(p, person, garment, mask)
    assert torch.equal(plain, offloaded)


def test_tryon_with_mask_and_with_estimators(pipe, monkeypatch):
    person, garment, mask = make_inputs()
    direct = run(pipe, person, garment, mask)
    via = tryon(person, garment, "upper_body", pipe, mask=mask, num_inference_steps=STEPS,
                generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert torch.equal(direct, via)
    # estimators: called on the person resized to 384×512; their annotations go through the mask rules
    seen = {}
    import ootd_lib.masking as masking

    def fake_agnostic(parse, keypoints, category, model_type):
        seen.update(parse=parse.shape, category=category, model_type=model_type)
        out = np.zeros((512, 384), bool)
        out[100:400, 80:300] = True
        return out

    monkeypatch.setattr(masking, "agnostic_mask", fake_agnostic)
    parser = lambda img: seen.setdefault("parser_size", img.size) and np.zeros((512, 384), np.int64)
    pose = lambda img: np.full((18, 2), np.nan, np.float32)
    out = tryon(person, garment, "upper_body", pipe, parser=parser, pose=pose, num_inference_steps=1,
                output_type="pt").images
    assert out.shape == (1, 3, H, W)
    assert seen == dict(parser_size=(384, 512), parse=(512, 384), category="upper_body", model_type="hd")
    with pytest.raises(InputError, match="no mask"):
        tryon(person, garment, "upper_body", pipe)


def test_tryon_files_and_cli(pipe, tmp_path, monkeypatch, capsys):
    import ootd_lib.pipeline as pipeline_module

    pipe.save_pretrained(tmp_path / "model")
    person, garment, mask = make_inputs()
    to_pil = lambda t: Image.fromarray(((t[0].permute(1, 2, 0) + 1) * 127.5).round().byte().numpy())
    to_pil(person).save(tmp_path / "p.png"), to_pil(garment).save(tmp_path / "g.png")
    Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "m.png")
    paths = tryon_files(person=tmp_path / "p.png", garment=tmp_path / "g.png", mask=tmp_path / "m.png",
                        model=str(tmp_path / "model"), steps=1, samples=2, out=tmp_path / "r.png", device="cpu")
    assert [p.name for p in paths] == ["r_0.png", "r_1.png"] and Image.open(paths[0]).size == (W, H)  # saved config
    assert np.asarray(Image.open(paths[0])).std() > 0
    rc = cli_main(["tryon", "--person", str(tmp_path / "p.png"), "--garment", str(tmp_path / "g.png"), "--mask",
                   str(tmp_path / "m.png"), "--model", str(tmp_path / "model"), "--steps", "1", "--out",
                   str(tmp_path / "cli.png")])
    assert rc == 0 and (tmp_path / "cli.png").is_file()
    # no toy checkpoint yet: one clear line, exit code 2
    monkeypatch.setattr(pipeline_module, "TOY_CHECKPOINT", tmp_path / "missing")
    rc = cli_main(["tryon", "--person", str(tmp_path / "p.png"), "--garment", str(tmp_path / "g.png"), "--mask",
                   str(tmp_path / "m.png"), "--out", str(tmp_path / "x.png")])
    assert rc == 2 and "toy checkpoint" in capsys.readouterr().err
    with pytest.raises(WeightsError, match="missing"):
        load_toy_pipeline(tmp_path / "missing")


# --- paste-back and the toy resolution -------------------------------------------------------------------------------
def test_feathered_paste_keeps_the_original_outside_and_the_result_inside():
    from ootd_lib.pipeline import feathered_paste

    person, result = torch.zeros(1, 3, 32, 24), torch.ones(1, 3, 32, 24)
    mask = torch.zeros(1, 1, 32, 24)
    mask[..., 10:20, 8:16] = 1
    out = feathered_paste(result, person, mask, feather=2)
    assert torch.equal(out[..., 10:20, 8:16], result[..., 10:20, 8:16])  # inside: the result, exactly
    far = torch.ones(32, 24, dtype=torch.bool)
    far[10 - 4:20 + 4, 8 - 4:16 + 4] = False  # beyond twice the feather: the original pixels, exactly
    assert torch.equal(out[..., far], person[..., far])
    ramp = out[0, 0, 15, 16:21]  # a soft edge going out of the mask to the right
    assert (ramp.diff() <= 0).all() and 0 < ramp[1] < 1
    assert torch.equal(feathered_paste(result, person, mask, feather=0), mask.expand(-1, 3, -1, -1))


def test_paste_back_returns_the_input_pixels_outside_the_mask(pipe):
    person, garment, mask = make_inputs()
    plain = run(pipe, person, garment, mask)
    pasted = run(pipe, person, garment, mask, paste_back=True)
    far = F.max_pool2d(mask, 9, stride=1, padding=4)[0, 0] == 0  # beyond the feather band
    truth = (person[0] + 1) / 2
    assert torch.allclose(pasted[0][:, far], truth[:, far], atol=1e-6)
    assert not torch.allclose(plain[0][:, far], truth[:, far], atol=1e-2)  # off: decoded through the VAE, as released
    inside = mask[0, 0] > 0
    assert torch.allclose(pasted[0][:, inside], plain[0][:, inside], atol=1e-6)


def test_default_resolution_follows_the_vae():
    from types import SimpleNamespace

    from ootd_lib.pipeline import default_resolution

    vae = lambda size: SimpleNamespace(config=SimpleNamespace(sample_size=size))  # noqa: E731
    assert default_resolution(vae(128)) == (128, 96)  # the toy VAE (f = 8 or f = 4): its training height
    assert default_resolution(vae(64)) == (64, 48)
    assert default_resolution(vae(512)) == (1024, 768)  # SD's VAE: the released resolution


def test_cli_tryon_dc_variant_with_paste_back(tmp_path, monkeypatch):
    """`ootd tryon --variant dc --paste-back --latent-mask any` reaches the shipped dc model with both options, and the
    written result keeps the person's own pixels far outside the mask."""
    from pathlib import Path

    from ootd_lib.data import find_annotations
    from ootd_lib.masking import agnostic_mask

    sample = Path(__file__).resolve().parent.parent / "data" / "sample" / "toy_dresscode" / "dresses" / "images"
    person, garment = sample / "290000_0.jpg", sample / "290001_1.jpg"
    seen = {}
    call = OOTDPipeline.__call__

    def spy(self, *args, **kwargs):
        seen.update(model_type=self.config.model_type, paste_back=kwargs.get("paste_back"),
                    latent_mask=kwargs.get("latent_mask"))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(OOTDPipeline, "__call__", spy)
    out = tmp_path / "r.png"
    assert cli_main(["tryon", "--person", str(person), "--garment", str(garment), "--category", "dresses",
                     "--variant", "dc", "--paste-back", "--latent-mask", "any", "--steps", "2", "--out",
                     str(out)]) == 0
    assert seen == {"model_type": "dc", "paste_back": True, "latent_mask": "any"}
    result = np.asarray(Image.open(out).convert("RGB"), np.float32)
    h, w = result.shape[:2]
    ann = find_annotations(person, size=(h, w))
    mask = torch.from_numpy(agnostic_mask(ann["parse"], ann["keypoints"], "dresses", "dc")).float()[None, None]
    far = F.max_pool2d(mask, 9, stride=1, padding=4)[0, 0].numpy() == 0
    original = np.asarray(Image.open(person).convert("RGB").resize((w, h), Image.BILINEAR), np.float32)
    assert np.abs(result[far] - original[far]).mean() < 2.0  # the person's pixels (uint8 rounding, resampling)


# --- the latent repaint mask -----------------------------------------------------------------------------------------
def test_mask_to_latents_nearest_can_miss_a_thin_mask_and_any_keeps_it():
    from ootd_lib.pipeline import mask_to_latents

    mask = torch.zeros(1, 1, 32, 24)
    mask[..., 8:24, 1:4] = 1  # a 3-pixel-wide leg that lies between nearest's sampling points (columns 0, 8, 16)
    nearest, any_ = mask_to_latents(mask, (4, 3)), mask_to_latents(mask, (4, 3), "any")
    assert nearest.sum() == 0  # released: the leg is never repainted
    expected = torch.zeros(1, 1, 4, 3)
    expected[..., 1:3, 0] = 1  # every cell that holds a masked pixel, and no other
    assert torch.equal(any_, expected)
    wide = torch.zeros(1, 1, 32, 24)
    wide[..., 5:30, 3:20] = 1
    assert (mask_to_latents(wide, (4, 3), "any") >= mask_to_latents(wide, (4, 3))).all()  # any ⊇ nearest
    with pytest.raises(InputError, match="latent_mask='max'.*nearest"):
        mask_to_latents(mask, (4, 3), "max")


def test_latent_mask_any_repaints_a_thin_mask_that_nearest_pastes_over(pipe):
    person, garment, _ = make_inputs()
    mask = torch.zeros(1, 1, H, W)
    mask[..., 16:48, 1:5] = 1  # thinner than a latent cell, away from nearest's sampling points
    original = cond.encode_repaint_target(pipe.vae, person)
    kept = run(pipe, person, garment, mask, output_type="latent")
    assert torch.allclose(kept, original, atol=1e-6)  # as released: the original latents everywhere
    repainted = run(pipe, person, garment, mask, output_type="latent", latent_mask="any")
    cells = F.adaptive_max_pool2d(mask, original.shape[-2:])[0, 0] > 0
    assert torch.allclose(repainted[..., ~cells], original[..., ~cells], atol=1e-6)
    assert (repainted[..., cells] - original[..., cells]).abs().mean() > 0.05  # sampled there, not pasted
    with pytest.raises(InputError, match="latent_mask"):
        run(pipe, person, garment, mask, latent_mask="soft")
