#!/usr/bin/env python
"""Where the depth bias comes from (issue 14): registrations started at the TRUE pose, so that what they
drift to is the optimum of the loss, not a capture failure. One factor changed at a time.

Cases: benchmarks/registration_independent.py (patient chest CT, registered CT = its central 200 mm,
128 px X-rays of 3.2 mm, views around PA). Per variant: median over cases of the mean signed along-beam
landmark error (depth, mm), the in-plane error and mTRE.

Factors:
  targets   RTK Joseph of the patient (anatomy beyond the CT's ends) / RTK Joseph of the registered CT
            itself (no anatomy beyond; only the projector and its end convention differ) / our trilinear
            of the registered CT with the same image model (inverse crime: the loss's own optimum)
  slices    5 mm vs 2.5 mm registered CT
  level     one pyramid level at 2x binning (today's finest) vs full resolution
  coverage  CT-coverage mask off / on
  MI        32 bins (default) / 64 bins
  physics   the "physics" targets' factors one at a time (bone weighting, scatter-like background, detector
            blur) on our plain Siddon of the patient, and all of them together

    python benchmarks/registration_depth_bias.py --cases 8 --out benchmarks/_work/depth_bias.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import registration_independent as ri  # noqa: E402

from XRayNeRFLib.geometry import Cameras  # noqa: E402
from XRayNeRFLib.registration.simulate import landmarks  # noqa: E402
from XRayNeRFLib.render import render  # noqa: E402


def targets(kind: str, patient, ct, cases, seed: int) -> torch.Tensor:
    cams = Cameras.concatenate([c["camera_render"] for c in cases])
    key = ri.WORK / f"bias_targets_{kind}_{ct.data.shape[0]}_{len(cases)}_{seed}.pt"
    if kind == "rtk-patient":
        return ri.make_targets(patient, cases, "rtk", seed)
    if kind == "physics-patient":
        return ri.make_targets(patient, cases, "physics", seed)
    if key.exists():
        return torch.load(key)
    extra = {}
    if kind == "rtk-ct":
        line = ri.rtk_line_integrals(ct, cams)
    elif kind == "trilinear-ct":
        with torch.no_grad():
            line = render(ct, cams.to(dtype=torch.float32)).double()
    elif kind == "bone-patient":  # the "physics" model's bone weighting alone
        line = ri.other_physics_line_integrals(patient, cams)
    elif kind in ("siddon-patient", "scatter-patient", "blur-patient"):  # plain Siddon; + one physics factor
        with torch.no_grad():
            line = render(patient, cams.to(dtype=torch.float32), renderer="siddon").double()
        extra = {"scatter-patient": {"scatter": 0.15}, "blur-patient": {"detector_blur_px": 1.0}}.get(kind, {})
    else:
        raise ValueError(kind)
    xr = ri.xray_from_line_integrals(line, seed=seed, **extra)
    key.parent.mkdir(parents=True, exist_ok=True)
    torch.save(xr, key)
    return xr


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--only", nargs="*", help="run only these variant names")
    ap.add_argument("--out", default=str(ri.WORK / "depth_bias.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    patient = ri.patient_ct()
    it = args.iterations
    base = {"max_iterations": it, "learning_rate": 0.25}
    variants = [
        # (name, slice mm, target kind, overrides)
        ("trilinear-ct / L2", 5.0, "trilinear-ct", {"levels": (2,), **base}),
        ("trilinear-ct / L1", 5.0, "trilinear-ct", {"levels": (1,), **base}),
        ("rtk-ct / L2", 5.0, "rtk-ct", {"levels": (2,), **base}),
        ("rtk-ct / L1", 5.0, "rtk-ct", {"levels": (1,), **base}),
        ("rtk-ct / L1 / coverage", 5.0, "rtk-ct", {"levels": (1,), "ct_coverage": True, **base}),
        ("rtk-patient / L2", 5.0, "rtk-patient", {"levels": (2,), **base}),
        ("rtk-patient / L1", 5.0, "rtk-patient", {"levels": (1,), **base}),
        ("rtk-patient / L2 / coverage", 5.0, "rtk-patient", {"levels": (2,), "ct_coverage": True, **base}),
        ("rtk-patient / L1 / coverage", 5.0, "rtk-patient", {"levels": (1,), "ct_coverage": True, **base}),
        (
            "rtk-patient / L1 / coverage / MI 64 bins",
            5.0,
            "rtk-patient",
            {"levels": (1,), "ct_coverage": True, "loss_options": {"bins": 64}, **base},
        ),
        ("rtk-patient 2.5 mm / L1", 2.5, "rtk-patient", {"levels": (1,), **base}),
        ("rtk-patient 2.5 mm / L1 / coverage", 2.5, "rtk-patient", {"levels": (1,), "ct_coverage": True, **base}),
        # The "physics" targets (our Siddon of the patient, bone x1.6, scatter 15 %, detector blur 1 px), one factor
        # at a time, all with the defaults' coverage mask at full resolution.
        ("siddon-patient / L1 / coverage", 5.0, "siddon-patient", {"levels": (1,), "ct_coverage": True, **base}),
        ("bone-patient / L1 / coverage", 5.0, "bone-patient", {"levels": (1,), "ct_coverage": True, **base}),
        ("scatter-patient / L1 / coverage", 5.0, "scatter-patient", {"levels": (1,), "ct_coverage": True, **base}),
        ("blur-patient / L1 / coverage", 5.0, "blur-patient", {"levels": (1,), "ct_coverage": True, **base}),
        ("physics-patient / L1 / coverage", 5.0, "physics-patient", {"levels": (1,), "ct_coverage": True, **base}),
    ]
    if args.only:
        variants = [v for v in variants if v[0] in args.only]
    results = {}
    cts = {}
    for name, slice_mm, kind, ov in variants:
        if slice_mm not in cts:
            ct = ri.registration_ct(patient, slice_mm)
            cts[slice_mm] = (ct, landmarks(ct, 20, seed=args.seed), ri.views(ct, args.cases, args.seed))
        ct, lms, cases = cts[slice_mm]
        images = targets(kind, patient, ct, cases, args.seed)
        rows = [ri.run_ours(ct, c, images[c["index"]], c["camera"].world_from_camera[0], lms, ov) for c in cases]
        s = ri.summary(rows)
        results[name] = {"summary": s, "rows": rows, "overrides": {k: list(v) if isinstance(v, tuple) else v for k, v in ov.items()}}
        print(
            f"{name:45s} depth {s['median_depth_mm']:+.2f} (|.| {s['median_abs_depth_mm']:.2f}) in-plane {s['median_in_plane_mm']:.2f} "
            f"mTRE {s['median_mtre_mm']:.2f} mm, {s['median_seconds']:.1f} s",
            flush=True,
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            {"results": results, "elapsed_s": time.perf_counter() - t0, "load_end": os.getloadavg(), "cases": args.cases, "iterations": it},
            indent=1,
            default=float,
        )
    )


if __name__ == "__main__":
    main()
