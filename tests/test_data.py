"""Readers: both layouts read back with the right shapes, dtypes, ranges, label spaces, keypoints and pairing."""

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from ootd_lib.data import (ATR_LABELS, CANONICAL_LABELS, LIP_TO_CANONICAL, DressCodeDataset, VitonHDDataset,
                           body25_to_coco18, dresscode_keypoints_to_coco18, find_annotations, load_label_map,
                           image_to_tensor, load_rgb, tensor_to_uint8)
from ootd_lib.errors import DataError, InputError
from ootd_lib.toydata import CANONICAL_TO_LIP, random_person, render_person, sample_rng


def _check_item(item, size, category):
    h, w = size
    for key in ("person", "garment"):
        x = item[key]
        assert x.shape == (3, h, w) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
        assert x.std() > 0.1
    m = item["garment_mask"]
    assert m.shape == (1, h, w) and m.dtype == torch.float32 and set(m.unique().tolist()) == {0.0, 1.0}
    assert 0.1 < m.mean() < 0.8
    p = item["parse"]
    assert p.shape == (h, w) and p.dtype == torch.int64 and 0 <= p.min() and p.max() <= 18
    k = item["keypoints"]
    assert k.shape == (18, 2) and k.dtype == torch.float32 and not k.isnan().any()
    assert (k[:, 0] < w).all() and (k[:, 1] < h).all() and (k >= 0).all()
    assert item["category"] == category


def _rendered(split, category, index, size=(256, 192)):
    _, labels, kp = render_person(random_person(sample_rng(0, split, category, index), category))
    return labels, kp * np.array([size[1] / 192, size[0] / 256], np.float32)


def test_label_tables():
    assert len(CANONICAL_LABELS) == 19 and CANONICAL_LABELS[18] == "neck" and len(ATR_LABELS) == 18
    given = {5: 4, 13: 11, 10: 18, 9: 6, 12: 5, 6: 7, 16: 12, 17: 13, 18: 9, 19: 10, 14: 14, 15: 15, 2: 2, 0: 0}
    assert all(LIP_TO_CANONICAL[lip] == can for lip, can in given.items()) and len(LIP_TO_CANONICAL) == 20
    drawn = [c for c in range(19) if c not in (8, 16)]  # belt and bag have no LIP class
    assert (LIP_TO_CANONICAL[CANONICAL_TO_LIP[drawn]] == drawn).all()


def test_body25_to_coco18_mapping_and_scaling():
    body = np.zeros((25, 3), np.float32)
    body[:, 0] = np.arange(25) * 10 + 4  # x encodes the BODY_25 index
    body[:, 1] = np.arange(25) * 20 + 8
    body[:, 2] = 0.8
    body[4, 2] = 0.0  # r-wrist not found
    coco = body25_to_coco18(body.reshape(-1).tolist(), src_size=(1024, 768), dst_size=(512, 384))
    assert coco.shape == (18, 2) and coco.dtype == np.float32
    expected_body = list(range(8)) + list(range(9, 19))  # COCO 8.. = BODY_25 9.. (BODY_25 8 is the mid-hip)
    for c, b in enumerate(expected_body):
        if c == 4:
            assert np.isnan(coco[c]).all()
        else:
            assert np.allclose(coco[c], [(b * 10 + 4) / 2, (b * 20 + 8) / 2])
    # anisotropic rescale, and no dst_size = same pixels
    assert np.allclose(body25_to_coco18(body, (100, 50), (200, 200))[0], [4 * 4, 8 * 2])
    assert np.allclose(body25_to_coco18(body, (100, 50))[1], [14, 28])
    with pytest.raises(InputError):
        body25_to_coco18(np.zeros((18, 3)), (1, 1), (1, 1))


def test_dresscode_keypoints_to_coco18():
    rows = [[100.0 + i, 200.0 + i, 1.0, i] for i in range(18)]
    rows[7] = [-1.0, -1.0, 0.0, 7]
    rows[9] = [0.0, 0.0, 0.0, 9]
    rows[10][2] = 0.0  # zero score
    kp = dresscode_keypoints_to_coco18(rows, dst_size=(1024, 768))
    assert kp.shape == (18, 2) and kp.dtype == np.float32
    assert np.isnan(kp[[7, 9, 10]]).all() and not np.isnan(np.delete(kp, [7, 9, 10], 0)).any()
    assert np.allclose(kp[0], [200, 400]) and np.allclose(kp[17], [2 * 117, 2 * 217])
    assert np.allclose(dresscode_keypoints_to_coco18(rows, dst_size=(256, 192))[1], [50.5, 100.5])


def test_vitonhd_train_paired(toy_vitonhd):
    ds = VitonHDDataset(toy_vitonhd, split="train", pairing="paired", size=(256, 192))
    assert len(ds) == 8 and ds.pairs[0] == ("00000_00.jpg", "00000_00.jpg", "upper_body")
    item = ds[3]
    _check_item(item, (256, 192), "upper_body")
    assert item["person_name"] == item["garment_name"] == "00003_00.jpg"
    assert item["target"] is item["person"]
    labels, kp = _rendered("train", "upper_body", 3)
    assert np.array_equal(item["parse"].numpy(), labels)  # LIP PNG -> canonical, exactly what was drawn
    assert 18 in labels and np.allclose(item["keypoints"].numpy(), kp, atol=0.01)
    assert ds.size == (256, 192) and VitonHDDataset(toy_vitonhd).size is None


def test_vitonhd_resize(toy_vitonhd):
    native = VitonHDDataset(toy_vitonhd, size=None)[1]
    small = VitonHDDataset(toy_vitonhd, size=(128, 96))[1]
    _check_item(native, (256, 192), "upper_body")
    _check_item(small, (128, 96), "upper_body")
    assert torch.allclose(small["keypoints"], native["keypoints"] / 2, atol=1e-4)
    assert set(small["parse"].unique().tolist()) <= set(native["parse"].unique().tolist())  # nearest: no new labels
    assert torch.equal(small["parse"], native["parse"][::2, ::2]) or (small["parse"] == native["parse"][::2, ::2]
                                                                        ).float().mean() > 0.97


def test_vitonhd_test_paired_and_unpaired(toy_vitonhd):
    paired = VitonHDDataset(toy_vitonhd, "test", "paired", size=(128, 96))
    unpaired = VitonHDDataset(toy_vitonhd, "test", "unpaired", size=(128, 96))
    rows = [line.split() for line in (toy_vitonhd / "test_pairs.txt").read_text().splitlines()]
    assert [(p, g) for p, g, _ in unpaired.pairs] == [tuple(r) for r in rows]
    assert [p for p, g, _ in paired.pairs] == [r[0] for r in rows] and all(p == g for p, g, _ in paired.pairs)
    a, b = paired[0], unpaired[0]
    assert a["person_name"] == b["person_name"] and a["garment_name"] != b["garment_name"]
    assert torch.equal(a["person"], b["person"]) and torch.equal(a["parse"], b["parse"])
    garment_owner = [i for i, (p, _, _) in enumerate(paired.pairs) if p == b["garment_name"]][0]
    assert torch.equal(b["garment"], paired[garment_owner]["garment"])
    # the toy ground truth: same person, other garment
    t = b["target"]
    assert t.shape == (3, 128, 96) and not torch.equal(t, b["person"])
    head = b["parse"] == 11
    assert (t - b["person"]).abs()[:, head].mean() < 0.05  # the face is untouched
    upper = b["parse"] == 4
    assert (t - b["person"]).abs()[:, upper].mean() > 0.1  # the garment changed
    with pytest.raises(InputError, match="unpaired"):
        VitonHDDataset(toy_vitonhd, "train", "unpaired")


def test_vitonhd_folder_spellings(toy_vitonhd, tmp_path):
    root = shutil.copytree(toy_vitonhd, tmp_path / "v")
    (root / "train" / "image-parse-v3").rename(root / "train" / "image-parse")
    (root / "train" / "openpose_json").rename(root / "train" / "openpose-json")
    a, b = VitonHDDataset(toy_vitonhd)[2], VitonHDDataset(root)[2]
    assert torch.equal(a["parse"], b["parse"]) and torch.equal(a["keypoints"], b["keypoints"])
    assert find_annotations(root / "train" / "image" / "00002_00.jpg") is not None


@pytest.mark.parametrize("category", ["upper_body", "lower_body", "dresses"])
def test_dresscode_items(toy_dresscode, category):
    ds = DressCodeDataset(toy_dresscode, "train", "paired", categories=(category,), size=(256, 192))
    assert len(ds) == 8 and all(c == category for _, _, c in ds.pairs)
    item = ds[5]
    _check_item(item, (256, 192), category)
    labels, kp = _rendered("train", category, 5)
    atr = np.where(labels == 18, 11, labels)  # ATR label maps call the neck face
    assert np.array_equal(item["parse"].numpy(), atr)
    assert np.allclose(item["keypoints"].numpy(), kp, atol=0.01)  # 384x512 file space -> image pixels
    # Dress Code has no cloth masks: the one computed from the white background matches the drawn garment
    cloth = np.asarray(Image.open(toy_dresscode / category / "images" / item["garment_name"]).convert("RGB"))
    drawn = (cloth < 200).any(-1)
    m = item["garment_mask"][0].numpy() > 0
    assert (m & drawn).sum() / (m | drawn).sum() > 0.9


def test_dresscode_all_categories_pairs_and_targets(toy_dresscode):
    train = DressCodeDataset(toy_dresscode, "train", size=(128, 96))
    assert len(train) == 24 and [c for _, _, c in train.pairs[::8]] == ["upper_body", "lower_body", "dresses"]
    paired = DressCodeDataset(toy_dresscode, "test", "paired", size=(128, 96))
    unpaired = DressCodeDataset(toy_dresscode, "test", "unpaired", categories="lower_body", size=(128, 96))
    assert len(paired) == 12 and len(unpaired) == 4
    item = unpaired[1]
    assert item["person_name"][:-6] != item["garment_name"][:-6] and item["target"].shape == (3, 128, 96)
    first = paired[0]
    assert first["target"] is first["person"]
    lower = item["parse"] == 6
    if lower.any():
        assert not torch.equal(item["target"][:, lower], item["person"][:, lower])


def test_dresscode_root_pairs_fallback(toy_dresscode, tmp_path):
    root = shutil.copytree(toy_dresscode, tmp_path / "d")
    for cat in ("upper_body", "lower_body", "dresses"):
        (root / cat / "test_pairs_unpaired.txt").unlink()
    a = DressCodeDataset(toy_dresscode, "test", "unpaired")
    b = DressCodeDataset(root, "test", "unpaired")
    assert a.pairs == b.pairs
    (root / "test_pairs_unpaired.txt").unlink()
    with pytest.raises(DataError, match="test_pairs_unpaired.txt"):
        DressCodeDataset(root, "test", "unpaired")


def test_find_annotations(toy_vitonhd, toy_dresscode, tmp_path):
    ds = VitonHDDataset(toy_vitonhd, size=(128, 96))
    ann = find_annotations(toy_vitonhd / "train" / "image" / "00004_00.jpg", size=(128, 96))
    assert ann["parse"].dtype == np.int64 and ann["parse"].shape == (128, 96) and ann["keypoints"].dtype == np.float32
    assert np.array_equal(ann["parse"], ds[4]["parse"].numpy()) and np.allclose(ann["keypoints"], ds[4]["keypoints"])
    native = find_annotations(toy_dresscode / "dresses" / "images" / "200001_0.jpg")
    labels, kp = _rendered("train", "dresses", 1)
    assert native["parse"].shape == (256, 192) and np.allclose(native["keypoints"], kp, atol=0.01)
    assert find_annotations(toy_dresscode / "dresses" / "images" / "200001_1.jpg") is None  # a garment
    loose = tmp_path / "me.jpg"
    shutil.copy(toy_vitonhd / "train" / "image" / "00004_00.jpg", loose)
    assert find_annotations(loose) is None


def test_missing_files_raise_data_error(toy_vitonhd, toy_dresscode, tmp_path):
    v = shutil.copytree(toy_vitonhd, tmp_path / "v")
    (v / "train" / "image-parse-v3" / "00001_00.png").unlink()
    ds = VitonHDDataset(v)
    with pytest.raises(DataError, match="00001_00.png"):
        ds[1]
    ds[0]  # the others still load
    (v / "train" / "openpose_json" / "00002_00_keypoints.json").write_text("{not json")
    with pytest.raises(DataError, match="00002_00_keypoints.json"):
        ds[2]
    (v / "train" / "cloth" / "00003_00.jpg").unlink()
    with pytest.raises(DataError, match="cloth/00003_00.jpg"):
        ds[3]
    (v / "train_pairs.txt").unlink()
    with pytest.raises(DataError, match="train_pairs.txt"):
        VitonHDDataset(v)
    with pytest.raises(DataError, match="nowhere"):
        VitonHDDataset(tmp_path / "nowhere")
    d = shutil.copytree(toy_dresscode, tmp_path / "d")
    (d / "dresses" / "keypoints" / "200000_2.json").unlink()
    with pytest.raises(DataError, match="200000_2.json"):
        DressCodeDataset(d, categories=["dresses"])[0]
    with pytest.raises(InputError, match="shoes"):
        DressCodeDataset(d, categories=["shoes"])


def test_corrupt_images_raise_data_error(toy_vitonhd, tmp_path):
    v = shutil.copytree(toy_vitonhd, tmp_path / "v")
    person = v / "train" / "image" / "00000_00.jpg"
    person.write_bytes(b"this is not a jpeg")
    with pytest.raises(DataError, match="00000_00.jpg"):
        VitonHDDataset(v)[0]
    truncated = v / "train" / "image" / "00001_00.jpg"
    truncated.write_bytes(truncated.read_bytes()[:600])
    with pytest.raises(DataError, match="corrupt"):
        load_rgb(truncated)
    parse = v / "train" / "image-parse-v3" / "00002_00.png"
    Image.fromarray(np.full((256, 192), 40, np.uint8)).save(parse)
    with pytest.raises(DataError, match="00002_00.png"):
        VitonHDDataset(v)[2]
    Image.new("RGB", (8, 8)).save(parse)
    with pytest.raises(DataError, match="single-channel"):
        load_label_map(parse)


def test_load_rgb_modes(tmp_path):
    Image.fromarray(np.full((4, 5), 100, np.uint8), "L").save(tmp_path / "g.png")
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[0, 0, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    g, a, c = load_rgb(tmp_path / "g.png"), load_rgb(tmp_path / "a.png"), load_rgb(tmp_path / "c.jpg")
    assert g.mode == a.mode == c.mode == "RGB" and g.size == (5, 4)
    assert np.asarray(g)[0, 0].tolist() == [100, 100, 100]
    assert np.asarray(a)[0, 0].tolist() == [200, 0, 0] and np.asarray(a)[1, 1].tolist() == [255, 255, 255]
    assert np.asarray(c)[0, 0, 0] > 200 and np.asarray(c)[0, 0, 1] < 60
    with pytest.raises(DataError, match="missing.png"):
        load_rgb(tmp_path / "missing.png")


def test_works_with_a_dataloader(toy_dresscode):
    ds = DressCodeDataset(toy_dresscode, "test", "unpaired", size=(128, 96))
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["person"].shape == (4, 3, 128, 96) and batch["keypoints"].shape == (4, 18, 2)
    assert batch["target"].shape == (4, 3, 128, 96) and len(batch["person_name"]) == 4


def test_tensor_to_uint8_inverts_image_to_tensor_for_single_images_and_batches():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    x = image_to_tensor(Image.fromarray(arr))
    assert np.array_equal(tensor_to_uint8(x), arr)
    batch = tensor_to_uint8(torch.stack([x, -x]))
    assert batch.shape == (2, 8, 6, 3) and np.array_equal(batch[0], arr)
    assert np.array_equal(batch[1], 255 - arr)  # -x mirrors the value range
    out = tensor_to_uint8(torch.tensor([-3.0, 0.0, 3.0]).view(3, 1, 1))  # clipped, not wrapped around
    assert out.tolist() == [[[0, 128, 255]]]
