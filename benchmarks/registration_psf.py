#!/usr/bin/env python
"""The fitted PSF (RegistrationSettings.fit_psf) on the test suite's registration cases, on and off (issue 15).

Cases (the shipped chest CT, Resources/SampleData/chest_ct_128.nii.gz resampled to 48^3, as tests/conftest.chest_ct_48):
  pa       a PA view, 64 x 64 px of 8 mm (tests/test_registration_optimize.py), target by
           registration.simulate.simulate_xray (our Siddon, Poisson noise, Gaussian blur of --blur px, gray curve):
           not the registration's trilinear DRR; MI, levels 4 2 1, starts 5 deg / 10 mm off (seeds 1..--starts),
           CT-coverage mask on (the default);
  oblique  the CLI tests' view (C-arm 10 / 5 deg, 72 x 60 px of 8 mm, off-centre principal point,
           tests/test_registration_cli.py), start 4 deg / 8 mm off (seed 0), with and without the CT-coverage mask.
Prints a markdown table: pose errors, the CT centre's depth error (camera z, + = farther from the source), mTRE over
20 landmarks (pa), the fitted PSF width (full-resolution px) and seconds (1 torch thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/registration_psf.py [--starts 5] [--blur 1.0 0.0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from XRayNeRFLib.geometry import Cameras  # noqa: E402
from XRayNeRFLib.registration import pose_errors, register, target_registration_error  # noqa: E402
from XRayNeRFLib.registration.simulate import landmarks, perturb_pose, resample_volume, simulate_xray  # noqa: E402
from XRayNeRFLib.volume import as_mu, load_volume  # noqa: E402


def depth_mm(w: torch.Tensor, centre: torch.Tensor) -> float:
    """The CT centre's camera z (mm) under world_from_camera w (4, 4)."""
    w = w.double()
    return float((w[:3, :3].T @ (centre - w[:3, 3]))[2])


def run(vol, image, cam, init, centre, lms, **settings) -> dict:
    t0 = time.perf_counter()
    res = register(vol, image, init, loss="mi", levels=(4, 2, 1), **settings)
    e = pose_errors(res.world_from_camera, cam.world_from_camera[0], centre)
    out = {
        "rotation_deg": e["rotation_deg"],
        "translation_mm": e["translation_mm"],
        "depth_mm": depth_mm(res.world_from_camera, centre) - depth_mm(cam.world_from_camera[0], centre),
        "psf_px": res.psf_sigma_px,
        "seconds": time.perf_counter() - t0,
    }
    if lms is not None:
        out["mtre_mm"] = float(target_registration_error(res.world_from_camera, cam.world_from_camera[0], lms).mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--starts", type=int, default=5, help="starts of the pa case (seeds 1..N)")
    ap.add_argument("--blur", type=float, nargs="+", default=[1.0, 0.0], help="the targets' Gaussian blur (px)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    hu = resample_volume(load_volume(str(HERE.parent / "Resources" / "SampleData" / "chest_ct_128.nii.gz")), (48, 48, 48))
    vol = as_mu(hu)
    centre = vol.center_ras().double()
    lms = landmarks(vol, 20, seed=0)
    pa = Cameras.carm(0.0, 0.0, sid_mm=650, sdd_mm=1020, size_px=(64, 64), pixel_spacing_mm=8.0, isocenter_ras=centre, dtype=torch.float64)
    obl = Cameras(
        Cameras.carm(
            10.0, 5.0, sid_mm=650, sdd_mm=1020, size_px=(72, 60), pixel_spacing_mm=(8.0, 8.0), isocenter_ras=centre, dtype=torch.float64
        ).world_from_camera,
        1020.0,
        (8.0, 8.0),
        (37.0, 28.5),
        (72, 60),
    )

    def start(cam, rot, tr, seed):
        w = perturb_pose(cam.world_from_camera[0], centre, rot, tr, np.random.default_rng(seed))
        return Cameras(w[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)

    print(f"load average at the start: {os.getloadavg()[0]:.1f}")
    print("| case | target blur (px) | coverage mask | start | fit_psf | rot (deg) | transl (mm) | depth (mm) | mTRE (mm) | PSF (px) | s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for blur in args.blur:
        runs = [("pa", pa, True, seed, start(pa, 5.0, 10.0, seed)) for seed in range(1, args.starts + 1)]
        obl_init = start(obl, 4.0, 8.0, 0)
        runs += [("oblique", obl, cover, 0, obl_init) for cover in (True, False)]
        for name, cam, cover, seed, init in runs:
            image = simulate_xray(vol, cam, seed=0, blur_sigma_px=blur)[0].float()
            for fit in (False, True):
                r = run(vol, image, cam, init, centre, lms if name == "pa" else None, ct_coverage=cover, fit_psf=fit)
                mtre = f"{r['mtre_mm']:.2f}" if "mtre_mm" in r else "-"
                psf = f"{r['psf_px']:.2f}" if r["psf_px"] is not None else "-"
                print(
                    f"| {name} | {blur:g} | {'on' if cover else 'off'} | {seed} | {'on' if fit else 'off'} | {r['rotation_deg']:.2f} | "
                    f"{r['translation_mm']:.2f} | {r['depth_mm']:+.2f} | {mtre} | {psf} | {r['seconds']:.1f} |",
                    flush=True,
                )
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
