"""Outfitting dropout statistics and the classifier-free-guidance combination."""

import math

import pytest
import torch

from ootd_lib.errors import InputError
from ootd_lib.guidance import cfg_combine, outfitting_dropout, uses_cfg


def test_dropout_zeroes_whole_samples_at_rate_p():
    n, p = 20_000, 0.1
    lat = torch.randn(n, 4, 2, 2, generator=torch.Generator().manual_seed(0)) + 3  # never zero by chance
    out = outfitting_dropout(lat, p, generator=torch.Generator().manual_seed(1))
    zero = (out == 0).flatten(1).all(1)
    kept = (out == lat).flatten(1).all(1)
    assert torch.all(zero ^ kept)  # each sample entirely dropped or entirely kept
    rate = zero.float().mean().item()
    assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)  # 5 sigma: ±0.011 at n = 20 000
    # not the InstructPix2Pix scheme (which would drop the image condition in 2p = 20 % of samples)
    assert rate < 0.15


def test_dropout_is_seeded_and_keeps_gradients():
    lat = torch.randn(64, 4, 2, 2, requires_grad=True)
    a = outfitting_dropout(lat, 0.5, generator=torch.Generator().manual_seed(3))
    b = outfitting_dropout(lat, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    a.sum().backward()
    kept = (a != 0).flatten(1).any(1)
    assert torch.equal(lat.grad.flatten(1).bool().all(1), kept)
    assert torch.equal(outfitting_dropout(lat, 0.0), lat) and outfitting_dropout(lat, 1.0).abs().sum() == 0
    with pytest.raises(InputError):
        outfitting_dropout(lat, 1.5)


def test_cfg_combination():
    u, c = torch.tensor([1.0, -2.0]), torch.tensor([3.0, 0.0])
    assert torch.equal(cfg_combine(u, c, 2.0), torch.tensor([5.0, 2.0]))  # u + 2 (c - u)
    assert torch.equal(cfg_combine(u, c, 1.0), c) and torch.equal(cfg_combine(u, c, 0.0), u)
    assert uses_cfg(2.0) and not uses_cfg(1.0)
