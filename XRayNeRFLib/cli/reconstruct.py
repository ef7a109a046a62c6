"""``xraynerf reconstruct``: cone-beam CT reconstruction from X-ray projections on the command line.

    xraynerf reconstruct --projections P [--geometry G] --out vol.nii.gz --method fdk|voxel|nerf
        [--renderer siddon|trilinear] [--grid N | --spacing-mm S] [--iterations K] [--solver os-tv|adam]
        [--uncertainty u.nii.gz] [--reference gt.nii.gz] [--units hu|mu] [DICOM geometry overrides]

Inputs go through :class:`XRayNeRFLib.projection_set.ProjectionSet`: a DICOM file/series/directory
(geometry and intensities from the tags; the override flags of ``xraynerf convert`` apply), or a
projection stack (.mha/.nrrd/.nii/.nii.gz) or image folder with ``--geometry`` (RTK .xml or XRayNeRF
.json). The engine is :func:`XRayNeRFLib.recon.api.reconstruct`.

Outputs are written only when complete (temporary file + rename); Ctrl-C during an iterative method
stops it and writes the best volume so far with a warning (a second Ctrl-C aborts without output);
Ctrl-C during FDK writes nothing (exit 130). Errors: one line on stderr, exit status 2
(:func:`XRayNeRFLib.cli.common.run_command`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import warnings
from typing import List, Optional

import torch

from .. import metrics
from ..geometry_io import is_geometry_path, save_geometry
from ..recon.api import DEFAULT_VOXEL_SOLVER, reconstruct
from ..recon.grid import REGIONS, check_memory, cylinder_grid, explicit_grid, grid_like
from ..recon.selfcal import RefineSettings, refine_geometry
from ..render import DEFAULT_RENDERER, RENDERERS
from ..volume import DEFAULT_EFFECTIVE_ENERGY_KEV, Volume, hu_to_mu, load_volume, mu_to_hu, save_volume
from .common import EXIT_OK, check_output_file, progress_bar
from .inputs import add_geometry_options, projections_from_args

VOLUME_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")

DESCRIPTION = """\
Reconstruct a 3D volume (mu in 1/mm or HU) from cone-beam X-ray projections.

methods:
  fdk    Feldkamp filtered backprojection (Hann window by default; Parker weights for short scans).
  voxel  voxel grid + total variation through the renderer, FDK start. --solver os-tv (default):
         ordered-subset SART-preconditioned least squares with a TV proximal step, --iterations
         passes over all views (default 12 at 30 views, more below 20 views); --solver adam: L1 + TV by Adam on ray
         mini-batches, --iterations steps (default 300), --coarse-to-fine fits a 2x coarser grid first.
  nerf   hash-grid neural field (pre-fitted MLP initialisation by default; --normalize adds the LayerNorm).

inputs:
  --projections P   a DICOM X-ray file, several files, or a directory of one series (geometry from the
                    tags), or a projection stack (.mha/.nrrd/.nii/.nii.gz) or a folder of .tif/.png
                    with --geometry G (RTK .xml or XRayNeRF .json). Stack values are line integrals
                    unless the stack says otherwise (--quantity intensity converts -ln(I/I0)).

output grid: the cylinder seen by every view, --grid N voxels across (default 128) or --spacing-mm S,
placed in patient RAS (the geometry's frame); --units hu converts with mu_water at --energy-kev
(default 60 keV: 0.02059 /mm).

--uncertainty U   also write a per-voxel uncertainty (same grid and units): the grouped-jackknife
                  spread over --ensemble-size reconstructions, each without a different random part
                  of the views; the main output is then the ensemble mean. Costs --ensemble-size runs.
--reference GT    print PSNR (data range: the reference's max - min), SSIM (3D Gaussian window) and
                  MAE (everywhere and inside the body) against a ground-truth volume, resampled
                  onto the output grid when needed.

examples:
  xraynerf reconstruct --projections proj.mha --geometry geom.xml --out fdk.nii.gz --method fdk --grid 128
  xraynerf reconstruct --projections dicom_dir/ --out vol.nii.gz --method voxel --iterations 8 \\
                       --renderer trilinear --units hu --uncertainty std.nii.gz
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``reconstruct`` to an argparse sub-parser collection; returns its parser."""
    p = subparsers.add_parser(
        "reconstruct",
        help="reconstruct a volume from X-ray projections (fdk, voxel + TV, hash-grid nerf)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_io_arguments(p.add_argument_group("input and output"))
    m = p.add_argument_group("method")
    m.add_argument("--method", choices=("fdk", "voxel", "nerf"), default="fdk", help="default fdk")
    m.add_argument(
        "--renderer",
        choices=RENDERERS,
        default=None,
        help="projector of the iterative methods: trilinear (default: ray marching) or siddon (exact path lengths); "
        "the two are compared in benchmarks/RESULTS_reconstruction.md",
    )
    _add_grid_arguments(m)
    _add_run_arguments(m)
    _add_solver_arguments(m)
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    add_geometry_options(p)
    return p


def _add_io_arguments(io) -> None:
    """Inputs, outputs and output units."""
    io.add_argument(
        "--projections", required=True, nargs="+", metavar="P", help="DICOM file(s)/directory, or one projection stack / image folder"
    )
    io.add_argument(
        "--geometry",
        metavar="G",
        help="geometry of a projection stack: RTK .xml, XRayNeRF .json (cameras, or per-view projection matrices) or .matrices.txt",
    )
    io.add_argument(
        "--detector-spacing", type=float, nargs=2, metavar=("COLUMN_MM", "ROW_MM"), help="pixel spacing of an image folder (RTK XML)"
    )
    io.add_argument(
        "--quantity", choices=("line_integral", "intensity"), help="stack values (default: the stack's header, else line integrals)"
    )
    io.add_argument(
        "--out",
        required=True,
        metavar="VOL",
        help="output volume (.nii.gz, .nii, .nrrd, .mha); missing directories are created when the result is written",
    )
    io.add_argument("--uncertainty", metavar="U", help="also write the uncertainty volume here (ensemble; see above)")
    io.add_argument("--reference", metavar="GT", help="ground-truth volume: print PSNR / SSIM / MAE against it")
    io.add_argument(
        "--fov-mask",
        metavar="M",
        help="also write the field of view on the output grid: the fraction of views that see each voxel (1: every view)",
    )
    io.add_argument("--units", choices=("mu", "hu"), default="mu", help="output units: mu (1/mm, default) or hu")
    io.add_argument("--energy-kev", type=float, default=None, metavar="E", help="effective energy for HU (30-150 keV, default 60)")


def _add_grid_arguments(m) -> None:
    """The output grid: --grid / --spacing-mm / --like, an explicit grid, the field-of-view region."""
    g = m.add_mutually_exclusive_group()
    g.add_argument("--grid", type=int, metavar="N", help="voxels across the scanned cylinder (default 128)")
    g.add_argument(
        "--spacing-mm", type=float, metavar="S", help="isotropic voxel size in mm instead of --grid (with --size: the explicit grid's)"
    )
    g.add_argument(
        "--like",
        metavar="REF",
        help="output grid of an existing 3-D image: its size, spacing, origin and direction (header only, as RTK's --like)",
    )
    m.add_argument(
        "--size",
        type=int,
        nargs=3,
        metavar=("NX", "NY", "NZ"),
        help="explicit output grid along RAS x, y, z, with --spacing-mm (and --origin-ras)",
    )
    m.add_argument(
        "--origin-ras",
        type=float,
        nargs=3,
        metavar=("X", "Y", "Z"),
        help="with --size: RAS mm of voxel (0, 0, 0)'s centre (default: centred on the isocentre)",
    )
    m.add_argument(
        "--fov-region",
        choices=REGIONS,
        default=None,
        help="default cylinder: the region every view sees (default) or the larger region some views see (truncated data, offset "
        "detectors; docs/reconstruction.md)",
    )
    m.add_argument(
        "--extend-grid",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="voxel/nerf: run on the grid extended to the 'any' region and cut the output out of it (default: when the "
        "projections are truncated)",
    )


def _add_run_arguments(m) -> None:
    """Self-calibration, FDK's truncation correction and window, iterations, ensemble and seed."""
    m.add_argument(
        "--refine-geometry",
        metavar="GEOM",
        help="self-calibration: first correct each view's pose from the data (recon/selfcal.py), reconstruct with the corrected "
        "cameras and write them here (.json, .matrices.json, .matrices.txt or .xml); nothing moves when there is nothing to correct",
    )
    m.add_argument(
        "--truncation-correction",
        type=float,
        metavar="F",
        help="fdk: extrapolate each row by this fraction of the detector width on each side before filtering (default: 0.25 when "
        "truncated; 0: off)",
    )
    m.add_argument(
        "--iterations",
        type=int,
        metavar="K",
        help="voxel (os-tv): passes over all views (default max(12, ceil(240 / views)): 12 at 30 views, 24 at 10); voxel "
        "--solver adam and nerf: Adam steps (default 300)",
    )
    m.add_argument("--ensemble-size", type=int, default=4, metavar="E", help="ensemble members for --uncertainty (default 4)")
    m.add_argument("--seed", type=int, default=0, help="random seed (ray sampling, initialisation, view groups)")
    m.add_argument("--window", choices=("hann", "shepp-logan", "ram-lak"), help="fdk: ramp filter window (default hann)")
    m.add_argument(
        "--window-cutoff",
        type=float,
        metavar="C",
        help="fdk: the window's cut-off as a fraction of the Nyquist frequency, (0, 1] (default 1; 0.5 smooths noisy data)",
    )


def _add_solver_arguments(m) -> None:
    """The iterative solvers' settings (voxel os-tv / adam, nerf)."""
    m.add_argument("--tv-weight", type=float, metavar="L", help="voxel/nerf: total-variation weight lambda_TV")
    m.add_argument("--lr", type=float, help="voxel --solver adam / nerf: Adam step size")
    m.add_argument("--rays-per-view", type=int, metavar="N", help="voxel --solver adam / nerf: rays per view and step (0: all pixels)")
    m.add_argument(
        "--learned-weights", action="store_true", help="voxel --solver adam / nerf: learn the data/TV weights (task uncertainty)"
    )
    m.add_argument(
        "--solver",
        choices=("adam", "os-tv"),
        help="voxel: os-tv (default: ordered-subset SART-preconditioned least squares + TV prox; "
        "--iterations counts passes over all views, default 12 at 30 views) or adam (L1 + TV, Adam on ray mini-batches; "
        "--iterations counts steps, default 300)",
    )
    m.add_argument(
        "--subsets",
        type=int,
        metavar="S",
        help="voxel --solver os-tv: ordered subsets of views per pass (default 30, at most one per view)",
    )
    m.add_argument("--relaxation", type=float, metavar="LAMBDA", help="voxel --solver os-tv: SART relaxation in (0, 2) (default 1.4)")
    m.add_argument("--statistical-weights", action="store_true", help="voxel --solver os-tv: weight rays by exp(-line integral) (Poisson)")
    m.add_argument(
        "--backprojector",
        choices=("voxel", "matched"),
        help="voxel --solver os-tv: voxel-driven back projection (fast, unmatched; default) or the renderer's exact adjoint (matched)",
    )
    m.add_argument(
        "--coarse-passes",
        type=int,
        metavar="N",
        help="voxel --solver os-tv: passes on a 2x coarser grid before --iterations passes on the output grid",
    )
    m.add_argument("--coarse-to-fine", action="store_true", help="voxel --solver adam: fit a 2x coarser grid first")
    m.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="nerf: LayerNorm on the hash features (the normalised encoder; default off, see the 'nerf norm' rows of "
        "benchmarks/RESULTS_reconstruction.md)",
    )
    m.add_argument("--mci", metavar="PATH", help="nerf: pre-fitted MLP weights ('none': random MLP; default: the shipped file)")


def output_grid(args, cams):
    """The output grid (a descriptor, no memory) named by --like, --size/--spacing-mm/--origin-ras, or the
    --fov-region cylinder with --grid / --spacing-mm."""
    if args.like:
        if args.size or args.origin_ras or args.fov_region:
            raise ValueError("--like sets the whole output grid; drop --size, --origin-ras and --fov-region")
        return grid_like(args.like)
    if args.size:
        if args.spacing_mm is None or args.fov_region:
            raise ValueError("--size needs --spacing-mm (and optionally --origin-ras), not --grid or --fov-region")
        return explicit_grid(args.size, args.spacing_mm, origin_ras=args.origin_ras, cameras=cams)
    if args.origin_ras:
        raise ValueError("--origin-ras goes with --size NX NY NZ and --spacing-mm")
    return cylinder_grid(cams, region=args.fov_region or "every", grid=args.grid, spacing_mm=args.spacing_mm)


def _check_out(path: str, flag: str) -> None:
    if not path.lower().endswith(VOLUME_EXTENSIONS):
        raise ValueError(f"{flag} {path!r}: use one of {', '.join(VOLUME_EXTENSIONS)}")
    check_output_file(path, flag, "volume.nii.gz")  # missing directories are created once the result is ready


def _options(args) -> dict:
    opts = {}
    method = args.method
    iterative = method in ("voxel", "nerf")

    def need(ok: bool, flag: str, what: str) -> None:
        if not ok:
            raise ValueError(f"{flag} applies to {what} only, not --method {method}")

    if args.window is not None:
        need(method == "fdk", "--window", "--method fdk")
        opts["window"] = args.window
    if args.window_cutoff is not None:
        need(method == "fdk", "--window-cutoff", "--method fdk")
        opts["window_cutoff"] = args.window_cutoff
    if args.truncation_correction is not None:
        need(method == "fdk", "--truncation-correction", "--method fdk")
        if not 0.0 <= args.truncation_correction <= 1.0:
            raise ValueError(
                f"--truncation-correction must be in [0, 1] (a fraction of the detector width), got {args.truncation_correction}"
            )
        opts["truncation_correction"] = args.truncation_correction
    if args.extend_grid is not None:
        need(iterative, "--extend-grid" if args.extend_grid else "--no-extend-grid", "--method voxel or nerf")
    for flag, name in (("--tv-weight", "tv_weight"), ("--lr", "lr"), ("--rays-per-view", "rays_per_view")):
        value = getattr(args, name)
        if value is not None:
            need(iterative, flag, "--method voxel or nerf")
            if name == "rays_per_view":
                if value < 0:
                    raise ValueError(f"--rays-per-view must be >= 0 (0: all pixels), got {value}")
                value = None if value == 0 else value
            elif not value >= 0 or (name == "lr" and value == 0):
                raise ValueError(f"{flag} must be {'> 0' if name == 'lr' else '>= 0'}, got {value}")
            opts[name] = value
    if args.learned_weights:
        need(iterative, "--learned-weights", "--method voxel or nerf")
        opts["learned_weights"] = True
    if args.solver is not None:
        need(method == "voxel", "--solver", "--method voxel")
        opts["solver"] = args.solver
    ostv = method == "voxel" and (args.solver or DEFAULT_VOXEL_SOLVER) == "os-tv"
    for flag, name in (
        ("--subsets", "subsets"),
        ("--relaxation", "relaxation"),
        ("--backprojector", "backprojector"),
        ("--coarse-passes", "coarse_passes"),
    ):
        if getattr(args, name) is not None:
            need(ostv, flag, "--method voxel --solver os-tv")
            opts[name] = getattr(args, name)
    if args.statistical_weights:
        need(ostv, "--statistical-weights", "--method voxel --solver os-tv")
        opts["statistical_weights"] = True
    if ostv:
        adam_flags = [
            f
            for f, on in (
                ("--lr", args.lr is not None),
                ("--rays-per-view", args.rays_per_view is not None),
                ("--learned-weights", args.learned_weights),
                ("--coarse-to-fine", args.coarse_to_fine),
            )
            if on
        ]
        if adam_flags:
            how = "" if args.solver else " (the default voxel solver); add --solver adam to use them"
            raise ValueError(f"{', '.join(adam_flags)} apply to --solver adam only, not --solver os-tv{how}")
    if args.coarse_to_fine:
        need(method == "voxel", "--coarse-to-fine", "--method voxel")
        opts["coarse_to_fine"] = True
    if args.normalize is not None:
        need(method == "nerf", "--normalize" if args.normalize else "--no-normalize", "--method nerf")
        opts["normalize"] = bool(args.normalize)
    if args.mci is not None:
        need(method == "nerf", "--mci", "--method nerf")
        if args.mci.lower() != "none" and not os.path.isfile(args.mci):
            raise ValueError(f"--mci {args.mci!r} does not exist; give a weight file, or 'none' for a random MLP")
        opts["mci"] = None if args.mci.lower() == "none" else args.mci
    if args.iterations is not None:
        need(iterative, "--iterations", "--method voxel or nerf")
        if args.iterations < 1:
            raise ValueError(f"--iterations must be >= 1, got {args.iterations}")
    if args.renderer is not None and not iterative:
        raise ValueError("--renderer applies to --method voxel or nerf only (FDK backprojects without a renderer)")
    if args.energy_kev is not None:
        if args.units != "hu" and not args.reference:
            raise ValueError("--energy-kev applies to --units hu (or an HU --reference) only")
        opts["energy_kev"] = args.energy_kev
    return opts


def _save_atomic(pairs) -> None:
    """Write every (Volume, path) under its final name into a hidden folder beside it, then move the files in.

    A folder rather than a temporary file name, because .mhd is two files (header and .raw) and the header names
    its data file: written as ``x.mhd`` it names ``x.raw``, which is moved in first. A failure or Ctrl-C before
    the moves leaves no file behind."""
    folders: List[str] = []
    for _, path in pairs:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # only now: a failed run creates nothing
    try:
        for vol, path in pairs:
            directory, name = os.path.split(os.path.abspath(path))
            folders.append(tempfile.mkdtemp(prefix="." + name + ".", suffix=".part", dir=directory))
            save_volume(vol, os.path.join(folders[-1], name))
        umask = os.umask(0)
        os.umask(umask)
        for (_, path), folder in zip(pairs, folders):
            directory, name = os.path.split(os.path.abspath(path))
            for written in sorted(os.listdir(folder), key=lambda f: f == name):  # the header (``name``) last
                os.chmod(os.path.join(folder, written), 0o666 & ~umask)  # the usual permissions of a new file
                os.replace(os.path.join(folder, written), os.path.join(directory, written))
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


class _Interrupt:
    """First Ctrl-C: ask the engine to stop (best so far is kept); second: KeyboardInterrupt."""

    def __init__(self):
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        sys.stderr.write("\nxraynerf reconstruct: stopping after this step (Ctrl-C again to abort without output)\n")

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
        return False


def load_reference(reference_path: str, like, units: str, energy_kev: Optional[float]):
    """The reference volume on ``like``'s grid (resampled when the grids differ) in ``units``:
    (data (K, J, I), resampled: bool). Refuses a reference that does not contain the grid's centre."""
    e = DEFAULT_EFFECTIVE_ENERGY_KEV if energy_kev is None else energy_kev
    ref = load_volume(reference_path)
    if ref.units != units:
        data = hu_to_mu(ref.data, e) if ref.units == "hu" else mu_to_hu(ref.data, e)
        ref = Volume(data, ref.ras_from_ijk, units)
    same = tuple(ref.data.shape) == tuple(like.data.shape) and torch.allclose(
        ref.ras_from_ijk.double(), like.ras_from_ijk.double(), atol=1e-4
    )
    if same:
        return ref.data, False
    a = ref.ijk_from_ras().double() @ like.ras_from_ijk.double()
    k, j, i = like.data.shape
    centre = a @ torch.tensor([(i - 1) / 2, (j - 1) / 2, (k - 1) / 2, 1.0], dtype=torch.float64)
    rk, rj, ri = ref.data.shape
    if not (-0.5 <= centre[0] <= ri - 0.5 and -0.5 <= centre[1] <= rj - 0.5 and -0.5 <= centre[2] <= rk - 0.5):
        raise ValueError(
            f"--reference {reference_path!r} does not contain the centre of the reconstruction grid: it is in another frame or "
            "another place; give a reference in the geometry's patient RAS frame"
        )
    return metrics.resample_like(ref, like), True


def reference_metrics(result_volume, ref_data, resampled: bool) -> dict:
    """PSNR / SSIM / MAE (everywhere and inside the body: reference above 0.005 /mm or -500 HU)."""
    threshold = -500.0 if result_volume.units == "hu" else 0.005
    mask = metrics.body_mask(ref_data, threshold)
    out = metrics.all_metrics(result_volume.data, ref_data, mask=mask if bool(mask.any()) else None)
    out["resampled"] = resampled
    out["body_threshold"] = threshold
    return out


def _check_request(args) -> None:
    """Refuse bad output paths, a missing reference and a bad grid before any work (ValueError naming the flag)."""
    _check_out(args.out, "--out")
    if args.uncertainty:
        _check_out(args.uncertainty, "--uncertainty")
        if os.path.abspath(args.uncertainty) == os.path.abspath(args.out):
            raise ValueError("--uncertainty and --out must be different files")
    if args.reference and not os.path.exists(args.reference):
        raise ValueError(f"--reference {args.reference!r} does not exist")
    if args.fov_mask:
        _check_out(args.fov_mask, "--fov-mask")
        if os.path.abspath(args.fov_mask) in (os.path.abspath(args.out), os.path.abspath(args.uncertainty or args.out)):
            raise ValueError("--fov-mask must be a file of its own")
    if args.like:
        grid_like(args.like)  # refuse a missing or 2-D image before any work
    if args.refine_geometry:
        check_refined_geometry_path(args.refine_geometry)
    if args.grid is not None and args.grid < 2:
        raise ValueError(f"--grid must be at least 2, got {args.grid}")
    if args.spacing_mm is not None and not args.spacing_mm > 0:
        raise ValueError(f"--spacing-mm must be > 0, got {args.spacing_mm}")


def check_refined_geometry_path(path: str, flag: str = "--refine-geometry") -> None:
    """Refuse, before any work, a refined-geometry file that :func:`write_refined_geometry` could not write: a name
    without a geometry extension (``geometry_io.is_geometry_path``) or a place that cannot be written (``flag``: the
    option or field named in the one-line ValueError)."""
    if not is_geometry_path(path):
        raise ValueError(f"{flag} {str(path)!r}: use .json, .matrices.json, .matrices.txt or .xml")
    check_output_file(str(path), flag, "geometry.json")


def write_refined_geometry(cameras, path: str) -> None:
    """The self-calibrated cameras to ``path`` (its folder created), in the form its name asks for
    (``geometry_io.save_geometry``): the one writer of ``--refine-geometry`` and of the Slicer / web front ends."""
    os.makedirs(os.path.dirname(os.path.abspath(str(path))), exist_ok=True)
    save_geometry(cameras, str(path))


def _reconstruct(args, images, cams, like, masks, opts):
    """The engine's reconstruction with the progress bar and Ctrl-C handling; the engine's RuntimeWarnings go to
    stderr. Returns :class:`XRayNeRFLib.recon.api.ReconstructionResult`."""
    bar = progress_bar(f"reconstruct {args.method}", args.quiet)
    with _Interrupt() as interrupt, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")

        def progress(p):
            if bar is not None:
                bar(p)
            return not interrupt.requested

        try:
            result = reconstruct(
                images,
                cams,
                args.method,
                volume=like,
                extend_grid=args.extend_grid,
                fov_counts=bool(args.fov_mask),
                renderer=args.renderer or DEFAULT_RENDERER,
                iterations=args.iterations,
                units=args.units,
                uncertainty=bool(args.uncertainty),
                ensemble_size=args.ensemble_size,
                masks=masks,
                seed=args.seed,
                progress=progress,
                options=opts,
            )
        finally:  # Cancelled (FDK) and KeyboardInterrupt go on to common.run_command: 130, nothing written
            if bar is not None:
                bar.close()
    for w in caught:
        if issubclass(w.category, RuntimeWarning):  # the engine's warnings (torch's UserWarnings are not for users)
            sys.stderr.write(f"xraynerf reconstruct: warning: {w.message}\n")
    return result


def _write_outputs(args, result, refined) -> None:
    """The volume, field-of-view and uncertainty files (all or none), then the refined geometry."""
    pairs = [(result.volume, args.out)]
    if args.fov_mask:
        fraction = result.fov.counts.float() / float(result.fov.n_views)
        pairs.append((Volume(fraction, result.volume.ras_from_ijk, "mu"), args.fov_mask))
    if args.uncertainty:
        if result.uncertainty is None:
            raise RuntimeError("the ensemble was stopped before two members finished: no uncertainty can be computed; nothing written")
        pairs.append((result.uncertainty, args.uncertainty))
    _save_atomic(pairs)
    if refined is not None:
        write_refined_geometry(refined.cameras, args.refine_geometry)
        rot = refined.corrections[:, :3].norm(dim=1) * 57.29577951308232
        tra = refined.corrections[:, 3:].norm(dim=1)
        if not args.quiet:
            sys.stderr.write(
                f"geometry refinement: per-view corrections mean {float(rot.mean()):.3f} deg / {float(tra.mean()):.3f} mm "
                f"(max {float(rot.max()):.3f} deg / {float(tra.max()):.3f} mm); "
                f"data term {refined.data_terms[0]:.4g} -> {refined.data_terms[-1]:.4g}; {refined.stopped}; wrote {args.refine_geometry}\n"
            )


def _report(args, result, reference, n_views: int, seconds: float) -> None:
    """The early-stop warning, the metrics against --reference (stdout) and the summary (stderr)."""
    if result.cancelled:
        sys.stderr.write(f"xraynerf reconstruct: warning: stopped early; wrote the best volume so far to {args.out}\n")
    if args.reference:
        m = reference_metrics(result.volume, *reference)
        unit = "HU" if args.units == "hu" else "1/mm"
        line = (
            f"reference {args.reference}{' (resampled onto the output grid)' if m['resampled'] else ''}: "
            f"PSNR {m['psnr_db']:.2f} dB (data range {m['data_range']:.4g} {unit}), SSIM {m['ssim']:.4f}, MAE {m['mae']:.4g} {unit}"
        )
        if "mae_masked" in m:
            line += f", MAE inside the body (reference > {m['body_threshold']:g} {unit}) {m['mae_masked']:.4g} {unit}"
        sys.stdout.write(line + "\n")
    if not args.quiet:
        k, j, i = result.volume.data.shape
        sp = result.volume.spacing_mm.tolist()
        sys.stderr.write(
            f"wrote {args.out}: {i} x {j} x {k} voxels of {sp[0]:.3g} mm ({args.units}), {args.method}, {n_views} views, "
            f"{seconds:.1f} s" + (f"; uncertainty {args.uncertainty}" if args.uncertainty else "") + "\n"
        )
        fov_line = result.fov.summary() if result.fov is not None else ""
        if fov_line:
            sys.stderr.write(f"field of view: {fov_line}\n")


def run(args) -> int:
    """``xraynerf reconstruct``: check the request, read the projections, reconstruct, write, report."""
    t0 = time.monotonic()
    _check_request(args)
    opts = _options(args)
    ps = projections_from_args(args, args.projections, args.geometry, flag="--projections", quantity=args.quantity)
    images = ps.images
    if float(images.abs().max()) < 1e-3:
        raise ValueError(
            f"the projections of {ps.source} are empty (all line integrals below 1e-3): the object is outside the field of view, "
            "or the values are intensities (pass --quantity intensity)"
        )
    cams = ps.cameras.to(dtype=torch.float64)
    like = output_grid(args, cams)
    check_memory(args.method, tuple(like.data.shape), len(ps), cams.size_px, options=opts, uncertainty=bool(args.uncertainty))
    reference = load_reference(args.reference, like, args.units, args.energy_kev) if args.reference else None
    masks = ps.masks if ps.masks is not None and not bool(ps.masks.all()) else None
    refined = None
    if args.refine_geometry:
        settings = RefineSettings.for_method(args.method, seed=args.seed)
        refined = refine_geometry(images, cams, like, settings=settings, masks=masks)
        cams = refined.cameras
    if masks is not None and args.method == "fdk":
        masks = None  # FDK uses every pixel as measured (see docs/reconstruction.md)
        if not args.quiet:
            sys.stderr.write("xraynerf reconstruct: note: FDK uses collimated pixels as measured (voxel/nerf leave them out)\n")
    result = _reconstruct(args, images, cams, like, masks, opts)
    _write_outputs(args, result, refined)
    _report(args, result, reference, len(ps), time.monotonic() - t0)
    return EXIT_OK
