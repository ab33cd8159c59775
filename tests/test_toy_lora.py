"""The toy LoRA demonstration (issue 16, item 5): assets/toy_lora_plaid — an adapter that teaches the shipped hd toy
checkpoint a garment family it never saw (plaid) — and assets/toy_lora_eval.json, measured on it by
assets/make_toy_lora_eval.py. A retrained adapter or base must be measured again; what the adapter reached is
guarded, so a regression fails CI. See assets/README.md ("Toy LoRA")."""

import hashlib
import json
from pathlib import Path

import pytest

from ootd_lib.config import TOY_CHECKPOINT
from ootd_lib.lora import check_adapter, read_adapter
from ootd_lib.pipeline import load_toy_pipeline

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ADAPTER = ASSETS / "toy_lora_plaid"


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def recorded():
    ev = json.loads((ASSETS / "toy_lora_eval.json").read_text())
    assert ev["adapter_sha256"] == digest(ADAPTER), "re-run assets/make_toy_lora_eval.py"
    assert ev["base_unet_sha256"] == digest(TOY_CHECKPOINT / "checkpoints" / "ootd" / "ootd_hd"), \
        "the shipped hd UNets changed: retrain the adapter (configs/toy_lora_plaid.yaml) and re-measure"
    for model in ev["models"].values():
        assert all(m["n"] == 64 for m in model.values())
    return ev


def test_the_shipped_adapter_belongs_to_the_shipped_hd_checkpoint_and_is_small(recorded):
    meta = read_adapter(ADAPTER)
    pipe = load_toy_pipeline(variant="hd")
    check_adapter(meta, ADAPTER, pipe.unet_garm, pipe.unet_vton, pipe.config.model_type)  # raises if it does not fit
    sizes = recorded["sizes_bytes"]
    assert sizes["adapter"] == sum(f.stat().st_size for f in ADAPTER.rglob("*.safetensors"))
    assert sizes["adapter"] <= 0.10 * sizes["unets"]  # the issue: ≤ 10 % of the UNets


def test_the_recorded_runs_moved_the_new_family_and_kept_the_old_ones(recorded):
    """Guards the levels measured on the 64 plaid test pairs (assets/README.md, "Toy LoRA"): the adapter raised
    pattern identification 30 % → 36 % and garment identification 75 % → 77 %, and with it loaded the model still
    identifies 84 % of the ordinary families' garments (the base: 83 %); full fine-tuning moved plaid less (73 %, 31 %)
    and dropped the ordinary families to 80 %."""
    m = recorded["models"]
    base, tuned = m["base"]["plaid"], m["lora"]["plaid"]
    assert tuned["pattern_identification"] >= base["pattern_identification"] + 3 / 64  # measured: +4 pairs of 64
    assert tuned["identification"] >= base["identification"]
    assert m["lora"]["ordinary"]["identification"] >= m["base"]["ordinary"]["identification"] - 2 / 64


@pytest.mark.xfail(strict=True, reason="open (LoRA issue, item 5): the adapter reaches 36 % pattern identification on "
                   "plaid (chance 17 %; the VAE round trip of the truth itself reaches 80 %) and 77 % garment "
                   "identification, which was 75 % before (colour alone identifies plaid garments), not the "
                   "near-chance → ≥ 80 % the issue asks for")
def test_the_adapter_reaches_the_issue_target(recorded):
    tuned = recorded["models"]["lora"]["plaid"]
    assert tuned["pattern_identification"] >= 0.80 and tuned["identification"] >= 0.80
