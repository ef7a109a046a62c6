#!/usr/bin/env python
"""Uncertainty versus error (for benchmarks/bench_recon.py, own process).

    python benchmarks/recon_uncertainty.py CONFIG.json

Runs ``XRayNeRFLib.recon.api.reconstruct(..., uncertainty=True, ensemble_size=E)`` with the given voxel
settings on one case and compares the per-voxel spread with the absolute error of the returned volume
against the ground truth inside the body (gt > mu(-500 HU)): Spearman rank correlation, Pearson r, and
the mean absolute error in the top 10% most uncertain body voxels against the other 90%.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recon_common import body_mask, metrics, peak_rss_mb, save_json  # noqa: E402


def main(cfg: dict) -> None:
    import torch

    torch.set_num_threads(int(cfg.get("threads", 2)))
    from XRayNeRFLib.geometry_io import load_geometry
    from XRayNeRFLib.recon.api import reconstruct
    from XRayNeRFLib.recon.uncertainty import spearman
    from XRayNeRFLib.volume import Volume

    case = cfg["case"]
    proj = torch.from_numpy(np.load(case["projections_npy"]))
    cams = load_geometry(case["geometry_json"], dtype=torch.float32)
    gt = torch.from_numpy(np.load(case["ct"]["gt_npy"]))
    like = Volume(torch.zeros_like(gt), torch.from_numpy(np.load(case["ct"]["ras_from_ijk_npy"])).float(), "mu")
    params = dict(cfg["params"])
    iterations = params.pop("iterations", None)
    renderer = params.pop("renderer", "siddon")
    seed = params.pop("seed", 0)
    t0 = time.perf_counter()
    res = reconstruct(
        proj,
        cams,
        "voxel",
        volume=like,
        renderer=renderer,
        iterations=iterations,
        seed=seed,
        uncertainty=True,
        ensemble_size=int(cfg["ensemble_size"]),
        options=params,
    )
    seconds = time.perf_counter() - t0
    mu, u = res.volume.data.float(), res.uncertainty.data.float()
    err = (mu - gt).abs()
    body = body_mask(gt)
    e, s = err[body].double(), u[body].double()
    pearson = float(((e - e.mean()) * (s - s.mean())).sum() / ((e - e.mean()).norm() * (s - s.mean()).norm()))
    top = s >= torch.quantile(s[torch.randperm(s.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]], 0.9)
    m = metrics(mu, gt)
    save_json(
        cfg["out"],
        {
            "method": f"{cfg['ensemble_size']} members, {'OS-TV' if params.get('solver') == 'os-tv' else 'Adam'} {renderer}, "
            f"{iterations} {'passes' if params.get('solver') == 'os-tv' else 'steps'} each",
            "spearman_body": spearman(s, e),
            "pearson_body": pearson,
            "mae_top10pct_uncertain_per_mm": float(e[top].mean()),
            "mae_other90pct_per_mm": float(e[~top].mean()),
            "ensemble_mean_psnr_db": m["psnr_db"],
            "ensemble_mean_ssim": m["ssim"],
            "seconds": seconds,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        main(json.load(f))
