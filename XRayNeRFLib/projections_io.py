"""Projection stacks on disk: V images of H rows x W columns in one 3D ITK image (.mha, .nrrd, .nii, .nii.gz).

Layout
------
In memory a stack is a (V, H, W) array, ``images[view, row, column]`` (rows and columns as defined in
:mod:`XRayNeRFLib.geometry`). On disk it is an ITK image whose axes are (u = column, v = row, view),
i.e. ``SimpleITK.GetArrayFromImage`` gives back the (V, H, W) array unchanged. The header holds the
detector pixel spacing (su, sv) in mm (the third spacing is 1), an origin (u0, v0, 0) in mm and an
identity direction: the convention of RTK projection stacks.

The header says nothing about where the detector is: the geometry file does. For RTK geometry
(.xml) the origin is the position of pixel (0, 0) in RTK's detector frame and the rows are in RTK's
order (``geometry_io.rtk_layout_from_ours`` flips them); for XRayNeRF JSON geometry the origin is
informational only (pixel positions come from the principal point).

Optional string metadata (``xraynerf_quantity``: "line_integral" / "intensity", ``xraynerf_row_order``:
"xraynerf" / "rtk") is written to .mha and .nrrd headers and read back by :func:`projection_stack_metadata`.

Writing goes to a temporary file next to the target, renamed into place when complete: an
interrupted or failed write leaves no file behind (and no half-written target).
"""

from __future__ import annotations

import os
import uuid
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "STACK_EXTENSIONS",
    "save_projection_stack",
    "load_projection_stack",
    "projection_stack_metadata",
    "check_projections_match",
    "stack_extension",
]

STACK_EXTENSIONS = (".mha", ".nrrd", ".nii", ".nii.gz")
_META_PREFIX = "xraynerf_"


def stack_extension(path: str) -> str:
    """The projection-stack extension of ``path`` (one of STACK_EXTENSIONS) or ValueError."""
    name = os.path.basename(str(path)).lower()
    for ext in sorted(STACK_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext) and len(name) > len(ext):
            return ext
    raise ValueError(
        f"projection stack {str(path)!r}: unknown file type; use one of {', '.join(STACK_EXTENSIONS)} "
        "(.mhd is not supported: it is two files)"
    )


def _pair(x, name: str) -> Tuple[float, float]:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    if a.size == 1:
        a = np.repeat(a, 2)
    if a.size != 2 or not np.isfinite(a).all():
        raise ValueError(f"{name} must be two finite numbers [column (u), row (v)] in mm, got {x!r}")
    return float(a[0]), float(a[1])


def save_projection_stack(
    images: Union[Tensor, np.ndarray],
    path: str,
    spacing_mm: Union[float, Sequence[float]] = (1.0, 1.0),
    origin_mm: Optional[Sequence[float]] = None,
    *,
    metadata: Optional[Dict[str, str]] = None,
    compress: bool = False,
) -> None:
    """Write a projection stack.

    images: (V, H, W) (or (H, W) for one view) tensor or array, written as float32.
    path: .mha, .nrrd, .nii or .nii.gz; the directory must exist.
    spacing_mm: (su, sv) detector pixel spacing [column, row] in mm (or one number), > 0.
    origin_mm: (u0, v0) in mm of pixel (0, 0); default the centred detector ``-(size - 1) / 2 * spacing``
        (RTK's default, see ``geometry_io.rtk_default_origin_mm``).
    metadata: optional {key: str} written as ``xraynerf_<key>`` to .mha/.nrrd headers (ignored by NIfTI).
    """
    import SimpleITK as sitk

    ext = stack_extension(path)
    if isinstance(images, Tensor):
        arr = images.detach().to("cpu", torch.float32).numpy()
    else:
        arr = np.asarray(images, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or 0 in arr.shape:
        raise ValueError(f"a projection stack must be (V, H, W) with V, H, W > 0, got shape {tuple(arr.shape)}")
    su, sv = _pair(spacing_mm, "spacing_mm")
    if su <= 0 or sv <= 0:
        raise ValueError(f"spacing_mm must be > 0, got {[su, sv]}")
    _, h, w = arr.shape
    if origin_mm is None:
        u0, v0 = -(w - 1) / 2.0 * su, -(h - 1) / 2.0 * sv
    else:
        u0, v0 = _pair(origin_mm, "origin_mm")
    directory = os.path.dirname(os.path.abspath(str(path)))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write projection stack {str(path)!r}: directory {directory!r} does not exist")

    image = sitk.GetImageFromArray(np.ascontiguousarray(arr))  # ITK size (W, H, V)
    image.SetSpacing((su, sv, 1.0))
    image.SetOrigin((u0, v0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    for key, value in (metadata or {}).items():
        image.SetMetaData(_META_PREFIX + str(key), str(value))

    # A unique hidden name in the target directory (same file system: the rename is atomic); ITK creates
    # it, so it gets the usual permissions (mkstemp's would be 0600).
    tmp = os.path.join(directory, f".{os.path.basename(str(path))}.{uuid.uuid4().hex[:12]}.part{ext}")
    done = False
    try:
        try:
            sitk.WriteImage(image, tmp, compress)
        except RuntimeError as exc:
            raise ValueError(f"cannot write projection stack {str(path)!r}: {str(exc).strip().splitlines()[-1]}") from None
        os.replace(tmp, str(path))
        done = True
    finally:  # an error or Ctrl-C (KeyboardInterrupt) leaves no temporary file behind
        if not done and os.path.exists(tmp):
            os.remove(tmp)


def load_projection_stack(path: str, dtype: torch.dtype = torch.float32) -> Tuple[Tensor, Tensor, Tensor]:
    """Read a projection stack written by :func:`save_projection_stack`, RTK or any ITK tool.

    returns: images (V, H, W) tensor of ``dtype`` (file values unchanged; a 2D image gives V = 1),
    spacing (2,) float64 [su, sv] mm, origin (2,) float64 [u0, v0] mm.
    Raises ValueError for a missing/unreadable file, a non-scalar image, more than 3 dimensions,
    a rotated or flipped direction matrix, or non-finite values.
    """
    import SimpleITK as sitk

    if not os.path.isfile(str(path)):
        raise ValueError(f"projection stack {str(path)!r} does not exist")
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ValueError(f"cannot read projection stack {str(path)!r}: {str(exc).strip().splitlines()[-1]}") from None
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise ValueError(f"projection stack {str(path)!r} is {dim}D; expected a 3D stack (columns, rows, views) or one 2D image")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(
            f"projection stack {str(path)!r} has {image.GetNumberOfComponentsPerPixel()} components per pixel; expected scalar images"
        )
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(dim, dim)
    if np.abs(direction - np.eye(dim)).max() > 1e-6:
        raise ValueError(
            f"projection stack {str(path)!r} has direction {direction.round(6).tolist()}; projection stacks must have an "
            "identity direction (u along columns, v along rows): flip or resample the images and reset the direction"
        )
    arr = sitk.GetArrayFromImage(image).astype(np.float64 if dtype == torch.float64 else np.float32)
    if dim == 2:
        arr = arr[None]
    if not np.isfinite(arr).all():
        raise ValueError(f"projection stack {str(path)!r} contains {int((~np.isfinite(arr)).sum())} NaN or infinite pixel values")
    spacing = torch.tensor(image.GetSpacing()[:2], dtype=torch.float64)
    origin = torch.tensor(image.GetOrigin()[:2], dtype=torch.float64)
    return torch.from_numpy(arr).to(dtype), spacing, origin


def projection_stack_metadata(path: str) -> Dict[str, str]:
    """The ``xraynerf_*`` header entries of a stack (without the prefix), read without loading pixels;
    empty for files that have none (NIfTI, other tools)."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ValueError(f"cannot read projection stack {str(path)!r}: {str(exc).strip().splitlines()[-1]}") from None
    return {k[len(_META_PREFIX) :]: reader.GetMetaData(k) for k in reader.GetMetaDataKeys() if k.startswith(_META_PREFIX)}


def check_projections_match(images: Tensor, cameras, *, what: str = "projection stack", spacing_mm=None) -> None:
    """Raise ValueError unless ``images`` (V, H, W) fit ``cameras``: same number of views, same
    detector size (W columns, H rows) and, when ``spacing_mm`` (from the file header) is given,
    the same pixel spacing as every view (relative tolerance 1e-6)."""
    if images.ndim != 3:
        raise ValueError(f"{what} must be (V, H, W), got shape {tuple(images.shape)}")
    v, h, w = images.shape
    if v != len(cameras):
        raise ValueError(f"{what} has {v} projections but the geometry has {len(cameras)} views; use the geometry file that made the stack")
    if (w, h) != tuple(cameras.size_px):
        raise ValueError(
            f"{what} images are {w} x {h} pixels (columns x rows) but the geometry's detector is {cameras.size_px[0]} x "
            f"{cameras.size_px[1]}"
        )
    if spacing_mm is not None:
        want = torch.as_tensor(np.asarray(spacing_mm, dtype=np.float64))
        have = cameras.pixel_spacing_mm.detach().cpu().double()
        if ((have - want).abs() > 1e-6 * want.abs().max()).any():
            raise ValueError(
                f"{what} has pixel spacing {want.tolist()} mm but the geometry has {torch.unique(have, dim=0).tolist()} mm; "
                "use matching files"
            )
