"""OS-TV voxel solver (XRayNeRFLib.recon.ostv) on the ellipsoid phantom (tests/recon_phantoms.py).

Measured when written (32^3 grid over the scanned cylinder, 20 views of 48 x 40 px, trilinear):
exact data: FDK 32.4 dB, os-tv (defaults) 38.8 dB, os-tv without TV 35.6 dB.
"""

import math

import pytest
import torch

from XRayNeRFLib.progress import Progress
from XRayNeRFLib.recon import reconstruct
from XRayNeRFLib.recon.fdk import fdk
from XRayNeRFLib.recon.fov import default_grid
from XRayNeRFLib.recon.ostv import OSTVSettings, isotropic_tv, reconstruct_ostv, subset_order, tv_prox
from XRayNeRFLib.recon.voxel import reconstruct_voxel
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import Volume

from recon_phantoms import analytic_projections, ground_truth, orbit, psnr


@pytest.fixture(scope="module")
def case():
    torch.manual_seed(0)
    cams = orbit(20)
    clean = analytic_projections(cams).float()
    like = default_grid(cams, grid=24)
    like = Volume(torch.zeros(like.data.shape), like.ras_from_ijk.float(), "mu")
    gt = ground_truth(like).float()
    gen = torch.Generator().manual_seed(3)
    i0 = 2e3  # photons per pixel: visibly noisy
    counts = torch.poisson(i0 * torch.exp(-clean.double()), generator=gen)
    noisy = (-torch.log(counts.clamp_min(0.5) / i0)).float()
    return cams, clean, noisy, like, gt


def test_subset_order_is_a_bit_reversal_permutation():
    assert subset_order(8) == [0, 4, 2, 6, 1, 5, 3, 7]
    assert sorted(subset_order(10)) == list(range(10)) and subset_order(10)[:4] == [0, 8, 4, 2]
    assert subset_order(1) == [0]


def test_tv_prox_denoises_and_lowers_the_objective():
    g = torch.Generator().manual_seed(0)
    clean = torch.zeros(12, 12, 12)
    clean[3:9, 3:9, 3:9] = 1.0
    noisy = clean + 0.2 * torch.randn(clean.shape, generator=g)
    z, _ = tv_prox(noisy, 0.15, 50)
    obj = lambda u: 0.5 * float(((u - noisy) ** 2).sum()) + 0.15 * isotropic_tv(u)  # noqa: E731
    assert obj(z) < 0.8 * obj(noisy.clamp_min(0))
    assert float(((z - clean) ** 2).mean()) < 0.3 * float(((noisy - clean) ** 2).mean())
    assert float(z.min()) >= 0.0
    z0, _ = tv_prox(noisy, 0.0, 10)
    assert torch.equal(z0, noisy.clamp_min(0))


def test_beats_fdk_and_no_tv_on_noisy_data(case):
    cams, _, noisy, like, gt = case
    start = fdk(noisy, cams, volume=like, window="hann").data.clamp_min(0)
    tv_on, _ = reconstruct_ostv(noisy, cams, like, start, OSTVSettings(passes=6, subsets=5, tv_weight=0.02))
    tv_off, _ = reconstruct_ostv(noisy, cams, like, start, OSTVSettings(passes=6, subsets=5, tv_weight=0.0))
    p_fdk, p_on, p_off = psnr(start, gt), psnr(tv_on.data, gt), psnr(tv_off.data, gt)
    assert p_on > p_fdk + 3.0, (p_fdk, p_on)
    assert p_on > p_off + 1.0, (p_off, p_on)


def test_data_term_decreases_without_tv(case):
    cams, clean, _, like, _ = case
    start = torch.zeros(like.data.shape)
    _, hist = reconstruct_ostv(clean, cams, like, start, OSTVSettings(passes=5, subsets=1, tv_weight=0.0, relaxation=1.0))
    d = hist.data
    assert all(b < a for a, b in zip(d, d[1:])), d
    assert d[-1] < 0.2 * d[0]


def test_one_subset_no_tv_is_sart(case):
    """One subset, no TV, relaxation 1 from zeros: the first update is exactly SART's,
    x1 = A^T (p / A1) / A^T 1 (where A^T 1 > 0), computed here independently from the renderer's adjoint."""
    cams, clean, _, like, _ = case
    x0 = torch.zeros(like.data.shape)
    out, _ = reconstruct_ostv(clean, cams, like, x0, OSTVSettings(passes=1, subsets=1, tv_weight=0.0))
    x = x0.clone().requires_grad_(True)
    y = render(Volume(x, like.ras_from_ijk, "mu"), cams, method="trilinear")
    ray_len = render(Volume(torch.ones_like(x0), like.ras_from_ijk, "mu"), cams, method="trilinear")
    used = (ray_len > 1e-3 * ray_len.max()).float()
    (num,) = torch.autograd.grad(y, x, grad_outputs=used * clean / ray_len.clamp_min(1e-6), retain_graph=True)
    (den,) = torch.autograd.grad(y, x, grad_outputs=used)
    ok = den > 1e-3 * den.max()
    expect = torch.where(ok, num / den.clamp_min(1e-12), torch.zeros_like(num)).clamp_min(0)
    assert torch.allclose(out.data, expect, rtol=1e-4, atol=1e-7)
    assert float(expect.max()) > 0.005  # a real update, not zeros


def test_masked_pixels_are_left_out(case):
    """Garbage in masked pixels changes nothing: the result equals the run on clean data with the same masks."""
    cams, clean, _, like, _ = case
    masks = torch.ones(clean.shape, dtype=torch.bool)
    masks[:, :, :10] = False
    bad = clean.clone()
    bad[~masks] = 50.0
    s = OSTVSettings(passes=2, subsets=4, tv_weight=0.01)
    a, _ = reconstruct_ostv(bad, cams, like, torch.zeros(like.data.shape), s, masks=masks)
    b, _ = reconstruct_ostv(clean, cams, like, torch.zeros(like.data.shape), s, masks=masks)
    c, _ = reconstruct_ostv(bad, cams, like, torch.zeros(like.data.shape), s)
    assert torch.allclose(a.data, b.data, atol=1e-6)
    assert float((c.data - b.data).abs().max()) > 0.05  # unmasked garbage does change it


def test_cancel_returns_last_finished_step(case):
    cams, clean, _, like, gt = case
    calls = []

    def stop(p: Progress):
        calls.append(p.done)
        return len(calls) < 7

    res = reconstruct(clean, cams, "voxel", volume=like, renderer="trilinear", iterations=50, progress=stop,
                      options={"solver": "os-tv", "subsets": 5})
    assert res.cancelled and res.history.cancelled
    assert len(calls) == 7 and res.history.passes_done == 1
    fdk_psnr = psnr(fdk(clean, cams, volume=like, window="hann").data.clamp_min(0), gt)
    assert psnr(res.volume.data, gt) > fdk_psnr  # partial but improved, not the start nor garbage


def test_nan_projections_raise(case):
    cams, clean, _, like, _ = case
    bad = clean.clone()
    bad[3, 5, 5] = math.nan
    with pytest.raises(ValueError, match="non-finite|NaN"):
        reconstruct_ostv(bad, cams, like, torch.zeros(like.data.shape))
    with pytest.raises(ValueError, match="non-finite|NaN|finite"):
        reconstruct(bad, cams, "voxel", volume=like, options={"solver": "os-tv"})


def test_siddon_path_and_snapshots(case):
    cams, clean, _, like, gt = case
    snaps = []
    res = reconstruct(clean, cams, "voxel", volume=like, renderer="siddon", iterations=3,
                      options={"solver": "os-tv", "subsets": 5, "snapshot_every": 1, "on_snapshot": lambda k, t, mu: snaps.append((k, t, psnr(mu, gt)))})
    assert [k for k, _, _ in snaps] == [1, 2, 3]
    assert all(b[1] >= a[1] for a, b in zip(snaps, snaps[1:]))
    assert snaps[-1][2] == pytest.approx(psnr(res.volume.data, gt), abs=1e-6)
    assert snaps[-1][2] > 30.0, snaps


def test_solver_options_are_checked(case):
    cams, clean, _, like, _ = case
    with pytest.raises(ValueError, match="belong to the 'adam' voxel solver"):
        reconstruct(clean, cams, "voxel", volume=like, options={"solver": "os-tv", "lr": 0.1})
    with pytest.raises(ValueError, match="belong to the 'os-tv' voxel solver"):
        reconstruct(clean, cams, "voxel", volume=like, options={"subsets": 4})
    with pytest.raises(ValueError, match="unknown voxel solver 'cg'"):
        reconstruct(clean, cams, "voxel", volume=like, options={"solver": "cg"})
    with pytest.raises(ValueError, match="relaxation must be in"):
        reconstruct(clean, cams, "voxel", volume=like, options={"solver": "os-tv", "relaxation": 2.5})
    with pytest.raises(ValueError, match="coarse_to_fine is an option of the 'adam' solver"):
        reconstruct_voxel(clean, cams, volume=like, solver="os-tv", coarse_to_fine=True)
