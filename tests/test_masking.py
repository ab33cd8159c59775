"""Each agnostic-mask rule on hand-made parse maps (512×384 unless said otherwise)."""

import numpy as np
import pytest
import torch
from PIL import Image

from ootd_lib.errors import InputError
from ootd_lib.masking import (agnostic_mask, fill_holes, largest_region, mask_layers, masked_person,
                              scaled_iterations, training_mask)

H, W = 512, 384
NAN = np.nan


def person(h=H, w=W):
    """A standing figure drawn with rectangles in canonical labels, and its COCO-18 keypoints (NaN = missing)."""
    s = h / 512
    P = np.zeros((h, w), np.int64)

    def box(y0, y1, x0, x1, label):
        P[int(y0 * s):int(y1 * s), int(x0 * s):int(x1 * s)] = label

    box(20, 40, 162, 222, 2)     # hair
    box(40, 110, 162, 222, 11)   # face
    box(110, 130, 177, 207, 18)  # neck
    box(130, 300, 132, 252, 4)   # upper clothes (torso)
    box(135, 330, 92, 122, 15)   # right arm (image left), hanging down
    box(135, 330, 262, 292, 14)  # left arm
    box(300, 430, 137, 247, 6)   # pants
    box(430, 480, 142, 187, 12)  # legs
    box(430, 480, 197, 242, 13)
    box(480, 500, 137, 192, 9)   # shoes
    box(480, 500, 192, 247, 10)
    kp = np.full((18, 2), NAN)
    kp[0] = (192, 80)
    kp[1] = (192, 130)
    kp[2], kp[3], kp[4] = (107, 145), (107, 220), (107, 290)   # right shoulder, elbow, wrist
    kp[5], kp[6], kp[7] = (277, 145), (277, 220), (277, 290)   # left
    kp[8], kp[11] = (165, 300), (220, 300)
    return P, kp * s


def test_upper_body_repaints_torso_arms_neck_and_keeps_the_rest():
    P, kp = person()
    m = agnostic_mask(P, kp, "upper_body", "hd")
    assert m.dtype == bool and m.shape == (H, W)
    assert m[P == 4].all() and m[P == 18].all()
    arms, rows = (P == 14) | (P == 15), np.arange(H)[:, None]
    # the drawn arm ends flat at wrist' = elbow + 1.2 (wrist - elbow), y = 304: above it the arm is repainted, the hand
    # below it is protected (a round cap would reach W/2 = 30 px further and repaint it)
    assert m[arms & (rows <= 300)].all()
    assert not m[arms & (rows >= 306)].any()
    for label in (11, 6, 9, 10, 12, 13):  # face, pants, shoes, legs untouched
        assert not m[P == label].any(), label


def test_lower_body_never_touches_arms_or_upper_clothes_but_takes_legs():
    P, kp = person()
    m = agnostic_mask(P, kp, "lower_body", "hd")
    assert not m[np.isin(P, (4, 14, 15, 18, 11))].any()
    assert m[np.isin(P, (6, 12, 13))].all()
    assert not m[np.isin(P, (9, 10))].any()  # shoes are fixed


def test_dresses_repaint_top_and_bottom_but_no_legs():
    P, kp = person()
    m = agnostic_mask(P, kp, "dresses", "dc")
    assert m[P == 4].all() and m[P == 6].all()
    legs = np.isin(P, (12, 13))
    assert m[legs].mean() < 0.25  # only the dilation margin below the pants reaches the legs
    assert not m[470:, :].any()


def test_upper_body_keeps_pants_fixed_even_inside_the_dilated_region():
    P, kp = person()
    layers = mask_layers(P, kp, "upper_body", "hd")
    assert layers["garment_dilated"][P == 6].any()  # the dilation does reach into the pants ...
    assert not layers["final"][P == 6].any()        # ... but they are fixed


def test_dilation_margin_is_exactly_ten_pixels_at_512():
    P = np.zeros((H, W), np.int64)
    P[200:300, 100:200] = 4
    kp = np.full((18, 2), NAN)
    m = agnostic_mask(P, kp, "upper_body", "hd")
    rows, cols = np.nonzero(m)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (190, 309, 90, 209)  # 5 iterations × 2 px
    assert scaled_iterations(5, 512) == 5 and scaled_iterations(5, 256) == 2 and scaled_iterations(1, 128) == 1


def test_arm_is_drawn_with_the_model_type_width_and_extended_past_the_wrist():
    P = np.zeros((H, W), np.int64)
    kp = np.full((18, 2), NAN)
    kp[2], kp[3], kp[4] = (100, 100), (100, 200), (100, 300)
    for model_type, width in (("hd", 60), ("dc", 45)):
        arms = mask_layers(P, kp, "upper_body", model_type)["arms_drawn"]
        assert abs(arms[250].sum() - width) <= 2, model_type  # across the forearm (rasterised ±1 px)
        bottom = np.nonzero(arms[:, 100])[0].max()
        # wrist' = elbow + 1.2 (wrist - elbow) = 320, and the end is flat (butt) as released, not a round cap at +W/2
        assert abs(bottom - 320) <= 1, model_type
        assert not arms[322:, 100 - width // 2:100 + width // 2].any(), model_type
        top = np.nonzero(arms[:, 100])[0].min()
        assert abs(top - (100 - width // 2)) <= 1, model_type  # the shoulder disc of radius W/2 rounds the top
    assert mask_layers(P, kp, "upper_body", "hd")["arms_drawn"][:, 250:].sum() == 0  # the missing left arm: nothing


def test_elbow_joint_is_rounded_and_the_wrist_end_is_flat():
    P = np.zeros((H, W), np.int64)
    kp = np.full((18, 2), NAN)
    kp[2], kp[3], kp[4] = (100, 100), (100, 200), (200, 200)  # upper arm down, forearm to the right: a 90° elbow
    arms = mask_layers(P, kp, "upper_body", "hd")["arms_drawn"]
    yy, xx = np.mgrid[:H, :W]
    r = 60 // 2
    outer = (yy > 200) & (xx < 100)  # the outside corner of the elbow: only a round joint reaches it
    disc = (yy - 200) ** 2 + (xx - 100) ** 2 <= (r - 2) ** 2
    assert arms[outer & disc].all()
    assert not arms[outer & ((yy - 200) ** 2 + (xx - 100) ** 2 > (r + 2) ** 2)].any()  # round, not a square corner
    # wrist' = 100 + 1.2 * 100 = 220 along x; the forearm ends flat there
    assert arms[200, 215] and not arms[185:216, 223:].any()


def test_hand_outside_the_drawn_arm_stays():
    P, kp = person()
    P[330:420, 95:120] = 15  # the parsed right arm goes on to a hand far below the (extended) wrist
    layers = mask_layers(P, kp, "upper_body", "hd")
    hand = np.zeros_like(P, bool)
    hand[340:420, 95:120] = True  # the drawn arm ends flat at 320, its dilation 8 px later
    assert layers["hands"][hand].all()
    assert layers["fixed"][hand].all()
    assert not layers["final"][hand].any()


def test_missing_wrist_falls_back_to_the_parsed_arm():
    P, kp = person()
    P[330:420, 95:120] = 15  # same hand as above
    kp[4] = NAN              # ... but the right wrist was not detected
    layers = mask_layers(P, kp, "upper_body", "hd")
    assert (layers["arms_drawn"][:, :192] == (P == 15)[:, :192]).all()  # drawn right arm = parsed right arm
    assert not layers["hands"][:, :192].any()
    assert layers["final"][330:420, 95:120].all()  # so the hand is repainted with the sleeve


def test_zero_coordinates_count_as_missing_like_the_released_code():
    P, kp = person()
    kp_zero = kp.copy()
    kp_zero[4] = (0.0, 0.0)
    kp_nan = kp.copy()
    kp_nan[4] = NAN
    assert (agnostic_mask(P, kp_zero) == agnostic_mask(P, kp_nan)).all()


def test_holes_inside_the_mask_are_filled():
    P, kp = person()
    P[200:220, 180:200] = 16  # a bag (fixed) held in front of the torso
    layers = mask_layers(P, kp, "upper_body", "hd")
    assert not layers["inpaint"][200:220, 180:200].any()
    assert layers["final"][200:220, 180:200].all()


def test_only_the_largest_region_survives():
    P, kp = person()
    P[480:500, 10:40] = 4  # a stray patch of upper clothes in a corner
    layers = mask_layers(P, kp, "upper_body", "hd")
    assert layers["filled"][480:500, 10:40].all()
    assert not layers["final"][480:500, 10:40].any()
    assert layers["final"][P == 4].mean() > 0.9


def test_fill_holes_and_largest_region_helpers():
    m = np.zeros((20, 20), bool)
    m[2:10, 2:10] = True
    m[4:6, 4:6] = False           # a hole
    m[15:17, 15:17] = True        # an island
    m[0, :] = True                # touches the border: the released fill clears the border row
    f = fill_holes(m)
    assert f[4:6, 4:6].all() and not f[0].any()
    assert largest_region(f).sum() == 64 and not largest_region(f)[15, 15]
    assert not largest_region(np.zeros((5, 5), bool)).any()


def test_neck_and_head_rules():
    P, kp = person()
    layers = mask_layers(P, kp, "upper_body", "hd")
    assert layers["neck"][P == 18].all()
    assert not layers["neck"][P == 11].any()  # the neck grows by one dilation, never into the face
    assert layers["head"][P == 11].all() and layers["fixed"][P == 11].all()


def test_other_sizes_scale_like_a_resized_mask():
    P, kp = person()
    m512 = agnostic_mask(P, kp, "upper_body", "hd")
    P256, kp256 = person(256, 192)
    m256 = agnostic_mask(P256, kp256, "upper_body", "hd")
    down = np.asarray(Image.fromarray(m512.astype(np.uint8) * 255).resize((192, 256), Image.NEAREST)) > 0
    iou = (down & m256).sum() / (down | m256).sum()
    assert iou > 0.93, iou


@pytest.mark.parametrize("bad", [dict(category="shoes"), dict(model_type="xl"), dict(parse=np.full((4, 4), 20)),
                                 dict(keypoints=np.zeros((25, 2)))])
def test_bad_inputs_raise_input_errors(bad):
    P, kp = person(64, 48)
    args = dict(parse=P, keypoints=kp, category="upper_body", model_type="hd") | bad
    with pytest.raises(InputError):
        agnostic_mask(**args)


def _split_rows(mask, y0, y1) -> int:
    """Rows in [y0, y1) where the mask is two or more separate runs (the gap between legs)."""
    starts = np.diff(mask[y0:y1].astype(np.int8), axis=1) == 1
    return int(((starts.sum(1) + mask[y0:y1, 0]) > 1).sum())


def test_training_outlines_hide_skirt_versus_trousers():
    """The reason for ``train_mask_outline``: one toy person (same body and pose) wearing trousers or a skirt. Between
    knee and ankle the released lower_body mask of the skirt is the two bare legs with the background between them
    showing, while the trousers' mask is one block, so the outline tells the model what the old garment was. The hull
    and the box are one run on every such row for both kinds. Both cover the released mask except what the rules keep
    (fixed), and never repaint a fixed pixel; the box is its bounding rectangle minus fixed pixels."""
    from ootd_lib.toydata import COCO18, random_garment, random_person, render_person, wearing

    def of_kind(rng, kind):
        while (g := random_garment(rng, "lower_body")).kind != kind:
            pass
        return g

    leg_gaps = {}
    for seed in range(8):
        rng = np.random.default_rng(seed)
        body = random_person(rng, "lower_body")
        for kind in ("pants", "skirt"):
            _, parse, kp = render_person(wearing(body, of_kind(rng, kind)), (128, 96))
            knee, ankle = int(kp[COCO18.index("r_knee"), 1]), int(kp[COCO18.index("r_ank"), 1])
            layers = mask_layers(parse, kp, "lower_body", "dc")
            released, fixed = layers["final"], layers["fixed"]
            leg_gaps[seed, kind] = _split_rows(released, knee, ankle)
            coarse = {o: training_mask(parse, kp, "lower_body", "dc", o) for o in ("hull", "box")}
            for outline, m in coarse.items():
                assert _split_rows(m, knee, ankle) == 0, (seed, kind, outline)
                assert not (m & fixed).any() and not (released & ~m).any()
            ys, xs = np.nonzero(released)
            rect = np.zeros_like(released)
            rect[ys.min():ys.max() + 1, xs.min():xs.max() + 1] = True
            assert np.array_equal(coarse["box"] | (rect & fixed), rect)
            assert np.array_equal(training_mask(parse, kp, "lower_body", "dc"), released)
    # the cue exists: most skirts show the leg gap over many rows, trousers almost never
    assert sum(leg_gaps[s, "skirt"] >= 8 for s in range(8)) >= 5
    assert sum(leg_gaps[s, "skirt"] for s in range(8)) > 3 * sum(leg_gaps[s, "pants"] for s in range(8))
    with pytest.raises(InputError, match="outline"):
        training_mask(parse, kp, "lower_body", "dc", "circle")


def test_masked_person_fills_grey_for_every_input_type():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    mask = np.zeros((8, 6), bool)
    mask[2:5, 1:4] = True
    out = masked_person(img, mask)
    assert (out[mask] == 127).all() and (out[~mask] == img[~mask]).all() and (img[mask] != 127).any()
    pil = masked_person(Image.fromarray(img), Image.fromarray(mask.astype(np.uint8) * 255))
    assert isinstance(pil, Image.Image) and (np.asarray(pil) == out).all()
    t = torch.from_numpy(img).permute(2, 0, 1).float() / 127.5 - 1
    for x, m in ((t, mask), (t[None], torch.from_numpy(mask)[None, None])):
        y = masked_person(x, m)
        assert y.shape == x.shape
        back = ((y.reshape(3, 8, 6).permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
        assert (back == out).all()
    with pytest.raises(InputError):
        masked_person(img, np.zeros((4, 4), bool))


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    from ootd_lib.toydata import generate_toy_dataset

    return generate_toy_dataset(tmp_path_factory.mktemp("toy"), "vitonhd", n_train=1, n_test=0, seed=0,
                                progress=False)


def test_cli_mask_on_toy_data_uses_the_dataset_annotations(toy_root, tmp_path, capsys):
    from ootd_lib.cli import main
    from ootd_lib.data import find_annotations

    person = toy_root / "train" / "image" / "00000_00.jpg"
    ann = find_annotations(person)
    for category in ("upper_body", "lower_body", "dresses"):
        out = tmp_path / f"{category}.png"
        assert main(["mask", str(person), "--category", category, "--model-type", "dc", "--out", str(out)]) == 0
        mask = np.asarray(Image.open(out)) > 127
        assert (mask == agnostic_mask(ann["parse"], ann["keypoints"], category, "dc")).all()
        masked = np.asarray(Image.open(tmp_path / f"{category}_masked.png"))
        assert (masked[mask] == 127).all() and masked.shape == mask.shape + (3,)
    assert "written to" in capsys.readouterr().out


def test_cli_mask_errors_are_one_line(tmp_path, toy_root, capsys):
    from ootd_lib.cli import main

    assert main(["mask", str(tmp_path / "missing.jpg")]) == 2
    plain = tmp_path / "photo.jpg"  # not inside a dataset layout: needs the released estimators
    plain.write_bytes((toy_root / "train" / "image" / "00000_00.jpg").read_bytes())
    assert main(["mask", str(plain), "--weights", str(tmp_path / "no_weights")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "missing.jpg does not exist" in err[0] and "no_weights does not exist" in err[1]


def test_mask_person_file_on_a_photo_uses_the_estimators_at_512x384(tmp_path, monkeypatch):
    import ootd_lib.app as app

    P, kp = person()  # what the released estimators would return: 512×384 maps for any photo
    calls = []
    monkeypatch.setattr(app, "_estimate_annotations", lambda image, weights, device: calls.append(
        (image.size, weights, device)) or (P, kp))
    photo = tmp_path / "photo.png"
    Image.new("RGB", (192, 256), (200, 200, 200)).save(photo)
    out, masked_out = app.mask_person_file(photo, "upper_body", "hd", weights="W", out=tmp_path / "m.png",
                                           device="cpu")
    assert calls == [((192, 256), "W", "cpu")]
    mask = np.asarray(Image.open(out)) > 127
    expected = np.asarray(Image.fromarray(agnostic_mask(P, kp).astype(np.uint8) * 255).resize((192, 256),
                                                                                            Image.NEAREST)) > 127
    assert mask.shape == (256, 192) and (mask == expected).all()
    assert (np.asarray(Image.open(masked_out))[mask] == 127).all()
