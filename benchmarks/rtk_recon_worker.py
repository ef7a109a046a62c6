#!/usr/bin/env python
"""RTK reconstruction worker (own process: itk-rtk is kept out of the torch processes).

    python benchmarks/rtk_recon_worker.py CONFIG.json

CONFIG.json:
    projections: .mha line integrals in RTK's layout (rows flipped, see geometry_io), with the detector
                 spacing and origin set on the image
    geometry:    RTK ThreeDCircularProjectionGeometry XML (written by XRayNeRFLib.geometry_io.write_rtk_xml)
    like:        .mha volume whose grid (origin, spacing, direction, size) the reconstructions take
    threads:     number of ITK threads
    methods:     list of {"name": "fdk"|"sart"|"cg"|"admm_tv"|"joseph", "out": path.mha, ...parameters}
                 fdk: hann (cut frequency, 0 = off), short_scan (bool: Parker weights), displaced (bool: RTK's
                      DisplacedDetectorImageFilter before Parker, as rtkfdk), truncation_correction (RTK's
                      ramp filter SetTruncationCorrection: fraction of the detector width extrapolated per side)
                 joseph: forward projection of "volume" (.mha) onto the projections' grid (simulation;
                         "projections" then only gives the detector layout)
                 sart: iterations, lambda, subsets (projections per update), division_threshold (mm of ray
                       length through the volume below which a ray's normalised update is zeroed; RTK's
                       default 0 lets rays that graze the box blow up the outermost voxels)
                 cg: iterations
                 admm_tv: iterations (AL), cg_iterations, alpha, beta (RTK's names: SetAL_iterations,
                       SetCG_iterations, SetAlpha, SetBeta). RTK solves min |Af - p|^2 + alpha TV(f) by ADMM
                       with the split g = grad f: the f-step is CG on (A^T A + beta' grad^T grad), the g-step a
                       soft threshold of |grad f + d| at alpha / (2 beta'), with beta' = beta (k+1) / AL at AL
                       iteration k (a ramp over the whole run: the k-th iterate of an AL = N run is not the
                       result of an AL = k run). beta must be comparable to A^T A (~1e3 here; RTK's example
                       uses alpha 1, beta 1000): with beta = 1 the TV term is negligible and ADMM-TV is plain CG;
                       disable_displaced (bool: RTK's SetDisableDisplacedDetectorFilter)
                 sart, cg, admm_tv also take fp ("joseph", RTK's default) and bp ("voxel" = RTK's default
                       voxel-based back projector, or "joseph" = Joseph's adjoint)
    report:      JSON path receiving per-method wall time (s), this process's peak RSS (MB) and "applied":
                 the filter's settings read back from it after the run (Get* methods), as evidence that
                 every parameter reached RTK
    gt_npy:      optional (K, J, I) ground truth on the "like" grid: iterative methods then record a
                 PSNR-versus-time curve from itk.IterationEvent (the callback's own time is excluded from
                 the method's seconds); "data_range" (float) is the PSNR peak

Everything is RTK's own filters with their documented parameters; nothing is re-implemented here.
"""

from __future__ import annotations

import json
import sys
import time


def peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(cfg_path: str) -> None:
    with open(cfg_path) as f:
        cfg = json.load(f)
    import itk
    from itk import RTK as rtk

    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(int(cfg.get("threads", 2)))
    image_type = itk.Image[itk.F, 3]
    # a live reader, not itk.imread: RTK's iterative filters run their internal DisplacedDetectorImageFilter in place
    # (ADMM-TV always: it turns the padding off, so the filter grafts its input), which takes the projections'
    # buffer; the next read of the projections (ADMM-TV's conjugate-gradient operator) then finds an empty buffer
    # ("outside of buffered region ... Size: [0, 0, 0]") unless the image has a source that can read it again
    projection_reader = itk.ImageFileReader[image_type].New(FileName=cfg["projections"])
    projection_reader.Update()
    projections = projection_reader.GetOutput()
    like = itk.imread(cfg["like"], itk.F)
    reader = rtk.ThreeDCircularProjectionGeometryXMLFileReader.New()
    reader.SetFilename(cfg["geometry"])
    reader.GenerateOutputInformation()
    geometry = reader.GetOutputObject()

    def empty_volume():
        source = rtk.ConstantImageSource[image_type].New()
        source.SetInformationFromImage(like)
        source.SetConstant(0.0)
        source.Update()
        return source.GetOutput()

    gt = None
    if cfg.get("gt_npy"):
        import numpy as np

        gt = np.load(cfg["gt_npy"]).astype(np.float64)
        data_range = float(cfg["data_range"])

    results = {}
    for m in cfg["methods"]:
        name = m["name"]
        curve, cb_s, count = [], [0.0], [0]
        t0 = time.perf_counter()
        if name == "fdk":
            proj = projections
            weighting = []
            if m.get("displaced", False):
                weighting.append(rtk.DisplacedDetectorImageFilter[image_type].New())
            if m.get("short_scan", False):
                weighting.append(rtk.ParkerShortScanImageFilter[image_type].New())
            for w in weighting:  # as rtkfdk: displaced-detector, then Parker weights
                w.SetInput(proj)
                w.SetInPlace(False)  # in place it would take the buffer of the projections
                w.SetGeometry(geometry)
                w.Update()
                proj = w.GetOutput()
            if weighting:
                # a buffered copy with no upstream filter: RTK's ramp filter with a truncation correction requests
                # regions from a Parker filter's output that are not buffered (ITK "outside of buffered region")
                region = proj.GetBufferedRegion()
                weighted = itk.image_from_array(itk.array_from_image(proj).copy())
                weighted.SetSpacing(proj.GetSpacing())
                weighted.SetDirection(proj.GetDirection())
                weighted.SetOrigin(proj.TransformIndexToPhysicalPoint(region.GetIndex()))  # index 0 of the copy = the region's start
                proj = weighted
            filt = rtk.FDKConeBeamReconstructionFilter[image_type].New()
            filt.SetInput(0, empty_volume())
            filt.SetInput(1, proj)
            filt.SetGeometry(geometry)
            filt.GetRampFilter().SetHannCutFrequency(float(m.get("hann", 0.0)))
            filt.GetRampFilter().SetTruncationCorrection(float(m.get("truncation_correction", 0.0)))
        elif name == "sart":
            filt = rtk.SARTConeBeamReconstructionFilter[image_type, image_type].New()
            filt.SetInput(0, empty_volume())
            filt.SetInput(1, projections)
            filt.SetGeometry(geometry)
            filt.SetNumberOfIterations(int(m.get("iterations", 5)))
            filt.SetLambda(float(m.get("lambda", 0.3)))
            filt.SetNumberOfProjectionsPerSubset(int(m.get("subsets", 1)))
            filt.SetEnforcePositivity(True)
            filt.SetDivisionThreshold(float(m.get("division_threshold", 0.0)))
        elif name == "cg":
            filt = rtk.ConjugateGradientConeBeamReconstructionFilter[image_type].New()
            filt.SetInput(0, empty_volume())
            filt.SetInput(1, projections)
            filt.SetGeometry(geometry)
            filt.SetNumberOfIterations(int(m.get("iterations", 10)))
        elif name == "joseph":
            vol = itk.imread(m["volume"], itk.F)
            filt = rtk.JosephForwardProjectionImageFilter[image_type, image_type].New()
            filt.SetInput(0, projections)
            filt.SetInput(1, vol)
            filt.SetGeometry(geometry)
            filt.SetInPlace(False)
        elif name == "admm_tv":
            filt = rtk.ADMMTotalVariationConeBeamReconstructionFilter[image_type].New()
            filt.SetInput(0, empty_volume())
            filt.SetInput(1, projections)
            filt.SetGeometry(geometry)
            filt.SetAL_iterations(int(m.get("iterations", 10)))
            filt.SetCG_iterations(int(m.get("cg_iterations", 3)))
            filt.SetAlpha(float(m.get("alpha", 0.01)))
            filt.SetBeta(float(m.get("beta", 1.0)))
            # RTK weights the data term with its displaced-detector filter (unpadded, so it has nothing to weight on a
            # centred detector); this turns it off. The "outside of buffered region" failure was not this filter's
            # weighting but its in-place run on a source-less input (see the reader above)
            filt.SetDisableDisplacedDetectorFilter(bool(m.get("disable_displaced", False)))
        else:
            raise ValueError(f"unknown RTK method {name!r}")
        if name in ("sart", "cg", "admm_tv"):
            fp = {"joseph": 0}[m.get("fp", "joseph")]
            bp = {"voxel": 0, "joseph": 1}[m.get("bp", "voxel")]
            filt.SetForwardProjectionFilter(fp)
            filt.SetBackProjectionFilter(bp)
        if gt is not None and name in ("sart", "cg", "admm_tv"):

            def on_iteration(filt=filt, curve=curve, cb_s=cb_s, count=count, t0=t0):
                t = time.perf_counter()
                count[0] += 1
                x = itk.array_from_image(filt.GetOutput()).astype(np.float64)
                if x.shape == gt.shape:
                    mse = float(((x - gt) ** 2).mean())
                    curve.append((count[0], t - t0 - cb_s[0], 10.0 * np.log10(data_range**2 / mse)))
                cb_s[0] += time.perf_counter() - t

            filt.AddObserver(itk.IterationEvent(), on_iteration)
        filt.Update()
        seconds = time.perf_counter() - t0 - cb_s[0]
        itk.imwrite(filt.GetOutput(), m["out"])
        applied = {}
        for getter in (
            "NumberOfIterations",
            "Lambda",
            "EnforcePositivity",
            "DivisionThreshold",
            "NumberOfProjectionsPerSubset",
            "AL_iterations",
            "CG_iterations",
            "Alpha",
            "Beta",
            "DisableDisplacedDetectorFilter",
            "ForwardProjectionFilter",
            "BackProjectionFilter",
        ):
            if hasattr(filt, "Get" + getter):
                v = getattr(filt, "Get" + getter)()
                applied[getter] = (
                    v if isinstance(v, (int, float, bool)) else (v.GetNameOfClass() if hasattr(v, "GetNameOfClass") else str(v))
                )
        if name == "fdk":
            applied["HannCutFrequency"] = filt.GetRampFilter().GetHannCutFrequency()
            applied["TruncationCorrection"] = filt.GetRampFilter().GetTruncationCorrection()
            applied["Displaced"] = bool(m.get("displaced", False))
            applied["ShortScan"] = bool(m.get("short_scan", False))
        results[m.get("label", name)] = {"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "curve": curve, "applied": applied}
    if cfg.get("report"):
        with open(cfg["report"], "w") as f:
            json.dump(results, f, indent=1)


def read_rtk_projections(path):
    """An RTK projection stack (.mha) as a (V, H, W) float32 numpy array in our row order."""
    import SimpleITK as sitk

    from XRayNeRFLib.geometry_io import ours_from_rtk_layout

    return ours_from_rtk_layout(sitk.GetArrayFromImage(sitk.ReadImage(str(path), sitk.sitkFloat32)))


def turned_detector(projections, cameras):
    """The same rays described with the detector turned 180 degrees in its plane: (projections (V, H, W) with both
    image axes reversed, Cameras whose camera x and y axes and principal points are turned). Every pixel keeps its
    ray (pixel (i, j) becomes (W - 1 - i, H - 1 - j)). Use: an orbit whose RTK XML carries InPlaneAngle 180 (our
    C-arm orbits about the patient's superior axis, benchmarks/bench_carm.py) is then written with InPlaneAngle 0;
    RTK's ParkerShortScanImageFilter and DisplacedDetectorImageFilter assume InPlaneAngle 0
    (ThreeDCircularProjectionGeometry::ToUntiltedCoordinateAtIsocenter), and with 180 RTK's Parker weights come out
    mirrored in the fan angle (tests/test_recon_truncation.py)."""
    import torch

    from XRayNeRFLib.geometry import Cameras

    turn = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=cameras.world_from_camera.dtype))
    w, h = cameras.size_px
    pp = torch.stack([(w - 1) - cameras.principal_point_px[:, 0], (h - 1) - cameras.principal_point_px[:, 1]], 1)
    turned = Cameras(cameras.world_from_camera @ turn, cameras.sdd_mm, cameras.pixel_spacing_mm, pp, cameras.size_px)
    return projections.flip(-2, -1), turned


def run_rtk_reconstructions(
    projections, cameras, like, methods, workdir, threads=2, timeout_s=3600, load=True, gt_npy=None, data_range=None
):
    """Run RTK reconstructions in a subprocess (called from the torch side; imports no itk).

    projections: (V, H, W) line integrals in our layout; cameras: the matching Cameras; like: Volume
    giving the output grid; methods: list of dicts as in CONFIG.json minus "out" (add "label" to run
    one method several times); gt_npy / data_range: see CONFIG.json (PSNR-versus-time curves).
    Returns ({label: Volume (mu)}, {label: {"seconds", "peak_rss_mb"}});
    with ``load=False`` the first item maps labels to the output .mha paths instead (a "joseph" output
    is a projection stack: read it with :func:`read_rtk_projections`).
    All methods of one call share one process: call once per method for separate peak memories.
    """
    import os
    import subprocess

    import numpy as np
    import SimpleITK as sitk

    from XRayNeRFLib.geometry_io import rtk_default_origin_mm, rtk_layout_from_ours, write_rtk_xml
    from XRayNeRFLib.volume import load_volume, save_volume

    os.makedirs(workdir, exist_ok=True)
    spacing = cameras.pixel_spacing_mm[0].detach().double().cpu().numpy()
    origin = rtk_default_origin_mm(cameras.size_px, spacing)
    arr = rtk_layout_from_ours(np.asarray(projections.detach().cpu().numpy(), dtype=np.float32))
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing((float(spacing[0]), float(spacing[1]), 1.0))
    img.SetOrigin((float(origin[0]), float(origin[1]), 0.0))
    proj_path = os.path.join(workdir, "projections.mha")
    sitk.WriteImage(img, proj_path)
    geom_path = os.path.join(workdir, "geometry.xml")
    write_rtk_xml(cameras, geom_path)
    like_path = os.path.join(workdir, "like.mha")
    save_volume(like, like_path)
    jobs = []
    for i, m in enumerate(methods):
        m = dict(m)
        m.setdefault("label", m["name"])
        m["out"] = os.path.join(workdir, f"rtk_{i}_{m['name']}.mha")
        jobs.append(m)
    cfg = {
        "projections": proj_path,
        "geometry": geom_path,
        "like": like_path,
        "threads": threads,
        "methods": jobs,
        "report": os.path.join(workdir, "rtk_report.json"),
    }
    if gt_npy is not None:
        cfg["gt_npy"], cfg["data_range"] = str(gt_npy), float(data_range)
    cfg_path = os.path.join(workdir, "rtk_config.json")
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)
    done = subprocess.run([sys.executable, os.path.abspath(__file__), cfg_path], capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"RTK worker failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    with open(cfg["report"]) as f:
        report = json.load(f)
    if not load:
        return {m["label"]: m["out"] for m in jobs}, report
    volumes = {m["label"]: load_volume(m["out"], units="mu") for m in jobs}
    return volumes, report


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
