"""A second, independent reading of shared/MASK_RULES.md (``get_mask_location``), for the tests only.

Written from the rules text, not from :mod:`ootd_lib.masking`, and with other tools, so that a mistake in one reading
shows up as a disagreement with the other:

* the drawn arm is pure geometry on pixel centres: the points within W/2 of a segment whose foot falls inside the
  segment (flat, butt ends), plus discs of radius W/2 at the elbow (the rounded joint) and at the shoulder;
* ``dilate(m, 5×5, n iterations)`` is one ``scipy.ndimage`` maximum filter of a (4n+1)×(4n+1) square;
* hole filling and the largest region use ``scipy.ndimage.label`` (4-connected outside, as a flood fill from the
  corner; 8-connected regions).

Sizes other than 512×384 follow ootd_lib's documented convention (the :mod:`ootd_lib.masking` docstring): the arm
width is ``int(arm_width / 512 * H)`` as released, and a rule of n dilation iterations runs ``max(1, round(n·H/512))``.
Keypoints are at the parse map's size, NaN or ``[0, 0]`` for a missing joint.
"""

import numpy as np
from scipy import ndimage

# ATR labels plus 18 = neck (MASK_RULES.md, "Label spaces")
HAT, SUNGLASSES, UPPER, SKIRT, PANTS, DRESS = 1, 3, 4, 5, 6, 7
LEFT_SHOE, RIGHT_SHOE, FACE, LEFT_LEG, RIGHT_LEG, LEFT_ARM, RIGHT_ARM, BAG, NECK = 9, 10, 11, 12, 13, 14, 15, 16, 18


def iterations(n: int, height: int) -> int:
    return n if height == 512 else max(1, round(n * height / 512))


def dilate(mask: np.ndarray, n: int) -> np.ndarray:
    """n iterations of a 5×5 square dilation = one (4n+1)² square maximum; outside the image counts as empty."""
    return ndimage.maximum_filter(mask.astype(np.uint8), size=4 * n + 1, mode="constant", cval=0) > 0


def band(shape, a, b, half: float) -> np.ndarray:
    """Pixels within ``half`` of segment a→b whose perpendicular foot lies on the segment (flat ends, no caps)."""
    yy, xx = np.mgrid[:shape[0], :shape[1]].astype(np.float64)
    d = b - a
    length2 = float(d @ d)
    if length2 == 0:
        return np.zeros(shape, bool)
    t = ((xx - a[0]) * d[0] + (yy - a[1]) * d[1]) / length2
    dist2 = (xx - a[0] - t * d[0]) ** 2 + (yy - a[1] - t * d[1]) ** 2
    return (t >= 0) & (t <= 1) & (dist2 <= half ** 2)


def disc(shape, c, r: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (xx - c[0]) ** 2 + (yy - c[1]) ** 2 <= r ** 2


def drawn_arm(shape, shoulder, elbow, wrist, width: int) -> np.ndarray:
    """Rule 3: polyline shoulder → elbow → wrist' (wrist' = elbow + 1.2 (wrist − elbow)) of width W, round joint,
    flat ends, plus a disc of radius W/2 at the shoulder."""
    shoulder, elbow, wrist = (np.asarray(p, np.float64) for p in (shoulder, elbow, wrist))
    wrist = elbow + 1.2 * (wrist - elbow)
    half = width / 2
    return (band(shape, shoulder, elbow, half) | band(shape, elbow, wrist, half) | disc(shape, elbow, half)
            | disc(shape, shoulder, half))


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Rule 8, first half: clear the 1-px border; what the outside (4-connected to the corner) does not reach is
    filled."""
    m = mask.astype(bool).copy()
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = False
    labels, _ = ndimage.label(~m)  # default structure: 4-connectivity
    outside = labels == labels[0, 0]
    return m | ~outside


def largest_region(mask: np.ndarray) -> np.ndarray:
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))  # 8-connectivity
    if n == 0:
        return np.zeros(mask.shape, bool)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def reference_mask(parse, keypoints, category: str, model_type: str) -> np.ndarray:
    """Boolean (H, W) inpaint mask of ``get_mask_location`` read from MASK_RULES.md, rule by rule."""
    P = np.asarray(parse)
    h = P.shape[0]
    kp = np.nan_to_num(np.asarray(keypoints, np.float64), nan=0.0)

    # 1. widths and label groups
    arm_width = {"hd": 60, "dc": 45}[model_type]
    head = np.isin(P, [HAT, SUNGLASSES, FACE])
    fixed = np.isin(P, [LEFT_SHOE, RIGHT_SHOE, HAT, SUNGLASSES, BAG])
    # 2. per category
    if category == "dresses":
        pm = np.isin(P, [UPPER, SKIRT, PANTS, DRESS])
    elif category == "upper_body":
        pm = np.isin(P, [UPPER, DRESS])
        fixed |= np.isin(P, [SKIRT, PANTS])
    elif category == "lower_body":
        pm = np.isin(P, [SKIRT, PANTS, LEFT_LEG, RIGHT_LEG])
        fixed |= np.isin(P, [UPPER, LEFT_ARM, RIGHT_ARM])
    else:
        raise ValueError(category)
    changeable = (P == 0) | ((P != 0) & ~fixed)

    # 3. arms
    arms = np.zeros(P.shape, bool)
    if category in ("upper_body", "dresses"):
        width = int(arm_width / 512 * h)
        for label, (s, e, w) in ((RIGHT_ARM, (2, 3, 4)), (LEFT_ARM, (5, 6, 7))):
            parsed = P == label
            if kp[w, 0] <= 1 and kp[w, 1] <= 1:
                drawn = parsed
            else:
                drawn = drawn_arm(P.shape, kp[s], kp[e], kp[w], width)
            fixed |= parsed & ~drawn  # the hands
            arms |= drawn
    # 4.
    fixed |= head
    # 5.
    pm = dilate(pm, iterations(5, h))
    # 6.
    if category in ("upper_body", "dresses"):
        pm |= dilate(P == NECK, iterations(1, h)) & ~head
        pm |= dilate(arms, iterations(4, h))
    # 7.
    keep = changeable & ~pm
    inpaint = ~(keep | fixed)
    # 8.
    return largest_region(fill_holes(inpaint))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = (a | b).sum()
    return 1.0 if union == 0 else float((a & b).sum() / union)
