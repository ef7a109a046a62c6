"""The shared fitting loop of the iterative methods (voxel grid, hash-grid field).

A *model* is an ``nn.Module`` whose ``forward()`` returns mu (K, J, I) in 1/mm on the output grid; the
loop renders random ray mini-batches of it through :func:`XRayNeRFLib.render.render` (whose autograd is
the exact adjoint of the projector), compares them with the measured line integrals (L1), adds TV,
and steps Adam with a linear learning-rate decay.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..geometry import Cameras
from ..progress import Progress, ProgressCallback
from ..render import DEFAULT_RENDERER, RENDERERS, render
from ..volume import Volume
from .losses import LearnedLossWeights, l1_photometric, total_variation


@dataclass
class FitSettings:
    """iterations: Adam steps; lr: initial step (decays linearly to lr * final_lr_fraction);
    rays_per_view: rays per view and step (None: all pixels); tv_weight: lambda_TV (or the initial
    weight when learned); learned_weights: learn the data/TV weights (task uncertainty);
    renderer: "trilinear" (``render.DEFAULT_RENDERER``) | "siddon"; seed: ray sampling (and model init) seed; report_every: steps
    between progress reports.

    snapshot_every: call ``on_snapshot(step, seconds, mu)`` every that many steps (0: never) and once
    at the end; ``step`` is the number of finished Adam steps, ``seconds`` the optimisation wall time so
    far excluding the snapshot callbacks themselves, ``mu`` the current (K, J, I) float32 1/mm volume,
    detached (used for PSNR-versus-time curves)."""

    iterations: int = 300
    lr: float = 0.05
    final_lr_fraction: float = 0.1
    rays_per_view: Optional[int] = 256
    tv_weight: float = 1.0
    learned_weights: bool = False
    renderer: str = DEFAULT_RENDERER
    seed: int = 0
    report_every: int = 10
    snapshot_every: int = 0
    on_snapshot: Optional[Callable[[int, float, Tensor], None]] = None


@dataclass
class FitHistory:
    """Per-step losses (data L1, TV, total) and, with learned weights, the weights' trajectory."""

    data: List[float] = field(default_factory=list)
    tv: List[float] = field(default_factory=list)
    total: List[float] = field(default_factory=list)
    weights: List[Dict[str, float]] = field(default_factory=list)
    cancelled: bool = False
    best_step: int = -1


def make_adam(params, lr: float) -> torch.optim.Adam:
    """Adam over ``params``, fused where the parameters allow it: one pass over each parameter, cheaper per step
    than the default multi-tensor Adam on large parameters (docs/reconstruction.md) and equal to rounding; on other
    devices the default implementation."""
    params = list(params)
    fused = True if all(q.device.type in ("cpu", "cuda") and q.is_floating_point() for q in params) else None
    return torch.optim.Adam(params, lr=lr, fused=fused)


def fit(
    model: nn.Module,
    projections: Tensor,
    cameras: Cameras,
    like: Volume,
    settings: FitSettings,
    progress: ProgressCallback = None,
    carry: Optional[dict] = None,
) -> tuple[Volume, FitHistory]:
    """Fit ``model`` to the projections. Returns the best volume (lowest running mean of the data loss)
    and the history. A progress callback returning False stops and returns the best volume so far
    (``history.cancelled``). A non-finite loss raises RuntimeError naming the term and the step.

    carry: None, or a dict shared by consecutive fits of the same parameters (the hash-grid field's
    coarse-to-fine stages): a fit starts from the Adam moments and step counts (and the learned loss
    weights) that the previous fit left in it, at ``settings.lr``, and leaves its own there. A fresh
    Adam's first steps move every parameter by about the full learning rate (bias correction), which
    showed as a dip at the nerf stage switch."""
    if settings.iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {settings.iterations}")
    if settings.renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {settings.renderer!r}; use one of {RENDERERS}")
    if settings.tv_weight < 0:
        raise ValueError(f"tv_weight must be >= 0, got {settings.tv_weight}")
    gen = torch.Generator().manual_seed(settings.seed)
    cams = cameras.to(dtype=torch.float32)
    target = projections.detach().to(torch.float32)
    n_views, height, width = target.shape
    weights = None
    if settings.learned_weights:
        weights = carry.get("weights") if carry is not None else None
        if weights is None:
            weights = LearnedLossWeights(["data", "tv"], [1.0, max(settings.tv_weight, 1e-8)])
    params = list(model.parameters()) + (list(weights.parameters()) if weights is not None else [])
    opt = make_adam(params, settings.lr)
    if carry is not None and "adam" in carry:
        opt.load_state_dict(carry["adam"])  # raises if the parameters differ from the previous fit's
        for group in opt.param_groups:
            group["lr"] = settings.lr
            group.pop("initial_lr", None)
    n_it = settings.iterations
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - (1.0 - settings.final_lr_fraction) * min(s, n_it) / n_it)
    history = FitHistory()
    best, best_score, running = None, math.inf, None
    flat_target = target.reshape(n_views, -1)
    snap = settings.on_snapshot if settings.snapshot_every > 0 and settings.on_snapshot is not None else None
    t_start, t_snap = time.perf_counter(), 0.0

    def snapshot(n_done: int, mu_now: Tensor) -> None:
        nonlocal t_snap
        t0 = time.perf_counter()
        snap(n_done, t0 - t_start - t_snap, mu_now.detach().to(torch.float32))
        t_snap += time.perf_counter() - t0

    for step in range(n_it):
        opt.zero_grad(set_to_none=True)
        mu = model()
        vol = Volume(mu, like.ras_from_ijk, "mu")
        if settings.rays_per_view is None or settings.rays_per_view >= height * width:
            pred = render(vol, cams, renderer=settings.renderer).reshape(n_views, -1)
            meas = flat_target
        else:
            idx = torch.randint(0, height * width, (n_views, settings.rays_per_view), generator=gen)
            pix = torch.stack([(idx % width).float(), (idx // width).float()], -1)  # (V, N, 2) [col, row]
            pred = render(vol, cams, renderer=settings.renderer, pixels=pix)
            meas = torch.gather(flat_target, 1, idx)
        data = l1_photometric(pred, meas)
        tv = total_variation(mu) if settings.tv_weight > 0 else mu.new_zeros(())
        if weights is not None:
            total = weights({"data": data, "tv": tv})
        else:
            total = data + settings.tv_weight * tv
        for name, value in (("data (L1 of line integrals)", data), ("TV", tv), ("total", total)):
            if not torch.isfinite(value):
                raise RuntimeError(
                    f"the {name} loss became {float(value)} at step {step}: the optimisation diverged; "
                    f"lower the learning rate (now {settings.lr}) or check the projections for extreme values"
                )
        # keep the best volume of the *previous* parameters (the one just scored)
        d = float(data.detach())
        running = d if running is None else 0.9 * running + 0.1 * d
        if running < best_score:
            best_score, best, history.best_step = running, mu.detach().clone(), step
        total.backward()
        opt.step()
        sched.step()
        history.data.append(d)
        history.tv.append(float(tv.detach()))
        history.total.append(float(total.detach()))
        if weights is not None:
            history.weights.append(weights.weights())
        if snap is not None and (step + 1) % settings.snapshot_every == 0 and step + 1 < n_it:
            with torch.no_grad():
                snapshot(step + 1, model())
        if progress is not None and (step % settings.report_every == 0 or step == n_it - 1):
            preview = mu.detach()[mu.shape[0] // 2].clone()
            msg = f"step {step + 1}/{n_it}: L1 {d:.4g}, TV {float(tv.detach()):.3g}"
            if progress(Progress(step + 1, n_it, msg, preview)) is False:
                history.cancelled = True
                break
    if not history.cancelled:
        with torch.no_grad():
            final = model().detach()
        best = final  # the finished optimisation's last iterate (lr has decayed; mini-batch noise aside it is the best)
        history.best_step = n_it
    if snap is not None:
        snapshot(len(history.data), best)
    if carry is not None:
        carry["adam"] = opt.state_dict()
        carry["weights"] = weights
    return Volume(best, like.ras_from_ijk, "mu"), history
