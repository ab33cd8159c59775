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


def test_the_adapter_teaches_the_new_family(recorded):
    """Guards the levels the shipped adapter reached on the 64 plaid test pairs (assets/README.md)."""
    base, tuned = recorded["models"]["base"]["plaid"], recorded["models"]["lora"]["plaid"]
    assert tuned["pattern_identification"] >= base["pattern_identification"] + PATTERN_GAIN
    assert tuned["identification"] >= IDENTIFICATION_FLOOR
    # an adapter can be switched off: the base model's own families are measured without it (no forgetting by design)
    assert recorded["models"]["lora"]["ordinary"]["n"] == 64
