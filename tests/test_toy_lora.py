"""The toy LoRA demonstration (issue 16, item 5): assets/toy_lora_plaid — an adapter that teaches the shipped hd toy
checkpoint a garment family it never saw (plaid) — and assets/toy_lora_eval.json, measured on it by
assets/make_toy_lora_eval.py. A retrained adapter or base must be measured again; what the adapter reached is
guarded, so a regression fails CI. See assets/README.md ("Toy LoRA")."""

import json
from pathlib import Path

import pytest

from ootd_lib.config import TOY_CHECKPOINT
from ootd_lib.lora import check_adapter, read_adapter
from ootd_lib.models import safetensors_digest, weights_digest
from ootd_lib.pipeline import load_toy_pipeline

ASSETS = Path(__file__).resolve().parent.parent / "assets"
ADAPTER = ASSETS / "toy_lora_plaid"


@pytest.fixture(scope="module")
def recorded():
    ev = json.loads((ASSETS / "toy_lora_eval.json").read_text())
    assert ev["adapter_sha256"] == safetensors_digest(ADAPTER), "re-run assets/make_toy_lora_eval.py"
    assert ev["base_sha256"] == weights_digest(TOY_CHECKPOINT, "hd"), \
        "the shipped hd UNets, VAE or latent mask changed: re-measure (and retrain the adapter if the UNets did)"
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


def test_the_recorded_adapter_moves_the_new_family_and_keeps_the_old_ones(recorded):
    """Guards the levels measured on the 64 plaid test pairs (assets/README.md, "Toy LoRA"): the adapter lowers the
    plaid colour error (0.042 → 0.039) and keeps both identifications (81 % of garments, 31 % of patterns, as the
    base), and with it loaded the model still identifies 86 % of the ordinary families' garments (the base: 86 %).
    On the previous base (hd stage 3) the same recipe had raised the pattern 28 % → 33 %; hd stage 4 reaches that
    level on its own, and the adapter adds nothing there that 64 pairs can show."""
    m = recorded["models"]
    base, tuned = m["base"]["plaid"], m["lora"]["plaid"]
    assert tuned["colour_error"] < base["colour_error"]  # measured: 0.0391 vs 0.0417
    assert tuned["pattern_identification"] >= base["pattern_identification"] - 2 / 64  # measured: equal
    assert tuned["identification"] >= base["identification"] - 2 / 64  # measured: equal
    assert m["lora"]["ordinary"]["identification"] >= m["base"]["ordinary"]["identification"] - 2 / 64


def test_the_adapter_identifies_plaid_garments_as_the_issue_asks(recorded):
    """The issue's number, ≥ 80 % garment identification on the new family, is met (81 %). Its premise is not: the
    shipped base already identifies 81 % of plaid garments by their colours, so this identification never started near
    chance. What starts near chance is pattern identification, the strict xfail below."""
    assert recorded["models"]["lora"]["plaid"]["identification"] >= 0.80


@pytest.mark.xfail(strict=True, reason="open (LoRA issue, item 5): the adapter reaches 31 % pattern identification on "
                   "plaid (chance 17 %, the base 31 %; the VAE round trip of the truth itself reaches 92 %): the new "
                   "family's pattern, which is what starts near chance, is not learnt to 80 %")
def test_the_adapter_learns_the_new_pattern_to_80_percent(recorded):
    assert recorded["models"]["lora"]["plaid"]["pattern_identification"] >= 0.80


def test_the_vae_ceiling_is_recorded_beside_the_models(recorded):
    """No decoded result beats the round-tripped truth: every recorded model's pattern identification lies at or
    below the recorded VAE ceiling (92 % on plaid, 88 % on the ordinary families)."""
    for family in ("plaid", "ordinary"):
        top = recorded["vae_ceiling"][family]
        assert top["n"] == 64
        for model in recorded["models"].values():
            assert model[family]["pattern_identification"] <= top["pattern_identification"], family
