"""A smooth background in the X-ray that the DRR lacks, fitted as a linear nuisance: the "bgfit" loss.

A real X-ray carries a slowly varying additive background that no line integral of the CT predicts: scattered
photons (a wide blur of the primary beam), the heel effect, a detector's offset or gain drift. Mutual information
and NCC are invariant to one global gray-level map, not to a map that varies across the image, so such a
background pulls the pose. Removing it from both images (a high-pass, or a fitted polynomial subtracted from
each) does not work with a nonlinear gray curve between them: what is left of the two no longer has one
gray-level map (benchmarks/RESULTS_registration.md, "Smooth background").

Instead the X-ray y is explained, in least squares over the pixels that count, by a polynomial gray curve of the
DRR d plus a smooth background over the detector:

    y(u, v) ~ sum_{k=1..K} a_k d(u, v)^k + sum_{i+j<=D} b_ij u^i v^j,

with (u, v) the pixel coordinates scaled to [-1, 1] over the image, K = ``drr_degree`` and D =
``background_degree`` (the constant b_00 is the offset). The coefficients are solved in closed form for every
DRR (normal equations, float64); the similarity is the fraction of the X-ray's variance (over the mask) that
the model explains, R^2 in [0, 1] (1: the model explains the X-ray exactly), and the loss ``1 - R^2`` ("bgfit"
in :func:`~.losses.make_loss`). The fit is linear in the coefficients, so the gradient with respect to the DRR
goes through the solve. With D = 0 it is a polynomial correlation (NCC generalised to a curve of degree K);
the background terms make it blind to any polynomial background of degree <= D added to the X-ray: the
residual does not change, so the loss changes only by a factor that does not depend on the pose (the X-ray's
variance), and its optimum does not move.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def background_basis(mask: Tensor, degree: int) -> Tensor:
    """The monomials u^i v^j (i + j <= ``degree``, the constant first) of the pixel coordinates (u: columns,
    v: rows, both scaled to [-1, 1] over the image) at the pixels of ``mask`` (H, W) bool, in row-major pixel
    order, orthonormalised over those pixels (QR): (N, (degree + 1)(degree + 2) / 2) float64, N = mask.sum()."""
    h, w = mask.shape
    v, u = torch.meshgrid(torch.linspace(-1, 1, h, dtype=torch.float64), torch.linspace(-1, 1, w, dtype=torch.float64), indexing="ij")
    u, v = u[mask], v[mask]
    terms = torch.stack([u**i * v**j for i in range(degree + 1) for j in range(degree + 1 - i)], -1)
    return torch.linalg.qr(terms)[0]


def background_fit(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None, drr_degree: int = 3, background_degree: int = 4):
    """The least-squares fit of the module docstring for one image pair: ``moving`` (H, W) the DRR, ``fixed``
    (H, W) the X-ray, ``mask`` (H, W) bool (None: every pixel). Returns (R^2 () float64, the fitted X-ray
    (N,) float64 at the mask's pixels in row-major order). Raises ValueError when the mask has too few pixels
    for the model (fewer than twice its coefficients)."""
    m = torch.ones(moving.shape, dtype=torch.bool, device=moving.device) if mask is None else mask.bool()
    q = background_basis(m.cpu(), int(background_degree)).to(moving.device)
    n_coef = q.shape[1] + int(drr_degree)
    if int(m.sum()) < 2 * n_coef:
        raise ValueError(
            f"the bgfit loss fits {n_coef} coefficients but the mask has {int(m.sum())} pixels; "
            "use a lower background_degree or coarser pyramid levels that leave more pixels"
        )
    d = moving[m].double()
    y = fixed[m].double()
    dd = d.detach()
    d = (d - dd.mean()) / dd.std().clamp(min=1e-12)  # conditioning only: the model's span does not change
    a = torch.cat([q] + [(d**k)[:, None] for k in range(1, int(drr_degree) + 1)], -1)  # (N, n_coef)
    gram = a.T @ a + 1e-10 * torch.eye(n_coef, dtype=a.dtype, device=a.device)
    fit = a @ torch.linalg.solve(gram, a.T @ y)
    yc = y - y.mean()
    r2 = 1.0 - ((y - fit) ** 2).sum() / (yc @ yc).clamp(min=1e-300)
    return r2, fit


def background_r2(moving: Tensor, fixed: Tensor, mask: Optional[Tensor] = None, drr_degree: int = 3, background_degree: int = 4) -> Tensor:
    """R^2 of the X-ray ``fixed`` explained by a polynomial gray curve of the DRR ``moving`` plus a smooth
    polynomial background (module docstring): (B,) in ``moving``'s dtype, higher is better. moving: (B, H, W)
    or (H, W); fixed: (H, W) or (B, H, W); mask: None, (H, W) or (B, H, W) bool. Differentiable in moving."""
    a = moving[None] if moving.ndim == 2 else moving
    b = fixed.to(a.dtype).expand_as(a)
    m = torch.ones_like(a, dtype=torch.bool) if mask is None else mask.bool().expand(a.shape)
    r2 = [background_fit(a[i], b[i], m[i], drr_degree, background_degree)[0] for i in range(a.shape[0])]
    return torch.stack(r2).to(a.dtype)
