#!/usr/bin/env python
"""Where a registration's time goes: iterations and CPU seconds per pyramid level, per case (issues 14/15).

Protocol: issue 14's cases (benchmarks/registration_independent.py, imported, not copied): RTK Joseph targets
(or --model physics), the registered CT of --slice-mm slices, the issue's starts (10 deg + 20 mm off), the engine's
defaults, 1 torch thread. A progress callback called after every iteration (progress_every=1) reads the process's
CPU clock; a level's cost is its iterations times its median CPU time per iteration, and "other" is the rest of
the case (pyramid, coverage masks, the initial and final full-resolution losses, the first call's one-off costs).
CPU seconds depend much less on other jobs than wall seconds; the iteration counts and the mTRE do not depend on
them at all (deterministic).

    python benchmarks/registration_cost.py --slice-mm 2.5 --cases 0 5 8 --out /tmp/cost.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import registration_independent as ri  # noqa: E402

from XRayNeRFLib.geometry import Cameras  # noqa: E402
from XRayNeRFLib.registration import register  # noqa: E402


def run_case(ct, case: dict, image: torch.Tensor, w0: torch.Tensor, lms: torch.Tensor) -> dict:
    """One registration with the defaults: the issue-14 score plus, per level, iterations and CPU seconds."""
    cam = case["camera"]
    init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    deltas = defaultdict(list)  # level -> CPU seconds between consecutive progress calls
    clock = {"last": time.process_time()}

    def progress(p) -> bool:
        now = time.process_time()
        deltas[int(p.preview["level"])].append(now - clock["last"])
        clock["last"] = now
        return True

    t, c0 = time.perf_counter(), time.process_time()
    clock["last"] = c0
    res = register(ct, image, init, progress=progress, progress_every=1)
    cpu = time.process_time() - c0
    row = ri.score(res.world_from_camera, case, lms, time.perf_counter() - t, res.iterations)
    # A level's first interval also holds the setup before it (the pyramid and initial loss, the previous level's
    # last evaluation, the coverage mask): a level costs its median interval per iteration, the rest is "other".
    levels = {str(k): {"iterations": len(d), "cpu_s": len(d) * statistics.median(d)} for k, d in sorted(deltas.items(), reverse=True)}
    row.update(cpu_s=cpu, levels=levels, other_cpu_s=cpu - sum(v["cpu_s"] for v in levels.values()), psf_sigma_px=res.psf_sigma_px)
    row["load"] = os.getloadavg()[0]
    return row


def table(rows: list) -> list:
    """Markdown: one line per case, levels coarse to fine (iterations / CPU s / CPU ms per iteration)."""
    names = list(rows[0]["levels"])
    out = [
        "| case | mTRE (mm) | iterations | CPU s | "
        + " | ".join(f"level {f}: its / CPU s / ms per it" for f in names)
        + " | other CPU s | wall s | load |",
        "|---|---|---|---|" + "---|" * len(names) + "---|---|---|",
    ]
    for r in rows:
        cells = []
        for f in names:
            v = r["levels"].get(f, {"iterations": 0, "cpu_s": 0.0})
            cells.append(f"{v['iterations']} / {v['cpu_s']:.2f} / {1000 * v['cpu_s'] / max(1, v['iterations']):.0f}")
        out.append(
            f"| {r['case']} | {r['mtre_mm']:.2f} | {r['iterations']} | {r['cpu_s']:.1f} | "
            + " | ".join(cells)
            + f" | {r['other_cpu_s']:.2f} | {r['seconds']:.1f} | {r['load']:.1f} |"
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slice-mm", type=float, default=2.5)
    ap.add_argument("--model", default="rtk", help="target model: rtk or physics")
    ap.add_argument("--n", type=int, default=12, help="the issue-14 case set (its targets are made for all n cases)")
    ap.add_argument("--cases", type=int, nargs="+", default=None, help="case indices to run (default all n)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "_work" / "registration_cost.md"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    patient, ct, lms, centre, cases = ri.case_set(args.slice_mm, args.n, args.seed)
    images = ri.make_targets(patient, cases, args.model, args.seed)
    t_all, load0 = time.perf_counter(), os.getloadavg()
    rows = []
    for i in args.cases if args.cases is not None else range(args.n):
        rows.append(run_case(ct, cases[i], images[i], ri.start_pose(cases[i], centre), lms))
        print(json.dumps(rows[-1], default=float), flush=True)
    lines = table(rows) + [
        "",
        f"{args.slice_mm:g} mm CT, {args.model} targets, cases {[r['case'] for r in rows]} of {args.n}, 1 torch thread, "
        f"torch {torch.__version__}; load average {load0[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end on "
        f"{os.cpu_count()} cores; {(time.perf_counter() - t_all) / 60:.1f} min.",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
