"""reconstruct(): the one entry point gives the same volumes as the methods called directly, converts
to HU at the stated energy, validates its options, handles masks as documented, runs nerf, and
returns the best-so-far volume on cancellation."""

import os
import sys
import warnings

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from recon_phantoms import analytic_projections, orbit  # noqa: E402

from XRayNeRFLib.progress import Cancelled  # noqa: E402
from XRayNeRFLib.recon.api import reconstruct  # noqa: E402
from XRayNeRFLib.recon.fdk import fdk  # noqa: E402
from XRayNeRFLib.recon.fov import default_grid  # noqa: E402
from XRayNeRFLib.recon.optimize import FitSettings  # noqa: E402
from XRayNeRFLib.recon.voxel import reconstruct_voxel  # noqa: E402
from XRayNeRFLib.volume import mu_water_per_mm  # noqa: E402


@pytest.fixture(scope="module")
def case():
    cams = orbit(12)
    return cams, analytic_projections(cams)


def test_fdk_and_hu(case):
    cams, proj = case
    res = reconstruct(proj, cams, "fdk", grid=16, options={"window": "shepp-logan"})
    direct = fdk(proj, cams, grid=16, window="shepp-logan")
    assert torch.equal(res.volume.data, direct.data) and torch.allclose(res.volume.ras_from_ijk, direct.ras_from_ijk)
    assert res.uncertainty is None and res.history is None and not res.cancelled and res.seconds > 0
    hu = reconstruct(proj, cams, "fdk", grid=16, units="hu", options={"window": "shepp-logan", "energy_kev": 80.0})
    mw = mu_water_per_mm(80.0)
    assert hu.volume.units == "hu"
    assert torch.allclose(hu.volume.data, 1000.0 * (direct.data / mw - 1.0), atol=1e-3)
    # uncertainty in HU is the mu spread scaled by 1000 / mu_water (no offset)
    u_mu = reconstruct(proj, cams, "fdk", grid=16, uncertainty=True, ensemble_size=3)
    u_hu = reconstruct(proj, cams, "fdk", grid=16, uncertainty=True, ensemble_size=3, units="hu")
    assert torch.allclose(u_hu.uncertainty.data, u_mu.uncertainty.data * 1000.0 / mu_water_per_mm(60.0), rtol=1e-4, atol=1e-3)


def test_voxel_matches_direct_call(case):
    cams, proj = case
    like = default_grid(cams, grid=12)
    opts = {"lr": 0.05, "rays_per_view": 100, "tv_weight": 0.2}
    res = reconstruct(proj, cams, "voxel", volume=like, iterations=8, renderer="trilinear", seed=5, options=dict(opts, solver="adam"))
    direct = reconstruct_voxel(proj, cams, volume=like, settings=FitSettings(iterations=8, renderer="trilinear", seed=5, **opts))
    assert torch.allclose(res.volume.data, direct.data, atol=1e-6)
    assert len(res.history.data) == 8


def test_voxel_os_tv_matches_direct_call(case):
    """options['solver'] = 'os-tv' reaches ostv.reconstruct_ostv with the options and iterations = passes."""
    from XRayNeRFLib.recon.ostv import OSTVSettings
    from XRayNeRFLib.volume import Volume

    cams, proj = case
    like = default_grid(cams, grid=12)
    res = reconstruct(
        proj,
        cams,
        "voxel",
        volume=like,
        iterations=3,
        renderer="trilinear",
        options={"solver": "os-tv", "subsets": 4, "relaxation": 0.8, "tv_weight": 0.01, "tv_inner": 5},
    )
    like32 = Volume(torch.zeros(like.data.shape), like.ras_from_ijk.float(), "mu")
    direct = reconstruct_voxel(
        proj,
        cams,
        volume=like32,
        solver="os-tv",
        ostv=OSTVSettings(passes=3, subsets=4, relaxation=0.8, tv_weight=0.01, tv_inner=5, renderer="trilinear"),
    )
    assert torch.allclose(res.volume.data, direct.data, atol=1e-6)
    assert res.history.passes_done == 3 and len(res.history.data) == 3
    assert float(res.volume.data.max()) > 0.005


def test_bad_arguments(case):
    cams, proj = case
    with pytest.raises(ValueError, match="unknown option 'tv' for method 'voxel'; accepted: .*tv_weight"):
        reconstruct(proj, cams, "voxel", grid=8, options={"tv": 1})
    with pytest.raises(ValueError, match="unknown option 'lr' for method 'fdk'"):
        reconstruct(proj, cams, "fdk", grid=8, options={"lr": 1})
    with pytest.raises(ValueError, match="method"):
        reconstruct(proj, cams, "sart")
    with pytest.raises(ValueError, match="units"):
        reconstruct(proj, cams, units="kev")
    with pytest.raises(ValueError, match="outside the tabulated"):
        reconstruct(proj, cams, grid=8, units="hu", options={"energy_kev": 300})
    with pytest.raises(ValueError, match="disagree"):
        reconstruct(proj[:-1], cams, grid=8)
    with pytest.raises(ValueError, match="same direction"):
        reconstruct(proj[:3], cams[[0, 0, 0]], grid=8)
    masks = torch.ones(proj.shape, dtype=torch.bool)
    masks[2] = False
    with pytest.raises(ValueError, match=r"views \[2\] exclude every pixel"):
        reconstruct(proj, cams, "voxel", grid=8, masks=masks)


def test_fdk_masks_warn_and_cancel_raises(case):
    cams, proj = case
    masks = torch.ones(proj.shape, dtype=torch.bool)
    masks[:, :, :3] = False
    with pytest.warns(RuntimeWarning, match="FDK cannot leave collimated pixels out"):
        reconstruct(proj, cams, "fdk", grid=8, masks=masks)
    with pytest.raises(Cancelled):
        reconstruct(proj, cams, "fdk", grid=8, progress=lambda p: False)


def test_default_voxel_solver_is_os_tv_and_adam_options_say_how_to_get_adam(case):
    cams, proj = case
    res = reconstruct(proj, cams, "voxel", grid=8, iterations=2, renderer="trilinear")
    assert res.history.passes_done == 2  # an OSTVHistory: passes, not Adam steps
    with pytest.raises(ValueError, match=r"options lr belong to the 'adam' voxel solver; drop them or set options\['solver'\] = 'adam'"):
        reconstruct(proj, cams, "voxel", grid=8, options={"lr": 0.1})


def test_voxel_cancel_returns_best_so_far(case):
    cams, proj = case
    seen = []

    def stop(p):
        seen.append(p.fraction)
        return len(seen) < 2

    res = reconstruct(
        proj,
        cams,
        "voxel",
        grid=10,
        iterations=50,
        renderer="trilinear",
        progress=stop,
        options={"report_every": 2, "rays_per_view": 50, "solver": "adam"},
    )
    assert res.cancelled and len(res.history.data) < 50
    assert torch.isfinite(res.volume.data).all() and float(res.volume.data.max()) > 0.005
    assert all(0 <= f <= 1 for f in seen)


def test_nerf_through_the_api(case):
    """A short hash-grid fit (random MLP) through reconstruct: options reach NerfSettings, the result is on
    the requested grid and better than the empty volume."""
    pytest.importorskip("XRayNeRFLib.recon.nerf")
    cams, proj = case
    like = default_grid(cams, grid=12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = reconstruct(
            proj,
            cams,
            "nerf",
            volume=like,
            iterations=6,
            renderer="trilinear",
            options={"mci": None, "rays_per_view": 100, "levels": 4, "finest_resolution": 16, "coarse_to_fine": False},
        )
    assert res.volume.data.shape == like.data.shape and torch.allclose(res.volume.ras_from_ijk, like.ras_from_ijk)
    assert torch.isfinite(res.volume.data).all() and (res.volume.data >= 0).all()
    assert len(res.history.data) == 6 and res.history.data[-1] < res.history.data[0]
    with pytest.raises(ValueError, match="unknown option 'window' for method 'nerf'"):
        reconstruct(proj, cams, "nerf", volume=like, options={"window": "hann"})


def test_default_renderer_is_trilinear(case):
    """Without a renderer the iterative methods use trilinear ray marching (as good as Siddon on the
    chest benchmark and several times faster); Siddon stays available and gives a different result."""
    from XRayNeRFLib.recon.api import DEFAULT_RENDERER

    assert DEFAULT_RENDERER == "trilinear"
    cams, proj = case
    default = reconstruct(proj, cams, "voxel", grid=8, iterations=2).volume.data
    trilinear = reconstruct(proj, cams, "voxel", grid=8, iterations=2, renderer="trilinear").volume.data
    siddon = reconstruct(proj, cams, "voxel", grid=8, iterations=2, renderer="siddon").volume.data
    assert torch.equal(default, trilinear)
    assert float((siddon - trilinear).abs().max()) > 1e-4 * float(trilinear.abs().max())
