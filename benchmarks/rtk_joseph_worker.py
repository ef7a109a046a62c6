#!/usr/bin/env python
"""RTK Joseph forward projection worker for benchmarks/bench_drr.py (runs in its own process: itk-rtk
is kept out of the torch processes).

    python benchmarks/rtk_joseph_worker.py --worker CONFIG.json

CONFIG.json (written by bench_drr.py) holds the volume (.mha, mu in 1/mm, ITK physical LPS), the views
as RTK ``AddProjection(source, detector, rowVector, columnVector)`` arguments in LPS mm with the
projection image origin/spacing, the number of threads and repeats, and where to write the images
(V, H, W) float32 in our row order, plus a JSON of timings and peak memory.

RTK's detector: pixel (i, j) of a projection lies at detector + u * rowVector + v * columnVector with
(u, v) = origin + (i, j) * spacing, and rowVector x columnVector must point towards the source.
bench_drr.py sets rowVector = our column axis and columnVector = minus our row axis, so RTK's row j is
our row H-1-j: the images are flipped back here.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    """VmHWM: peak resident memory of this process since exec (ru_maxrss would include the parent's)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(cfg_path: str) -> None:
    cfg = json.loads(Path(cfg_path).read_text())
    import itk
    from itk import RTK as rtk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(cfg["threads"]))
    meta = cfg["meta"]
    H = W = int(meta["detector_px"])
    ImageType = itk.Image[itk.F, 3]
    volume = itk.imread(meta["mha"], itk.F)

    filters = []
    for view in meta["rtk_views"]:
        geometry = rtk.ThreeDCircularProjectionGeometry.New()
        ok = geometry.AddProjection(
            itk.Point[itk.D, 3](view["source_lps"]),
            itk.Point[itk.D, 3](view["detector_lps"]),
            itk.Vector[itk.D, 3](view["row_vector_lps"]),
            itk.Vector[itk.D, 3](view["column_vector_lps"]),
        )
        if not ok:
            raise RuntimeError(f"RTK refused the view {view}: row/column vectors not orthogonal or source on the detector")
        proj = itk.image_from_array(np.zeros((1, H, W), dtype=np.float32))
        proj.SetSpacing([view["spacing_uv_mm"][0], view["spacing_uv_mm"][1], 1.0])
        proj.SetOrigin([view["origin_uv_mm"][0], view["origin_uv_mm"][1], 0.0])
        f = rtk.JosephForwardProjectionImageFilter[ImageType, ImageType].New()
        f.SetInput(0, proj)
        f.SetInput(1, volume)
        f.SetGeometry(geometry)
        f.SetInPlace(False)  # keep the zero input: repeated runs must not accumulate
        filters.append(f)

    def render_view(v: int) -> np.ndarray:
        f = filters[v]
        f.Modified()
        f.Update()
        out = itk.array_from_image(f.GetOutput())[0]  # (H, W), RTK row order
        return out[::-1].copy()  # our row order

    baseline = rss_mb()
    images, warm = [], []
    for v in range(len(filters)):
        t0 = time.perf_counter()
        images.append(render_view(v))
        warm.append(time.perf_counter() - t0)
    times = []
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    for r in range(int(cfg["repeats"])):
        v = r % len(filters)
        t0 = time.perf_counter()
        img = render_view(v)
        times.append(time.perf_counter() - t0)
        if r < len(filters) and not np.allclose(img, images[v], rtol=1e-5, atol=1e-6):
            raise RuntimeError("RTK gave a different image on a repeated run (accumulating in place?)")
    u1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (u1.ru_utime + u1.ru_stime) - (u0.ru_utime + u0.ru_stime)
    np.save(cfg["images_npy"], np.stack(images).astype(np.float32))
    Path(cfg["result_json"]).write_text(
        json.dumps(
            {
                "times_s": times,
                "warmup_s": warm,
                "cores_busy": cpu_s / max(sum(times), 1e-9),
                "baseline_rss_mb": baseline,
                "peak_rss_mb": peak_rss_mb(),
                "threads": int(cfg["threads"]),
            }
        )
    )


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--worker":
        raise SystemExit(__doc__)
    main(sys.argv[2])
