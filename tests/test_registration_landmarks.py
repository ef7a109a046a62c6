"""Landmark start (PnP with known intrinsics): exact pairs recover the pose, noisy pairs reach the
least-squares optimum (checked against scipy's independent solver) within a stated error, the CT
correction moves the landmarks onto their pixels, the points JSON, and one typed error per bad input."""

import json
import math

import numpy as np
import pytest
import torch
from scipy.optimize import least_squares
from scipy.spatial.transform import Rotation

from XRayNeRFLib.errors import LandmarkError
from XRayNeRFLib.geometry import Cameras, rigid_inverse
from XRayNeRFLib.registration.landmarks import LandmarkPairs, read_landmarks_json, solve_landmark_pose
from XRayNeRFLib.registration.pose import pose_errors, target_registration_error

F64 = torch.float64
ISO = torch.tensor([5.0, -10.0, 20.0], dtype=F64)


def camera(primary=25.0, secondary=-8.0, size=(512, 512)):
    return Cameras.carm(primary, secondary, sid_mm=800, sdd_mm=1200, size_px=size, pixel_spacing_mm=0.6, isocenter_ras=ISO, dtype=F64)


def points(n, seed, spread_mm=160.0, plane_y=None):
    g = torch.Generator().manual_seed(seed)
    p = (torch.rand(n, 3, generator=g, dtype=F64) - 0.5) * spread_mm + ISO
    if plane_y is not None:
        p[:, 1] = plane_y
    return p


@pytest.mark.parametrize(
    "n, coplanar, angles",
    [
        (4, False, (25.0, -8.0)),
        (4, True, (25.0, -8.0)),
        (5, False, (90.0, 0.0)),
        (6, True, (-40.0, 20.0)),
        (12, False, (0.0, 0.0)),
    ],
)
def test_exact_pairs_recover_the_pose(n, coplanar, angles):
    cam = camera(*angles)
    pts = points(n, seed=n, plane_y=-10.0 if coplanar else None)
    pix, _ = cam.project(pts)
    placeholder = Cameras(torch.eye(4, dtype=F64)[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    res = solve_landmark_pose(pts, pix[0], placeholder)  # the camera's own pose is not used
    assert torch.allclose(res.world_from_camera, cam.world_from_camera[0], atol=1e-6, rtol=0)
    assert res.rms_px < 1e-6 and float(res.error_px.max()) < 1e-6
    assert torch.allclose(res.cameras.world_from_camera[0], res.world_from_camera)
    # Depth of each point: its distance along the true principal ray.
    _, depth = cam.project(pts)
    assert torch.allclose(res.depth_mm, depth[0], atol=1e-6)


def test_noisy_pairs_reach_the_least_squares_optimum_within_bound():
    """Gaussian pixel noise sigma = 0.5 px (0.3 mm at the detector), 8 points spread over 160 mm, C-arm at
    LAO 25 / CAU 8, sid 800 mm, sdd 1200 mm, 20 seeded cases. Bound: every case's rotation error < 1 deg and
    mean landmark TRE < 4 mm, the median < 1.5 mm; the error lies mostly along the beam (depth)."""
    cam = camera()
    w_true = cam.world_from_camera[0]
    k = cam.intrinsic_matrices()[0].numpy()
    tres, depth_err, inplane_err = [], [], []
    for seed in range(20):
        g = torch.Generator().manual_seed(1000 + seed)
        pts = points(8, seed=seed)
        pix = cam.project(pts)[0][0] + 0.5 * torch.randn(8, 2, generator=g, dtype=F64)
        res = solve_landmark_pose(pts, pix, cam)
        # Optimality: no worse than the true pose, and equal to scipy's Levenberg-Marquardt started at the truth.
        true_rms = float((cam.project(pts)[0][0] - pix).norm(dim=-1).pow(2).mean().sqrt())
        assert res.rms_px <= true_rms + 1e-9

        def f(x, p, q):
            c = p @ Rotation.from_rotvec(x[:3]).as_matrix().T + x[3:]
            uv = c @ k.T
            return (uv[:, :2] / uv[:, 2:3] - q).ravel()

        cw = rigid_inverse(w_true).numpy()
        sol = least_squares(
            f,
            np.concatenate([Rotation.from_matrix(cw[:3, :3]).as_rotvec(), cw[:3, 3]]),
            method="lm",
            xtol=1e-15,
            ftol=1e-15,
            gtol=1e-15,
            args=(pts.numpy(), pix.numpy()),
        )
        ours = rigid_inverse(res.world_from_camera).numpy()
        assert np.abs(ours[:3, :3] - Rotation.from_rotvec(sol.x[:3]).as_matrix()).max() < 1e-7
        assert np.abs(ours[:3, 3] - sol.x[3:]).max() < 1e-4  # mm
        # Error bound.
        assert pose_errors(res.world_from_camera, w_true, ISO)["rotation_deg"] < 1.0
        tre = float(target_registration_error(res.world_from_camera, w_true, pts).mean())
        assert tre < 4.0
        tres.append(tre)
        iso_h = torch.cat([ISO, torch.ones(1, dtype=F64)])
        d = (rigid_inverse(res.world_from_camera) @ iso_h - rigid_inverse(w_true) @ iso_h)[:3]  # camera axes
        depth_err.append(abs(float(d[2])))
        inplane_err.append(float(d[:2].norm()))
        # Reported errors: px -> detector mm (x spacing) -> object mm (/ magnification).
        assert res.error_detector_mm == pytest.approx(res.error_px * 0.6, rel=1e-12)
        assert res.error_object_mm == pytest.approx(res.error_detector_mm * res.depth_mm / 1200, rel=1e-12)
    assert float(np.median(tres)) < 1.5
    assert np.median(depth_err) > 3 * np.median(inplane_err)


def test_ct_correction_puts_landmarks_on_their_pixels_from_the_reference_camera():
    cam = camera()
    pts = points(6, seed=3)
    pix = cam.project(pts)[0][0]
    nominal = camera(primary=20.0, secondary=-4.0)  # e.g. the DICOM pose, 5 deg off
    res = solve_landmark_pose(pts, pix, nominal)
    corr = res.ct_correction_ras(nominal.world_from_camera[0])
    moved = pts @ corr[:3, :3].T + corr[:3, 3]  # the CT under its correction, in RAS
    assert torch.allclose(nominal.project(moved)[0][0], pix, atol=1e-6)
    assert float(torch.linalg.det(corr[:3, :3])) == pytest.approx(1.0, abs=1e-12)


def test_points_json_ras_and_lps(tmp_path):
    cam = camera()
    pts = points(5, seed=7)
    pix = cam.project(pts)[0][0]
    pairs = [{"label": f"p{i}", "ct_mm": p.tolist(), "pixel": q.tolist()} for i, (p, q) in enumerate(zip(pts, pix))]
    ras = tmp_path / "ras.json"
    ras.write_text(json.dumps({"pairs": pairs}))
    lps = tmp_path / "lps.json"
    lps_pairs = [dict(p, ct_mm=[-p["ct_mm"][0], -p["ct_mm"][1], p["ct_mm"][2]]) for p in pairs]
    lps.write_text(json.dumps({"frame": "LPS", "pairs": lps_pairs}))
    for path in (ras, lps):
        lp = read_landmarks_json(str(path))
        assert lp.labels == [f"p{i}" for i in range(5)]
        assert torch.allclose(lp.points_ras, pts)
        res = solve_landmark_pose(lp, cameras=cam)
        assert torch.allclose(res.world_from_camera, cam.world_from_camera[0], atol=1e-6)
        assert res.to_json()["pairs"][2]["label"] == "p2"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"pairs": pairs[:2] + [{"label": "tip", "ct_mm": [1, 2], "pixel": [3, 4]}]}))
    with pytest.raises(LandmarkError, match="pair 2 \\(tip\\)") as exc:
        read_landmarks_json(str(bad))
    assert exc.value.index == 2 and exc.value.reason == "shape"
    frame = tmp_path / "frame.json"
    frame.write_text(json.dumps({"frame": "IJK", "pairs": pairs}))
    with pytest.raises(ValueError, match="RAS.*LPS"):
        read_landmarks_json(str(frame))


def _pairs():
    cam = camera()
    pts = points(6, seed=11)
    return cam, pts, cam.project(pts)[0][0].clone()


def test_too_few_and_duplicate_pairs():
    cam, pts, pix = _pairs()
    with pytest.raises(LandmarkError, match="3 landmark pairs: a pose needs at least 4") as exc:
        solve_landmark_pose(pts[:3], pix[:3], cam)
    assert exc.value.reason == "too-few"
    dup_pts = torch.cat([pts[:3], pts[1:2]])
    with pytest.raises(LandmarkError, match="landmarks 1 .* and 3 .* are the same CT point") as exc:
        solve_landmark_pose(dup_pts, pix[:4], cam)
    assert exc.value.reason == "too-few" and exc.value.index == 3
    with pytest.raises(LandmarkError, match="6 CT points but 5 X-ray points"):
        solve_landmark_pose(pts, pix[:5], cam)


def test_not_finite_names_the_pair():
    cam, pts, pix = _pairs()
    pix[4, 1] = math.nan
    with pytest.raises(LandmarkError, match="landmark 4 \\(5\\): the X-ray pixel .* not finite") as exc:
        solve_landmark_pose(pts, pix, cam)
    assert (exc.value.reason, exc.value.index) == ("not-finite", 4)
    pts[2, 0] = math.inf
    with pytest.raises(LandmarkError, match="landmark 2 \\(3\\): the CT point"):
        solve_landmark_pose(pts, pix, cam)


def test_pixel_outside_image_names_the_pair():
    cam, pts, pix = _pairs()
    pix[1] = torch.tensor([511.4, 511.6], dtype=F64)  # row beyond the last pixel's outer edge (511.5)
    with pytest.raises(LandmarkError, match="landmark 1 .* outside the 512 x 512 X-ray") as exc:
        solve_landmark_pose(pts, pix, cam, labels=[f"L{i}" for i in range(6)])
    assert (exc.value.reason, exc.value.index, exc.value.label) == ("outside-image", 1, "L1")
    pix[1] = torch.tensor([-0.5, 511.5], dtype=F64)  # the outer corner itself is on the detector
    try:  # now inconsistent with its CT point (a large residual), but not refused as outside
        res = solve_landmark_pose(pts, pix, cam)
        assert int(res.error_px.argmax()) == 1
    except LandmarkError as exc:
        assert exc.reason != "outside-image"


def test_collinear_ct_points_and_collinear_pixels():
    cam, _, _ = _pairs()
    t = torch.linspace(-50, 50, 5, dtype=F64)[:, None]
    line = ISO + t * torch.tensor([1.0, 0.5, -0.2], dtype=F64)
    with pytest.raises(LandmarkError, match="CT landmarks lie on one line") as exc:
        solve_landmark_pose(line, cam.project(line)[0][0], cam)
    assert exc.value.reason == "degenerate"
    # Points (not collinear) in a plane through the source project onto one image line.
    w = cam.world_from_camera[0]
    a = torch.tensor([-40.0, 30.0, 10.0, -15.0, 25.0], dtype=F64)[:, None]
    b = torch.tensor([760.0, 800.0, 840.0, 780.0, 820.0], dtype=F64)[:, None]
    plane = w[:3, 3] + a * w[:3, 0] + b * w[:3, 2]
    with pytest.raises(LandmarkError, match="X-ray landmarks lie on one line") as exc:
        solve_landmark_pose(plane, cam.project(plane)[0][0], cam)
    assert exc.value.reason == "degenerate"


def test_wrong_shapes_are_typed_errors():
    cam, pts, pix = _pairs()
    with pytest.raises(LandmarkError, match=r"\(N, 3\) RAS mm"):
        LandmarkPairs(pts[:, :2], pix)
    with pytest.raises(ValueError, match="camera"):
        solve_landmark_pose(pts, pix, None)


def test_landmark_start_brings_a_far_pose_into_the_optimiser_capture_range(chest_ct_48):
    """Chest CT 48^3 (the shipped sample), target simulated by a different image model; the start is 30 deg and
    60 mm off (mTRE ~70 mm, far outside the optimiser's reach). 6 landmarks marked with 0.3 px noise give a
    start within 20 mm mTRE; MI registration from it ends below 1 mm."""
    from XRayNeRFLib.registration import register
    from XRayNeRFLib.registration.simulate import landmarks, perturb_pose, simulate_xray
    from XRayNeRFLib.volume import as_mu

    vol = as_mu(chest_ct_48)
    c = vol.center_ras().double()
    cam = Cameras.carm(0.0, 0.0, sid_mm=650, sdd_mm=1020, size_px=(64, 64), pixel_spacing_mm=8.0, isocenter_ras=c, dtype=F64)
    truth = cam.world_from_camera[0]
    image = simulate_xray(vol, cam, seed=0)[0].float()
    targets = landmarks(vol, 20, seed=0)
    marked = landmarks(vol, 6, seed=5)
    g = torch.Generator().manual_seed(0)
    pix = cam.project(marked)[0][0] + 0.3 * torch.randn(6, 2, generator=g, dtype=F64)
    far = perturb_pose(truth, c, 30.0, 60.0, np.random.default_rng(3))
    far_cam = Cameras(far[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    assert float(target_registration_error(far, truth, targets).mean()) > 50.0
    start = solve_landmark_pose(marked, pix, far_cam)
    assert float(target_registration_error(start.world_from_camera, truth, targets).mean()) < 20.0
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # The X-ray is rendered from this very CT box (its ends are in the X-ray): every pixel is signal here.
        res = register(vol, image, start.cameras, loss="mi", levels=(4, 2, 1), ct_coverage=False)
    finally:
        torch.set_num_threads(before)
    assert float(target_registration_error(res.world_from_camera, truth, targets).mean()) < 1.0
