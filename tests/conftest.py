"""Shared helpers for the engine tests: tiny phantoms with analytic line integrals, cameras whose single
pixel ray is a chosen segment, random rigid poses.

Everything here is written independently of the renderers (numpy / plain torch formulas), so the tests
compare the renderers with a second derivation, not with themselves.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from XRayNeRFLib.geometry import Cameras, homogeneous
from XRayNeRFLib.threads import torch_threads
from XRayNeRFLib.volume import Volume


# -- poses ------------------------------------------------------------------------------------------
def frame_with_z(direction: np.ndarray, roll_rad: float = 0.0) -> np.ndarray:
    """A proper rotation (3, 3) whose third column is the unit vector along ``direction``; the first two
    columns are an arbitrary orthonormal pair turned by ``roll_rad`` about it."""
    z = np.asarray(direction, dtype=np.float64)
    z = z / np.linalg.norm(z)
    helper = np.array([1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    x = np.cross(helper, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll_rad), math.sin(roll_rad)
    x, y = c * x + s * y, -s * x + c * y
    r = np.stack([x, y, z], axis=1)
    assert abs(np.linalg.det(r) - 1.0) < 1e-12
    return r


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly random proper rotation (3, 3) float64 (QR of a Gaussian matrix, signs fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q @ np.diag(np.sign(np.diag(r)))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """Exponential map of a twist xi = (wx, wy, wz, tx, ty, tz) (rad, mm): (6,) -> (4, 4), differentiable."""
    zero = torch.zeros((), dtype=xi.dtype, device=xi.device)
    w, t = xi[:3], xi[3:]
    hat = torch.stack(
        [
            torch.stack([zero, -w[2], w[1], t[0]]),
            torch.stack([w[2], zero, -w[0], t[1]]),
            torch.stack([-w[1], w[0], zero, t[2]]),
            torch.stack([zero, zero, zero, zero]),
        ]
    )
    return torch.linalg.matrix_exp(hat)


def segment_cameras(sources: np.ndarray, targets: np.ndarray, dtype=torch.float64, roll_seed: int = 0) -> Cameras:
    """V one-pixel cameras whose only ray runs exactly from sources[v] to targets[v] (RAS mm).

    The principal point is the pixel (0, 0) and sdd is the segment length, so the source-to-pixel
    segment rendered for that pixel is the given segment. sources, targets: (V, 3).
    """
    rng = np.random.default_rng(roll_seed)
    sources = np.asarray(sources, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    v = sources.shape[0]
    poses = []
    for s, t in zip(sources, targets):
        pose = np.eye(4)
        pose[:3, :3] = frame_with_z(t - s, rng.uniform(-math.pi, math.pi))
        pose[:3, 3] = s
        poses.append(pose)
    return Cameras(
        torch.tensor(np.stack(poses), dtype=dtype),
        torch.tensor(np.linalg.norm(targets - sources, axis=1), dtype=dtype),
        torch.ones(v, 2, dtype=dtype),
        torch.zeros(v, 2, dtype=dtype),
        (1, 1),
    )


# -- volumes and analytic integrals ------------------------------------------------------------------
def affine(spacing=(1.0, 1.0, 1.0), rotation=None, origin=(0.0, 0.0, 0.0)) -> np.ndarray:
    """ras_from_ijk (4, 4) float64: RAS = rotation @ diag(spacing) @ ijk + origin."""
    a = np.eye(4)
    r = np.eye(3) if rotation is None else np.asarray(rotation, dtype=np.float64)
    a[:3, :3] = r @ np.diag(np.asarray(spacing, dtype=np.float64))
    a[:3, 3] = origin
    return a


def box_volume(shape_kji, lo_ijk, hi_ijk, value: float, ras_from_ijk: np.ndarray, dtype=torch.float64) -> Volume:
    """Zero volume with ``value`` in voxels lo_ijk..hi_ijk (inclusive, (i, j, k) order).

    The box occupies the continuous index region [lo - 0.5, hi + 0.5] along each axis (voxel-aligned)."""
    data = torch.zeros(shape_kji, dtype=dtype)
    (i0, j0, k0), (i1, j1, k1) = lo_ijk, hi_ijk
    data[k0 : k1 + 1, j0 : j1 + 1, i0 : i1 + 1] = value
    return Volume(data, torch.tensor(ras_from_ijk, dtype=dtype), "mu")


def segment_box_length_mm(sources, targets, ras_from_ijk, lo_ijk, hi_ijk) -> np.ndarray:
    """Length in mm of each segment source -> target inside the voxel-aligned index box
    [lo - 0.5, hi + 0.5] (slab method in index space; an affine map preserves the segment parameter).

    sources, targets: (R, 3) RAS mm. Returns (R,) float64."""
    sources = np.asarray(sources, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    ijk_from_ras = np.linalg.inv(ras_from_ijk)
    o = sources @ ijk_from_ras[:3, :3].T + ijk_from_ras[:3, 3]
    d = (targets - sources) @ ijk_from_ras[:3, :3].T
    lo = np.asarray(lo_ijk, dtype=np.float64) - 0.5
    hi = np.asarray(hi_ijk, dtype=np.float64) + 0.5
    t0 = np.zeros(len(o))
    t1 = np.ones(len(o))
    for ax in range(3):
        da = d[:, ax]
        par = np.abs(da) < 1e-300
        with np.errstate(divide="ignore", invalid="ignore"):
            a = (lo[ax] - o[:, ax]) / da
            b = (hi[ax] - o[:, ax]) / da
        enter = np.where(par, np.where((o[:, ax] >= lo[ax]) & (o[:, ax] <= hi[ax]), -np.inf, np.inf), np.minimum(a, b))
        leave = np.where(par, np.where((o[:, ax] >= lo[ax]) & (o[:, ax] <= hi[ax]), np.inf, -np.inf), np.maximum(a, b))
        t0 = np.maximum(t0, enter)
        t1 = np.minimum(t1, leave)
    return np.clip(t1 - t0, 0.0, None) * np.linalg.norm(targets - sources, axis=1)


def ellipsoid_volume(shape_kji, ras_from_ijk, center_ras, semi_axes_mm, value: float, dtype=torch.float64) -> Volume:
    """Voxelised axis-aligned ellipsoid: ``value`` where the voxel centre is inside, else 0."""
    k, j, i = shape_kji
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4).astype(np.float64)
    ras = (ijk @ np.asarray(ras_from_ijk).T)[:, :3]
    q = (((ras - np.asarray(center_ras)) / np.asarray(semi_axes_mm)) ** 2).sum(axis=1)
    data = np.where(q <= 1.0, value, 0.0).reshape(shape_kji)
    return Volume(torch.tensor(data, dtype=dtype), torch.tensor(ras_from_ijk, dtype=dtype), "mu")


def segment_ellipsoid_length_mm(sources, targets, center_ras, semi_axes_mm) -> np.ndarray:
    """Exact chord length (mm) of segments source -> target inside an axis-aligned ellipsoid: (R,)."""
    sources = np.asarray(sources, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    ax = np.asarray(semi_axes_mm, dtype=np.float64)
    o = (sources - np.asarray(center_ras)) / ax
    d = (targets - sources) / ax
    a = (d * d).sum(1)
    b = 2.0 * (o * d).sum(1)
    c = (o * o).sum(1) - 1.0
    disc = b * b - 4 * a * c
    root = np.sqrt(np.clip(disc, 0.0, None))
    t0 = np.clip((-b - root) / (2 * a), 0.0, 1.0)
    t1 = np.clip((-b + root) / (2 * a), 0.0, 1.0)
    length = np.where(disc > 0, t1 - t0, 0.0) * np.linalg.norm(targets - sources, axis=1)
    return length


def gaussian_volume(shape_kji, ras_from_ijk, center_ras, sigma_mm: float, peak: float = 0.02, dtype=torch.float64) -> Volume:
    """Smooth isotropic Gaussian blob of mu (1/mm)."""
    k, j, i = shape_kji
    kk, jj, ii = np.meshgrid(np.arange(k), np.arange(j), np.arange(i), indexing="ij")
    ijk = np.stack([ii, jj, kk, np.ones_like(ii)], axis=-1).reshape(-1, 4).astype(np.float64)
    ras = (ijk @ np.asarray(ras_from_ijk).T)[:, :3]
    r2 = ((ras - np.asarray(center_ras)) ** 2).sum(1)
    data = peak * np.exp(-0.5 * r2 / sigma_mm**2)
    return Volume(torch.tensor(data.reshape(shape_kji), dtype=dtype), torch.tensor(ras_from_ijk, dtype=dtype), "mu")


def gaussian_line_integral(sources, targets, center_ras, sigma_mm: float, peak: float = 0.02) -> np.ndarray:
    """Exact integral of peak * exp(-|x - c|^2 / (2 sigma^2)) along segments (erf formula): (R,)."""
    from scipy.special import erf

    sources = np.asarray(sources, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    length = np.linalg.norm(targets - sources, axis=1)
    u = (targets - sources) / length[:, None]
    w = sources - np.asarray(center_ras)
    s0 = -(w * u).sum(1)  # arc length of the closest point
    dmin2 = (w * w).sum(1) - s0**2
    scale = sigma_mm * math.sqrt(2.0)
    along = erf((length - s0) / scale) - erf((0.0 - s0) / scale)
    return peak * np.exp(-0.5 * dmin2 / sigma_mm**2) * sigma_mm * math.sqrt(math.pi / 2.0) * along


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20240607)


# -- the shipped chest CT ----------------------------------------------------------------------------
SAMPLE_DIR = Path(__file__).resolve().parents[1] / "Resources" / "SampleData"


@pytest.fixture
def core():
    """A fresh MRML scene as the Slicer tests start from (slicer_harness.new_scene; needs slicer-core, which those
    test files import-skip on)."""
    import slicer_harness

    return slicer_harness.new_scene()


@pytest.fixture(scope="session")
def chest_ct_48() -> Volume:
    """The shipped chest CT (Resources/SampleData/chest_ct_128.nii.gz, HU) resampled trilinearly to 48^3 over its
    own box (registration.simulate.resample_volume): (48, 48, 48) HU, patient RAS mm. Always there: no skip."""
    from XRayNeRFLib.registration.simulate import resample_volume
    from XRayNeRFLib.volume import load_volume

    return resample_volume(load_volume(str(SAMPLE_DIR / "chest_ct_128.nii.gz")), (48, 48, 48))


__all__ = [
    "affine",
    "box_volume",
    "ellipsoid_volume",
    "frame_with_z",
    "gaussian_line_integral",
    "gaussian_volume",
    "homogeneous",
    "random_rotation",
    "segment_box_length_mm",
    "segment_cameras",
    "segment_ellipsoid_length_mm",
    "se3_exp",
]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a test module (tiny tensors: fastest, and immune to a busy machine); the count is put
    back afterwards. Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    with torch_threads(1):
        yield
