"""Readers for VITON-HD and Dress Code (real or toy): pairs, images, parse maps and keypoints in one convention.

Every item is a dict of tensors at ``size`` (H, W), or at the person image's own size when ``size=None``:

* ``person``, ``garment``: (3,H,W) float in [-1, 1] (bilinear resize)
* ``garment_mask``: (1,H,W) float in {0, 1} (VITON-HD ``cloth-mask``; Dress Code has none, so it is computed from the
  white background of the in-shop image)
* ``parse``: (H,W) int64 in the canonical label space (ATR 0-17 + 18 neck), nearest resize
* ``keypoints``: (18,2) float32 COCO-18 pixel coordinates at ``size``, NaN where missing or zero-confidence
* ``category``, ``person_name``, ``garment_name`` (file names as written in the pairs files)
* ``target``: the ground-truth try-on when the data has one: the person itself for paired items, the toy ground truth
  (``tryon-unpaired`` / ``tryon_unpaired`` folders written by :mod:`ootd_lib.toydata`) for unpaired ones; else absent.

Label spaces: VITON-HD ``image-parse-v3`` holds LIP ids (VITON-HD uses LIP 10 for the neck) and is converted with
``LIP_TO_CANONICAL``; Dress Code ``label_maps`` hold ATR ids, which are canonical already (no neck label).
Keypoints: VITON-HD ``openpose_json`` holds BODY_25 in the image's own pixels; Dress Code ``keypoints`` hold COCO-18 in
384x512 (W x H) pixels whatever the image size. Missing files raise :class:`~ootd_lib.errors.DataError` naming the file:
nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import CATEGORIES
from .errors import DataError, ImageFileError, InputError

ATR_LABELS = ["background", "hat", "hair", "sunglasses", "upper-clothes", "skirt", "pants", "dress", "belt",
              "left-shoe", "right-shoe", "face", "left-leg", "right-leg", "left-arm", "right-arm", "bag", "scarf"]
CANONICAL_LABELS = ATR_LABELS + ["neck"]
LIP_LABELS = ["background", "hat", "hair", "glove", "sunglasses", "upper-clothes", "dress", "coat", "socks", "pants",
              "jumpsuits (VITON-HD: neck)", "scarf", "skirt", "face", "left-arm", "right-arm", "left-leg", "right-leg",
              "left-shoe", "right-shoe"]
# LIP id -> canonical id. Glove and socks have no ATR class and no side; they become background (rare in VITON-HD).
# A coat is upper clothes for the ATR parser, and VITON-HD writes the neck as LIP 10.
LIP_TO_CANONICAL = np.array([0, 1, 2, 0, 3, 4, 7, 4, 0, 6, 18, 17, 5, 11, 14, 15, 12, 13, 9, 10], np.int64)
ATR_TO_CANONICAL = np.arange(18, dtype=np.int64)

# Dress Code keypoints are stored for 384x512 (W x H) images
DRESSCODE_KEYPOINT_SIZE = (512, 384)
# BODY_25 index of each COCO-18 joint: 0-7 are shared, BODY_25 8 is the mid-hip, COCO 8-17 = BODY_25 9-18
BODY25_FOR_COCO18 = np.array(list(range(8)) + list(range(9, 19)))

# Folder spellings seen in the wild for VITON-HD
VITONHD_PARSE_DIRS = ("image-parse-v3", "image-parse")
VITONHD_POSE_DIRS = ("openpose_json", "openpose-json")
VITONHD_UNPAIRED_DIR = "tryon-unpaired"  # toy only
DRESSCODE_UNPAIRED_DIR = "tryon_unpaired"  # toy only


# --- files ---------------------------------------------------------------------------------------------------------
# Decoding more pixels than this needs gigabytes (PIL itself gives up at 179 MP): such pictures are refused (a JPEG
# decoded reduced, see ``max_side``, counts at its reduced size)
MAX_DECODE_PIXELS = 64_000_000
# What the CLI and the pipeline decode photos down to (by 2, 4 or 8, longer side kept >= this): the models and the mask
# estimators see at most 1024 px
LOAD_MAX_SIDE = 2048
_FIX = "re-download or re-export it as PNG or JPEG"


def _reduction(size, max_side) -> int:
    """The largest power-of-two factor (at most 8, what JPEG can decode at) keeping the longer side >= max_side."""
    factor = 1
    while max_side and factor < 8 and max(size) // (2 * factor) >= max_side:
        factor *= 2
    return factor


def _label(source, label: str | None) -> str:
    return label or (f"image file {source}" if isinstance(source, (str, Path)) else "image")


def _open_image(source, max_side: int | None = None, label: str | None = None) -> Image.Image:
    """Open and decode an image: a path, or a binary file object named by ``label`` (e.g. an upload).

    Every failure is one :class:`ImageFileError` naming the file: missing, a folder, empty, not an image, truncated,
    too large. ``max_side``: an image whose longer side is at least twice ``max_side`` is decoded reduced by a power
    of two (JPEG: inside the decoder with ``Image.draft``, so the full-size picture never exists in memory; other
    formats: ``Image.reduce`` right after decoding), its longer side staying >= ``max_side``.
    """
    label = _label(source, label)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.is_dir():
            raise ImageFileError(f"{label} is a directory, not an image; pass one image file inside it")
        if not path.is_file():
            raise ImageFileError(f"{label} does not exist; check the path (for a dataset: its root and layout, "
                                 "data/README.md)")
        if path.stat().st_size == 0:
            raise ImageFileError(f"{label} is unreadable or corrupt (an empty file, 0 bytes); {_FIX}")
    try:
        img = Image.open(source)
        factor = _reduction(img.size, max_side)
        if factor > 1 and img.format == "JPEG" and img.draft(img.mode, (img.width // factor, img.height // factor)):
            factor = 1  # the decoder scales by exactly this factor (DCT scaling)
        if img.width * img.height > MAX_DECODE_PIXELS:
            raise ImageFileError(f"{label} is {img.width}×{img.height} px, more than {MAX_DECODE_PIXELS // 10**6} "
                                 "megapixels; scale it down first")
        img.load()  # decode now, so a truncated file fails here and not deep inside a DataLoader worker
        if factor > 1:
            img = img.reduce(factor)
    except ImageFileError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:  # UnidentifiedImageError: OSError
        if isinstance(exc, UnidentifiedImageError):  # its text repeats the path
            reason = "not in an image format PIL can read"
        else:
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise ImageFileError(f"{label} is unreadable or corrupt ({reason}); {_FIX}") from exc
    return img


def _upright(img: Image.Image) -> Image.Image:
    """Apply the EXIF orientation of a camera photo (the pixels are stored sideways, the tag says how to turn them)."""
    try:
        if img.getexif().get(0x0112, 1) != 1:
            return ImageOps.exif_transpose(img)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a decodable picture unusable
        pass
    return img


def to_rgb(img: Image.Image, background=(255, 255, 255), what: str = "image") -> Image.Image:
    """Any PIL image → RGB. 16-bit (and 32-bit integer) grayscale is scaled to 8 bits (a plain ``convert`` clips it
    to white); transparency (RGBA, LA, PA, a palette or tRNS entry) is composited onto ``background`` — white, the
    in-shop convention — *before* the alpha is dropped; CMYK, palette and grayscale are converted."""
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        a = np.asarray(img).astype(np.float64)
        if img.mode == "F" and a.size and a.max() <= 1.0:
            a = a * 255  # float images in [0, 1]
        elif img.mode != "F" and (img.mode != "I" or (a.size and a.max() > 255)):
            a = a / 257  # 0..65535 → 0..255 (an 'I' image already in 0..255 is kept)
        img = Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8), "L")
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (*background, 255)), rgba).convert("RGB")
    try:
        return img.convert("RGB")
    except ValueError as exc:
        raise InputError(f"{what} has colour mode {img.mode!r}, which cannot be converted to RGB ({exc}); save it as "
                         "an RGB PNG or JPEG") from exc


def load_rgb(source, max_side: int | None = None, label: str | None = None) -> Image.Image:
    """The one image loader (CLI, pipeline, datasets, playground): a file (path, or binary file object named by
    ``label``) as an upright RGB PIL image, or an :class:`ImageFileError` naming it.

    EXIF orientation is applied; colour modes go through :func:`to_rgb` (16-bit scaled, transparency on white);
    ``max_side`` reduces huge pictures while decoding (see :func:`_open_image`)."""
    return to_rgb(_upright(_open_image(source, max_side, label)), what=_label(source, label))


def load_mask(source, max_side: int | None = None, label: str | None = None) -> Image.Image:
    """A mask file (white = repaint) as PIL 'L', loaded like :func:`load_rgb` (same reduction, so a mask of a huge
    photo keeps matching it); transparent pixels count as black (keep), not as their hidden colour."""
    return to_rgb(_upright(_open_image(source, max_side, label)), (0, 0, 0), _label(source, label)).convert("L")


# --- output paths (checked before any work, so a typo costs seconds, not a whole run) ---------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _can_create_in(folder: Path) -> bool:
    try:  # the only reliable test (root passes os.access everywhere, /proc and read-only mounts still refuse)
        fd, probe = tempfile.mkstemp(prefix=".ootd-write-test-", dir=folder)
    except OSError:
        return False
    os.close(fd)
    os.remove(probe)
    return True


def _check_writable(folder: Path, target: Path, what: str):
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise InputError(f"{what} {target} cannot be written: {existing} is a file, not a folder")
    if not _can_create_in(existing):
        raise InputError(f"{what} {target} cannot be written: files cannot be created in {existing}; choose another "
                         "location")


def check_output_dir(path, what: str = "output folder") -> Path:
    """``path`` if it is a folder files can be written to, or one that can be created; else an :class:`InputError`.
    Nothing is created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{what} {path} is a file, not a folder")
    _check_writable(path, path, what)
    return path


def check_output_file(path, suffixes=None, what: str = "output file") -> Path:
    """``path`` if a file can be written there and its name ends in one of ``suffixes`` (the format is taken from
    it); else an :class:`InputError`. Nothing is created."""
    path = Path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{what} {path} must end in {' / '.join(suffixes)} (the file type is taken from the "
                         "extension)")
    if path.is_dir():
        raise InputError(f"{what} {path} is a directory; pass a file name inside it")
    _check_writable(path.parent, path, what)
    return path


def load_label_map(path) -> np.ndarray:
    """A label PNG (palette or grayscale) as an (H,W) integer array of its raw ids."""
    img = _open_image(path)
    if img.mode not in ("P", "L", "I", "I;16"):
        raise DataError(f"label map {path} has mode {img.mode}; expected a single-channel (palette or grayscale) PNG "
                        f"of label ids")
    return np.asarray(img).astype(np.int64)


def _to_canonical(labels: np.ndarray, table: np.ndarray, path) -> np.ndarray:
    if labels.min() < 0 or labels.max() >= len(table):
        raise DataError(f"label map {path} holds ids up to {labels.max()}, outside the {len(table)} expected; is it "
                        f"the right label space (VITON-HD: LIP in image-parse-v3, Dress Code: ATR in label_maps)?")
    return table[labels]


def _read_json(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"keypoint file {path} does not exist; check the dataset root and layout (data/README.md)")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"keypoint file {path} is not valid JSON ({exc}); re-download or regenerate it") from exc
    if not isinstance(data, dict):
        raise DataError(f"keypoint file {path} holds a JSON {type(data).__name__}, expected an object (OpenPose: "
                        '{"people": [...]}, Dress Code: {"keypoints": [...]}); re-download or regenerate it')
    return data


# --- conversions ---------------------------------------------------------------------------------------------------
def image_to_tensor(img: Image.Image, size=None) -> torch.Tensor:
    """PIL RGB → (3,H,W) float in [-1, 1], bilinear-resized to ``size`` (H, W) when given."""
    if size is not None and img.size != (size[1], size[0]):
        img = img.resize((size[1], size[0]), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32).copy()).permute(2, 0, 1)
    return x / 127.5 - 1.0


def tensor_to_uint8(x: torch.Tensor) -> np.ndarray:
    """The inverse of :func:`image_to_tensor`: (3,H,W) or (B,3,H,W) in [-1, 1] → uint8 (H,W,3) or (B,H,W,3);
    values outside [-1, 1] are clipped."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.movedim(-3, -1).numpy()


def resize_nearest(array: np.ndarray, size=None) -> np.ndarray:
    """Resize an (H,W) label or mask array with nearest neighbour (labels must never be interpolated)."""
    if size is None or array.shape == tuple(size):
        return array
    return cv2.resize(array.astype(np.int32), (size[1], size[0]), interpolation=cv2.INTER_NEAREST).astype(array.dtype)


def _scale(points: np.ndarray, src_size, dst_size) -> np.ndarray:
    if dst_size is None:
        return points
    return points * np.array([dst_size[1] / src_size[1], dst_size[0] / src_size[0]], np.float32)


def body25_to_coco18(points_25x3, src_size, dst_size=None) -> np.ndarray:
    """OpenPose BODY_25 ``(25,3)`` (or the flat 75-list of ``pose_keypoints_2d``) → COCO-18 (18,2) float32.

    ``src_size`` / ``dst_size`` are (H, W) of the image the points belong to and of the target image. Joints with
    zero confidence (OpenPose writes ``0,0,0`` for them) become NaN.
    """
    p = np.asarray(points_25x3, np.float32).reshape(-1, 3)
    if p.shape[0] != 25:
        raise InputError(f"BODY_25 keypoints must have 25 points, got {p.shape[0]}")
    coco = p[BODY25_FOR_COCO18]
    xy = coco[:, :2].copy()
    xy[coco[:, 2] <= 0] = np.nan
    return _scale(xy, src_size, dst_size).astype(np.float32)


def dresscode_keypoints_to_coco18(keypoints, dst_size=None, src_size=DRESSCODE_KEYPOINT_SIZE) -> np.ndarray:
    """Dress Code ``keypoints`` rows ``[x, y, score, id] × 18`` (384x512 pixel space) → COCO-18 (18,2) float32 at
    ``dst_size`` (H, W). A joint is missing (NaN) when its score is ≤ 0 or it sits at/below the origin."""
    k = np.asarray(keypoints, np.float32)
    if k.ndim != 2 or k.shape[0] != 18 or k.shape[1] < 2:
        raise InputError(f"Dress Code keypoints must be 18 rows of [x, y, ...], got shape {k.shape}")
    xy = k[:, :2].copy()
    missing = (xy[:, 0] <= 0) & (xy[:, 1] <= 0)
    if k.shape[1] >= 3:
        missing |= k[:, 2] <= 0
    xy[missing] = np.nan
    return _scale(xy, src_size, dst_size).astype(np.float32)


def garment_mask_from_image(img: Image.Image, threshold: int = 235) -> np.ndarray:
    """Cloth mask of an in-shop image on white: every pixel clearly darker than white in some channel, holes filled
    (a white logo or stripe is still garment). Returns (H,W) bool."""
    a = np.asarray(img.convert("RGB"))
    m = (a < threshold).any(-1).astype(np.uint8)
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))  # JPEG specks on the background
    flood = np.pad(m, 1).copy()
    cv2.floodFill(flood, np.zeros((flood.shape[0] + 2, flood.shape[1] + 2), np.uint8), (0, 0), 2)
    return (flood[1:-1, 1:-1] != 2)


# --- annotations of one person image ---------------------------------------------------------------------------------
def _first_dir(parent: Path, names) -> Path | None:
    for n in names:
        if (parent / n).is_dir():
            return parent / n
    return None


def _image_hw(path) -> tuple[int, int]:
    w, h = _open_image(path).size
    return h, w


def _vitonhd_annotations(split_dir: Path, stem: str, native_hw, size):
    parse_dir = _first_dir(split_dir, VITONHD_PARSE_DIRS)
    pose_dir = _first_dir(split_dir, VITONHD_POSE_DIRS)
    if parse_dir is None or pose_dir is None:
        missing = VITONHD_PARSE_DIRS if parse_dir is None else VITONHD_POSE_DIRS
        raise DataError(f"VITON-HD folder {split_dir} has none of {missing}; download the full dataset "
                        f"(data/README.md)")
    path = parse_dir / f"{stem}.png"
    parse = _to_canonical(load_label_map(path), LIP_TO_CANONICAL, path)
    kp_path = pose_dir / f"{stem}_keypoints.json"
    people = _read_json(kp_path).get("people") or []
    try:
        body = people[0].get("pose_keypoints_2d") if people else None
        if not body:  # OpenPose found nobody: every joint is missing
            body = np.zeros((25, 3), np.float32)
        keypoints = body25_to_coco18(body, native_hw, size or native_hw)
    except (AttributeError, TypeError, ValueError) as exc:  # InputError is a ValueError
        raise DataError(f"keypoint file {kp_path} is not OpenPose BODY_25 output ({exc}); expected "
                        '{"people": [{"pose_keypoints_2d": [75 numbers]}]}; re-download or regenerate it') from exc
    return resize_nearest(parse, size), keypoints


def _dresscode_annotations(cat_dir: Path, base: str, size, native_hw):
    path = cat_dir / "label_maps" / f"{base}_4.png"
    parse = _to_canonical(load_label_map(path), ATR_TO_CANONICAL, path)
    kp_path = cat_dir / "keypoints" / f"{base}_2.json"
    rows = _read_json(kp_path).get("keypoints")
    if rows is None:
        raise DataError(f"keypoint file {kp_path} has no 'keypoints' entry; expected Dress Code's format")
    try:
        keypoints = dresscode_keypoints_to_coco18(rows, size or native_hw)
    except (TypeError, ValueError) as exc:  # InputError is a ValueError
        raise DataError(f"keypoint file {kp_path}: {exc}; expected Dress Code's 18 rows of [x, y, score, id]") from exc
    return resize_nearest(parse, size or native_hw), keypoints


def _layout_of(person_path: Path):
    """('vitonhd', split_dir) or ('dresscode', category_dir) for an image inside such a layout, else None."""
    parent = person_path.parent
    if parent.name == "image" and _first_dir(parent.parent, VITONHD_PARSE_DIRS) is not None:
        return "vitonhd", parent.parent
    if parent.name == "images" and person_path.stem.endswith("_0") and (parent.parent / "label_maps").is_dir():
        return "dresscode", parent.parent
    return None


def find_annotations(person_path, size=None) -> dict | None:
    """Parse map and keypoints of a person image inside a VITON-HD or Dress Code folder (toy or real).

    Returns ``dict(parse=(H,W) int64 canonical, keypoints=(18,2) float32 NaN-missing)`` at ``size`` (H, W), by
    default the image's own size; ``None`` when the image is not inside such a layout (then the released human
    parser and OpenPose are needed, see :mod:`ootd_lib.estimators`).
    """
    person_path = Path(person_path)
    found = _layout_of(person_path)
    if found is None:
        return None
    layout, folder = found
    native = _image_hw(person_path)
    size = tuple(size) if size is not None else native
    if layout == "vitonhd":
        parse, kp = _vitonhd_annotations(folder, person_path.stem, native, size)
    else:
        parse, kp = _dresscode_annotations(folder, person_path.stem[:-2], size, native)
    return dict(parse=parse.astype(np.int64), keypoints=kp)


# --- datasets --------------------------------------------------------------------------------------------------------
def _read_pairs(path: Path) -> list[list[str]]:
    if not path.is_file():
        raise DataError(f"pairs file {path} does not exist; check the dataset root and layout (data/README.md)")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    bad = [i + 1 for i, r in enumerate(rows) if len(r) < 2]
    if bad:
        raise DataError(f"pairs file {path} line {bad[0]} does not hold '<person> <garment>'")
    return rows


def _check_args(split, pairing, size):
    if split not in ("train", "test"):
        raise InputError(f"split={split!r} must be 'train' or 'test'")
    if pairing not in ("paired", "unpaired"):
        raise InputError(f"pairing={pairing!r} must be 'paired' or 'unpaired'")
    if pairing == "unpaired" and split == "train":
        raise InputError("pairing='unpaired' exists only for split='test' (the train pairs are paired)")
    if size is not None and (len(size) != 2 or min(size) <= 0):
        raise InputError(f"size={size!r} must be (H, W) or None")


class _TryOnDataset(torch.utils.data.Dataset):
    """Shared item assembly; subclasses fill ``self.pairs`` and implement ``paths`` and ``_annotations``."""

    size: tuple[int, int] | None
    pairs: list[tuple[str, str, str]]

    def __len__(self):
        return len(self.pairs)

    def paths(self, i: int) -> dict:  # pragma: no cover - abstract
        raise NotImplementedError

    def _garment_mask(self, paths: dict, garment: Image.Image) -> np.ndarray:
        if paths.get("garment_mask") is None:
            return garment_mask_from_image(garment)
        return np.asarray(load_mask(paths["garment_mask"])) > 127

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        person_name, garment_name, category = self.pairs[i]
        paths = self.paths(i)
        person = load_rgb(paths["person"])
        native = (person.size[1], person.size[0])
        size = self.size or native
        garment = load_rgb(paths["garment"])
        mask = resize_nearest(self._garment_mask(paths, garment).astype(np.uint8), size)
        parse, keypoints = self._annotations(paths, native, size)
        item = dict(person=image_to_tensor(person, size), garment=image_to_tensor(garment, size),
                    garment_mask=torch.from_numpy(mask.astype(np.float32))[None],
                    parse=torch.from_numpy(parse.astype(np.int64)), keypoints=torch.from_numpy(keypoints),
                    category=category, person_name=person_name, garment_name=garment_name)
        if paths.get("target") == "person":
            item["target"] = item["person"]
        elif paths.get("target") is not None:
            item["target"] = image_to_tensor(load_rgb(paths["target"]), size)
            truth_parse = Path(paths["target"]).with_suffix(".png")  # toy only: the truth's parse (canonical labels)
            if truth_parse.is_file():
                item["target_parse"] = torch.from_numpy(resize_nearest(load_label_map(truth_parse), size))
        return item


class VitonHDDataset(_TryOnDataset):
    """VITON-HD (``root/{train,test}/...``, ``root/{train,test}_pairs.txt``): upper-body garments only.

    ``paired`` uses each person's own garment (the first column of the pairs file); ``unpaired`` (test only) uses the
    pairs as listed in ``test_pairs.txt``. Both folder spellings ``image-parse-v3``/``image-parse`` and
    ``openpose_json``/``openpose-json`` are accepted.
    """

    def __init__(self, root, split: str = "train", pairing: str = "paired", size=None):
        _check_args(split, pairing, size)
        self.root, self.split, self.pairing = Path(root), split, pairing
        self.size = tuple(size) if size is not None else None
        self.dir = self.root / split
        if not self.dir.is_dir():
            raise DataError(f"VITON-HD folder {self.dir} does not exist; pass the dataset root that holds train/ and "
                            f"test/ (data/README.md)")
        rows = _read_pairs(self.root / f"{split}_pairs.txt")
        if pairing == "paired":
            people = list(dict.fromkeys(r[0] for r in rows))  # unique, in file order
            self.pairs = [(p, p, "upper_body") for p in people]
        else:
            self.pairs = [(r[0], r[1], "upper_body") for r in rows]
        self._gt_dir = self.dir / VITONHD_UNPAIRED_DIR

    def paths(self, i: int) -> dict:
        p, g, _ = self.pairs[i]
        mask = self.dir / "cloth-mask" / g
        if not mask.is_file() and (self.dir / "cloth-mask" / f"{Path(g).stem}.png").is_file():
            mask = self.dir / "cloth-mask" / f"{Path(g).stem}.png"
        target = "person" if self.pairing == "paired" else None
        if self.pairing == "unpaired" and self._gt_dir.is_dir():
            target = self._gt_dir / f"{Path(p).stem}__{Path(g).stem}.jpg"
        return dict(person=self.dir / "image" / p, garment=self.dir / "cloth" / g, garment_mask=mask, target=target)

    def _annotations(self, paths, native, size):
        return _vitonhd_annotations(self.dir, Path(paths["person"]).stem, native, size)


class DressCodeDataset(_TryOnDataset):
    """Dress Code (``root/<category>/{images,label_maps,keypoints}``): upper_body, lower_body and dresses.

    Pairs come from the per-category files (``train_pairs.txt``, ``test_pairs_paired.txt``,
    ``test_pairs_unpaired.txt``), or when a category has none, from the root file of that name filtered by its third
    column (0/1/2 or the category name). Dress Code ships no cloth masks: they are computed from the white background.
    """

    def __init__(self, root, split: str = "train", pairing: str = "paired", categories=CATEGORIES, size=None):
        _check_args(split, pairing, size)
        self.root, self.split, self.pairing = Path(root), split, pairing
        self.size = tuple(size) if size is not None else None
        if isinstance(categories, str):
            categories = (categories,)
        self.categories = tuple(categories)
        for c in self.categories:
            if c not in CATEGORIES:
                raise InputError(f"category {c!r} is not one of {CATEGORIES}")
            if not (self.root / c).is_dir():
                raise DataError(f"Dress Code folder {self.root / c} does not exist; pass the dataset root that holds "
                                f"{', '.join(CATEGORIES)} (data/README.md)")
        name = "train_pairs.txt" if split == "train" else f"test_pairs_{pairing}.txt"
        self.pairs = []
        for c in self.categories:
            self.pairs += [(r[0], r[1], c) for r in self._category_pairs(c, name)]

    def _category_pairs(self, category: str, name: str) -> list[list[str]]:
        own = self.root / category / name
        if own.is_file():
            return _read_pairs(own)
        shared = self.root / name
        if not shared.is_file():
            raise DataError(f"pairs file {own} (or {shared}) does not exist; check the Dress Code root "
                            f"(data/README.md)")
        index = str(CATEGORIES.index(category))
        return [r for r in _read_pairs(shared) if len(r) > 2 and r[2] in (index, category)]

    def paths(self, i: int) -> dict:
        p, g, c = self.pairs[i]
        d = self.root / c
        target = "person" if self.pairing == "paired" else None
        gt_dir = d / DRESSCODE_UNPAIRED_DIR
        if self.pairing == "unpaired" and gt_dir.is_dir():
            target = gt_dir / f"{Path(p).stem}__{Path(g).stem}.jpg"
        return dict(person=d / "images" / p, garment=d / "images" / g, garment_mask=None, target=target)

    def _annotations(self, paths, native, size):
        person = Path(paths["person"])
        base = person.stem[:-2] if person.stem.endswith("_0") else person.stem
        return _dresscode_annotations(person.parent.parent, base, size, native)


# --- training items: a dataset plus the agnostic mask of each person ------------------------------------------------
class MaskedTryOnDataset(torch.utils.data.Dataset):
    """A try-on dataset plus the agnostic mask of each person (computed once, cached as PNG under ``cache_dir``).

    Items: ``person``, ``garment`` (3,H,W in [-1,1]), ``mask`` (1,H,W {0,1}), ``masked`` (the person greyed inside the
    mask, what the model sees), ``category``, ``target`` (the image to reconstruct: the person itself when paired).
    """

    def __init__(self, base, model_type: str = "hd", cache_dir=None, outlines: dict[str, str] | None = None):
        # outlines: category -> training mask outline (ootd_lib.masking.training_mask); training sets only
        self.base, self.model_type, self.outlines = base, model_type, dict(outlines or {})
        self.cache_dir = Path(cache_dir) if cache_dir else None
        if self.cache_dir:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    def __len__(self):
        return len(self.base)

    def mask(self, item) -> np.ndarray:
        import os

        from .masking import training_mask

        h, w = item["parse"].shape
        outline = self.outlines.get(item["category"], "released")
        tag = "" if outline == "released" else f"_{outline}"
        name = f"{Path(item['person_name']).stem}_{item['category']}_{self.model_type}_{h}x{w}{tag}.png"
        path = self.cache_dir / name if self.cache_dir else None
        if path is not None and path.is_file():
            return np.asarray(Image.open(path)) > 127
        mask = training_mask(item["parse"].numpy(), item["keypoints"].numpy(), item["category"], self.model_type,
                             outline)
        if path is not None:  # write-then-rename: a crash never leaves a half-written cache file
            tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
            Image.fromarray(mask.astype(np.uint8) * 255).save(tmp)
            os.replace(tmp, path)
        return mask

    def __getitem__(self, i):
        from .masking import masked_person

        item = self.base[i]
        mask = torch.from_numpy(self.mask(item)).float()[None]
        out = dict(person=item["person"], garment=item["garment"], mask=mask,
                   masked=masked_person(item["person"], mask), category=item["category"],
                   target=item.get("target", item["person"]))
        if "target_parse" in item:  # toy ground truth: evaluation reads the garment pixels from it
            out.update(target_parse=item["target_parse"], person_name=item["person_name"],
                       garment_name=item["garment_name"])
        return out


def _check_toy_wardrobe(root: Path, patterns, seed: int | None, counts: tuple[int, int] | None = None):
    """Refuse a toy wardrobe (``toy_info.json``) written with other garment families than ``patterns``, with another
    seed than ``seed``, or with other (train, test) person counts than ``counts`` (None: any seed, any counts)."""
    from .toydata import info_patterns

    info_path = root / "toy_info.json"
    if not info_path.is_file():  # real data, or not a toy wardrobe
        return
    try:
        info = json.loads(info_path.read_text())
        found = info_patterns(info)
    except (ValueError, AttributeError, TypeError) as exc:
        raise DataError(f"{info_path} is not a readable toy_info.json ({exc}); delete {root} to regenerate "
                        "it") from None
    if found != patterns:
        name = lambda p: "the default families" if p is None else f"toy_patterns {list(p)}"  # noqa: E731
        raise DataError(f"toy data folder {root} was written with {name(found)}, but the config asks for "
                        f"{name(patterns)}: point data_root at another folder (a missing one is generated), delete "
                        f"{root}, or set toy_patterns to {None if found is None else list(found)}")
    if seed is not None and info.get("seed") != seed:
        raise DataError(f"toy data folder {root} holds the wardrobe of seed {info.get('seed')}, but the config asks "
                        f"for toy_seed {seed}: point data_root at another folder (a missing one is generated), "
                        f"delete {root}, or set toy_seed to {info.get('seed')}")
    found_counts = (info.get("n_train"), info.get("n_test"))
    if counts is not None and found_counts != tuple(counts):
        raise DataError(f"toy data folder {root} holds {found_counts[0]} train and {found_counts[1]} test persons, but "
                        f"the config asks for toy_train {counts[0]} and toy_test {counts[1]}: point data_root at "
                        f"another folder (a missing one is generated), delete {root}, or set toy_train and toy_test "
                        "to the folder's counts")


def build_dataset(cfg, split: str = "train", pairing: str = "paired", cache_dir=None,
                  generate: bool = True, outlines: dict[str, str] | None = None) -> MaskedTryOnDataset:
    """The dataset a :class:`~ootd_lib.config.Config` names (generating the toy wardrobe first when the toy data
    folder is missing and ``generate`` is true; its seed: ``cfg.toy_seed``, else ``cfg.seed``). A toy wardrobe written
    with other garment families than ``cfg.toy_patterns``, or with another seed than a stated ``cfg.toy_seed``, is
    refused: training or evaluating on it would silently use other people and garments. A stated ``toy_seed`` also
    refuses a wardrobe of other ``toy_train`` / ``toy_test`` counts (a recipe's wardrobe is all three). ``outlines``:
    coarser training masks per category (training passes ``cfg.train_mask_outline``; evaluation keeps the released)."""
    from .toydata import check_patterns

    root, patterns = Path(cfg.data_root), check_patterns(cfg.toy_patterns)
    if not root.exists():
        if cfg.profile != "toy" or not generate:
            raise DataError(f"data_root {root} does not exist; download the dataset (data/README.md) or fix the config")
        from .toydata import generate_toy_dataset

        print(f"data_root {root} does not exist: generating a toy wardrobe there")  # says so when it is a typo
        seed = cfg.seed if cfg.toy_seed is None else cfg.toy_seed
        generate_toy_dataset(root, layout=cfg.layout, n_train=cfg.toy_train, n_test=cfg.toy_test, seed=seed,
                             progress=False, patterns=patterns)
    counts = None if cfg.toy_seed is None else (cfg.toy_train, cfg.toy_test)
    _check_toy_wardrobe(root, patterns, cfg.toy_seed, counts)
    if cfg.layout == "vitonhd":
        base = VitonHDDataset(root, split, pairing, size=cfg.resolution)
    else:
        base = DressCodeDataset(root, split, pairing, categories=cfg.categories, size=cfg.resolution)
    return MaskedTryOnDataset(base, cfg.model_type, cache_dir, outlines)
