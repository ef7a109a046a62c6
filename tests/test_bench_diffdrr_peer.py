"""The registration benchmark's DiffDRR peer (benchmarks/diffdrr_peer.py): the pieces that decide its numbers
without running DiffDRR's registration itself.

- The Gaussian blur supplied in torchvision's place (DiffDRR's gradient NCC calls it) equals SciPy's
  Gaussian filter with the same taps and mirror borders, and a step edge blurs to the Gaussian CDF.
- A case claimed by a process that has died is taken over; one claimed by a live process is not.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))


@pytest.mark.parametrize("sigma", [1.25, 2.5, 5.0])
def test_gaussian_blur_matches_scipy(sigma):
    ndimage = pytest.importorskip("scipy.ndimage")
    from bench_registration import gaussian_blur

    k = int(6 * sigma + 1) | 1  # the kernel size DiffDRR's Sobel asks for
    img = torch.rand(2, 3, 40, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    got = gaussian_blur(img, k, sigma).numpy()
    # SciPy: the same Gaussian truncated at (k - 1) / 2 taps; "mirror" = reflect without repeating the edge.
    want = ndimage.gaussian_filter(img.numpy(), sigma=(0, 0, sigma, sigma), mode="mirror", truncate=((k - 1) / 2) / sigma)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_gaussian_blur_of_an_edge_is_the_gaussian_cdf():
    from bench_registration import gaussian_blur

    sigma, k = 3.0, 31
    img = torch.zeros(1, 1, 64, 64, dtype=torch.float64)
    img[..., 32:] = 1.0  # a vertical step edge between columns 31 and 32
    row = gaussian_blur(img, k, sigma)[0, 0, 32]
    x = torch.arange(64, dtype=torch.float64) - 31.5
    cdf = 0.5 * (1 + torch.erf(x / (sigma * math.sqrt(2))))
    # the discrete kernel's sum differs from the integral by ~1e-3 near the edge; far from it both are 0 or 1
    assert float((row[16:48] - cdf[16:48]).abs().max()) < 5e-3
    assert float(row[:8].abs().max()) < 1e-6 and float((row[-8:] - 1).abs().max()) < 1e-6


def test_claim_takes_over_a_dead_claimers_case(tmp_path):
    import diffdrr_peer as dp

    result = tmp_path / "case00.json"
    lock = result.with_suffix(".claim")
    lock.write_text(str(os.getpid()))  # a live claimer: this very process
    assert not dp._claim(result)
    dead = 2**22 + 12345  # above the largest pid_max Linux allows (2**22): no such process
    lock.write_text(str(dead))
    assert dp._claim(result)
    assert lock.read_text() == str(os.getpid())
    result.write_text("{}")
    assert not dp._claim(result)  # done cases are never rerun
