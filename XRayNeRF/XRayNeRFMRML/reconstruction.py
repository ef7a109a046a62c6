"""MRML <-> engine for the Reconstruction module: projections from nodes or DICOM, cameras from the chosen
geometry source, the reconstruction written back to scalar volume nodes (HU), a live preview, and a
scene left as the user had it when anything fails.

Inputs
------
* a **projection sequence**: a ``vtkMRMLSequenceNode`` whose data nodes are 1-slice scalar volumes
  (K = 1, J = H rows, I = W columns; view v is data node v, image[row, col] = array[0, row, col]);
* a **volume stack**: a scalar volume whose K slices are the views (view v = array[v], (J, I) = (H, W)),
  e.g. a projection stack ``.mha`` loaded in Slicer;
* a **DICOM X-ray series** (a file or a directory): images, geometry and intensity relationship from the
  tags, read by ``XRayNeRFMRML.inputs.projection_set_from_dicom`` (the modules' one DICOM route).

Images are in XRayNeRF's layout (beam's eye view, ``XRayNeRFLib.geometry``), except with RTK XML geometry,
whose stacks are in RTK's row order and are flipped on reading, as ``ProjectionSet.from_stack`` does.

Geometry sources (:data:`GEOMETRY_SOURCES`)
-------------------------------------------
* ``"images"``: the cameras stored on the image nodes (attribute ``XRayNeRF.Cameras``, written by the DRR
  module and XRayNeRF's readers): one view per sequence item, or V views on a stack;
* ``"circular"``: a circular orbit about a patient axis (S, R or A) through an isocentre, with a start
  angle, an arc and a detector offset (:class:`CircularOrbit`; views and detector size from the images);
* ``"file"``: RTK XML (detector size from the images, pixel spacing and origin from the image node's
  geometry, read back into the file's LPS frame) or XRayNeRF JSON;
* ``"dicom"``: from the DICOM tags (DICOM input only).

Values
------
``quantity="line_integral"``: the images are line integrals (dimensionless, as DRRs); ``"intensity"``:
raw intensities proportional to I, converted with ``-ln(I / I0)`` (``XRayNeRFLib.intensities``), I0 given
or estimated per view from the brightest pixels (unattenuated air).

Outputs
-------
Volumes in Hounsfield units (mu = mu_water (1 + HU/1000), mu_water at 60 keV) with the engine's
``ras_from_ijk`` as IJK-to-RAS (a parent transform on a given output node is compensated, so the voxels
land where the engine put them in world RAS). Never imports qt or ctk; torch and XRayNeRFLib are imported
when called.
"""

from __future__ import annotations

import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import slicer
import vtk

from . import choices
from .engine_call import direct
from .nodes import CAMERAS_ATTRIBUTE, ijk_to_ras, new_node, remove_node, scene_of, world_from_node

INPUT_KINDS = ("sequence", "stack", "dicom")
GEOMETRY_SOURCES = ("images", "circular", "file", "dicom")
QUANTITIES = ("line_integral", "intensity")
METHODS = choices.RECONSTRUCTION_METHODS  # the engine's (XRayNeRFLib.recon.api.METHODS)
RENDERERS = choices.RENDERERS
RECONSTRUCTION_ATTRIBUTE = "XRayNeRF.Reconstruction"  # on the output nodes: the run's summary (JSON)
REFINED_CAMERAS_ATTRIBUTE = "XRayNeRF.RefinedCameras"  # on the output node: the cameras self-calibration corrected
RUN_ATTRIBUTES = (RECONSTRUCTION_ATTRIBUTE, REFINED_CAMERAS_ATTRIBUTE)  # what a run writes on a node besides voxels
PREVIEW_INTERVAL_S = 0.1  # ~10 Hz
DEFAULT_ENERGY_KEV = 60.0  # = XRayNeRFLib.volume.DEFAULT_EFFECTIVE_ENERGY_KEV (not imported here: torch loads lazily)


# -- projections from nodes ---------------------------------------------------------------------------
@dataclass
class NodeImages:
    """Images read from MRML nodes.

    values: (V, H, W) float32 as stored (line integrals or intensities).
    cameras: V views from the nodes' ``XRayNeRF.Cameras`` attributes, or None when any node lacks it.
    spacing_mm: (2,) [column, row] pixel size of the (first) image node.
    origin_lps_mm: (2,) [u, v] position of pixel (0, 0) in the node's file frame (LPS), for RTK geometry.
    names: one name per view.
    """

    values: np.ndarray
    cameras: Any
    spacing_mm: np.ndarray
    origin_lps_mm: np.ndarray
    names: List[str] = field(default_factory=list)


def _node_spacing_origin(node) -> Tuple[np.ndarray, np.ndarray]:
    a = ijk_to_ras(node)
    spacing = np.linalg.norm(a[:3, :2], axis=0)  # [i = column, j = row]
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ a  # Slicer converted the file's LPS to RAS on loading
    return spacing, lps[:2, 3].copy()


def _cameras_attribute(node, views: int):
    from XRayNeRFLib.geometry_io import cameras_from_json

    text = node.GetAttribute(CAMERAS_ATTRIBUTE)
    if not text:
        return None
    try:
        cams = cameras_from_json(json.loads(text))
    except (ValueError, json.JSONDecodeError) as exc:
        raise ValueError(f"'{node.GetName()}': its camera attribute {CAMERAS_ATTRIBUTE} is not valid ({exc})") from None
    if len(cams) != views:
        raise ValueError(f"'{node.GetName()}' holds {views} image(s) but its camera attribute has {len(cams)} view(s)")
    return cams


def _scalar_array(node) -> np.ndarray:
    image = node.GetImageData() if node is not None else None
    if image is None or image.GetNumberOfPoints() == 0:
        name = node.GetName() if node is not None else "(none)"
        raise ValueError(f"'{name}' has no voxels: select a volume that holds the projections")
    if image.GetNumberOfScalarComponents() != 1:
        raise ValueError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} components per pixel; projections are greyscale")
    return np.array(slicer.util.arrayFromVolume(node), dtype=np.float32)  # (K, J, I)


def images_from_sequence(sequence_node) -> NodeImages:
    """A sequence of 1-slice scalar volumes -> V = number of items, in item order."""
    if sequence_node is None or not sequence_node.IsA("vtkMRMLSequenceNode"):
        raise ValueError("select a projection sequence (a sequence node of 1-slice volumes)")
    n = sequence_node.GetNumberOfDataNodes()
    if n == 0:
        raise ValueError(f"sequence '{sequence_node.GetName()}' is empty: add one 1-slice volume per view")
    arrays, cams, names = [], [], []
    for v in range(n):
        item = sequence_node.GetNthDataNode(v)
        if item is None or not item.IsA("vtkMRMLScalarVolumeNode"):
            kind = item.GetClassName() if item is not None else "nothing"
            raise ValueError(f"sequence '{sequence_node.GetName()}' item {v} is {kind}; each item must be a 1-slice scalar volume")
        a = _scalar_array(item)
        if a.shape[0] != 1:
            raise ValueError(
                f"sequence '{sequence_node.GetName()}' item {v} has {a.shape[0]} slices; each item must be one image (1 slice)"
            )
        if arrays and a.shape != arrays[0].shape:
            raise ValueError(
                f"sequence '{sequence_node.GetName()}' item {v} is {a.shape[2]} x {a.shape[1]} pixels but item 0 is "
                f"{arrays[0].shape[2]} x {arrays[0].shape[1]}: all views need the same detector size"
            )
        arrays.append(a)
        cams.append(_cameras_attribute(item, 1))
        names.append(item.GetName() or f"view {v}")
    spacing, origin = _node_spacing_origin(sequence_node.GetNthDataNode(0))
    cameras = None
    if all(c is not None for c in cams):
        from XRayNeRFLib.geometry import Cameras

        cameras = Cameras.concatenate(cams)
    return NodeImages(np.concatenate(arrays, axis=0), cameras, spacing, origin, names)


def images_from_stack(volume_node) -> NodeImages:
    """A scalar volume whose K slices are the views: (K, J, I) -> (V, H, W)."""
    if volume_node is None or not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise ValueError("select a projection stack (a scalar volume whose slices are the views)")
    a = _scalar_array(volume_node)
    spacing, origin = _node_spacing_origin(volume_node)
    cams = _cameras_attribute(volume_node, a.shape[0])
    return NodeImages(a, cams, spacing, origin, [f"{volume_node.GetName()}[{v}]" for v in range(a.shape[0])])


# orbit axis -> rotation taking the engine's orbit (about RAS +S, angle 0: source posterior) to an orbit about
# that axis, chosen so that angle 0 keeps the source posterior where it can (axes S and R; for A the
# source starts superior). Columns: images of e_R, e_A, e_S.
ORBIT_AXES = ("S", "R", "A")
_ORBIT_ROTATION = {
    "S": np.eye(3),
    "R": np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]]),  # S -> R, A -> A, R -> -S
    "A": np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]),  # S -> A, A -> -S, R -> R
}


@dataclass
class CircularOrbit:
    """A circular cone-beam orbit about the patient axis ``axis`` ("S", "R" or "A": RAS +z, +x or +y)
    through ``isocenter_ras`` (3,) RAS mm.

    start_deg / arc_deg: angle of the first view and the arc covered; positive angles turn right-handed
    about the axis. Angle 0 puts the source posterior (axes S and R) or superior (axis A); about S this is
    the C-arm primary angle (LAO positive). A 360-degree arc spreads the views evenly without repeating the
    first angle (step 360/V); any other arc includes both ends (step arc/(V-1)).
    sid_mm / sdd_mm: source-isocentre and source-detector distances. pixel_spacing_mm: (column, row) or
    one value. detector_offset_mm: (2,) [column, row] in-plane shift of the detector (an offset detector
    for a wider field of view): the principal point moves by -offset / spacing pixels. The number of views
    and the detector size come from the images.
    """

    sid_mm: float
    sdd_mm: float
    pixel_spacing_mm: Any
    start_deg: float = 0.0
    arc_deg: float = 360.0
    isocenter_ras: Sequence[float] = (0.0, 0.0, 0.0)
    axis: str = "S"
    detector_offset_mm: Sequence[float] = (0.0, 0.0)

    def angles_deg(self, views: int) -> np.ndarray:
        if views < 2:
            raise ValueError(f"a circular orbit needs at least 2 views, got {views}")
        if not 0.0 < self.arc_deg <= 720.0:
            raise ValueError(f"the orbit's arc must be in (0, 720] degrees, got {self.arc_deg}")
        if abs(self.arc_deg - 360.0) < 1e-9:
            return self.start_deg + 360.0 * np.arange(views) / views
        return self.start_deg + self.arc_deg * np.arange(views) / (views - 1)

    def cameras(self, views: int, size_px: Tuple[int, int]):
        """V cameras (float64) for ``views`` images of ``size_px`` (columns, rows)."""
        import torch

        from XRayNeRFLib.geometry import Cameras

        spacing = np.broadcast_to(np.asarray(self.pixel_spacing_mm, dtype=np.float64).reshape(-1), (2,)).copy()
        if not (spacing > 0).all():
            raise ValueError(f"the detector pixel spacing must be > 0 mm, got {spacing.tolist()}")
        if not 0 < self.sid_mm < self.sdd_mm:
            raise ValueError(
                f"the source-isocentre distance ({self.sid_mm:g} mm) must be > 0 and smaller than the source-detector "
                f"distance ({self.sdd_mm:g} mm)"
            )
        axis = str(self.axis).upper()
        if axis not in _ORBIT_ROTATION:
            raise ValueError(
                f"the orbit axis must be one of {', '.join(ORBIT_AXES)} (patient right, anterior, superior), got {self.axis!r}"
            )
        iso = np.asarray(self.isocenter_ras, dtype=np.float64).reshape(-1)
        offset = np.asarray(self.detector_offset_mm, dtype=np.float64).reshape(-1)
        if iso.shape != (3,) or not np.isfinite(iso).all():
            raise ValueError(f"the isocentre must be three finite RAS coordinates in mm, got {iso.tolist()}")
        if offset.shape != (2,) or not np.isfinite(offset).all():
            raise ValueError(f"the detector offset must be two finite values [column, row] in mm, got {offset.tolist()}")
        cams = Cameras.circular_orbit(
            torch.from_numpy(np.radians(self.angles_deg(views))),
            sid_mm=float(self.sid_mm),
            sdd_mm=float(self.sdd_mm),
            size_px=(int(size_px[0]), int(size_px[1])),
            pixel_spacing_mm=torch.from_numpy(spacing),
            detector_offset_mm=torch.from_numpy(offset),
            dtype=torch.float64,
        )  # about +S through the origin
        moved = np.eye(4)
        moved[:3, :3] = _ORBIT_ROTATION[axis]
        moved[:3, 3] = iso  # world <- engine orbit frame: rotate the axis into place, then shift to the isocentre
        world_from_camera = torch.from_numpy(moved) @ cams.world_from_camera
        return Cameras(world_from_camera, cams.sdd_mm, cams.pixel_spacing_mm, cams.principal_point_px, cams.size_px)


def isocenter_from_markups(markups_node) -> Tuple[float, float, float]:
    """The first control point of a markups node in world RAS mm (parent transforms applied)."""
    if markups_node is None or markups_node.GetNumberOfControlPoints() < 1:
        name = markups_node.GetName() if markups_node is not None else "(none)"
        raise ValueError(f"the isocentre point list '{name}' has no point: place one point at the rotation centre")
    point = [0.0, 0.0, 0.0]
    markups_node.GetNthControlPointPositionWorld(0, point)
    return (float(point[0]), float(point[1]), float(point[2]))


def _to_line_integrals(values: np.ndarray, quantity: str, i0: Optional[float]):
    from XRayNeRFLib.intensities import to_line_integrals

    if quantity == "line_integral":
        return values, []
    if quantity != "intensity":
        raise ValueError(f"the image values must be 'line_integral' or 'intensity', got {quantity!r}")
    li = to_line_integrals(values, relationship="LIN", sign=1, i0=i0 if i0 else None)
    return li.images.numpy(), list(li.assumptions)


def projection_set_from_nodes(
    node,
    geometry: str = "circular",
    *,
    geometry_file: Optional[str] = None,
    orbit: Optional[CircularOrbit] = None,
    quantity: str = "line_integral",
    i0: Optional[float] = None,
):
    """A projection sequence or a stack node + a geometry source -> ``ProjectionSet`` (line integrals).

    node: vtkMRMLSequenceNode (1-slice volumes) or vtkMRMLScalarVolumeNode (stack).
    geometry: "images" | "circular" (needs ``orbit``) | "file" (needs ``geometry_file``, .xml or .json).
    quantity / i0: see the module docstring (i0 None or 0: estimated).
    """
    import torch

    from XRayNeRFLib.geometry_io import load_geometry, ours_from_rtk_layout
    from XRayNeRFLib.projection_set import ProjectionSet

    if node is None:
        raise ValueError("select the projections (a sequence of 1-slice volumes or a volume stack)")
    images = images_from_sequence(node) if node.IsA("vtkMRMLSequenceNode") else images_from_stack(node)
    v, h, w = images.values.shape
    values = images.values
    notes: List[str] = []
    if geometry == "images":
        if images.cameras is None:
            raise ValueError(
                f"'{node.GetName()}' carries no camera geometry (attribute {CAMERAS_ATTRIBUTE}) on every image: choose "
                "the circular-orbit form or a geometry file"
            )
        cams = images.cameras
    elif geometry == "circular":
        if orbit is None:
            raise ValueError("the circular-orbit geometry needs its parameters (distances, pixel spacing, arc)")
        cams = orbit.cameras(v, (w, h))
        notes.append(
            f"circular orbit: {v} views from {orbit.start_deg:g} deg over {orbit.arc_deg:g} deg, SID {orbit.sid_mm:g} mm, SDD "
            f"{orbit.sdd_mm:g} mm"
        )
    elif geometry == "file":
        if not geometry_file:
            raise ValueError("choose the geometry file (RTK .xml or XRayNeRF .json)")
        if str(geometry_file).lower().endswith(".xml"):
            cams = load_geometry(str(geometry_file), size_px=(w, h), spacing_mm=images.spacing_mm, origin_mm=images.origin_lps_mm)
            values = np.ascontiguousarray(ours_from_rtk_layout(values))
            notes.append(
                f"{geometry_file}: RTK geometry; image rows flipped from RTK's order, pixel spacing "
                f"{images.spacing_mm.round(6).tolist()} mm from the images"
            )
        else:
            cams = load_geometry(str(geometry_file))
    elif geometry == "dicom":
        raise ValueError("DICOM geometry needs a DICOM series as input; for image nodes choose 'images', 'circular' or 'file'")
    else:
        raise ValueError(f"unknown geometry source {geometry!r}; use one of {', '.join(GEOMETRY_SOURCES)}")
    if len(cams) != v or tuple(cams.size_px) != (w, h):
        raise ValueError(
            f"the images ({v} views of {w} x {h} pixels) and the geometry ({len(cams)} views of {cams.width} x "
            f"{cams.height}) disagree: choose the geometry that belongs to these projections"
        )
    values, li_notes = _to_line_integrals(values, quantity, i0)
    metadata = [{"node": n} for n in images.names]
    return ProjectionSet(
        torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)), cams, None, metadata, notes + li_notes, source=node.GetName()
    )


# -- writing volumes ----------------------------------------------------------------------------------
def write_volume_node(node, data: np.ndarray, ras_from_ijk: np.ndarray) -> None:
    """Put ``data`` (K, J, I) into ``node`` with world IJK-to-RAS ``ras_from_ijk`` (4, 4) RAS mm; a parent
    transform of the node is compensated."""
    slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(data, dtype=np.float32))
    local = np.linalg.inv(world_from_node(node)) @ np.asarray(ras_from_ijk, dtype=np.float64)
    node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(local))
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.Modified()


PREVIEW_WINDOW_HU = (-1000.0, 1000.0)  # the reconstruction's grey scale: air black, water grey, bone white


def set_preview_window(node) -> None:
    """Give the output node's display the fixed :data:`PREVIEW_WINDOW_HU` grey scale. Slicer's automatic
    window is fitted once, to the node's first content (the constant -1000 HU grid), and would show every
    later preview all white."""
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    display.SetAutoWindowLevel(0)
    display.SetWindowLevel(PREVIEW_WINDOW_HU[1] - PREVIEW_WINDOW_HU[0], sum(PREVIEW_WINDOW_HU) / 2.0)


class SceneChanges:
    """Records what a run does to the scene so that a failure can undo it: nodes created here are removed,
    given nodes get their voxels, geometry, run attributes (:data:`RUN_ATTRIBUTES`) and display-node state back.
    New nodes go into ``scene`` (default ``slicer.mrmlScene``)."""

    def __init__(self, scene=None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        self.created: List[Any] = []
        self.saved: List[Tuple[Any, Any, np.ndarray, dict, bool]] = []

    def volume(self, node, name: str):
        """``node`` (remembered as it is now) or a new scalar volume node named ``name``."""
        if node is None:
            node = new_node(self.scene, "vtkMRMLScalarVolumeNode", name)
            self.created.append(node)
            return node
        image = None
        if node.GetImageData() is not None:
            image = vtk.vtkImageData()
            image.DeepCopy(node.GetImageData())
        attributes = {name: node.GetAttribute(name) for name in RUN_ATTRIBUTES}
        self.saved.append((node, image, ijk_to_ras(node), attributes, node.GetDisplayNode() is not None))
        return node

    @contextmanager
    def undone_on_failure(self, on_failure: Optional[Callable[[], None]] = None):
        """A block whose exceptions (any, ``Cancelled`` and KeyboardInterrupt included) first call ``on_failure()``,
        then :meth:`rollback`, and go on."""
        try:
            yield self
        except BaseException:
            try:
                if on_failure is not None:
                    on_failure()
            finally:
                self.rollback()
            raise

    def rollback(self) -> None:
        for node, image, matrix, attributes, had_display in reversed(self.saved):
            node.SetAndObserveImageData(image)
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(matrix))
            for name, value in attributes.items():
                if value is None:
                    node.RemoveAttribute(name)
                else:
                    node.SetAttribute(name, value)
            if not had_display and node.GetDisplayNode() is not None:
                display = node.GetDisplayNode()
                node.SetAndObserveDisplayNodeID(None)
                if display.GetScene() is not None:
                    display.GetScene().RemoveNode(display)
            node.Modified()
        for node in reversed(self.created):
            remove_node(node)
        self.created, self.saved = [], []


def hu_from_mu(mu, energy_kev: float = DEFAULT_ENERGY_KEV) -> np.ndarray:
    """mu (1/mm, tensor or array) -> HU as float32 numpy (XRayNeRFLib.volume.mu_to_hu at ``energy_kev``)."""
    import torch

    from XRayNeRFLib.volume import mu_to_hu

    return mu_to_hu(torch.as_tensor(mu).detach().double().cpu(), energy_kev).numpy().astype(np.float32)


class LivePreview:
    """Engine progress -> the output node's voxels, at most every ``interval_s`` seconds.

    The iterative methods report the current mu (1/mm): its middle slice (J, I) (k = K // 2; of a coarser
    grid during a coarse-to-fine fit's first phase) or the whole volume (K, J, I); it is written in HU into
    ``node`` (which already holds the output grid)."""

    def __init__(
        self,
        node,
        shape_kji: Tuple[int, int, int],
        interval_s: float = PREVIEW_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        energy_kev: float = DEFAULT_ENERGY_KEV,
    ):
        self.node, self.shape, self.interval_s, self.clock = node, tuple(shape_kji), interval_s, clock
        self.energy_kev = float(energy_kev)
        self.updates = 0
        self._last = -math.inf

    def __call__(self, preview, force: bool = False) -> bool:
        """Write ``preview`` if it is mu of the grid (a slice or the volume) and it is time; True if written.
        A slice of another size (a coarse-to-fine fit's coarse phase) is resized bilinearly to (J, I)."""
        if preview is None or isinstance(preview, (dict, str)) or getattr(preview, "ndim", 0) not in (2, 3):
            return False
        now = self.clock()
        if not force and now - self._last < self.interval_s:
            return False
        shape = tuple(preview.shape)
        array = slicer.util.arrayFromVolume(self.node)  # (K, J, I) view of the node's voxels
        if shape == self.shape:
            array[...] = hu_from_mu(preview, self.energy_kev)
        elif len(shape) == 2:
            if shape != self.shape[1:]:
                import torch

                if min(shape) < 2:
                    return False
                preview = torch.nn.functional.interpolate(
                    torch.as_tensor(preview).detach().double()[None, None], size=self.shape[1:], mode="bilinear", align_corners=True
                )[0, 0]
            array[self.shape[0] // 2] = hu_from_mu(preview, self.energy_kev)
        else:
            return False
        slicer.util.arrayFromVolumeModified(self.node)
        self._last = now
        self.updates += 1
        return True


# -- running ------------------------------------------------------------------------------------------
@dataclass
class ReconstructionOutput:
    """What :func:`run_reconstruction` made: the output node (HU), the uncertainty node (HU, std) or None,
    the engine's ReconstructionResult, the ProjectionSet used, the number of preview updates and the refined
    geometry file written (None: none)."""

    volume_node: Any
    uncertainty_node: Any
    result: Any
    projections: Any
    preview_updates: int = 0
    refined_geometry_file: Optional[str] = None

    @property
    def cancelled(self) -> bool:
        return bool(getattr(self.result, "cancelled", False))


VOXEL_SOLVERS = ("default",) + choices.VOXEL_SOLVERS  # "default": the engine's own choice (no option passed)


def solver_options(method: str, solver: Optional[str], options: Optional[dict]) -> Optional[dict]:
    """``options`` with ``solver`` added for the voxel method ("default"/None: unchanged). Raises ValueError
    for a solver the engine does not name."""
    if method != "voxel" or solver in (None, "", "default"):
        return options
    if solver not in VOXEL_SOLVERS:
        raise ValueError(f"unknown voxel solver {solver!r}; use one of {', '.join(VOXEL_SOLVERS)}")
    return dict(options or {}, solver=solver)


FOV_REGIONS = choices.FOV_REGIONS  # the engine's (XRayNeRFLib.recon.grid.REGIONS): "every", "any"


@dataclass
class GridRequest:
    """The output grid, as the CLI's grid options (docs/reconstruction.md, "Output grid"): ``like_node`` (a scalar
    volume node: its size, spacing, origin and direction in world RAS, as ``--like``) wins; else ``like_path`` (an image
    file, read from its header by the engine's ``grid_like``, as ``--like``); else ``size`` (NX, NY, NZ)
    voxels along RAS x, y, z of ``spacing_mm`` with voxel (0, 0, 0)'s centre at ``origin_ras`` (RAS mm; None: the grid
    centred on the isocentre), as ``--size --spacing-mm --origin-ras``; else the ``region`` cylinder ("every" or
    "any" view, ``--fov-region``) with ``grid`` voxels across or ``spacing_mm`` (wins when both are given)."""

    grid: Optional[int] = None
    spacing_mm: Optional[float] = None
    region: Optional[str] = None
    size: Optional[Tuple[int, int, int]] = None
    origin_ras: Optional[Tuple[float, float, float]] = None
    like_node: Any = None
    like_path: Optional[str] = None


def output_grid(cameras, request: Optional[GridRequest] = None, *, grid: Optional[int] = None, spacing_mm: Optional[float] = None):
    """The output grid descriptor (an empty Volume of mu (K, J, I), ras_from_ijk world RAS mm) of ``request``
    (:class:`GridRequest`; ``grid`` / ``spacing_mm`` alone: the default cylinder), through the engine's grid
    functions (XRayNeRFLib.recon.grid). Raises ValueError for an explicit size without a spacing, a region the
    engine does not name, a reference node that is not a 3-D volume (no voxels, or one slice) or a reference file
    that is missing, unreadable or 2-D."""
    import torch

    from XRayNeRFLib.recon.grid import cylinder_grid, explicit_grid, grid_descriptor, grid_like

    r = request if request is not None else GridRequest(grid=grid, spacing_mm=spacing_mm)
    if r.like_node is not None:
        image = r.like_node.GetImageData()
        if image is None or image.GetNumberOfPoints() == 0 or min(image.GetDimensions()) < 2:
            raise ValueError(f"reference grid '{r.like_node.GetName()}' is not a 3-D volume with voxels; choose another volume")
        i, j, k = image.GetDimensions()
        ras = world_from_node(r.like_node) @ ijk_to_ras(r.like_node)
        return grid_descriptor((k, j, i), torch.from_numpy(np.ascontiguousarray(ras, dtype=np.float64)))
    if r.like_path:
        return grid_like(str(r.like_path))
    if r.size is not None:
        if not r.spacing_mm:
            raise ValueError("an explicit grid size needs a voxel size > 0 mm")
        return explicit_grid(r.size, float(r.spacing_mm), origin_ras=r.origin_ras, cameras=cameras)
    if r.region is not None and r.region not in FOV_REGIONS:
        raise ValueError(f"unknown field-of-view region {r.region!r}; use one of {', '.join(FOV_REGIONS)}")
    region = {"region": r.region} if r.region else {}  # None: the engine's default region
    if r.spacing_mm:
        return cylinder_grid(cameras, spacing_mm=float(r.spacing_mm), **region)
    return cylinder_grid(cameras, grid=int(r.grid) if r.grid else None, **region)


def run_reconstruction(
    projections,
    *,
    method: str = "fdk",
    renderer: Optional[str] = None,
    grid: Optional[int] = None,
    spacing_mm: Optional[float] = None,
    grid_request: Optional[GridRequest] = None,
    refine_geometry: bool = False,
    refined_geometry_file: Optional[str] = None,
    iterations: Optional[int] = None,
    uncertainty: bool = False,
    ensemble_size: int = 4,
    seed: int = 0,
    options: Optional[dict] = None,
    output_node=None,
    uncertainty_node=None,
    name: str = "Reconstruction",
    progress: Optional[Callable] = None,
    preview_interval_s: float = PREVIEW_INTERVAL_S,
    on_output_node: Optional[Callable[[Any], None]] = None,
    on_failure: Optional[Callable[[], None]] = None,
    scene=None,
    call_engine: Optional[Callable] = None,
) -> ReconstructionOutput:
    """Reconstruct a ProjectionSet with ``XRayNeRFLib.recon.api.reconstruct`` into volume nodes (HU).

    The output node (created when None, named ``name``) gets the output grid at once (-1000 HU) and then
    shows the engine's progress previews (throttled to ``preview_interval_s``). ``progress``: the engine's
    callback (``Progress`` -> bool); False cancels: the iterative methods keep the best volume so far
    (``output.cancelled``); FDK has no partial result and raises ``XRayNeRFLib.progress.Cancelled``.
    On any exception (Cancelled included) the scene is put back as it was: created nodes removed, given
    nodes restored. ``on_output_node(node)`` is called once the output node holds the grid (to show it);
    ``on_failure()`` first thing on an exception, before the scene is put back (to restore the views, so that
    no slice view still shows a node being restored or removed). renderer: the iterative methods' projector
    (None: the engine's default, ``XRayNeRFLib.recon.api.DEFAULT_RENDERER``). scene: where new nodes go
    (default: the given output node's scene, else ``slicer.mrmlScene``). call_engine: how the engine's
    ``reconstruct`` is run (engine_call.py; None: directly). grid_request: the output grid (:class:`GridRequest`;
    None: the default cylinder with ``grid`` / ``spacing_mm``). refine_geometry: first correct each view's pose
    from the data (``XRayNeRFLib.recon.selfcal.refine_geometry`` with ``RefineSettings.for_method``, as
    ``reconstruct --refine-geometry``) and reconstruct with the corrected cameras; they are stored on the output
    node (``REFINED_CAMERAS_ATTRIBUTE``, the cameras JSON of XRayNeRFLib.geometry_io) and the refinement's summary
    in its ``RECONSTRUCTION_ATTRIBUTE``; ``refined_geometry_file``: they are also written there, last, by the CLI's
    writer (``XRayNeRFLib.cli.reconstruct.write_refined_geometry``: .json, .matrices.json, .matrices.txt or .xml).
    Refused before any work (ValueError, scene and files untouched): a grid whose estimated memory exceeds what is
    available (the engine's ``check_memory``: ``GridMemoryError``), a refined-geometry file without refine_geometry
    or that cannot be written.
    """
    from XRayNeRFLib.recon.api import DEFAULT_RENDERER

    renderer = renderer or DEFAULT_RENDERER
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    engine = call_engine or direct
    energy_kev = float((options or {}).get("energy_kev", DEFAULT_ENERGY_KEV))  # the API's HU conversion energy
    changes = SceneChanges(scene if scene is not None else scene_of(output_node, uncertainty_node))
    with changes.undone_on_failure(on_failure):
        like = output_grid(projections.cameras, grid_request, grid=grid, spacing_mm=spacing_mm)
        _refuse_before_work(projections, like, method, options, uncertainty, refine_geometry, refined_geometry_file)
        node, preview = _output_node(changes, output_node, name, like, preview_interval_s, energy_kev)
        if on_output_node is not None:
            on_output_node(node)
        on_progress = _with_preview(preview, progress)
        masks = projections.masks if projections.masks is not None and not bool(projections.masks.all()) else None
        cameras, refined = projections.cameras, None
        if refine_geometry:
            refined = _refined(projections.images, cameras, like, method, seed, masks, on_progress, engine)
            cameras = refined.cameras
        run = dict(renderer=renderer, iterations=int(iterations) if iterations else None, uncertainty=bool(uncertainty))
        run.update(ensemble_size=int(ensemble_size), masks=masks, seed=int(seed), progress=on_progress, options=options)
        result = _engine_reconstruct(engine, projections.images, cameras, method, like, **run)
        _write_result(node, result, like, energy_kev)
        info = _run_info(method, renderer, projections, result)
        _store_refinement(node, refined, info)
        unode = _write_uncertainty(changes, uncertainty_node, node, result, info, energy_kev) if uncertainty else None
        if refined_geometry_file:
            from XRayNeRFLib.cli.reconstruct import write_refined_geometry

            write_refined_geometry(refined.cameras, refined_geometry_file)
    return ReconstructionOutput(node, unode, result, projections, preview.updates, refined_geometry_file or None)


def _refuse_before_work(projections, like, method: str, options, uncertainty: bool, refine: bool, refined_file) -> None:
    """What the CLI refuses before any work: a refined-geometry file that cannot be written (or without ``refine``)
    and a grid ``like`` whose estimated peak memory exceeds what is available (``GridMemoryError``, both numbers)."""
    from XRayNeRFLib.recon.grid import check_memory

    if refined_file:
        from XRayNeRFLib.cli.reconstruct import check_refined_geometry_path

        if not refine:
            raise ValueError("a refined-geometry file is written by the self-calibration: turn refine geometry on, or clear the file")
        check_refined_geometry_path(refined_file, "the refined-geometry file")
    size_px = projections.cameras.size_px
    check_memory(method, tuple(like.data.shape), len(projections), size_px, options=options, uncertainty=bool(uncertainty))


def _output_node(changes: SceneChanges, output_node, name: str, like, interval_s: float, energy_kev: float):
    """The output node (``output_node``, remembered by ``changes``, or a new one named ``name``) holding ``like``'s
    grid at -1000 HU with the preview grey scale, and the :class:`LivePreview` that writes into it."""
    ras_from_ijk = like.ras_from_ijk.detach().double().cpu().numpy()
    node = changes.volume(output_node, name)
    write_volume_node(node, np.full(tuple(like.data.shape), -1000.0, np.float32), ras_from_ijk)
    set_preview_window(node)
    return node, LivePreview(node, tuple(like.data.shape), interval_s, energy_kev=energy_kev)


def _with_preview(preview: LivePreview, progress: Optional[Callable]) -> Callable:
    """The engine's progress callback: write the preview (throttled), then ask ``progress`` (None: go on)."""

    def on_progress(p) -> bool:
        preview(getattr(p, "preview", None))
        return True if progress is None else progress(p) is not False

    return on_progress


def _engine_reconstruct(engine: Callable, images, cameras, method: str, like, **run):
    """``XRayNeRFLib.recon.api.reconstruct`` through ``engine`` (engine_call.py) on ``like``'s grid, in HU."""
    from XRayNeRFLib.recon.api import reconstruct

    return engine(reconstruct, images, cameras, method, volume=like, units="hu", **run)


def _run_info(method: str, renderer: str, projections, result) -> dict:
    """The run's summary stored on the output nodes (``RECONSTRUCTION_ATTRIBUTE``)."""
    return {
        "method": method,
        "renderer": renderer,
        "views": len(projections),
        "seconds": round(float(result.seconds), 3),
        "cancelled": bool(result.cancelled),
        "units": "HU",
        "assumptions": list(projections.assumptions),
    }


def _write_result(node, result, like, energy_kev: float) -> None:
    """The engine's volume into ``node`` (HU), after checking that it is on ``like``'s grid."""
    want = like.ras_from_ijk.detach().double().cpu().numpy()
    out = result.volume
    got = out.ras_from_ijk.detach().double().cpu().numpy()
    if tuple(out.data.shape) != tuple(like.data.shape) or np.abs(got - want).max() > 1e-4 * max(1.0, np.abs(want).max()):
        raise RuntimeError("the engine returned a volume on another grid than the one asked for; please report this")
    write_volume_node(node, _hu_array(out, energy_kev), got)


def _store_refinement(node, refined, info: dict) -> None:
    """The corrected cameras (``REFINED_CAMERAS_ATTRIBUTE``, geometry_io's cameras JSON) and the summary on ``node``;
    ``refined`` None: only the summary ``info`` (an earlier run's corrected cameras are removed: they belong to
    another volume)."""
    if refined is not None:
        from XRayNeRFLib.geometry_io import cameras_to_json

        info["refined_geometry"] = _refine_summary(refined)
        node.SetAttribute(REFINED_CAMERAS_ATTRIBUTE, json.dumps(cameras_to_json(refined.cameras)))
    else:
        node.RemoveAttribute(REFINED_CAMERAS_ATTRIBUTE)
    node.SetAttribute(RECONSTRUCTION_ATTRIBUTE, json.dumps(info))


def refined_cameras(node):
    """The corrected cameras a self-calibrating run stored on its output ``node`` (float64 Cameras), or None."""
    from XRayNeRFLib.geometry_io import cameras_from_json

    text = node.GetAttribute(REFINED_CAMERAS_ATTRIBUTE) if node is not None else None
    return cameras_from_json(json.loads(text)) if text else None


def save_refined_geometry(node, path: str) -> None:
    """Write the corrected cameras stored on ``node`` to ``path`` by the CLI's writer
    (``XRayNeRFLib.cli.reconstruct.write_refined_geometry``; the form by extension). Raises ValueError when ``node``
    holds none (no self-calibrating run made it) or the file cannot be written, before writing anything."""
    from XRayNeRFLib.cli.reconstruct import check_refined_geometry_path, write_refined_geometry

    cams = refined_cameras(node)
    if cams is None:
        name = node.GetName() if node is not None else "(none)"
        raise ValueError(f"'{name}' holds no refined geometry: reconstruct with refine geometry on first")
    check_refined_geometry_path(path, "the refined-geometry file")
    write_refined_geometry(cams, path)


def _write_uncertainty(changes: SceneChanges, uncertainty_node, node, result, info: dict, energy_kev: float):
    """The ensemble's spread (HU) into ``uncertainty_node`` or a new node named after ``node``."""
    if result.uncertainty is None:
        raise RuntimeError("the engine returned no uncertainty volume although it was asked for; please report this")
    unode = changes.volume(uncertainty_node, f"{node.GetName()} uncertainty")
    write_volume_node(
        unode,
        _hu_array(result.uncertainty, energy_kev, spread=True),
        result.uncertainty.ras_from_ijk.detach().double().cpu().numpy(),
    )
    unode.SetAttribute(RECONSTRUCTION_ATTRIBUTE, json.dumps(dict(info, quantity="standard deviation over the ensemble")))
    return unode


def _refined(images, cameras, like, method: str, seed: int, masks, progress, call_engine):
    """The engine's self-calibration of ``cameras`` on ``like``'s grid, with the settings of ``method``."""
    from XRayNeRFLib.recon.selfcal import RefineSettings, refine_geometry

    settings = RefineSettings.for_method(method, seed=seed)
    return call_engine(refine_geometry, images, cameras, like, settings=settings, masks=masks, progress=progress)


def _refine_summary(refined) -> dict:
    """A RefineResult in a few JSON numbers: mean per-view correction (deg, mm), data terms, why it stopped."""
    rot = refined.corrections[:, :3].norm(dim=1) * (180.0 / math.pi)
    tra = refined.corrections[:, 3:].norm(dim=1)
    return {
        "mean_rotation_deg": round(float(rot.mean()), 4),
        "mean_translation_mm": round(float(tra.mean()), 4),
        "data_terms": [float(t) for t in refined.data_terms],
        "stopped": str(refined.stopped),
    }


def _hu_array(volume, energy_kev: float = DEFAULT_ENERGY_KEV, spread: bool = False) -> np.ndarray:
    """A result Volume as HU float32 (K, J, I) numpy, converted when the engine gave mu. ``spread``: the
    values are a standard deviation (HU per 1/mm, no offset: 1000 / mu_water)."""
    data = volume.data.detach().double().cpu()
    if volume.units == "mu":
        if spread:
            from XRayNeRFLib.volume import mu_water_per_mm

            return (1000.0 * data / mu_water_per_mm(energy_kev)).numpy().astype(np.float32)
        return hu_from_mu(data, energy_kev)
    return data.float().numpy()
