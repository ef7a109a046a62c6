"""Volumes on disk: geometry (ITK's LPS -> our RAS, once), values, HU -> mu, refusals.

Files are written here with SimpleITK or by hand (a raw NRRD header, as Slicer writes them), so the
expected ras_from_ijk comes from the file's own numbers, not from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from XRayNeRFLib.volume import Volume, as_mu, hu_to_mu, load_volume, mu_to_hu, mu_water_per_mm, save_volume

LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _rotation(axis, angle_rad) -> np.ndarray:
    axis = np.asarray(axis, dtype=np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle_rad) * k + (1 - math.cos(angle_rad)) * k @ k


def _oblique_image(dtype=np.float32) -> sitk.Image:
    """5 x 4 x 3 voxels (I, J, K), value 100 i + 10 j + k, oblique direction, anisotropic spacing (LPS)."""
    k, j, i = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
    image = sitk.GetImageFromArray((100 * i + 10 * j + k).astype(dtype))
    image.SetSpacing((0.8, 1.25, 2.5))
    image.SetOrigin((-12.5, 30.25, -7.0))
    image.SetDirection(_rotation((1.0, 2.0, 0.5), 0.7).reshape(-1).tolist())
    return image


@pytest.mark.parametrize("ext", [".nrrd", ".nii.gz", ".mha"])
def test_load_oblique_volume_geometry(tmp_path, ext):
    image = _oblique_image()
    path = str(tmp_path / f"oblique{ext}")
    sitk.WriteImage(image, path)
    vol = load_volume(path, dtype=torch.float64)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps_from_ijk = np.eye(4)
    lps_from_ijk[:3, :3] = direction @ np.diag(image.GetSpacing())
    lps_from_ijk[:3, 3] = image.GetOrigin()
    expected = LPS_FROM_RAS @ lps_from_ijk  # diag(-1,-1,1) is its own inverse
    tol = 1e-12 if ext != ".nii.gz" else 1e-5  # NIfTI stores the affine in float32
    assert np.allclose(vol.ras_from_ijk.numpy(), expected, atol=tol, rtol=0)
    # a concrete voxel: ITK's own physical point (LPS) with x and y negated
    ijk = (3, 1, 2)
    lps = np.asarray(image.TransformIndexToPhysicalPoint(ijk))
    ras = vol.ras_from_ijk.numpy() @ np.array([*ijk, 1.0])
    assert np.allclose(ras[:3], lps * [-1, -1, 1], atol=max(tol, 1e-12) * 100)
    # values: data[k, j, i] is ITK index (i, j, k)
    assert vol.shape_kji == (3, 4, 5)
    assert float(vol.data[2, 1, 3]) == 100 * 3 + 10 * 1 + 2 == image.GetPixel(ijk)
    assert vol.units == "mu"  # no value below -100: guessed as mu
    assert np.allclose(vol.spacing_mm.numpy(), [0.8, 1.25, 2.5], atol=tol)


def test_axis_aligned_lps_to_ras_by_hand(tmp_path):
    """Identity direction, origin LPS (10, 20, 30), spacing (1, 2, 3): voxel (1, 1, 1) is LPS (11, 22, 33),
    i.e. RAS (-11, -22, 33)."""
    image = sitk.GetImageFromArray(np.zeros((2, 2, 2), np.int16))
    image.SetOrigin((10.0, 20.0, 30.0))
    image.SetSpacing((1.0, 2.0, 3.0))
    sitk.WriteImage(image, str(tmp_path / "a.nrrd"))
    vol = load_volume(str(tmp_path / "a.nrrd"), dtype=torch.float64)
    assert (vol.ras_from_ijk @ torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)).tolist() == [-11.0, -22.0, 33.0, 1.0]
    assert vol.data.dtype == torch.float64 and vol.units == "mu"


def _raw_nrrd(path, header: str, data: np.ndarray) -> None:
    k, j, i = data.shape
    with open(path, "wb") as f:
        f.write(f"NRRD0004\ntype: short\ndimension: 3\nsizes: {i} {j} {k}\nencoding: raw\nendian: little\n{header}\n".encode())
        f.write(data.astype("<i2").tobytes())


def test_ras_space_nrrd_header(tmp_path):
    """A NRRD written in RAS space (as Slicer may): space directions are columns of ras_from_ijk."""
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4) - 1000
    _raw_nrrd(
        tmp_path / "ras.nrrd",
        "space: right-anterior-superior\nspace directions: (0,2,0) (-1.5,0,0) (0,0,3)\nspace origin: (5,6,7)\n",
        data,
    )
    vol = load_volume(str(tmp_path / "ras.nrrd"), dtype=torch.float64)
    expected = np.array([[0, -1.5, 0, 5], [2, 0, 0, 6], [0, 0, 3, 7], [0, 0, 0, 1.0]])
    assert np.array_equal(vol.ras_from_ijk.numpy(), expected)
    assert float(vol.data[1, 2, 3]) == float(data[1, 2, 3]) == -977.0
    assert vol.units == "hu"  # values below -100: guessed as HU


@pytest.mark.parametrize("ext", [".nrrd", ".nii"])
def test_save_load_round_trip(tmp_path, ext):
    rng = np.random.default_rng(5)
    a = np.eye(4)
    a[:3, :3] = _rotation((0.3, -1.0, 0.2), -1.1) @ np.diag([0.7, 1.1, 2.0])
    a[:3, 3] = (-80.0, 42.5, 120.25)
    data = torch.tensor(rng.normal(size=(4, 5, 6)), dtype=torch.float64)  # float64: Volume keeps a float64 affine
    save_volume(Volume(data, torch.tensor(a, dtype=torch.float64), "mu"), str(tmp_path / f"v{ext}"))
    back = load_volume(str(tmp_path / f"v{ext}"), dtype=torch.float64)
    tol = 1e-12 if ext == ".nrrd" else 1e-5
    assert np.allclose(back.ras_from_ijk.numpy(), a, atol=tol, rtol=0)
    assert torch.equal(back.data, data)
    # what ITK sees is the LPS image of the same voxels
    image = sitk.ReadImage(str(tmp_path / f"v{ext}"))
    assert np.allclose(image.TransformIndexToPhysicalPoint((5, 4, 3)), (LPS_FROM_RAS @ a @ [5, 4, 3, 1])[:3], atol=1e-4)


def test_hu_to_mu_values():
    mu_w = mu_water_per_mm(60.0)
    assert mu_w == pytest.approx(0.02059, abs=1e-9)  # NIST XCOM water, 60 keV: 0.2059 cm^2/g
    hu = torch.tensor([-2048.0, -1000.0, -500.0, 0.0, 1000.0])
    mu = hu_to_mu(hu)
    assert torch.allclose(mu, torch.tensor([0.0, 0.0, 0.5 * mu_w, mu_w, 2 * mu_w]), rtol=1e-6, atol=0)
    assert torch.allclose(mu_to_hu(mu[2:]), hu[2:], atol=1e-3)
    assert mu_water_per_mm(80.0) == pytest.approx(0.01837, abs=1e-9)
    # log-log interpolation between table points stays between them
    assert mu_water_per_mm(80.0) < mu_water_per_mm(70.0) < mu_water_per_mm(60.0)
    with pytest.raises(ValueError, match="30-150 keV"):
        mu_water_per_mm(10.0)
    vol = Volume(hu.reshape(1, 1, 5), torch.eye(4), "hu")
    assert as_mu(vol).units == "mu" and torch.allclose(as_mu(vol).data.reshape(-1), mu)
    assert torch.allclose(as_mu(vol, 80.0).data.reshape(-1)[3], torch.tensor(0.01837))


def test_volume_refusals(tmp_path):
    data = np.zeros((2, 3, 4), np.int16)
    # zero spacing in the header
    _raw_nrrd(
        tmp_path / "flat.nrrd", "space: left-posterior-superior\nspace directions: (0,0,0) (0,1,0) (0,0,1)\nspace origin: (0,0,0)\n", data
    )
    with pytest.raises(ValueError, match="flat.nrrd"):
        load_volume(str(tmp_path / "flat.nrrd"))
    _raw_nrrd(tmp_path / "zero.nrrd", "spacings: 0 1 1\n", data)
    with pytest.raises(ValueError, match="zero.nrrd"):
        load_volume(str(tmp_path / "zero.nrrd"))
    # a singular affine given in memory
    a = np.eye(4)
    a[2, 2] = 0.0
    with pytest.raises(ValueError, match="zero spacing"):
        Volume(torch.zeros(2, 3, 4), torch.tensor(a), "mu")
    # missing file, 2D image, vector image, NaN voxels, unknown units
    with pytest.raises(ValueError, match="does not exist"):
        load_volume(str(tmp_path / "missing.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4), np.float32)), str(tmp_path / "flat2d.mha"))
    with pytest.raises(ValueError, match="2D"):
        load_volume(str(tmp_path / "flat2d.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 3, 4, 3), np.float32), isVector=True), str(tmp_path / "rgb.mha"))
    with pytest.raises(ValueError, match="components"):
        load_volume(str(tmp_path / "rgb.mha"))
    nan = np.zeros((2, 3, 4), np.float32)
    nan[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(nan), str(tmp_path / "nan.mha"))
    with pytest.raises(ValueError, match="1 NaN"):
        load_volume(str(tmp_path / "nan.mha"))
    with pytest.raises(ValueError, match="units"):
        Volume(torch.zeros(2, 3, 4), torch.eye(4), "cm-1")
