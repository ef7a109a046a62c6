"""The "bgfit" loss (registration/background.py): the fit recovers a known gray curve plus a known polynomial
background exactly, adding such a background does not change the loss, the mask bounds it, its gradient, and a
registration to an X-ray with a smooth background recovers the pose where MI does not."""

import numpy as np
import pytest
import torch

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.registration import make_loss, register, target_registration_error
from XRayNeRFLib.registration.background import background_basis, background_fit, background_r2
from XRayNeRFLib.registration.simulate import gray_curve, landmarks, perturb_pose
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import as_mu

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _uv(h, w):
    v, u = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    return u, v


def _drr(seed, h=40, w=48):
    """A smooth random image (a few Gaussian blobs), (h, w) float64."""
    g = torch.Generator().manual_seed(seed)
    u, v = _uv(h, w)
    img = torch.zeros(h, w, dtype=torch.float64)
    for _ in range(6):
        cu, cv, s = (torch.rand(3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 2.0, 0.3]) + torch.tensor([-1, -1, 0.1])).tolist()
        img += torch.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * s * s))
    return img


def test_the_fit_recovers_a_gray_curve_plus_a_polynomial_background_exactly():
    """y = cubic(d) + quartic background: R^2 = 1 and the fitted X-ray is y (to rounding); with the background
    degree one too low, or without the cubic term, R^2 < 1."""
    d = _drr(0)
    u, v = _uv(*d.shape)
    background = 0.3 - 0.5 * u + 0.2 * v * v - 0.4 * u**3 * v + 0.25 * v**4
    y = 2.0 * d - 0.6 * d**2 + 0.1 * d**3 + background
    mask = torch.rand(d.shape, generator=torch.Generator().manual_seed(3)) > 0.2
    r2, fit = background_fit(d, y, mask, drr_degree=3, background_degree=4)
    assert float(r2) == pytest.approx(1.0, abs=1e-10)
    assert torch.allclose(fit, y[mask], atol=1e-9)
    assert float(background_fit(d, y, mask, drr_degree=3, background_degree=3)[0]) < 1 - 1e-4
    assert float(background_fit(d, y, mask, drr_degree=2, background_degree=4)[0]) < 1 - 1e-6


def test_a_polynomial_background_does_not_change_the_loss_and_the_mask_bounds_it():
    d, x = _drr(0), _drr(1)
    u, v = _uv(*d.shape)
    mask = torch.ones(d.shape, dtype=torch.bool)
    mask[:, :8] = False
    y = torch.tanh(x) + 0.05 * torch.rand(d.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    r2 = background_r2(d, y, mask)
    assert 0.0 < float(r2) < 0.99
    shifted = y + 3.0 - 2.0 * u * v + 0.7 * u**4
    # The residual is unchanged: 1 - R^2 scales by the X-ray's variance ratio only (no pose in it).
    _, fit = background_fit(d, y, mask)
    _, fit_shifted = background_fit(d, shifted, mask)
    assert torch.allclose(shifted[mask] - fit_shifted, y[mask] - fit, atol=1e-9)
    var = lambda t: float(((t[mask] - t[mask].mean()) ** 2).sum())  # noqa: E731
    assert float(1 - background_r2(d, shifted, mask)) * var(shifted) == pytest.approx(float(1 - r2) * var(y), rel=1e-8)
    garbage = torch.where(mask, y, 100.0 * torch.rand(d.shape, dtype=torch.float64))
    assert float(background_r2(d, garbage, mask)) == pytest.approx(float(r2), abs=1e-12)
    # Batched (B, H, W) with a per-image mask; identical images are the optimum (loss 0).
    loss = make_loss("bgfit")
    out = loss(torch.stack([d, x]), d, torch.stack([mask, mask]))
    assert out.shape == (2,) and float(out[0]) == pytest.approx(0.0, abs=1e-9) and float(out[1]) > 1e-3
    assert background_basis(mask, 2).shape == (int(mask.sum()), 6)
    few = torch.zeros_like(mask)
    few[0, :20] = True  # 20 pixels for 15 + 3 coefficients
    with pytest.raises(ValueError, match="pixels"):
        background_r2(d, y, few)


def test_gradient_through_the_fit():
    d = _drr(0, 9, 11).requires_grad_(True)
    y = _drr(1, 9, 11) + 0.3 * _drr(2, 9, 11) ** 2
    mask = torch.rand(9, 11, generator=torch.Generator().manual_seed(1)) > 0.1
    assert torch.autograd.gradcheck(lambda t: background_r2(t, y, mask, background_degree=2), (d,))


def test_registers_an_xray_with_a_smooth_background_where_mi_does_not(chest_ct_48):
    """Siddon line integrals of the 48^3 chest CT under a gray curve (gamma 0.8) plus a smooth background (a tilt
    and a wide bump, together half the anatomy's contrast): "bgfit" recovers the pose under 1 mm of mTRE, MI with
    its defaults ends far off (> 5 mm)."""
    vol = as_mu(chest_ct_48)
    centre = vol.center_ras().double()
    cam = Cameras.carm(0.0, 0.0, sid_mm=650, sdd_mm=1020, size_px=(64, 64), pixel_spacing_mm=8.0, isocenter_ras=centre, dtype=torch.float64)
    with torch.no_grad():
        line = render(vol, cam.to(dtype=torch.float32), renderer="siddon")[0].double()
    clean = gray_curve(line, gamma=0.8)
    u, v = _uv(64, 64)
    bump = torch.exp(-((u - 0.3) ** 2 + (v + 0.4) ** 2) / (2 * 0.6**2))
    image = (clean + float(clean.max() - clean.min()) * (0.2 * u + 0.3 * bump)).float()
    lms = landmarks(vol, 20, seed=0)
    w0 = perturb_pose(cam.world_from_camera[0], centre, 5.0, 10.0, np.random.default_rng(1))
    init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)

    def mtre(loss):
        res = register(vol, image, init, levels=(4, 2, 1), loss=loss)
        return float(target_registration_error(res.world_from_camera, cam.world_from_camera[0], lms).mean())

    with_fit, with_mi = mtre("bgfit"), mtre("mi")
    assert with_fit < 1.0 and with_mi > 5.0, (with_fit, with_mi)
