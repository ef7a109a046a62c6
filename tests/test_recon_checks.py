"""recon/checks.py: the projections are validated once per request, whatever layers the request passes through
(reconstruct -> method -> FDK start, and every ensemble member), and still by each method called directly."""

import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from recon_phantoms import analytic_projections, orbit  # noqa: E402

# the modules (XRayNeRFLib.recon.fdk is also the name of the function the package exports)
api, checks, fdk, nerf, voxel = (importlib.import_module(f"XRayNeRFLib.recon.{m}") for m in ("api", "checks", "fdk", "nerf", "voxel"))


@pytest.fixture
def calls(monkeypatch):
    seen = []
    real = checks.check_projections

    def counting(projections, cameras, name="projections"):
        seen.append(tuple(projections.shape))
        return real(projections, cameras, name)

    for module in (api, fdk, voxel, nerf):
        monkeypatch.setattr(module, "check_projections", counting)
    return seen


@pytest.mark.parametrize(
    "method, options",
    [("fdk", {}), ("voxel", {}), ("voxel", {"solver": "adam", "rays_per_view": 50}), ("nerf", {"rays_per_view": 50, "init_steps": 2})],
)
def test_one_check_per_request(calls, method, options):
    cams = orbit(8)
    proj = analytic_projections(cams)
    api.reconstruct(proj, cams, method, grid=8, iterations=None if method == "fdk" else 2, options=options)
    assert calls == [tuple(proj.shape)]
    calls.clear()
    api.reconstruct(
        proj, cams, method, grid=8, iterations=None if method == "fdk" else 2, options=options, uncertainty=True, ensemble_size=2
    )
    assert calls == [tuple(proj.shape)]  # not again for each member (nor for its FDK start)


def test_methods_called_directly_still_check(calls):
    cams = orbit(8)
    proj = analytic_projections(cams)
    with pytest.raises(ValueError, match="NaN or infinite"):
        fdk.fdk(proj * float("nan"), cams, grid=8)
    voxel.reconstruct_voxel(proj, cams, grid=8, init="fdk", solver="os-tv")
    assert calls == [tuple(proj.shape)] * 2  # fdk's refusal, then reconstruct_voxel's own check (its FDK start: none)
