"""Projection sets: X-ray images as line integrals together with their cameras, whatever they came from.

A :class:`ProjectionSet` is what reconstruction and registration take in:

* ``images``  (V, H, W) float32 line integrals (dimensionless, comparable with ``render`` output), in our
  camera layout (beam's eye view, see :mod:`XRayNeRFLib.geometry`);
* ``cameras`` V views;
* ``masks``   (V, H, W) bool, True where a pixel saw the beam (False behind collimator blades / shutters);
* ``metadata`` one dict per view (file, frame, angles, ...) and ``assumptions`` (sentences).

Sources: a DICOM series or directory (:meth:`ProjectionSet.from_dicom`, through
:mod:`XRayNeRFLib.dicom_xray` and :mod:`XRayNeRFLib.intensities`), or an image stack (.mha/.nrrd/.nii/.nii.gz,
or a folder of .tif/.tiff/.png, one image per view in name order) with RTK XML or XRayNeRF JSON geometry
(:meth:`ProjectionSet.from_stack`). RTK stacks are in RTK's row order and are flipped on reading
(``geometry_io.ours_from_rtk_layout``); :meth:`ProjectionSet.save` writes the layout that matches the
geometry format.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .dicom_xray import GeometryOverrides, read_dicom_series
from .geometry import Cameras
from .geometry_io import GEOMETRY_FORMATS, is_geometry_path, load_geometry, ours_from_rtk_layout, rtk_layout_from_ours, save_geometry
from .intensities import to_line_integrals
from .projection_matrices import MATRICES_TEXT_SUFFIX, is_matrices_path
from .projections_io import (
    STACK_EXTENSIONS,
    check_projections_match,
    load_projection_stack,
    projection_stack_metadata,
    save_projection_stack,
)

__all__ = ["ProjectionSet", "IMAGE_FOLDER_EXTENSIONS", "STACK_INPUT_EXTENSIONS", "is_stack_input", "read_image_folder"]

IMAGE_FOLDER_EXTENSIONS = (".tif", ".tiff", ".png")
# Stacks that can be read: the written ones plus MetaImage's two-file .mhd (+ .raw), which RTK and ITK tools
# write and SimpleITK reads (it is only refused as an output, see projections_io.stack_extension).
STACK_INPUT_EXTENSIONS = STACK_EXTENSIONS + (".mhd",)


def is_stack_input(path: str) -> bool:
    """True when ``path`` names a projection stack to read with :meth:`ProjectionSet.from_stack` (a file
    ending in one of :data:`STACK_INPUT_EXTENSIONS`, or a folder holding .tif/.tiff/.png images), False
    for anything else (DICOM files and directories). The one rule the command line uses to tell the two
    input kinds apart."""
    path = str(path)
    if os.path.isdir(path):
        return any(n.lower().endswith(IMAGE_FOLDER_EXTENSIONS) and not n.startswith(".") for n in os.listdir(path))
    return path.lower().endswith(STACK_INPUT_EXTENSIONS)


@dataclass
class ProjectionSet:
    """V X-ray views: images (V, H, W) float32 line integrals, cameras, masks (V, H, W) bool, metadata."""

    images: Tensor
    cameras: Cameras
    masks: Optional[Tensor] = None
    metadata: List[Dict[str, Any]] = field(default_factory=list)
    assumptions: List[str] = field(default_factory=list)
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.images, Tensor):
            self.images = torch.as_tensor(np.asarray(self.images))
        if self.images.ndim == 2:
            self.images = self.images[None]
        self.images = self.images.to(torch.float32)
        check_projections_match(self.images, self.cameras, what=f"projection set {self.source}".strip())
        if not torch.isfinite(self.images).all():
            raise ValueError(f"projection set {self.source}: images contain NaN or infinite values")
        if self.masks is None:
            self.masks = torch.ones(self.images.shape, dtype=torch.bool)
        else:
            self.masks = torch.as_tensor(self.masks).to(torch.bool)
            if self.masks.ndim == 2:
                self.masks = self.masks.expand(self.images.shape)
            if tuple(self.masks.shape) != tuple(self.images.shape):
                raise ValueError(f"masks must have the images' shape {tuple(self.images.shape)}, got {tuple(self.masks.shape)}")
        if not self.metadata:
            self.metadata = [{} for _ in range(len(self))]
        if len(self.metadata) != len(self):
            raise ValueError(f"metadata has {len(self.metadata)} entries for {len(self)} views")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index) -> "ProjectionSet":
        idx = torch.arange(len(self))[index].reshape(-1)
        cams = Cameras(
            self.cameras.world_from_camera[idx],
            self.cameras.sdd_mm[idx],
            self.cameras.pixel_spacing_mm[idx],
            self.cameras.principal_point_px[idx],
            self.cameras.size_px,
        )
        return ProjectionSet(
            self.images[idx], cams, self.masks[idx], [self.metadata[i] for i in idx.tolist()], list(self.assumptions), self.source
        )

    # -- constructors -------------------------------------------------------------------------
    @classmethod
    def from_dicom(
        cls,
        inputs: Sequence[str],
        overrides: Optional[GeometryOverrides] = None,
        *,
        relationship: Optional[str] = None,
        sign: Optional[int] = None,
        i0: Optional[float] = None,
        log_scale: Optional[float] = None,
        sort: str = "angle",
    ) -> "ProjectionSet":
        """One DICOM series (files and/or directories) -> line integrals + cameras.

        relationship / sign override Pixel Intensity Relationship (0028,1040/1041); i0 / log_scale as in
        :func:`XRayNeRFLib.intensities.to_line_integrals` (air estimated from the shutter-masked pixels
        when i0 is None).
        """
        if isinstance(inputs, (str, os.PathLike)):
            inputs = [str(inputs)]
        x = read_dicom_series(inputs, overrides, sort=sort)
        notes = list(x.assumptions)
        rel = relationship or x.intensity["relationship"]
        sg = int(sign) if sign is not None else x.intensity["sign"]
        if relationship is not None and relationship.upper() != x.intensity["relationship"]:
            notes.append(f"intensity relationship {relationship.upper()} given; the files say {x.intensity['relationship']}")
        try:
            li = to_line_integrals(
                x.images, relationship=rel, sign=sg, i0=i0, log_scale=log_scale, max_value=x.intensity["max_value"], mask=x.masks
            )
        except ValueError as exc:
            raise ValueError(f"{', '.join(sorted({v['file'] for v in x.views}))[:300]}: {exc}") from None
        notes.extend(li.assumptions)
        meta = [dict(v, air_value=float(li.air[i])) for i, v in enumerate(x.views)]
        return cls(li.images, x.cameras, x.masks, meta, notes, source=", ".join(str(p) for p in inputs))

    @classmethod
    def from_stack(
        cls,
        stack: str,
        geometry: str,
        *,
        quantity: Optional[str] = None,
        i0: Optional[float] = None,
        spacing_mm: Optional[Sequence[float]] = None,
        origin_mm: Optional[Sequence[float]] = None,
        masks: Optional[Tensor] = None,
    ) -> "ProjectionSet":
        """Images from a stack file or an image folder + cameras from RTK XML or XRayNeRF JSON.

        quantity: "line_integral" or "intensity" (converted with ``-ln(I / i0)``, i0 estimated when None);
            default: the stack's ``xraynerf_quantity`` header entry, else line integrals (noted).
        spacing_mm / origin_mm: [u, v] mm, for image folders (no header) or to override the header.
        """
        stack, geometry = str(stack), str(geometry)
        notes: List[str] = []
        if not is_geometry_path(geometry):
            raise ValueError(f"geometry file {geometry!r}: unknown extension; use {GEOMETRY_FORMATS}")
        gext = os.path.splitext(geometry)[1].lower()
        meta: Dict[str, str] = {}
        if os.path.isdir(stack):
            images = read_image_folder(stack)
            header_spacing, header_origin = None, None
        else:
            images, sp, org = load_projection_stack(stack)
            header_spacing, header_origin = sp.numpy(), org.numpy()
            if stack.lower().endswith((".mha", ".nrrd")):
                meta = projection_stack_metadata(stack)
        spacing = np.asarray(spacing_mm, dtype=np.float64).reshape(-1) if spacing_mm is not None else header_spacing
        origin = np.asarray(origin_mm, dtype=np.float64).reshape(-1) if origin_mm is not None else header_origin
        v, h, w = images.shape
        row_order = meta.get("row_order")
        if gext == ".xml":
            if row_order == "xraynerf":
                raise ValueError(
                    f"{stack}: the stack is in XRayNeRF row order (xraynerf_row_order) but {geometry} is RTK geometry; use the "
                    "JSON geometry written with it"
                )
            if spacing is None:
                raise ValueError(
                    f"{stack}: an image folder has no pixel spacing and RTK geometry {geometry} stores none; pass spacing_mm "
                    "(command line: --detector-spacing COLUMN_MM ROW_MM)"
                )
            cams = load_geometry(geometry, size_px=(w, h), spacing_mm=spacing, origin_mm=origin)
            images = ours_from_rtk_layout(images)
            notes.append(f"{stack}: RTK projection layout; rows flipped into the XRayNeRF layout")
        else:
            if row_order == "rtk":
                raise ValueError(
                    f"{stack}: the stack is in RTK row order (xraynerf_row_order) but {geometry} is XRayNeRF JSON; use the RTK "
                    "XML written with it"
                )
            cams = load_geometry(geometry)
        try:
            check_projections_match(
                images,
                cams,
                what=f"projection stack {stack}",
                spacing_mm=header_spacing if gext != ".xml" and spacing_mm is None else None,
            )
        except ValueError as exc:
            raise ValueError(f"{exc} ({geometry})") from None
        q = (quantity or meta.get("quantity") or "").lower()
        if not q:
            q = "line_integral"
            notes.append(
                f"{stack}: values taken as line integrals (no xraynerf_quantity header; pass quantity='intensity' for raw intensities)"
            )
        if q == "intensity":
            li = to_line_integrals(images, relationship="LIN", sign=1, i0=i0)
            notes.extend(li.assumptions)
            data = li.images
        elif q == "line_integral":
            data = images
        else:
            raise ValueError(f"quantity must be 'line_integral' or 'intensity', got {quantity!r}")
        metadata = [{"file": stack, "frame": i, "geometry": geometry} for i in range(v)]
        return cls(data, cams, masks, metadata, notes, source=stack)

    # -- output -------------------------------------------------------------------------------
    def save(self, stack_path: str, geometry_path: str, *, compress: bool = False) -> None:
        """Write the line integrals (.mha/.nrrd/.nii/.nii.gz) and the geometry (.xml RTK: images in RTK row
        order; .json: XRayNeRF layout). Both files appear together or not at all."""
        stack_path, geometry_path = str(stack_path), str(geometry_path)
        gext = os.path.splitext(geometry_path)[1].lower()
        if not is_geometry_path(geometry_path):
            raise ValueError(f"geometry output {geometry_path!r}: use {GEOMETRY_FORMATS}")
        if not stack_path.lower().endswith(STACK_EXTENSIONS):
            raise ValueError(f"projection output {stack_path!r}: use one of {', '.join(STACK_EXTENSIONS)}")
        if os.path.abspath(stack_path) == os.path.abspath(geometry_path):
            raise ValueError("the projection stack and the geometry must be different files")
        spacing = self.cameras.pixel_spacing_mm.detach().double()
        if (spacing - spacing[0]).abs().max() > 1e-9 * spacing.abs().max():
            raise ValueError("the views have different pixel spacings; a projection stack holds one spacing")
        gdir = os.path.dirname(os.path.abspath(geometry_path))
        if not os.path.isdir(gdir):
            raise ValueError(f"cannot write {geometry_path!r}: directory {gdir!r} does not exist")
        fd, tmp_geometry = tempfile.mkstemp(
            prefix="." + os.path.basename(geometry_path) + ".",
            suffix=".part" + (MATRICES_TEXT_SUFFIX if geometry_path.lower().endswith(MATRICES_TEXT_SUFFIX) else gext),
            dir=gdir,
        )
        os.close(fd)
        stack_written = False
        done = False
        try:
            save_geometry(self.cameras, tmp_geometry, form="matrices" if is_matrices_path(geometry_path) else None)
            images = rtk_layout_from_ours(self.images) if gext == ".xml" else self.images
            meta = {"quantity": "line_integral", "row_order": "rtk" if gext == ".xml" else "xraynerf"}
            save_projection_stack(images, stack_path, spacing_mm=spacing[0].tolist(), metadata=meta, compress=compress)
            stack_written = True
            os.replace(tmp_geometry, geometry_path)
            done = True
        finally:
            if not done:
                if os.path.exists(tmp_geometry):
                    os.remove(tmp_geometry)
                if stack_written and os.path.exists(stack_path):
                    os.remove(stack_path)

    def summary(self) -> str:
        """Human-readable description: views, angles, distances, spacing, assumptions."""
        c = self.cameras
        lines = [f"{len(self)} views, {c.width} x {c.height} pixels (columns x rows)"]
        sp = c.pixel_spacing_mm.detach().double()
        lines.append(
            f"pixel spacing [column, row]: {', '.join(f'{float(x):g}' for x in sp[0])} mm"
            + (" (varies)" if (sp - sp[0]).abs().max() > 1e-9 else "")
        )
        sdd = c.sdd_mm.detach().double()
        src = c.source_positions().detach().double()
        lines.append(
            f"source-detector distance: {float(sdd.min()):g}"
            + (f"..{float(sdd.max()):g}" if float(sdd.max() - sdd.min()) > 1e-9 else "")
            + " mm"
        )
        li = self.images[self.masks] if self.masks is not None else self.images
        lines.append(f"line integrals: min {float(li.min()):.4g}, median {float(li.median()):.4g}, max {float(li.max()):.4g}")
        lines.append("view  primary  secondary   SID mm   SDD mm  source RAS mm")
        for i in range(len(self)):
            m = self.metadata[i]
            prim = m.get("primary_deg")
            sec = m.get("secondary_deg")
            sid = m.get("sid_mm")
            lines.append(
                f"{i:4d}  {_f(prim):>7}  {_f(sec):>9}  {_f(sid):>7}  {float(sdd[i]):7g}  ({', '.join(f'{float(x):.1f}' for x in src[i])})"
            )
        first = self.metadata[0] if self.metadata else {}
        for key, label in (
            ("pixel_intensity_relationship", "intensity relationship"),
            ("pixel_intensity_sign", "intensity sign"),
            ("angles_from", "angles from"),
            ("sid_from", "source-isocentre distance from"),
            ("pixel_spacing_from", "pixel spacing from"),
            ("principal_point_from", "principal point"),
            ("layout", "image layout"),
            ("patient_position", "patient position"),
            ("modality", "modality"),
            ("sop_class", "object"),
        ):
            if first.get(key) is not None:
                lines.append(f"{label}: {first[key]}")
        if self.assumptions:
            lines.append("assumptions:")
            lines.extend(f"  - {a}" for a in self.assumptions)
        return "\n".join(lines)


def _f(x) -> str:
    return "-" if x is None else f"{float(x):g}"


def read_image_folder(folder: str) -> Tensor:
    """A folder of 2D greyscale images (.tif/.tiff/.png, sorted by name) -> (V, H, W) float32."""
    import SimpleITK as sitk

    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_FOLDER_EXTENSIONS) and not n.startswith("."))
    if not names:
        raise ValueError(f"{folder}: no {'/'.join(IMAGE_FOLDER_EXTENSIONS)} images in the folder")
    arrays = []
    for n in names:
        p = os.path.join(folder, n)
        try:
            img = sitk.ReadImage(p)
        except RuntimeError as exc:
            raise ValueError(f"{p}: cannot read the image ({str(exc).strip().splitlines()[-1]})") from None
        if img.GetNumberOfComponentsPerPixel() != 1:
            raise ValueError(f"{p}: {img.GetNumberOfComponentsPerPixel()} channels; projections must be greyscale")
        a = sitk.GetArrayFromImage(img).astype(np.float32)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.ndim != 2:
            raise ValueError(f"{p}: expected a 2D image, got shape {a.shape}")
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(f"{p}: {a.shape[1]} x {a.shape[0]} pixels, but {names[0]} has {arrays[0].shape[1]} x {arrays[0].shape[0]}")
        arrays.append(a)
    return torch.from_numpy(np.stack(arrays))
