"""The agnostic mask: which pixels of the person the try-on model repaints.

OOTDiffusion does not let the model see the clothes it replaces: it greys out a region built from a human-parsing map
and a body pose. The rules below reproduce the released ``get_mask_location`` (described in shared/MASK_RULES.md):

1. garment region = the parsed labels of the category (dilated), plus the neck and the *drawn* arms for tops/dresses;
2. "fixed" = what must survive whatever the garment (head, shoes, bag, hands, and the clothes of the other half);
3. repaint = garment region minus fixed; fill its holes; keep the largest connected region.

All rules are written for 512×384 (H×W). At another height H the pixel sizes scale with H/512: the arm width exactly
as released (``int(arm_width / 512 * H)``), the 5×5 dilations by running ``max(1, round(n * H / 512))`` iterations
instead of ``n`` (the kernel stays 5×5, so the grown margin keeps the same fraction of the body); below 512 the arm
is drawn on a finer grid (see :func:`draw_arm`) so its end points keep sub-pixel precision.

Inputs follow the course conventions: ``parse`` (H,W) in the canonical labels (ATR 0-17 + 18 neck), ``keypoints``
(18,2) COCO-18 pixel coordinates at the parse map's size with NaN for missing joints.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import CATEGORIES, LATENT_MASKS, MODEL_TYPES, TRAIN_OUTLINES
from .errors import InputError

ARM_WIDTH = {"hd": 60, "dc": 45}  # pixels at height 512

# Canonical (ATR + neck) labels used by the rules.
HAT, HAIR, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS, BELT, L_SHOE, R_SHOE, FACE, L_LEG, R_LEG, L_ARM, R_ARM, BAG, SCARF, \
    NECK = range(1, 19)
HEAD_LABELS = (HAT, SUNGLASSES, FACE)
FIXED_LABELS = (L_SHOE, R_SHOE, HAT, SUNGLASSES, BAG)
GARMENT_LABELS = {"dresses": (UPPER, SKIRT, PANTS, DRESS), "upper_body": (UPPER, DRESS),
                  "lower_body": (SKIRT, PANTS, L_LEG, R_LEG)}
EXTRA_FIXED = {"dresses": (), "upper_body": (SKIRT, PANTS), "lower_body": (UPPER, L_ARM, R_ARM)}
# COCO-18 (shoulder, elbow, wrist) per side.
ARM_JOINTS = {"right": (2, 3, 4), "left": (5, 6, 7)}
WRIST_EXTENSION = 1.2  # the drawn arm reaches 20 % past the wrist, over the hand's root
_KERNEL = np.ones((5, 5), np.uint8)
GREY = 127  # fill value of the masked person (uint8)


def _check(parse, keypoints, category, model_type):
    if category not in CATEGORIES:
        raise InputError(f"category {category!r} is not one of {CATEGORIES}")
    if model_type not in MODEL_TYPES:
        raise InputError(f"model_type {model_type!r} is not one of {MODEL_TYPES} (hd: VITON-HD model, dc: Dress Code)")
    parse = np.asarray(parse)
    if parse.ndim != 2:
        raise InputError(f"parse map must be (H, W) labels, got shape {parse.shape}")
    if parse.size and (parse.min() < 0 or parse.max() > NECK):
        raise InputError(f"parse map labels must be canonical 0..18 (ATR + neck), got {parse.min()}..{parse.max()}; "
                         "convert LIP / VITON-HD parse maps with ootd_lib.data first")
    keypoints = np.asarray(keypoints, dtype=np.float64)
    if keypoints.shape != (18, 2):
        raise InputError(f"keypoints must be (18, 2) COCO-18 pixel coordinates, got shape {keypoints.shape}")
    return parse, keypoints


def scaled_iterations(n: int, height: int) -> int:
    """Dilation iterations at ``height`` for a rule written as ``n`` iterations at height 512."""
    return n if height == 512 else max(1, round(n * height / 512))


def dilate(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Binary dilation with the released 5×5 square kernel."""
    return cv2.dilate(mask.astype(np.uint8), _KERNEL, iterations=iterations).astype(bool)


def released_keypoints(keypoints: np.ndarray) -> np.ndarray:
    """NaN-missing keypoints → the released convention, where a missing joint is ``[0, 0]``."""
    return np.nan_to_num(np.asarray(keypoints, dtype=np.float64), nan=0.0)


def is_missing(point) -> bool:
    """The released test for a missing joint: both coordinates at most 1 pixel."""
    return point[0] <= 1.0 and point[1] <= 1.0


def draw_arm(shape, shoulder, elbow, wrist, width: int) -> np.ndarray:
    """The drawn arm: a polyline shoulder → elbow → extended wrist, plus a disc at the shoulder.

    Drawn with PIL's ``ImageDraw.line(..., joint="curve")`` as released: the elbow joint is rounded, both ends are
    flat (butt). A round cap at the wrist would reach W/2 further and, after the 4-iteration dilation, repaint the hand
    the rules protect.

    At height 512 (and above) the end points are truncated to integer pixels as released. Below it that truncation
    would move the arm by up to a pixel, 4 px of the released frame at 128×96, so the arm is drawn on a grid
    k = ceil(512 / H) times finer (keypoint p, pixel centres at integers, is PIL's corner-based (p + ½)·k there) and
    each pixel takes the majority of its k×k cells.
    """
    from PIL import ImageDraw

    shoulder, elbow, wrist = (np.asarray(p, dtype=np.float64) for p in (shoulder, elbow, wrist))
    wrist = elbow + WRIST_EXTENSION * (wrist - elbow)
    h, w = shape
    k = max(1, -(-512 // h))
    ends = (shoulder, elbow, wrist) if k == 1 else ((p + 0.5) * k for p in (shoulder, elbow, wrist))
    pts = [tuple(int(v) for v in p) for p in ends]  # integer pixels, truncated as released
    canvas = Image.new("L", (w * k, h * k), 0)
    if width > 0:
        draw = ImageDraw.Draw(canvas)
        draw.line(pts, fill=255, width=width * k, joint="curve")
        r = width * k // 2
        draw.ellipse((pts[0][0] - r, pts[0][1] - r, pts[0][0] + r, pts[0][1] + r), fill=255)
    cells = np.asarray(canvas).reshape(h, k, w, k) > 0
    return cells.mean((1, 3)) >= 0.5


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Released hole filling: clear a 1-px border, flood-fill the outside from the corner, add what it did not reach."""
    img = mask.astype(np.uint8) * 255
    img[0, :] = img[-1, :] = 0
    img[:, 0] = img[:, -1] = 0
    outside = img.copy()
    cv2.floodFill(outside, np.zeros((img.shape[0] + 2, img.shape[1] + 2), np.uint8), (0, 0), 255)
    return (img > 0) | (outside == 0)


def largest_region(mask: np.ndarray) -> np.ndarray:
    """Keep only the largest 8-connected region (an empty mask stays empty)."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if n <= 1:
        return mask.astype(bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def mask_layers(parse, keypoints, category: str = "upper_body", model_type: str = "hd") -> dict[str, np.ndarray]:
    """Every intermediate layer of the agnostic mask (bool (H,W) arrays), in the order the rules build them.

    Keys: ``garment`` (parsed garment labels), ``garment_dilated``, ``arms_drawn`` (both sides, from the pose),
    ``hands`` (parsed arm outside the drawn arm), ``head``, ``neck``, ``arms_dilated``, ``region`` (everything the
    garment may cover), ``fixed`` (never repainted), ``inpaint`` (region minus fixed), ``filled`` (holes filled),
    ``final`` (largest region = the mask).
    """
    parse, keypoints = _check(parse, keypoints, category, model_type)
    h, w = parse.shape
    kp = released_keypoints(keypoints)
    layers = {}

    # 1-2. what each category repaints, and what it must leave alone
    head = np.isin(parse, HEAD_LABELS)
    fixed = np.isin(parse, FIXED_LABELS) | np.isin(parse, EXTRA_FIXED[category])
    garment = np.isin(parse, GARMENT_LABELS[category])
    changeable = (parse == 0) | ((parse != 0) & ~fixed)
    layers["garment"] = garment

    # 3. arms: the new garment may have longer sleeves than the old one, so the region follows the pose, not the parse
    arms_drawn = np.zeros((h, w), bool)
    hands = np.zeros((h, w), bool)
    if category in ("upper_body", "dresses"):
        width = int(ARM_WIDTH[model_type] / 512 * h)
        for side, parsed_label in (("right", R_ARM), ("left", L_ARM)):
            parsed = parse == parsed_label
            shoulder, elbow, wrist = kp[list(ARM_JOINTS[side])]
            # no wrist: fall back to the parsed arm, so nothing of the hand is protected on that side
            drawn = parsed if is_missing(wrist) else draw_arm((h, w), shoulder, elbow, wrist, width)
            hands |= parsed & ~drawn
            arms_drawn |= drawn
        fixed |= hands
    layers["arms_drawn"], layers["hands"] = arms_drawn, hands

    # 4. the face never changes
    fixed |= head
    layers["head"] = head

    # 5-6. grow the garment region; tops also take the neck and the drawn arms
    region = dilate(garment, scaled_iterations(5, h))
    layers["garment_dilated"] = region.copy()
    neck = np.zeros((h, w), bool)
    arms_dilated = np.zeros((h, w), bool)
    if category in ("upper_body", "dresses"):
        neck = dilate(parse == NECK, scaled_iterations(1, h)) & ~head
        arms_dilated = dilate(arms_drawn, scaled_iterations(4, h))
        region |= neck | arms_dilated
    layers["neck"], layers["arms_dilated"], layers["region"] = neck, arms_dilated, region

    # 7. keep = what may change but is outside the region; everything else is repainted unless fixed
    keep = changeable & ~region
    total = keep | fixed
    inpaint = ~total
    layers["fixed"], layers["inpaint"] = fixed, inpaint

    # 8. one solid blob: fill its holes, drop islands
    layers["filled"] = fill_holes(inpaint)
    layers["final"] = largest_region(layers["filled"])
    return layers


def agnostic_mask(parse, keypoints, category: str = "upper_body", model_type: str = "hd") -> np.ndarray:
    """Boolean (H,W) mask of the pixels to repaint (True = repaint), the released rules at the parse map's size."""
    return mask_layers(parse, keypoints, category, model_type)["final"]


def training_mask(parse, keypoints, category: str = "upper_body", model_type: str = "hd",
                  outline: str = "released") -> np.ndarray:
    """The mask a training pair is greyed with: the released mask, or a coarser one whose outline hides the old garment.

    Why: the released lower_body mask is the old garment's dilated parse region plus the legs, so its outline still
    shows a skirt or trousers, and paired training (where the target *is* the old garment) rewards painting whatever
    the outline shows. ``hull``: the released mask's convex hull; ``box``: its bounding box. Both then lose what the
    rules never repaint (``fixed``; for lower_body the shoes, the upper garment, the arms and the head) and
    keep their largest region. Inference always uses the released mask (:func:`agnostic_mask`).
    """
    if outline not in TRAIN_OUTLINES:
        raise InputError(f"training mask outline {outline!r} is not one of {TRAIN_OUTLINES}")
    layers = mask_layers(parse, keypoints, category, model_type)
    mask = layers["final"]
    if outline == "released" or not mask.any():
        return mask
    points = cv2.findNonZero(mask.astype(np.uint8))
    coarse = np.zeros(mask.shape, np.uint8)
    if outline == "hull":
        cv2.fillPoly(coarse, [cv2.convexHull(points)], 1)
    else:
        x, y, w, h = cv2.boundingRect(points)
        coarse[y:y + h, x:x + w] = 1
    return largest_region(coarse.astype(bool) & ~layers["fixed"])


def masked_person(person, mask):
    """The person with the mask region set to grey 127, the image the model sees instead of the original clothes.

    ``person``: PIL image, uint8 (H,W,3) array, or float tensor in [-1,1] of shape (3,H,W) or (B,3,H,W); the result has
    the same type. ``mask``: (H,W) / (1,H,W) / (B,1,H,W) bool, {0,1} or {0,255}, array, tensor or PIL image.
    """
    if isinstance(mask, Image.Image):
        mask = np.asarray(mask.convert("L"))
    if isinstance(person, torch.Tensor):
        m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask).to(person.device) > 0
        if m.shape[-2:] != person.shape[-2:]:
            raise InputError(f"mask size {tuple(m.shape[-2:])} differs from person size {tuple(person.shape[-2:])}")
        grey = torch.tensor(GREY / 127.5 - 1.0, dtype=person.dtype, device=person.device)
        return torch.where(m, grey, person)  # (H,W), (1,H,W) and (B,1,H,W) masks broadcast over the channels
    was_pil = isinstance(person, Image.Image)
    arr = np.array(person.convert("RGB") if was_pil else person, dtype=np.uint8, copy=True)
    m = np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask).squeeze() > 0
    if m.shape != arr.shape[:2]:
        raise InputError(f"mask size {m.shape} differs from person size {arr.shape[:2]}")
    arr[m] = GREY
    return Image.fromarray(arr) if was_pil else arr


# --- the mask on the latent grid (repaint at sampling; the masked loss in training) ----------------------------------
def mask_to_latents(mask, size, mode: str = "nearest") -> torch.Tensor:
    """The repaint mask (B,1,H,W) {0,1} at the latent grid ``size``.

    ``nearest``, as released, gives each latent cell the pixel at its sampling point: a region thinner than a cell
    (8 pixels) can miss every sampling point and lose its repaint, which at 1024×768 is a strap but at the toy's 128×96
    is a trouser leg. ``any`` repaints a cell when any of its pixels is masked (max pooling), so the whole mask is
    regenerated and the original latents are pasted back only where no pixel of the cell is masked."""
    check_latent_mask(mode)
    if mode == "any":
        return F.adaptive_max_pool2d(mask, tuple(size))
    return F.interpolate(mask, size=tuple(size), mode="nearest")


def check_latent_mask(mode: str) -> None:
    """An ``InputError`` naming the choices unless ``mode`` is one of :data:`~ootd_lib.config.LATENT_MASKS`."""
    if mode not in LATENT_MASKS:
        raise InputError(f"latent_mask={mode!r} must be one of {LATENT_MASKS} ('nearest' as released)")
