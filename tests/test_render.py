"""Renderer tests: analytic line integrals (box, ellipsoid, Gaussian), Siddon vs trilinear, linearity and
the adjoint, gradients (volume, pose, intrinsics), chunking / pixel subsets / dtype invariance, devices,
progress and cancellation, Beer-Lambert, and input errors.

Conventions: float64 unless a test is about float32; tiny volumes so the file runs in seconds.
All analytic references come from tests/conftest.py (numpy formulas, independent of the renderer).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import (
    affine,
    box_volume,
    ellipsoid_volume,
    gaussian_line_integral,
    gaussian_volume,
    random_rotation,
    se3_exp,
    segment_box_length_mm,
    segment_cameras,
    segment_ellipsoid_length_mm,
)

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.progress import Cancelled, Progress
from XRayNeRFLib.render import IndexRays, beer_lambert, prepare_rays, prepared_bytes, render, render_prepared
from XRayNeRFLib.volume import Volume

METHODS = ("siddon", "trilinear")
F64 = torch.float64


def centred_affine(shape_kji, spacing, rotation=None, center=(0.0, 0.0, 0.0)) -> np.ndarray:
    """ras_from_ijk whose grid centre lands on ``center``."""
    a = affine(spacing, rotation)
    k, j, i = shape_kji
    a[:3, 3] = np.asarray(center) - a[:3, :3] @ np.array([(i - 1) / 2.0, (j - 1) / 2.0, (k - 1) / 2.0])
    return a


def to_ras(a: np.ndarray, ijk: np.ndarray) -> np.ndarray:
    return ijk @ a[:3, :3].T + a[:3, 3]


def pixel_segments(cams: Cameras):
    """Source and pixel-centre positions (R, 3) of every ray of a full render, in render's order."""
    n = cams.width * cams.height
    grid = cams.pixel_grid().reshape(1, -1, 2).expand(len(cams), -1, -1)
    src = cams.source_positions()[:, None, :].expand(-1, n, -1).reshape(-1, 3)
    return src.detach().numpy(), cams.pixel_to_world(grid).reshape(-1, 3).detach().numpy()


# ---------------------------------------------------------------------------------------------------
# Analytic line integrals
# ---------------------------------------------------------------------------------------------------
BOX_SHAPE = (9, 11, 10)  # (K, J, I)
BOX_LO, BOX_HI = (2, 3, 1), (7, 8, 6)  # (i, j, k) inclusive voxel range
BOX_MU = 0.7


def box_rays(a: np.ndarray, rng: np.random.Generator):
    """A mix of segments (RAS mm) exercising the cases Siddon must get exactly right, with the index
    space chosen first and mapped through ``a`` (so oblique / anisotropic grids are covered)."""
    lo = np.array(BOX_LO, float) - 0.5
    hi = np.array(BOX_HI, float) + 0.5
    k, j, i = BOX_SHAPE
    n = 60
    # 1. generic: both ends far outside the grid, aimed through the box
    inside = rng.uniform(lo, hi, (n, 3))
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1)[:, None]
    o1, e1 = inside - 30 * d, inside + 30 * d
    # 2. source inside the box, 3. detector pixel inside the box, 4. both inside
    o2, e2 = rng.uniform(lo, hi, (n, 3)), rng.uniform(-20, 30, (n, 3))
    o3, e3 = rng.uniform(-20, 30, (n, 3)), rng.uniform(lo, hi, (n, 3))
    o4, e4 = rng.uniform(lo, hi, (n, 3)), rng.uniform(lo, hi, (n, 3))
    # 5. exactly parallel to each index axis (both directions), through random points of the grid
    par_o, par_e = [], []
    for axis, size in zip(range(3), (i, j, k)):
        for sign in (1.0, -1.0):
            p = rng.uniform(-0.4, np.array([i, j, k]) - 0.6, (10, 3))
            a0, a1 = p.copy(), p.copy()
            a0[:, axis] = -5.0 if sign > 0 else size + 5.0
            a1[:, axis] = size + 5.0 if sign > 0 else -5.0
            par_o.append(a0)
            par_e.append(a1)
    # 6. parallel to an axis and lying exactly on voxel faces inside the box (a tie between two voxels of
    #    equal value: either choice is right), then two rays through voxel centres (along k, along i)
    o6 = np.array([[3.5, 5.0, -4.0], [4.0, 5.5, -4.0], [3.0, 5.0, -4.0], [-3.0, 5.0, 3.0]])
    e6 = np.array([[3.5, 5.0, 14.0], [4.0, 5.5, 14.0], [3.0, 5.0, 14.0], [14.0, 5.0, 3.0]])
    # 7. misses: segments that pass beside the box, and segments that stop before reaching it
    o7 = np.array([[-5.0, -5.0, -5.0], [20.0, 20.0, 20.0], [3.0, 5.0, -30.0], [-20.0, 5.0, 3.0]])
    e7 = np.array([[-5.0, 20.0, -5.0], [20.0, -5.0, 20.0], [3.0, 5.0, -2.0], [-1.0, 5.0, 3.0]])
    o = np.concatenate([o1, o2, o3, o4, *par_o, o6, o7])
    e = np.concatenate([e1, e2, e3, e4, *par_e, e6, e7])
    return to_ras(a, o), to_ras(a, e), len(o7)


@pytest.mark.parametrize(
    "spacing, oblique",
    [((1.0, 1.0, 1.0), False), ((1.3, 0.8, 1.7), False), ((1.3, 0.8, 1.7), True)],
    ids=["isotropic", "anisotropic", "oblique-anisotropic"],
)
def test_siddon_box_exact(spacing, oblique, rng):
    a = affine(spacing, random_rotation(rng) if oblique else None, origin=(-5.0, 3.0, 2.0))
    vol = box_volume(BOX_SHAPE, BOX_LO, BOX_HI, BOX_MU, a)
    src, tgt, n_miss = box_rays(a, rng)
    expected = BOX_MU * segment_box_length_mm(src, tgt, a, BOX_LO, BOX_HI)
    got = render(vol, segment_cameras(src, tgt), renderer="siddon").reshape(-1).numpy()
    assert (expected > 0.5).sum() > 250  # most of the 312 rays really cross the box
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)
    assert np.all(got[-n_miss:] == 0.0)  # misses are exactly zero
    # a ray along the k axis through voxel centres crosses 6 voxels (k = 1..6) of length spacing_k each
    assert got[-n_miss - 2] == pytest.approx(BOX_MU * 6 * spacing[2], abs=1e-12)


def test_trilinear_box_interior_exact(rng):
    """Trilinear (Joseph-type) on a box: for rays that cross the box through the two faces perpendicular
    to their dominant axis and stay more than half a voxel inside the other faces, every in-plane
    bilinear sample sees only box voxels, so the slab quadrature of a constant is exact. Stated error:
    1e-10 (measured ~1e-14), also with end points inside the box and 2 samples per voxel."""
    a = affine((1.3, 0.8, 1.7), random_rotation(rng), origin=(-5.0, 3.0, 2.0))
    shape, lo, hi = (16, 16, 16), (2, 2, 2), (13, 13, 13)  # box index region [1.5, 13.5]^3
    vol = box_volume(shape, lo, hi, BOX_MU, a)
    n = 120
    o = np.stack([rng.uniform(4, 11, n), rng.uniform(4, 11, n), np.full(n, -10.0)], 1)
    e = np.stack([o[:, 0] + rng.uniform(-1, 1, n), o[:, 1] + rng.uniform(-1, 1, n), np.full(n, 25.0)], 1)
    e[:30, 2] = rng.uniform(3, 12, 30)  # detector pixel inside the box
    o[30:60, 2] = rng.uniform(3, 12, 30)  # source inside the box
    o[60:90], e[60:90] = e[60:90].copy(), o[60:90].copy()  # travelling towards -k
    src, tgt = to_ras(a, o), to_ras(a, e)
    expected = BOX_MU * segment_box_length_mm(src, tgt, a, lo, hi)
    cams = segment_cameras(src, tgt)
    for spv in (1, 2):
        got = render(vol, cams, renderer="trilinear", samples_per_voxel=spv).reshape(-1).numpy()
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-10)


def test_both_renderers_end_the_ct_at_its_voxel_faces(rng):
    """The CT's boundary convention (docs/geometry.md), shared by both renderers: the volume is its voxel
    samples extended by zero, so a ray crossing the box gets its mass up to the outer voxel faces.
    A volume of ones, rays parallel to k (the trilinear renderer's planes are along k, so its in-plane
    samples lie at the ray's (i, j)) swept across the i faces: (1) inside the hull of the voxel centres
    both give the exact chord K * spacing_k; (2) integrated over the sweep, both give I voxels of mass
    (Siddon: a box ending at the faces; trilinear: the same mass, its edge falling linearly over the
    voxel around each face). RTK's Joseph, which stops at the outermost voxel centres, would miss half
    a voxel at each face: (I - 1) / I of the mass."""
    shape = (6, 7, 8)  # K, J, I
    a = affine((1.2, 0.9, 2.5), random_rotation(rng), origin=(4.0, -3.0, 7.0))
    vol = Volume(torch.ones(shape, dtype=F64), torch.from_numpy(a), "mu")
    step = 0.01
    ci = np.arange(-1.5, 8.5 + step / 2, step)  # sweep across both i faces (box: -0.5 .. 7.5)
    ij = np.stack([ci, np.full_like(ci, 3.0)], 1)
    o = np.concatenate([ij, np.full((len(ij), 1), -4.0)], 1)
    e = np.concatenate([ij, np.full((len(ij), 1), 10.0)], 1)
    cams = segment_cameras(to_ras(a, o), to_ras(a, e))
    chord = 6 * 2.5
    hull = (ci >= 0.0) & (ci <= 7.0)
    for method in METHODS:
        got = render(vol, cams, renderer=method).reshape(-1).numpy()
        np.testing.assert_allclose(got[hull], chord, rtol=0, atol=1e-9, err_msg=method)
        mass = float(got.sum() * step) / chord  # in voxels along i
        assert mass == pytest.approx(8.0, abs=0.03), f"{method}: {mass:.3f} voxels of mass, expected 8 (7 would be RTK's)"
        assert np.all(got[(ci < -1.0) | (ci > 8.0)] == 0.0), method


def test_ellipsoid_error_shrinks_with_resolution(rng):
    """Voxelised ellipsoid (voxel-centre inside test) vs the analytic chord. The staircase boundary makes
    the error first order in the voxel size. Measured mean |error| (line integrals ~0.34 on average):
    Siddon 0.0240 at 16^3 (h = 2.75 mm) -> 0.0120 at 32^3; trilinear 0.0198 -> 0.0093."""
    center, axes, mu = np.array([1.0, -2.0, 3.0]), np.array([18.0, 12.0, 9.0]), 0.02
    rot = random_rotation(np.random.default_rng(1))
    n = 300
    p = center + rng.uniform(-1, 1, (n, 3)) * axes * 0.8
    d = rng.normal(size=(n, 3))
    d /= np.linalg.norm(d, axis=1)[:, None]
    src, tgt = p - 60 * d, p + 60 * d
    expected = mu * segment_ellipsoid_length_mm(src, tgt, center, axes)
    assert (expected > 0).mean() > 0.9
    cams = segment_cameras(src, tgt)
    errors = {}
    for size in (16, 32):
        h = 44.0 / size
        a = centred_affine((size,) * 3, (h, h, h), rot, center)
        vol = ellipsoid_volume((size,) * 3, a, center, axes, mu)
        for method in METHODS:
            got = render(vol, cams, renderer=method).reshape(-1).numpy()
            errors[method, size] = np.abs(got - expected).mean()
    for method in METHODS:
        assert errors[method, 16] < 0.03, errors  # < 9 % of the mean line integral
        assert errors[method, 32] < 0.6 * errors[method, 16], errors  # first order: ratio ~0.5


def test_siddon_trilinear_agree_on_smooth_volume(rng):
    """Gaussian blob (sigma 6 mm) on an oblique, anisotropic grid, 4 C-arm views, against the exact erf
    integral. Siddon (piecewise-constant voxels) is first order in h / sigma, trilinear second order.
    Measured max error / max line integral at h = 2 mm: Siddon-trilinear 7.1 %, Siddon-exact 7.9 %,
    trilinear-exact 2.1 %; at h = 1 mm: 3.3 %, 3.2 %, 0.56 %."""
    center, sigma = (1.0, -1.0, 2.0), 6.0
    cams = Cameras.carm(
        [0, 37, -70, 120],
        [0, 15, -20, 40],
        sid_mm=200,
        sdd_mm=350,
        size_px=(16, 12),
        pixel_spacing_mm=(3.0, 3.5),
        dtype=F64,
    )
    src, tgt = pixel_segments(cams)
    exact = gaussian_line_integral(src, tgt, center, sigma)
    scale = exact.max()
    rel = {}
    rot = random_rotation(rng)
    for size in (24, 48):
        h = 48.0 / size
        a = centred_affine((size,) * 3, (h, 1.2 * h, 0.9 * h), rot)
        vol = gaussian_volume((size,) * 3, a, center, sigma)
        s = render(vol, cams, renderer="siddon").reshape(-1).numpy()
        t = render(vol, cams, renderer="trilinear").reshape(-1).numpy()
        rel[size] = (np.abs(s - t).max() / scale, np.abs(s - exact).max() / scale, np.abs(t - exact).max() / scale)
    assert rel[24][0] < 0.10 and rel[24][1] < 0.10 and rel[24][2] < 0.03, rel
    assert rel[48][0] < 0.045 and rel[48][1] < 0.045 and rel[48][2] < 0.008, rel
    assert rel[48][2] < 0.35 * rel[24][2], rel  # trilinear: second order (measured ratio 0.26)


# ---------------------------------------------------------------------------------------------------
# Linearity, adjoint, gradients
# ---------------------------------------------------------------------------------------------------
SMALL_SHAPE = (4, 5, 6)  # (K, J, I)


def small_setup(views: int = 2):
    """Tiny oblique grid (4x5x6 voxels of 2 mm) and a 3x4 detector whose rays all cross it."""
    a = centred_affine(SMALL_SHAPE, (2.0, 1.7, 2.3), random_rotation(np.random.default_rng(5)))
    cams = Cameras.carm(
        [10.0, 75.0][:views],
        [5.0, -30.0][:views],
        sid_mm=60,
        sdd_mm=100,
        size_px=(4, 3),
        pixel_spacing_mm=(2.5, 2.5),
        dtype=F64,
    )
    return torch.tensor(a), cams


@pytest.mark.parametrize("method", METHODS)
def test_linear_and_adjoint(method):
    """A x = render(x) must be linear in the volume, and the autograd backward must be its transpose.

    A is built column by column from forward renders of unit volumes (120 of them), independently of
    autograd; A^T y from autograd (grad of <A x0, y> w.r.t. x0) must equal the explicit A^T y, and the
    dot-product test <A x, y> = <x, A^T y> must hold for an x different from x0."""
    a, cams = small_setup()
    gen = torch.Generator().manual_seed(0)
    n_vox = math.prod(SMALL_SHAPE)

    def forward(x):
        return render(Volume(x.reshape(SMALL_SHAPE), a), cams, renderer=method).reshape(-1)

    x1 = torch.rand(n_vox, generator=gen, dtype=F64)
    x2 = torch.rand(n_vox, generator=gen, dtype=F64)
    lin = forward(2.5 * x1 - 0.75 * x2)
    np.testing.assert_allclose(lin, 2.5 * forward(x1) - 0.75 * forward(x2), rtol=0, atol=1e-12)
    assert forward(x1).abs().min() > 0.1  # every ray crosses the volume

    matrix = torch.stack([forward(col) for col in torch.eye(n_vox, dtype=F64)], dim=1)  # (rays, voxels)
    np.testing.assert_allclose(forward(x1), matrix @ x1, rtol=0, atol=1e-12)

    y = torch.randn(matrix.shape[0], generator=gen, dtype=F64)
    x0 = torch.rand(n_vox, generator=gen, dtype=F64, requires_grad=True)
    (at_y,) = torch.autograd.grad((forward(x0) * y).sum(), x0)
    np.testing.assert_allclose(at_y, matrix.T @ y, rtol=0, atol=1e-12)
    lhs = float((forward(x1) * y).sum())
    rhs = float((x1 * at_y).sum())
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)
    assert abs(lhs) > 1e-3


@pytest.mark.parametrize("method", METHODS)
def test_gradcheck_volume(method):
    a, cams = small_setup()
    mu = torch.rand(SMALL_SHAPE, dtype=F64, generator=torch.Generator().manual_seed(1)).mul(0.02).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: render(Volume(m, a), cams, renderer=method), (mu,), eps=1e-6, atol=1e-8)


def smooth_setup():
    """A smooth volume (Gaussian blob, zero to 1e-5 at the grid border) and one view of 3x4 pixels whose
    rays pass through its middle, so that no sample crosses the grid border under small perturbations."""
    shape = (10, 11, 12)
    a = centred_affine(shape, (2.0, 1.8, 1.6), random_rotation(np.random.default_rng(7)))
    vol = gaussian_volume(shape, a, (0.5, -0.3, 0.2), 3.5)
    cams = Cameras.carm(23.0, -11.0, sid_mm=80, sdd_mm=130, size_px=(4, 3), pixel_spacing_mm=(1.1, 1.3), dtype=F64)
    cams.principal_point_px = cams.principal_point_px + torch.tensor([[0.37, -0.21]], dtype=F64)
    return vol, cams


def with_pose(cams: Cameras, xi: torch.Tensor) -> Cameras:
    """Cameras whose pose is perturbed by the twist xi (left-multiplied in world coordinates)."""
    return Cameras(se3_exp(xi)[None] @ cams.world_from_camera, cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)


def test_gradcheck_trilinear_pose_and_intrinsics():
    vol, cams = smooth_setup()
    xi = torch.tensor([0.01, -0.02, 0.015, 0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
    out = render(vol, with_pose(cams, xi), renderer="trilinear")
    assert out.min() > 0.05  # rays really cross the blob
    assert torch.autograd.gradcheck(lambda p: render(vol, with_pose(cams, p), renderer="trilinear"), (xi,), eps=1e-6, atol=1e-7)

    def intrinsics(sdd, pp):
        c = Cameras(cams.world_from_camera, sdd, cams.pixel_spacing_mm, pp, cams.size_px)
        return render(vol, c, renderer="trilinear")

    sdd = cams.sdd_mm.clone().requires_grad_()
    pp = cams.principal_point_px.clone().requires_grad_()
    assert torch.autograd.gradcheck(intrinsics, (sdd, pp), eps=1e-6, atol=1e-7)
    # the gradients are not trivially zero
    (g_xi,) = torch.autograd.grad(out.sum(), xi)
    assert g_xi.abs().max() > 1e-3


def test_trilinear_forward_mode_derivatives_match_central_differences():
    """Forward-mode derivatives (render.trilinear._PlaneSample: torch's grid sampling has none) of the trilinear
    render w.r.t. pose, intrinsics and mu, checked by gradcheck against central differences; the sampling
    function's own reverse-mode derivatives too."""
    from XRayNeRFLib.render.trilinear import _PlaneSample

    vol, cams = smooth_setup()
    xi = torch.tensor([0.01, -0.02, 0.015, 0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
    pose = lambda p: render(vol, with_pose(cams, p), renderer="trilinear")  # noqa: E731
    assert torch.autograd.gradcheck(pose, (xi,), eps=1e-6, atol=1e-7, check_forward_ad=True, check_backward_ad=False)

    def intrinsics(sdd, pp):
        c = Cameras(cams.world_from_camera, sdd, cams.pixel_spacing_mm, pp, cams.size_px)
        return render(vol, c, renderer="trilinear")

    args = (cams.sdd_mm.clone().requires_grad_(), cams.principal_point_px.clone().requires_grad_())
    assert torch.autograd.gradcheck(intrinsics, args, eps=1e-6, atol=1e-7, check_forward_ad=True, check_backward_ad=False)
    mu = vol.data.clone().requires_grad_()
    volume = lambda m: render(Volume(m, vol.ras_from_ijk), cams, renderer="trilinear")  # noqa: E731
    assert torch.autograd.gradcheck(volume, (mu,), eps=1e-6, atol=1e-8, check_forward_ad=True, check_backward_ad=False)
    g = torch.Generator().manual_seed(3)
    planes = torch.rand(4, 1, 5, 6, dtype=F64, generator=g).requires_grad_()
    grid = (torch.rand(4, 1, 7, 2, dtype=F64, generator=g) * 2.2 - 1.1).requires_grad_()  # some outside (zeros padding)
    assert torch.autograd.gradcheck(_PlaneSample.apply, (planes, grid), eps=1e-6, atol=1e-7, check_forward_ad=True)


def test_siddon_pose_gradient_matches_central_differences():
    """Siddon is piecewise smooth in the pose: smooth as long as the set of crossed voxels (and the
    order of plane crossings) does not change. With generic rays and a 1e-7 step no ray crosses a
    voxel corner, so autograd must match central finite differences."""
    vol, cams = smooth_setup()
    xi0 = torch.tensor([0.01, -0.02, 0.015, 0.3, -0.2, 0.1], dtype=F64, requires_grad=True)
    out = render(vol, with_pose(cams, xi0), renderer="siddon").reshape(-1)
    jac = torch.stack([torch.autograd.grad(out[r], xi0, retain_graph=True)[0] for r in range(out.numel())])
    step = 1e-7
    fd = torch.zeros_like(jac)
    with torch.no_grad():
        for p in range(6):
            e = torch.zeros(6, dtype=F64)
            e[p] = step
            fd[:, p] = (
                render(vol, with_pose(cams, xi0 + e), renderer="siddon").reshape(-1)
                - render(vol, with_pose(cams, xi0 - e), renderer="siddon").reshape(-1)
            ) / (2 * step)
    np.testing.assert_allclose(jac, fd, rtol=1e-5, atol=1e-7)
    assert jac.abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------------
# Invariances: chunking, pixel subsets, dtype, device
# ---------------------------------------------------------------------------------------------------
def invariance_setup():
    a = centred_affine((8, 9, 10), (1.5, 1.2, 1.8), random_rotation(np.random.default_rng(3)))
    vol = gaussian_volume((8, 9, 10), a, (0.5, 0.0, -0.5), 4.0)
    vol.data = vol.data + 0.01 * torch.rand(vol.data.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    cams = Cameras.carm([0.0, 40.0, -95.0], [0.0, 20.0, 5.0], sid_mm=70, sdd_mm=120, size_px=(7, 5), pixel_spacing_mm=2.0, dtype=F64)
    return vol, cams


@pytest.mark.parametrize("method", METHODS)
def test_chunking_and_pixel_subsets(method):
    vol, cams = invariance_setup()
    full = render(vol, cams, renderer=method)
    assert full.shape == (3, 5, 7)
    assert full.min() > 0.01
    one_ray_chunks = render(vol, cams, renderer=method, max_memory_mb=1e-9)
    np.testing.assert_allclose(one_ray_chunks, full, rtol=0, atol=1e-12)
    few_ray_chunks = render(vol, cams, renderer=method, max_memory_mb=0.005)
    np.testing.assert_allclose(few_ray_chunks, full, rtol=0, atol=1e-12)

    gen = torch.Generator().manual_seed(4)
    cols = torch.randint(0, 7, (6,), generator=gen)
    rows = torch.randint(0, 5, (6,), generator=gen)
    shared = torch.stack([cols, rows], dim=-1).to(F64)  # (N, 2) [column, row]
    sub = render(vol, cams, renderer=method, pixels=shared)
    assert sub.shape == (3, 6)
    np.testing.assert_allclose(sub, full[:, rows, cols], rtol=0, atol=1e-12)
    per_view = torch.stack([shared, shared.flip(0), shared.roll(2, 0)])  # (V, N, 2)
    sub = render(vol, cams, renderer=method, pixels=per_view)
    for v in range(3):
        c, r = per_view[v, :, 0].long(), per_view[v, :, 1].long()
        np.testing.assert_allclose(sub[v], full[v, r, c], rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_prepared_rays_render_as_render(method):
    """prepare_rays + render_prepared (rays or trilinear sampling plans built once, marched through several
    volumes) give render's line integrals, in render's view-major order, whole or in one-ray chunks, for
    per-view pixels; with a cache that holds some chunks' plans the rest stay rays."""
    vol, cams = invariance_setup()
    gen = torch.Generator().manual_seed(5)
    px = torch.stack([torch.randint(0, 7, (3, 6), generator=gen), torch.randint(0, 5, (3, 6), generator=gen)], -1).to(F64)
    plan_bytes = 8 * 2 * 10 * 18  # float64 grids: 2 coordinates per plane (at most 10 planes) and ray, 18 rays
    for mb, cache_mb in ((1024.0, 0.0), (1e-9, 0.0), (1024.0, 1.0), (1e-9, 1.0), (1e-9, 0.5 * plan_bytes / 2**20)):
        rays = prepare_rays(vol, cams, px, renderer=method, max_memory_mb=mb, cache_mb=cache_mb)
        assert len(rays) == (1 if mb > 1 else 18)
        plans = [not isinstance(c, IndexRays) for c in rays]
        assert any(plans) == (method == "trilinear" and cache_mb > 0)
        if method == "trilinear" and 0 < cache_mb < 1e-3:
            assert not all(plans) and prepared_bytes(rays) <= cache_mb * 2**20 + 28 * 8 * 18
        for scale in (1.0, 2.5):
            mu = vol.data * scale
            ref = render(Volume(mu, vol.ras_from_ijk, "mu"), cams, renderer=method, pixels=px)
            got = render_prepared(mu, rays, renderer=method).reshape(3, 6)
            np.testing.assert_allclose(got, ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", METHODS)
def test_float32_matches_float64(method):
    vol, cams = invariance_setup()
    ref = render(vol, cams, renderer=method)
    low = render(vol.to(dtype=torch.float32), cams.to(dtype=torch.float32), renderer=method)
    assert low.dtype == torch.float32
    rel = ((low.double() - ref).abs() / ref.abs().max()).max()
    assert rel < 1e-5, float(rel)


@pytest.mark.parametrize("method", METHODS)
def test_sliced_layout_renders_the_same_and_is_sliced_without_a_copy(method):
    """A volume stored in the slicing order of an axis (trilinear.sliced_layout) is the same volume: the same DRRs
    from the three axes' views; its stack along that axis is the stored memory itself."""
    from XRayNeRFLib.render.trilinear import SliceStacks, sliced_layout

    vol, cams = invariance_setup()  # views whose beams run along different index axes
    full = render(vol, cams, renderer=method)
    for axis in range(3):
        data = sliced_layout(vol.data, axis)
        assert torch.equal(data, vol.data)
        assert SliceStacks(data, 1).planes(axis).data_ptr() == data.data_ptr()
        np.testing.assert_allclose(render(Volume(data, vol.ras_from_ijk, vol.units), cams, renderer=method), full, rtol=0, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("method", METHODS)
def test_cuda_matches_cpu(method):
    vol, cams = invariance_setup()
    ref = render(vol, cams, renderer=method)
    gpu_vol = vol.to(device="cuda")
    out = render(gpu_vol, cams, renderer=method)  # cameras are moved to the volume's device
    assert out.device.type == "cuda"
    np.testing.assert_allclose(out.cpu(), ref, rtol=0, atol=1e-10)
    mu = gpu_vol.data.clone().requires_grad_()
    render(Volume(mu, gpu_vol.ras_from_ijk), cams, renderer=method).sum().backward()
    assert mu.grad.device.type == "cuda" and mu.grad.abs().max() > 0


# ---------------------------------------------------------------------------------------------------
# Progress, Beer-Lambert, errors
# ---------------------------------------------------------------------------------------------------
def test_progress_reports_and_cancels():
    vol, cams = invariance_setup()
    seen = []
    out = render(vol, cams, renderer="siddon", max_memory_mb=0.005, progress=lambda p: seen.append(p) or True)
    assert len(seen) >= 2
    assert all(isinstance(p, Progress) for p in seen)
    assert [p.total for p in seen] == [3 * 5 * 7] * len(seen)
    done = [p.done for p in seen]
    assert done == sorted(done) and done[-1] == 105 and seen[-1].fraction == 1.0
    assert out.shape == (3, 5, 7)

    calls = []
    with pytest.raises(Cancelled):
        render(vol, cams, renderer="trilinear", max_memory_mb=0.005, progress=lambda p: calls.append(p) is not None)
    assert len(calls) == 1  # stopped at the first report
    # only False stops: a callback returning None (e.g. a bare logging function) lets the render finish
    calls.clear()
    render(vol, cams, renderer="trilinear", max_memory_mb=0.005, progress=calls.append)
    assert calls[-1].done == 105


def test_beer_lambert_mean_and_poisson():
    p = torch.tensor([0.0, 0.5, 1.0, 3.0], dtype=F64)
    np.testing.assert_allclose(beer_lambert(p, 1000.0), 1000.0 * np.exp(-p.numpy()), rtol=1e-15)
    draws = 20000
    gen = torch.Generator().manual_seed(11)
    counts = beer_lambert(p.repeat(draws, 1), 1000.0, poisson=True, generator=gen)  # (draws, 4)
    mean = 1000.0 * np.exp(-p.numpy())
    assert torch.equal(counts, counts.round())  # integer photon counts
    # the sample mean is within 5 standard errors; the variance of a Poisson variable equals its mean
    np.testing.assert_array_less(np.abs(counts.mean(0).numpy() - mean), 5 * np.sqrt(mean / draws))
    np.testing.assert_allclose(counts.var(0).numpy(), mean, rtol=0.05)
    again = beer_lambert(p.repeat(draws, 1), 1000.0, poisson=True, generator=torch.Generator().manual_seed(11))
    assert torch.equal(counts, again)  # seeded generator: reproducible
    with pytest.raises(ValueError, match="I0"):
        beer_lambert(p, 0.0)


def test_bad_inputs_raise_useful_errors():
    vol, cams = invariance_setup()
    bad = vol.data.clone()
    bad[1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        render(Volume(bad, vol.ras_from_ijk), cams)
    # check_finite=False skips the scan (solvers that check their own iterate): the NaN reaches the rays through it
    centre = vol.data.clone()
    centre[tuple(n // 2 for n in centre.shape)] = float("nan")
    out = render(Volume(centre, vol.ras_from_ijk), cams, check_finite=False)
    assert bool(torch.isnan(out).any()) and bool(torch.isfinite(out).any())
    with pytest.raises(ValueError, match="as_mu"):
        render(Volume(vol.data * 1000 - 1000, vol.ras_from_ijk, "hu"), cams)
    with pytest.raises(ValueError, match="unknown renderer 'joseph'"):
        render(vol, cams, renderer="joseph")
    with pytest.raises(ValueError, match="pixels"):
        render(vol, cams, pixels=torch.zeros(2, 4, 2, dtype=F64))  # 2 views of pixels for 3 cameras
    with pytest.raises(ValueError, match="samples_per_voxel"):
        render(vol, cams, renderer="trilinear", samples_per_voxel=1.5)
