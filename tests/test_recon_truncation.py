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

from XRayNeRFLib.geometry import Cameras, homogeneous, rotation_x
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


# ----------------------------------------------------------------------------------------------------
# Short scan with an offset detector: Parker's and Wang's weights normalised per line (recon/parker.py)
# ----------------------------------------------------------------------------------------------------
WATER = [((0.0, 0.0, 0.0), (15.0, 40.0, 15.0), 0.02)]  # a water rod along the orbit axis (RAS y), inside every view


def _orbit_about_y(n, arc_rad, offset_mm, width_px):
    """n views over arc_rad (both ends included) about RAS y (RTK's gantry axis), SID 250, SDD 400 mm, 2 mm pixels."""
    ang = torch.linspace(0, arc_rad, n, dtype=F64)
    c = Cameras.circular_orbit(
        ang, sid_mm=250.0, sdd_mm=400.0, size_px=(width_px, 32), pixel_spacing_mm=2.0, detector_offset_mm=(offset_mm, 0.0), dtype=F64
    )
    w = homogeneous(rotation_x(torch.tensor(-math.pi / 2, dtype=F64)), torch.zeros(3, dtype=F64))
    return Cameras(w @ c.world_from_camera, c.sdd_mm, c.pixel_spacing_mm, c.principal_point_px, c.size_px)


@pytest.fixture(scope="module")
def short_offset_case():
    """200 degrees, 72 views, a detector offset by 14 mm (sides 29 and 57 mm: every view sees r < 18.7 mm, the half
    fan 35.9 mm; fan half-angles 4.1 and 8.1 degrees < the 10 degree over-scan), and a centred detector wide enough
    for the whole half fan. The water rod (r = 15 mm) lies inside the region every view sees: no line through it is
    missing, so FDK must give flat water there."""
    arc = math.radians(200.0)
    cams, wide = _orbit_about_y(72, arc, 14.0, 44), _orbit_about_y(72, arc, 0.0, 60)
    like = cylinder_grid(cams, region="every", spacing_mm=1.0)
    k, j, i = like.data.shape
    kk, jj, ii = torch.meshgrid(torch.arange(k), torch.arange(j), torch.arange(i), indexing="ij")
    ras = torch.stack([ii, jj, kk, torch.ones_like(ii)], -1).double() @ like.ras_from_ijk.double().T  # (K, J, I, 4)
    inner = (torch.sqrt(ras[..., 0] ** 2 + ras[..., 2] ** 2) < 12.0) & (ras[..., 1].abs() < 4.0)  # near the orbit plane
    return cams, analytic_projections(cams, WATER).float(), wide, analytic_projections(wide, WATER).float(), like, inner


def _water_ratio(vol, inner):
    return vol.data.double()[inner] / WATER[0][2]


def test_fdk_short_scan_with_offset_detector_is_flat(short_offset_case):
    """Was refused (displaced_detector=True) or ran Parker alone on the offset detector (default); now flat water to
    within 1.5 % in the region every view sees, as flat as the centred detector's short scan (measured: both
    max |error| < 0.8 %)."""
    cams, p, wide, pw, like, inner = short_offset_case
    assert field_of_view(cams).displaced
    with pytest.warns(RuntimeWarning, match="offset detector on a short scan"):
        ours = _water_ratio(fdk(p, cams, volume=like, window="ram-lak"), inner)
    centred = _water_ratio(fdk(pw, wide, volume=like, window="ram-lak"), inner)
    assert float((ours - 1).abs().max()) < 0.015, (float(ours.min()), float(ours.max()))
    assert float(ours.std()) < 1.3 * float(centred.std()), (float(ours.std()), float(centred.std()))
    with pytest.warns(RuntimeWarning, match="offset detector on a short scan"):
        forced = fdk(p, cams, volume=like, window="ram-lak", displaced_detector=True)  # the default, stated
    assert torch.equal(forced.data.double()[inner] / WATER[0][2], ours)


def test_short_scan_displaced_weights_count_each_line_once():
    """On the detector padded to symmetric (the padded pixels carry the narrow edge's extrapolation), every line with a
    measurement in the scan weighs 1 in total: this ray and its conjugate (beta + pi + 2 gamma, at -x) together when
    both lie in the scan, this ray alone otherwise. RTK's chained filters give 2 w_d p instead (see the RTK test)."""
    from XRayNeRFLib.recon.parker import parker_weight_at, short_scan_displaced_weights

    sdd, near, far, delta = 400.0, torch.tensor([29.0], dtype=F64), torch.tensor([57.0], dtype=F64), math.radians(10.0)
    x = torch.linspace(-57.0, 57.0, 115, dtype=F64)[None]  # (1, U) mm, the padded detector
    gamma = torch.atan2(x, torch.tensor(sdd, dtype=F64))
    pairs = once = 0
    for b in torch.linspace(0.0, math.pi + 2 * delta, 41, dtype=F64):
        w = short_scan_displaced_weights(b.reshape(1), gamma, x, near, far, delta)[0]
        for u in range(x.shape[1]):
            g = float(gamma[0, u])
            bc = (float(b) + math.pi + 2 * g) % (2 * math.pi)  # the conjugate view angle, fan angle -g at -x
            if float(parker_weight_at(b, gamma[0, u], delta)) == 0.0:
                assert float(w[u]) == 0.0
                continue
            if bc <= math.pi + 2 * delta and float(parker_weight_at(torch.tensor(bc, dtype=F64), -gamma[0, u], delta)) > 0:
                wc = short_scan_displaced_weights(torch.tensor([bc], dtype=F64), -gamma[:, u : u + 1], -x[:, u : u + 1], near, far, delta)
                assert float(w[u] + wc[0, 0]) == pytest.approx(1.0, abs=1e-9), (float(b), u)
                pairs += 1
            else:
                assert float(w[u]) == pytest.approx(1.0, abs=1e-9), (float(b), u)  # the only measurement of its line
                once += 1
    assert pairs > 300 and once > 300, (pairs, once)


def test_fdk_short_scan_with_offset_detector_wide_object():
    """An object wider than the region every view sees (lines beyond the narrow side are missing in part of the scan):
    inside that region the normalised weights do as well as Parker's weights alone (which were the default before),
    and beyond it better (each measured line counts once). With a zero floor the padded side is empty and the ramp
    filter rings from the narrow edge (several times worse inside: the floor is what makes the default usable)."""
    from XRayNeRFLib.recon import parker

    body_e = [((c[0], c[2], -c[1]), (a[0], a[2], a[1]), mu) for c, a, mu in WIDE_BODY]  # the phantom about RAS y
    cams = _orbit_about_y(72, math.radians(200.0), 14.0, 44)
    p = analytic_projections(cams, body_e).float()
    like = cylinder_grid(cams, region="any", spacing_mm=1.5)
    gt = ground_truth(like, body_e)
    body = gt > 0.005
    every = view_counts(cams, like) >= len(cams)
    assert int((body & ~every).sum()) > 200

    def errors(**kw):
        with pytest.warns(RuntimeWarning, match="offset detector on a short scan"):
            v = fdk(p, cams, volume=like, window="ram-lak", **kw).data
        return rel_error(v[body & every], gt[body & every]), rel_error(v[body & ~every], gt[body & ~every])

    ours, parker_only = errors(), errors(displaced_detector=False)
    assert ours[0] < 1.15 * parker_only[0], (ours, parker_only)
    assert ours[1] < 0.9 * parker_only[1], (ours, parker_only)
    floor = parker.MISSING_LINE_FLOOR
    try:
        parker.MISSING_LINE_FLOOR = 0.0
        no_floor = errors()
    finally:
        parker.MISSING_LINE_FLOOR = floor
    assert no_floor[0] > 2 * ours[0], (no_floor, ours)


@needs_rtk
def test_fdk_short_scan_with_offset_detector_against_rtk(short_offset_case, tmp_path, monkeypatch):
    """RTK's FDK on the same data (its DisplacedDetectorImageFilter, then ParkerShortScanImageFilter, as rtkfdk)
    multiplies the two weights, 2 w_d p: our FDK given that product reproduces RTK's volume (so cosine weight, both
    weights, padding, ramp filter and back projection agree), while the product itself is far from flat water, and
    our normalised weights are flat. RTK gets the detector turned 180 degrees (rtk_recon_worker.turned_detector): its
    Parker filter assumes InPlaneAngle 0, and this orbit's XML would carry 180 (then RTK's Parker weights are ours
    with the fan angle mirrored: checked on the centred detector, where our Parker-only FDK must match RTK's)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))
    from rtk_recon_worker import run_rtk_reconstructions, turned_detector

    from XRayNeRFLib.recon import parker

    fdk_module = sys.modules["XRayNeRFLib.recon.fdk"]
    cams, p, wide, pw, like, inner = short_offset_case
    jobs = [{"name": "fdk", "hann": 0.0, "short_scan": True, "displaced": True}]
    vols, _ = run_rtk_reconstructions(*turned_detector(p, cams), like, jobs, str(tmp_path / "offset"))
    rtk_offset = vols["fdk"].data.double()[inner] / WATER[0][2]
    vols, _ = run_rtk_reconstructions(
        *turned_detector(pw, wide), like, [{"name": "fdk", "hann": 0.0, "short_scan": True}], str(tmp_path / "c")
    )
    rtk_centred = vols["fdk"].data.double()[inner] / WATER[0][2]
    centred = _water_ratio(fdk(pw, wide, volume=like, window="ram-lak"), inner)
    assert float((centred - rtk_centred).norm() / rtk_centred.norm()) < 1e-4  # the same Parker FDK

    def rtk_product(beta, gamma, x, near, far, delta):
        return 2 * displaced_detector_weights(x, near, far) * parker.parker_weight_at(beta[:, None], gamma, delta)

    with pytest.warns(RuntimeWarning):
        ours = _water_ratio(fdk(p, cams, volume=like, window="ram-lak"), inner)
    monkeypatch.setattr(fdk_module, "short_scan_displaced_weights", rtk_product)
    monkeypatch.setattr(fdk_module, "extrapolate_rows", lambda rows, n: torch.nn.functional.pad(rows, (n, n)))  # RTK pads zeros
    with pytest.warns(RuntimeWarning):
        product = _water_ratio(fdk(p, cams, volume=like, window="ram-lak"), inner)
    rel = float((product - rtk_offset).norm() / rtk_offset.norm())
    assert rel < 0.01, rel
    assert float(rtk_offset.std()) > 10 * float(ours.std()), (float(rtk_offset.std()), float(ours.std()))


@pytest.mark.parametrize("n_views", [30, 60])
def test_view_count_defaults_on_a_200_degree_short_scan(n_views):
    """The C-arm protocol's short scans (200 degrees, 30 and 60 views) with every default: the os-tv pass count is
    ostv.default_passes(views), the same as on a full orbit (the arc does not enter it), FDK applies Parker's weights
    by itself, and the default passes are enough: twice as many gain little, and the short scan ends close to the full
    orbit with the same views. (The defaults were tuned on full orbits, docs/reconstruction.md.)"""
    from XRayNeRFLib.recon.ostv import default_passes

    short = orbit(n_views, arc_rad=math.radians(200.0), size_px=(48, 32), spacing=2.0, full=False)
    full = orbit(n_views, size_px=(48, 32), spacing=2.0)
    like = cylinder_grid(full, grid=16)
    gt = ground_truth(like)
    body = gt > 0.005
    errs = {}
    for name, cams in (("short", short), ("full", full)):
        p = analytic_projections(cams).float()
        res = reconstruct(p, cams, "voxel", volume=like)
        assert res.history.passes_done == default_passes(n_views), name
        errs[name] = rel_error(res.volume.data[body], gt[body])
        if name == "short":
            longer = reconstruct(p, cams, "voxel", volume=like, iterations=2 * default_passes(n_views)).volume.data
            errs["short_2x"] = rel_error(longer[body], gt[body])
            errs["fdk_auto"] = rel_error(fdk(p, cams, volume=like).data[body], gt[body])
            errs["fdk_no_parker"] = rel_error(fdk(p, cams, volume=like, short_scan=False).data[body], gt[body])
    assert errs["short_2x"] > 0.9 * errs["short"], errs  # doubling the default passes gains < 10 %
    assert errs["short"] < 1.3 * errs["full"], errs
    assert errs["fdk_auto"] < 0.5 * errs["fdk_no_parker"], errs  # Parker's weights are on by default
