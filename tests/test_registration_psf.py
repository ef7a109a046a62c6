"""The registration's Gaussian PSF (registration/psf.py): against the analytic Gaussian, the identity at sigma 0,
a width per image, gradients in the width (also at 0)."""

import math

import pytest
import torch

from XRayNeRFLib.registration.psf import gaussian_blur, within_reach


def test_blur_of_a_point_is_the_sampled_gaussian():
    """From sigma 1.5 px the band-limited Gaussian (psf.py) is the sampled one (its spectrum beyond Nyquist is
    negligible); at 1 px it differs by a few tenths of a percent of the peak, at 0.5 px it is no longer a point's
    sampled Gaussian (which would have most of its mass in one pixel)."""
    img = torch.zeros(3, 41, 37, dtype=torch.float64)
    img[:, 20, 18] = 1.0
    sigma = torch.tensor([1.5, 2.5, 1.0], dtype=torch.float64)
    out = gaussian_blur(img, sigma, pad_px=10)
    rows = torch.arange(41, dtype=torch.float64)[:, None] - 20
    cols = torch.arange(37, dtype=torch.float64)[None, :] - 18
    for b, (s, rel) in enumerate(zip(sigma.tolist(), (1e-4, 1e-4, 1e-2))):
        expected = torch.exp(-(rows**2 + cols**2) / (2 * s * s)) / (2 * math.pi * s * s)
        err = float((out[b] - expected).abs().max() / expected.max())
        assert err < rel, (s, err)
    # Mass: kept exactly by the periodic blur (no padding); the band-limited kernel's faint ringing leaves a
    # little in the cropped padding.
    assert torch.allclose(gaussian_blur(img, sigma, pad_px=0).sum((1, 2)), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(out.sum((1, 2)), torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_zero_width_is_the_identity_and_a_flat_image_stays_flat():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 16, 20, generator=g, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(img, torch.zeros(3, dtype=torch.float64), pad_px=4), img, atol=1e-12)
    flat = torch.full((1, 16, 20), 0.7, dtype=torch.float64)
    assert torch.allclose(gaussian_blur(flat, torch.tensor([1.3], dtype=torch.float64), pad_px=4), flat, atol=1e-12)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        gaussian_blur(img[0], torch.zeros(1), pad_px=4)


def test_gradient_in_the_width_including_zero():
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 9, 11, generator=g, dtype=torch.float64)
    for s0 in (0.0, 0.8):
        sigma = torch.tensor([s0, s0 + 0.3], dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: gaussian_blur(img, s, pad_px=4), (sigma,))


def test_within_reach_keeps_the_pixels_whose_neighbourhood_is_all_inside():
    """Brute force: a pixel stays when every pixel within ``reach`` (square, Chebyshev) is in the mask and on
    the image; checked on a random mask with holes, batched and unbatched."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2, 17, 23, generator=g) > 0.08
    mask[1, 5:9, 3:6] = False
    for reach in (1, 2, 3):
        got = within_reach(mask, reach)
        expect = torch.zeros_like(mask)
        for b in range(2):
            for i in range(17):
                for j in range(23):
                    lo_i, hi_i, lo_j, hi_j = i - reach, i + reach + 1, j - reach, j + reach + 1
                    on_image = lo_i >= 0 and lo_j >= 0 and hi_i <= 17 and hi_j <= 23
                    expect[b, i, j] = on_image and bool(mask[b, lo_i:hi_i, lo_j:hi_j].all())
        assert torch.equal(got, expect), reach
        assert torch.equal(within_reach(mask[0], reach), expect[0])
    assert torch.equal(within_reach(mask, 0), mask)
