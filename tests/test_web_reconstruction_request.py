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


@pytest.fixture
def data_dir(tmp_path):
    """A data folder holding a reference image (an oblique 30 x 25 x 9 grid), a 2-D image, and a file outside it."""
    import SimpleITK as sitk

    from XRayNeRFLib.volume import Volume, save_volume
    from XRayNeRFWeb.datadir import DataDir

    root = tmp_path / "data"
    root.mkdir()
    a = torch.tensor([[0.0, 1.5, 0.0, -18.0], [-1.2, 0.0, 0.0, 20.0], [0.0, 0.0, 2.0, -8.0], [0.0, 0.0, 0.0, 1.0]])
    save_volume(Volume(torch.zeros(9, 25, 30), a), str(root / "ref.nrrd"))
    sitk.WriteImage(sitk.Image(8, 6, sitk.sitkFloat32), str(root / "flat.mha"))
    save_volume(Volume(torch.zeros(9, 25, 30), a), str(tmp_path / "outside.nrrd"))
    return DataDir(root, 2**20), a


def test_reference_image_in_the_data_folder_becomes_the_like_grid(data_dir):
    """The form's ``like`` (a data-folder path) becomes GridRequest.like_path, resolved inside the folder and read from
    its header before any work; a path out of the folder, a missing or 2-D image, or a reference besides an explicit
    size are refused with one line."""
    from XRayNeRFMRML.reconstruction import GridRequest
    from XRayNeRFWeb.datadir import UnsafePathError
    from XRayNeRFWeb.session import reconstruction_request

    data, _ = data_dir
    r = reconstruction_request(dict(BASE, like=" ref.nrrd ", refine_geometry=True), data.resolve)
    assert r["grid_request"] == GridRequest(like_path=str(data.root / "ref.nrrd")) and r["refine_geometry"] is True
    assert reconstruction_request(dict(BASE, like=""), data.resolve)["grid_request"] == GridRequest(grid=16)
    for like, error, message in (
        ("../outside.nrrd", UnsafePathError, "leads out of the data folder"),
        (str(data.root.parent / "outside.nrrd"), UnsafePathError, "absolute paths are not served"),
        ("missing.nrrd", FileNotFoundError, "is not a file in the data folder"),
        ("flat.mha", ValueError, "is 2-D; a 3-D volume is needed"),
    ):
        with pytest.raises(error, match=message) as caught:
            reconstruction_request(dict(BASE, like=like), data.resolve)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="the reference image sets the whole output grid"):
        reconstruction_request(dict(BASE, like="ref.nrrd", size=[8, 9, 10], spacing_mm=2.0), data.resolve)
    with pytest.raises(ValueError, match="needs the data folder"):
        reconstruction_request(dict(BASE, like="ref.nrrd"))


def test_reference_grid_and_refined_geometry_download(data_dir, monkeypatch, tmp_path):
    """Session.reconstruct_work with a reference image: the output node has the image's grid (its RAS-from-IJK read by
    the engine's load_volume); with refine_geometry the refined-geometry download (Session.write_refined_geometry, the
    layer's save_refined_geometry) reads back as the cameras the reconstruction used, to 1e-6; without refinement
    there is nothing to download and nothing is written."""
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.projection_set import ProjectionSet
    from XRayNeRFLib.recon import api, selfcal
    from XRayNeRFLib.volume import load_volume
    from XRayNeRFMRML.nodes import ijk_to_ras
    from XRayNeRFWeb.session import Session, reconstruction_request

    data, a = data_dir
    slicer_harness.new_scene()
    cams = orbit(10, size_px=(32, 28), spacing=3.0)
    session = Session.__new__(Session)
    session.projections = ProjectionSet(analytic_projections(cams).float(), cams)
    session.recon_output = None
    seen, real_reconstruct = [], api.reconstruct

    def spy(projections, cameras, *args, **kwargs):
        seen.append(cameras)
        return real_reconstruct(projections, cameras, *args, **kwargs)

    def fake_refine(projections, cameras, like, *, settings=None, masks=None, progress=None):
        g = torch.Generator().manual_seed(5)
        delta = torch.cat([0.01 * torch.randn(len(cameras), 3, generator=g), torch.randn(len(cameras), 3, generator=g)], 1).double()
        refined = selfcal.apply_corrections(cameras.to(dtype=torch.float64), delta)
        return selfcal.RefineResult(refined, like, delta, None, [1.0], "done", 0.0)

    monkeypatch.setattr(api, "reconstruct", spy)
    monkeypatch.setattr(selfcal, "refine_geometry", fake_refine)
    request = reconstruction_request(dict(BASE, like="ref.nrrd", refine_geometry=True), data.resolve)
    out, _ = session.reconstruct_work(_Job(), request, lambda node: None)
    assert slicer.util.arrayFromVolume(out.volume_node).shape == (9, 25, 30)
    np.testing.assert_allclose(ijk_to_ras(out.volume_node), load_volume(str(data.root / "ref.nrrd")).ras_from_ijk.double(), atol=1e-5)
    np.testing.assert_allclose(ijk_to_ras(out.volume_node), a.double().numpy(), atol=1e-5)
    path = data.output_path("refined_geometry.json")
    session.write_refined_geometry(path)
    got = load_geometry(str(path))
    torch.testing.assert_close(got.world_from_camera, seen[-1].world_from_camera.double(), atol=1e-6, rtol=0)
    assert float((got.world_from_camera - cams.world_from_camera.double()).abs().max()) > 0.5  # corrected, not nominal
    path.unlink()
    session.reconstruct_work(_Job(), reconstruction_request(BASE, data.resolve), lambda node: None)
    with pytest.raises(ValueError, match="holds no refined geometry"):
        session.write_refined_geometry(path)
    assert not path.exists()
