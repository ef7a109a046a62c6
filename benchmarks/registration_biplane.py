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
from XRayNeRFLib.registration.simulate import landmarks, perturb_pose  # noqa: E402

WORK = HERE / "_work" / "biplane"
PAIRS = {"PA + lateral": (0.0, 90.0), "LAO/RAO 45": (-45.0, 45.0)}


def pair_views(ct, n: int, seed: int, offsets: tuple) -> list:
    """Per case two views (dicts as registration_independent.views) at primary angle + each offset, the
    case's isocentre and secondary angle (the random draws of ri.views, replayed)."""
    rng = np.random.default_rng(seed)
    centre = ct.center_ras().double()
    out = []
    for i in range(n):
        prim, sec = rng.uniform(-15, 15, size=2)
        iso = centre + torch.from_numpy(rng.uniform(-30, 30, size=3))
        pair = []
        for off in offsets:
            cam = Cameras.carm(
                prim + off,
                sec,
                sid_mm=ri.SID_MM,
                sdd_mm=ri.SDD_MM,
                size_px=(ri.RENDER_PX, ri.RENDER_PX),
                pixel_spacing_mm=ri.RENDER_SPACING_MM,
                isocenter_ras=iso,
                dtype=torch.float64,
            )
            pair.append(
                {"index": i, "angles_deg": [float(prim + off), float(sec)], "camera_render": cam, "camera": cam.downsampled(ri.BIN)}
            )
        out.append(pair)
    return out


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
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--pairs", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--slice-mm", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(WORK / "biplane.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start, t_all = os.getloadavg(), time.perf_counter()
    patient = ri.patient_ct()
    ct = ri.registration_ct(patient, args.slice_mm)
    lms = landmarks(ct, 20, seed=args.seed)
    centre = ct.center_ras().double()
    reference = ri.views(ct, args.cases, args.seed)  # issue 14's views: the starts are drawn from them
    results = {}
    WORK.mkdir(parents=True, exist_ok=True)
    for name in args.pairs:
        pairs = pair_views(ct, args.cases, args.seed, PAIRS[name])
        if PAIRS[name][0] == 0.0:  # the replayed draws give issue 14's view exactly
            for p, r in zip(pairs, reference):
                assert torch.equal(p[0]["camera"].world_from_camera, r["camera"].world_from_camera)
        images = [ri.make_targets(patient, [p[k] for p in pairs], "rtk", args.seed) for k in (0, 1)]
        results[name] = []
        for i, (p, r) in enumerate(zip(pairs, reference)):
            w_ref = perturb_pose(r["camera"].world_from_camera[0], centre, 10.0, 20.0, np.random.default_rng(100 + r["index"]))
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
    meta = {"elapsed_s": time.perf_counter() - t_all, "load_start": load_start, "load_end": os.getloadavg(), "cpus": os.cpu_count()}
    loads = [x[m]["load"] for rows in results.values() for x in rows for m in x]
    lines = table(results) + [
        "",
        f"{args.cases} cases per pair, {args.slice_mm:g} mm CT, RTK targets, {args.threads} torch thread(s); load average "
        f"{load_start[0]:.1f} at the start, {meta['load_end'][0]:.1f} at the end (median per run {np.median(loads):.1f}) on "
        f"{meta['cpus']} cores (shared with other jobs); {meta['elapsed_s'] / 60:.0f} min in all.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    (WORK / "results.json").write_text(json.dumps({"results": results, "meta": meta}, indent=1, default=float))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
