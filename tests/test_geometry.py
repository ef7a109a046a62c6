"""Camera model tests: C-arm angle and patient-position conventions with concrete numbers, projection,
magnification, projection-matrix round trips, circular orbits, short scans, input errors, container
behaviour, and the worked example of docs/geometry.md (so the document cannot drift from the code).
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from conftest import random_rotation

from XRayNeRFLib.geometry import PATIENT_FROM_CARM, Cameras, fan_angle_rad, homogeneous, short_scan_angles

F64 = torch.float64
DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "geometry.md")


def carm(primary, secondary, **kw):
    args = dict(sid_mm=750.0, sdd_mm=1200.0, size_px=(5, 4), pixel_spacing_mm=1.0, dtype=F64)
    args.update(kw)
    return Cameras.carm(primary, secondary, **args)


def axes(cams: Cameras, v: int = 0):
    """Camera x (columns), y (rows), z (source -> detector) axes of view v in RAS, and the source."""
    w = cams.world_from_camera[v]
    return w[:3, 0], w[:3, 1], w[:3, 2], w[:3, 3]


def close(a, b, tol=1e-12):
    np.testing.assert_allclose(torch.as_tensor(a, dtype=F64).detach(), torch.as_tensor(b, dtype=F64), rtol=0, atol=tol)


# ---------------------------------------------------------------------------------------------------
# C-arm angles
# ---------------------------------------------------------------------------------------------------
def test_carm_ap_view_axes():
    # (0, 0): PA beam. Source posterior (-y RAS), detector anterior; columns towards the patient's right
    # (+x), rows towards the feet (-z). Beam's eye view: looking from behind, the patient's right is on
    # the viewer's right.
    x, y, z, src = axes(carm(0, 0))
    close(z, [0, 1, 0])
    close(x, [1, 0, 0])
    close(y, [0, 0, -1])
    close(src, [0, -750, 0])
    close(torch.linalg.det(carm(0, 0).world_from_camera[0, :3, :3]), 1.0)


@pytest.mark.parametrize(
    "primary, secondary, detector_dir, column_dir, row_dir",
    [
        (90, 0, [-1, 0, 0], [0, 1, 0], [0, 0, -1]),  # LAO 90: detector at the patient's left, source right
        (-90, 0, [1, 0, 0], [0, -1, 0], [0, 0, -1]),  # RAO 90: detector at the patient's right
        (0, 90, [0, 0, 1], [1, 0, 0], [0, 1, 0]),  # CRA 90: detector at the head, rows run anterior
        (0, -90, [0, 0, -1], [1, 0, 0], [0, -1, 0]),  # CAU 90: detector at the feet, rows run posterior
        (180, 0, [0, -1, 0], [-1, 0, 0], [0, 0, -1]),  # LAO 180: AP beam, detector posterior
    ],
)
def test_carm_angle_signs(primary, secondary, detector_dir, column_dir, row_dir):
    # these are the rows of the angle table in docs/geometry.md section 6
    x, y, z, src = axes(carm(primary, secondary, isocenter_ras=(5.0, -7.0, 11.0)))
    close(z, detector_dir)
    close(x, column_dir)
    close(y, row_dir)
    # the source sits sid before the isocentre, opposite the detector
    close(src, torch.tensor([5.0, -7.0, 11.0], dtype=F64) - 750 * torch.tensor(detector_dir, dtype=F64), 1e-10)


def test_carm_oblique_angles_compose():
    # LAO 30 then CRA 10: the principal ray (towards the detector) is
    # (-sin 30 cos 10, cos 30 cos 10, sin 10) in RAS: tilted left, anterior, and up towards the head.
    _, _, z, _ = axes(carm(30, 10))
    p, s = math.radians(30), math.radians(10)
    close(z, [-math.sin(p) * math.cos(s), math.cos(p) * math.cos(s), math.sin(s)])
    # RAO/CAU negatives mirror LAO/CRA: RAO 30 / CAU 10 is the mirror image through x = 0 and z = 0
    _, _, z2, _ = axes(carm(-30, -10))
    close(z2, [math.sin(p) * math.cos(s), math.cos(p) * math.cos(s), -math.sin(s)])


def test_patient_positions_are_proper_rotations():
    for key, cols in PATIENT_FROM_CARM.items():
        m = torch.tensor(cols, dtype=F64).T
        close(m.T @ m, torch.eye(3, dtype=F64))
        assert torch.linalg.det(m) == pytest.approx(1.0), key


@pytest.mark.parametrize(
    "position, detector_dir, column_dir, row_dir",
    [
        # HFS: the C-arm frame is the patient frame.
        ("HFS", [0, 1, 0], [1, 0, 0], [0, 0, -1]),
        # HFP (prone, head first): the detector above the table now faces the patient's back
        # (posterior, -y); the table side that was the patient's right is now the patient's left.
        ("HFP", [0, -1, 0], [-1, 0, 0], [0, 0, -1]),
        # FFS (supine, feet first): turned 180 degrees about the vertical: still anterior, but the
        # gantry/head end of the table holds the feet, so image rows run towards the head.
        ("FFS", [0, 1, 0], [-1, 0, 0], [0, 0, 1]),
        # HFDR (decubitus, lying on the right side): the patient's right is down, so the detector
        # above the table is at the patient's left (-x) and the source at the right.
        ("HFDR", [-1, 0, 0], [0, 1, 0], [0, 0, -1]),
        # HFDL (lying on the left side): the detector is at the patient's right.
        ("HFDL", [1, 0, 0], [0, -1, 0], [0, 0, -1]),
    ],
)
def test_patient_positions_at_zero_angles(position, detector_dir, column_dir, row_dir):
    x, y, z, _ = axes(carm(0, 0, patient_position=position))
    close(z, detector_dir)
    close(x, column_dir)
    close(y, row_dir)


def test_unknown_patient_position():
    with pytest.raises(ValueError, match="unknown patient position 'SUPINE'.*HFS"):
        carm(0, 0, patient_position="SUPINE")
    x, _, _, _ = axes(carm(0, 0, patient_position=" hfp "))  # case and blanks are forgiven
    close(x, [-1, 0, 0])


# ---------------------------------------------------------------------------------------------------
# Projection
# ---------------------------------------------------------------------------------------------------
def test_isocentre_projects_to_principal_point_and_magnification():
    iso = torch.tensor([12.0, -30.0, 45.0], dtype=F64)
    cams = carm([0, 35, -60], [0, 20, -15], size_px=(101, 81), pixel_spacing_mm=(0.5, 0.25), isocenter_ras=iso)
    pix, depth = cams.project(iso[None])
    close(pix[:, 0], cams.principal_point_px)
    close(pix[:, 0], torch.tensor([[50.0, 40.0]] * 3, dtype=F64), 1e-9)  # centre of a 101 x 81 grid
    close(depth[:, 0], [750.0] * 3, 1e-9)
    # a point 10 mm from the isocentre along each view's column axis (in the isocentre plane) is
    # magnified by sdd / sid = 1.6 on the detector: 16 mm = 32 columns of 0.5 mm; 10 mm along the row
    # axis becomes 16 mm = 64 rows of 0.25 mm.
    for v in range(3):
        x, y, _, _ = axes(cams, v)
        p, _ = cams[v].project(torch.stack([iso + 10 * x, iso + 10 * y]))
        close(p[0, 0], [50.0 + 32.0, 40.0], 1e-9)
        close(p[0, 1], [50.0, 40.0 + 64.0], 1e-9)


def test_pixel_to_world_inverts_project(rng):
    cams = carm([10, -50], [5, 30], size_px=(16, 12), pixel_spacing_mm=(0.7, 0.9), detector_offset_mm=(3.0, -2.0))
    pixels = torch.tensor(rng.uniform(-2, 15, (2, 7, 2)), dtype=F64)
    world = cams.pixel_to_world(pixels)
    back, depth = cams.project(world)
    close(back, pixels, 1e-9)
    close(depth, torch.full((2, 7), 1200.0, dtype=F64), 1e-9)  # the detector plane is at depth sdd
    # the detector centre is sdd from the source along the principal ray, shifted by the offset
    close((cams.detector_centers() - cams.source_positions()).norm(dim=-1), [math.hypot(1200, math.hypot(3, 2))] * 2, 1e-9)


def random_cameras(rng, views=4, max_shift_mm=100.0):
    poses = []
    for _ in range(views):
        poses.append(homogeneous(torch.tensor(random_rotation(rng)), torch.tensor(rng.uniform(-max_shift_mm, max_shift_mm, 3))))
    return Cameras(
        torch.stack(poses),
        torch.tensor(rng.uniform(800, 1500, views)),
        torch.tensor(rng.uniform(0.1, 1.0, (views, 2))),
        torch.tensor(rng.uniform(-200, 700, (views, 2))),  # far off-centre principal points too
        (512, 384),
    )


def test_projection_matrix_round_trip(rng):
    cams = Cameras.concatenate(
        [
            random_cameras(rng),
            carm([25, -70], [-5, 12], size_px=(512, 384), pixel_spacing_mm=(0.3, 0.45), detector_offset_mm=[[40.0, -12.0], [-75.0, 0.0]]),
        ]
    )
    p = cams.projection_matrices()
    scale = torch.tensor(rng.uniform(1e-3, 1e3, len(cams)) * rng.choice([-1.0, 1.0], len(cams)))
    back = Cameras.from_projection_matrices(p * scale[:, None, None], (512, 384), cams.pixel_spacing_mm, scene_point_ras=None)
    close(back.world_from_camera, cams.world_from_camera, 1e-9)
    close(back.sdd_mm, cams.sdd_mm, 1e-9)
    close(back.principal_point_px, cams.principal_point_px, 1e-9)
    close(back.pixel_spacing_mm, cams.pixel_spacing_mm, 1e-12)
    # the carm views' offsets are visible as principal points away from the image centre (255.5, 191.5)
    close(back.principal_point_px[-2:], [[255.5 - 40 / 0.3, 191.5 + 12 / 0.45], [255.5 + 75 / 0.3, 191.5]], 1e-9)
    # and the matrix reproduces the projection of a point
    x = torch.tensor([[3.0, -4.0, 5.0]], dtype=F64)
    close(back.project(x)[0], cams.project(x)[0], 1e-7)


@pytest.mark.parametrize("isocenter_ras", [(0.0, 0.0, 500.0), (200.0, -300.0, 1200.0)])
def test_projection_matrix_far_from_origin_is_accepted(isocenter_ras):
    # A realistic C-arm (sid 1000, sdd 1500, 0.15 mm pixels) whose isocentre is 0.5-1.3 m from the RAS
    # origin (table coordinates of a DICOM scanner are often that far). Its 3x3 block is far from
    # singular (|det| = (1500 / 0.15)^2 = 1e8 in any world frame), so it must decompose.
    cams = carm(20, 10, sid_mm=1000.0, sdd_mm=1500.0, size_px=(1024, 1024), pixel_spacing_mm=0.15, isocenter_ras=isocenter_ras)
    p = cams.projection_matrices()
    assert float(torch.linalg.det(p[0, :, :3]).abs()) == pytest.approx(1e8)
    back = Cameras.from_projection_matrices(p, (1024, 1024), 0.15, scene_point_ras=isocenter_ras)
    close(back.world_from_camera, cams.world_from_camera, 1e-9)
    close(back.sdd_mm, cams.sdd_mm, 1e-9)


def test_projection_matrix_refuses_mirrored_and_skewed():
    cams = carm(20, 10, size_px=(64, 48), pixel_spacing_mm=0.5)
    p = cams.projection_matrices()
    # columns flipped (c' = 63 - c): the detector axes become left-handed
    flip = torch.tensor([[-1.0, 0, 63.0], [0, 1, 0], [0, 0, 1]], dtype=F64)
    with pytest.raises(ValueError, match="mirrored detector"):
        Cameras.from_projection_matrices(flip @ p, (64, 48), 0.5, scene_point_ras=(0.0, 0.0, 0.0))
    # without a scene point the decomposition is a camera looking away from the scene
    away = Cameras.from_projection_matrices(flip @ p, (64, 48), 0.5)
    assert float(away.project(torch.zeros(1, 3, dtype=F64))[1]) < 0
    skew = torch.tensor([[1.0, 0.05, 0], [0, 1, 0], [0, 0, 1]], dtype=F64)
    with pytest.raises(ValueError, match="skewed"):
        Cameras.from_projection_matrices(skew @ p, (64, 48), 0.5)
    with pytest.raises(ValueError, match="column, row"):
        Cameras.from_projection_matrices(p, (64, 48), (0.5, 0.6))  # wrong spacing: focal lengths disagree
    with pytest.raises(ValueError, match="singular"):
        # an affine (parallel-beam) camera: the last row of the 3x3 block is zero
        Cameras.from_projection_matrices(torch.tensor([[2.0, 0, 0, 5], [0, 2, 0, 7], [0, 0, 0, 1]], dtype=F64), (64, 48), 0.5)


# ---------------------------------------------------------------------------------------------------
# Circular orbits and short scans
# ---------------------------------------------------------------------------------------------------
def test_circular_orbit():
    angles = torch.linspace(0, 2 * math.pi, 13, dtype=F64)[:-1]
    iso = torch.tensor([4.0, -6.0, 20.0], dtype=F64)
    orbit = Cameras.circular_orbit(angles, sid_mm=500, sdd_mm=900, size_px=(8, 6), pixel_spacing_mm=2.0, isocenter_ras=iso, dtype=F64)
    src = orbit.source_positions()
    close((src[:, :2] - iso[:2]).norm(dim=-1), [500.0] * 12, 1e-9)  # a circle of radius sid ...
    close(src[:, 2], [20.0] * 12, 1e-9)  # ... in the axial plane through the isocentre
    close(orbit.principal_directions()[:, 2], [0.0] * 12, 1e-12)  # principal rays stay axial
    # angle theta is the C-arm primary angle theta (LAO positive), secondary 0
    ref = Cameras.carm(
        torch.rad2deg(angles), 0.0, sid_mm=500, sdd_mm=900, size_px=(8, 6), pixel_spacing_mm=2.0, isocenter_ras=iso, dtype=F64
    )
    close(orbit.world_from_camera, ref.world_from_camera, 1e-9)
    # a quarter turn puts the detector at the patient's left
    close(orbit.principal_directions()[3], [-1.0, 0.0, 0.0], 1e-12)


def test_short_scan_angles_span_pi_plus_fan():
    angles = short_scan_angles(50, sdd_mm=1000.0, detector_width_mm=400.0, start_rad=0.3)
    fan = 2 * math.atan(200.0 / 1000.0)
    assert angles.dtype == F64 and angles.shape == (50,)
    assert float(angles[0]) == pytest.approx(0.3)
    assert float(angles[-1] - angles[0]) == pytest.approx(math.pi + fan, abs=1e-12)
    close(torch.diff(angles), torch.full((49,), (math.pi + fan) / 49, dtype=F64), 1e-12)
    # the same fan angle as the camera model's, for a centred detector 400 mm wide
    cams = Cameras.circular_orbit(angles[:1], sid_mm=600, sdd_mm=1000, size_px=(200, 10), pixel_spacing_mm=2.0, dtype=F64)
    assert float(fan_angle_rad(cams)[0]) == pytest.approx(fan, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# Input errors and container behaviour
# ---------------------------------------------------------------------------------------------------
def good_args(v=2):
    return dict(
        world_from_camera=torch.eye(4, dtype=F64).repeat(v, 1, 1),
        sdd_mm=torch.full((v,), 1000.0, dtype=F64),
        pixel_spacing_mm=torch.ones(v, 2, dtype=F64),
        principal_point_px=torch.zeros(v, 2, dtype=F64),
        size_px=(4, 3),
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(sdd_mm=torch.tensor([1000.0, 0.0], dtype=F64)), "view 1: source-to-detector distance must be > 0"),
        (dict(sdd_mm=torch.tensor([float("nan"), 1.0], dtype=F64)), "sdd_mm contains NaN"),
        (dict(pixel_spacing_mm=torch.tensor([[1.0, 1.0], [-0.5, 1.0]], dtype=F64)), "view 1: pixel spacing must be > 0"),
        (dict(principal_point_px=torch.tensor([[0.0, float("inf")], [0, 0]], dtype=F64)), "principal_point_px contains NaN"),
        (dict(world_from_camera=torch.diag(torch.tensor([1.0, 1.0, 1.1, 1.0], dtype=F64)).repeat(2, 1, 1)), "not a rigid"),
        (dict(world_from_camera=torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64)).repeat(2, 1, 1)), "reflection"),
        (dict(world_from_camera=torch.eye(3, dtype=F64)), r"must be \(V, 4, 4\)"),
        (dict(sdd_mm=torch.ones(3, dtype=F64)), r"sdd_mm must have shape \(2,\)"),
        (dict(pixel_spacing_mm=torch.ones(2, 3, dtype=F64)), r"pixel_spacing_mm must have shape \(2, 2\)"),
        (dict(size_px=(4, 0)), "size_px must be positive"),
        (dict(size_px="big"), "size_px must be"),
    ],
)
def test_bad_camera_inputs(change, message):
    args = good_args()
    args.update(change)
    with pytest.raises(ValueError, match=message):
        Cameras(**args)


@pytest.mark.parametrize(
    "change, name",
    [
        (dict(sdd_mm=torch.tensor([1000.0, 0.0], dtype=F64)), "view 1 sdd_mm"),
        (dict(principal_point_px=torch.tensor([[0.0, float("inf")], [0, 0]], dtype=F64)), "principal_point_px"),
        (
            dict(world_from_camera=torch.stack([torch.eye(4, dtype=F64), torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=F64))])),
            "view 1 world_from_camera",
        ),
    ],
)
def test_unusable_cameras_raise_a_geometry_error_naming_the_field(change, name):
    """Callers branch on the class and read ``name``, never the text."""
    from XRayNeRFLib.errors import GeometryError

    args = good_args()
    args.update(change)
    with pytest.raises(GeometryError) as info:
        Cameras(**args)
    assert info.value.name == name


def test_bad_constructor_inputs():
    with pytest.raises(ValueError, match="distances must be > 0"):
        carm(0, 0, sdd_mm=-5.0)
    with pytest.raises(ValueError, match="smaller than the source-to-detector"):
        carm(0, 0, sid_mm=1300.0)
    with pytest.raises(ValueError, match=r"\(V, 3, 4\)"):
        Cameras.from_projection_matrices(torch.zeros(2, 4, 4, dtype=F64), (4, 3), 1.0)
    with pytest.raises(ValueError, match="NaN"):
        Cameras.from_projection_matrices(torch.full((3, 4), float("nan"), dtype=F64), (4, 3), 1.0)


def test_indexing_concatenate_and_dtype(rng):
    cams = random_cameras(rng, views=5)
    one = cams[2]
    assert len(one) == 1 and one.size_px == (512, 384)
    close(one.world_from_camera[0], cams.world_from_camera[2])
    close(cams[-1].sdd_mm, cams.sdd_mm[4:])
    sub = cams[1:4]
    assert len(sub) == 3
    close(sub.principal_point_px, cams.principal_point_px[1:4])
    both = Cameras.concatenate([cams[3:], cams[:3]])
    close(both.world_from_camera, torch.cat([cams.world_from_camera[3:], cams.world_from_camera[:3]]))
    close(both.pixel_spacing_mm, torch.cat([cams.pixel_spacing_mm[3:], cams.pixel_spacing_mm[:3]]))
    with pytest.raises(ValueError, match="different detector sizes"):
        Cameras.concatenate([cams, carm(0, 0, size_px=(5, 4))])
    low = cams.to(dtype=torch.float32)
    assert low.dtype == torch.float32 and low.sdd_mm.dtype == torch.float32 and low.principal_point_px.dtype == torch.float32
    close(low.projection_matrices().double() / cams.projection_matrices(), torch.ones(5, 3, 4, dtype=F64), 1e-3)
    # scalars broadcast to every view
    c = Cameras(torch.eye(4, dtype=F64).repeat(3, 1, 1), 900.0, 0.5, (10.0, 20.0), (4, 3))
    close(c.sdd_mm, [900.0] * 3)
    close(c.pixel_spacing_mm, [[0.5, 0.5]] * 3)
    close(c.principal_point_px, [[10.0, 20.0]] * 3)


def test_projection_is_differentiable_in_pose_and_intrinsics():
    cams = carm(15, 5, size_px=(6, 4))
    w = cams.world_from_camera.clone().requires_grad_()
    sdd = cams.sdd_mm.clone().requires_grad_()
    c = Cameras(w, sdd, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)
    pix, _ = c.project(torch.tensor([[10.0, 20.0, -5.0]], dtype=F64))
    gw, gs = torch.autograd.grad(pix.sum(), (w, sdd))
    assert gw.abs().max() > 0 and gs.abs().max() > 0


# ---------------------------------------------------------------------------------------------------
# The worked example of docs/geometry.md
# ---------------------------------------------------------------------------------------------------
def test_worked_example_in_docs():
    """Recompute the numbers printed in docs/geometry.md; each must appear there verbatim."""
    cams = Cameras.carm(
        30.0,
        10.0,
        sid_mm=750.0,
        sdd_mm=1200.0,
        size_px=(1024, 768),
        pixel_spacing_mm=0.4,
        isocenter_ras=(10.0, -20.0, 30.0),
        dtype=F64,
    )
    point = torch.tensor([[40.0, -50.0, 80.0]], dtype=F64)
    x, y, z, src = axes(cams)
    cam = cams.camera_from_world()[0] @ torch.tensor([40.0, -50.0, 80.0, 1.0], dtype=F64)
    pix, depth = cams.project(point)

    # hand-checkable values (also derived in the document)
    close(x, [math.cos(math.radians(30)), 0.5, 0.0])
    close(src, [379.3029, -659.6514, -100.2361], 1e-4)
    close(cam[:3], [10.98076, -56.35663, 718.32424], 1e-5)
    close(pix[0, 0], [557.35991, 148.13294], 1e-5)

    def vec(t, digits):
        return "(" + ", ".join(f"{float(c):.{digits}f}" for c in t) + ")"

    expected = [
        vec(x, 6),
        vec(y, 6),
        vec(z, 6),
        vec(src, 3),
        vec(cam[:3], 3),
        vec(pix[0, 0], 3),
        f"{float(depth[0, 0]):.3f}",
        f"{1200.0 / float(depth[0, 0]):.4f}",
        f"{float(cams.principal_point_px[0, 0]):.1f}, {float(cams.principal_point_px[0, 1]):.1f}",
    ]
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    missing = [s for s in expected if s not in text]
    assert not missing, f"docs/geometry.md worked example is out of date; missing {missing}"
    # the projection matrix printed in the document
    for row in cams.projection_matrices()[0]:
        assert "[" + ", ".join(f"{float(c):.4f}" for c in row) + "]" in text


def test_float32_cameras_cast_to_float64_stay_rigid_and_differentiable():
    cams = Cameras.carm([33.3, -71.0], [12.1, 5.0], sid_mm=700, sdd_mm=1100, size_px=(8, 8), pixel_spacing_mm=1.1)
    w32 = cams.world_from_camera.clone().requires_grad_(True)
    cams32 = Cameras(w32, cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)
    cams64 = cams32.to(dtype=torch.float64)  # used to be refused as "not a rigid transform"
    assert cams64.dtype == torch.float64
    assert (cams64.world_from_camera - w32.double()).abs().max() < 1e-6
    r = cams64.world_from_camera[:, :3, :3].detach()
    assert (r.transpose(-1, -2) @ r - torch.eye(3, dtype=torch.float64)).abs().max() < 1e-12
    cams64.source_positions().sum().backward()
    assert w32.grad is not None and w32.grad[:, :3, 3].eq(1).all()
