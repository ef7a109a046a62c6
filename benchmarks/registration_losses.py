#!/usr/bin/env python
"""Loss study (issue 18, seed 002's central experiment): every registration loss on the same cases and starts.

Protocol: issue 14's independent targets (benchmarks/registration_independent.py, imported, not copied):
RTK Joseph X-rays of the patient (Beer-Lambert, Poisson, blur, gray curve gamma 0.8; 128 px of 3.2 mm),
the registered CT with 5 mm slices ending inside the field, poses near PA, starts 10 deg + 20 mm off (the
same seeds as the issue-14 rows). Each loss runs with every other setting at the engine's defaults (the
pyramid, Adam, the CT-coverage mask); only ``loss`` changes. Cases and losses alternate (case 0 with every
loss, then case 1, ...) so that a machine-load change hits every loss alike. 1 torch thread.

Reported per loss: success (mTRE < 2 mm), median and 90th-percentile mTRE, median and 90th-percentile
rotation error (deg, of the camera pose), median along-beam (depth) error, median wall seconds per case.

    python benchmarks/registration_losses.py --cases 8 --out /tmp/losses.md
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import registration_independent as ri  # noqa: E402

from XRayNeRFLib.geometry import Cameras  # noqa: E402
from XRayNeRFLib.registration import LOSS_NAMES, pose_errors, register  # noqa: E402

LOSSES = ("mse", "ssim", "ncc", "gncc", "mncc", "mi")
WORK = HERE / "_work" / "losses"


def run_case(ct, case: dict, image: torch.Tensor, w0: torch.Tensor, lms: torch.Tensor, loss: str) -> dict:
    """One registration with ``loss``; the issue-14 score plus the rotation error and the final loss."""
    cam = case["camera"]
    init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    t = time.perf_counter()
    res = register(ct, image, init, loss=loss)
    seconds = time.perf_counter() - t
    row = ri.score(res.world_from_camera, case, lms, seconds, res.iterations)
    e = pose_errors(res.world_from_camera, cam.world_from_camera[0], ct.center_ras().double())
    row.update(loss=loss, rotation_deg=e["rotation_deg"], final_loss=res.loss, load=os.getloadavg()[0])
    return row


def table(rows: list, losses) -> list:
    """Markdown rows, one per loss."""
    out = [
        "| loss | cases | success (mTRE < 2 mm) | median mTRE (mm) | 90th pct mTRE (mm) | median rot. err (deg) | "
        "90th pct rot. err (deg) | median depth (mm) | median s/case |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for loss in losses:
        r = [x for x in rows if x["loss"] == loss]
        if not r:
            continue
        m = np.array([x["mtre_mm"] for x in r])
        a = np.array([x["rotation_deg"] for x in r])
        out.append(
            f"| {loss} | {len(r)} | {sum(x['success'] for x in r)}/{len(r)} | {np.median(m):.2f} | {np.percentile(m, 90):.2f} | "
            f"{np.median(a):.2f} | {np.percentile(a, 90):.2f} | {np.median([x['depth_mm'] for x in r]):+.2f} | "
            f"{np.median([x['seconds'] for x in r]):.1f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ri.study_arguments(ap, WORK / "losses.md")
    ap.add_argument("--losses", nargs="+", default=list(LOSSES), choices=LOSS_NAMES)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start, t_all = os.getloadavg(), time.perf_counter()
    patient, ct, lms, centre, cases = ri.case_set(args.slice_mm, args.cases, args.seed)
    images = ri.make_targets(patient, cases, "rtk", args.seed)
    rows = []
    WORK.mkdir(parents=True, exist_ok=True)
    for c in cases:
        w0 = ri.start_pose(c, centre)
        for loss in args.losses:
            r = run_case(ct, c, images[c["index"]], w0, lms, loss)
            rows.append(r)
            print(
                f"case {c['index']} {loss}: mTRE {r['mtre_mm']:.2f} mm, rot {r['rotation_deg']:.2f} deg, "
                f"depth {r['depth_mm']:+.2f} mm, {r['seconds']:.1f} s (load {r['load']:.1f})",
                flush=True,
            )
            (WORK / "partial.json").write_text(json.dumps(rows, indent=1, default=float))
    what = f"{args.cases} cases x {len(args.losses)} losses"
    ri.write_study(args.out, WORK, table(rows, args.losses), {"rows": rows}, what, args, load_start, t_all, [r["load"] for r in rows])


if __name__ == "__main__":
    main()
