"""Latency of the Registration module's live overlay under manual alignment (MRML, no Qt).

The sample CT (Resources/SampleData/chest_ct_128.nii.gz, read by Slicer's volumes logic on slicer-core) under a
linear transform node, an X-ray node of 256 x 256 pixels with its camera (C-arm LAO 20 / CRA 10, source-isocentre
750 mm, source-detector 1200 mm, 1 mm pixels, isocentre at the CT's centre: the DRR module's defaults, as the web
benchmark's X-ray), and ``XRayNeRFMRML.live_overlay.LiveOverlay`` with manual timers. Measured per step, from
setting the transform node's matrix (a small random rigid motion, as one slider or handle step) to the DRR image
node holding the new image:

* **full size** (a change after a pause, and the render at rest): the 256 x 256 detector;
* **coarse while dragging** (a change within ``idle_s`` of the previous render): the detector binned by the
  overlay's coarse factor (64 x 64 for 256 x 256).

The time is the work done on the change (the observer, the throttle's timer callback called at once, the render
with the engine's default renderer, the node write); in Slicer the throttle window (``interval_s``) comes on top
for the first change of a burst, and the slice view's redraw after.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_overlay_slicer.py [--steps 40] [--threads 2]

``--threads`` is the overlay's ``num_threads`` (its default is ``live_overlay.RENDER_THREADS``).

Results: benchmarks/RESULTS_registration.md, section "Live overlay (Slicer)" (with the machine's load average).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))
sys.path.insert(0, str(REPO / "XRayNeRF"))
sys.path.insert(0, str(REPO))


def scene(size_px: int = 256, pixel_mm: float = 1.0):
    """(core, ct node, x-ray node, transform node) of the benchmark's scene."""
    import slicer_harness

    core = slicer_harness.new_scene()
    import slicer
    import torch

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFMRML import sampledata
    from XRayNeRFMRML.nodes import volume_centre_ras, write_image_node

    ct = core.logics["Volumes"].AddArchetypeVolume(str(sampledata.sample_data_dir() / sampledata.CT_FILE), "chest CT")
    cams = Cameras.carm(
        20.0,
        10.0,
        sid_mm=750.0,
        sdd_mm=1200.0,
        size_px=(size_px, size_px),
        pixel_spacing_mm=pixel_mm,
        isocenter_ras=volume_centre_ras(ct).tolist(),
        dtype=torch.float64,
    )
    xray = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "X-ray")
    write_image_node(xray, np.zeros((size_px, size_px), np.float32), cams)
    transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT pose")
    ct.SetAndObserveTransformNodeID(transform.GetID())
    return core, ct, xray, transform


def step_matrix(rng, k: int) -> np.ndarray:
    """A small rigid motion (about 1 degree, 2 mm), different at each step."""
    from XRayNeRFMRML.manual_pose import rotation_about

    m = np.eye(4)
    m[:3, :3] = rotation_about(rng.normal(size=3), 1.0 + 0.1 * (k % 5))
    m[:3, 3] = rng.normal(scale=2.0, size=3)
    return m


def measure(steps: int, threads=None) -> dict:
    import slicer

    from XRayNeRFMRML.live_overlay import LiveOverlay
    from XRayNeRFMRML.throttle import ManualTimer

    _core, ct, xray, transform = scene()
    timers = []

    def make_timer(callback):
        timers.append(ManualTimer(callback))
        return timers[-1]

    live = LiveOverlay(ct, xray, make_timer=make_timer, idle_s=3600.0, num_threads=threads)  # idle fired by hand below
    throttle, idle = timers
    rng = np.random.default_rng(0)
    full, coarse = [], []

    def one(k: int) -> float:
        t0 = time.perf_counter()
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(step_matrix(rng, k)))
        throttle.fire()
        slicer.util.arrayFromVolume(live.drr_node)  # the node holds the new image
        return time.perf_counter() - t0

    for k in range(-1, steps):  # k = -1: warm-up (first allocations), not counted
        a = one(k)  # after a pause: full size
        b = one(k)  # while moving: coarse
        assert idle.fire()  # at rest: full size again
        if k >= 0:
            full.append(a)
            coarse.append(b)
    assert live.updates == [False, True, False] * (steps + 1), live.updates
    size = slicer.util.arrayFromVolume(live.drr_node).shape
    live.stop()
    return dict(full=full, coarse=coarse, coarse_factor=live.coarse_factor, final_shape=size)


def summary(name: str, seconds) -> str:
    ms = sorted(1000.0 * s for s in seconds)
    p90 = ms[min(len(ms) - 1, int(round(0.9 * (len(ms) - 1))))]
    return f"| {name} | {len(ms)} | {statistics.median(ms):.1f} | {p90:.1f} | {ms[0]:.1f} | {ms[-1]:.1f} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads of the overlay's renders (LiveOverlay num_threads)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    load = os.getloadavg()
    r = measure(args.steps, args.threads)
    after = os.getloadavg()
    f = r["coarse_factor"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs; load average before {load}, after {after}")
    print("| path | steps | median ms | p90 ms | min ms | max ms |")
    print("|---|---|---|---|---|---|")
    print(summary("full size 256 x 256", r["full"]))
    print(summary(f"coarse while dragging {256 // f} x {256 // f} (binned {f})", r["coarse"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
