"""The two estimators the released pipeline runs on a real photo before masking: a human parser and a body pose.

- ``HumanParser``: two ONNX segmentation networks (ATR 18 labels and LIP 20 labels) run with onnxruntime. The ATR map is
  the answer; LIP only contributes the neck (ATR says face, LIP does not), which becomes canonical label 18.
- ``OpenPoseBody``: the CMU two-branch, six-stage body network ("Realtime Multi-Person Pose Estimation", Cao et al.
  2017), re-implemented in torch so it loads the released ``body_pose_model.pth`` as a plain state dict, followed by the
  usual heatmap-peak + part-affinity-field decoding to COCO-18 keypoints of one person.

Both work at the released resolution, 512×384 (H×W), and are only needed for the official profile: toy and dataset
images come with their own parse maps and keypoints. Weight files come from a local folder or the hub
(levihsu/OOTDiffusion, only these files); broken files raise one-line ``WeightsError``s that say how to re-download.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import InputError, PoseError, WeightsError
from .hub import OFFICIAL_REPO, check_weight_file, redownload_hint, resolve_files

ATR_FILE = "checkpoints/humanparsing/parsing_atr.onnx"
LIP_FILE = "checkpoints/humanparsing/parsing_lip.onnx"
POSE_FILE = "checkpoints/openpose/ckpts/body_pose_model.pth"
HEIGHT, WIDTH = 512, 384  # the released estimators see the person at this size

ATR_FACE, LIP_FACE, NECK = 11, 13, 18
UPPER, L_ARM, R_ARM = 4, 14, 15
MAX_HOLE = 2000  # ATR post-processing fills holes in clothes/arms up to this many pixels


def locate(folder: str | Path, filename: str) -> Path:
    """``filename`` (path in the hub repo) inside ``folder``: the repo root, its ``checkpoints/`` folder, or flat."""
    folder = Path(folder)
    parts = Path(filename).parts
    candidates = [folder / filename, folder / Path(*parts[1:]), folder / parts[-1]]
    return next((c for c in candidates if c.exists()), candidates[0])


def _load_failure(path, filename, what, exc) -> WeightsError:
    return WeightsError(f"weight file {path} is not a valid {what} ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:160] if str(exc).strip() else 'unreadable'}), probably a "
                        f"truncated download; {redownload_hint(filename)}")


def to_bgr(image, size=(HEIGHT, WIDTH)) -> np.ndarray:
    """PIL image or uint8 RGB (H,W,3) array → uint8 BGR array at ``size`` (H, W), resized like the released code."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise InputError(f"expected a uint8 RGB image of shape (H, W, 3), got {image.dtype} {image.shape}")
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise InputError(f"expected a PIL image or a uint8 RGB array, got {type(image).__name__}")
    image = image.convert("RGB")
    if image.size != (size[1], size[0]):
        image = image.resize((size[1], size[0]), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(image)[:, :, ::-1])


# ----------------------------------------------------------------------------------------------------------- parser
PARSER_MEAN = np.array([0.406, 0.456, 0.485], np.float32)  # BGR order
PARSER_STD = np.array([0.225, 0.224, 0.229], np.float32)


def letterbox_affine(height: int, width: int, size: int) -> np.ndarray:
    """2×3 affine that centres an H×W image on a size×size square, scaled so its longer side fills the square."""
    k = size / max(height, width)
    return np.array([[k, 0, size / 2 - k * width / 2], [0, k, size / 2 - k * height / 2]], np.float64)


def parser_input(bgr: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Letterboxed, normalised (1,3,S,S) float32 network input and the affine that produced it."""
    m = letterbox_affine(bgr.shape[0], bgr.shape[1], size)
    square = cv2.warpAffine(bgr, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                            borderValue=(0, 0, 0))
    x = (square.astype(np.float32) / 255.0 - PARSER_MEAN) / PARSER_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None]), m


def logits_to_image(logits: np.ndarray, m: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """(C,h,w) low-resolution logits → (C,H,W) logits on the original image: upsample to S×S, undo the letterbox."""
    up = F.interpolate(torch.from_numpy(logits[None].astype(np.float32)), size=(size, size), mode="bilinear",
                       align_corners=True)[0].numpy()
    inverse = cv2.invertAffineTransform(m)
    # cv2 warps at most 4 channels at a time reliably: warp the channels one by one
    return np.stack([cv2.warpAffine(c, inverse, (width, height), flags=cv2.INTER_LINEAR,
                                    borderMode=cv2.BORDER_CONSTANT, borderValue=0) for c in up])


def fill_clothes_holes(atr: np.ndarray, max_area: int = MAX_HOLE) -> np.ndarray:
    """Holes inside upper-clothes ∪ arms become upper-clothes, unless larger than ``max_area`` pixels."""
    region = np.isin(atr, (UPPER, L_ARM, R_ARM)).astype(np.uint8)
    padded = np.pad(region, 1)  # pad so the flood fill reaches around shapes that touch the border
    outside = padded.copy()
    cv2.floodFill(outside, None, (0, 0), 1)
    holes = (outside[1:-1, 1:-1] == 0).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=8)
    small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= max_area)
    out = atr.copy()
    out[np.isin(labels, small[small > 0])] = UPPER
    return out


def add_neck(atr: np.ndarray, lip: np.ndarray) -> np.ndarray:
    """Canonical map: ATR labels plus 18 = neck, where ATR sees face but LIP does not."""
    out = atr.astype(np.int64)
    out[(atr == ATR_FACE) & (lip != LIP_FACE)] = NECK
    return out


def default_providers() -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]


def onnx_session(path, filename: str, providers=None):
    """An onnxruntime session for a checked weight file, or a one-line WeightsError."""
    import onnxruntime as ort

    path = check_weight_file(path, filename)
    try:
        session = ort.InferenceSession(str(path), providers=providers or default_providers())
    except Exception as exc:  # INVALID_PROTOBUF and friends
        raise _load_failure(path, filename, "ONNX model", exc) from exc
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or len(outputs) < 2:
        raise WeightsError(f"weight file {path} is an ONNX model but not the released parser (expected one input and "
                           f"at least two outputs, got {len(inputs)} and {len(outputs)}); {redownload_hint(filename)}")
    return session


class HumanParser:
    """Released human parsing: ``parser(image)`` → (512,384) int64 map in canonical labels (ATR + 18 neck)."""

    ATR_SIZE, LIP_SIZE = 512, 473

    def __init__(self, atr_path, lip_path, providers=None):
        self.atr = onnx_session(atr_path, ATR_FILE, providers)
        self.lip = onnx_session(lip_path, LIP_FILE, providers)

    @classmethod
    def from_pretrained(cls, source=OFFICIAL_REPO, providers=None) -> "HumanParser":
        """From a local folder laid out like levihsu/OOTDiffusion (or its checkpoints/ folder), or the hub repo id."""
        folder = resolve_files(source, [ATR_FILE, LIP_FILE])
        return cls(locate(folder, ATR_FILE), locate(folder, LIP_FILE), providers)

    @staticmethod
    def logits(session, bgr: np.ndarray, size: int) -> np.ndarray:
        """(C,H,W) per-pixel logits of one network for a BGR image."""
        x, m = parser_input(bgr, size)
        outputs = session.run(None, {session.get_inputs()[0].name: x})
        return logits_to_image(outputs[1][0], m, size, *bgr.shape[:2])  # the second output holds the fused logits

    def __call__(self, image) -> np.ndarray:
        bgr = to_bgr(image)
        atr = self.logits(self.atr, bgr, self.ATR_SIZE).argmax(0)
        lip = self.logits(self.lip, bgr, self.LIP_SIZE).argmax(0)
        return add_neck(fill_clothes_holes(atr), lip)


# --------------------------------------------------------------------------------------------------------- OpenPose
# (name, in, out, kernel) of the VGG-19 trunk; "pool" = 2×2 max-pool. Names are the released state-dict keys.
TRUNK = [("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), "pool",
         ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3), "pool",
         ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3), "pool",
         ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3), ("conv4_4_CPM", 256, 128, 3)]
N_PAF, N_HEATMAP, N_FEATURES, N_STAGES = 38, 19, 128, 6  # branch L1 = part affinity fields, L2 = heatmaps (+background)


def stage_layers(stage: int, branch: int) -> list[tuple[str, int, int, int]]:
    """(name, in, out, kernel) of one branch of one stage; the last layer has no ReLU."""
    out = N_PAF if branch == 1 else N_HEATMAP
    if stage == 1:
        spec = [(f"conv5_{i}_CPM_L{branch}", N_FEATURES, N_FEATURES, 3) for i in (1, 2, 3)]
        return spec + [(f"conv5_4_CPM_L{branch}", 128, 512, 1), (f"conv5_5_CPM_L{branch}", 512, out, 1)]
    cin = N_PAF + N_HEATMAP + N_FEATURES  # 185: previous PAFs, previous heatmaps, trunk features
    spec = [(f"Mconv{i}_stage{stage}_L{branch}", cin if i == 1 else 128, 128, 7) for i in range(1, 6)]
    return spec + [(f"Mconv6_stage{stage}_L{branch}", 128, 128, 1), (f"Mconv7_stage{stage}_L{branch}", 128, out, 1)]


class BodyPoseNet(nn.Module):
    """CMU body-pose network: VGG trunk (stride 8), then 6 stages that refine PAFs and heatmaps side by side.

    Convolutions are registered under their released names, so ``state_dict()`` has the released key layout
    (``conv1_1.weight``, ``conv5_5_CPM_L1.bias``, ``Mconv7_stage6_L2.weight``, ...).
    """

    def __init__(self):
        super().__init__()
        self.trunk = [layer if layer == "pool" else layer[0] for layer in TRUNK]
        self.branches = [[[name for name, *_ in stage_layers(s, b)] for b in (1, 2)] for s in range(1, N_STAGES + 1)]
        specs = [layer for layer in TRUNK if layer != "pool"]
        specs += [spec for s in range(1, N_STAGES + 1) for b in (1, 2) for spec in stage_layers(s, b)]
        for name, cin, cout, k in specs:
            self.add_module(name, nn.Conv2d(cin, cout, k, padding=k // 2))

    def _branch(self, names, x):
        for i, name in enumerate(names):
            x = getattr(self, name)(x)
            if i < len(names) - 1:
                x = F.relu(x)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,3,H,W) → PAFs (B,38,H/8,W/8), heatmaps (B,19,H/8,W/8) of the last stage."""
        for name in self.trunk:
            x = F.max_pool2d(x, 2, 2) if name == "pool" else F.relu(getattr(self, name)(x))
        features, h = x, x
        for paf_names, heat_names in self.branches:
            paf, heat = self._branch(paf_names, h), self._branch(heat_names, h)
            h = torch.cat([paf, heat, features], 1)
        return paf, heat


# COCO-18 limbs (part a, part b) and the PAF channels (x, y) of each, in the order the network was trained with.
LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (1, 0),
         (0, 14), (14, 16), (0, 15), (15, 17), (2, 16), (5, 17)]
LIMB_PAF = [(12, 13), (20, 21), (14, 15), (16, 17), (22, 23), (24, 25), (0, 1), (2, 3), (4, 5), (6, 7), (8, 9),
            (10, 11),
            (28, 29), (30, 31), (34, 35), (32, 33), (36, 37), (18, 19), (26, 27)]
N_PARTS = 18


def find_peaks(heatmaps: np.ndarray, threshold: float = 0.1, sigma: float = 3.0) -> list[np.ndarray]:
    """Per part, (n,3) array of (x, y, score): local maxima of the smoothed heatmap above ``threshold``.

    ``heatmaps`` is (H,W,>=18) at image resolution; the score is read from the unsmoothed map.
    """
    radius = int(4 * sigma + 0.5)  # the 4-sigma support of scipy.ndimage.gaussian_filter
    peaks = []
    for j in range(N_PARTS):
        raw = np.ascontiguousarray(heatmaps[:, :, j], dtype=np.float32)
        s = cv2.GaussianBlur(raw, (2 * radius + 1, 2 * radius + 1), sigma, borderType=cv2.BORDER_REFLECT)
        p = np.pad(s, 1, constant_values=-np.inf)
        c = p[1:-1, 1:-1]
        is_peak = (c >= p[:-2, 1:-1]) & (c >= p[2:, 1:-1]) & (c >= p[1:-1, :-2]) & (c >= p[1:-1, 2:]) & (c > threshold)
        ys, xs = np.nonzero(is_peak)
        peaks.append(np.stack([xs, ys, raw[ys, xs]], 1).astype(np.float64) if len(xs) else np.zeros((0, 3)))
    return peaks


def limb_score(pafs: np.ndarray, a, b, channels, image_height: int, threshold: float = 0.05, samples: int = 10):
    """Mean PAF alignment along the segment a → b with a penalty for long limbs, or None if it is no limb."""
    vec = np.asarray(b[:2], float) - np.asarray(a[:2], float)
    norm = float(np.hypot(*vec))
    if norm == 0:
        return None
    unit = vec / norm
    xs = np.rint(np.linspace(a[0], b[0], samples)).astype(int).clip(0, pafs.shape[1] - 1)
    ys = np.rint(np.linspace(a[1], b[1], samples)).astype(int).clip(0, pafs.shape[0] - 1)
    along = pafs[ys, xs, channels[0]] * unit[0] + pafs[ys, xs, channels[1]] * unit[1]
    score = along.mean() + min(0.5 * image_height / norm - 1, 0)
    if (along > threshold).sum() > 0.8 * samples and score > 0:
        return score
    return None


def connect_limbs(peaks, pafs: np.ndarray, threshold: float = 0.05) -> list[list[tuple[int, int, float]]]:
    """Per limb, greedy one-to-one matches (index in peaks[a], index in peaks[b], score), best scores first."""
    matches = []
    for (pa, pb), channels in zip(LIMBS, LIMB_PAF):
        scored = [(s, i, j) for i, ca in enumerate(peaks[pa]) for j, cb in enumerate(peaks[pb])
                  if (s := limb_score(pafs, ca, cb, channels, pafs.shape[0], threshold)) is not None]
        used_a, used_b, chosen = set(), set(), []
        for s, i, j in sorted(scored, reverse=True):
            if i not in used_a and j not in used_b:
                chosen.append((i, j, s))
                used_a.add(i)
                used_b.add(j)
        matches.append(chosen)
    return matches


def assemble_people(peaks, matches, min_parts: int = 4, min_mean_score: float = 0.4) -> list[dict]:
    """Grow people limb by limb from the matches; each person is ``{"parts": {part: peak index}, "score", "count"}``."""
    people = []
    for k, ((pa, pb), limb_matches) in enumerate(zip(LIMBS, matches)):
        for i, j, s in limb_matches:
            owners = [p for p in people if p["parts"].get(pa) == i or p["parts"].get(pb) == j]
            if len(owners) == 1:
                p = owners[0]
                if p["parts"].get(pb) != j:
                    p["parts"][pb] = j
                    p["count"] += 1
                    p["score"] += peaks[pb][j, 2] + s
            elif len(owners) == 2:
                p, q = owners
                if not set(p["parts"]) & set(q["parts"]):  # two halves of one person: merge them
                    p["parts"].update(q["parts"])
                    p["count"] += q["count"]
                    p["score"] += q["score"] + s
                    people.remove(q)
                else:
                    p["parts"][pb] = j
                    p["count"] += 1
                    p["score"] += peaks[pb][j, 2] + s
            elif k < 17:  # the two ear-shoulder limbs only complete people, they never start one
                people.append({"parts": {pa: i, pb: j}, "count": 2,
                               "score": peaks[pa][i, 2] + peaks[pb][j, 2] + s})
    return [p for p in people if p["count"] >= min_parts and p["score"] / p["count"] >= min_mean_score]


def decode_pose(heatmaps: np.ndarray, pafs: np.ndarray, peak_threshold: float = 0.1,
                paf_threshold: float = 0.05) -> np.ndarray:
    """(H,W,19) heatmaps + (H,W,38) PAFs at image resolution → (18,2) keypoints of the most confident person.

    Missing joints are NaN. Raises ``PoseError`` when nobody is found (the released code crashes with an IndexError).
    """
    peaks = find_peaks(heatmaps, peak_threshold)
    people = assemble_people(peaks, connect_limbs(peaks, pafs, paf_threshold))
    if not people:
        raise PoseError("OpenPose found nobody in the image; use a photo of one person standing, facing the camera, "
                        "fully visible from head to hips, or pass keypoints yourself")
    best = max(people, key=lambda p: p["score"])  # the released code takes the first person; alone they agree
    keypoints = np.full((N_PARTS, 2), np.nan, np.float32)
    for part, idx in best["parts"].items():
        keypoints[part] = peaks[part][idx, :2]
    return keypoints


class OpenPoseBody:
    """Released OpenPose body model: ``pose(image)`` → (18,2) COCO-18 keypoints in 512×384 pixels, NaN = missing."""

    BOX, SCALE, STRIDE, PAD_VALUE = 368, 0.5, 8, 128

    def __init__(self, weights_path, device="cpu"):
        path = check_weight_file(weights_path, POSE_FILE)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise _load_failure(path, POSE_FILE, "PyTorch weight file", exc) from exc
        if not isinstance(state, dict):
            raise WeightsError(f"weight file {path} does not hold a state dict; {redownload_hint(POSE_FILE)}")
        self.net = BodyPoseNet()
        expected = self.net.state_dict().keys()
        if not set(expected) <= set(state):  # some conversions prefix every key with its block name: drop it
            state = {k.split(".", 1)[1] if k.count(".") > 1 else k: v for k, v in state.items()}
        missing = sorted(set(expected) - set(state))
        if missing:
            raise WeightsError(f"weight file {path} is not the OpenPose body model (missing {missing[:3]}...); "
                               f"{redownload_hint(POSE_FILE)}")
        self.net.load_state_dict({k: state[k] for k in expected})
        self.device = torch.device(device)
        self.net.to(self.device).eval()

    @classmethod
    def from_pretrained(cls, source=OFFICIAL_REPO, device="cpu") -> "OpenPoseBody":
        folder = resolve_files(source, [POSE_FILE])
        return cls(locate(folder, POSE_FILE), device=device)

    def network_maps(self, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H,W,19) heatmaps and (H,W,38) PAFs at the image's resolution, from one scale of the network."""
        h, w = bgr.shape[:2]
        scale = self.SCALE * self.BOX / h
        small = cv2.resize(bgr, (0, 0), fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        sh, sw = small.shape[:2]
        pad_h, pad_w = -sh % self.STRIDE, -sw % self.STRIDE
        padded = cv2.copyMakeBorder(small, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(self.PAD_VALUE,) * 3)
        x = torch.from_numpy(padded.astype(np.float32) / 256 - 0.5).permute(2, 0, 1)[None].to(self.device)
        with torch.inference_mode():
            paf, heat = self.net(x)

        def to_image(t):  # stride-8 maps → padded input → crop the padding → original size, bicubic as released
            m = t[0].permute(1, 2, 0).float().cpu().numpy()
            m = np.stack([cv2.resize(m[:, :, c], (0, 0), fx=self.STRIDE, fy=self.STRIDE,
                                     interpolation=cv2.INTER_CUBIC) for c in range(m.shape[2])], -1)
            m = m[:sh, :sw]
            return np.stack([cv2.resize(m[:, :, c], (w, h), interpolation=cv2.INTER_CUBIC)
                             for c in range(m.shape[2])], -1)

        return to_image(heat), to_image(paf)

    def __call__(self, image) -> np.ndarray:
        heat, paf = self.network_maps(to_bgr(image))
        return decode_pose(heat, paf)


def load_estimators(source=None, device="cpu", providers=None) -> tuple[HumanParser, OpenPoseBody]:
    """The released human parser and OpenPose body model, the one loader for both.

    ``source``: a local folder laid out like levihsu/OOTDiffusion (or its checkpoints/ folder), or a hub repo id
    (default: the released repo; only these three files are fetched).
    """
    folder = resolve_files(source or OFFICIAL_REPO, [ATR_FILE, LIP_FILE, POSE_FILE])
    parser = HumanParser(locate(folder, ATR_FILE), locate(folder, LIP_FILE), providers)
    return parser, OpenPoseBody(locate(folder, POSE_FILE), device=device)
