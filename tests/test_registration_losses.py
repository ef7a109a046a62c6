"""Registration similarities: optimum at identical images, gradients (gradcheck), invariances
(NCC to affine maps, MI to monotone gray-level curves), masks and errors."""

import math

import pytest
import torch

from XRayNeRFLib.registration.intensity import bin_image, collimator_mask, equalize, invert, log_linearize
from XRayNeRFLib.registration.losses import (
    LOSS_NAMES,
    gradient_ncc,
    make_loss,
    mean_squared_error,
    multiscale_ncc,
    mutual_information,
    ncc,
    patch_ncc,
    ssim,
)


def smooth_image(seed: int, h: int = 40, w: int = 48) -> torch.Tensor:
    """A smooth random image (sum of Gaussian blobs), float64 (h, w)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    img = torch.zeros(h, w, dtype=torch.float64)
    for _ in range(8):
        cy, cx = torch.rand(2, generator=g, dtype=torch.float64) * torch.tensor([h, w])
        s = 3 + 6 * torch.rand(1, generator=g, dtype=torch.float64)
        img += torch.rand(1, generator=g, dtype=torch.float64) * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s**2))
    return img


@pytest.mark.parametrize("name", LOSS_NAMES)
def test_identical_images_are_the_optimum(name):
    a = smooth_image(0)
    loss = make_loss(name)
    at_optimum = float(loss(a, a))
    shifted = torch.roll(a, shifts=(2, 3), dims=(0, 1))
    other = smooth_image(1)
    assert float(loss(shifted, a)) > at_optimum + 1e-3
    assert float(loss(other, a)) > at_optimum + 1e-3
    if name != "mi":
        assert at_optimum == pytest.approx(0.0, abs=1e-9)  # 1 - correlation of identical images


def test_ncc_values():
    a = smooth_image(0)
    assert float(ncc(3.0 * a + 7.0, a)) == pytest.approx(1.0, abs=1e-12)
    assert float(ncc(-a, a)) == pytest.approx(-1.0, abs=1e-12)
    # Against an independent formula (numpy-free Pearson correlation).
    b = smooth_image(2)
    da, db = a - a.mean(), b - b.mean()
    ref = (da * db).sum() / math.sqrt(float((da * da).sum() * (db * db).sum()))
    assert float(ncc(a, b)) == pytest.approx(float(ref), rel=1e-10)
    # Batched: (B, H, W) -> (B,)
    out = ncc(torch.stack([a, b]), a)
    assert out.shape == (2,) and float(out[0]) == pytest.approx(1.0) and float(out[1]) == pytest.approx(float(ref))


def test_mask_excludes_pixels():
    a = smooth_image(0)
    b = a.clone()
    b[:, :10] = torch.rand(a.shape[0], 10, dtype=torch.float64)  # garbage under the collimator
    mask = torch.ones_like(a, dtype=torch.bool)
    mask[:, :10] = False
    assert float(ncc(b, a)) < 0.99
    assert float(ncc(b, a, mask)) == pytest.approx(1.0, abs=1e-12)
    assert float(mutual_information(b, a, mask)) == pytest.approx(float(mutual_information(a, a, mask)), rel=1e-9)


@pytest.mark.parametrize("sim", [ncc, gradient_ncc, patch_ncc, multiscale_ncc, mutual_information, ssim, mean_squared_error])
def test_gradcheck(sim):
    a = smooth_image(3, 10, 16).requires_grad_(True)
    b = smooth_image(4, 10, 16)
    kwargs = {"patch_px": 7} if sim is patch_ncc else {"sigma_px": 1.0} if sim is ssim else {}
    if sim is mutual_information:
        # MI maps each image to [0, 1] by its min/max taken as constants: pin them with a fixed first row so
        # that the finite differences do not move them either.
        kwargs = {"bins": 8, "sigma_bins": 1.0}
        pins = torch.full((1, 16), float(a.detach().mean()), dtype=torch.float64)
        pins[0, 0], pins[0, 1] = float(a.detach().min()) - 0.1, float(a.detach().max()) + 0.1
        b = torch.cat([pins, b])
        assert torch.autograd.gradcheck(lambda x: sim(torch.cat([pins, x]), b, **kwargs), (a,), eps=1e-6, atol=1e-5)
        return
    assert torch.autograd.gradcheck(lambda x: sim(x, b, **kwargs), (a,), eps=1e-6, atol=1e-5)


def test_mi_invariant_to_monotone_gray_curves():
    a, b = smooth_image(0), smooth_image(5)
    mixed = 0.6 * a + 0.4 * b  # partly related to a
    curve = lambda x: torch.exp(3 * (x - x.min()) / (x.max() - x.min()))  # noqa: E731 (convex, monotone)
    # Exact: after histogram equalisation a monotone curve changes nothing.
    mi_ref = mutual_information(equalize(mixed), a)
    mi_curved = mutual_information(equalize(curve(mixed)), a)
    assert float(mi_curved) == pytest.approx(float(mi_ref), rel=1e-12)
    # Approximate without equalisation: MI of a with curve(a) stays the optimum (self-information level),
    # while NCC drops.
    mi_self, mi_curve_self = float(mutual_information(a, a)), float(mutual_information(curve(a), a))
    assert mi_curve_self > 0.6 * mi_self
    assert mi_curve_self > 3 * float(mutual_information(b, a))
    assert float(ncc(curve(a), a)) < 0.98
    # MI is also blind to inversion; NCC flips sign.
    assert float(mutual_information(invert(a), a)) == pytest.approx(mi_self, rel=1e-9)


def test_mi_loss_remembers_the_x_ray_side_and_gives_the_same_values_and_gradients():
    """make_loss("mi") keeps the fixed image's Parzen weights between calls with the same X-ray and mask (a
    registration level compares every DRR with one X-ray): the same values and gradients, bit for bit, as
    mutual_information; a changed X-ray (another tensor, or the same one modified in place), mask or batch is
    recomputed."""
    fixed, mask = smooth_image(5), smooth_image(7) > 0.2
    loss = make_loss("mi")
    for seed in (0, 1, 2):
        moving = smooth_image(seed).requires_grad_(True)
        value = loss(moving, fixed, mask)
        (grad,) = torch.autograd.grad(value.sum(), moving)
        ref = -mutual_information(moving, fixed, mask)
        (grad_ref,) = torch.autograd.grad(ref.sum(), moving)
        assert torch.equal(value, ref) and torch.equal(grad, grad_ref)
    moving = smooth_image(0)
    changes = [(smooth_image(6), mask), (fixed, ~mask), (fixed, mask)]
    for other_fixed, other_mask in changes:
        assert torch.equal(loss(moving, other_fixed, other_mask), -mutual_information(moving, other_fixed, other_mask))
    fixed.add_(smooth_image(9))  # in place: the same tensor object, other values
    assert torch.equal(loss(moving, fixed, mask), -mutual_information(moving, fixed, mask))
    batch = torch.stack([moving, smooth_image(3)])
    assert torch.equal(loss(batch, fixed, mask), -mutual_information(batch, fixed, mask))
    with pytest.raises(TypeError):
        make_loss("mi", patch_px=4)(moving, fixed, mask)


def test_intensity_helpers():
    line = smooth_image(0)
    intensity = 1000.0 * torch.exp(-line)
    assert torch.allclose(log_linearize(intensity, 1000.0), line, atol=1e-12)
    img = torch.zeros(30, 40, dtype=torch.float64)
    img[5:25, 8:33] = smooth_image(1, 20, 25) + 0.1
    m = collimator_mask(img)
    assert m[5:25, 8:33].all() and m.sum() == 20 * 25
    with pytest.raises(ValueError, match="constant"):
        collimator_mask(torch.ones(5, 5))
    binned, bm = bin_image(img, 4, m)
    assert binned.shape == (7, 10)
    assert float(binned[2, 3]) == pytest.approx(float(img[8:12, 12:16].mean()))
    assert bool(bm[2, 3]) and not bool(bm[0, 0])


def test_bad_inputs():
    a = smooth_image(0)
    with pytest.raises(ValueError, match="unknown registration loss"):
        make_loss("ssd")
    with pytest.raises(ValueError, match="at least 11 px"):
        ssim(a[:10], a[:10])
    with pytest.raises(ValueError, match="same size"):
        ncc(a, a[:-1])
    with pytest.raises(ValueError, match="mask"):
        ncc(a, a, torch.ones(3, 3, dtype=torch.bool))


def test_mse_values():
    a = smooth_image(0)
    assert float(mean_squared_error(a + 2.0, a)) == pytest.approx(4.0, rel=1e-12)
    b = a.clone()
    b[:, :10] += 5.0
    mask = torch.ones_like(a, dtype=torch.bool)
    mask[:, :10] = False
    assert float(mean_squared_error(b, a)) == pytest.approx(25.0 * 10 / a.shape[1], rel=1e-12)
    assert float(mean_squared_error(b, a, mask)) == pytest.approx(0.0, abs=1e-20)
    assert float(make_loss("mse")(a + 2.0, a)) == pytest.approx(4.0, rel=1e-12)


def test_ssim_against_the_volume_metric_and_an_analytic_value():
    """Unstandardised SSIM without a mask is the 2D form of metrics.ssim (a stack of 11 identical slices:
    the window along k sees a constant); a ramp and the ramp + d (equal local variance and covariance, local
    mean = the centre value) give the luminance term alone, (2 m (m + d) + C1) / (m^2 + (m + d)^2 + C1)."""
    from XRayNeRFLib.metrics import ssim as volume_ssim

    a, b = smooth_image(0), smooth_image(6)
    mixed = 0.7 * a + 0.3 * b
    want = volume_ssim(mixed[None].expand(11, -1, -1), a[None].expand(11, -1, -1))
    assert float(ssim(mixed, a, standardize=False)) == pytest.approx(want, rel=1e-10)
    ramp = torch.arange(48, dtype=torch.float64)[None].expand(40, -1).contiguous()
    d, c1 = 3.0, (0.01 * 47.0) ** 2
    m = ramp[5:-5, 5:-5]
    analytic = ((2 * m * (m + d) + c1) / (m**2 + (m + d) ** 2 + c1)).mean()
    assert float(ssim(ramp + d, ramp, standardize=False)) == pytest.approx(float(analytic), rel=1e-10)
    # Standardised (the registration default): blind to scale and offset, below 1 for other structure.
    assert float(ssim(3.0 * a + 7.0, a)) == pytest.approx(1.0, abs=1e-9)
    assert float(ssim(mixed, a)) < 0.99
    # A mask leaves garbage out: windows are mask-weighted and centres outside the mask do not count.
    g = a.clone()
    g[:, :12] = torch.rand(a.shape[0], 12, dtype=torch.float64)
    mask = torch.ones_like(a, dtype=torch.bool)
    mask[:, :12] = False
    assert float(ssim(g, a)) < 0.99
    assert float(ssim(g, a, mask)) == pytest.approx(1.0, abs=1e-9)
