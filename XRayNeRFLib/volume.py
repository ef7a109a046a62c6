"""Volumes on a voxel grid with their placement in patient RAS.

A :class:`Volume` holds ``data`` indexed [k, j, i] (slowest to fastest, as Slicer's
``arrayFromVolume``) and ``ras_from_ijk`` (4x4), which maps the continuous voxel index (i, j, k, 1)
to RAS mm; voxel (i, j, k) is centred at ``ras_from_ijk @ (i, j, k, 1)``. Oblique grids are allowed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor


@dataclass
class Volume:
    """data: (K, J, I) float tensor (values in ``units``); ras_from_ijk: (4, 4) affine, RAS mm.

    units: "mu" (linear attenuation, 1/mm) or "hu" (Hounsfield units); renderers need "mu".
    """

    data: Tensor
    ras_from_ijk: Tensor
    units: str = "mu"

    def __post_init__(self) -> None:
        if self.data.ndim != 3:
            raise ValueError(f"volume data must be 3D (K, J, I), got shape {tuple(self.data.shape)}")
        if not torch.is_floating_point(self.data):
            self.data = self.data.to(torch.get_default_dtype())
        a = torch.as_tensor(self.ras_from_ijk, dtype=torch.float64 if self.data.dtype == torch.float64 else torch.float32)
        if tuple(a.shape) != (4, 4):
            raise ValueError(f"ras_from_ijk must be 4x4, got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ValueError("ras_from_ijk contains NaN or infinite values")
        lin = a[:3, :3].double()
        if torch.linalg.det(lin).abs() < 1e-12:
            raise ValueError("ras_from_ijk is singular: the volume has zero spacing along an axis; set its spacing")
        self.ras_from_ijk = a.to(self.data.device)
        if self.units not in ("mu", "hu"):
            raise ValueError(f"units must be 'mu' (1/mm) or 'hu', got {self.units!r}")

    @property
    def shape_kji(self):
        return tuple(self.data.shape)

    @property
    def spacing_mm(self) -> Tensor:
        """(3,) voxel spacing along i, j, k in mm (column norms of ras_from_ijk)."""
        return self.ras_from_ijk[:3, :3].norm(dim=0)

    def ijk_from_ras(self) -> Tensor:
        return torch.linalg.inv(self.ras_from_ijk.double()).to(self.ras_from_ijk.dtype)

    def center_ras(self) -> Tensor:
        """RAS mm of the grid centre: (3,)."""
        k, j, i = self.data.shape
        c = torch.tensor([(i - 1) / 2.0, (j - 1) / 2.0, (k - 1) / 2.0, 1.0], dtype=self.ras_from_ijk.dtype, device=self.ras_from_ijk.device)
        return (self.ras_from_ijk @ c)[:3]

    def corners_ras(self) -> Tensor:
        """RAS mm of the 8 outer corners of the voxel grid (voxel boundaries): (8, 3)."""
        k, j, i = self.data.shape
        lo, hi = -0.5, 0.5
        pts = torch.tensor(
            [[x, y, z, 1.0] for x in (lo, i - hi) for y in (lo, j - hi) for z in (lo, k - hi)],
            dtype=self.ras_from_ijk.dtype,
            device=self.ras_from_ijk.device,
        )
        return (pts @ self.ras_from_ijk.T)[:, :3]

    def to(self, device=None, dtype=None) -> "Volume":
        return Volume(self.data.to(device=device, dtype=dtype), self.ras_from_ijk.to(device=device, dtype=dtype), self.units)

    def check_finite(self, name: str = "volume") -> None:
        if not torch.isfinite(self.data).all():
            n = int((~torch.isfinite(self.data)).sum())
            raise ValueError(f"{name} contains {n} NaN or infinite voxel values; fix or mask them before rendering")


# Mass attenuation coefficient of water (cm^2/g, coherent scattering included), NIST XCOM.
# Density 1 g/cm^3, so mu_water [1/mm] = value / 10.
_WATER_MASS_ATTENUATION_CM2_G = {
    30.0: 0.3756,
    40.0: 0.2683,
    50.0: 0.2269,
    60.0: 0.2059,
    80.0: 0.1837,
    100.0: 0.1707,
    150.0: 0.1505,
}

DEFAULT_EFFECTIVE_ENERGY_KEV = 60.0


def mu_water_per_mm(effective_energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV) -> float:
    """Linear attenuation of water in 1/mm at an effective (monoenergetic) energy, log-log
    interpolated from NIST XCOM between 30 and 150 keV. 60 keV (the default) gives 0.02059 /mm."""
    import math

    e = float(effective_energy_kev)
    keys = sorted(_WATER_MASS_ATTENUATION_CM2_G)
    if not keys[0] <= e <= keys[-1]:
        raise ValueError(f"effective energy {e} keV is outside the tabulated 30-150 keV range")
    for lo, hi in zip(keys[:-1], keys[1:]):
        if lo <= e <= hi:
            a, b = _WATER_MASS_ATTENUATION_CM2_G[lo], _WATER_MASS_ATTENUATION_CM2_G[hi]
            f = (math.log(e) - math.log(lo)) / (math.log(hi) - math.log(lo))
            return math.exp(math.log(a) + f * (math.log(b) - math.log(a))) / 10.0
    raise AssertionError("unreachable")


def hu_to_mu(hu: Tensor, effective_energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV) -> Tensor:
    """Hounsfield units to linear attenuation in 1/mm: mu = mu_water (1 + HU/1000), clamped at 0
    (air, HU = -1000, and below give 0). Linear in HU; the effective energy sets mu_water."""
    return (mu_water_per_mm(effective_energy_kev) * (1.0 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: Tensor, effective_energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV) -> Tensor:
    """Inverse of :func:`hu_to_mu` (for mu >= 0): HU = 1000 (mu / mu_water - 1)."""
    return 1000.0 * (mu / mu_water_per_mm(effective_energy_kev) - 1.0)


def as_mu(volume: Volume, effective_energy_kev: float = DEFAULT_EFFECTIVE_ENERGY_KEV) -> Volume:
    """The volume in 1/mm, converting from HU if needed."""
    if volume.units == "mu":
        return volume
    return Volume(hu_to_mu(volume.data, effective_energy_kev), volume.ras_from_ijk, "mu")


def load_volume(path: str, units: Optional[str] = None, dtype: torch.dtype = torch.float32) -> Volume:
    """Read an ITK-readable volume (NIfTI, NRRD, MHA/MHD, a DICOM series directory) with its geometry.

    ITK reports geometry in LPS; it is converted here, once, to ``ras_from_ijk``.
    units: "hu" or "mu"; None guesses "hu" when the data has values below -100 (air in HU), else "mu".
    NaN voxels are refused; note that ITK's NIfTI reader already turns NaN into 0 (NRRD and MHA keep it).
    """
    import os

    import numpy as np
    import SimpleITK as sitk

    if not os.path.exists(path):
        raise ValueError(f"volume file {path!r} does not exist")
    try:
        if os.path.isdir(path):
            reader = sitk.ImageSeriesReader()
            series = reader.GetGDCMSeriesIDs(path)
            if not series:
                raise ValueError(f"directory {path!r} holds no DICOM series")
            if len(series) > 1:
                raise ValueError(f"directory {path!r} holds {len(series)} DICOM series; pass one series' directory")
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(path, series[0]))
            image = reader.Execute()
        else:
            image = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise ValueError(f"cannot read volume {path!r}: {str(exc).strip().splitlines()[-1]}") from None
    if image.GetDimension() != 3:
        raise ValueError(f"{path!r} is {image.GetDimension()}D; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"{path!r} has {image.GetNumberOfComponentsPerPixel()} components per voxel; a scalar volume is needed")
    arr = sitk.GetArrayFromImage(image)  # (K, J, I)
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    if (spacing <= 0).any():
        raise ValueError(f"{path!r} has non-positive voxel spacing {spacing.tolist()}; set the spacing in the file header")
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    lps_from_ijk = np.eye(4)
    lps_from_ijk[:3, :3] = direction @ np.diag(spacing)
    lps_from_ijk[:3, 3] = origin
    ras_from_ijk = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_from_ijk
    data = torch.from_numpy(arr.astype(np.float64 if dtype == torch.float64 else np.float32))
    if units is None:
        units = "hu" if float(data.min()) < -100.0 else "mu"
    vol = Volume(data.to(dtype), torch.from_numpy(ras_from_ijk).to(dtype), units)
    vol.check_finite(f"volume {path!r}")
    return vol


def save_volume(volume: Volume, path: str) -> None:
    """Write a volume with its geometry (converted back to ITK's LPS)."""
    import numpy as np
    import SimpleITK as sitk

    a = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.ras_from_ijk.detach().cpu().double().numpy()
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    image = sitk.GetImageFromArray(volume.data.detach().cpu().numpy())
    image.SetSpacing(spacing.tolist())
    image.SetDirection((a[:3, :3] / spacing).reshape(-1).tolist())
    image.SetOrigin(a[:3, 3].tolist())
    sitk.WriteImage(image, path)
