#!/usr/bin/env python
"""Why the CT-coverage mask's closed-face rule moved the end-in-field test (issue 18, branch cov): mask or blur?

Scenario: that of tests/test_registration_coverage.py::test_registration_of_a_ct_that_ends_inside_the_field,
unchanged: the shipped chest CT at 48^3 (7 mm slices) is the patient; the registered CT is its central half
(166 mm, ending inside the ~330 mm field); two views (PA; primary 8, secondary -6 deg), 64 px of 8 mm, target
X-rays from registration.simulate.simulate_xray (Siddon, Poisson, Gaussian blur ``--blur-px``, gray curve);
starts 4 deg / 8 mm off (the test's) or at the true pose ("truth": where the loss's optimum itself lies);
``register`` at the engine's defaults with levels (4, 2, 1) and the CT-coverage mask.

Rows:
  rule        "beam axis": the rule before the closed-face rule (every face of the CT counted open, so only rays
              through both faces across the beam count: coverage.open_faces patched to all True, here only);
              "closed faces": today's coverage.ct_coverage_mask.
  comparison  "engine": the engine's loss as it is; "oracle blur": the DRR blurred by the target's own, known
              blur before MI (a diagnostic only, never a method: it tells whether the blur the DRR lacks moves
              the optimum).
Columns: mTRE (mm, 20 landmarks in the CT) and the camera's signed shift along its principal ray (mm) per view.

    python benchmarks/registration_coverage_blur.py --out /tmp/coverage_blur.md
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import XRayNeRFLib.registration.coverage as coverage  # noqa: E402
from XRayNeRFLib.geometry import Cameras  # noqa: E402
from XRayNeRFLib.registration import register, target_registration_error  # noqa: E402
from XRayNeRFLib.registration.losses import mutual_information  # noqa: E402
from XRayNeRFLib.registration.simulate import landmarks, perturb_pose, resample_volume, simulate_xray  # noqa: E402
from XRayNeRFLib.volume import Volume, as_mu, load_volume  # noqa: E402

VIEWS = ((0.0, 0.0), (8.0, -6.0))
FULL_PX = 64


def scenario():
    """(patient mu, registered CT, its centre (3,) float64 RAS mm, 20 landmarks): the test's, rebuilt."""
    chest = resample_volume(load_volume(str(HERE.parent / "Resources" / "SampleData" / "chest_ct_128.nii.gz")), (48, 48, 48))
    patient = as_mu(chest)
    shift = torch.eye(4, dtype=torch.float64)
    shift[2, 3] = 12
    ct = Volume(patient.data[12:36].contiguous(), (patient.ras_from_ijk.double() @ shift).float(), "mu")
    return patient, ct, ct.center_ras().double(), landmarks(ct, 20, seed=0)


def blurred(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """(B, H, W) blurred as simulate_xray blurs (separable Gaussian, 3 sigma, replicate borders)."""
    r = max(1, int(math.ceil(3 * sigma_px)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / sigma_px) ** 2)
    g = g / g.sum()
    y = F.conv2d(F.pad(x[:, None], (r, r, 0, 0), mode="replicate"), g.reshape(1, 1, 1, -1))
    return F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), g.reshape(1, 1, -1, 1))[:, 0]


def oracle_loss(blur_px: float):
    """-MI after blurring the DRR by the target's blur, scaled to the level's pixels (diagnostic only)."""

    def loss(moving, fixed, mask=None):
        m = moving if moving.ndim == 3 else moving[None]
        sigma = blur_px * m.shape[-1] / FULL_PX
        if sigma >= 0.25:
            m = blurred(m, sigma)
        return -mutual_information(m, fixed, mask)

    return loss


def run(rule: str, comparison: str, start: str, blur_px: float, data) -> list:
    patient, ct, centre, lms = data
    saved = coverage.open_faces
    if rule == "beam axis":
        coverage.open_faces = lambda volume: torch.ones(3, 2, dtype=torch.bool)
    try:
        out = []
        for prim, sec in VIEWS:
            cam = Cameras.carm(
                prim,
                sec,
                sid_mm=650,
                sdd_mm=1020,
                size_px=(FULL_PX, FULL_PX),
                pixel_spacing_mm=8.0,
                isocenter_ras=centre,
                dtype=torch.float64,
            )
            image = simulate_xray(patient, cam, seed=0, blur_sigma_px=blur_px)[0].float()
            truth = cam.world_from_camera[0]
            w0 = truth if start == "truth" else perturb_pose(truth, centre, 4.0, 8.0, np.random.default_rng(1))
            init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
            extra = {"loss": oracle_loss(blur_px)} if comparison == "oracle blur" and blur_px > 0 else {}
            r = register(ct, image, init, levels=(4, 2, 1), ct_coverage=True, **extra)
            mtre = float(target_registration_error(r.world_from_camera, truth, lms).mean())
            along = float((r.world_from_camera[:3, 3] - truth[:3, 3]) @ truth[:3, 2])
            out.append((mtre, along))
        return out
    finally:
        coverage.open_faces = saved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blur-px", type=float, nargs="+", default=[1.0, 0.0], help="target blur sigmas (px of 8 mm)")
    ap.add_argument("--out", default=str(HERE / "_work" / "coverage_blur.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    load0, t0 = os.getloadavg(), time.perf_counter()
    data = scenario()
    lines = [
        "| target blur (px) | rule | comparison | start | PA: mTRE / along-beam (mm) | 8/-6 deg: mTRE / along-beam (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for blur in args.blur_px:
        for comparison in ("engine", "oracle blur") if blur > 0 else ("engine",):
            for start in ("4 deg / 8 mm", "truth"):
                for rule in ("beam axis", "closed faces"):
                    res = run(rule, comparison, start, blur, data)
                    cells = " | ".join(f"{m:.2f} / {a:+.2f}" for m, a in res)
                    lines.append(f"| {blur:g} | {rule} | {comparison} | {start} | {cells} |")
                    print(lines[-1], flush=True)
    lines += [
        "",
        f"1 torch thread; load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores; "
        f"{(time.perf_counter() - t0) / 60:.1f} min in all.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
