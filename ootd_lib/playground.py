"""A try-on playground in ipywidgets: pick a person and a garment, look at the mask, press Run.

``TryOnPlayground(pipe, gallery=...)`` builds one widget (``app.widget``, or just display ``app``):

* **pickers** — thumbnails of a toy / dataset gallery (``gallery``: a VITON-HD or Dress Code folder, or a dict of
  image paths) with a button each ("person 0", "garment 3", ...), plus a ``FileUpload`` for your own person,
  garment or mask image;
* **settings** — category, model type (mask rules), steps, guidance scale, seed, number of images;
* **mask preview** — the agnostic mask over the person, or the masked person the model actually sees;
* **Run** — the pipeline runs in a background thread (the page stays responsive) and a progress bar counts the
  denoising steps; the results land in an output gallery;
* **status line** — what happened, or what went wrong and how to fix it (a bad upload never breaks the widget).

The mask of a gallery person comes from the parse map and keypoints stored next to it
(:func:`ootd_lib.data.find_annotations`); of an uploaded person from the released estimators (``parser=``, ``pose=``)
or from an uploaded mask. Everything a test needs is public: the pickers' buttons, ``run(sync=True)``/``wait()``,
``results`` (PIL images) and ``status``.
"""

from __future__ import annotations

import html
import io
import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import CATEGORIES, MODEL_TYPES
from .data import LOAD_MAX_SIDE, load_mask, load_rgb
from .errors import InputError, OOTDError

__all__ = ["TryOnPlayground", "gallery_from_folder", "read_upload", "png_bytes"]

THUMB_WIDTH = 72  # px of a gallery thumbnail
MIN_SIDE = 32  # smallest side we accept


# --- helpers (plain functions, testable without widgets) -------------------------------------------------------------
def gallery_from_folder(root, split: str = "test", limit: int = 8) -> dict[str, list[Path]]:
    """Person and garment image paths of a VITON-HD (``<split>/image``, ``<split>/cloth``) or Dress Code
    (``<category>/images/*_0`` / ``*_1``) folder, at most ``limit`` of each, sorted by name."""
    root = Path(root)
    if (root / split / "image").is_dir():
        persons = sorted((root / split / "image").glob("*.jpg"))
        garments = sorted((root / split / "cloth").glob("*.jpg"))
    else:
        images = sorted(root.glob("*/images/*.jpg"))
        persons = [p for p in images if p.stem.endswith("_0")]
        garments = [p for p in images if p.stem.endswith("_1")]
    if not persons or not garments:
        raise InputError(f"gallery folder {root} holds no VITON-HD ({split}/image, {split}/cloth) or Dress Code "
                         "(<category>/images) pictures; generate one with `ootd toy-data` or pass a dict "
                         "{'persons': [...], 'garments': [...]}")
    return {"persons": persons[:limit], "garments": garments[:limit]}


def read_upload(upload, what: str = "image", mask: bool = False) -> Image.Image:
    """The first file of a ``FileUpload`` value (ipywidgets 8: tuple of dicts with ``name`` and ``content``) as an RGB
    PIL image (``mask``: an 'L' mask), read by the same loader as files (:func:`ootd_lib.data.load_rgb`), so the
    messages are the CLI's. Anything undecodable, or an absurdly small picture, raises :class:`InputError`."""
    if not upload:
        raise InputError(f"no {what} uploaded")
    item = upload[0]
    name = item.get("name", "?")
    load = load_mask if mask else load_rgb
    img = load(io.BytesIO(bytes(item["content"])), LOAD_MAX_SIDE, label=f"uploaded {what} {name!r}")
    if min(img.size) < MIN_SIDE:
        raise InputError(f"uploaded {what} {name!r} is only {img.width}×{img.height} px; use at least "
                         f"{MIN_SIDE} px per side (a 3:4 portrait works best)")
    return img


def png_bytes(img, width: int | None = None, fmt: str = "PNG") -> bytes:
    """PIL image / uint8 array → PNG (or ``fmt``) bytes for ``widgets.Image`` (optionally scaled to ``width`` px)."""
    img = Image.fromarray(img) if isinstance(img, np.ndarray) else img
    if width is not None and img.width != width:
        img = img.resize((width, round(img.height * width / img.width)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def mask_preview(person: Image.Image, mask: Image.Image, mode: str = "overlay") -> np.ndarray:
    """``overlay``: the mask in red over the person; ``masked``: the person with the mask painted grey 127, as the
    model sees it."""
    p = np.asarray(person.convert("RGB"), dtype=np.float32)
    m = (np.asarray(mask.convert("L")) >= 128)[..., None]
    if mode == "masked":
        out = np.where(m, 127.0, p)
    else:
        out = np.where(m, 0.55 * p + 0.45 * np.array([255, 0, 0], np.float32), p)
    return out.round().clip(0, 255).astype(np.uint8)


# --- the app ----------------------------------------------------------------------------------------------------------
class TryOnPlayground:
    """ipywidgets try-on app around an :class:`~ootd_lib.pipeline.OOTDPipeline`.

    Args:
        pipe: the pipeline, or a dict ``{"hd": pipe_hd, "dc": pipe_dc}`` (then the model-type control picks the weights;
            with one pipeline it only picks the mask rules and the prompt follows the loaded weights).
        gallery: folder (see :func:`gallery_from_folder`) or ``{"persons": [paths], "garments": [paths]}``; ``None``
            for uploads only.
        parser, pose: released estimators (``HumanParser``, ``OpenPoseBody``) to mask uploaded persons; without them an
            uploaded person needs an uploaded mask.
        steps, scale, seed: initial control values.
        lora, lora_scale: a LoRA adapter folder (a training run's ``lora/``) loaded at ``lora_scale`` into the pipeline
            (of a dict: the one of the adapter's variant) with :meth:`~ootd_lib.pipeline.OOTDPipeline.load_lora`.
    """

    def __init__(self, pipe, gallery=None, parser=None, pose=None, steps: int = 20, scale: float = 2.0, seed: int = 0,
                 lora=None, lora_scale: float = 1.0):
        import ipywidgets as w

        self.pipes = dict(pipe) if isinstance(pipe, dict) else None
        self.pipe = pipe if self.pipes is None else next(iter(self.pipes.values()))
        if lora is not None:
            self._load_lora(lora, lora_scale)
        self.parser, self.pose = parser, pose
        if isinstance(gallery, (str, Path)):
            gallery = gallery_from_folder(gallery)
        self.gallery = {"persons": [], "garments": []} if gallery is None else {
            k: [Path(p) for p in gallery.get(k, [])] for k in ("persons", "garments")}
        self.results: list[Image.Image] = []
        self.error: OOTDError | Exception | None = None
        self._thread: threading.Thread | None = None
        self._person = self._garment = self._mask = None  # current PIL images (mask: 'L', person's size)
        self._person_path: Path | None = None
        self._mask_from_upload = False  # an uploaded mask wins over the computed one until the person changes

        # pickers: thumbnails with a "use" button each, then an upload
        self.person_buttons = self._thumb_buttons(self.gallery["persons"], "person", self._pick_person)
        self.garment_buttons = self._thumb_buttons(self.gallery["garments"], "garment", self._pick_garment)
        self.person_upload = w.FileUpload(accept="image/*", multiple=False, description="upload person",
                                        layout=w.Layout(width="auto"))
        self.garment_upload = w.FileUpload(accept="image/*", multiple=False, description="upload garment",
                                        layout=w.Layout(width="auto"))
        self.mask_upload = w.FileUpload(accept="image/*", multiple=False, description="upload mask",
                                        layout=w.Layout(width="auto"))
        self.person_upload.observe(lambda ch: self._guarded(self._upload_person), "value")
        self.garment_upload.observe(lambda ch: self._guarded(self._upload_garment), "value")
        self.mask_upload.observe(lambda ch: self._guarded(self._upload_mask), "value")

        # settings
        model_types = tuple(self.pipes) if self.pipes else MODEL_TYPES
        self.category = w.Dropdown(options=CATEGORIES, value="upper_body", description="category")
        self.model_type = w.Dropdown(options=model_types, value=self._default_model_type(model_types),
                                     description="model type")
        self.steps = w.IntSlider(value=steps, min=1, max=50, description="steps")
        self.scale = w.FloatSlider(value=scale, min=1.0, max=5.0, step=0.25, description="guidance")
        self.seed = w.IntText(value=seed, description="seed")
        self.num_images = w.IntSlider(value=1, min=1, max=4, description="images")
        self.paste_back = w.Checkbox(value=False, description="paste back",
                                     tooltip="blend the result into the original photo outside the mask")
        self.preview_mode = w.ToggleButtons(options=[("mask", "overlay"), ("masked person", "masked")],
                                            value="overlay", description="preview")
        for control in (self.category, self.model_type):
            control.observe(lambda ch: self._guarded(self._update_mask), "value")
        self.preview_mode.observe(lambda ch: self._show_preview(), "value")

        # previews, run, outputs, status
        self.person_view, self.garment_view, self.mask_view = (w.Image(format="png", width=144) for _ in range(3))
        self.run_button = w.Button(description="Run try-on", button_style="success", icon="play")
        self.run_button.on_click(lambda b: self.run())
        self.progress = w.IntProgress(value=0, min=0, max=1, description="progress")
        self.outputs = w.HBox([])
        self.outputs.add_class("ootd-outputs")
        self.status_line = w.HTML()
        self.status_line.add_class("ootd-status")
        self.widget = self._layout(w)

        if self.gallery["persons"]:
            self._guarded(lambda: self._pick_person(0))
        if self.gallery["garments"]:
            self._guarded(lambda: self._pick_garment(0))
        if self.error is None:
            self._set_status("choose a person and a garment, then press Run")

    def _load_lora(self, path, scale: float):
        """The adapter into the pipeline of its variant (one pipeline: that one, which refuses another variant)."""
        from .lora import read_adapter

        variant = read_adapter(path)["model_type"]
        if self.pipes is not None and variant not in self.pipes:
            raise InputError(f"LoRA adapter {path} was trained on the {variant} variant, but the playground holds "
                             f"{sorted(self.pipes)}; add a {variant} pipeline or pass another adapter")
        (self.pipes[variant] if self.pipes is not None else self.pipe).load_lora(path, scale=scale)

    def _default_model_type(self, options) -> str:
        mt = getattr(getattr(self.pipe, "config", None), "model_type", "hd")
        return mt if mt in options else options[0]

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- layout --------------------------------------------------------------------------------------------------------
    def _thumb_buttons(self, paths, what, callback) -> list:
        import ipywidgets as w

        buttons = []
        for i, p in enumerate(paths):
            b = w.Button(description=f"{what} {i}", tooltip=str(p), layout=w.Layout(width="104px"))
            b.on_click(lambda _, i=i: self._guarded(lambda: callback(i)))
            buttons.append(b)
        return buttons

    def _strip(self, w, paths, buttons):
        # JPEG thumbnails: a notebook saved with widget state stays small
        thumbs = [w.Image(value=png_bytes(load_rgb(p), THUMB_WIDTH, "JPEG"), format="jpeg")
                  for p in paths]
        cells = [w.VBox([t, b], layout=w.Layout(align_items="center")) for t, b in zip(thumbs, buttons)]
        return w.HBox(cells, layout=w.Layout(flex_flow="row wrap"))

    def _layout(self, w):
        title = lambda text: w.HTML(f"<b>{text}</b>")  # noqa: E731
        pickers = w.VBox([title("person"), self._strip(w, self.gallery["persons"], self.person_buttons),
                          w.HBox([self.person_upload, self.mask_upload]),
                          title("garment"), self._strip(w, self.gallery["garments"], self.garment_buttons),
                          w.HBox([self.garment_upload])])
        settings = w.VBox([self.category, self.model_type, self.steps, self.scale, self.seed, self.num_images,
                           self.paste_back])
        previews = w.HBox([w.VBox([title("person"), self.person_view]), w.VBox([title("garment"), self.garment_view]),
                           w.VBox([w.HBox([title("mask preview")]), self.mask_view, self.preview_mode])])
        run = w.HBox([self.run_button, self.progress])
        return w.VBox([pickers, w.HBox([settings, previews]), run, self.status_line,
                       title("results"), self.outputs])

    # -- status --------------------------------------------------------------------------------------------------------
    @property
    def status(self) -> str:
        """The status line as plain text."""
        return html.unescape(self.status_line.value.split(">", 1)[-1].rsplit("<", 1)[0])

    def _set_status(self, text: str, error: bool = False):
        colour = "#b00020" if error else "#1b5e20"
        self.status_line.value = f'<span style="color:{colour}">{html.escape(text)}</span>'

    def _guarded(self, action):
        """Run a widget callback; a user error goes to the status line instead of a traceback in the log."""
        try:
            action()
            self.error = None
        except Exception as exc:  # noqa: BLE001 - every failure must reach the status line, not kill the widget
            self.error = exc
            kind = "error" if isinstance(exc, OOTDError) else f"unexpected {type(exc).__name__}"
            self._set_status(f"{kind}: {exc}", error=True)

    # -- picking -------------------------------------------------------------------------------------------------------
    def _highlight(self, buttons, chosen):
        for i, b in enumerate(buttons):
            b.button_style = "info" if i == chosen else ""

    def _pick_person(self, i: int):
        self._person_path = self.gallery["persons"][i]
        self._person = load_rgb(self._person_path)
        self._highlight(self.person_buttons, i)
        self.person_view.value = png_bytes(self._person, 144)
        self._mask_from_upload = False
        self._update_mask()
        self._set_status(f"person: {self._person_path.name}")

    def _pick_garment(self, i: int):
        path = self.gallery["garments"][i]
        self._garment = load_rgb(path)
        self._highlight(self.garment_buttons, i)
        self.garment_view.value = png_bytes(self._garment, 144)
        self._set_status(f"garment: {path.name}")

    def _upload_person(self):
        img = read_upload(self.person_upload.value, "person")
        self._person, self._person_path, self._mask = img, None, None
        self._highlight(self.person_buttons, None)
        self.person_view.value = png_bytes(img, 144)
        self._mask_from_upload = False
        self._update_mask()
        self._set_status(f"person: uploaded {self.person_upload.value[0]['name']}"
                         + ("" if self._mask is not None else " — now upload its mask (white = repaint)"))

    def _upload_garment(self):
        img = read_upload(self.garment_upload.value, "garment")
        self._garment = img
        self._highlight(self.garment_buttons, None)
        self.garment_view.value = png_bytes(img, 144)
        self._set_status(f"garment: uploaded {self.garment_upload.value[0]['name']}")

    def _upload_mask(self):
        if self._person is None:
            raise InputError("choose or upload the person before its mask")
        mask = read_upload(self.mask_upload.value, "mask", mask=True)
        # a mask drawn at another resolution still marks the same region: resize it to the person
        self._mask = mask.resize(self._person.size, Image.NEAREST).point(lambda v: 255 if v >= 128 else 0)
        self._mask_from_upload = True
        self._show_preview()
        self._set_status(f"mask: uploaded {self.mask_upload.value[0]['name']}")

    def _update_mask(self):
        """Recompute the agnostic mask for the current person, category and model type."""
        from .pipeline import compute_mask

        if self._person is None or self._mask_from_upload:
            return self._show_preview()
        self._mask = None
        if self._person_path is not None or (self.parser is not None and self.pose is not None):
            self._mask = compute_mask(self._person, self.category.value, self.model_type.value, parser=self.parser,
                                      pose=self.pose, person_path=self._person_path)
        self._show_preview()

    def _show_preview(self):
        if self._person is None or self._mask is None:
            self.mask_view.value = b""
            return
        self.mask_view.value = png_bytes(mask_preview(self._person, self._mask, self.preview_mode.value), 144)

    # -- running -------------------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _current_pipe(self):
        return self.pipes[self.model_type.value] if self.pipes else self.pipe

    def _check_ready(self):
        if self._person is None:
            raise InputError("no person: pick a thumbnail or upload a photo")
        if self._garment is None:
            raise InputError("no garment: pick a thumbnail or upload an in-shop garment photo (3:4, white background)")
        if self._mask is None:
            raise InputError("no mask for the uploaded person: upload a mask (white = repaint) or start the app with "
                             "the released estimators (parser=..., pose=...)")

    def run(self, sync: bool = False):
        """Start a try-on with the current choices (in a background thread unless ``sync``); returns the thread."""
        if self.running:
            self._set_status("busy: a try-on is already running")
            return self._thread
        try:
            self._check_ready()
        except OOTDError as exc:
            self.error = exc
            self._set_status(f"error: {exc}", error=True)
            return None
        args = dict(person=self._person, garment=self._garment, mask=self._mask, category=self.category.value,
                    num_inference_steps=int(self.steps.value), image_guidance_scale=float(self.scale.value),
                    num_images_per_prompt=int(self.num_images.value), paste_back=bool(self.paste_back.value),
                    generator=torch.Generator("cpu").manual_seed(int(self.seed.value)))
        self.run_button.disabled = True
        self.progress.value, self.progress.max = 0, args["num_inference_steps"]
        self._set_status(f"running {args['num_inference_steps']} steps…")
        # the pipeline would block the kernel (and with it every widget) for the whole call: run it beside it
        pipe = self._current_pipe()
        note = ""  # what the CLI prints as a warning line
        if getattr(getattr(pipe, "config", None), "model_type", None) == "hd" and args["category"] != "upper_body":
            from .pipeline import HD_UPPER_BODY_ONLY

            note = f"; warning: {HD_UPPER_BODY_ONLY}"
        self._thread = threading.Thread(target=self._work, args=(pipe, args, note), daemon=True)
        self._thread.start()
        if sync:
            self.wait()
        return self._thread

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the running try-on ends; ``False`` if it is still running after ``timeout`` seconds."""
        if self._thread is not None:
            self._thread.join(timeout)
        return not self.running

    def _work(self, pipe, args, note=""):
        # one vton-UNet forward per denoising step (guidance doubles the batch, not the calls): count them
        hook = pipe.unet_vton.register_forward_hook(lambda *_: setattr(self.progress, "value", self.progress.value + 1))
        try:
            images = pipe(**args).images
            self.results = list(images)
            self._show_results(images)
            self.error = None
            self._set_status(f"done: {len(images)} image(s), {args['num_inference_steps']} steps, "
                             f"guidance {args['image_guidance_scale']:g}, seed {self.seed.value}{note}")
        except Exception as exc:  # noqa: BLE001 - shown on the status line; the thread must not die silently
            self.error = exc
            kind = "error" if isinstance(exc, OOTDError) else f"unexpected {type(exc).__name__}"
            self._set_status(f"{kind}: {exc}", error=True)
        finally:
            hook.remove()
            self.run_button.disabled = False

    def _show_results(self, images):
        import ipywidgets as w

        views = []
        for img in images:
            view = w.Image(value=png_bytes(img, max(img.width, 192)), format="png")
            view.add_class("ootd-result")
            views.append(view)
        self.outputs.children = views
