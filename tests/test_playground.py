"""The try-on playground driven programmatically: set widget values, click buttons, check what the app did.

Most tests use a recording stand-in pipeline (fast, and it shows exactly what the app passed on); one test runs the
real toy pipeline through the app and checks the result equals a direct pipeline call with the same settings.
"""

import datetime
import io
import threading

import numpy as np
import pytest
import torch
from PIL import Image

from ootd_lib.errors import InputError
from ootd_lib.playground import TryOnPlayground, gallery_from_folder, mask_preview, read_upload
from ootd_lib.toydata import generate_toy_dataset


@pytest.fixture(scope="module")
def gallery_root(tmp_path_factory):
    return generate_toy_dataset(tmp_path_factory.mktemp("gallery"), "vitonhd", n_train=0, n_test=3, seed=1,
                                progress=False)


class RecordingPipe:
    """Duck-typed OOTDPipeline: records each call, runs ``unet_vton`` once per step (as the real one does) and
    returns the garment colour inside the mask; ``gate`` (an Event) lets a test hold a run in flight."""

    def __init__(self, model_type="hd"):
        self.config = type("Config", (), {"model_type": model_type})()
        self.unet_vton = torch.nn.Identity()
        self.calls, self.gate = [], None

    def __call__(self, person, garment, mask, category, num_inference_steps, image_guidance_scale,
                 num_images_per_prompt, generator, paste_back=False):
        self.calls.append(dict(person=person, garment=garment, mask=mask, category=category,
                               steps=num_inference_steps, scale=image_guidance_scale, n=num_images_per_prompt,
                               seed=generator.initial_seed(), paste_back=paste_back))
        if self.gate is not None:
            assert self.gate.wait(10)
        for _ in range(num_inference_steps):
            self.unet_vton(torch.zeros(1))
        p, m = np.asarray(person, np.float32), np.asarray(mask)[..., None] >= 128
        out = np.where(m, np.asarray(garment, np.float32).mean((0, 1)), p).astype(np.uint8)
        return type("Out", (), {"images": [Image.fromarray(out)] * num_images_per_prompt})()


def upload(name, content: bytes):
    """A FileUpload value as ipywidgets 8 sets it from the browser."""
    return ({"name": name, "type": "", "size": len(content), "content": memoryview(content),
             "last_modified": datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)},)


def image_bytes(img, fmt="PNG"):
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def test_gallery_from_folder(gallery_root, tmp_path):
    g = gallery_from_folder(gallery_root, limit=2)
    assert [p.parent.name for p in g["persons"]] == ["image", "image"]
    assert [p.parent.name for p in g["garments"]] == ["cloth", "cloth"]
    with pytest.raises(InputError, match="ootd toy-data"):
        gallery_from_folder(tmp_path)


def test_pick_and_run(gallery_root):
    pipe = RecordingPipe()
    app = TryOnPlayground(pipe, gallery=gallery_root, steps=5, seed=3)
    assert app.person_buttons[0].button_style == "info" and app.mask_view.value  # first pair preselected, mask shown
    app.person_buttons[2].click()
    app.garment_buttons[1].click()
    assert [b.button_style for b in app.person_buttons] == ["", "", "info"]
    app.steps.value, app.scale.value, app.seed.value, app.num_images.value = 4, 1.5, 11, 2
    app.run_button.click()
    assert app.wait(10)
    call = pipe.calls[-1]
    assert (call["steps"], call["scale"], call["n"], call["seed"], call["category"]) == (4, 1.5, 2, 11, "upper_body")
    assert call["paste_back"] is False  # the released behaviour by default
    app.paste_back.value = True
    app.run_button.click()
    assert app.wait(10) and pipe.calls[-1]["paste_back"] is True
    assert call["person"].size == (192, 256) and call["mask"].size == (192, 256)
    garment = Image.open(app.gallery["garments"][1]).convert("RGB")
    assert np.array_equal(np.asarray(call["garment"]), np.asarray(garment))
    assert app.progress.value == app.progress.max == 4  # one tick per denoising step (of the last run)
    assert len(app.results) == 2 and len(app.outputs.children) == 2
    assert "ootd-result" in app.outputs.children[0]._dom_classes
    assert app.status.startswith("done: 2 image(s)") and not app.run_button.disabled


def test_mask_follows_category_and_model_type(gallery_root):
    app = TryOnPlayground(RecordingPipe(), gallery=gallery_root)
    upper = np.asarray(app._mask) > 0
    app.category.value = "lower_body"
    lower = np.asarray(app._mask) > 0
    assert upper.any() and lower.any() and not np.array_equal(upper, lower)
    # the lower-body mask lies lower in the picture
    assert np.argwhere(lower)[:, 0].mean() > np.argwhere(upper)[:, 0].mean()
    app.category.value = "upper_body"
    assert np.array_equal(np.asarray(app._mask) > 0, upper)
    app.model_type.value = "dc"  # Dress Code rules mask the same category differently
    assert app.error is None and not np.array_equal(np.asarray(app._mask) > 0, upper)


def test_preview_modes(gallery_root):
    app = TryOnPlayground(RecordingPipe(), gallery=gallery_root)
    overlay = app.mask_view.value
    app.preview_mode.value = "masked"
    assert app.mask_view.value != overlay
    grey = mask_preview(app._person, app._mask, "masked")
    m = np.asarray(app._mask) >= 128
    assert (grey[m] == 127).all() and np.array_equal(grey[~m], np.asarray(app._person)[~m])


def test_bad_upload_shows_error_and_app_keeps_working(gallery_root):
    pipe = RecordingPipe()
    app = TryOnPlayground(pipe, gallery=gallery_root, steps=2)
    app.person_upload.value = upload("notes.txt", b"this is not an image")
    # the same loader and message as the CLI's (`ootd tryon` / `ootd mask`: "image file … is unreadable or corrupt")
    assert app.status.startswith("error: uploaded person 'notes.txt' is unreadable or corrupt (not in an image format")
    assert "PNG or JPEG" in app.status and isinstance(app.error, InputError)
    truncated = image_bytes(Image.new("RGB", (96, 128), "red"), "JPEG")[:200]
    app.garment_upload.value = upload("cut.jpg", truncated)
    assert "'cut.jpg' is unreadable or corrupt" in app.status
    app.garment_upload.value = upload("tiny.png", image_bytes(Image.new("RGB", (8, 8))))
    assert "only 8×8 px" in app.status
    # the gallery choice is untouched and a run still works
    app.run(sync=True)
    assert app.status.startswith("done") and len(pipe.calls) == 1


def test_uploads_go_through_the_file_loader_and_warnings_reach_the_status_line(gallery_root):
    import cv2

    pipe = RecordingPipe()
    app = TryOnPlayground(pipe, gallery=gallery_root, steps=1)
    app.garment_upload.value = upload("empty.png", b"")
    assert app.status.startswith("error: uploaded garment 'empty.png' is unreadable or corrupt")
    # a 16-bit grayscale PNG is scaled to 8 bits (a plain convert("RGB") clips it to white)
    ok, png16 = cv2.imencode(".png", np.full((128, 96), 30000, np.uint16))
    app.garment_upload.value = upload("grey16.png", png16.tobytes())
    assert app.error is None and (np.asarray(app._garment) == 117).all()  # round(30000 / 257)
    # an hd model asked for another category says what `ootd tryon` says
    app.category.value = "lower_body"
    app.run(sync=True)
    assert app.status.startswith("done") and "warning: the hd variant was trained on upper_body only" in app.status
    assert np.array_equal(np.asarray(pipe.calls[-1]["garment"]), np.asarray(app._garment))


def test_uploaded_person_needs_a_mask(gallery_root):
    pipe = RecordingPipe()
    app = TryOnPlayground(pipe, gallery=gallery_root, steps=1)
    person = Image.new("RGBA", (90, 120), (0, 0, 255, 0))  # transparent → composited on white
    app.person_upload.value = upload("me.png", image_bytes(person))
    assert "upload its mask" in app.status
    assert app.run() is None and app.status.startswith("error: no mask")
    mask = Image.new("L", (45, 60), 0)
    mask.paste(255, (10, 10, 30, 40))
    app.mask_upload.value = upload("mask.png", image_bytes(mask))
    assert app._mask.size == (90, 120)  # resized to the person
    app.run(sync=True)
    call = pipe.calls[-1]
    assert np.asarray(call["person"])[0, 0].tolist() == [255, 255, 255]
    assert (np.asarray(call["mask"]) == 255).sum() == 40 * 60
    garment = Image.new("RGB", (96, 128), (0, 200, 0))
    app.garment_upload.value = upload("g.jpg", image_bytes(garment, "JPEG"))
    app.run(sync=True)
    assert np.abs(np.asarray(app.results[0])[50, 40].astype(int) - [0, 200, 0]).max() < 8


def test_run_does_not_block_and_refuses_a_second_run(gallery_root):
    pipe = RecordingPipe()
    pipe.gate = threading.Event()
    app = TryOnPlayground(pipe, gallery=gallery_root, steps=1)
    thread = app.run()  # returns at once although the pipeline is held
    assert app.running and app.run_button.disabled and app.status.startswith("running")
    assert app.run() is thread and app.status.startswith("busy")
    pipe.gate.set()
    assert app.wait(10) and len(pipe.calls) == 1 and not app.run_button.disabled


def test_pipeline_error_reaches_status_line(gallery_root):
    class Broken(RecordingPipe):
        def __call__(self, **kwargs):
            raise InputError("category 'hat' must be one of ...")

    app = TryOnPlayground(Broken(), gallery=gallery_root)
    app.run(sync=True)
    assert app.status == "error: category 'hat' must be one of ..." and not app.run_button.disabled


def test_model_type_picks_the_pipeline(gallery_root):
    hd, dc = RecordingPipe("hd"), RecordingPipe("dc")
    app = TryOnPlayground({"hd": hd, "dc": dc}, gallery=gallery_root, steps=1)
    assert app.model_type.options == ("hd", "dc")
    app.model_type.value = "dc"
    app.run(sync=True)
    assert len(dc.calls) == 1 and not hd.calls


def test_real_toy_pipeline_matches_direct_call(gallery_root):
    from ootd_lib.models import build_toy_components
    from ootd_lib.pipeline import OOTDPipeline, compute_mask

    pipe = OOTDPipeline(**build_toy_components(0))
    pipe.set_progress_bar_config(disable=True)
    app = TryOnPlayground(pipe, gallery=gallery_root, steps=2, scale=1.0, seed=5)
    app.garment_buttons[1].click()
    app.run(sync=True)
    assert app.status.startswith("done"), app.status
    assert app.progress.value == 2
    person = Image.open(app.gallery["persons"][0]).convert("RGB")
    garment = Image.open(app.gallery["garments"][1]).convert("RGB")
    mask = compute_mask(person, "upper_body", "hd", person_path=app.gallery["persons"][0])
    direct = pipe(person, garment, mask, num_inference_steps=2, image_guidance_scale=1.0,
                  generator=torch.Generator().manual_seed(5)).images[0]
    assert app.results[0].size == (96, 128)
    assert np.array_equal(np.asarray(app.results[0]), np.asarray(direct))


def test_read_upload_rejects_empty():
    with pytest.raises(InputError, match="no garment uploaded"):
        read_upload((), "garment")
