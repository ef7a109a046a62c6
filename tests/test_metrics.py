"""Metrics: PSNR/MAE against hand-computed values, SSIM's known properties (1 for identical volumes,
invariant to data scale when the range scales too, decreasing with noise, ~0 for independent noise),
masks, resampling onto another grid, and bad input."""

import math

import pytest
import torch

from XRayNeRFLib.metrics import all_metrics, body_mask, mae, psnr, resample_like, ssim
from XRayNeRFLib.volume import Volume


def blob(n=24):
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float64),) * 3, indexing="ij")
    r2 = (i - n / 2) ** 2 + (j - n / 2) ** 2 + (k - n / 2) ** 2
    return 0.02 * (r2 < (n / 3) ** 2).double() + 0.01 * torch.exp(-r2 / 30)


def test_psnr_and_mae_values():
    ref = torch.zeros(4, 4, 4)
    ref[0, 0, 0] = 2.0  # data range 2
    x = ref + 0.1
    assert psnr(x, ref) == pytest.approx(10 * math.log10(4 / 0.01), abs=1e-6)
    assert psnr(x, ref, data_range=1.0) == pytest.approx(10 * math.log10(1 / 0.01), abs=1e-6)
    assert psnr(ref, ref) == math.inf
    y = ref.clone()
    y[1] += 0.4  # 16 of 64 voxels wrong by 0.4
    assert mae(y, ref) == pytest.approx(0.1, abs=1e-7)
    m = torch.zeros(4, 4, 4, dtype=torch.bool)
    m[1] = True
    assert mae(y, ref, m) == pytest.approx(0.4, abs=1e-7)
    assert psnr(y, ref, mask=m) == pytest.approx(10 * math.log10(4 / 0.16), abs=1e-5)


def test_ssim_properties():
    ref = blob()
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    noisy_small = ref + 0.001 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    noisy_large = ref + 0.005 * torch.randn(ref.shape, generator=g, dtype=torch.float64)
    s1, s2 = ssim(noisy_small, ref), ssim(noisy_large, ref)
    assert 1.0 > s1 > s2 > 0.1, (s1, s2)
    # scaling both volumes (and so the data range) leaves SSIM unchanged
    assert ssim(1000 * noisy_small, 1000 * ref) == pytest.approx(s1, abs=1e-9)
    # independent noise against the reference: no structure in common
    indep = torch.rand(ref.shape, generator=g, dtype=torch.float64) * 0.03
    assert abs(ssim(indep, ref)) < 0.1
    # a constant offset lowers SSIM only through the luminance term
    assert 0.8 < ssim(ref + 0.002, ref) < 1.0
    body = body_mask(ref, 0.015)
    assert ssim(noisy_large, ref, mask=body) != pytest.approx(s2, abs=1e-6)
    m = all_metrics(noisy_small, ref, mask=body)
    assert m["ssim"] == pytest.approx(s1) and m["psnr_db"] == pytest.approx(psnr(noisy_small, ref)) and "mae_masked" in m


def test_resample_like_matches_analytic_linear_field():
    """A linear field is reproduced exactly by trilinear resampling onto a shifted, finer grid."""
    n = 10
    a = torch.eye(4, dtype=torch.float64)
    a[:3, :3] *= 2.0
    a[:3, 3] = torch.tensor([-9.0, -9.0, -9.0])
    k, j, i = torch.meshgrid(*(torch.arange(n, dtype=torch.float64),) * 3, indexing="ij")
    ras = torch.stack([i, j, k], -1) * 2.0 - 9.0
    field = lambda p: 0.01 + 0.001 * p[..., 0] - 0.002 * p[..., 1] + 0.0005 * p[..., 2]  # noqa: E731
    src = Volume(field(ras).float(), a.float())
    b = torch.eye(4, dtype=torch.float64)
    b[:3, 3] = torch.tensor([-5.5, -4.0, -3.0])
    like = Volume(torch.zeros(8, 9, 10), b.float())
    kk, jj, ii = torch.meshgrid(torch.arange(8.0), torch.arange(9.0), torch.arange(10.0), indexing="ij")
    expect = field(torch.stack([ii - 5.5, jj - 4.0, kk - 3.0], -1).double())
    got = resample_like(src, like)
    assert torch.allclose(got.double(), expect, atol=1e-6)


def test_bad_input():
    with pytest.raises(ValueError, match="different shapes"):
        psnr(torch.zeros(3, 3, 3), torch.ones(3, 3, 4))
    with pytest.raises(ValueError, match="constant"):
        psnr(torch.zeros(3, 3, 3), torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="NaN"):
        mae(torch.full((3, 3, 3), float("nan")), torch.ones(3, 3, 3))
    with pytest.raises(ValueError, match="11 voxels"):
        ssim(torch.rand(5, 12, 12), torch.rand(5, 12, 12))
    with pytest.raises(ValueError, match="no voxel"):
        mae(torch.rand(3, 3, 3), torch.rand(3, 3, 3), torch.zeros(3, 3, 3, dtype=torch.bool))
