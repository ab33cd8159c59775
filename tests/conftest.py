"""Shared fixtures: small toy datasets generated once per test session (seed 0, 256x192)."""

import pytest

from ootd_lib.toydata import generate_toy_dataset


@pytest.fixture(scope="session")
def toy_vitonhd(tmp_path_factory):
    """A toy VITON-HD root: 8 train persons, 4 unpaired test pairs (with ground truth)."""
    return generate_toy_dataset(tmp_path_factory.mktemp("toy") / "vitonhd", layout="vitonhd", n_train=8, n_test=4,
                                seed=0, size=(256, 192), progress=False)


@pytest.fixture(scope="session")
def toy_dresscode(tmp_path_factory):
    """A toy Dress Code root: 8 train / 4 test persons per category (upper_body, lower_body, dresses)."""
    return generate_toy_dataset(tmp_path_factory.mktemp("toy") / "dresscode", layout="dresscode", n_train=8, n_test=4,
                                seed=0, size=(256, 192), progress=False)
