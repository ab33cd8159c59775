"""OOTD_PROGRESS=0 switches off every progress bar: ootd_lib's own, the pipeline's and the libraries'."""

import os
import subprocess
import sys

import huggingface_hub.utils
import pytest
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from ootd_lib.pipeline import OOTDPipeline
from ootd_lib.progress import apply_environment, disable_progress_bars, progress_enabled
from ootd_lib.toydata import generate_toy_dataset


@pytest.fixture
def restore_library_bars(monkeypatch):
    monkeypatch.delenv("OOTD_PROGRESS", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    yield
    huggingface_hub.utils.enable_progress_bars()
    diffusers_logging.enable_progress_bar()
    transformers_logging.enable_progress_bar()


def library_bars():
    return (diffusers_logging.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled(),
            not huggingface_hub.utils.are_progress_bars_disabled())


@pytest.mark.parametrize("value, enabled", [(None, True), ("1", True), ("0", False), ("off", False), ("False", False)])
def test_progress_enabled_follows_the_switch(monkeypatch, value, enabled):
    if value is None:
        monkeypatch.delenv("OOTD_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("OOTD_PROGRESS", value)
    assert progress_enabled() is enabled and progress_enabled(True) is enabled
    assert progress_enabled(False) is False  # a caller's progress=False always wins


def test_apply_environment_turns_the_library_bars_off_only_when_asked(restore_library_bars, monkeypatch):
    apply_environment()
    assert library_bars() == (True, True, True)
    monkeypatch.setenv("OOTD_PROGRESS", "0")
    apply_environment()
    assert library_bars() == (False, False, False)


def test_disable_progress_bars_also_sets_the_switch(restore_library_bars):
    disable_progress_bars()
    assert os.environ["OOTD_PROGRESS"] == "0" and not progress_enabled() and library_bars() == (False, False, False)


def test_import_ootd_lib_under_the_switch_silences_diffusers_transformers_and_the_hub():
    code = ("import ootd_lib\nfrom diffusers.utils import logging as d\nfrom transformers.utils import logging as t\n"
            "import huggingface_hub.utils as h\n"
            "print(d.is_progress_bar_enabled(), t.is_progress_bar_enabled(), h.are_progress_bars_disabled())")
    env = dict(os.environ, OOTD_PROGRESS="0", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False", "True"]


def test_ootd_lib_bars_obey_the_switch(monkeypatch, tmp_path, capsys):
    # the pipeline's sampling bar: diffusers' own, unless switched off (a bare instance: the bar needs no models)
    pipe = OOTDPipeline.__new__(OOTDPipeline)
    monkeypatch.delenv("OOTD_PROGRESS", raising=False)
    with pipe.progress_bar(total=3) as bar:
        assert bar.disable is False
    # toy data generation (tqdm writes to stderr outside notebooks)
    generate_toy_dataset(tmp_path / "a", n_train=1, n_test=0, progress=True)
    assert "toy vitonhd" in capsys.readouterr().err
    monkeypatch.setenv("OOTD_PROGRESS", "0")
    with pipe.progress_bar(total=3) as bar:
        assert bar.disable is True
    generate_toy_dataset(tmp_path / "b", n_train=1, n_test=0, progress=True)
    assert capsys.readouterr().err == ""


def test_training_bars_obey_the_switch(monkeypatch, capsys):
    # `ootd train-vae` runs with progress=True; the switch must still silence its bar (one step of a tiny VAE)
    import torch
    from diffusers import AutoencoderTiny

    from ootd_lib.models import toy_vae_config
    from ootd_lib.toy_vae import pretrain_toy_vae

    class Pool:  # what pretrain_toy_vae reads: dataset.base[i]["person" | "garment"]
        base = [{"person": torch.zeros(3, 16, 16), "garment": torch.zeros(3, 16, 16)}]

        def __len__(self):
            return 1

    torch.manual_seed(0)
    vae = AutoencoderTiny(**toy_vae_config())
    for switch, shown in ((None, True), ("0", False)):
        if switch is None:
            monkeypatch.delenv("OOTD_PROGRESS", raising=False)
        else:
            monkeypatch.setenv("OOTD_PROGRESS", switch)
        pretrain_toy_vae(vae, Pool(), steps=1, batch_size=1, crop=(8, 8), progress=True)
        assert ("toy VAE" in capsys.readouterr().err) is shown
