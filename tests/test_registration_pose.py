"""Pose parametrization: SO(3) exp/log, parameter round trips, rotation about the centre, scales,
rigidity checks, gradients, error measures."""

import math

import numpy as np
import pytest
import torch

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.registration.pose import (
    PoseParametrization,
    check_rigid,
    pose_errors,
    so3_exp,
    so3_log,
    target_registration_error,
)


def test_so3_exp_log_round_trip_and_known_rotation():
    rng = np.random.default_rng(0)
    for _ in range(20):
        w = torch.from_numpy(rng.normal(size=3))
        w = w / w.norm() * rng.uniform(0, math.pi - 1e-2)
        r = so3_exp(w)
        assert torch.allclose(r.T @ r, torch.eye(3, dtype=torch.float64), atol=1e-12)
        assert float(torch.linalg.det(r)) == pytest.approx(1.0)
        assert torch.allclose(so3_log(r), w, atol=1e-9)
    # 90 degrees about z maps x to y.
    r = so3_exp(torch.tensor([0, 0, math.pi / 2], dtype=torch.float64))
    assert torch.allclose(r @ torch.tensor([1.0, 0, 0], dtype=torch.float64), torch.tensor([0, 1.0, 0], dtype=torch.float64), atol=1e-12)
    # Near pi and at 0.
    w = torch.tensor([0.0, math.pi - 1e-5, 0.0], dtype=torch.float64)
    assert torch.allclose(so3_log(so3_exp(w)), w, atol=1e-6)
    assert torch.allclose(so3_exp(torch.zeros(3, dtype=torch.float64)), torch.eye(3, dtype=torch.float64))


def test_so3_exp_gradcheck_at_and_away_from_zero():
    for w in (torch.zeros(3, dtype=torch.float64), torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64)):
        assert torch.autograd.gradcheck(so3_exp, (w.clone().requires_grad_(True),))


def carm_pose():
    return Cameras.carm(
        20.0, -10.0, sid_mm=600, sdd_mm=1000, size_px=(8, 8), pixel_spacing_mm=1.0, isocenter_ras=(10.0, -5.0, 30.0), dtype=torch.float64
    ).world_from_camera[0]


def test_parameters_round_trip_and_meaning():
    w0 = carm_pose()
    centre = torch.tensor([12.0, -3.0, 25.0], dtype=torch.float64)
    p = PoseParametrization(w0, centre, rotation_scale_rad=math.radians(2.0), translation_scale_mm=(1.0, 1.0, 5.0))
    x = torch.tensor([1.5, -2.0, 0.7, 3.0, -4.0, 2.0], dtype=torch.float64)
    w = p.world_from_camera(x)
    check_rigid(w)
    assert torch.allclose(p.parameters_of(w), x, atol=1e-9)
    assert torch.allclose(p.world_from_camera(torch.zeros(6, dtype=torch.float64)), w0)
    # Pure rotation: the centre stays fixed in camera coordinates; the angle is |omega| * scale.
    xr = torch.tensor([0.0, 0.0, 5.0, 0, 0, 0], dtype=torch.float64)
    wr = p.world_from_camera(xr)
    cam_centre = lambda w: (torch.linalg.inv(w) @ torch.cat([centre, torch.ones(1, dtype=torch.float64)]))[:3]  # noqa: E731
    assert torch.allclose(cam_centre(wr), cam_centre(w0), atol=1e-9)
    assert pose_errors(wr, w0, centre)["rotation_deg"] == pytest.approx(10.0)
    # Rotation parameter z is about the initial camera's principal ray: its direction is unchanged.
    assert torch.allclose(wr[:3, 2], w0[:3, 2], atol=1e-12)
    # Translation z is along the principal ray, in units of 5 mm.
    xt = torch.tensor([0, 0, 0, 0, 0, 2.0], dtype=torch.float64)
    assert torch.allclose(p.world_from_camera(xt)[:3, 3] - w0[:3, 3], 10.0 * w0[:3, 2], atol=1e-12)
    # The CT correction is the inverse of the camera motion.
    m = w @ torch.linalg.inv(w0)
    assert torch.allclose(p.ct_correction_ras(x) @ m, torch.eye(4, dtype=torch.float64), atol=1e-12)


def test_pose_gradcheck():
    p = PoseParametrization(carm_pose(), torch.zeros(3), math.radians(1.0), 1.0)
    x = torch.tensor([0.5, -0.3, 0.2, 1.0, 2.0, -1.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(p.world_from_camera, (x,))


def test_errors_and_tre():
    w0 = carm_pose()
    centre = torch.tensor([12.0, -3.0, 25.0], dtype=torch.float64)
    p = PoseParametrization(w0, centre)
    w = p.world_from_camera(torch.tensor([0, 0, 0, 3.0, 4.0, 0], dtype=torch.float64))
    e = pose_errors(w, w0, centre)
    assert e["rotation_deg"] == pytest.approx(0.0, abs=1e-9) and e["translation_mm"] == pytest.approx(5.0)
    pts = torch.randn(10, 3, dtype=torch.float64) * 30
    assert torch.allclose(target_registration_error(w, w0, pts), torch.full((10,), 5.0, dtype=torch.float64))
    # A rotation about the centre leaves the centre's TRE at 0 and grows with distance from it.
    w = p.world_from_camera(torch.tensor([0, 3.0, 0, 0, 0, 0], dtype=torch.float64))
    tre = target_registration_error(w, w0, torch.stack([centre, centre + torch.tensor([0, 0, 100.0], dtype=torch.float64)]))
    assert float(tre[0]) == pytest.approx(0.0, abs=1e-9)
    axis = w0[:3, 1]  # rotation parameter y turns about the initial camera's y axis
    v = torch.tensor([0, 0, 100.0], dtype=torch.float64)
    radius = float((v - (v @ axis) * axis).norm())
    assert float(tre[1]) == pytest.approx(2 * radius * math.sin(math.radians(1.5)), rel=1e-9)


def test_non_rigid_and_bad_inputs():
    w = carm_pose().clone()
    with pytest.raises(ValueError, match="not rigid"):
        check_rigid(w @ torch.diag(torch.tensor([1.1, 1.0, 1.0, 1.0], dtype=torch.float64)), "init")
    with pytest.raises(ValueError, match="reflection"):
        check_rigid(w @ torch.diag(torch.tensor([-1.0, 1.0, 1.0, 1.0], dtype=torch.float64)), "init")
    with pytest.raises(ValueError, match="4x4"):
        check_rigid(torch.eye(3), "init")
    bad = w.clone()
    bad[3, 0] = 1.0
    with pytest.raises(ValueError, match="last row"):
        check_rigid(bad, "init")
    with pytest.raises(ValueError, match="rotation centre"):
        PoseParametrization(w, torch.zeros(2))


def _rounded(m: torch.Tensor, digits: int) -> torch.Tensor:
    """Each entry rounded to ``digits`` significant digits (as a person or a float32 printer writes it)."""
    return torch.tensor([[float(f"{v:.{digits - 1}e}") for v in row] for row in m.tolist()], dtype=torch.float64)


def test_rounded_poses_are_snapped_to_rigid():
    """A pose born in float32 or written with 7 significant digits is not rigid at float64 precision
    (~1e-7 off) but must be accepted everywhere a pose is read, snapped to the nearest rigid matrix:
    the snap is exactly rigid (Cameras' float64 check passes) and within rounding of the input."""
    from XRayNeRFLib.geometry import nearest_rigid

    w = carm_pose()
    for m in (w.float().double(), _rounded(w, 7)):
        r = m[:3, :3]
        assert float((r.T @ r - torch.eye(3, dtype=torch.float64)).abs().max()) > 1e-9  # really off at float64
        with pytest.raises(ValueError):
            Cameras(
                m[None],
                torch.tensor([1000.0], dtype=torch.float64),
                torch.ones(1, 2, dtype=torch.float64),
                torch.full((1, 2), 4.0, dtype=torch.float64),
                (8, 8),
            )
        for snapped in (nearest_rigid(m, "init"), check_rigid(m, "init")):
            rs = snapped[:3, :3]
            assert float((rs.T @ rs - torch.eye(3, dtype=torch.float64)).abs().max()) < 1e-13
            assert float(torch.linalg.det(rs)) == pytest.approx(1.0, abs=1e-13)
            assert float((snapped - w).abs().max()) < 1e-5 * 600  # entries within rounding (translations ~600 mm)
            assert float((snapped[:3, :3] - w[:3, :3]).abs().max()) < 1e-6
            Cameras(
                snapped[None],
                torch.tensor([1000.0], dtype=torch.float64),
                torch.ones(1, 2, dtype=torch.float64),
                torch.full((1, 2), 4.0, dtype=torch.float64),
                (8, 8),
            )


def test_real_non_rigid_poses_are_refused_with_geometry_error():
    from XRayNeRFLib.errors import GeometryError
    from XRayNeRFLib.geometry import nearest_rigid

    w = carm_pose()
    shear = torch.eye(4, dtype=torch.float64)
    shear[0, 1] = 1e-3  # 0.1 % shear: small, but 100x the rounding tolerance
    mirror = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    scale = torch.diag(torch.tensor([1.0, 1.0, 1.0 + 1e-4, 1.0], dtype=torch.float64))
    for bad, text in ((w @ shear, "not a rotation"), (w @ mirror, "reflection"), (w @ scale, "not a rotation")):
        with pytest.raises(GeometryError, match=text) as info:
            nearest_rigid(bad, "init pose")
        assert info.value.name == "init pose"
        with pytest.raises(GeometryError, match=text):
            check_rigid(_rounded(bad, 7), "init pose")
