"""``xraynerf register``: 2D/3D registration of a CT to one X-ray, or to several at once (a biplane pair,
frames of a run: one pose, summed similarity) (engine: XRayNeRFLib.registration).

A DICOM X-ray is read as the Slicer module reads it, through
:meth:`~XRayNeRFLib.projection_set.ProjectionSet.from_dicom`, with the C-arm's isocentre at the CT's centre
(:func:`XRayNeRFLib.registration.pose.ct_isocenter_ras`); an image file comes with a camera JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ..dicom_xray import GeometryOverrides
from ..errors import GeometryError
from ..geometry import Cameras, nearest_rigid
from ..progress import Progress
from ..projection_set import ProjectionSet
from ..registration import LOSS_NAMES, register
from ..registration.intensity import collimator_mask, equalize, invert, log_linearize
from ..registration.landmarks import LandmarkPose, read_landmarks_json, solve_landmark_pose
from ..registration.mnerf import fit_mnerf
from ..registration.nett import load_nett
from ..registration.optimize import RegistrationSettings, auto_levels, pyramid_size_px
from ..registration.pose import ct_correction_from_poses, ct_isocenter_ras, pose_errors
from ..registration.transform_io import write_ct_correction
from ..render import DEFAULT_RENDERER, render
from ..volume import Volume, as_mu, load_volume
from .common import EXIT_OK, note, progress_bar, refuse_overwriting_inputs

REGISTER_DESCRIPTION = """\
Register a CT to one X-ray: find the X-ray camera pose under which the CT's DRR matches the image, by
gradient descent on the pose through the differentiable renderer (coarse to fine; mutual information by
default), and write the pose, the CT's rigid correction and a visual check. Several X-rays of one patient
position (a biplane pair, frames of a run; --image a b) are registered together: each keeps its camera,
one rigid correction of the CT moves them all, and their similarities are summed.

inputs:
  --volume CT       a CT (.nii/.nrrd/.mha or a DICOM series directory), HU or mu (1/mm).
  --image IMG [..]  a DICOM X-ray (geometry, intensity relationship and shutter from its tags; the
                    C-arm's isocentre is put at the CT's centre, as DICOM does not register the C-arm
                    to the CT), or an image file (.mha/.nrrd/.nii/.png/.tif, one 2D image) with --camera.
                    Several (or --image repeated): registered together; image files need one --camera
                    each (or one for all) and one --init each, in the same order.
  --camera JSON     {"sdd_mm": 1020, "pixel_spacing_mm": [0.5, 0.5], "principal_point_px": [511.5, 511.5],
                    "size_px": [1024, 1024]}: source-detector distance (mm), pixel spacing [column, row]
                    (mm), principal point [column, row] (0-based pixel-centre coordinates: the foot of
                    the perpendicular from the source on the detector), image size [columns, rows].
  --init JSON       {"world_from_camera": [[r00, r01, r02, tx], [..], [..], [0, 0, 0, 1]]}: the initial
                    camera pose, a rigid 4x4 row-major matrix (mm) in the CT file's patient RAS frame.
                    Camera frame: origin at the X-ray source, +z towards the detector along the
                    principal ray, +x along increasing columns, +y along increasing rows (row 0 = the
                    first row of the stored image). Optional for DICOM input (its tags give the pose).
  --landmarks JSON  {"pairs": [{"label": "carina", "ct_mm": [x, y, z], "pixel": [column, row]}, ...]}: >= 4
                    points marked on the CT (RAS mm; "frame": "LPS" for LPS) and on the X-ray (0-based
                    pixel-centre [column, row]); the start pose is solved from them (PnP with the camera's
                    intrinsics) instead of taken from --init / the DICOM tags, and each pair's reprojection
                    error is reported. With --init or a DICOM pose as well, that pose stays the reference
                    of ct_correction_ras (the CT moves, the camera keeps its nominal pose).
  --mnerf IMG [..]  X-rays of this patient at KNOWN poses (DICOM, or image files with one --mnerf-camera
                    each or one for all and one --mnerf-init pose each): an mNeRF, a neural field masked to
                    the CT's body and fitted to them (XRayNeRFLib.registration.mnerf), is rendered instead
                    of the CT. Opt-in; not with --nett; docs/registration.md, "mNeRF".

outputs:
  --out JSON        the registered "world_from_camera" (same convention), the camera intrinsics (refined
                    with --refine-intrinsics), "ct_correction_ras" (4x4, RAS, to parent: moves the CT so
                    that from the initial camera it looks as from the registered one), the final and
                    initial loss, iterations, seconds and the per-iteration trace; with --landmarks also
                    "landmark_start" (the solved pose, RMS and per-pair errors in px, detector mm, mm).
  --transform-out   the same CT correction as an ITK transform (.h5 or .tfm, LPS, resampling direction)
                    that 3D Slicer loads as a transform node: put the CT under it.
  --overlay PNG     the X-ray in gray with the final DRR's edges in red, for a human check (several
                    X-rays: one file per view, NAME_1.png, NAME_2.png, ...).

image values: the X-ray is used as stored unless --log (intensity -> line integral -log(I/I0), I0 from
the brightest pixels), --invert or --equalize are given; DICOM X-rays are converted to line integrals
with their Pixel Intensity Relationship tags. "mi" is blind to any monotone gray-level curve; the NCC
losses need bright = more attenuation (as in a DRR). Flat borders (collimator) are masked out.

example:
  xraynerf register --volume ct.nii.gz --image xray.mha --camera camera.json --init init.json \\
                    --out result.json --overlay check.png --transform-out correction.h5
  xraynerf register --volume ct.nii.gz --image frontal.dcm lateral.dcm --out result.json   # biplane
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``register`` to an argparse sub-parser collection; returns its parser."""
    p = subparsers.add_parser(
        "register",
        help="register a CT to one X-ray or several at once (pose through the differentiable DRR)",
        description=REGISTER_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--volume", required=True, help="CT volume file or DICOM series directory")
    p.add_argument(
        "--image",
        required=True,
        nargs="+",
        action="extend",
        help="DICOM X-ray, or an image file with --camera; several (or repeated): registered together, one pose",
    )
    p.add_argument("--camera", nargs="+", action="extend", help="camera JSON (intrinsics) per non-DICOM image (or one for all)")
    p.add_argument(
        "--init",
        nargs="+",
        action="extend",
        help="initial pose JSON (world_from_camera, RAS mm) per image; required for non-DICOM images without --landmarks",
    )
    p.add_argument("--landmarks", help="landmark pairs JSON (CT RAS mm <-> X-ray [column, row]); the start pose is solved from them")
    p.add_argument("--out", required=True, help="result JSON")
    p.add_argument(
        "--loss",
        default="mi",
        choices=LOSS_NAMES,
        help="similarity: mi (mutual information, default), ncc, gncc (gradient NCC), mncc (multiscale NCC), pncc (patch NCC), "
        "ssim (structural similarity of the standardised images), mse (mean squared error: X-ray and DRR on one scale), "
        "bgfit (the X-ray fitted by a gray curve of the DRR plus a smooth background: scatter; docs/registration.md); "
        "see benchmarks/RESULTS_registration.md, 'Loss study'",
    )
    p.add_argument("--overlay", help="PNG: X-ray with the final DRR's edges")
    p.add_argument("--transform-out", help="ITK transform file (.h5 or .tfm) with the CT's correction for Slicer")
    p.add_argument("--input-units", default="auto", choices=["auto", "hu", "mu"], help="CT values (auto: HU when below -100)")
    p.add_argument("--center", type=float, nargs=3, metavar=("R", "A", "S"), help="rotation centre, RAS mm (default: the CT centre)")
    p.add_argument("--optimizer", default="adam", choices=["adam", "lbfgs"])
    p.add_argument(
        "--no-ct-coverage",
        action="store_true",
        help="compare every pixel, also those whose rays cross the CT's end faces (default: only pixels whose "
        "rays cross the CT's whole extent; see docs/registration.md)",
    )
    p.add_argument(
        "--levels",
        type=int,
        nargs="+",
        default=None,
        help="pyramid binning factors, coarse to fine (default: the engine's, registration.optimize.auto_levels)",
    )
    p.add_argument("--iterations", type=int, nargs="+", help="maximum iterations per level (default 80 then 50)")
    p.add_argument("--capture-range-deg", type=float, default=0.0, help="coarse search over +- this rotation (deg)")
    p.add_argument("--capture-range-mm", type=float, default=0.0, help="coarse search over +- this translation (mm)")
    p.add_argument(
        "--starts",
        type=int,
        default=1,
        help="poses tried by the coarse search over the capture range (e.g. 32; the initial pose is the first): each is "
        f"scored at the coarsest level, the best {RegistrationSettings.keep_starts} (the engine's keep_starts) are "
        "optimised there and the best of them goes on. 1 (default), or no capture range: no search",
    )
    p.add_argument("--refine-intrinsics", action="store_true", help="also refine the source-detector distance and principal point")
    p.add_argument("--log", action="store_true", help="the image holds intensities: use -log(I / I0)")
    p.add_argument("--invert", action="store_true", help="invert the image (dark bone -> bright)")
    p.add_argument("--equalize", action="store_true", help="histogram-equalize the image")
    p.add_argument("--no-mask", action="store_true", help="do not mask flat (collimated) borders")
    p.add_argument(
        "--nett",
        help="NeTT appearance weights (.pt, written by XRayNeRFLib.registration.save_nett after "
        "train_nett) applied to the CT (in mu) before rendering; opt-in, see docs/registration.md",
    )
    p.add_argument(
        "--mnerf",
        nargs="+",
        action="extend",
        help="X-rays of this patient at KNOWN poses (DICOM, or image files with --mnerf-camera and --mnerf-init): an "
        "mNeRF (a masked neural field, XRayNeRFLib.registration.mnerf) is fitted to them and rendered instead of the CT; "
        "opt-in, not with --nett; see docs/registration.md",
    )
    p.add_argument("--mnerf-camera", nargs="+", action="extend", help="camera JSON per --mnerf image file (or one for all)")
    p.add_argument("--mnerf-init", nargs="+", action="extend", help="known pose JSON (world_from_camera, RAS mm) per --mnerf image file")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's; 1 is often fastest on small images)")
    p.add_argument("--quiet", action="store_true")
    return p


def read_json(path: str, what: str) -> dict:
    if not path or not os.path.exists(path):
        raise ValueError(f"{what} file {path!r} does not exist")
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} file {path!r} is not valid JSON: {exc}") from None


def read_camera_json(path: str) -> dict:
    """Validate a camera JSON: sdd_mm > 0, pixel_spacing_mm [col, row] > 0, principal_point_px [col, row],
    size_px [cols, rows] positive integers."""
    cam = read_json(path, "camera")
    if not isinstance(cam, dict):
        raise ValueError(f"camera file {path!r} must hold a JSON object with sdd_mm, pixel_spacing_mm, principal_point_px, size_px")
    missing = [k for k in ("sdd_mm", "pixel_spacing_mm", "principal_point_px", "size_px") if k not in cam]
    if missing:
        raise ValueError(
            f"camera file {path!r} lacks {', '.join(missing)}; it needs sdd_mm (mm), pixel_spacing_mm "
            "[column, row] (mm), principal_point_px [column, row] and size_px [columns, rows]"
        )

    def numbers(key, n):
        v = cam[key]
        v = [v] if n == 1 and isinstance(v, (int, float)) else v
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, (int, float)) and np.isfinite(x) for x in v):
            raise ValueError(f"camera file {path!r}: {key} must be {'a number' if n == 1 else f'a list of {n} numbers'}, got {cam[key]!r}")
        return [float(x) for x in v]

    sdd = numbers("sdd_mm", 1)[0]
    spacing = numbers("pixel_spacing_mm", 2)
    pp = numbers("principal_point_px", 2)
    size = numbers("size_px", 2)
    if sdd <= 0:
        raise ValueError(f"camera file {path!r}: sdd_mm must be > 0 mm, got {sdd:g}")
    if min(spacing) <= 0:
        raise ValueError(f"camera file {path!r}: pixel_spacing_mm must be > 0, got {spacing}")
    if any(s != int(s) or s < 1 for s in size):
        raise ValueError(f"camera file {path!r}: size_px must be two positive integers [columns, rows], got {cam['size_px']}")
    size_i = [int(s) for s in size]
    if not all(-s <= c <= 2 * s for c, s in zip(pp, size_i)):
        raise ValueError(
            f"camera file {path!r}: principal_point_px {pp} is far outside the {size_i[0]}x{size_i[1]} image; "
            "it is in pixels [column, row], not mm"
        )
    return {"sdd_mm": sdd, "pixel_spacing_mm": spacing, "principal_point_px": pp, "size_px": size_i}


def read_init_json(path: str):
    """The initial world_from_camera (4, 4) float64 from {"world_from_camera": 4x4} or a bare 4x4 list."""
    data = read_json(path, "initial pose")
    m = data.get("world_from_camera") if isinstance(data, dict) else data
    if m is None:
        raise ValueError(f'initial pose file {path!r} lacks "world_from_camera" (a 4x4 row-major matrix, RAS mm)')
    try:
        t = torch.tensor(m, dtype=torch.float64)
    except (TypeError, ValueError):
        raise ValueError(f"initial pose file {path!r}: world_from_camera must be a 4x4 list of numbers") from None
    return nearest_rigid(t, f"world_from_camera in {path!r}")  # rounded matrices snapped, non-rigid refused


def _read_image_file(path: str):
    """A 2D image file -> (H, W) float32 numpy array, row 0 = first stored row."""
    if not os.path.exists(path):
        raise ValueError(f"image file {path!r} does not exist")
    try:
        img = sitk.ReadImage(path)
    except RuntimeError as exc:
        raise ValueError(f"cannot read image {path!r}: {str(exc).strip().splitlines()[-1]}") from None
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    if img.GetNumberOfComponentsPerPixel() > 1:
        arr = arr[..., :3].mean(-1)  # RGB(A) -> gray
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"image {path!r} is not a single 2D image (array shape {arr.shape})")
    return arr


def _is_dicom(path: str) -> bool:
    if os.path.isdir(path):
        return False
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM" or path.lower().endswith(".dcm")


def _dicom_xray(path: str, camera, init, volume: Volume):
    """A one-frame DICOM X-ray -> (image (H, W) line integrals, mask (H, W) bool, cameras (1 view, float64), notes):
    the ProjectionSet route of the Slicer module, isocentre at the CT's centre. camera: a --camera path (ignored);
    init: an --init path or None."""
    ps = ProjectionSet.from_dicom([path], GeometryOverrides(isocenter_ras=ct_isocenter_ras(volume).tolist()))
    if len(ps) != 1:
        raise ValueError(f"{path} holds {len(ps)} frames; give one frame per --image (extract the frames)")
    notes = list(ps.assumptions)
    cams = ps.cameras.to(dtype=torch.float64)
    if camera:
        notes.append(f"--camera ignored for {path}: the DICOM tags give the camera")
    if init:
        w = read_init_json(init)
        cams = Cameras(w[None], cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)
    return ps.images[0].float(), ps.masks[0].bool(), cams, notes


def _image_file_xray(path: str, camera, init, args):
    """An image file with its camera and initial pose paths -> (image (H, W), mask (H, W) bool, cameras (1 view,
    float64), notes). args: --landmarks, --no-mask, --log."""
    if not camera:
        raise GeometryError(f"{path} is not DICOM: give its camera with --camera camera.json", name="--camera")
    if not init and not args.landmarks:
        raise GeometryError(f"{path} is not DICOM: give the initial pose with --init init.json or --landmarks points.json", name="--init")
    return xray_from_image_file(path, camera, init, mask=not args.no_mask, log=args.log)


def xray_from_image_file(image_path: str, camera_path: str, init_path=None, *, mask: bool = True, log: bool = False):
    """An X-ray image file (.mha/.nrrd/.nii/.png/.tif, one 2D image, row 0 = first stored row) with its camera JSON
    (:func:`read_camera_json`) and pose JSON (:func:`read_init_json`; ``{"world_from_camera": 4x4}``, RAS mm; a
    camera JSON that also holds ``world_from_camera`` may be both) -> (image (H, W) float32, mask (H, W) bool,
    cameras (1 view, float64, world RAS mm), notes). init_path None: identity pose (a landmark start replaces it).
    mask: the collimator mask (else all pixels); log: intensities turned into line integrals (-ln(I / I0)).
    The command line's route for non-DICOM X-rays (--image with --camera / --init); the web app uses it too."""
    cam = read_camera_json(camera_path)
    arr = _read_image_file(image_path)
    if [arr.shape[1], arr.shape[0]] != cam["size_px"]:
        raise ValueError(
            f"image {image_path} is {arr.shape[1]}x{arr.shape[0]} (columns x rows) but camera size_px is "
            f"{cam['size_px']}: fix size_px in {camera_path}"
        )
    # Without a pose, landmarks give it (run() solves it); identity holds the intrinsics until then.
    w = read_init_json(init_path) if init_path else torch.eye(4, dtype=torch.float64)
    cams = Cameras(
        w[None],
        torch.tensor([cam["sdd_mm"]], dtype=torch.float64),
        torch.tensor([cam["pixel_spacing_mm"]], dtype=torch.float64),
        torch.tensor([cam["principal_point_px"]], dtype=torch.float64),
        tuple(cam["size_px"]),
    )
    image = torch.from_numpy(arr)
    if not torch.isfinite(image).all():
        raise ValueError(f"image {image_path} contains NaN or infinite pixels")
    if float(image.max() - image.min()) <= 0:
        raise ValueError(f"image {image_path} is constant: nothing to register to")
    pixels = collimator_mask(image) if mask else torch.ones(image.shape, dtype=torch.bool)
    if log:
        image = log_linearize(image)
    return image, pixels, cams, []


def view_files(args) -> list:
    """[(image path, camera path or None, init path or None)] per --image, in order: --camera once per
    image or once for all, --init once per image (or not at all); other counts raise GeometryError."""
    if args.landmarks and len(args.image) > 1:
        raise ValueError("--landmarks solves the start of one X-ray: give one --image with it (or --init per image)")
    return paired_files(args.image, args.camera, args.init, "")


def paired_files(images: list, cameras, inits, prefix: str) -> list:
    """[(image, camera or None, init or None)]: cameras once per image or once for all, inits once per image
    or none; other counts raise GeometryError naming ``--{prefix}camera`` / ``--{prefix}init`` (``prefix`` ""
    for --image, "mnerf-" for --mnerf)."""
    n = len(images)
    flag = f"--{prefix.rstrip('-')}" if prefix else "--image"
    cameras, inits = list(cameras or []), list(inits or [])
    if cameras and len(cameras) not in (1, n):
        raise GeometryError(
            f"{len(cameras)} --{prefix}camera files for {n} {flag} files: give one per image, or one for all", name=f"--{prefix}camera"
        )
    if inits and len(inits) != n:
        raise GeometryError(
            f"{len(inits)} --{prefix}init files for {n} {flag} files: give one initial pose per image, in order", name=f"--{prefix}init"
        )
    cameras = cameras * n if len(cameras) == 1 else cameras or [None] * n
    return list(zip(images, cameras, inits or [None] * n))


def fit_mnerf_views(args, volume: Volume):
    """The mNeRF of --mnerf (X-rays at known poses: DICOM tags, or --mnerf-camera / --mnerf-init), fitted to
    the CT ``volume`` (mu) with a progress bar; None without --mnerf."""
    if not args.mnerf:
        return None
    if args.nett:
        raise ValueError("--mnerf renders a field fitted to the X-rays instead of the CT: do not combine it with --nett")
    views = []
    for path, camera, init in paired_files(args.mnerf, args.mnerf_camera, args.mnerf_init, "mnerf-"):
        if not _is_dicom(path) and not init:
            raise GeometryError(f"--mnerf {path} is not DICOM: give its known pose with --mnerf-init pose.json", name="--mnerf-init")
        views.append(load_xray(path, camera, init, args, volume))
    progress = progress_bar("mNeRF", args.quiet)
    try:
        return fit_mnerf(volume, [v[0] for v in views], [v[2] for v in views], progress=progress)
    finally:
        if progress is not None:
            progress.close()


def load_xray(path: str, camera, init, args, volume: Volume):
    """(image (H, W) tensor, mask (H, W) bool tensor, cameras (1 view, float64), notes) of one X-ray file, with
    --invert / --equalize applied. ``volume``: the CT (its centre is a DICOM X-ray's isocentre)."""
    if _is_dicom(path):
        image, mask, cams, notes = _dicom_xray(path, camera, init, volume)
    else:
        image, mask, cams, notes = _image_file_xray(path, camera, init, args)
    if args.invert:
        image = invert(image)
    if args.equalize:
        image = equalize(image, mask)
    return image, mask, cams, notes


def overlay_paths(path: str, n: int) -> list:
    """The overlay file of each of n views: ``path`` itself for one, NAME_1.png ... for several."""
    if n == 1:
        return [path]
    stem, ext = os.path.splitext(path)
    return [f"{stem}_{i + 1}{ext}" for i in range(n)]


def write_overlay(path: str, image, drr) -> None:
    """PNG: the X-ray (1st-99th percentile window, gray) with the DRR's strongest edges in red."""
    x = np.asarray(image, dtype=np.float64)
    lo, hi = np.percentile(x, [1, 99])
    gray = np.clip((x - lo) / max(hi - lo, 1e-12), 0, 1)
    d = torch.as_tensor(np.asarray(drr, dtype=np.float64))[None, None]
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64)
    gx = F.conv2d(F.pad(d, (1, 1, 1, 1), mode="replicate"), kx[None, None])[0, 0]
    gy = F.conv2d(F.pad(d, (1, 1, 1, 1), mode="replicate"), kx.T[None, None])[0, 0]
    mag = (gx**2 + gy**2).sqrt().numpy()
    edges = mag > np.percentile(mag, 90) if mag.max() > 0 else np.zeros_like(mag, dtype=bool)
    rgb = np.stack([gray, gray, gray], -1)
    rgb[edges] = [1.0, 0.1, 0.1]
    out = sitk.GetImageFromArray((rgb * 255).round().astype(np.uint8), isVector=True)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sitk.WriteImage(out, path)


def _write_json_atomic(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def landmark_start_pose(path: str, cams: Cameras, quiet: bool = False) -> LandmarkPose:
    """The start pose solved from the landmark file ``path`` with the intrinsics of ``cams`` (1 view); notes
    the reprojection error (RMS and the worst pair)."""
    pairs = read_landmarks_json(path)
    start = solve_landmark_pose(pairs, cameras=cams)
    worst = int(start.error_px.argmax())
    note(
        f"landmark start from {len(pairs)} pairs: reprojection RMS {start.rms_px:.2f} px ({start.rms_detector_mm:.2f} mm at "
        f"the detector, {start.rms_object_mm:.2f} mm at the landmarks); largest: pair {worst} ({start.labels[worst]}) "
        f"{float(start.error_px[worst]):.2f} px",
        quiet,
    )
    return start


def _check_output_args(args) -> list:
    """The overlay path per view after the output-flag checks (nothing read or written yet)."""
    overlays = overlay_paths(args.overlay, len(args.image)) if args.overlay else []
    refuse_overwriting_inputs((args.volume, *args.image, *(args.mnerf or [])), (*overlays, args.transform_out))
    if args.overlay and not args.overlay.lower().endswith(".png"):
        raise ValueError(f"--overlay {args.overlay}: write a .png file")
    if args.transform_out and not args.transform_out.lower().endswith((".h5", ".hdf5", ".tfm", ".txt")):
        raise ValueError(f"--transform-out {args.transform_out}: use .h5 or .tfm (ITK transform files Slicer loads)")
    if args.iterations is not None and args.levels and len(args.iterations) not in (1, len(args.levels)):
        raise ValueError(f"--iterations needs one value or one per level ({len(args.levels)})")
    return overlays


def _iterations(args, cams: list):
    """--iterations as register()'s max_iterations (None, one value, or one per level), checked against the
    pyramid (--levels, or the default one for these X-rays)."""
    if args.iterations is None:
        return None
    size = pyramid_size_px([c.size_px for c in cams])
    n_levels = len(auto_levels(size))
    if not args.levels and len(args.iterations) not in (1, n_levels):
        raise ValueError(
            f"--iterations needs one value or one per level ({n_levels}: the default pyramid for {size[0]}x{size[1]} px; or give --levels)"
        )
    return args.iterations[0] if len(args.iterations) == 1 else args.iterations


def _register(args, volume: Volume, images: list, masks: list, cams: list, appearance, drr_source=None):
    """The engine call with the command line's settings and a progress bar."""
    iterations = _iterations(args, cams)
    progress = progress_bar("register", args.quiet)
    try:
        result = register(
            volume,
            images,
            cams,
            loss=args.loss,
            mask=masks,
            center_ras=args.center,
            optimizer=args.optimizer,
            levels=args.levels,
            max_iterations=iterations,
            capture_range_deg=args.capture_range_deg,
            capture_range_mm=args.capture_range_mm,
            n_starts=args.starts,
            refine_intrinsics=args.refine_intrinsics,
            appearance=appearance,
            drr_source=drr_source,
            progress=progress,
            num_threads=args.threads,
            ct_coverage=not args.no_ct_coverage,
        )
        if progress is not None:
            progress(Progress(1, 1, "done"))  # early stops end below 100 %
    finally:
        if progress is not None:
            progress.close()
    return result


def _result_json(args, result, ct_correction, cams: list, landmark_start) -> dict:
    data = result.to_json()
    data["ct_correction_ras"] = ct_correction.tolist()
    if landmark_start is not None:
        data["landmark_start"] = landmark_start.to_json()
    data.update(
        {
            "volume": os.path.abspath(args.volume),
            "image": os.path.abspath(args.image[0]),
            "initial_world_from_camera": cams[0].world_from_camera[0].tolist(),
            "frame": "patient RAS, mm",
            "camera_convention": "origin at the source, +z towards the detector, +x along columns, +y along rows",
            "nett": os.path.abspath(args.nett) if args.nett else None,
            "mnerf": [os.path.abspath(p) for p in args.mnerf] if args.mnerf else None,
        }
    )
    for view, path, c in zip(data.get("views", []), args.image, cams):
        view.update(image=os.path.abspath(path), initial_world_from_camera=c.world_from_camera[0].tolist())
    return data


def run(args) -> int:
    t0 = time.monotonic()
    overlays = _check_output_args(args)
    files = view_files(args)
    volume = load_volume(args.volume, units=None if args.input_units == "auto" else args.input_units)
    volume = as_mu(volume) if volume.units == "hu" else volume
    loaded = [load_xray(path, camera, init, args, volume) for path, camera, init in files]
    images, masks, cams = [v[0] for v in loaded], [v[1] for v in loaded], [v[2] for v in loaded]
    _iterations(args, cams)  # refuse a wrong count before the landmark solve
    for n in (n for v in loaded for n in v[3]):
        note(f"note: {n}", args.quiet)
    # The CT correction is stated relative to the nominal pose (DICOM tags or --init) when there is one.
    reference = cams[0].world_from_camera[0]
    landmark_start = None
    if args.landmarks:
        landmark_start = landmark_start_pose(args.landmarks, cams[0], args.quiet)
        if not (args.init or _is_dicom(args.image[0])):
            reference = landmark_start.world_from_camera
        cams = [landmark_start.cameras]
    appearance = load_nett(args.nett) if args.nett else None
    drr_source = fit_mnerf_views(args, volume)
    result = _register(args, volume, images, masks, cams, appearance, drr_source)
    ct_correction = ct_correction_from_poses(result.world_from_camera, reference)
    data = _result_json(args, result, ct_correction, cams, landmark_start)
    if overlays:
        with torch.no_grad():
            shown = drr_source or appearance
            vol = (volume if shown is None else shown(volume)).to(dtype=torch.float32)
            for path, image, cam in zip(overlays, images, result.view_cameras):
                drr = render(vol, cam.to(dtype=torch.float32), renderer=DEFAULT_RENDERER)[0]
                write_overlay(path, image.numpy(), drr.numpy())
    if args.transform_out:
        write_ct_correction(args.transform_out, ct_correction)
    _write_json_atomic(args.out, data)
    moved = pose_errors(
        result.world_from_camera, cams[0].world_from_camera[0], result.ct_correction_ras.new_tensor(volume.center_ras().tolist())
    )
    note(
        "registered" + (f" {len(images)} X-rays" if len(images) > 1 else "") + f" in {time.monotonic() - t0:.1f} s, {result.iterations} "
        f"iterations: loss {result.initial_loss:.4f} -> {result.loss:.4f}; pose moved by {moved['rotation_deg']:.2f} deg, "
        f"{moved['translation_mm']:.2f} mm at the CT centre"
        + (" (cancelled: best pose so far)" if result.cancelled else "")
        + f"; wrote {args.out}",
        args.quiet,
    )
    return EXIT_OK
