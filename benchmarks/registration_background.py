#!/usr/bin/env python
"""The "bgfit" loss (registration/background.py: the X-ray fitted by a gray curve of the DRR plus a smooth
polynomial background) against MI on issue 14's independent targets: does it help on the "physics" targets (their
scatter-like background) without hurting on the RTK Joseph ones?

Protocol: issue 14's cases, targets and starts (benchmarks/registration_independent.py: the 5 mm CT ending in the
field, 128 px of 3.2 mm, starts 10 deg + 20 mm off, 20 landmarks), ours with its defaults and only the loss
changed ("mi": the defaults' row; "bgfit:D": background degree D, gray-curve degree 3). Scores: success (mTRE
< 2 mm), median / worst mTRE, median signed and absolute along-beam error and median in-plane error of the
landmarks (registration_independent.depth_split). Accuracy is deterministic; the seconds depend on the load.

Run: ``python benchmarks/registration_background.py --models physics rtk --losses mi bgfit:2 bgfit:4`` (the
targets are cached under benchmarks/_work/independent/ by bench_registration.py --independent, or made here).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import registration_independent as ri  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["physics", "rtk"])
    ap.add_argument("--losses", nargs="+", default=["mi", "bgfit:4"], help='"mi", or "bgfit:D" (background degree D)')
    ap.add_argument("--cases", type=int, default=12)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    patient, ct, lms, _, cases = ri.case_set(5.0, args.cases, args.seed)
    lines = [
        "| targets | loss | success | median mTRE (mm) | worst mTRE (mm) | median depth (mm) "
        "| median abs depth (mm) | median in-plane (mm) | median s/case | load (1 min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in args.models:
        images = ri.make_targets(patient, cases, model, args.seed)
        for loss in args.losses:
            t0 = time.perf_counter()
            name, _, degree = loss.partition(":")
            options = {"background_degree": int(degree)} if degree else None
            rows = ri.ours_rows(ct, cases, images, lms, {"loss": name, "loss_options": options})
            s = ri.summary(rows)
            lines.append(
                f"| {model} | {loss} | {sum(r['success'] for r in rows)}/{s['n']} | {s['median_mtre_mm']:.2f} | "
                f"{s['max_mtre_mm']:.2f} | {s['median_depth_mm']:+.2f} | {s['median_abs_depth_mm']:.2f} | "
                f"{s['median_in_plane_mm']:.2f} | {s['median_seconds']:.1f} | {os.getloadavg()[0]:.1f} |"
            )
            print(lines[-1], f"({time.perf_counter() - t0:.0f} s)", flush=True)
            print("  per case mTRE:", " ".join(f"{r['mtre_mm']:.2f}" for r in rows), flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
