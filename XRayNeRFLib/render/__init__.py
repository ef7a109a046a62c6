"""Differentiable X-ray rendering: line integrals of mu through a voxel volume for cone-beam cameras.

``render(volume, cameras)`` returns line integrals (dimensionless: mu in 1/mm times mm) with shape
(V, H, W), image[row, column] in the camera convention of :mod:`XRayNeRFLib.geometry`.
``beer_lambert`` turns them into detector intensities, optionally with Poisson noise.
"""

from __future__ import annotations

import os
from typing import List, Optional, Union

import torch
from torch import Tensor

from ..geometry import Cameras
from ..progress import ProgressCallback, report
from ..volume import Volume
from .rays import IndexRays, box_intersection, rays_for_views
from .siddon import siddon_bytes_per_ray, siddon_line_integrals, siddon_line_integrals_sorted
from .trilinear import MarchPlan, SliceStacks, march, march_plans, trilinear_bytes_per_ray, trilinear_line_integrals

__all__ = [
    "render",
    "render_rays",
    "prepare_rays",
    "render_prepared",
    "prepared_bytes",
    "RENDERERS",
    "DEFAULT_RENDERER",
    "beer_lambert",
    "IndexRays",
    "box_intersection",
    "siddon_line_integrals",
    "siddon_line_integrals_sorted",
    "trilinear_line_integrals",
]

RENDERERS = ("siddon", "trilinear")  # the projectors; every caller names one with ``renderer=``
DEFAULT_RENDERER = "trilinear"  # the one default: DRRs, the iterative reconstructions, registration's overlay

# On the CPU, chunks much larger than the caches make every elementwise pass memory-bound and every
# allocation a fresh mmap; these sizes were the fastest on a 2-core machine (benchmarks/RESULTS.md).
_CPU_CHUNK_MB = {"trilinear": 32.0, "siddon": 96.0}


def render(
    volume: Volume,
    cameras: Cameras,
    *,
    renderer: str = DEFAULT_RENDERER,
    pixels: Optional[Tensor] = None,
    samples_per_voxel: float = 1.0,
    max_memory_mb: float = 1024.0,
    progress: ProgressCallback = None,
    compiled: Optional[bool] = None,
    check_finite: bool = True,
) -> Tensor:
    """Line integrals of the volume's mu for every view.

    volume: mu in 1/mm (convert HU first with ``volume.as_mu``); data (K, J, I) may require grad.
    cameras: V views; cast to the volume's dtype and device. Their tensors may require grad.
    renderer: "siddon" (exact radiological path) or "trilinear" (default; ray marching with ``samples_per_voxel``
        (integer) samples per voxel along each ray's dominant axis; see render/trilinear.py).
    pixels: optional (V, N, 2) or (N, 2) [column, row] pixel-centre coordinates to render (ray
        mini-batches, coarse detectors); default every pixel.
    max_memory_mb: bound on the working memory of one chunk of rays (forward pass; autograd keeps
        more when gradients are needed).
    progress: called after each chunk; returning False raises ``Cancelled``.
    compiled: run Siddon's kernel through ``torch.compile`` (a one-off compilation, then faster: for
        reconstruction loops; timings in benchmarks/RESULTS.md). None: the environment variable
        XRAYNERF_COMPILE=1 turns it on. Ignored by the trilinear renderer (grid_sample bound).
    check_finite: refuse a volume with NaN/inf (default). False skips that scan of the whole volume
        for loops that check their own iterate.

    returns: (V, H, W) when ``pixels`` is None, else (V, N); dtype of the volume.
    """
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; use one of {RENDERERS}")
    if volume.units != "mu":
        raise ValueError("the renderer needs linear attenuation (1/mm); convert HU with XRayNeRFLib.volume.as_mu")
    mu = volume.data
    if check_finite and not torch.isfinite(mu.detach()).all():
        raise ValueError("the volume contains NaN or infinite values; fix them before rendering")
    cams = cameras.to(device=mu.device, dtype=mu.dtype)
    full_image = pixels is None
    if full_image:
        grid = cams.pixel_grid().reshape(1, -1, 2)
    else:
        grid = pixels.to(device=mu.device, dtype=mu.dtype)
        if grid.ndim == 2:
            grid = grid.unsqueeze(0)
        if grid.ndim != 3 or grid.shape[-1] != 2 or grid.shape[0] not in (1, len(cams)):
            raise ValueError(f"pixels must be (N, 2) or (V, N, 2) with V={len(cams)}, got {tuple(pixels.shape)}")
    n_views, n_pix = len(cams), grid.shape[1]
    total = n_views * n_pix
    use_compile = compiled if compiled is not None else os.environ.get("XRAYNERF_COMPILE", "") == "1"
    stacks = SliceStacks(mu, int(round(samples_per_voxel)) if renderer == "trilinear" else 1)
    out = []
    done = 0
    for rays in _ray_chunks(volume, cams, grid, renderer, samples_per_voxel, max_memory_mb):
        out.append(render_rays(mu, rays, renderer=renderer, samples_per_voxel=samples_per_voxel, stacks=stacks, compiled=use_compile))
        done += rays.length_mm.shape[0]
        report(progress, done, total, f"{renderer}: {done}/{total} rays")
    result = torch.cat(out).reshape(len(cams), n_pix)
    if full_image:
        result = result.reshape(len(cams), cams.height, cams.width)
    return result


def prepare_rays(
    like: Volume,
    cameras: Cameras,
    pixels: Tensor,
    *,
    renderer: str = DEFAULT_RENDERER,
    samples_per_voxel: float = 1.0,
    max_memory_mb: float = 1024.0,
    cache_mb: float = 0.0,
) -> List[Union[IndexRays, List[MarchPlan]]]:
    """The rays :func:`render` would march for ``like``'s grid (its ``ras_from_ijk`` and shape; data ignored),
    ``cameras`` (cast to the grid's dtype) and ``pixels`` (V, N, 2) or (N, 2) [column, row], in its chunks,
    for loops that render the same rays through many volumes on that grid (:func:`render_prepared`). A chunk
    is its IndexRays (28 bytes per ray in float32) or, with the trilinear renderer while they fit in
    ``cache_mb``, its sampling plans (:class:`trilinear.MarchPlan`: 8 bytes per plane and ray, no geometry
    left to compute per call). :func:`prepared_bytes` gives the memory held."""
    cams = cameras.to(device=like.data.device, dtype=like.data.dtype)
    grid = pixels.to(device=like.data.device, dtype=like.data.dtype)
    grid = grid.unsqueeze(0) if grid.ndim == 2 else grid
    spv = int(round(samples_per_voxel))
    left = float(cache_mb) * 2**20
    out: List[Union[IndexRays, List[MarchPlan]]] = []
    for rays in _ray_chunks(like, cams, grid, renderer, samples_per_voxel, max_memory_mb):
        if renderer == "trilinear" and left > 0:
            plans = march_plans(tuple(like.data.shape), rays, spv)
            if prepared_bytes([plans]) <= left:
                left -= prepared_bytes([plans])
                out.append(plans)
                continue
            left = 0.0  # the rest as rays
        out.append(rays)
    return out


def prepared_bytes(chunks: List[Union[IndexRays, List[MarchPlan]]]) -> int:
    """Memory held by :func:`prepare_rays`' chunks (bytes)."""
    total = 0
    for c in chunks:
        if isinstance(c, IndexRays):
            total += sum(t.numel() * t.element_size() for t in (c.origin, c.direction, c.length_mm))
        else:
            total += sum(pl.nbytes for pl in c)
    return total


def render_prepared(
    mu: Tensor, chunks: List[Union[IndexRays, List[MarchPlan]]], *, renderer: str = DEFAULT_RENDERER, samples_per_voxel: float = 1.0
) -> Tensor:
    """Line integrals (R,) of mu (K, J, I) 1/mm (the grid of :func:`prepare_rays`, not checked for NaN) along
    prepared chunks, view-major as :func:`render` orders them: reshape to (V, N)."""
    stacks = SliceStacks(mu, int(round(samples_per_voxel)) if renderer == "trilinear" else 1)
    out = []
    for c in chunks:
        if isinstance(c, IndexRays):
            out.append(render_rays(mu, c, renderer=renderer, samples_per_voxel=samples_per_voxel, stacks=stacks))
        else:  # trilinear sampling plans
            out.append(march(stacks, c))
    return out[0] if len(out) == 1 else torch.cat(out)


def _ray_chunks(volume: Volume, cams: Cameras, grid: Tensor, renderer: str, samples_per_voxel: float, max_memory_mb: float):
    """Yield the IndexRays of every (view, pixel) of ``grid`` (V or 1, N, 2) view-major, in chunks of at most
    the rays that fit ``max_memory_mb`` (on the CPU at most _CPU_CHUNK_MB) of the renderer's working memory."""
    mu = volume.data
    if renderer == "siddon":
        per_ray = siddon_bytes_per_ray(mu.shape, mu.dtype)
    else:
        per_ray = trilinear_bytes_per_ray(mu.shape, samples_per_voxel, mu.dtype)
    chunk_mb = min(max_memory_mb, _CPU_CHUNK_MB[renderer]) if mu.device.type == "cpu" else max_memory_mb
    rays_per_chunk = max(1, int(chunk_mb * 2**20 // per_ray))
    for views, pix in _chunks(len(cams), grid.shape[1], rays_per_chunk):
        yield rays_for_views(volume, cams, grid, views, pix)


def _chunks(n_views: int, n_pix: int, rays_per_chunk: int):
    """Yield (views, pixels) slices covering all rays view-major, each at most rays_per_chunk rays:
    whole groups of views when a view fits, else pieces of one view."""
    if n_pix <= rays_per_chunk:
        step = max(1, rays_per_chunk // n_pix)
        for v0 in range(0, n_views, step):
            yield slice(v0, min(n_views, v0 + step)), slice(0, n_pix)
    else:
        for v in range(n_views):
            for p0 in range(0, n_pix, rays_per_chunk):
                yield slice(v, v + 1), slice(p0, min(n_pix, p0 + rays_per_chunk))


def render_rays(
    mu: Tensor,
    rays: IndexRays,
    *,
    renderer: str = DEFAULT_RENDERER,
    samples_per_voxel: float = 1.0,
    stacks: Optional[SliceStacks] = None,
    compiled: bool = False,
) -> Tensor:
    """Line integrals along rays already in index space: (R,). ``stacks`` (re-stacked mu) may be
    shared between calls on the same volume; ``compiled`` applies to Siddon only."""
    if renderer == "siddon":
        return siddon_line_integrals(mu, rays, stacks, compiled=compiled)
    if renderer == "trilinear":
        return trilinear_line_integrals(mu, rays, samples_per_voxel, stacks)
    raise ValueError(f"unknown renderer {renderer!r}; use one of {RENDERERS}")


def beer_lambert(
    line_integrals: Tensor,
    i0: float = 1.0,
    *,
    poisson: bool = False,
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Detector intensities I = I0 exp(-line integral); with ``poisson`` each pixel is a Poisson draw
    with that mean (I0 is then the expected photon count of an unattenuated pixel)."""
    if i0 <= 0:
        raise ValueError(f"I0 must be > 0, got {i0}")
    intensity = i0 * torch.exp(-line_integrals)
    if poisson:
        intensity = torch.poisson(intensity.detach(), generator=generator)
    return intensity
