"""The web app's Reconstruct tab without a browser: the page's fields -> run_reconstruction's arguments
(XRayNeRFWeb/session.reconstruction_request), and Session.reconstruct_work running them on a real MRML scene
(slicer-core): the output grid options and --refine-geometry reach the engine."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402
from recon_phantoms import analytic_projections, orbit  # noqa: E402

BASE = {"method": "fdk", "renderer": "trilinear", "grid": 16, "iterations": 0, "uncertainty": False}


def test_fields_become_the_grid_request_and_the_refine_flag():
    from XRayNeRFMRML.choices import FOV_REGIONS
    from XRayNeRFMRML.reconstruction import GridRequest
    from XRayNeRFWeb.session import reconstruction_request

    r = reconstruction_request(BASE)
    assert r["grid_request"] == GridRequest(grid=16) and r["refine_geometry"] is False and r["iterations"] is None
    for region in FOV_REGIONS:
        assert reconstruction_request(dict(BASE, fov_region=region))["grid_request"] == GridRequest(grid=16, region=region)
    r = reconstruction_request(dict(BASE, size=["8", 9, 10], spacing_mm="2.5", refine_geometry=True))
    assert r["grid_request"] == GridRequest(size=(8, 9, 10), spacing_mm=2.5) and r["refine_geometry"] is True
    r = reconstruction_request(dict(BASE, size=[8, 9, 10], spacing_mm=2.5, origin_ras=[1, "-2", 3]))
    assert r["grid_request"].origin_ras == (1.0, -2.0, 3.0)
    assert reconstruction_request(dict(BASE, size=[8, 9, 10], spacing_mm=2.5, origin_ras=["", "", ""]))["grid_request"].origin_ras is None
    for bad, message in (
        (dict(fov_region="some"), "unknown field-of-view region"),
        (dict(size=[8, 0, 10], spacing_mm=2.0), "all three sizes"),
        (dict(size=[8, 9, 10], spacing_mm=0), "voxel size"),
        (dict(size=[8, 9]), "three counts"),
        (dict(size=[8, 9, 10], spacing_mm=2.0, origin_ras=[1, "", 3]), "all three of R, A, S"),
        (dict(method="art"), "unknown method"),
    ):
        with pytest.raises(ValueError, match=message):
            reconstruction_request(dict(BASE, **bad))


class _Job:
    fraction, message, previews, cancel_requested = 0.0, "", 0, False

    @staticmethod
    def call_engine(fn, *args, **kwargs):
        return fn(*args, **kwargs)


def test_reconstruct_work_gives_the_engine_grid_and_refines(monkeypatch):
    """Session.reconstruct_work with the request of an explicit grid: the output node holds the engine's explicit grid;
    with refine_geometry the engine's self-calibration runs first (spied: RefineSettings.for_method's settings)."""
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.recon import selfcal
    from XRayNeRFLib.recon.grid import explicit_grid
    from XRayNeRFMRML.nodes import ijk_to_ras
    from XRayNeRFWeb.session import Session, reconstruction_request

    slicer_harness.new_scene()
    cams = orbit(10, size_px=(32, 28), spacing=3.0)
    session = Session.__new__(Session)  # the reconstruction needs only the projections
    session.projections = ProjectionSet(analytic_projections(cams).float(), cams)
    session.recon_output = None
    out, _ = session.reconstruct_work(_Job(), reconstruction_request(dict(BASE, size=[7, 9, 5], spacing_mm=4.0)), lambda node: None)
    like = explicit_grid((7, 9, 5), 4.0, cameras=cams)
    assert slicer.util.arrayFromVolume(out.volume_node).shape == (5, 9, 7)
    np.testing.assert_allclose(ijk_to_ras(out.volume_node), like.ras_from_ijk.double().numpy(), atol=1e-6)
    calls = []

    def fake_refine(projections, cameras, like, *, settings=None, masks=None, progress=None):
        calls.append(settings)
        return selfcal.RefineResult(cameras.to(dtype=torch.float64), like, torch.zeros(len(cameras), 6), None, [1.0], "nothing", 0.0)

    monkeypatch.setattr(selfcal, "refine_geometry", fake_refine)
    session.reconstruct_work(_Job(), reconstruction_request(dict(BASE, refine_geometry=True)), lambda node: None)
    assert calls == [selfcal.RefineSettings.for_method("fdk")]
