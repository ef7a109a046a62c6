"""Image similarity for 2D/3D registration: NCC, gradient NCC, patch/multiscale NCC, mutual information,
SSIM and the mean squared error.

Every similarity takes ``moving`` (the DRR, differentiable) and ``fixed`` (the X-ray), both (B, H, W) or
(H, W) float tensors, and an optional ``mask`` ((H, W) or (B, H, W), bool or 0..1 weights: pixels that
count, e.g. inside the collimator), and returns a (B,) similarity where *higher is better* (1 for NCCs of
identical images, the mutual information in nats for MI). :func:`make_loss` turns a name into a
loss to *minimise* (``1 - ncc``, ``-mi``, ``1 - ssim``, or the mean squared error itself).

Images are dimensionless; nothing here assumes a unit or a sign (MI is blind to both, NCC and SSIM as
defined here to scale and offset only) except the mean squared error, which compares values as they are:
use it only when the X-ray and the DRR are on one scale (e.g. both line integrals).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .background import background_r2

__all__ = [
    "ncc",
    "gradient_ncc",
    "patch_ncc",
    "multiscale_ncc",
    "mutual_information",
    "ssim",
    "mean_squared_error",
    "make_loss",
    "LOSS_NAMES",
]

_EPS = 1e-8


def _prepare(moving: Tensor, fixed: Tensor, mask: Optional[Tensor]):
    if moving.ndim == 2:
        moving = moving.unsqueeze(0)
    if fixed.ndim == 2:
        fixed = fixed.unsqueeze(0)
    if moving.ndim != 3 or fixed.shape[-2:] != moving.shape[-2:]:
        raise ValueError(f"images must be (B, H, W) of the same size, got {tuple(moving.shape)} and {tuple(fixed.shape)}")
    fixed = fixed.to(moving.dtype).expand_as(moving)
    if mask is None:
        w = torch.ones_like(moving)
    else:
        w = mask.to(moving.dtype)
        if w.ndim == 2:
            w = w.unsqueeze(0)
        if w.shape[-2:] != moving.shape[-2:]:
            raise ValueError(f"mask must be (H, W) = {tuple(moving.shape[-2:])}, got {tuple(mask.shape)}")
        w = w.expand_as(moving)
    return moving, fixed, w


def ncc(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Global (masked) normalised cross-correlation in [-1, 1]: (B,)."""
    a, b, w = _prepare(moving, fixed, mask)
    return _weighted_ncc(a, b, w)


def _weighted_ncc(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    dims = tuple(range(1, a.ndim))
    n = w.sum(dims).clamp(min=_EPS)
    ma = (w * a).sum(dims) / n
    mb = (w * b).sum(dims) / n
    da = a - ma.reshape(-1, *([1] * (a.ndim - 1)))
    db = b - mb.reshape(-1, *([1] * (a.ndim - 1)))
    cov = (w * da * db).sum(dims)
    va = (w * da * da).sum(dims)
    vb = (w * db * db).sum(dims)
    return cov / (va * vb + _EPS**2).sqrt()


def _sobel(x: Tensor) -> tuple:
    """(B, H, W) -> two (B, H-2, W-2) derivative images (columns, rows)."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=x.dtype, device=x.device) / 8
    k = torch.stack([kx, kx.T])[:, None]  # (2, 1, 3, 3)
    g = F.conv2d(x[:, None], k)
    return g[:, 0], g[:, 1]


def gradient_ncc(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Gradient correlation: mean of the NCCs of the Sobel column and row derivatives: (B,).
    The mask is eroded by one pixel (a derivative needs its 3x3 neighbourhood inside)."""
    a, b, w = _prepare(moving, fixed, mask)
    w = -F.max_pool2d(-w[:, None], 3, stride=1)[:, 0]  # erosion
    ax, ay = _sobel(a)
    bx, by = _sobel(b)
    return 0.5 * (_weighted_ncc(ax, bx, w) + _weighted_ncc(ay, by, w))


def patch_ncc(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None, patch_px: int = 16) -> Tensor:
    """Mean NCC over non-overlapping square patches of ``patch_px`` pixels (local contrast, robust to
    slowly varying intensity differences): (B,). Patches where either image is flat (or the mask covers
    less than half) are left out."""
    a, b, w = _prepare(moving, fixed, mask)
    p = int(patch_px)
    if p < 2:
        raise ValueError(f"patch size must be >= 2 pixels, got {patch_px}")
    p = min(p, a.shape[-1], a.shape[-2])
    pool = lambda x: F.avg_pool2d(x[:, None], p, stride=p)[:, 0]  # noqa: E731
    n = pool(w).clamp(min=_EPS)
    ma, mb = pool(w * a) / n, pool(w * b) / n
    va = (pool(w * a * a) / n - ma * ma).clamp(min=0)
    vb = (pool(w * b * b) / n - mb * mb).clamp(min=0)
    cov = pool(w * a * b) / n - ma * mb
    scale_a = (w * a).pow(2).sum((1, 2)) / w.sum((1, 2)).clamp(min=_EPS)
    scale_b = (w * b).pow(2).sum((1, 2)) / w.sum((1, 2)).clamp(min=_EPS)
    ok = (n > 0.5) & (va > 1e-6 * scale_a[:, None, None] + _EPS**2) & (vb > 1e-6 * scale_b[:, None, None] + _EPS**2)
    local = torch.where(ok, cov / (va * vb + _EPS**2).sqrt(), torch.zeros_like(cov))
    return local.sum((1, 2)) / ok.sum((1, 2)).clamp(min=1)


def multiscale_ncc(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None, patch_fractions=(1.0, 0.25, 0.125)) -> Tensor:
    """Mean of patch NCCs at patch sizes given as fractions of the image's smaller side (1.0 = the
    global NCC): (B,)."""
    a, b, w = _prepare(moving, fixed, mask)
    side = min(a.shape[-2:])
    terms = []
    for f in patch_fractions:
        if f >= 1.0:
            terms.append(_weighted_ncc(a, b, w))
        else:
            terms.append(patch_ncc(a, b, w, patch_px=max(4, int(round(side * f)))))
    return torch.stack(terms).mean(0)


def _unit_range(x: Tensor, w: Tensor) -> Tensor:
    """Map each image to [0, 1] by its (masked) min and max, taken as constants (no gradient)."""
    big = torch.finfo(x.dtype).max
    xd = x.detach()
    lo = torch.where(w > 0, xd, torch.full_like(xd, big)).flatten(1).amin(1)
    hi = torch.where(w > 0, xd, torch.full_like(xd, -big)).flatten(1).amax(1)
    span = (hi - lo).clamp(min=_EPS)
    return ((x - lo[:, None, None]) / span[:, None, None]).clamp(0, 1)


def mutual_information(
    moving: Tensor,
    fixed: Tensor,
    mask: Optional[Tensor] = None,
    bins: int = 32,
    sigma_bins: float = 0.5,
    normalized: bool = False,
) -> Tensor:
    """Differentiable mutual information (nats) from a soft joint histogram (Parzen windows): (B,).

    Each image is mapped to [0, 1] by its own masked min/max; every pixel spreads a Gaussian of width
    ``sigma_bins`` bin widths over ``bins`` bin centres (weights normalised per pixel), the joint
    histogram is the mask-weighted product sum. ``normalized``: (H(A) + H(B)) / H(A, B) instead (in [1, 2]).
    MI depends on the intensities only through their ordering and binning, so it tolerates any
    monotone (or even non-monotone) gray-level curve between the DRR and the X-ray.
    """
    return _mutual_information(moving, fixed, mask, bins=bins, sigma_bins=sigma_bins, normalized=normalized)


def _parzen(x: Tensor, w: Tensor, bins: int, sigma_bins: float) -> Tensor:
    """Images x (B, H, W) with weights w: (B, H*W, bins) Parzen weights of their [0, 1]-mapped values (rows sum to 1)."""
    x = _unit_range(x, w).flatten(1)
    centres = torch.linspace(0, 1, bins, dtype=x.dtype, device=x.device)
    sigma = sigma_bins / (bins - 1)
    k = torch.exp(-0.5 * ((x[..., None] - centres) / sigma) ** 2)
    return k / k.sum(-1, keepdim=True).clamp(min=_EPS)


def _fixed_weights(b: Tensor, w: Tensor, fixed: Tensor, mask, bins: int, sigma_bins: float, memo: Optional[dict]) -> Tensor:
    """The fixed image's Parzen weights (:func:`_parzen`), remembered in ``memo`` (when given) while the same fixed
    image and mask tensors, unmodified and without gradient, come back with the same batch size: a registration
    level's loop compares every DRR with one X-ray."""
    if memo is None or fixed.requires_grad or (torch.is_tensor(mask) and mask.requires_grad):
        return _parzen(b, w, bins, sigma_bins)
    key = (fixed._version, None if mask is None else mask._version, tuple(b.shape), b.dtype)
    if memo.get("fixed") is not fixed or memo.get("mask") is not mask or memo.get("key") != key:
        memo.update(fixed=fixed, mask=mask, key=key, weights=_parzen(b, w, bins, sigma_bins))
    return memo["weights"]


def _mutual_information(
    moving: Tensor,
    fixed: Tensor,
    mask: Optional[Tensor],
    bins: int = 32,
    sigma_bins: float = 0.5,
    normalized: bool = False,
    memo: Optional[dict] = None,
) -> Tensor:
    """:func:`mutual_information`; ``memo``: see :func:`_fixed_weights`."""
    a, b, w = _prepare(moving, fixed, mask)
    if bins < 2:
        raise ValueError(f"mutual information needs at least 2 bins, got {bins}")
    pb = _fixed_weights(b, w, fixed, mask, bins, sigma_bins, memo)
    pa = _parzen(a, w, bins, sigma_bins) * w.flatten(1)[..., None]
    joint = pa.transpose(1, 2) @ pb  # (B, bins, bins)
    joint = joint / joint.sum((1, 2), keepdim=True).clamp(min=_EPS)
    ma = joint.sum(2, keepdim=True)
    mb = joint.sum(1, keepdim=True)
    plogp = lambda p: (p * torch.log(p.clamp(min=1e-12))).sum(tuple(range(1, p.ndim)))  # noqa: E731
    h_a, h_b, h_ab = -plogp(ma), -plogp(mb), -plogp(joint)
    if normalized:
        return (h_a + h_b) / h_ab.clamp(min=_EPS)
    return h_a + h_b - h_ab


def mean_squared_error(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Mask-weighted mean of (moving - fixed)^2 over the pixels, in the images' units squared: (B,).
    Not a similarity (lower is better) and not invariant to any gray-level change."""
    a, b, w = _prepare(moving, fixed, mask)
    return (w * (a - b) ** 2).sum((1, 2)) / w.sum((1, 2)).clamp(min=_EPS)


def _standardized(x: Tensor, w: Tensor) -> Tensor:
    """Each image of (B, H, W) minus its w-weighted mean, over its w-weighted standard deviation."""
    n = w.sum((1, 2), keepdim=True).clamp(min=_EPS)
    m = (w * x).sum((1, 2), keepdim=True) / n
    sd = ((w * (x - m) ** 2).sum((1, 2), keepdim=True) / n + _EPS**2).sqrt()
    return (x - m) / sd


def ssim(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None, sigma_px: float = 1.5, standardize: bool = True) -> Tensor:
    """Mean structural similarity (Wang et al. 2004): (B,), 1 for identical images.

    Local means, variances and covariance come from a Gaussian window of ``sigma_px`` pixels (truncated
    at 3.5 sigma, no padding: only window centres whose whole window lies in the image count), K1 = 0.01,
    K2 = 0.03, the data range L = max - min of the fixed image inside the mask (a constant). With a mask,
    the window statistics are mask-weighted (normalised convolution) and the map is averaged over the
    masked centres whose window is at least half inside the mask. ``standardize`` (default): each image
    is first mapped to zero mean and unit variance over the mask, so that SSIM, like NCC, ignores the
    unknown scale and offset between DRR and X-ray and compares local structure; False compares the
    values as they are (the definition of :func:`XRayNeRFLib.metrics.ssim`, in 2D).
    """
    a, b, w = _prepare(moving, fixed, mask)
    if standardize:
        a, b = _standardized(a, w), _standardized(b, w)
    radius = int(3.5 * float(sigma_px) + 0.5)
    if min(a.shape[-2:]) < 2 * radius + 1:
        raise ValueError(f"SSIM needs images of at least {2 * radius + 1} px on each side (window), got {tuple(a.shape[-2:])}")
    t = torch.arange(-radius, radius + 1, dtype=a.dtype, device=a.device)
    g = torch.exp(-0.5 * (t / float(sigma_px)) ** 2)
    g = g / g.sum()

    def filt(x):  # (B, H, W) -> (B, H - 2r, W - 2r), separable 'valid' Gaussian
        y = F.conv2d(x[:, None], g.reshape(1, 1, -1, 1))
        return F.conv2d(y, g.reshape(1, 1, 1, -1))[:, 0]

    bd = b.detach()
    big = torch.finfo(bd.dtype).max
    lo = torch.where(w > 0, bd, torch.full_like(bd, big)).flatten(1).amin(1)
    hi = torch.where(w > 0, bd, torch.full_like(bd, -big)).flatten(1).amax(1)
    rng = (hi - lo).clamp(min=_EPS)[:, None, None]
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    n = filt(w)
    ns = n.clamp(min=_EPS)
    mu_a, mu_b = filt(w * a) / ns, filt(w * b) / ns
    saa = (filt(w * a * a) / ns - mu_a**2).clamp(min=0)
    sbb = (filt(w * b * b) / ns - mu_b**2).clamp(min=0)
    sab = filt(w * a * b) / ns - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * sab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (saa + sbb + c2))
    centre = w[:, radius:-radius, radius:-radius]
    keep = (centre * (n > 0.5)).to(s.dtype)
    return (keep * s).sum((1, 2)) / keep.sum((1, 2)).clamp(min=_EPS)


LOSS_NAMES = ("mi", "ncc", "gncc", "mncc", "pncc", "ssim", "mse", "bgfit")


def make_loss(name: str, **options) -> Callable[[Tensor, Tensor, Optional[Tensor]], Tensor]:
    """A loss to minimise, (moving, fixed, mask) -> (B,), from a similarity name:
    "mi" (-mutual information), "ncc" (1 - NCC), "gncc" (1 - gradient NCC), "mncc" (1 - multiscale NCC),
    "pncc" (1 - patch NCC), "ssim" (1 - SSIM), "mse" (the mean squared error), "bgfit" (1 - R^2 of the X-ray
    fitted by a gray curve of the DRR plus a smooth background, :mod:`.background`). ``options`` go to the
    similarity (bins=, patch_px=, sigma_px=, background_degree=, ...)."""
    key = name.strip().lower()
    if key == "mi":
        memo: dict = {}  # the X-ray's Parzen weights, kept between calls with the same X-ray and mask
        return lambda m, f, k=None: -_mutual_information(m, f, k, memo=memo, **options)
    if key == "mse":
        return lambda m, f, k=None: mean_squared_error(m, f, k, **options)
    table = {"ncc": ncc, "gncc": gradient_ncc, "mncc": multiscale_ncc, "pncc": patch_ncc, "ssim": ssim, "bgfit": background_r2}
    if key not in table:
        raise ValueError(f"unknown registration loss {name!r}; use one of {', '.join(LOSS_NAMES)}")
    sim = table[key]
    return lambda m, f, k=None: 1.0 - sim(m, f, k, **options)
