"""The CT correction written as an ITK transform (Slicer's convention: LPS, resampling direction) is
read back identically, maps points as Slicer would, and, applied to the CT by resampling, reproduces
the registered DRR from the initial camera."""

import math

import numpy as np
import pytest
import torch

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.registration.pose import PoseParametrization
from XRayNeRFLib.registration.transform_io import read_ct_correction, write_ct_correction
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import Volume, load_volume, save_volume

sitk = pytest.importorskip("SimpleITK")


def rigid(seed=0):
    p = PoseParametrization(torch.eye(4, dtype=torch.float64), torch.tensor([5.0, -10.0, 20.0]))
    x = torch.tensor([4.0, -3.0, 6.0, 7.0, -5.0, 3.0], dtype=torch.float64)
    return p.correction(x)


@pytest.mark.parametrize("ext", [".h5", ".tfm"])
def test_round_trip_and_itk_point_mapping(tmp_path, ext):
    t = rigid()
    path = str(tmp_path / f"correction{ext}")
    write_ct_correction(path, t)
    assert torch.allclose(read_ct_correction(path), t, atol=1e-12)
    # The file is the LPS resampling transform: it maps the moved CT's points (world, LPS) back to the CT.
    itk = sitk.ReadTransform(path)
    q_ras = np.array([30.0, -40.0, 12.0])
    moved_ras = t[:3, :3].numpy() @ q_ras + t[:3, 3].numpy()
    lps = np.array([-1.0, -1.0, 1.0])
    back = np.array(itk.TransformPoint(tuple(moved_ras * lps))) * lps
    assert np.allclose(back, q_ras, atol=1e-9)


def test_bad_paths(tmp_path):
    with pytest.raises(ValueError, match="extension"):
        write_ct_correction(str(tmp_path / "c.json"), torch.eye(4))
    with pytest.raises(ValueError, match="does not exist"):
        read_ct_correction(str(tmp_path / "missing.h5"))


def test_resampled_ct_seen_from_the_initial_camera_matches_the_registered_drr(tmp_path):
    # A small asymmetric phantom (mu), written as a file so that SimpleITK resamples it in LPS.
    k, j, i = torch.meshgrid(torch.arange(40.0), torch.arange(40.0), torch.arange(40.0), indexing="ij")
    data = 0.02 * (((i - 20) ** 2 + (j - 18) ** 2 / 0.6 + (k - 20) ** 2 / 1.5) < 14**2).float()
    data += 0.04 * (((i - 26) ** 2 + (j - 22) ** 2 + (k - 14) ** 2) < 4**2).float()
    data += 0.03 * ((i - 12).abs() < 2).float() * ((k - 25).abs() < 6).float() * ((j - 18).abs() < 8).float()
    ras_from_ijk = torch.tensor([[-2.0, 0, 0, 40], [0, -2.0, 0, 30], [0, 0, 2.0, -35], [0, 0, 0, 1]])
    vol = Volume(data, ras_from_ijk, "mu")
    src = str(tmp_path / "ct.mha")
    save_volume(vol, src)
    centre = vol.center_ras().double()
    cam = Cameras.carm(
        15.0, 10.0, sid_mm=500, sdd_mm=900, size_px=(48, 48), pixel_spacing_mm=3.0, isocenter_ras=centre, dtype=torch.float64
    )
    param = PoseParametrization(cam.world_from_camera[0], centre, math.radians(1.0), 1.0)
    x = torch.tensor([6.0, -4.0, 8.0, 5.0, -3.0, 4.0], dtype=torch.float64)
    registered = Cameras(param.world_from_camera(x)[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    drr_registered = render(vol.to(dtype=torch.float64), registered, renderer="siddon")[0]
    # Write the correction, read it with SimpleITK and resample the CT with it (what Slicer's harden does).
    path = str(tmp_path / "correction.h5")
    write_ct_correction(path, param.ct_correction_ras(x))
    image = sitk.ReadImage(src)
    moved = sitk.Resample(image, image, sitk.ReadTransform(path), sitk.sitkLinear, 0.0)
    moved_path = str(tmp_path / "moved.mha")
    sitk.WriteImage(moved, moved_path)
    drr_moved = render(load_volume(moved_path, units="mu", dtype=torch.float64), cam, renderer="siddon")[0]
    drr_unmoved = render(vol.to(dtype=torch.float64), cam, renderer="siddon")[0]
    err = float((drr_moved - drr_registered).abs().mean() / drr_registered.abs().mean())
    err_unmoved = float((drr_unmoved - drr_registered).abs().mean() / drr_registered.abs().mean())
    assert err < 0.05 and err < 0.2 * err_unmoved, (err, err_unmoved)
