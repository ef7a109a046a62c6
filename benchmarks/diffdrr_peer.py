#!/usr/bin/env python
"""DiffDRR 0.6.1 as the issue-14 peer: its registration recipe, coarse to fine, on our targets and starts.

Recipe (the one DiffDRR's author ships in xvr's ``register`` command, eigenvivek/xvr, on DiffDRR's own
``Registration`` module; nothing tuned on our cases):
  pose     diffdrr.registration.Registration, Euler angles "ZXY" + translation (mm), started at our start
           pose (geometry mapping as in bench_registration.DiffDRRRunner / bench_drr.py).
  renderer DiffDRR's Siddon on our mu volume; the finest stage at the X-ray's own size (128 px of 3.2 mm);
           its ``stop_gradients_through_grid_sample`` switch on (the same gradient: see __init__).
  pyramid  detector scales 1/4, 1/2, 1 (32, 64, 128 px: the pyramid our defaults use for 128 px X-rays),
           rescaled with ``DRR.rescale_detector_``; the target X-ray average-pooled to each size.
  metric   0.5 x MultiscaleNormalizedCrossCorrelation2d([None, 9], [0.5, 0.5]) + 0.5 x
           GradientNormalizedCrossCorrelation2d(patch_size=11, sigma) (xvr's mNCC + gNCC), maximised. xvr's
           sigma = 10 px is for ~180 px images of ~1.5 mm (a ~15 mm blur on the detector); here sigma =
           5 px at 128 px (16 mm), halved with each coarser stage, so the blur stays the same in mm and its
           kernel fits the 32 px stage.
  optimiser Adam, lr 1e-2 rad (rotation) and 1 mm (translation) divided by xvr's per-stage factor
           (1, 2, 8), ReduceLROnPlateau(factor 0.1, patience 10, mode "max"); a stage ends after 3
           plateaus (learning-rate cuts) or its iteration cap: 500 (xvr's) at 32 and 64 px, --finest-cap
           at 128 px (a time budget on a 2-core CPU; the report counts the cases that hit it).
  result   the pose with the best similarity seen at the finest stage (xvr keeps the last one; the best is
           never worse on the metric it optimises).

gNCC's Gaussian blur comes from torchvision, which must not be installed here (it pulls another torch):
bench_registration.stub_diffdrr_optional_imports supplies ``gaussian_blur`` with torchvision's definition
(separable Gaussian of the given kernel size and sigma, reflect padding).

Cases are run one at a time and each is saved as JSON under benchmarks/_work/independent/diffdrr/ as it
ends, so a stopped run resumes where it stopped, and several processes can share the cases (a case is
claimed by an O_EXCL file holding the claimer's pid; a dead claimer's case is taken over).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "_work" / "independent" / "diffdrr"

SCALES = (4, 2, 1)  # detector downsampling per stage, coarse to fine
LR_ROT, LR_XYZ = 1e-2, 1.0  # xvr's defaults: rad, mm
PATIENCE, MAX_PLATEAUS, STAGE_CAP = 10, 3, 500  # xvr's defaults
GNCC_SIGMA_PX_AT_FULL = 5.0


class DiffDRRRecipe:
    """DiffDRR's multiscale registration (see the module docstring) of one CT, reused over cases."""

    def __init__(self, vol, detector_px: int, spacing_mm: float, finest_cap: int):
        from bench_registration import DiffDRRRunner

        ns = type("A", (), {"diffdrr_bin": 1, "diffdrr_iterations": 0, "diffdrr_lr_rot": LR_ROT, "diffdrr_lr_trans": LR_XYZ})()
        self.drr = DiffDRRRunner(vol, detector_px, spacing_mm, ns).drr
        # Its Siddon looks voxels up by nearest neighbour, whose gradient with respect to the sample points
        # is zero: the pose gradient flows through the intersection lengths only. DiffDRR's own switch
        # skips the zero backward pass (same gradient; the backward pass several times cheaper).
        self.drr.renderer.stop_gradients_through_grid_sample = True
        self.px, self.spacing_mm, self.finest_cap = detector_px, spacing_mm, finest_cap

    def _metric(self, scale: int):
        from diffdrr.metrics import GradientNormalizedCrossCorrelation2d, MultiscaleNormalizedCrossCorrelation2d

        mncc = MultiscaleNormalizedCrossCorrelation2d([None, 9], [0.5, 0.5])
        gncc = GradientNormalizedCrossCorrelation2d(patch_size=11, sigma=GNCC_SIGMA_PX_AT_FULL / scale)
        return lambda x, y: 0.5 * mncc(x, y) + 0.5 * gncc(x, y)

    def register(self, image: torch.Tensor, w_init: torch.Tensor) -> dict:
        """image: (H, W) float32 X-ray (brighter = more attenuation); w_init: (4, 4) float64 our
        world_from_camera start. Returns the estimated world_from_camera (4, 4) float64 and per-stage
        iteration counts."""
        from bench_registration import FLIP
        from diffdrr.pose import RigidTransform
        from diffdrr.registration import Registration

        from XRayNeRFLib.registration.intensity import bin_image

        rot, trans = RigidTransform((w_init @ FLIP)[None].float()).convert("euler_angles", "ZXY")
        reg = Registration(self.drr, rot.clone(), trans.clone(), parameterization="euler_angles", convention="ZXY")
        stages, step_scalar, best_pose = [], 1.0, None
        for stage, scale in enumerate(SCALES, start=1):
            px = self.px // scale
            self.drr.set_intrinsics_(height=px, width=px, delx=self.spacing_mm * scale, dely=self.spacing_mm * scale)
            target = bin_image(image, scale)[0][None, None] if scale > 1 else image[None, None]
            metric = self._metric(scale)
            step_scalar *= 2 ** (stage - 1)
            opt = torch.optim.Adam(
                [{"params": [reg.rotation], "lr": LR_ROT / step_scalar}, {"params": [reg.translation], "lr": LR_XYZ / step_scalar}],
                maximize=True,
            )
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=PATIENCE, mode="max")
            cap = self.finest_cap if scale == 1 else STAGE_CAP
            plateaus, lr_now, best, done = 0, math.inf, -math.inf, 0
            for it in range(1, cap + 1):
                done = it
                opt.zero_grad()
                sim = metric(target, reg())
                v = float(sim.detach().mean())
                if scale == 1 and v > best:
                    best, best_pose = v, reg.pose.matrix.detach()[0].double().clone()
                sim.mean().backward()
                opt.step()
                sched.step(v)
                lr = sched.get_last_lr()[0]
                if lr < lr_now:  # the first call sets lr_now; later cuts are plateaus
                    plateaus += lr_now < math.inf
                    lr_now = lr
                if plateaus == MAX_PLATEAUS:
                    break
            stages.append({"px": px, "iterations": done, "plateaus": plateaus, "hit_cap": plateaus < MAX_PLATEAUS})
        self.drr.set_intrinsics_(height=self.px, width=self.px, delx=self.spacing_mm, dely=self.spacing_mm)
        return {"w_est": best_pose @ FLIP, "stages": stages, "best_similarity": best}


def _claim(path: Path) -> bool:
    """True when this process may run the case whose result goes to ``path``."""
    if path.exists():
        return False
    lock = path.with_suffix(".claim")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
                os.kill(pid, 0)
                return False  # a live process has it
            except (ValueError, ProcessLookupError, PermissionError):
                lock.unlink(missing_ok=True)  # its claimer died: take it over
                continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def run_cases(tag: str, recipe_factory, cases: list, score) -> list:
    """Run the recipe on every case not already saved under CACHE/tag; returns the saved rows of all
    ``cases`` that are done (by this or another process), in case order. ``score(w_est, case) -> dict``."""
    out_dir = CACHE / tag
    out_dir.mkdir(parents=True, exist_ok=True)
    recipe = None
    for c in cases:
        path = out_dir / f"case{c['index']:02d}.json"
        if not _claim(path):
            continue
        recipe = recipe or recipe_factory()
        t, cpu = time.perf_counter(), time.process_time()
        load = os.getloadavg()[0]
        r = recipe.register(c["image"], c["w0"])
        row = {
            **score(r["w_est"], c, time.perf_counter() - t, sum(s["iterations"] for s in r["stages"])),
            "cpu_s": time.process_time() - cpu,
            "load_start": load,
            "stages": r["stages"],
            "w_est": r["w_est"].tolist(),
        }
        path.write_text(json.dumps(row, indent=1, default=float))
        path.with_suffix(".claim").unlink(missing_ok=True)
        print(
            f"  DiffDRR {tag} case {c['index']}: mTRE {row['mtre_mm']:.2f} mm, {row['seconds']:.0f} s, "
            f"iterations {[s['iterations'] for s in r['stages']]}",
            flush=True,
        )
    return saved_rows(tag, cases)


def saved_rows(tag: str, cases: list) -> list:
    """The saved rows of ``cases`` under CACHE/tag, in case order (cases not done yet are left out)."""
    paths = [CACHE / tag / f"case{c['index']:02d}.json" for c in cases]
    return [json.loads(p.read_text()) for p in paths if p.exists()]
