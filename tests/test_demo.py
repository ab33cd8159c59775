"""``ootd demo``: toy test set generated on first run, try-on grid written, metrics printed; the shipped checkpoint."""

import json

import pytest
from PIL import Image

from ootd_lib.demo import run_demo
from ootd_lib.models import add_variant, build_toy_components, save_components


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """An untrained toy pipeline in the released layout with both variants (hd from seed 0, dc from seed 1, one VAE
    and one set of encoders): the demo's mechanics do not depend on trained weights."""
    folder = save_components(build_toy_components(0), tmp_path_factory.mktemp("ckpt") / "toy", variant="hd")
    other = build_toy_components(1)
    add_variant(folder, other["unet_garm"], other["unet_vton"], "dc")
    return folder


def test_demo_generates_data_writes_the_grid_and_reports_metrics(random_checkpoint, tmp_path, capsys):
    out, data = tmp_path / "outputs" / "demo.png", tmp_path / "toy_demo"
    result = run_demo(out=out, n_pairs=4, steps=2, seed=0, data=data, checkpoint=random_checkpoint)
    assert set(result) == {("hd", "upper_body"), ("dc", "lower_body"), ("dc", "dresses")}  # 2 hd rows, 1 + 1 dc
    assert [r["n"] for r in result.values()] == [2, 1, 1]
    for r in result.values():
        assert 0 <= r["identification"] <= 1 and r["chance"] == 1 / 16
        assert r["masked_error"] > 0 and r["vae_floor"] > 0 and r["colour_error_other"] > 0
    img = Image.open(out)
    assert img.width > 300 and img.height > 4 * 100  # 5 columns × 4 rows
    printed = capsys.readouterr().out
    assert "garment identified" in printed and "VAE floor" in printed
    # second run reuses the data sets
    pairs = data / "vitonhd" / "test_pairs.txt"
    stamp = pairs.stat().st_mtime
    run_demo(out=out, n_pairs=1, steps=1, seed=0, data=data, checkpoint=random_checkpoint)
    assert pairs.stat().st_mtime == stamp


def test_evaluate_command_writes_results_json(random_checkpoint, toy_vitonhd, tmp_path):
    from ootd_lib.cli import main

    out = tmp_path / "results.json"
    assert main(["evaluate", "--model", str(random_checkpoint), "--data", str(toy_vitonhd), "--pairing", "unpaired",
                 "--steps", "1", "--limit", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["pairing"] == "unpaired" and res["variant"] == "hd"
    toy = res["toy"]["upper_body"]  # a toy wardrobe: the try-on metrics against its exact ground truth
    assert toy["n"] == 2 and toy["k"] == 4  # K = min(16, test garments)
    assert {"masked_error", "vae_floor", "colour_error", "colour_error_other", "identification", "chance"} <= set(toy)
    assert main(["evaluate", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    # paired pairs of real-style data: reference and distribution metrics (FID/KID skipped offline, with a reason)
    assert main(["evaluate", "--model", str(random_checkpoint), "--data", str(toy_vitonhd), "--pairing", "paired",
                 "--steps", "1", "--limit", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["n"] == 2 and {"ssim", "psnr", "masked_error"} <= set(res["metrics"])
    assert {"fid", "kid"} <= set(res["metrics"]) | set(res["skipped"])
