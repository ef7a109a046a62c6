"""C-arm data: laterally truncated projections, offset (displaced) detectors, short scans.

FDK's row extrapolation and displaced-detector weights are compared with RTK's own filters (subprocess,
tests/rtk_tools/rtk_filters.py); the reconstructions with the analytic ellipsoid phantom (exact line
integrals, tests/recon_phantoms.py), scored inside the region every view (or the half-fan) sees."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from recon_phantoms import analytic_projections, ground_truth, orbit, rel_error

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.recon.api import reconstruct
from XRayNeRFLib.recon.displaced import displaced_detector_weights
from XRayNeRFLib.recon.fdk import fdk, ramp_filter_response
from XRayNeRFLib.recon.grid import cylinder_grid, field_of_view, view_counts
from XRayNeRFLib.recon.truncation import (
    detect_truncation,
    extension_pixels,
    extrapolate_rows,
)

F64 = torch.float64
TOOL = os.path.join(os.path.dirname(__file__), "rtk_tools", "rtk_filters.py")


def _rtk_available() -> bool:
    spec = importlib.util.find_spec("itk")
    return (
        spec is not None
        and bool(spec.submodule_search_locations)
        and any(os.path.exists(os.path.join(p, "RTKPython.py")) for p in spec.submodule_search_locations)
    )


needs_rtk = pytest.mark.skipif(not _rtk_available(), reason="itk-rtk is not installed")


def _run_rtk(job, tmp_path):
    jp, rp = tmp_path / "job.json", tmp_path / "result.json"
    jp.write_text(json.dumps(job))
    done = subprocess.run([sys.executable, TOOL, str(jp), str(rp)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(rp.read_text())


def _filter_rows(rows: torch.Tensor, fraction: float) -> np.ndarray:
    n = extension_pixels(rows.shape[-1], fraction)
    pe = extrapolate_rows(rows, n)
    nf = 1 << int(math.ceil(math.log2(2 * pe.shape[-1])))
    q = torch.fft.irfft(torch.fft.rfft(pe, n=nf) * ramp_filter_response(nf, "ram-lak"), n=nf)
    return q[..., n : n + rows.shape[-1]].numpy()


@needs_rtk
def test_row_extrapolation_and_displaced_weights_match_rtk(tmp_path):
    x = np.arange(64, dtype=np.float64)
    rows = np.stack([3.0 + 2.0 * np.cos((x - 40) / 20.0), 1.0 + 0.5 * np.sin(x / 15.0) + 0.01 * x])  # both truncated at both edges
    rows[:, 0] = rows[:, 1]  # RTK mirrors the left side about its second pixel, we about the first
    job = {
        "ramp": {"rows": rows.tolist(), "truncation_correction": [0.0, 0.25]},
        "displaced": {"width": 40, "height": 3, "spacing": 2.0, "views": 8, "sid": 500.0, "sdd": 800.0, "offsets_x": [20.0, -24.0]},
    }
    res = _run_rtk(job, tmp_path)
    t = torch.tensor(rows)
    plain = _filter_rows(t, 0.0)
    assert np.abs(np.array(res["ramp"]["0.0"]) - plain).max() < 1e-5 * np.abs(plain).max() * 100  # the same ramp filter
    for tc in ("0.25",):  # (at 0.5 RTK's FFT buffer, twice the row, is full: its kernel wraps around; ours is longer)
        ours, theirs = _filter_rows(t, float(tc)), np.array(res["ramp"][tc])
        assert np.abs(ours - theirs).max() < 0.02 * np.abs(theirs).max(), tc
        assert np.abs(plain - theirs).max() > 0.2 * np.abs(theirs).max()  # the correction does change the rows
    for off, du_px in (("20.0", 10.0), ("-24.0", -12.0)):
        # RTK's ProjectionOffsetX moves the detector by +off mm: the principal point lies at column 19.5 - off / 2
        cu = torch.tensor([19.5 - du_px], dtype=F64)
        u = (torch.arange(40, dtype=F64)[None] - cu[:, None]) * 2.0
        ours = displaced_detector_weights(u, cu * 2.0, (39 - cu) * 2.0)[0].numpy()
        assert np.abs(2 * ours - np.array(res["displaced"][off])).max() < 1e-4, off  # RTK's weights are 2 w


def test_displaced_weights_count_each_line_once():
    x = torch.linspace(-30, 50, 81, dtype=F64)[None]
    w = displaced_detector_weights(x, torch.tensor([30.0], dtype=F64), torch.tensor([50.0], dtype=F64))
    w_mirror = displaced_detector_weights(-x, torch.tensor([30.0], dtype=F64), torch.tensor([50.0], dtype=F64))
    inside = x.abs() <= 30
    assert torch.allclose((w + w_mirror)[inside], torch.ones(1, dtype=F64))
    assert float(w[x >= 30].min()) == 1.0 and float(w[x <= -30].max()) < 1e-12


# ----------------------------------------------------------------------------------------------------
# Truncated projections: the phantom (semi-axes 20 x 15 mm) is wider than the every-view cylinder
# ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def truncated():
    cams = orbit(36, size_px=(24, 32), spacing=2.0)  # every-view radius ~15 mm
    return cams, analytic_projections(cams).float()


def _inside(cams, like):
    return view_counts(cams, like) >= len(cams)


def test_detection_and_regions(truncated):
    cams, p = truncated
    t = detect_truncation(p, cams)
    assert t.count == 36 and bool(t.sides.all())
    wide = orbit(12, size_px=(64, 32), spacing=2.0)
    assert not detect_truncation(analytic_projections(wide).float(), wide).any
    f = field_of_view(cams)
    r_every = 250.0 * math.sin(math.atan2(12 * 2.0, 400.0))  # the outer pixel edge, 12 pixels of 2 mm from the centre
    assert f.every_radius_mm == pytest.approx(r_every, rel=1e-6) and f.any_radius_mm == pytest.approx(2 * r_every, rel=1e-6)
    assert not f.displaced


def test_fdk_truncation_correction_removes_the_rim(truncated):
    cams, p = truncated
    like = cylinder_grid(cams, grid=16)
    inside = _inside(cams, like)
    gt = ground_truth(like)
    plain = fdk(p, cams, volume=like, truncation_correction=0.0).data
    auto = fdk(p, cams, volume=like).data  # detected: the default extension
    corrected = fdk(p, cams, volume=like, truncation_correction=0.25).data
    assert torch.equal(auto, corrected)
    wide = orbit(36, size_px=(64, 32), spacing=2.0)  # the same views, untruncated: FDK's own error on this grid
    e_floor = rel_error(fdk(analytic_projections(wide).float(), wide, volume=like).data[inside], gt[inside])
    e_plain, e_corr = rel_error(plain[inside], gt[inside]), rel_error(corrected[inside], gt[inside])
    assert e_corr - e_floor < 0.4 * (e_plain - e_floor), (e_floor, e_plain, e_corr)
    # the bright rim: the outer voxels of the FOV are far too bright without the correction
    k, j, i = like.data.shape
    jj, ii = torch.meshgrid(torch.arange(j), torch.arange(i), indexing="ij")
    r = torch.sqrt((ii - (i - 1) / 2) ** 2 + (jj - (j - 1) / 2) ** 2)
    rim = (r > 0.8 * i / 2)[None].expand(k, j, i) & inside
    bias = lambda v: float((v[rim] - gt[rim]).mean() / gt[rim].mean())  # noqa: E731
    assert bias(plain) > 0.15 and abs(bias(corrected)) < 0.5 * bias(plain), (bias(plain), bias(corrected))


def test_untruncated_fdk_is_unchanged():
    cams = orbit(12, size_px=(64, 32), spacing=2.0)
    p = analytic_projections(cams).float()
    like = cylinder_grid(cams, grid=12)
    assert torch.equal(fdk(p, cams, volume=like).data, fdk(p, cams, volume=like, truncation_correction=0.0, displaced_detector=False).data)


def test_iterative_on_extended_grid(truncated):
    cams, p = truncated
    like = cylinder_grid(cams, grid=14)
    inside = _inside(cams, like)
    gt = ground_truth(like)
    opts = {"subsets": 12}
    ext = reconstruct(p, cams, "voxel", volume=like, iterations=6, options=opts, fov_counts=True)
    flat = reconstruct(p, cams, "voxel", volume=like, iterations=6, options=opts, extend_grid=False)
    assert ext.fov.truncated and ext.fov.reconstructed_on[2] > like.data.shape[2]
    assert ext.volume.data.shape == like.data.shape and torch.allclose(ext.volume.ras_from_ijk, like.ras_from_ijk)
    e_ext, e_flat = rel_error(ext.volume.data[inside], gt[inside]), rel_error(flat.volume.data[inside], gt[inside])
    assert e_ext < 0.7 * e_flat, (e_ext, e_flat)
    assert "truncated in 36 of 36 views" in ext.fov.summary() and "seen by every view" in ext.fov.summary()


# ----------------------------------------------------------------------------------------------------
# Offset detector (half fan) and short scans
# ----------------------------------------------------------------------------------------------------
def _offset_orbit(n, offset_mm, width_px, arc=2 * math.pi):
    ang = torch.linspace(0, arc, n + 1, dtype=F64)[:-1]
    return Cameras.circular_orbit(
        ang, sid_mm=250.0, sdd_mm=400.0, size_px=(width_px, 32), pixel_spacing_mm=2.0, detector_offset_mm=(offset_mm, 0.0), dtype=F64
    )


WIDE_BODY = [
    ((2.0, -1.0, 1.0), (30.0, 22.0, 12.0), 0.02),
    ((8.0, 3.0, 2.0), (5.0, 4.0, 5.0), 0.02),
    ((-7.0, -4.0, -2.0), (4.0, 5.0, 4.0), -0.015),
]


@pytest.fixture(scope="module")
def offset_case():
    cams = _offset_orbit(48, 14.0, 44)  # sides 29 and 57 mm on the detector: every-view radius ~18 mm, half fan ~35 mm
    wide = _offset_orbit(48, 0.0, 60)  # a centred detector seeing the same half-fan field of view
    return cams, analytic_projections(cams, WIDE_BODY).float(), wide, analytic_projections(wide, WIDE_BODY).float()


def test_fdk_displaced_detector(offset_case):
    cams, p, wide, pw = offset_case
    f = field_of_view(cams)
    assert f.displaced and f.any_radius_mm > 31.0 > 19.0 > f.every_radius_mm  # the phantom (30 x 22 mm) needs the half fan
    like = cylinder_grid(cams, region="any", spacing_mm=2.5)
    gt = ground_truth(like, WIDE_BODY)
    body = gt > 0.005
    weighted = fdk(p, cams, volume=like).data
    unweighted = fdk(p, cams, volume=like, displaced_detector=False).data
    reference = fdk(pw, wide, volume=like).data
    e_w, e_ref = (rel_error(v[body], gt[body]) for v in (weighted, reference))
    assert e_w < 1.3 * e_ref, (e_w, e_ref)
    outer = body & (view_counts(cams, like) < len(cams))  # the body beyond the region every view sees
    assert int(outer.sum()) > 50
    o_w, o_u = rel_error(weighted[outer], gt[outer]), rel_error(unweighted[outer], gt[outer])
    assert o_w < 0.5 * o_u, (o_w, o_u)  # without the weights, FDK's 1/2 leaves lines seen once at half their density


def test_fdk_displaced_detector_region_seen_once_matches_a_centred_detector(offset_case):
    """Beyond the region both sides see, each line is measured once: the ramp filter's response beyond the
    narrow edge must be back-projected (the detector padded to symmetric, as RTK does); cut at the edge, the
    region seen once came out ~7 % too bright. The offset detector must do as well as a centred detector
    wide enough to see the whole half-fan field of view."""
    cams, p, wide, pw = offset_case
    like = cylinder_grid(cams, region="any", spacing_mm=2.5)
    gt = ground_truth(like, WIDE_BODY)
    outer = (gt > 0.005) & (view_counts(cams, like) < len(cams))
    off, ref = fdk(p, cams, volume=like).data, fdk(pw, wide, volume=like).data
    ratio_off, ratio_ref = (float(v[outer].mean() / gt[outer].mean()) for v in (off, ref))
    assert abs(ratio_off - ratio_ref) < 0.01, (ratio_off, ratio_ref)
    e_off, e_ref = rel_error(off[outer], gt[outer]), rel_error(ref[outer], gt[outer])
    assert e_off < 1.1 * e_ref, (e_off, e_ref)


def test_iterative_methods_need_no_displaced_weighting(offset_case):
    cams, p, wide, pw = offset_case
    like = cylinder_grid(cams, region="any", spacing_mm=3.0)
    gt = ground_truth(like, WIDE_BODY)
    body = gt > 0.005
    opts = {"subsets": 12}
    off = reconstruct(p, cams, "voxel", volume=like, iterations=6, options=opts).volume.data
    ref = reconstruct(pw, wide, "voxel", volume=like, iterations=6, options=opts).volume.data
    e_off, e_ref = rel_error(off[body], gt[body]), rel_error(ref[body], gt[body])
    assert e_off < 1.25 * e_ref, (e_off, e_ref)


def test_short_scan_200_degrees():
    full = orbit(36, size_px=(48, 32), spacing=2.0)
    short = orbit(36, arc_rad=math.radians(200.0), size_px=(48, 32), spacing=2.0, full=False)
    like = cylinder_grid(full, grid=14)
    gt = ground_truth(like)
    body = gt > 0.005
    opts = {"subsets": 12}
    errs = {}
    for name, cams in (("full", full), ("short", short)):
        p = analytic_projections(cams).float()
        errs[name] = rel_error(reconstruct(p, cams, "voxel", volume=like, iterations=8, options=opts).volume.data[body], gt[body])
        errs[name + "_fdk"] = rel_error(fdk(p, cams, volume=like).data[body], gt[body])
    assert errs["short"] < 1.3 * errs["full"], errs
    assert errs["short_fdk"] < 1.5 * errs["full_fdk"], errs  # Parker weights
