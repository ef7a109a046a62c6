"""The X-ray's blur relative to the DRR, as a nuisance of the registration: a Gaussian point-spread function.

A real X-ray is blurred by its detector (scintillator, pixel cross-talk) and the focal spot; a DRR is not.
Matched to a blurred X-ray, a sharp DRR is pulled towards the pose where its edges look most like the
blurred ones, which biases the pose, most along the beam (depth changes the image only through
magnification). :func:`gaussian_blur` applies a Gaussian PSF of a given width to the DRR, differentiably
in the width, so that the registration can fit the width with the pose (``RegistrationSettings.fit_psf``)
instead of assuming it.

The blur is applied in the frequency domain (transfer function exp(-2 pi^2 sigma^2 f^2), f in cycles per
pixel) after replicate padding: exact for every sigma >= 0, the identity at sigma = 0 and smooth in
sigma^2 there, which a spatial kernel sampled on the pixel grid is not.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def gaussian_blur(images: Tensor, sigma_px: Tensor, pad_px: int) -> Tensor:
    """Images (B, H, W) float blurred by a Gaussian of standard deviation ``sigma_px`` (B,) (or a scalar)
    pixels, each image by its own: (B, H, W), same dtype and device. The images are padded by ``pad_px``
    pixels (replicate) on each side against the wrap-around of the FFT; use >= 3 sigma."""
    if images.ndim != 3:
        raise ValueError(f"gaussian_blur needs images (B, H, W), got shape {tuple(images.shape)}")
    b, h, w = images.shape
    p = max(0, int(pad_px))
    x = F.pad(images[:, None], (p, p, p, p), mode="replicate")[:, 0] if p > 0 else images  # (B, H+2p, W+2p)
    fy = torch.fft.fftfreq(x.shape[-2], dtype=images.dtype, device=images.device)  # cycles / pixel
    fx = torch.fft.rfftfreq(x.shape[-1], dtype=images.dtype, device=images.device)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2  # (H+2p, W//2+p+1)
    s2 = torch.as_tensor(sigma_px, dtype=images.dtype, device=images.device).reshape(-1, 1, 1) ** 2
    transfer = torch.exp(-2.0 * math.pi**2 * s2 * f2)  # (B or 1, ., .)
    out = torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=x.shape[-2:])
    return out[:, p : p + h, p : p + w]


def within_reach(mask: Tensor, reach_px: int) -> Tensor:
    """The pixels of ``mask`` ((h, w) or (B, h, w) bool) whose whole square neighbourhood of half-width
    ``reach_px`` pixels lies inside the mask and on the image (beyond the edge counts as outside): an erosion,
    same shape, bool. Where a PSF reaching ``reach_px`` is applied, these are the pixels whose blurred value
    depends on mask pixels only. ``reach_px`` < 1: ``mask`` itself."""
    r = int(reach_px)
    if r < 1:
        return mask
    outside = (~mask).to(torch.float32).reshape(-1, 1, *mask.shape[-2:])
    outside = F.pad(outside, (r, r, r, r), value=1.0)
    return (F.max_pool2d(outside, 2 * r + 1, stride=1) == 0).reshape(mask.shape)
