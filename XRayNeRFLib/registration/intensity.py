"""X-ray intensity handling before registration: log linearisation, inversion, histogram equalisation,
collimator masks. All functions take and return (H, W) float tensors (dimensionless)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def log_linearize(intensity: Tensor, i0: Optional[float] = None) -> Tensor:
    """Detector intensities -> line integrals ``-log(I / I0)``. ``i0``: the unattenuated intensity
    (default: the 99.9th percentile of the image, i.e. the brightest air). Non-positive pixels are
    clamped to a small fraction of I0."""
    x = intensity.double()
    if i0 is None:
        i0 = float(torch.quantile(x.flatten()[:1_000_000], 0.999))
    if not i0 > 0:
        raise ValueError(
            f"log linearisation needs a positive unattenuated intensity I0, got {i0}; the image "
            "looks already log-transformed or inverted: drop --log"
        )
    return (-torch.log((x / i0).clamp(min=1e-6))).to(intensity.dtype)


def invert(image: Tensor) -> Tensor:
    """max + min - image (dark bone becomes bright, as in a DRR of line integrals)."""
    return image.max() + image.min() - image


def equalize(image: Tensor, mask: Optional[Tensor] = None) -> Tensor:
    """Histogram equalisation: each pixel -> its rank fraction in [0, 1] (over masked pixels). Any
    monotone gray-level curve of the input gives the same output (ties kept together)."""
    flat = image.flatten()
    sel = flat if mask is None else flat[mask.flatten().bool()]
    sorted_vals = torch.sort(sel).values
    ranks = torch.searchsorted(sorted_vals, flat.contiguous(), right=True).to(image.dtype)
    return (ranks / max(1, sel.numel())).reshape(image.shape)


def collimator_mask(image: Tensor, rel_tol: float = 1e-3) -> Tensor:
    """Boolean (H, W) mask excluding flat collimator bands at the image borders: border rows/columns
    whose intensity spread is below ``rel_tol`` of the image's spread are dropped, from each side
    inwards. A rectangular collimator (or zero padding) is removed; the inside is kept."""
    x = image.double()
    spread = float(x.max() - x.min())
    if spread <= 0:
        raise ValueError("the X-ray is constant: nothing to register to (check the file and its windowing)")
    flat_rows = (x.amax(1) - x.amin(1)) <= rel_tol * spread
    flat_cols = (x.amax(0) - x.amin(0)) <= rel_tol * spread

    def span(flat):
        n = flat.numel()
        lo = 0
        while lo < n and bool(flat[lo]):
            lo += 1
        hi = n
        while hi > lo and bool(flat[hi - 1]):
            hi -= 1
        return lo, hi

    r0, r1 = span(flat_rows)
    c0, c1 = span(flat_cols)
    mask = torch.zeros(image.shape, dtype=torch.bool, device=image.device)
    mask[r0:r1, c0:c1] = True
    return mask


def bin_image(image: Tensor, factor: int, mask: Optional[Tensor] = None):
    """Bin (..., H, W) by ``factor`` x ``factor`` (the rule of Cameras.downsampled; trailing pixels
    dropped). With a mask, returns (binned image, binned mask) where a coarse pixel is kept when all its
    fine pixels are."""
    f = int(factor)
    h, w = image.shape[-2] // f, image.shape[-1] // f
    img = image[..., : h * f, : w * f].reshape(*image.shape[:-2], h, f, w, f).mean((-3, -1))
    if mask is None:
        return img, None
    m = mask[..., : h * f, : w * f].reshape(*mask.shape[:-2], h, f, w, f).to(torch.float32).amin(-1).amin(-2) > 0.5
    return img, m
