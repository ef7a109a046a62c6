"""Which coarse DRR while the CT moves: bin the detector more, or pool the CT? (the live overlay's one rule)

The live overlay (XRayNeRFMRML/live_overlay.py, used by the Slicer module and the browser app) shows a coarse DRR
while the user drags the CT, and the full-size DRR once the CT rests. This compares four coarse renders of the
sample chest CT (128 x 128 x 66 voxels) at LAO 20 / CRA 10 on a 256 x 256 detector of 1 mm pixels (and the same
field of view at 512 and 1024 pixels), on one torch thread:

* the full CT grid, detector binned by a power of two to 64 or 128 pixels a side;
* the CT average-pooled 2 x 2 x 2 (as the registration's coarse levels), detector binned to 64 or 128 pixels.

Time: median of the render (ms). Fidelity: what the view shows while dragging (the coarse DRR stretched back to the
full detector, bilinear) against what it shows at rest (the full-size DRR of the full CT): relative RMS error of
the values and of the image gradient (edges). The reference is our own full-size render on purpose: the question
is how far the coarse overlay is from the exact one the same projector draws at rest, not the projector's accuracy
(that is benchmarked against RTK elsewhere).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/overlay_coarse_rule.py [--reps 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "XRayNeRF")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=15, help="timed renders per option (default 15)")
    args = ap.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.registration.optimize import pooled_volume
    from XRayNeRFLib.render import DEFAULT_RENDERER, render
    from XRayNeRFLib.resources import resource
    from XRayNeRFLib.volume import Volume, as_mu, load_volume

    torch.set_num_threads(1)
    ct = as_mu(load_volume(str(resource("SampleData", "chest_ct_128.nii.gz"))))
    ct = Volume(ct.data.float().contiguous(), ct.ras_from_ijk.float(), ct.units)
    shape = torch.tensor(ct.data.shape[::-1], dtype=torch.float64)
    centre = (ct.ras_from_ijk.double() @ torch.cat([(shape - 1) / 2, torch.ones(1, dtype=torch.float64)]))[:3].tolist()
    pooled = pooled_volume(ct, 2)

    def drr(volume, cameras):
        with torch.no_grad():
            return render(volume, cameras, renderer=DEFAULT_RENDERER)[0]

    def grad(x):
        return torch.stack([x[1:, :-1] - x[:-1, :-1], x[:-1, 1:] - x[:-1, :-1]])

    load = os.getloadavg()
    print(f"torch {torch.__version__}, 1 thread, {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print("| detector | CT | coarse side (px) | binning | render median (ms) | value rel. error | gradient rel. error |")
    print("|---|---|---|---|---|---|---|")
    for n, spacing in ((256, 1.0), (512, 0.5), (1024, 0.25)):
        full = Cameras.carm(
            20.0, 10.0, sid_mm=800.0, sdd_mm=1200.0, size_px=(n, n), pixel_spacing_mm=(spacing, spacing),
            isocenter_ras=centre, patient_position="HFS", dtype=torch.float64,
        ).to(dtype=torch.float32)  # fmt: skip
        ref = drr(ct, full)
        options = [(name, vol, n // side) for name, vol in (("full", ct), ("pooled 2x", pooled)) for side in (64, 128)]
        times = {i: [] for i in range(len(options))}
        for _ in range(args.reps):  # interleaved, so that a change of load hits every option alike
            for i, (_, vol, f) in enumerate(options):
                t = time.perf_counter()
                drr(vol, full.downsampled(f))
                times[i].append(time.perf_counter() - t)
        for i, (name, vol, f) in enumerate(options):
            up = F.interpolate(drr(vol, full.downsampled(f))[None, None], size=(n, n), mode="bilinear", align_corners=False)[0, 0]
            value = float((up - ref).norm() / ref.norm())
            edges = float((grad(up) - grad(ref)).norm() / grad(ref).norm())
            ms = 1000 * statistics.median(times[i])
            print(f"| {n} | {name} | {n // f} | {f} | {ms:.1f} | {value:.4f} | {edges:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
