"""Human parser pre/post-processing (tiny ONNX models with the released signature), OpenPose network and decoder,
and the errors for broken weight files. No hub access: files are built in tmp folders laid out like the hub repo."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ootd_lib.errors import PoseError, WeightsError
from ootd_lib.estimators import (ATR_FILE, LIMB_PAF, LIMBS, LIP_FILE, POSE_FILE, HumanParser, OpenPoseBody,
                                 add_neck, decode_pose, fill_clothes_holes, letterbox_affine, parser_input)

MEAN, STD = np.array([0.406, 0.456, 0.485]), np.array([0.225, 0.224, 0.229])
BLACK, RED, SKIN, NECKSKIN, BAGBLUE = (0, 0, 0), (220, 20, 20), (230, 180, 150), (150, 100, 60), (20, 40, 230)


def normalised(rgb):
    """What the parser feeds the network for an RGB colour (BGR order, /255, mean/std)."""
    return (np.array(rgb[::-1]) / 255 - MEAN) / STD


class ColourParser(nn.Module):
    """Stand-in for a released parser: label = class of the nearest prototype colour, logits at 1/4 resolution.

    Outputs like the released models: output 0 (here: the network input, to check the pre-processing), output 1 the
    (1,C,S/4,S/4) logits."""

    def __init__(self, colour_to_label: dict, n_classes: int):
        super().__init__()
        protos = torch.tensor(np.stack([normalised(c) for c in colour_to_label]), dtype=torch.float32)
        self.score = nn.Conv2d(3, len(protos), 1)
        with torch.no_grad():  # -|x - p|^2 up to a term shared by all prototypes
            self.score.weight.copy_(2 * protos[:, :, None, None])
            self.score.bias.copy_(-(protos ** 2).sum(1))
        self.groups = [[k for k, lab in enumerate(colour_to_label.values()) if lab == c] for c in range(n_classes)]

    def forward(self, x):
        s = self.score(nn.functional.avg_pool2d(x, 4))
        logits = torch.stack([s[:, g].amax(1) if g else s[:, 0] * 0 - 1e4 for g in self.groups], 1)
        return x * 1.0, logits


def export(module, size, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, torch.zeros(1, 3, size, size), str(path), input_names=["input.1"],
                      output_names=["echo", "logits"], dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="module")
def hub_folder(tmp_path_factory):
    """A folder laid out like levihsu/OOTDiffusion holding the two tiny parsers."""
    root = tmp_path_factory.mktemp("hub")
    atr = ColourParser({BLACK: 0, RED: 4, SKIN: 11, NECKSKIN: 11, BAGBLUE: 16}, 18)
    lip = ColourParser({BLACK: 0, RED: 5, SKIN: 13, NECKSKIN: 10, BAGBLUE: 0}, 20)
    export(atr, 512, root / ATR_FILE)
    export(lip, 473, root / LIP_FILE)
    return root


def person_image():
    """384×512 photo: black background, face (two skin tones, the lower one the neck), red top with two blue holes."""
    img = np.zeros((512, 384, 3), np.uint8)
    img[40:140, 140:244] = SKIN
    img[140:180, 160:224] = NECKSKIN
    img[180:420, 80:304] = RED
    img[220:250, 120:150] = BAGBLUE   # small hole (900 px): filled as upper clothes
    img[300:360, 200:260] = BAGBLUE   # large hole (3600 px): keeps its label
    return img


def test_letterbox_centres_and_scales_to_the_longer_side():
    m = letterbox_affine(512, 384, 512)
    assert np.allclose(m @ [0, 0, 1], [64, 0]) and np.allclose(m @ [384, 512, 1], [448, 512])
    m = letterbox_affine(512, 384, 473)
    assert np.allclose(m @ [192, 256, 1], [236.5, 236.5]) and np.isclose(m[0, 0], 473 / 512)


def test_parser_input_is_the_normalised_letterboxed_bgr_image():
    rgb = np.random.default_rng(0).integers(0, 256, (512, 384, 3), dtype=np.uint8)
    x, _ = parser_input(np.ascontiguousarray(rgb[:, :, ::-1]), 512)
    assert x.shape == (1, 3, 512, 512) and x.dtype == np.float32
    expected = (rgb[:, :, ::-1] / 255 - MEAN) / STD  # a 64-px translation: pixels land exactly
    assert np.allclose(x[0].transpose(1, 2, 0)[:, 64:448], expected, atol=1e-5)
    assert np.allclose(x[0, :, 100, 10], normalised(BLACK), atol=1e-5)  # black border


def test_human_parser_end_to_end_on_tiny_onnx_models(hub_folder):
    parser = HumanParser.from_pretrained(hub_folder)
    img = person_image()
    # the network saw the pre-processed image: check it through the echo output
    x, _ = parser_input(np.ascontiguousarray(img[:, :, ::-1]), 473)
    echo = parser.lip.run(None, {"input.1": x})[0]
    assert np.allclose(echo, x) and echo.shape == (1, 3, 473, 473)

    parse = parser(Image.fromarray(img))
    assert parse.shape == (512, 384) and parse.dtype == np.int64
    assert (parse[60:120, 160:224] == 11).all()       # face: both models agree
    assert (parse[148:172, 168:216] == 18).all()      # ATR face, LIP not face → neck
    assert (parse[190:410, 90:110] == 4).all()        # upper clothes
    assert (parse[225:245, 125:145] == 4).all()       # small hole filled
    assert (parse[310:350, 210:250] == 16).all()      # large hole kept
    assert (parse[5:30, 5:60] == 0).all() and (parse[470:, :] == 0).all()
    # any photo size: resized to the released 512×384 first
    small = parser(Image.fromarray(img).resize((192, 256)))
    assert small.shape == (512, 384) and (small[60:120, 160:224] == 11).all()


def test_fill_clothes_holes_and_neck_rule_on_label_maps():
    atr = np.zeros((100, 80), np.int64)
    atr[10:90, 10:70] = 4
    atr[20:25, 20:25] = 2     # small hole inside the clothes
    atr[40:85, 20:65] = 16    # 2025 px hole: larger than 2000, kept
    out = fill_clothes_holes(atr)
    assert (out[20:25, 20:25] == 4).all() and (out[40:85, 20:65] == 16).all() and (out[:10] == 0).all()
    atr[0:5, 0:5] = 11
    lip = np.zeros_like(atr)
    lip[0:3, 0:5] = 13
    canon = add_neck(atr, lip)
    assert (canon[0:3, 0:5] == 11).all() and (canon[3:5, 0:5] == 18).all()


def test_parser_weight_file_errors(hub_folder, tmp_path):
    good = (hub_folder / ATR_FILE).read_bytes()
    lfs = tmp_path / "lfs" / ATR_FILE
    lfs.parent.mkdir(parents=True)
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 255229883\n")
    with pytest.raises(WeightsError, match="Git-LFS pointer.*huggingface-cli download levihsu/OOTDiffusion"):
        HumanParser(lfs, hub_folder / LIP_FILE)
    cut = tmp_path / "parsing_atr.onnx"
    cut.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match=r"parsing_atr.onnx is not a valid ONNX model.*re-download") as e:
        HumanParser(cut, hub_folder / LIP_FILE)
    assert "\n" not in str(e.value)
    with pytest.raises(WeightsError, match="missing"):
        HumanParser(tmp_path / "nope.onnx", hub_folder / LIP_FILE)
    with pytest.raises(WeightsError, match="does not exist"):
        HumanParser.from_pretrained(tmp_path / "no_such_folder")


# ------------------------------------------------------------------------------------------------------- OpenPose
def released_layout():
    """(key, shape) of body_pose_model.pth, written out from the paper's architecture."""
    convs = [("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3),
             ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
             ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3_CPM", 512, 256, 3),
             ("conv4_4_CPM", 256, 128, 3)]
    for b, out in ((1, 38), (2, 19)):
        convs += [(f"conv5_{i}_CPM_L{b}", 128, 128, 3) for i in (1, 2, 3)]
        convs += [(f"conv5_4_CPM_L{b}", 128, 512, 1), (f"conv5_5_CPM_L{b}", 512, out, 1)]
        for s in range(2, 7):
            convs += [(f"Mconv{i}_stage{s}_L{b}", 185 if i == 1 else 128, 128, 7) for i in range(1, 6)]
            convs += [(f"Mconv6_stage{s}_L{b}", 128, 128, 1), (f"Mconv7_stage{s}_L{b}", 128, out, 1)]
    for name, cin, cout, k in convs:
        yield f"{name}.weight", (cout, cin, k, k)
        yield f"{name}.bias", (cout,)


@pytest.fixture(scope="module")
def pose_file(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    state = {k: (torch.randn(shape, generator=g) * 0.02).half() for k, shape in released_layout()}
    path = tmp_path_factory.mktemp("pose") / POSE_FILE
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path


def test_openpose_network_loads_the_released_layout_and_runs(pose_file):
    pose = OpenPoseBody.from_pretrained(pose_file.parents[3])  # the hub-layout root folder
    state = torch.load(pose_file, weights_only=True)
    assert set(pose.net.state_dict()) == set(state)
    assert torch.equal(pose.net.Mconv7_stage6_L2.weight, state["Mconv7_stage6_L2.weight"].float())
    bgr = np.random.default_rng(0).integers(0, 256, (512, 384, 3), dtype=np.uint8)
    heat, paf = pose.network_maps(bgr)
    assert heat.shape == (512, 384, 19) and paf.shape == (512, 384, 38) and np.isfinite(heat).all()
    assert heat.std() > 0 and paf.std() > 0


def test_load_estimators_fetches_all_three_files_at_once(hub_folder, pose_file, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    from ootd_lib.estimators import load_estimators

    root = tmp_path / "ootd"
    for f, src in ((ATR_FILE, hub_folder / ATR_FILE), (LIP_FILE, hub_folder / LIP_FILE), (POSE_FILE, pose_file)):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / f)
    calls = []
    monkeypatch.setattr(huggingface_hub, "snapshot_download",
                        lambda repo_id, allow_patterns: calls.append((repo_id, sorted(allow_patterns))) or str(root))
    parser, pose = load_estimators(device="cpu")  # default: the released repo, one download for both models
    assert calls == [("levihsu/OOTDiffusion", sorted([ATR_FILE, LIP_FILE, POSE_FILE]))]
    assert isinstance(parser, HumanParser) and isinstance(pose, OpenPoseBody)
    parser, pose = load_estimators(root)  # a local folder: no download
    assert len(calls) == 1 and parser(Image.fromarray(person_image())).shape == (512, 384)
    (root / POSE_FILE).unlink()
    with pytest.raises(WeightsError, match="body_pose_model.pth"):
        load_estimators(root)


def test_openpose_weight_file_errors(pose_file, tmp_path):
    cut = tmp_path / "body_pose_model.pth"
    cut.write_bytes(pose_file.read_bytes()[:100_000])
    with pytest.raises(WeightsError, match="not a valid PyTorch weight file.*huggingface-cli download"):
        OpenPoseBody(cut)
    lfs = tmp_path / "lfs.pth"
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 209267595\n")
    with pytest.raises(WeightsError, match="Git-LFS pointer"):
        OpenPoseBody(lfs)
    other = tmp_path / "other.pth"
    torch.save({"fc.weight": torch.zeros(2, 2)}, other)
    with pytest.raises(WeightsError, match="not the OpenPose body model"):
        OpenPoseBody(other)


def synthetic_maps(people, h=128, w=96, sigma=2.0):
    """Heatmaps (gaussian peaks of height ``amp`` at each joint) and PAFs (unit vectors along each limb)."""
    yy, xx = np.mgrid[0:h, 0:w]
    heat, paf = np.zeros((h, w, 19)), np.zeros((h, w, 38))
    for joints, amp in people:
        for j, (x, y) in enumerate(joints):
            if not np.isnan(x):
                blob = amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
                heat[:, :, j] = np.maximum(heat[:, :, j], blob)
        for (a, b), (cx, cy) in zip(LIMBS, LIMB_PAF):
            pa, pb = joints[a], joints[b]
            if np.isnan(pa).any() or np.isnan(pb).any():
                continue
            v = pb - pa
            length = np.hypot(*v)
            u = v / length
            t = (xx - pa[0]) * u[0] + (yy - pa[1]) * u[1]
            d = np.abs((xx - pa[0]) * u[1] - (yy - pa[1]) * u[0])
            on = (t >= -1) & (t <= length + 1) & (d <= 2)  # a limb-wide band, like trained PAFs
            paf[on, cx], paf[on, cy] = u[0], u[1]
    return heat, paf


def figure(dx=0.0):
    j = np.array([[30, 10], [30, 25], [20, 25], [17, 40], [15, 55], [40, 25], [43, 40], [45, 55], [24, 55], [24, 75],
                  [24, 95], [36, 55], [36, 75], [36, 95], [27, 8], [33, 8], [24, 10], [36, 10]], float)
    j[:, 0] += dx
    return j


def test_decoder_recovers_known_joints_of_the_most_confident_person():
    a, b = figure(), figure(dx=45)
    b[7] = np.nan  # the confident person's left wrist is hidden
    heat, paf = synthetic_maps([(a, 0.5), (b, 0.9)])
    kp = decode_pose(heat, paf)
    assert kp.shape == (18, 2)
    assert np.isnan(kp[7]).all()
    ok = ~np.isnan(b[:, 0])
    assert np.abs(kp[ok] - b[ok]).max() <= 1.0
    kp_a = decode_pose(*synthetic_maps([(a, 0.9), (b, 0.5)]))
    assert np.abs(kp_a - a).max() <= 1.0


def test_nobody_found_is_a_pose_error_not_an_index_error(pose_file):
    heat, paf = synthetic_maps([])
    with pytest.raises(PoseError, match="found nobody"):
        decode_pose(heat, paf)
    pose = OpenPoseBody(pose_file)
    seen = []

    def empty_net(x):  # a network that sees nobody; records the released input geometry
        seen.append(tuple(x.shape))
        h, w = x.shape[2] // 8, x.shape[3] // 8
        return torch.zeros(1, 38, h, w), torch.zeros(1, 19, h, w)

    pose.net = empty_net
    with pytest.raises(PoseError):
        pose(Image.new("RGB", (384, 512), (128, 128, 128)))
    assert seen == [(1, 3, 184, 144)]  # 0.5 × 368 / 512 of 512×384 = 184×138, padded to a multiple of 8
