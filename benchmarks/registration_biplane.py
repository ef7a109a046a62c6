#!/usr/bin/env python
"""Biplane vs single-view registration (issue 18): does a second view remove the along-beam (depth) error?

Protocol: issue 14's independent targets and cases (benchmarks/registration_independent.py, imported):
the patient CT, the registered CT with 5 mm slices ending inside the field, RTK Joseph X-rays (Beer-Lambert,
Poisson, blur, gray curve gamma 0.8; 256 px rendered, 128 px of 3.2 mm registered). Each case's first view
is issue 14's view (C-arm near PA: angles +-15 deg, isocentre +-30 mm); its partner shares the isocentre and
the secondary angle:
  "PA + lateral"   partner at primary angle + 90 deg;
  "LAO/RAO 45"     the pair at primary angle -45 and +45 deg (the issue-14 view itself is not used).
Start: issue 14's start of the first view (10 deg about a random axis through the CT centre + 20 mm, same
seeds); the partner's start is moved by the same patient motion (one pose). Each case runs the first view
alone, the second alone and both together (``register`` with two X-rays), all at the engine's defaults.

Reported per method: success (mTRE < 2 mm), median mTRE, median |along-beam| error of each view's beam
(landmarks' mean signed error along that view's principal ray, absolute), median in-plane error in the
first view's frame, median wall seconds (1 torch thread).

    python benchmarks/registration_biplane.py --cases 8 --out /tmp/biplane.md
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

from XRayNeRFLib.geometry import Cameras, rigid_inverse  # noqa: E402
from XRayNeRFLib.registration import register, target_registration_error  # noqa: E402

WORK = HERE / "_work" / "biplane"
PAIRS = {"PA + lateral": (0.0, 90.0), "LAO/RAO 45": (-45.0, 45.0)}


def pair_views(ct, n: int, seed: int, offsets: tuple) -> list:
    """Per case two views (dicts as registration_independent.views) at primary angle + each offset, the
    case's isocentre and secondary angle (the random draws of ri.views, replayed)."""
    return [list(pair) for pair in zip(*(ri.views(ct, n, seed, off) for off in offsets))]


def errors(w_est_a: torch.Tensor, pair: list, lms: torch.Tensor, seconds: float, iterations: int) -> dict:
    """Scores of an estimated pose of view a (the CT correction is shared, so view b's estimate follows):
    mTRE, |depth| along each view's beam, in-plane in view a's frame."""
    wa, wb = pair[0]["camera"].world_from_camera[0], pair[1]["camera"].world_from_camera[0]
    w_est_b = w_est_a @ rigid_inverse(wa) @ wb  # the same patient motion seen from b
    da, db = ri.depth_split(w_est_a, wa, lms), ri.depth_split(w_est_b, wb, lms)
    mtre = float(target_registration_error(w_est_a, wa, lms).mean())
    return {
        "mtre_mm": mtre,
        "success": mtre < 2.0,
        "depth_a_mm": da["depth_mm"],
        "depth_b_mm": db["depth_mm"],
        "in_plane_a_mm": da["in_plane_mm"],
        "seconds": seconds,
        "iterations": iterations,
    }


def start(cam: Cameras, w: torch.Tensor) -> Cameras:
    return Cameras(w[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)


def run_pair(ct, pair: list, images: list, w0_a: torch.Tensor, lms: torch.Tensor) -> dict:
    """The first view alone, the second alone, both: {method: scores}."""
    ca, cb = pair[0]["camera"], pair[1]["camera"]
    motion = w0_a @ rigid_inverse(ca.world_from_camera[0])
    s_a, s_b = start(ca, w0_a), start(cb, motion @ cb.world_from_camera[0])
    out = {}
    for name, imgs, cams in (("view 1 alone", [images[0]], [s_a]), ("view 2 alone", [images[1]], [s_b]), ("biplane", images, [s_a, s_b])):
        t = time.perf_counter()
        res = register(ct, imgs, cams)
        seconds = time.perf_counter() - t
        # The estimated pose of view 1 from whichever view(s) ran: the correction is shared.
        w_est_a = (
            res.world_from_camera if name != "view 2 alone" else res.world_from_camera @ rigid_inverse(s_b.world_from_camera[0]) @ w0_a
        )
        out[name] = {**errors(w_est_a, pair, lms, seconds, res.iterations), "load": os.getloadavg()[0]}
    return out


def _median_abs(rows: list, key: str) -> float:
    return float(np.median([abs(x[key]) for x in rows]))


def table(results: dict) -> list:
    out = [
        "| pair | method | cases | success | median mTRE (mm) | median abs depth, view 1 beam (mm) | median abs depth, view 2 beam (mm) | "
        "median in-plane, view 1 (mm) | median s/case |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for pair, rows in results.items():
        for method in ("view 1 alone", "view 2 alone", "biplane"):
            r = [x[method] for x in rows if method in x]
            if not r:
                continue
            out.append(
                f"| {pair} | {method} | {len(r)} | {sum(x['success'] for x in r)}/{len(r)} | {_median_abs(r, 'mtre_mm'):.2f} | "
                f"{_median_abs(r, 'depth_a_mm'):.2f} | "
                f"{_median_abs(r, 'depth_b_mm'):.2f} | {_median_abs(r, 'in_plane_a_mm'):.2f} | {_median_abs(r, 'seconds'):.1f} |"
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ri.study_arguments(ap, WORK / "biplane.md")
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start, t_all = os.getloadavg(), time.perf_counter()
    patient, ct, lms, centre, reference = ri.case_set(args.slice_mm, args.cases, args.seed)  # the starts: issue 14's views
    results = {}
    WORK.mkdir(parents=True, exist_ok=True)
    for name in args.pairs:
        pairs = pair_views(ct, args.cases, args.seed, PAIRS[name])
        images = [ri.make_targets(patient, [p[k] for p in pairs], "rtk", args.seed) for k in (0, 1)]
        results[name] = []
        for i, (p, r) in enumerate(zip(pairs, reference)):
            w_ref = ri.start_pose(r, centre)
            motion = w_ref @ rigid_inverse(r["camera"].world_from_camera[0])  # issue 14's start as a patient motion
            row = run_pair(ct, p, [images[0][i], images[1][i]], motion @ p[0]["camera"].world_from_camera[0], lms)
            results[name].append(row)
            print(
                f"{name} case {i}: "
                + ", ".join(
                    f"{m} mTRE {v['mtre_mm']:.2f} depth1 {v['depth_a_mm']:+.2f} depth2 {v['depth_b_mm']:+.2f} {v['seconds']:.0f} s"
                    for m, v in row.items()
                )
                + f" (load {row['biplane']['load']:.1f})",
                flush=True,
            )
            (WORK / "partial.json").write_text(json.dumps(results, indent=1, default=float))
    loads = [x[m]["load"] for rows in results.values() for x in rows for m in x]
    ri.write_study(args.out, WORK, table(results), {"results": results}, f"{args.cases} cases per pair", args, load_start, t_all, loads)


if __name__ == "__main__":
    main()
