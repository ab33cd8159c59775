"""Every bad input gets one clear line and loses nothing (issue 14): the rows of the bad-input sweep, kept fixed.

Each CLI row runs ``ootd_lib.cli.main`` and expects exit code 2 and ONE line on stderr that names the file or value
(no traceback), and that none of the user's files changed (hashed before and after). Checks that must happen before
any model loads run with model loading booby-trapped (``no_models``), so they cost milliseconds; rows that need a
loaded pipeline use a recording stand-in or a tiny random one. Everything is built in ``tmp_path``.
"""

import hashlib
import json
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import ootd_lib.app as app_module
import ootd_lib.pipeline as pipeline_module
from ootd_lib.cli import main
from ootd_lib.config import Config
from ootd_lib.data import DressCodeDataset, VitonHDDataset, load_mask, load_rgb
from ootd_lib.errors import ConfigError, DataError, ImageFileError, OOTDWarning, TrainingError, WeightsError
from ootd_lib.pipeline import OOTDPipeline
from ootd_lib.toydata import generate_toy_dataset

REPO = Path(__file__).resolve().parent.parent
SIZE = (64, 48)  # (H, W) of the toy pictures: the smallest the generator writes


# --- helpers -----------------------------------------------------------------------------------------------------------
def digest(*roots) -> dict:
    """sha256 of every file under ``roots`` (files or folders): equal before and after = nothing changed or appeared."""
    files = []
    for r in map(Path, roots):
        files += [r] if r.is_file() else sorted(p for p in r.rglob("*") if p.is_file())
    return {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def one_error_line(capsys, *argv) -> str:
    """``ootd <argv>`` must exit 2 with exactly one ``ootd <command>: error: ...`` line on stderr; returns it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith(f"ootd {argv[0]}: error: ") and "Traceback" not in err[0]
    return err[0]


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_models(monkeypatch):
    """Any model load fails the test: these checks must come first."""
    def trap(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the user's input was checked")

    monkeypatch.setattr(OOTDPipeline, "from_official", classmethod(trap))
    monkeypatch.setattr(OOTDPipeline, "from_pretrained", classmethod(trap))
    monkeypatch.setattr(pipeline_module, "load_pipeline", trap, raising=False)


class StubPipe:
    """Stands in for the loaded pipeline of ``ootd tryon``: checks the inputs as the real one does (warnings
    included) and records what it was given; the "result" is the person."""

    def __init__(self, model_type="hd"):
        self.config = SimpleNamespace(model_type=model_type, height=128, width=96)
        self.calls = []

    def to(self, device):
        return self

    def __call__(self, person, garment, mask, category="upper_body", **kwargs):
        OOTDPipeline.prepare_inputs(self, person, garment, mask)
        self.calls.append(dict(person=person, garment=garment, mask=mask, category=category))
        return SimpleNamespace(images=[person.convert("RGB")] * kwargs.get("num_images_per_prompt", 1))


@pytest.fixture
def stub(monkeypatch):
    pipe, asked = StubPipe(), []
    monkeypatch.setattr(pipeline_module, "load_pipeline", lambda *a, **k: asked.append((a, k)) or pipe, raising=False)
    pipe.asked = asked
    return pipe


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    return generate_toy_dataset(tmp_path_factory.mktemp("toy") / "vitonhd", n_train=0, n_test=2, seed=0, size=SIZE,
                                progress=False)


@pytest.fixture(scope="module")
def dc_root(tmp_path_factory):
    return generate_toy_dataset(tmp_path_factory.mktemp("toy") / "dresscode", "dresscode", n_train=0, n_test=1,
                                seed=0, size=SIZE, progress=False)


@pytest.fixture
def files(tmp_path, toy_root):
    """The user's folder: a good person, garment and mask, and the three kinds of broken image file."""
    d = tmp_path / "in"
    d.mkdir()
    person = sorted((toy_root / "test" / "image").glob("*.jpg"))[0]
    shutil.copy(person, d / "person.jpg")
    shutil.copy(sorted((toy_root / "test" / "cloth").glob("*.jpg"))[1], d / "garment.jpg")
    mask = np.zeros(SIZE, np.uint8)
    mask[20:40, 10:40] = 255
    Image.fromarray(mask).save(d / "mask.png")
    data = (d / "person.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.jpg").write_text("this is a text file, not a picture\n")
    return SimpleNamespace(dir=d, person=d / "person.jpg", garment=d / "garment.jpg", mask=d / "mask.png",
                           in_layout=person)


def tryon_args(f, out, **override):
    args = {"--person": f.person, "--garment": f.garment, "--mask": f.mask, "--out": out, "--steps": 1}
    args.update(override)
    return ["tryon"] + [str(x) for kv in args.items() if kv[1] is not None for x in kv]


@pytest.fixture(scope="module")
def tiny_pipe():
    from ootd_lib.models import build_toy_components

    pipe = OOTDPipeline(**build_toy_components(0), height=128, width=96)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# --- images --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["truncated", "empty", "notes"])
@pytest.mark.parametrize("option", ["--person", "--garment", "--mask"])
def test_tryon_rejects_a_broken_image_in_one_line_before_any_model_loads(files, tmp_path, capsys, no_models,
                                                                          kind, option):
    before = digest(files.dir)
    bad = files.dir / f"{kind}.jpg"
    line = one_error_line(capsys, *tryon_args(files, tmp_path / "r.png", **{option: bad}))
    assert f"image file {bad} is unreadable or corrupt" in line  # the same words `ootd mask` uses
    assert digest(files.dir) == before and not (tmp_path / "r.png").exists()


@pytest.mark.parametrize("kind", ["truncated", "empty", "notes"])
def test_mask_rejects_a_broken_image_in_one_line(files, tmp_path, capsys, kind):
    before = digest(files.dir)
    bad = files.dir / f"{kind}.jpg"
    assert f"image file {bad} is unreadable or corrupt" in one_error_line(capsys, "mask", bad, "--out",
                                                                          tmp_path / "m.png")
    assert digest(files.dir) == before


def test_a_folder_passed_as_the_person_is_called_a_folder(files, tmp_path, capsys, no_models):
    line = one_error_line(capsys, *tryon_args(files, tmp_path / "r.png", **{"--person": files.dir}))
    assert f"{files.dir} is a directory" in line
    assert f"{files.dir} is a directory" in one_error_line(capsys, "mask", files.dir)


def test_16_bit_png_is_scaled_not_clipped_in_tryon_and_in_the_dataset(files, tmp_path, capsys, stub, toy_root):
    grey16 = np.full(SIZE, 30000, np.uint16)  # 30000 / 257 = 116.7 → 117; clipping would give 255 (white)
    cv2.imwrite(str(files.dir / "person16.png"), grey16)
    assert main(tryon_args(files, tmp_path / "r.png", **{"--person": files.dir / "person16.png"})) == 0
    person = np.asarray(stub.calls[-1]["person"])
    assert person.shape == (*SIZE, 3) and (person == 117).all()
    # the dataset reader goes through the same loader (PIL reads by content, whatever the file name says)
    root = shutil.copytree(toy_root, tmp_path / "toy")
    first = sorted((root / "test" / "image").glob("*.jpg"))[0]
    first.write_bytes((files.dir / "person16.png").read_bytes())
    item = VitonHDDataset(root, "test", "paired")[0]
    assert torch.allclose(item["person"], torch.full_like(item["person"], 117 / 127.5 - 1))  # exact: no resize


def test_transparent_garment_is_composited_on_white_in_tryon(files, tmp_path, stub):
    rgba = np.zeros((*SIZE, 4), np.uint8)  # hidden colour black, fully transparent ...
    rgba[:, : SIZE[1] // 2] = (200, 30, 30, 255)  # ... except an opaque red left half
    Image.fromarray(rgba, "RGBA").save(files.dir / "garment.png")
    assert main(tryon_args(files, tmp_path / "r.png", **{"--garment": files.dir / "garment.png"})) == 0
    garment = np.asarray(stub.calls[-1]["garment"])
    assert (garment[:, -1] == 255).all() and (garment[:, 0] == (200, 30, 30)).all()


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_every_transparent_mode_lands_on_white_and_masks_on_black(tmp_path, mode):
    alpha = np.zeros(SIZE, np.uint8)
    alpha[:, :10] = 255
    img = Image.fromarray(np.dstack([np.full(SIZE, 90, np.uint8)] * 3 + [alpha]), "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":  # a palette whose entry 0 is transparent (hidden colour black)
        img = Image.fromarray((alpha > 0).astype(np.uint8), "P")
        img.putpalette([0, 0, 0, 90, 90, 90])
        img.info["transparency"] = 0
    img.save(tmp_path / "x.png")
    rgb, mask = np.asarray(load_rgb(tmp_path / "x.png")), np.asarray(load_mask(tmp_path / "x.png"))
    assert (rgb[:, :10] == 90).all() and (rgb[:, 10:] == 255).all()
    assert (mask[:, 10:] == 0).all()  # a transparent mask pixel keeps the person, it does not repaint


def test_cmyk_and_exif_orientation(tmp_path):
    Image.new("CMYK", (30, 40), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    assert np.abs(np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int) - (255, 0, 0)).max() < 8
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display": a portrait phone photo stored sideways
    Image.new("RGB", (40, 30), "blue").save(tmp_path / "turned.jpg", exif=exif)
    assert load_rgb(tmp_path / "turned.jpg").size == (30, 40)


def test_huge_photos_are_reduced_while_decoding(files, tmp_path, stub, monkeypatch):
    reduced = []
    original_reduce = Image.Image.reduce
    monkeypatch.setattr(Image.Image, "reduce", lambda self, f, *a: reduced.append(self.format) or
                        original_reduce(self, f, *a))
    monkeypatch.setattr(app_module, "LOAD_MAX_SIDE", 64)  # a 400 px photo plays a 6000×8000 one
    big = np.asarray(Image.open(files.person).resize((300, 400)))
    Image.fromarray(big).save(files.dir / "big.jpg", quality=95)
    Image.new("L", (300, 400), 255).save(files.dir / "big_mask.png")
    assert main(tryon_args(files, tmp_path / "r.png", **{"--person": files.dir / "big.jpg",
                                                          "--mask": files.dir / "big_mask.png"})) == 0
    call = stub.calls[-1]
    assert call["person"].size == call["mask"].size == (75, 100)  # 1/4: the longer side stays >= 64
    assert reduced == ["PNG"]  # the JPEG was scaled inside the decoder (draft); only the PNG mask after decoding
    # and the picture is the same one, just smaller (DCT scaling vs a box filter: close, not identical)
    box = np.asarray(Image.fromarray(big).resize((75, 100), Image.BOX)).astype(float)
    assert np.abs(np.asarray(call["person"]).astype(float) - box).mean() < 6


def test_stretched_tiny_and_empty_inputs_get_a_warning_line(files, tmp_path, capsys, stub):
    Image.open(files.person).resize((40, 800)).save(files.dir / "thin.png")
    Image.new("L", (40, 800), 0).save(files.dir / "black.png")
    argv = tryon_args(files, tmp_path / "r.png", **{"--person": files.dir / "thin.png",
                                                    "--mask": files.dir / "black.png"})
    assert main(argv) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("ootd tryon: warning: ") for line in err), err
    assert "person is 40×800 px, far from the model's 3:4" in err[0] and "mask is empty" in err[1]
    Image.new("RGB", (1, 1)).save(files.dir / "dot.png")
    with pytest.warns(OOTDWarning, match="only 1×1 px"):
        pipeline_module.prepare_images(Image.open(files.dir / "dot.png"), (128, 96), "garment")
    with warnings.catch_warnings():
        warnings.simplefilter("error", OOTDWarning)  # a 3:4 picture with a real mask: silent
        StubPipe()(Image.open(files.person), Image.open(files.garment), Image.open(files.mask))


# --- outputs and data loss -----------------------------------------------------------------------------------------
def _unwritable_cases(tmp):
    (tmp / "a_file").write_text("user data")
    cases = [("tryon", tmp / "noext", "must end in .png"), ("tryon", tmp / "a_file" / "r.png", "is a file"),
             ("mask", tmp / "noext", "must end in .png"), ("toy-data", tmp / "a_file" / "sub", "is a file"),
             ("toy-data", tmp / "a_file", "is a file, not a folder")]
    if Path("/proc/self").is_dir():  # Linux: nothing can be created in /proc, not even by root
        cases += [("tryon", Path("/proc/x/r.png"), "files cannot be created in /proc"),
                  ("mask", Path("/proc/x"), "must end in .png"), ("mask", Path("/proc/x/m.png"), "/proc"),
                  ("toy-data", Path("/proc/x"), "files cannot be created in /proc")]
    return cases


@pytest.mark.parametrize("case", range(9))
def test_output_paths_are_checked_before_any_work(files, tmp_path, capsys, no_models, case):
    cases = _unwritable_cases(tmp_path)
    if case >= len(cases):
        pytest.skip("no /proc on this system")
    command, out, words = cases[case]
    before = digest(files.dir, tmp_path / "a_file")
    if command == "tryon":
        argv = tryon_args(files, out)
    elif command == "mask":
        argv = ["mask", files.in_layout, "--out", out]
    else:
        argv = ["toy-data", out, "--train", "0", "--test", "1", "--size", "64x48", "--quiet"]
    line = one_error_line(capsys, *argv)
    assert str(out) in line and words in line
    assert digest(files.dir, tmp_path / "a_file") == before


def test_toy_data_never_overwrites_a_folder_it_did_not_write(tmp_path, capsys):
    user = tmp_path / "my_data"
    user.mkdir()
    (user / "train_pairs.txt").write_text("mine.jpg mine.jpg\n")
    (user / "notes.md").write_text("my notes")
    before = digest(user)
    small = ["--train", "0", "--test", "1", "--size", "64x48", "--quiet"]
    line = one_error_line(capsys, "toy-data", user, *small)
    assert str(user) in line and "--force" in line and digest(user) == before
    # its own folder is rewritten without --force; a foreign one with it
    assert main(["toy-data", str(tmp_path / "toy"), *small]) == 0 and main(["toy-data", str(tmp_path / "toy"),
                                                                            *small]) == 0
    assert main(["toy-data", str(user), *small, "--force"]) == 0
    assert json.loads((user / "toy_info.json").read_text())["generator"] == "ootd_lib.toydata"


# --- weights -------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mini_official(tmp_path_factory):
    from minimodels import write_mini_official

    root = tmp_path_factory.mktemp("weights") / "hd"
    write_mini_official(root, variants=("hd",))
    dc = tmp_path_factory.mktemp("weights") / "dc"
    write_mini_official(dc, variants=("dc",))
    return SimpleNamespace(hd=root, dc=dc)


UNETS = "checkpoints/ootd/ootd_hd/checkpoint-36000"


@pytest.mark.parametrize("damage, file, words", [
    ("truncate", f"{UNETS}/unet_vton/diffusion_pytorch_model.safetensors", "is truncated or incomplete"),
    ("truncate", "checkpoints/ootd/vae/diffusion_pytorch_model.bin", "is truncated or incomplete"),
    ("delete", f"{UNETS}/unet_garm/config.json", "is missing, the folder is incomplete"),
    ("delete", "checkpoints/ootd/vae/config.json", "is missing, the folder is incomplete"),
])
def test_damaged_official_weights_name_the_file(files, tmp_path, capsys, mini_official, damage, file, words):
    root = shutil.copytree(mini_official.hd, tmp_path / "weights")
    target = root / file
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[: target.stat().st_size * 2 // 3])
    else:
        target.unlink()
    before = digest(root, files.dir)
    line = one_error_line(capsys, *tryon_args(files, tmp_path / "r.png"), "--official", root)
    assert file in line and words in line and "huggingface-cli download levihsu/OOTDiffusion" in line
    assert digest(root, files.dir) == before


def test_variant_is_honoured_with_model_and_in_evaluate(files, tmp_path, capsys, mini_official, monkeypatch,
                                                          toy_root):
    from ootd_lib.pipeline import load_pipeline

    assert load_pipeline(model=mini_official.dc).config.model_type == "dc"  # the folder's only variant
    assert load_pipeline(model=mini_official.dc, variant="dc").config.model_type == "dc"
    capsys.readouterr()  # transformers' loading bars
    line = one_error_line(capsys, *tryon_args(files, tmp_path / "r.png"), "--model", mini_official.dc,
                          "--variant", "hd")
    assert f"{mini_official.dc} holds only the dc variant" in line and "--variant dc" in line

    class Asked(Exception):
        pass

    def record(*args, **kwargs):
        raise Asked(kwargs.get("variant", args[2] if len(args) > 2 else None))

    monkeypatch.setattr(pipeline_module, "load_pipeline", record)
    with pytest.raises(Asked, match="^dc$"):
        main(tryon_args(files, tmp_path / "r.png") + ["--model", str(mini_official.dc), "--variant", "dc"])
    with pytest.raises(Asked, match="^dc$"):
        main(["evaluate", "--model", str(mini_official.dc), "--variant", "dc", "--data", str(toy_root),
              "--out", str(tmp_path / "res.json")])


def test_processor_loads_without_the_torchvision_warning(mini_official, tmp_path):
    script = ("import sys; from PIL import Image; from ootd_lib.pipeline import OOTDPipeline\n"
              "pipe = OOTDPipeline.from_official(sys.argv[1])\n"
              "pipe.feature_extractor(images=[Image.new('RGB', (48, 64))], return_tensors='pt')\n"
              "pipe.save_pretrained(sys.argv[2]); OOTDPipeline.from_pretrained(sys.argv[2])\n")
    run = subprocess.run([sys.executable, "-c", script, str(mini_official.hd), str(tmp_path / "saved")],
                         capture_output=True, text=True, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                                                              "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert "requires torchvision" not in run.stderr and "Traceback" not in run.stderr


# --- data ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [[1, 2, 3], {"people": [{"pose_keypoints_2d": [0.5] * 74}]}])
def test_bad_openpose_json_is_a_data_error_naming_the_file(toy_root, tmp_path, capsys, content):
    root = shutil.copytree(toy_root, tmp_path / "toy")
    kp = sorted((root / "test" / "openpose_json").glob("*.json"))[0]
    kp.write_text(json.dumps(content))
    with pytest.raises(DataError, match=kp.name):
        VitonHDDataset(root, "test", "paired")[0]
    person = root / "test" / "image" / kp.name.replace("_keypoints.json", ".jpg")
    assert str(kp) in one_error_line(capsys, "mask", person, "--out", tmp_path / "m.png")


@pytest.mark.parametrize("content", [[[1, 2, 1, 0]] * 18, {"keypoints": [[1, 2, 1, 0]] * 17}])
def test_bad_dresscode_keypoints_are_a_data_error_naming_the_file(dc_root, tmp_path, content):
    root = shutil.copytree(dc_root, tmp_path / "dc")
    kp = next((root / "upper_body" / "keypoints").glob("*.json"))
    kp.write_text(json.dumps(content))
    with pytest.raises(DataError, match=kp.name):
        DressCodeDataset(root, "test", "paired", categories="upper_body")[0]


def test_an_hd_model_on_lower_body_or_dress_code_says_it_was_trained_on_upper_body(tiny_pipe, files, dc_root,
                                                                                   tmp_path, capsys, monkeypatch):
    person, garment, mask = Image.open(files.person), Image.open(files.garment), Image.open(files.mask)
    call = dict(num_inference_steps=1, image_guidance_scale=1.0, output_type="latent")
    with pytest.warns(OOTDWarning, match="hd variant was trained on upper_body only"):
        tiny_pipe(person, garment, mask, category="lower_body", **call)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OOTDWarning)  # upper body: not a word
        tiny_pipe(person, garment, mask, category="upper_body", **call)
    monkeypatch.setattr(pipeline_module, "load_pipeline", lambda *a, **k: tiny_pipe)
    # Dress Code's first pairs: one upper_body, one lower_body
    assert main(["evaluate", "--data", str(dc_root), "--layout", "dresscode", "--pairing", "paired", "--steps", "1",
                 "--scale", "1", "--limit", "2", "--out", str(tmp_path / "res.json")]) == 0
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if line.startswith("ootd evaluate: warning:")]
    assert "Traceback" not in err, err
    assert warned == ["ootd evaluate: warning: the hd variant was trained on upper_body only (VITON-HD); lower_body "
                      "and dresses try-ons need the dc variant (--variant dc)"], err


# --- config and training ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key, value, words", [
    ("learning_rate", "fast", "learning_rate='fast' must be a number"),
    ("train_batch_size", "two", "train_batch_size='two' must be an integer"),
    ("resolution", [64], "resolution=[64] must be a list of 2 integers"),
    ("checkpointing_steps", 0, "checkpointing_steps=0 must be >= 1"),
    ("log_every", 0, "log_every=0 must be >= 1"),
    ("max_train_steps", -5, "max_train_steps=-5 must be >= 1"),
])
def test_bad_config_values_are_refused_at_load(tmp_path, capsys, monkeypatch, key, value, words):
    import ootd_lib.training as training

    def trap(*a, **k):
        raise AssertionError("training started with an invalid config")

    monkeypatch.setattr(training, "train", trap)
    path = tmp_path / "bad.yaml"
    path.write_text(json.dumps({"profile": "toy", "data_root": str(tmp_path / "data"),
                                "output_dir": str(tmp_path / "run"), key: value}))  # JSON is YAML
    before = digest(path)
    line = one_error_line(capsys, "train", "--config", path)
    assert str(path) in line and words in line
    with pytest.raises(ConfigError, match=words.replace("[", r"\[").replace("]", r"\]")):
        Config.for_profile("toy", **{key: value})
    assert digest(path) == before and not (tmp_path / "data").exists() and not (tmp_path / "run").exists()


def test_a_missing_toy_data_root_is_announced(tmp_path, capsys):
    from ootd_lib.data import build_dataset

    cfg = Config.for_profile("toy", data_root=str(tmp_path / "toy_vitonhdd"), toy_train=1, toy_test=0,
                             resolution=SIZE)
    assert len(build_dataset(cfg)) == 1
    assert f"data_root {tmp_path / 'toy_vitonhdd'} does not exist: generating a toy wardrobe there" in \
        capsys.readouterr().out


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.safetensors"])
def test_resume_from_a_truncated_checkpoint_names_it_and_the_previous_one(tmp_path, damaged):
    from ootd_lib.training import load_checkpoint, save_checkpoint

    def parts(seed):
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 3)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        model(torch.randn(2, 4)).sum().backward()
        opt.step()
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    ckpts = tmp_path / "run" / "checkpoints"
    for step in (1, 2):
        save_checkpoint(ckpts / f"checkpoint-{step}", *parts(step), dict(step=step, nonfinite=0))
    cut = ckpts / "checkpoint-2" / damaged
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    model, opt, sched = parts(7)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match=rf"{re.escape(str(cut))}.*truncated.*--resume "
                                            rf"{re.escape(str(ckpts / 'checkpoint-1'))}"):
        load_checkpoint(ckpts / "checkpoint-2", model, opt, sched)
    # nothing was restored from the broken checkpoint: every file is read before the first one is applied
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())  # same tensors, untouched
    assert load_checkpoint(ckpts / "checkpoint-1", model, opt, sched)["step"] == 1


# --- command-line values -----------------------------------------------------------------------------------------
def test_counts_must_be_at_least_one(toy_root, tmp_path, capsys, no_models):
    for pairs in ("0", "-3"):
        line = one_error_line(capsys, "demo", "--pairs", pairs, "--data", tmp_path / "demo_data",
                              "--out", tmp_path / "demo.png")
        assert f"--pairs must be >= 1, got {pairs}" in line
    assert not (tmp_path / "demo_data").exists()  # refused before the toy test set is generated
    for limit in ("-1", "0"):
        line = one_error_line(capsys, "evaluate", "--data", toy_root, "--limit", limit, "--out", tmp_path / "r.json")
        assert f"--limit must be >= 1, got {limit}" in line
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("device, words", [
    ("cuda", "CUDA is not available on this machine; use --device cpu"),
    ("mps", "MPS (Apple-silicon GPU) is not available on this machine; use --device cpu"),
    ("foo", "unknown device 'foo'; use --device cpu"),
])
def test_a_device_this_machine_lacks_is_one_line(files, tmp_path, capsys, no_models, device, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    if device == "mps" and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    assert words in one_error_line(capsys, *tryon_args(files, tmp_path / "r.png"), "--device", device)
    assert words in one_error_line(capsys, "mask", files.in_layout, "--device", device, "--out", tmp_path / "m.png")


def test_readme_promise_links_this_matrix():
    readme = (REPO / "README.md").read_text()
    assert "clear errors" in readme and "tests/test_bad_input.py" in readme


def test_loader_errors_are_both_input_and_data_errors(tmp_path):
    # CLI callers catch InputError, dataset callers DataError: one loader serves both
    with pytest.raises(ImageFileError) as info:
        load_rgb(tmp_path / "missing.png")
    assert isinstance(info.value, DataError) and "missing.png does not exist" in str(info.value)
