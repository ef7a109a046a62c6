"""A smooth background in the X-ray that the DRR lacks, as a nuisance of the registration: removed from both sides.

A real X-ray carries a slowly varying additive background that no line integral of the CT predicts: scattered
photons (a wide blur of the primary beam), the heel effect, a detector's offset or gain drift. Mutual information
and NCC are invariant to one global gray-level map, not to a map that varies across the image, so such a
background pulls the pose. :func:`highpass` removes what varies slower than a Gaussian of ``sigma_px`` pixels
from an image, inside a mask: the image minus its normalised-convolution low-pass

    low(x) = (G * (m x)) / (G * m),     highpass(x) = m (x - low(x)),

with G the Gaussian and m the mask (0 outside the image). Applied to the X-ray and the DRR alike (the same mask,
the same G), it leaves the registration a comparison of the structure finer than ``sigma_px``: a background b that
is constant, or that varies slower than the Gaussian, drops out (exactly for a constant or a plane-linear b away
from the mask's edges, where G * m = 1). ``RegistrationSettings.background_sigma_px`` turns it on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .psf import gaussian_blur


def lowpass(images: Tensor, mask: Tensor, sigma_px: float) -> Tensor:
    """The normalised-convolution Gaussian low-pass of ``images`` (B, H, W) float inside ``mask`` ((H, W) or
    (B, H, W) bool): (G * (m x)) / (G * m), Gaussian of standard deviation ``sigma_px`` pixels, zero padding
    (pixels outside the mask or the image carry no weight). (B, H, W), same dtype; 0 where no mask pixel is
    within reach. Differentiable in ``images``."""
    if images.ndim != 3:
        raise ValueError(f"lowpass needs images (B, H, W), got shape {tuple(images.shape)}")
    if not sigma_px > 0:
        raise ValueError(f"the background's Gaussian needs sigma_px > 0 pixels, got {sigma_px}")
    m = mask.to(images.dtype).expand_as(images)
    p = int(math.ceil(3.0 * sigma_px)) + 1
    num = F.pad(images * m, (p, p, p, p))  # zero padding: beyond the image counts as outside the mask
    den = F.pad(m, (p, p, p, p))
    sigma = torch.tensor(float(sigma_px), dtype=images.dtype, device=images.device)
    both = gaussian_blur(torch.cat([num, den]), sigma, 0)  # (2B, H+2p, W+2p)
    num, den = both[: len(images), p:-p, p:-p], both[len(images) :, p:-p, p:-p]
    ok = den > 1e-6
    return torch.where(ok, num / den.clamp(min=1e-6), torch.zeros_like(num))


def highpass(images: Tensor, mask: Tensor, sigma_px: float) -> Tensor:
    """``images`` (B, H, W) float without their smooth background inside ``mask`` ((H, W) or (B, H, W) bool):
    m (x - :func:`lowpass` (x)), zero outside the mask. (B, H, W), same dtype; differentiable in ``images``."""
    m = mask.to(images.dtype).expand_as(images)
    return m * (images - lowpass(images, mask, sigma_px))
