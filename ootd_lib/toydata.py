"""The toy wardrobe: procedural people and garments written in the exact VITON-HD and Dress Code file layouts.

Why a toy world? The real datasets are large, licence-gated downloads, and every stage of OOTDiffusion (masking,
latents, fusion, training, evaluation) can be taught and tested on CPU in seconds if the data is small, plain and
exactly known. Each sample is a front-facing cartoon person (skin tone, hair, face, neck, arms with varying shoulder and
elbow angles, legs, shoes, plain background) wearing garments with a texture (solid, stripes, dots, checker, chest
logo; a new family, plaid, only when asked: ``patterns=``). The same garment is also drawn flat on white (the
"in-shop" image) with its cloth mask.

How it is drawn: every body part and garment piece is rasterised into one integer *part map* with OpenCV (fillPoly,
thick lines, ellipses). The parse map is a lookup of that part map, and the RGB image is a lookup of colours and
textures, so the two are consistent pixel for pixel; the keypoints are the very joints the limbs were drawn from.
A garment's texture is a function of garment coordinates (origin at the neck base or the waist, unit = a nominal
shoulder half-width), evaluated once for the worn garment and once for the flat one: same colours, pattern and scale
relative to the garment. That is what a try-on model has to transfer.

Written layouts (see ``shared/MASK_RULES.md`` "Keypoint files" and ``data/README.md``):

VITON-HD (upper-body garments only, like the real data)::

    root/train_pairs.txt                 "00000_00.jpg 00000_00.jpg"   (paired)
    root/test_pairs.txt                  "90000_00.jpg 90003_00.jpg"   (unpaired, like the real file)
    root/{train,test}/image/*.jpg        person
    root/{train,test}/cloth/*.jpg        in-shop garment on white
    root/{train,test}/cloth-mask/*.jpg   garment mask (255 = garment)
    root/{train,test}/image-parse-v3/*.png     LIP labels, palette PNG (10 = neck, as in VITON-HD)
    root/{train,test}/openpose_json/*_keypoints.json   BODY_25 in the written image's pixels
    root/test/tryon-unpaired/<person>__<garment>.jpg   TOY ONLY: ground truth of each unpaired test pair
    root/test/tryon-unpaired/<person>__<garment>.png   TOY ONLY: its parse map (canonical labels, grayscale)

Dress Code (per category ``upper_body``, ``lower_body``, ``dresses``)::

    root/<cat>/images/XXXXXX_0.jpg (person), XXXXXX_1.jpg (in-shop garment)
    root/<cat>/label_maps/XXXXXX_4.png   ATR labels, grayscale PNG (neck drawn as face 11, as ATR has no neck)
    root/<cat>/keypoints/XXXXXX_2.json   {"keypoints": [[x, y, score, id] x 18]} COCO-18 in 384x512 (W x H) pixels
    root/<cat>/{train_pairs.txt, test_pairs_paired.txt, test_pairs_unpaired.txt}   "XXXXXX_0.jpg YYYYYY_1.jpg"
    root/{train_pairs.txt, test_pairs_paired.txt, test_pairs_unpaired.txt}   same plus a category column 0/1/2
    root/<cat>/tryon_unpaired/<person>__<garment>.jpg   TOY ONLY: ground truth of each unpaired test pair (+ .png parse)

``n_train`` / ``n_test`` count persons (= paired pairs) per split, and for Dress Code per category.
Names: VITON-HD train ``{i:05d}_00``, test ``{90000+i:05d}_00``; Dress Code ``{c}{i:05d}`` with c = 0/1/2 for the
category and i offset by 90000 in the test split, so names never collide across splits or categories. Every sample
draws from its own
``np.random.default_rng((seed, split, category, index))``: a sample never depends on how many others are generated
(the unpaired pairing of a test split does, necessarily).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from .config import CATEGORIES, LAYOUTS
from .errors import ConfigError, InputError
from .progress import progress_enabled

BASE_H, BASE_W = 256, 192  # the drawing frame; other sizes scale it
TEST_OFFSET = 90000  # test ids start here so names never collide with train ids
UNPAIRED_DIRS = {"vitonhd": "tryon-unpaired", "dresscode": "tryon_unpaired"}
# Bump whenever the drawing changes: toy_dataset() then regenerates folders written by an older generator (stale
# cached data would silently change every number computed from it).
GENERATOR_VERSION = 2  # 2: the unpaired ground truth has its parse map beside it

# --- part map ids (internal) and their canonical labels (ATR 0-17 + 18 neck) -------------------------------------
(BG, HAIR, FACE, NECK, R_ARM, L_ARM, R_LEG, L_LEG, R_SHOE, L_SHOE,
 UPPER, UPPER_RS, UPPER_LS, LOWER, LOWER_R, LOWER_L, DRESS, DRESS_RS, DRESS_LS) = range(19)
UPPER_PARTS, LOWER_PARTS = (UPPER, UPPER_RS, UPPER_LS), (LOWER, LOWER_R, LOWER_L)
DRESS_PARTS = (DRESS, DRESS_RS, DRESS_LS)
# "R_" is the person's right = the image's LEFT side for a front-facing person
# (ATR 15 right-arm, 13 right-leg, 10 right-shoe).
_PART_LABEL = np.array([0, 2, 11, 18, 15, 14, 13, 12, 10, 9, 4, 4, 4, 6, 6, 6, 7, 7, 7], np.uint8)

# canonical (ATR + 18 neck) -> LIP as VITON-HD writes it (belt and bag have no LIP class; the toy never draws them)
CANONICAL_TO_LIP = np.array([0, 1, 2, 4, 5, 12, 9, 6, 0, 18, 19, 13, 16, 17, 14, 15, 0, 11, 10], np.uint8)
# canonical -> ATR as Dress Code writes it: ATR has no neck; the ATR parser calls the neck face (see MASK_RULES.md)
CANONICAL_TO_ATR = np.array(list(range(18)) + [11], np.uint8)

# LIP palette of the VITON-HD parse PNGs (index -> RGB), the usual LIP colour table
LIP_PALETTE = [0, 0, 0, 128, 0, 0, 254, 0, 0, 0, 85, 0, 169, 0, 51, 254, 85, 0, 0, 0, 85, 0, 119, 220, 85, 85, 0,
               0, 85, 85, 85, 51, 0, 52, 86, 128, 0, 128, 0, 0, 0, 254, 51, 169, 220, 0, 254, 254, 85, 254, 169,
               169, 254, 85, 254, 254, 0, 254, 169, 0]

# --- colours -----------------------------------------------------------------------------------------------------
GARMENT_COLOURS = np.array([
    (200, 40, 40), (235, 130, 30), (240, 210, 50), (50, 160, 70), (30, 150, 150), (40, 80, 200), (25, 35, 90),
    (120, 60, 170), (235, 120, 170), (120, 75, 40), (30, 30, 30), (128, 128, 128), (200, 200, 200), (150, 200, 90),
], np.float32)
SKIN_TONES = np.array([(255, 224, 196), (241, 194, 165), (224, 172, 130), (198, 134, 96), (161, 102, 64),
                       (110, 70, 45)], np.float32)
HAIR_COLOURS = np.array([(25, 20, 20), (60, 40, 25), (110, 70, 35), (215, 180, 100), (150, 60, 30), (150, 150, 150)],
                        np.float32)
PATTERNS = ("solid", "stripes", "dots", "checker", "logo")  # the default families (the shipped checkpoint's world)
# Families no default wardrobe contains, drawn only when asked (``patterns=``): a family the shipped model has never
# seen, for fine-tuning demos. plaid: two crossing stripe sets, a blend of both colours where they cross.
NEW_PATTERNS = ("plaid",)
ALL_PATTERNS = PATTERNS + NEW_PATTERNS
UPPER_KINDS, LOWER_KINDS = ("tshirt", "longsleeve", "tank"), ("pants", "skirt")
NOMINAL_SW = 27.0  # nominal shoulder half-width (base px): the unit of garment texture coordinates
PLAID_BAND = 0.25  # plaid band width (fraction of the period)

# COCO-18 order of the joints dict keys ("r_" = person's right = image left)
COCO18 = ("nose", "neck", "r_sho", "r_elb", "r_wri", "l_sho", "l_elb", "l_wri", "r_hip", "r_knee", "r_ank",
          "l_hip", "l_knee", "l_ank", "r_eye", "l_eye", "r_ear", "l_ear")


@dataclass
class Garment:
    """One garment: what it is and how it is textured (everything needed to draw it worn or flat)."""
    category: str  # upper_body | lower_body | dresses
    kind: str  # tshirt | longsleeve | tank | pants | skirt | dress
    pattern: str  # solid | stripes | dots | checker | logo, or a NEW_PATTERNS family
    colour1: np.ndarray
    colour2: np.ndarray
    period: float = 0.6  # texture period in garment units (x NOMINAL_SW px at scale 1: 12-20 px on a 256x192 image)
    vertical: bool = False  # stripe direction
    phase: float = 0.0
    logo: str = "circle"  # circle | square | diamond | triangle
    length: float = 50.0  # skirt / dress length below the waist (base px)
    flare: float = 10.0
    sleeves: bool = True  # dresses: short sleeves or straps


@dataclass
class Person:
    """Body shape, pose and colours of one toy person (base px of the 256x192 frame)."""
    cx: float
    neck_y: float
    scale: float
    sw: float  # shoulder half-width
    hw: float  # hip half-width
    arm_r: tuple  # (shoulder abduction, elbow bend) in radians, person's right (image left)
    arm_l: tuple
    spread: tuple  # (knee, ankle) outward offsets of the legs
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    background: np.ndarray
    shoes: np.ndarray
    outfit: dict = field(default_factory=dict)  # {"upper": Garment, "lower": Garment} or {"dress": Garment}


# --- random draws --------------------------------------------------------------------------------------------------
def _jitter(rng, colour, amount=12.0):
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


def check_patterns(patterns) -> tuple[str, ...] | None:
    """``patterns`` as a tuple of known families (``None``: the default families), or a :class:`ConfigError`."""
    if patterns is None:
        return None
    patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
    unknown = [p for p in patterns if p not in ALL_PATTERNS]
    if not patterns or unknown:
        raise ConfigError(f"toy patterns {list(patterns)!r} must name one or more of {ALL_PATTERNS} (or be "
                          "null/None for the default families)")
    return patterns


def random_garment(rng: np.random.Generator, category: str, patterns=None) -> Garment:
    """Draw a garment of ``category``: kind, pattern and two contrasting colours. ``patterns``: the families to draw
    from (default: :data:`PATTERNS`)."""
    kind = {"upper_body": lambda: UPPER_KINDS[rng.integers(3)], "lower_body": lambda: LOWER_KINDS[rng.integers(2)],
            "dresses": lambda: "dress"}[category]()
    defaults = PATTERNS if category != "lower_body" else PATTERNS[:-1]  # no chest logo on trousers
    pattern = defaults[rng.integers(len(defaults))]  # drawn even when replaced: the later draws stay the same
    if patterns is not None:  # so a one-family wardrobe has the default people and garments, re-patterned
        family = [p for p in patterns if category != "lower_body" or p != "logo"]
        if not family:
            raise ConfigError(f"toy patterns {list(patterns)!r}: lower_body garments carry no chest logo; add "
                              "another family")
        pattern = family[rng.integers(len(family))] if len(family) > 1 else family[0]
    i1 = rng.integers(len(GARMENT_COLOURS))
    far = [j for j in range(len(GARMENT_COLOURS))
           if np.abs(GARMENT_COLOURS[j] - GARMENT_COLOURS[i1]).sum() > 150]  # the pattern must stay visible
    i2 = far[rng.integers(len(far))]
    return Garment(category=category, kind=kind, pattern=pattern, colour1=_jitter(rng, GARMENT_COLOURS[i1]),
                   colour2=_jitter(rng, GARMENT_COLOURS[i2]), period=float(rng.uniform(0.5, 0.75)),
                   vertical=bool(rng.integers(2)), phase=float(rng.uniform(0, 1)),
                   logo=("circle", "square", "diamond", "triangle")[rng.integers(4)],
                   length=float(rng.uniform(38, 60)), flare=float(rng.uniform(5, 14)), sleeves=bool(rng.integers(2)))


def random_person(rng: np.random.Generator, category: str, patterns=None) -> Person:
    """Draw a person and the outfit it wears; ``category`` is the garment the sample is about. ``patterns`` (default:
    the default families) applies to that garment only: the rest of the outfit stays in the default world."""
    deg = math.pi / 180
    arm = lambda: (float(rng.uniform(6, 30) * deg), float(rng.uniform(-10, 55) * deg))  # noqa: E731
    knee = float(rng.uniform(0, 5))
    p = Person(cx=96 + float(rng.uniform(-8, 8)), neck_y=58 + float(rng.uniform(-4, 4)),
               scale=float(rng.uniform(0.9, 1.02)), sw=float(rng.uniform(24, 29)), hw=float(rng.uniform(17, 21)),
               arm_r=arm(), arm_l=arm(), spread=(knee, knee + float(rng.uniform(-1, 4))),
               skin=_jitter(rng, SKIN_TONES[rng.integers(len(SKIN_TONES))], 8),
               hair=_jitter(rng, HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))], 8), long_hair=bool(rng.integers(2)),
               background=rng.uniform(205, 245, 3).astype(np.float32),
               shoes=_jitter(rng, GARMENT_COLOURS[rng.integers(len(GARMENT_COLOURS))], 10))
    main = random_garment(rng, category, patterns)
    if category == "dresses":
        p.outfit = {"dress": main}
    elif category == "upper_body":
        p.outfit = {"upper": main, "lower": random_garment(rng, "lower_body")}
    else:
        p.outfit = {"upper": random_garment(rng, "upper_body"), "lower": main}
    return p


def wearing(person: Person, garment: Garment) -> Person:
    """The same person (pose, body, colours) wearing ``garment`` instead of its garment of that category."""
    slot = {"upper_body": "upper", "lower_body": "lower", "dresses": "dress"}[garment.category]
    outfit = dict(person.outfit)
    outfit[slot] = garment
    return Person(**{**person.__dict__, "outfit": outfit})


# --- geometry --------------------------------------------------------------------------------------------------------
def joints(p: Person) -> dict:
    """Named joints in base px (x, y). The arms hang at their abduction angle and bend at the elbow."""
    s, ox, oy = p.scale, p.cx, p.neck_y
    P = lambda x, y: np.array([ox + s * x, oy + s * y], np.float64)  # noqa: E731
    j = dict(neck=P(0, 0), nose=P(0, -25), head=P(0, -27), r_eye=P(-5.5, -31), l_eye=P(5.5, -31),
             r_ear=P(-13, -28), l_ear=P(13, -28), r_sho=P(-p.sw, 5), l_sho=P(p.sw, 5))
    for side, sign, (a, b) in (("r", -1, p.arm_r), ("l", 1, p.arm_l)):
        sho = j[f"{side}_sho"]
        elb = sho + s * 40 * np.array([sign * math.sin(a), math.cos(a)])
        j[f"{side}_elb"] = elb
        j[f"{side}_wri"] = elb + s * 36 * np.array([sign * math.sin(a - b), math.cos(a - b)])
        hip_x = sign * 10
        j[f"{side}_hip"] = P(hip_x, 84)
        j[f"{side}_knee"] = P(hip_x + sign * p.spread[0], 130)
        j[f"{side}_ank"] = P(hip_x + sign * p.spread[1], 174)
    return j


class _Canvas:
    """A part map and the base-px → pixel scaling, with the few drawing primitives the toy world needs."""

    def __init__(self, size):
        self.h, self.w = size
        self.sx, self.sy = self.w / BASE_W, self.h / BASE_H
        self.parts = np.zeros((self.h, self.w), np.uint8)

    def _px(self, pts):  # base px -> fixed-point pixels (4 fractional bits) for sub-pixel accurate drawing
        pts = np.asarray(pts, np.float64).reshape(-1, 2) * (self.sx, self.sy)
        return np.round(pts * 16).astype(np.int32)

    def _t(self, thickness):
        return max(1, int(round(thickness * math.sqrt(self.sx * self.sy))))

    def poly(self, pts, pid):
        cv2.fillPoly(self.parts, [self._px(pts)], int(pid), cv2.LINE_8, 4)

    def limb(self, pts, thickness, pid):
        """A polyline of the given thickness with round joints and ends."""
        px, t = self._px(pts), self._t(thickness)
        for a, b in zip(px[:-1], px[1:]):
            cv2.line(self.parts, tuple(map(int, a)), tuple(map(int, b)), int(pid), t, cv2.LINE_8, 4)
        for c in px:
            cv2.circle(self.parts, tuple(map(int, c)), t * 8, int(pid), -1, cv2.LINE_8, 4)

    def ellipse(self, centre, axes, pid):
        c = self._px(centre)[0]
        ax = (max(1, int(round(axes[0] * self.sx))), max(1, int(round(axes[1] * self.sy))))
        cv2.ellipse(self.parts, (int(c[0]) >> 4, int(c[1]) >> 4), ax, 0, 0, 360, int(pid), -1)


def _lerp(a, b, t):
    return a + t * (b - a)


def _draw_garment(cv: _Canvas, p: Person, j: dict, g: Garment, flat: bool = False):
    """Draw garment ``g`` on the part map for body ``p`` (worn) or its nominal flat body (``flat``)."""
    s = p.scale
    P = lambda x, y: (p.cx + s * x, p.neck_y + s * y)  # noqa: E731
    sw, hw = p.sw, p.hw
    neckline = BG if flat else NECK
    if g.kind in ("pants", "skirt"):
        if g.kind == "pants":
            cv.poly([P(-hw - 2, 80), P(hw + 2, 80), P(hw + 3, 98), P(-hw - 3, 98)], LOWER)
            for side, pid in (("r", LOWER_R), ("l", LOWER_L)):
                ank = j[f"{side}_ank"] + (0, -4 * s)
                cv.limb([j[f"{side}_hip"], j[f"{side}_knee"], ank], 19 * s, pid)
        else:
            L, f = g.length, g.flare
            cv.poly([P(-hw - 2, 80), P(hw + 2, 80), P(hw + 2 + f, 80 + L), P(-hw - 2 - f, 80 + L)], LOWER)
        return
    body, rs, ls = (DRESS, DRESS_RS, DRESS_LS) if g.kind == "dress" else (UPPER, UPPER_RS, UPPER_LS)
    tank = g.kind == "tank" or (g.kind == "dress" and not g.sleeves)
    top = ([P(-7, -1), P(-sw * 0.55, 0), P(-sw * 0.62, 6), P(-sw * 0.86, 24)] if tank else
           [P(-7, -1), P(-sw + 2, 1), P(-sw - 4, 8), P(-sw * 0.86, 30)])
    if g.kind == "dress":
        L, f = g.length, g.flare
        bottom = [P(-sw * 0.78, 52), P(-hw - 3, 84), P(-hw - 3 - f, 84 + L)]
    else:
        bottom = [P(-sw * 0.78, 52), P(-hw - 3, 88)]
    left = top + bottom
    right = [(2 * p.cx - x, y) for x, y in left[::-1]]  # mirror about the body axis
    cv.poly(left + right, body)
    cv.ellipse(P(0, 2), (10, 11) if tank else (8, 7), neckline)
    if flat is False:  # the arms are skin between torso and sleeves
        _draw_arms(cv, p, j)
    if not tank:
        long_sleeve = g.kind == "longsleeve"
        for side, pid in (("r", rs), ("l", ls)):
            sho, elb, wri = j[f"{side}_sho"], j[f"{side}_elb"], j[f"{side}_wri"]
            pts = [sho, elb, _lerp(elb, wri, 0.92)] if long_sleeve else [sho, _lerp(sho, elb, 0.45)]
            cv.limb(pts, 16 * s, pid)


def _draw_arms(cv: _Canvas, p: Person, j: dict):
    s = p.scale
    for side, pid in (("r", R_ARM), ("l", L_ARM)):
        sho, elb, wri = j[f"{side}_sho"], j[f"{side}_elb"], j[f"{side}_wri"]
        cv.limb([sho, elb], 11 * s, pid)
        cv.limb([elb, wri], 9 * s, pid)
        hand = wri + 4 * s * (wri - elb) / max(1e-6, np.linalg.norm(wri - elb))
        cv.ellipse(hand, (5 * s, 5 * s), pid)


def draw_person_parts(p: Person, size=(BASE_H, BASE_W)):
    """Part map (H,W uint8 of part ids) and joints of a dressed person. Drawing order = depth order (back to front)."""
    cv, j = _Canvas(size), joints(p)
    s = p.scale
    P = lambda x, y: (p.cx + s * x, p.neck_y + s * y)  # noqa: E731
    if p.long_hair:
        cv.poly([P(-15, -32), P(15, -32), P(17, 14), P(-17, 14)], HAIR)
    for side, pid in (("r", R_LEG), ("l", L_LEG)):
        cv.limb([j[f"{side}_hip"], j[f"{side}_knee"]], 15 * s, pid)
        cv.limb([j[f"{side}_knee"], j[f"{side}_ank"]], 12 * s, pid)
    if "lower" in p.outfit:
        _draw_garment(cv, p, j, p.outfit["lower"])
    for side, pid, sign in (("r", R_SHOE, -1), ("l", L_SHOE, 1)):
        cv.ellipse(j[f"{side}_ank"] + (sign * 2 * s, 5 * s), (9 * s, 5 * s), pid)
    cv.poly([P(-6, -14), P(6, -14), P(6, 4), P(-6, 4)], NECK)
    _draw_garment(cv, p, j, p.outfit.get("upper") or p.outfit["dress"])
    cv.ellipse(P(0, -31), (15.5 * s, 16 * s), HAIR)
    cv.ellipse(P(0, -26), (12.5 * s, 15 * s), FACE)
    if not p.long_hair:
        cv.ellipse(P(0, -40), (11 * s, 5 * s), HAIR)
    return cv, j


def _flat_body(g: Garment) -> Person:
    """The nominal body a garment is laid out on for its in-shop picture (arms out, legs apart, scaled to fill)."""
    deg = math.pi / 180
    # scale and neck position chosen so each kind fills most of the 256x192 frame, vertically centred
    if g.kind == "skirt":
        scale, neck_y = 1.9, 128 - 1.9 * (80 + g.length / 2)
    else:
        scale, top, height = {"upper_body": (1.5, 0, 88), "lower_body": (1.3, 80, 98),
                              "dresses": (1.3, 0, 84 + g.length)}[g.category]
        neck_y = 128 - scale * (top + height / 2)
    return Person(cx=96.0, neck_y=neck_y, scale=scale, sw=NOMINAL_SW, hw=19.0, arm_r=(20 * deg, 0.0),
                  arm_l=(20 * deg, 0.0), spread=(5.0, 7.0), skin=np.zeros(3, np.float32),
                  hair=np.zeros(3, np.float32), long_hair=False, background=np.full(3, 255, np.float32),
                  shoes=np.zeros(3, np.float32))


# --- colouring ---------------------------------------------------------------------------------------------------
_PART_SLOT = np.zeros(len(_PART_LABEL), np.uint8)  # 0 = not a garment, 1 upper, 2 lower, 3 dress
_PART_SLOT[list(UPPER_PARTS)], _PART_SLOT[list(LOWER_PARTS)], _PART_SLOT[list(DRESS_PARTS)] = 1, 2, 3
_SLOTS = {1: "upper", 2: "lower", 3: "dress"}


def texture(g: Garment, xs, ys, origin, unit) -> np.ndarray:
    """The garment's colour at pixels (xs, ys): (N,3) uint8. ``origin`` (x, y) and ``unit`` (ux, uy) are in pixels;
    garment coordinates u, v = (pixel centre − origin) / unit are shared by the worn and the flat garment, so both show
    the same pattern at the same scale relative to the garment."""
    u = (np.asarray(xs, np.float32) + 0.5 - origin[0]) / unit[0]
    v = (np.asarray(ys, np.float32) + 0.5 - origin[1]) / unit[1]
    per = g.period
    if g.pattern == "solid":
        second = np.zeros(u.shape, bool)
    elif g.pattern == "stripes":
        second = np.floor(2 * ((u if g.vertical else v) / per + g.phase)) % 2 == 1
    elif g.pattern == "checker":
        second = (np.floor(2 * u / per + g.phase) + np.floor(2 * v / per + g.phase)) % 2 == 1
    elif g.pattern == "dots":
        du, dv = u / per + g.phase, v / per + g.phase
        second = (du - np.round(du)) ** 2 + (dv - np.round(dv)) ** 2 < 0.3 ** 2
    elif g.pattern == "plaid":  # bands of colour 2 across and down, a quarter period wide, blended where they cross
        across = (v / per + g.phase) % 1 < PLAID_BAND
        down = (u / per + g.phase) % 1 < PLAID_BAND
        blend = (g.colour1 + g.colour2) / 2
        colours = np.stack([g.colour1, g.colour2, blend]).round().clip(0, 255).astype(np.uint8)
        return colours[(across ^ down) + 2 * (across & down)]
    else:  # chest logo: centred 1.2 units below the neck base, radius 0.45 units
        du, dv, r = u, v - 1.2, 0.45
        second = {"circle": lambda: du ** 2 + dv ** 2 < r ** 2,
                  "square": lambda: np.maximum(np.abs(du), np.abs(dv)) < 0.85 * r,
                  "diamond": lambda: np.abs(du) + np.abs(dv) < 1.2 * r,
                  "triangle": lambda: (dv < 0.8 * r) & (dv > -r + 1.9 * np.abs(du))}[g.logo]()
    colours = np.stack([g.colour1, g.colour2]).round().clip(0, 255).astype(np.uint8)
    return colours[second.astype(np.uint8)]


def _garment_frame(cv: _Canvas, p: Person, g: Garment):
    """Texture origin (neck base, or waist for lower garments) and unit, in pixels."""
    oy = p.neck_y + (80 * p.scale if g.category == "lower_body" else 0)
    unit = NOMINAL_SW * p.scale
    return (p.cx * cv.sx, oy * cv.sy), (unit * cv.sx, unit * cv.sy)


def _paint_garments(img: np.ndarray, cv: _Canvas, p: Person, outfit: dict) -> np.ndarray:
    slots = _PART_SLOT[cv.parts]
    for k, name in _SLOTS.items():
        g = outfit.get(name)
        if g is not None:
            ys, xs = np.nonzero(slots == k)
            img[ys, xs] = texture(g, xs, ys, *_garment_frame(cv, p, g))
    return img


def _outline(img: np.ndarray, parts: np.ndarray, factor: float = 0.6) -> np.ndarray:
    """Darken the pixels where the part changes: a cartoon outline that keeps sleeves visible over a torso of the
    same colour."""
    edge = np.zeros(parts.shape, bool)
    edge[1:] |= parts[1:] != parts[:-1]
    edge[:, 1:] |= parts[:, 1:] != parts[:, :-1]
    img[edge] = (img[edge] * factor).astype(np.uint8)
    return img


def colourise_person(cv: _Canvas, p: Person, j: dict) -> np.ndarray:
    lut = np.zeros((len(_PART_LABEL), 3), np.float32)
    lut[BG], lut[HAIR] = p.background, p.hair
    lut[[FACE, NECK, R_ARM, L_ARM, R_LEG, L_LEG]] = p.skin
    lut[[R_SHOE, L_SHOE]] = p.shoes
    img = lut.round().clip(0, 255).astype(np.uint8)[cv.parts]
    img = _outline(_paint_garments(img, cv, p, p.outfit), cv.parts)
    # face details are paint only: the parse map keeps calling them face
    t = max(1, int(round(1.8 * p.scale * math.sqrt(cv.sx * cv.sy))))
    for eye in ("r_eye", "l_eye"):
        x, y = j[eye] * (cv.sx, cv.sy)
        cv2.circle(img, (int(round(x)), int(round(y))), t, (40, 30, 30), -1)
    mx, my = (j["nose"] + (0, 6 * p.scale)) * (cv.sx, cv.sy)
    cv2.line(img, (int(mx - 3 * cv.sx), int(my)), (int(mx + 3 * cv.sx), int(my)), (150, 60, 60), max(1, t // 2))
    return img


def render_person(p: Person, size=(BASE_H, BASE_W)):
    """Render a dressed person: RGB uint8 (H,W,3), canonical parse (H,W uint8), COCO-18 keypoints (18,2) in pixels."""
    cv, j = draw_person_parts(p, size)
    rgb = colourise_person(cv, p, j)
    kp = np.stack([j[k] for k in COCO18]).astype(np.float32) * np.array([cv.sx, cv.sy], np.float32)
    lut = _PART_LABEL.copy()
    if p.outfit.get("lower") is not None and p.outfit["lower"].kind == "skirt":
        lut[list(LOWER_PARTS)] = 5  # ATR skirt
    return rgb, lut[cv.parts], kp


def render_garment(g: Garment, size=(BASE_H, BASE_W)):
    """The in-shop picture of ``g``: RGB uint8 (H,W,3) on white and its cloth mask (H,W bool)."""
    p = _flat_body(g)
    cv, j = _Canvas(size), joints(p)
    _draw_garment(cv, p, j, g, flat=True)
    img = np.full(cv.parts.shape + (3,), 255, np.uint8)
    slot = {"upper_body": "upper", "lower_body": "lower", "dresses": "dress"}[g.category]
    img = _outline(_paint_garments(img, cv, p, {slot: g}), cv.parts, 0.75)
    return img, cv.parts != BG


# --- writing the layouts ---------------------------------------------------------------------------------------------
def sample_rng(seed: int, split: str, category: str, index: int) -> np.random.Generator:
    """The generator of one sample: independent of how many samples are generated."""
    return np.random.default_rng([int(seed), ("train", "test").index(split), CATEGORIES.index(category), int(index)])


def unpaired_permutation(n: int, seed: int, category: str) -> np.ndarray:
    """A random permutation without fixed points (every test person gets another person's garment)."""
    rng = np.random.default_rng([int(seed), 7, CATEGORIES.index(category), n])
    perm = rng.permutation(n)
    for i in range(n if n > 1 else 0):
        if perm[i] == i:  # swapping with the next entry removes the fixed point and cannot create one
            k = (i + 1) % n
            perm[i], perm[k] = perm[k], perm[i]
    return perm


def _imwrite(path: Path, rgb: np.ndarray, quality: int = 95):
    if not cv2.imwrite(str(path), rgb[..., ::-1] if rgb.ndim == 3 else rgb, [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"could not write {path}")


def _write_lip_png(path: Path, labels: np.ndarray):
    img = Image.fromarray(CANONICAL_TO_LIP[labels], mode="P")
    img.putpalette(LIP_PALETTE + [0] * (768 - len(LIP_PALETTE)))
    img.save(path, compress_level=1)


def body25_from_coco18(kp: np.ndarray) -> list:
    """COCO-18 pixel keypoints → the flat BODY_25 ``pose_keypoints_2d`` list (mid-hip added, feet missing)."""
    b = np.zeros((25, 3), np.float32)
    b[0:8, :2], b[9:19, :2] = kp[0:8], kp[8:18]
    b[8, :2] = (kp[8] + kp[11]) / 2  # mid-hip
    b[:19, 2] = 0.9
    b[8, 2] = 0.9
    return [round(float(v), 3) for v in b.reshape(-1)]


def _names(layout: str, category: str, split: str, i: int):
    idx = i + (TEST_OFFSET if split == "test" else 0)
    if layout == "vitonhd":
        return f"{idx:05d}_00", f"{idx:05d}_00"
    base = f"{CATEGORIES.index(category)}{idx:05d}"
    return f"{base}_0", f"{base}_1"


def _write_vitonhd_sample(root: Path, split: str, stem: str, person: Person, size):
    rgb, labels, kp = render_person(person, size)
    cloth, cmask = render_garment(person.outfit["upper"], size)
    d = root / split
    _imwrite(d / "image" / f"{stem}.jpg", rgb)
    _imwrite(d / "cloth" / f"{stem}.jpg", cloth)
    _imwrite(d / "cloth-mask" / f"{stem}.jpg", cmask.astype(np.uint8) * 255)
    _write_lip_png(d / "image-parse-v3" / f"{stem}.png", labels)
    pose = {"version": 1.3, "people": [{"person_id": [-1], "pose_keypoints_2d": body25_from_coco18(kp),
                                        "face_keypoints_2d": [], "hand_left_keypoints_2d": [],
                                        "hand_right_keypoints_2d": []}]}
    (d / "openpose_json" / f"{stem}_keypoints.json").write_text(json.dumps(pose))


def _write_dresscode_sample(root: Path, category: str, pstem: str, gstem: str, person: Person, size):
    rgb, labels, kp = render_person(person, size)
    slot = {"upper_body": "upper", "lower_body": "lower", "dresses": "dress"}[category]
    cloth, _ = render_garment(person.outfit[slot], size)
    d = root / category
    base = pstem[:-2]
    _imwrite(d / "images" / f"{pstem}.jpg", rgb)
    _imwrite(d / "images" / f"{gstem}.jpg", cloth)
    cv2.imwrite(str(d / "label_maps" / f"{base}_4.png"), CANONICAL_TO_ATR[labels], [cv2.IMWRITE_PNG_COMPRESSION, 1])
    # Dress Code keypoints live in 384x512 (W x H) pixels whatever the image size
    k = kp * np.array([384 / size[1], 512 / size[0]], np.float32)
    rows = [[round(float(x), 3), round(float(y), 3), 1.0, float(i)] for i, (x, y) in enumerate(k)]
    (d / "keypoints" / f"{base}_2.json").write_text(json.dumps({"keypoints": rows}))


_SLOT_OF = {"upper_body": "upper", "lower_body": "lower", "dresses": "dress"}


def _person(seed, split, category, i, patterns=None) -> Person:
    return random_person(sample_rng(seed, split, category, i), category, patterns)


def _write_task(task) -> int:
    """Write one sample (``kind`` "sample") or one unpaired ground truth (``kind`` "gt"); runs in worker processes."""
    kind, root, layout, category, split, i, k, seed, size, patterns = task
    person = _person(seed, split, category, i, patterns)
    pstem, gstem = _names(layout, category, split, i)
    if kind == "sample":
        if layout == "vitonhd":
            _write_vitonhd_sample(root, split, pstem, person, size)
        else:
            _write_dresscode_sample(root, category, pstem, gstem, person, size)
    else:  # the same person wearing test garment k: exact ground truth of the unpaired pair (i, k)
        _, gstem = _names(layout, category, split, k)
        other = _person(seed, split, category, k, patterns).outfit[_SLOT_OF[category]]
        rgb, labels, _ = render_person(wearing(person, other), size)
        gt_dir = (root / "test" if layout == "vitonhd" else root / category) / UNPAIRED_DIRS[layout]
        _imwrite(gt_dir / f"{pstem}__{gstem}.jpg", rgb)
        # canonical labels (ATR + 18 neck): evaluation reads the garment pixels of the truth from it
        cv2.imwrite(str(gt_dir / f"{pstem}__{gstem}.png"), labels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return 1


def _make_dirs(root: Path, layout: str, categories):
    if layout == "vitonhd":
        for split in ("train", "test"):
            for sub in ("image", "cloth", "cloth-mask", "image-parse-v3", "openpose_json"):
                (root / split / sub).mkdir(parents=True, exist_ok=True)
        (root / "test" / UNPAIRED_DIRS[layout]).mkdir(parents=True, exist_ok=True)
    else:
        for c in categories:
            for sub in ("images", "label_maps", "keypoints", UNPAIRED_DIRS[layout]):
                (root / c / sub).mkdir(parents=True, exist_ok=True)


def _write_pairs(root: Path, layout: str, pairs: dict):
    """``pairs[category][file name]`` = list of (person stem, garment stem)."""
    line = lambda p, g: f"{p}.jpg {g}.jpg"  # noqa: E731
    if layout == "vitonhd":
        rows = pairs["upper_body"]
        (root / "train_pairs.txt").write_text("".join(line(*r) + "\n" for r in rows["train_pairs.txt"]))
        # like the real VITON-HD, test_pairs.txt lists the unpaired test pairs
        (root / "test_pairs.txt").write_text("".join(line(*r) + "\n" for r in rows["test_pairs_unpaired.txt"]))
        return
    for name in ("train_pairs.txt", "test_pairs_paired.txt", "test_pairs_unpaired.txt"):
        everything = []
        for ci, category in enumerate(CATEGORIES):
            rows = pairs[category][name]
            (root / category / name).write_text("".join(line(*r) + "\n" for r in rows))
            everything += [f"{line(*r)} {ci}\n" for r in rows]  # root files carry the category as 0/1/2
        (root / name).write_text("".join(everything))


def _claim(root: Path, overwrite: bool):
    """Refuse a non-empty folder this generator did not write (its pairs files and images would be overwritten), then
    mark the folder as ours before the first file is written, so an interrupted run can simply be repeated."""
    info = root / "toy_info.json"
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        try:
            ours = json.loads(info.read_text()).get("generator") == "ootd_lib.toydata"
        except (OSError, ValueError, AttributeError):
            ours = False
        if not ours:
            raise InputError(f"{root} is not empty and holds no toy_info.json written by ootd_lib.toydata; refusing to "
                             "overwrite its files: choose a new or empty folder, or pass --force (overwrite=True)")
    root.mkdir(parents=True, exist_ok=True)
    info.write_text(json.dumps(dict(generator="ootd_lib.toydata", complete=False)))  # replaced when done


def generate_toy_dataset(out, layout: str = "vitonhd", n_train: int = 64, n_test: int = 16, seed: int = 0,
                         size=(256, 192), progress: bool = True, workers: int | None = None,
                         overwrite: bool = False, patterns=None) -> Path:
    """Write a toy wardrobe under ``out`` in the ``vitonhd`` or ``dresscode`` layout and return ``out``.

    ``n_train`` / ``n_test`` are persons (= paired pairs) per split; for Dress Code per category. ``size`` is the
    (H, W) of every written image. Unpaired test pairs also get their exact ground truth (toy-only folder).
    ``patterns``: the families of the garments the samples are about (e.g. ``("plaid",)``, see :data:`ALL_PATTERNS`;
    default ``None``: :data:`PATTERNS`); with one family, the same people and garments as the default, re-patterned.
    ``workers``: processes for large datasets (default: all CPUs when more than 256 samples are written; Linux only,
    elsewhere serial); the files written do not depend on it. ``out`` must be new, empty or an earlier toy wardrobe
    (it holds our ``toy_info.json``); ``overwrite=True`` writes into any folder.
    """
    import os

    from tqdm.auto import tqdm

    if layout not in LAYOUTS:
        raise ConfigError(f"toy layout {layout!r} is not one of {LAYOUTS}")
    if not (0 <= n_train < TEST_OFFSET and 0 <= n_test < 100000 - TEST_OFFSET):
        raise ConfigError(f"toy sizes n_train={n_train}, n_test={n_test} must be in [0, {TEST_OFFSET}) and "
                          f"[0, {100000 - TEST_OFFSET})")
    h, w = (int(v) for v in size)
    if h < 64 or w < 48:
        raise ConfigError(f"toy image size {size!r} is too small; use at least 64x48 (H x W)")
    size, root = (h, w), Path(out)
    patterns = check_patterns(patterns)
    _claim(root, overwrite)
    categories = ("upper_body",) if layout == "vitonhd" else CATEGORIES
    _make_dirs(root, layout, categories)

    tasks, pairs = [], {}
    for category in categories:
        rows = pairs[category] = {}
        rows["train_pairs.txt"] = [_names(layout, category, "train", i) for i in range(n_train)]
        rows["test_pairs_paired.txt"] = [_names(layout, category, "test", i) for i in range(n_test)]
        perm = unpaired_permutation(n_test, seed, category)
        rows["test_pairs_unpaired.txt"] = [(_names(layout, category, "test", i)[0],
                                            _names(layout, category, "test", int(k))[1]) for i, k in enumerate(perm)]
        tasks += [("sample", root, layout, category, "train", i, None, seed, size, patterns) for i in range(n_train)]
        tasks += [("sample", root, layout, category, "test", i, None, seed, size, patterns) for i in range(n_test)]
        tasks += [("gt", root, layout, category, "test", i, int(k), seed, size, patterns) for i, k in enumerate(perm)]

    import multiprocessing as mp
    import sys

    workers = workers if workers is not None else ((os.cpu_count() or 1) if len(tasks) > 256 else 1)
    # Only fork (Linux): spawn would re-import the caller's script, which hangs scripts without a __main__ guard.
    # The workers only draw with numpy/OpenCV and write files, so forking a process with torch threads is harmless.
    if not (sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()):
        workers = 1
    with tqdm(total=len(tasks), desc=f"toy {layout}", disable=not progress_enabled(progress),
              unit="sample") as bar:
        if workers <= 1:
            for t in tasks:
                bar.update(_write_task(t))
        else:
            with mp.get_context("fork").Pool(workers) as pool:
                for done in pool.imap_unordered(_write_task, tasks, chunksize=32):
                    bar.update(done)
    _write_pairs(root, layout, pairs)
    info = dict(layout=layout, n_train=n_train, n_test=n_test, seed=seed, size=list(size), categories=list(categories),
                unpaired_ground_truth=UNPAIRED_DIRS[layout], generator="ootd_lib.toydata",
                generator_version=GENERATOR_VERSION)
    if patterns is not None:  # no key = the default families, so default folders stay byte-identical to older ones
        info["patterns"] = list(patterns)
    (root / "toy_info.json").write_text(json.dumps(info, indent=2))
    return root


def info_patterns(info: dict) -> tuple[str, ...] | None:
    """The garment families a wardrobe's ``toy_info.json`` records (``None``: the default families)."""
    patterns = info.get("patterns")
    return None if patterns is None else tuple(patterns)


def toy_dataset(out, layout: str = "vitonhd", n_train: int = 64, n_test: int = 16, seed: int = 0,
                size=(256, 192), progress: bool = True, patterns=None) -> Path:
    """:func:`generate_toy_dataset`, cached: reuse ``out`` when its ``toy_info.json`` says it holds exactly this
    wardrobe (same arguments, same generator version), otherwise write it afresh.

    A folder written by this generator with other arguments or an older version is deleted first (it is derived
    data); a non-empty folder without ``toy_info.json`` (real data, or anything else) is never touched."""
    import shutil

    root = Path(out)
    patterns = check_patterns(patterns)
    want = dict(layout=layout, n_train=int(n_train), n_test=int(n_test), seed=int(seed), size=[int(v) for v in size],
                generator="ootd_lib.toydata", generator_version=GENERATOR_VERSION,
                patterns=None if patterns is None else list(patterns))
    info_path = root / "toy_info.json"
    if info_path.is_file():
        try:
            info = json.loads(info_path.read_text())
        except json.JSONDecodeError:
            info = {}
        if all(info.get(k) == v for k, v in want.items()):
            return root
        if info.get("generator") != "ootd_lib.toydata":
            raise ConfigError(f"{info_path} was not written by ootd_lib.toydata; refusing to overwrite {root} "
                              "(choose another folder for the toy data)")
        shutil.rmtree(root)
    elif root.is_dir() and any(root.iterdir()):
        return root
    return generate_toy_dataset(root, layout=layout, n_train=n_train, n_test=n_test, seed=seed, size=size,
                                progress=progress, patterns=patterns)


# --- evaluation support (toy only: the generator knows the truth) -------------------------------------------------------
def test_index(layout: str, stem: str) -> tuple[str, int]:
    """(category, test index) of a test person or garment file stem written by this generator."""
    digits = stem.split("_")[0]
    if layout == "vitonhd":
        return "upper_body", int(digits) - TEST_OFFSET
    return CATEGORIES[int(digits[0])], int(digits[1:]) - TEST_OFFSET


def candidate_renders(info: dict, category: str, person: int, garments) -> np.ndarray:
    """Test person ``person`` wearing each test garment in ``garments`` (indices into the test split of ``category``):
    (K, H, W, 3) uint8 at the wardrobe's size. ``info`` is the wardrobe's ``toy_info.json`` (its garment families
    too, so a plaid wardrobe's candidates are its own plaid garments). What garment identification compares a try-on
    result with (resize them as the dataset readers resize the truth)."""
    seed, size, patterns = info["seed"], tuple(info["size"]), info_patterns(info)
    body = _person(seed, "test", category, person, patterns)
    slot = _SLOT_OF[category]
    return np.stack([render_person(wearing(body, _person(seed, "test", category, int(k), patterns).outfit[slot]),
                                   size)[0] for k in garments])


def family_renders(info: dict, category: str, person: int, garment: int):
    """Test person ``person`` wearing test garment ``garment`` drawn in every garment family (the same colours, period
    and phase; its own family first): ``(families, (F, H, W, 3) uint8)`` at the wardrobe's size. What pattern
    identification compares a try-on result with: colour alone cannot tell these renders apart."""
    import dataclasses

    seed, size, patterns = info["seed"], tuple(info["size"]), info_patterns(info)
    body = _person(seed, "test", category, person, patterns)
    g = _person(seed, "test", category, garment, patterns).outfit[_SLOT_OF[category]]
    others = [f for f in ALL_PATTERNS if f != g.pattern and (category != "lower_body" or f != "logo")]
    families = [g.pattern] + others
    return families, np.stack([render_person(wearing(body, dataclasses.replace(g, pattern=f)), size)[0]
                               for f in families])
