#!/usr/bin/env python
"""One of our reconstructions in its own process (for benchmarks/bench_recon.py): peak memory (VmHWM)
is this method's alone.

    python benchmarks/recon_worker.py CONFIG.json

CONFIG.json:
    projections_npy  (V, H, W) float32 line integrals, our layout
    geometry_json    cameras (XRayNeRFLib.geometry_io.save_geometry)
    like_npy / ras_from_ijk_npy   the output grid (and the ground truth, for the PSNR-versus-time curve)
    threads          torch threads
    method           "fdk" | "voxel" | "nerf"
    params           method settings: iterations, renderer, seed and XRayNeRFLib.recon.api.reconstruct's
                     options (window; lr, rays_per_view, tv_weight, learned_weights, ...; NerfSettings fields)
    snapshot_every   steps between curve points (iterative methods; 0: none)
    out_npy, report  where the volume (K, J, I) float32 1/mm and the JSON report go

The report holds the wall time of the reconstruction call (input loading and the curve's callbacks
excluded), the peak RSS, and the curve [(step, seconds, PSNR dB)]: FitSettings' on_snapshot times
shifted by the set-up before the loop (FDK start), so that the last point is at the reported time.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recon_common import peak_rss_mb, psnr_db, save_json  # noqa: E402


def run(cfg: dict) -> None:
    import torch

    torch.set_num_threads(int(cfg.get("threads", 2)))
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.recon.fdk import fdk
    from XRayNeRFLib.recon.optimize import FitSettings
    from XRayNeRFLib.recon.voxel import reconstruct_voxel
    from XRayNeRFLib.volume import Volume

    proj = torch.from_numpy(np.load(cfg["projections_npy"]))
    cams = load_geometry(cfg["geometry_json"], dtype=torch.float32)
    gt = torch.from_numpy(np.load(cfg["like_npy"]))
    like = Volume(torch.zeros_like(gt), torch.from_numpy(np.load(cfg["ras_from_ijk_npy"])).float(), "mu")
    data_range = float(gt.max() - gt.min())
    params = dict(cfg.get("params", {}))
    method = cfg["method"]
    curve, snap_s = [], [0.0]

    def on_snapshot(step, seconds, mu):
        t = time.perf_counter()
        curve.append((int(step), float(seconds), psnr_db(mu, gt, data_range)))
        snap_s[0] += time.perf_counter() - t

    def fit_settings(p):
        known = {"iterations", "lr", "final_lr_fraction", "rays_per_view", "tv_weight", "learned_weights", "renderer", "seed"}
        extra = set(p) - known
        if extra:
            raise ValueError(f"unknown fit settings {sorted(extra)}; accepted: {sorted(known)}")
        return FitSettings(**p, snapshot_every=int(cfg.get("snapshot_every", 0)), on_snapshot=on_snapshot, report_every=10**9)

    try:  # the public entry point when it exists (XRayNeRFLib.recon.api), else the functions
        from XRayNeRFLib.recon.api import reconstruct
    except ImportError:
        reconstruct = None
    # torch.optim's first Adam imports torch._dynamo (seconds, once per process): a library import like
    # RTK's `import itk`, which its worker also does before its clock starts
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    t0 = time.perf_counter()
    if reconstruct is not None:
        if method not in ("fdk", "voxel", "nerf"):
            raise ValueError(f"unknown method {method!r}; use fdk, voxel or nerf")
        iterations = params.pop("iterations", None)
        renderer = params.pop("renderer", "siddon")
        seed = params.pop("seed", 0)
        if method != "fdk":
            params.update(snapshot_every=int(cfg.get("snapshot_every", 0)), on_snapshot=on_snapshot, report_every=10**9)
        vol = reconstruct(proj, cams, method, volume=like, renderer=renderer, iterations=iterations, seed=seed, options=params).volume
    elif method == "fdk":
        vol = fdk(proj, cams, volume=like, window=params.get("window", "hann"))
    elif method == "voxel":
        init = params.pop("init", "fdk")
        positivity = params.pop("positivity", "softplus")
        vol = reconstruct_voxel(proj, cams, volume=like, init=init, positivity=positivity, settings=fit_settings(params))
    elif method == "nerf":
        from XRayNeRFLib.recon.nerf import NerfSettings, reconstruct_nerf

        settings = NerfSettings(**params, snapshot_every=int(cfg.get("snapshot_every", 0)), on_snapshot=on_snapshot, report_every=10**9)
        vol = reconstruct_nerf(proj, cams, volume=like, settings=settings)
    else:
        raise ValueError(f"unknown method {method!r}; use fdk, voxel or nerf")
    seconds = time.perf_counter() - t0 - snap_s[0]  # the curve's callbacks are not the method's time
    if curve:  # shift the curve by the set-up before the loop (FDK start etc.) so it ends at `seconds`
        setup = seconds - curve[-1][1]
        curve = [(s_, t + setup, p) for s_, t, p in curve]
    mu = vol.data.detach().float().contiguous()
    np.save(cfg["out_npy"], mu.numpy())
    save_json(cfg["report"], {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "curve": curve, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        run(json.load(f))
