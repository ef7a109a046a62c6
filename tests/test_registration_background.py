"""The registration's smooth-background removal (registration/background.py): what it removes exactly (a
constant, a plane), that the mask bounds it, and that a registration to an X-ray plus a smooth background
recovers the pose as well as to the X-ray alone."""

import numpy as np
import pytest
import torch

from XRayNeRFLib.geometry import Cameras
from XRayNeRFLib.registration import register, target_registration_error
from XRayNeRFLib.registration.background import highpass, lowpass
from XRayNeRFLib.registration.simulate import landmarks, perturb_pose
from XRayNeRFLib.render import render
from XRayNeRFLib.volume import as_mu


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _plane(h, w, a, b, c):
    rows = torch.arange(h, dtype=torch.float64)[:, None]
    cols = torch.arange(w, dtype=torch.float64)[None, :]
    return (a + b * rows + c * cols).expand(h, w)


def test_a_constant_and_a_plane_drop_out_away_from_the_mask_edge():
    """G * m = 1 and the Gaussian's centroid is the pixel itself where the Gaussian's reach (ceil(3 sigma) + 1)
    lies inside the mask: there the low-pass of a plane is the plane, so highpass(x + plane) = highpass(x)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 48, 56, generator=g, dtype=torch.float64)
    mask = torch.zeros(48, 56, dtype=torch.bool)
    mask[4:44, 3:53] = True
    sigma = 2.5
    plane = torch.stack([_plane(48, 56, 3.0, 0.0, 0.0), _plane(48, 56, -1.0, 0.2, -0.07)])
    r = 9  # > 3 sigma: the Gaussian's mass beyond is below 1e-4 of it
    inner = torch.zeros_like(mask)
    inner[4 + r : 44 - r, 3 + r : 53 - r] = True
    diff = highpass(x + plane, mask, sigma) - highpass(x, mask, sigma)
    assert float(diff[:, inner].abs().max()) < 1e-3 * float(plane.abs().max())
    assert float((lowpass(plane, mask, sigma) - plane)[:, inner].abs().max()) < 1e-3
    # A constant drops out everywhere in the mask, its edges included (the normalisation divides by G * m).
    const = highpass(x + 5.0, mask, sigma) - highpass(x, mask, sigma)
    assert float(const.abs().max()) < 1e-9


def test_zero_outside_the_mask_and_blind_to_it():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 32, 40, generator=g, dtype=torch.float64)
    mask = torch.rand(32, 40, generator=g) > 0.3
    other = torch.where(mask, x, 100.0 * torch.rand(1, 32, 40, generator=g, dtype=torch.float64))
    a, b = highpass(x, mask, 3.0), highpass(other, mask, 3.0)
    assert torch.equal(a[:, ~mask], torch.zeros_like(a[:, ~mask]))
    assert torch.allclose(a, b, atol=1e-10)
    with pytest.raises(ValueError, match="sigma_px > 0"):
        lowpass(x, mask, 0.0)


def test_gradient_through_the_highpass():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(2, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(9, 11, generator=g) > 0.2
    assert torch.autograd.gradcheck(lambda t: highpass(t, mask, 1.5), (x,))


def test_a_plane_background_on_line_integrals_drops_out_of_the_registration(chest_ct_48):
    """The X-ray as line integrals (a linear detector: the DRR's own scale, Siddon as the target's projector) plus a
    tilted plane as strong as the anatomy's contrast. Without ``background_sigma_px`` MI is pulled far off (> 20 mm);
    with it the pose comes back under 2 mm. Not as close as without the plane (under 1 mm): within ~3 sigma of the
    mask's edges (the CT-coverage mask, the image border) the low-pass of a plane is the plane at the Gaussian
    weight's centroid, not at the pixel, so a residual of the plane stays there."""
    vol = as_mu(chest_ct_48)
    centre = vol.center_ras().double()
    cam = Cameras.carm(0.0, 0.0, sid_mm=650, sdd_mm=1020, size_px=(64, 64), pixel_spacing_mm=8.0, isocenter_ras=centre, dtype=torch.float64)
    with torch.no_grad():
        clean = render(vol, cam.to(dtype=torch.float32), renderer="siddon")[0]
    span = float(clean.max() - clean.min())
    image = clean + span * _plane(64, 64, 0.0, 0.4 / 63, -0.6 / 63).float()
    lms = landmarks(vol, 20, seed=0)
    w0 = perturb_pose(cam.world_from_camera[0], centre, 5.0, 10.0, np.random.default_rng(1))
    init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)

    def mtre(img, sigma):
        res = register(vol, img, init, levels=(4, 2, 1), background_sigma_px=sigma)
        return float(target_registration_error(res.world_from_camera, cam.world_from_camera[0], lms).mean())

    clean_mtre, removed, kept = mtre(clean, 4.0), mtre(image, 4.0), mtre(image, None)
    assert clean_mtre < 1.0 and removed < 2.0 and kept > 20.0, (clean_mtre, removed, kept)
    with pytest.raises(ValueError, match="background_sigma_px"):
        register(vol, clean, init, levels=(4, 2, 1), background_sigma_px=-1.0)
