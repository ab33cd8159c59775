"""The toy wardrobe: every file of both layouts, consistency of image / parse / keypoints, determinism."""

import json

import numpy as np
import pytest
from PIL import Image

from ootd_lib.cli import main
from ootd_lib.errors import ConfigError
from ootd_lib.toydata import (CANONICAL_TO_LIP, COCO18, generate_toy_dataset, random_garment, random_person,
                              render_garment, render_person, sample_rng, unpaired_permutation, wearing)

LIP_IDS_DRAWN = {0, 2, 5, 6, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19}  # never hat/glove/socks/coat/scarf/sunglasses


def _lines(path):
    return [line.split() for line in path.read_text().splitlines()]


def test_vitonhd_layout_files(toy_vitonhd):
    root = toy_vitonhd
    assert _lines(root / "train_pairs.txt")[:2] == [["00000_00.jpg", "00000_00.jpg"], ["00001_00.jpg", "00001_00.jpg"]]
    test_pairs = _lines(root / "test_pairs.txt")
    assert len(test_pairs) == 4 and all(p != g for p, g in test_pairs)  # unpaired, like the real file
    assert sorted(g for _, g in test_pairs) == sorted(p for p, _ in test_pairs)  # a permutation of the test garments
    for split, n in (("train", 8), ("test", 4)):
        d = root / split
        names = sorted(f.name for f in (d / "image").iterdir())
        assert len(names) == n
        for name in names:
            stem = name[:-4]
            img, cloth = Image.open(d / "image" / name), Image.open(d / "cloth" / name)
            assert img.format == "JPEG" and img.mode == "RGB" and img.size == (192, 256) and cloth.size == (192, 256)
            mask = np.asarray(Image.open(d / "cloth-mask" / name).convert("L"))
            assert ((mask < 30) | (mask > 225)).mean() > 0.98  # binary up to JPEG ringing
            cloth_a = np.asarray(cloth.convert("RGB")).astype(int)
            assert cloth_a[mask < 30].min(-1).mean() > 240  # white outside the mask
            parse = Image.open(d / "image-parse-v3" / f"{stem}.png")
            assert parse.mode == "P"
            ids = set(np.unique(np.asarray(parse)).tolist())
            assert ids <= LIP_IDS_DRAWN and {5, 10, 13, 14, 15} <= ids  # upper clothes, neck, face, both arms
            pose = json.loads((d / "openpose_json" / f"{stem}_keypoints.json").read_text())
            body = np.array(pose["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
            assert (body[:19, 2] > 0).all() and (body[19:, 2] == 0).all()  # feet not drawn
            assert body[:19, 0].max() < 192 and body[:19, 1].max() < 256  # in the written image's pixels
            assert np.allclose(body[8, :2], (body[9, :2] + body[12, :2]) / 2, atol=0.01)  # mid-hip
    gt = sorted(f.name for f in (root / "test" / "tryon-unpaired").iterdir())
    # each ground truth with its parse map (canonical labels): the garment pixels evaluation reads
    assert gt == sorted(f"{p[:-4]}__{g[:-4]}{ext}" for p, g in test_pairs for ext in (".jpg", ".png"))
    truth = np.asarray(Image.open(root / "test" / "tryon-unpaired" / gt[1]))
    assert truth.shape == (256, 192) and 4 in truth and 18 in truth  # upper clothes and the neck
    assert json.loads((root / "toy_info.json").read_text())["layout"] == "vitonhd"


def test_dresscode_layout_files(toy_dresscode):
    root = toy_dresscode
    for ci, cat in enumerate(("upper_body", "lower_body", "dresses")):
        d = root / cat
        train = _lines(d / "train_pairs.txt")
        assert len(train) == 8 and train[0] == [f"{ci}00000_0.jpg", f"{ci}00000_1.jpg"]
        paired, unpaired = _lines(d / "test_pairs_paired.txt"), _lines(d / "test_pairs_unpaired.txt")
        assert [p for p, _ in paired] == [p for p, _ in unpaired] and all(p[:-6] == g[:-6] for p, g in paired)
        assert all(p[:-6] != g[:-6] for p, g in unpaired)
        assert len(list((d / "tryon_unpaired").glob("*.jpg"))) == len(list((d / "tryon_unpaired").glob("*.png"))) == 4
        for p, g in train + paired:
            base = p[:-6]
            assert Image.open(d / "images" / p).size == (192, 256) and Image.open(d / "images" / g).size == (192, 256)
            labels = Image.open(d / "label_maps" / f"{base}_4.png")
            assert labels.mode == "L"
            ids = set(np.unique(np.asarray(labels)).tolist())
            assert max(ids) <= 17 and {11, 14, 15} <= ids  # ATR: no neck id
            garment = {"upper_body": 4, "lower_body": 6 if 6 in ids else 5, "dresses": 7}[cat]
            assert garment in ids and not ({5, 6} <= ids) and (7 in ids) == (cat == "dresses")
            kp = np.array(json.loads((d / "keypoints" / f"{base}_2.json").read_text())["keypoints"])
            assert kp.shape == (18, 4) and (kp[:, 2] > 0).all()
            # 384x512 space whatever the image size: ankles sit low in a 512-high frame although images are 256 high
            assert kp[:, 0].max() < 384 and 380 < kp[:, 1].max() < 512
    for name in ("train_pairs.txt", "test_pairs_paired.txt", "test_pairs_unpaired.txt"):
        rows = _lines(root / name)
        assert len(rows) == (24 if name == "train_pairs.txt" else 12)
        assert {r[2] for r in rows} == {"0", "1", "2"}


def test_parse_keypoints_and_image_agree():
    for i in range(6):
        cat = ("upper_body", "lower_body", "dresses")[i % 3]
        rgb, labels, kp = render_person(random_person(sample_rng(3, "train", cat, i), cat))
        at = lambda name: labels[int(round(kp[COCO18.index(name), 1])), int(round(kp[COCO18.index(name), 0]))]  # noqa
        assert at("nose") == 11 and at("r_eye") == 11 and at("neck") == 18
        assert at("r_elb") in (15, 4) and at("l_elb") in (14, 4) and at("r_wri") in (15, 4)
        assert at("r_knee") in (13, 5, 6, 7) and at("l_ank") in (12, 6, 9)
        # anatomical sides: the person's right is the image's left
        cols = np.arange(labels.shape[1])[None, :].repeat(labels.shape[0], 0)
        for right, left in ((15, 14), (13, 12), (10, 9)):
            if (labels == right).any() and (labels == left).any():  # trousers may hide both legs
                assert cols[labels == right].mean() < cols[labels == left].mean()
        assert kp[COCO18.index("r_sho"), 0] < kp[COCO18.index("l_sho"), 0]
        assert (labels == 0).mean() > 0.5 and rgb.shape == (256, 192, 3)


def test_skirts_and_pants_are_labelled_apart():
    for kind, label in (("skirt", 5), ("pants", 6)):
        person = random_person(np.random.default_rng(2), "lower_body")
        person.outfit["lower"].kind = kind
        _, labels, _ = render_person(person)
        assert (labels == label).sum() > 500 and not (labels == 11 - label).any()


def test_worn_garment_matches_in_shop_garment():
    """A solid garment has the same colour worn and flat; a patterned one has the same two colours."""
    rng = np.random.default_rng(0)
    for pattern in ("solid", "stripes", "checker"):
        g = random_garment(rng, "upper_body")
        g.pattern, g.kind = pattern, "tshirt"
        person = wearing(random_person(np.random.default_rng(1), "upper_body"), g)
        rgb, labels, _ = render_person(person)
        flat, mask = render_garment(g)
        worn_px = rgb[labels == 4].reshape(-1, 3).astype(int)
        flat_px = flat[mask].reshape(-1, 3).astype(int)
        c1, c2 = np.round(g.colour1).astype(int), np.round(g.colour2).astype(int)
        for px in (worn_px, flat_px):
            is1 = np.abs(px - c1).sum(-1) <= 3
            is2 = np.abs(px - c2).sum(-1) <= 3
            assert (is1 | is2).mean() > 0.8  # the rest is the darkened outline
            assert (is2.mean() > 0.2) == (pattern != "solid")
        assert not mask[0].any() and mask.mean() > 0.15  # on white, filling the frame


def test_unpaired_ground_truth_is_the_same_person():
    a = random_person(sample_rng(0, "test", "upper_body", 0), "upper_body")
    b = random_person(sample_rng(0, "test", "upper_body", 1), "upper_body")
    rgb_a, lab_a, kp_a = render_person(a)
    rgb_t, lab_t, kp_t = render_person(wearing(a, b.outfit["upper"]))
    assert np.array_equal(kp_a, kp_t)
    same = np.isin(lab_a, (0, 2, 11, 12, 13, 6, 5, 9, 10)) & (lab_a == lab_t)
    assert np.array_equal(rgb_a[same & np.isin(lab_a, (0, 12, 13))], rgb_t[same & np.isin(lab_a, (0, 12, 13))])
    garment = (lab_t == 4)
    assert not np.array_equal(rgb_a[garment], rgb_t[garment])


def test_deterministic_and_independent_of_dataset_size(tmp_path, toy_vitonhd):
    small = generate_toy_dataset(tmp_path / "v", n_train=2, n_test=1, seed=0, progress=False)
    for rel in ("train/image/00001_00.jpg", "train/cloth/00001_00.jpg", "train/image-parse-v3/00001_00.png",
                "train/openpose_json/00001_00_keypoints.json", "test/image/90000_00.jpg"):
        assert (small / rel).read_bytes() == (toy_vitonhd / rel).read_bytes(), rel
    other = generate_toy_dataset(tmp_path / "s1", n_train=1, n_test=0, seed=1, progress=False)
    assert (other / "train/image/00000_00.jpg").read_bytes() != (small / "train/image/00000_00.jpg").read_bytes()


def test_parallel_generation_is_identical(tmp_path):
    a = generate_toy_dataset(tmp_path / "a", "dresscode", n_train=2, n_test=2, progress=False, workers=1)
    b = generate_toy_dataset(tmp_path / "b", "dresscode", n_train=2, n_test=2, progress=False, workers=2)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()) and len(files) > 40
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)


def test_other_sizes_scale_everything(tmp_path):
    root = generate_toy_dataset(tmp_path / "v", n_train=1, n_test=0, size=(128, 96), progress=False)
    assert Image.open(root / "train/image/00000_00.jpg").size == (96, 128)
    body = np.array(json.loads((root / "train/openpose_json/00000_00_keypoints.json").read_text())
                    ["people"][0]["pose_keypoints_2d"]).reshape(25, 3)
    _, _, kp = render_person(random_person(sample_rng(0, "train", "upper_body", 0), "upper_body"))
    assert np.allclose(body[:8, :2], kp[:8] / 2, atol=0.01)


def test_unpaired_permutation_has_no_fixed_points():
    for n in range(2, 30):
        perm = unpaired_permutation(n, seed=n, category="dresses")
        assert sorted(perm) == list(range(n)) and (perm != np.arange(n)).all()


def test_canonical_to_lip_uses_vitonhd_neck():
    assert CANONICAL_TO_LIP[18] == 10 and CANONICAL_TO_LIP[4] == 5 and CANONICAL_TO_LIP[11] == 13


def test_cli_and_errors(tmp_path, capsys):
    assert main(["toy-data", str(tmp_path / "d"), "--layout", "dresscode", "--train", "1", "--test", "2", "--quiet",
                 "--size", "128x96"]) == 0
    assert "written to" in capsys.readouterr().out
    assert Image.open(tmp_path / "d/dresses/images/200000_0.jpg").size == (96, 128)
    with pytest.raises(ConfigError, match="layout"):
        generate_toy_dataset(tmp_path / "x", layout="deepfashion")
    with pytest.raises(ConfigError, match="too small"):
        generate_toy_dataset(tmp_path / "x", size=(32, 24))


def test_committed_sample_is_current(tmp_path):
    """data/sample/ must be what the generator writes today (regenerate it with the commands in data/README.md)."""
    from pathlib import Path

    sample = Path(__file__).resolve().parent.parent / "data" / "sample"
    for name, layout, n_train in (("toy_vitonhd", "vitonhd", 2), ("toy_dresscode", "dresscode", 1)):
        fresh = generate_toy_dataset(tmp_path / name, layout, n_train=n_train, n_test=2, seed=0, progress=False)
        files = sorted(p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(sample / name) for p in (sample / name).rglob("*") if p.is_file())
        assert all((fresh / f).read_bytes() == (sample / name / f).read_bytes() for f in files), name


def test_toy_dataset_reuses_a_matching_folder_and_regenerates_a_stale_one(tmp_path):
    from ootd_lib.errors import ConfigError
    from ootd_lib.toydata import GENERATOR_VERSION, toy_dataset

    kw = dict(n_train=1, n_test=0, seed=0, size=(64, 48), progress=False)
    root = toy_dataset(tmp_path / "t", **kw)
    marker = root / "marker.txt"
    marker.write_text("cached")
    assert toy_dataset(root, **kw) == root and marker.is_file()  # same wardrobe: reused as is

    toy_dataset(root, **{**kw, "n_train": 2})  # other arguments: written afresh
    info = json.loads((root / "toy_info.json").read_text())
    assert not marker.is_file() and info["n_train"] == 2 and info["generator_version"] == GENERATOR_VERSION

    marker.write_text("cached")
    (root / "toy_info.json").write_text(json.dumps({**info, "generator_version": GENERATOR_VERSION - 1}))
    toy_dataset(root, **{**kw, "n_train": 2})  # written by an older generator: stale, regenerated
    assert not marker.is_file() and json.loads((root / "toy_info.json").read_text()) == info

    real = tmp_path / "real"
    real.mkdir()
    (real / "train_pairs.txt").write_text("a.jpg a.jpg\n")
    assert toy_dataset(real, **kw) == real and sorted(p.name for p in real.iterdir()) == ["train_pairs.txt"]
    (real / "toy_info.json").write_text(json.dumps({"generator": "someone else"}))
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        toy_dataset(real, **kw)
    assert (real / "train_pairs.txt").is_file()
