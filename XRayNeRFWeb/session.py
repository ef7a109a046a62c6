"""What the page's buttons do, on the MRML scene, through the XRayNeRFMRML layer (no trame here).

Each tab's work is a call into the shared MRML <-> engine layer that the Slicer modules use; this file only
chooses nodes, keeps the few references a page needs (the CT, the X-ray, the transform, the outputs), and turns
the layer's results into files in the data folder. Long calls run as jobs (jobs.py): in a worker thread that
holds the scene, with the engine call off the event loop.

Thread rule: methods named ``*_work`` run in a job's worker thread while it holds the scene; every other method
runs on the event loop.
"""

from __future__ import annotations

import json
import logging
import math
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from .datadir import DataDir
from .jobs import JobState
from .pose import nudged

log = logging.getLogger("XRayNeRFWeb")


@dataclass
class ProgressView:
    """What a job reports, as the page shows it."""

    fraction: float
    text: str


class Session:
    """The scene's nodes the page works on, and the actions of the three tabs."""

    def __init__(self, slicer_app, data: DataDir, red_slice_logic, green_slice_logic):
        self.sa, self.data = slicer_app, data
        self.red, self.green = red_slice_logic, green_slice_logic
        from XRayNeRFMRML.registration import OverlayView

        self.overlay_view = OverlayView()  # the Red view's overlay and its state from before it
        self.ct = None  # vtkMRMLScalarVolumeNode, HU
        self.xray = None  # 1-slice X-ray node with its camera
        self.transform = None  # vtkMRMLLinearTransformNode: the CT's pose
        self.base = np.eye(4)  # the pose the manual controls nudge (pose.py)
        self.overlay_drr = None
        self.camera_model = None  # the X-ray's C-arm in 3D
        self.registration_output = None  # XRayNeRFMRML.registration.RegistrationOutput awaiting Accept / Revert
        self.overlay_renderer = None  # XRayNeRFMRML.live_overlay.OverlayRenderer of the current CT and X-ray
        self.overlay_updates = 0
        self.last_registration = None
        self.sample_truth = None  # (4, 4) the sample fluoroscopy's true CT pose, when the sample is loaded
        self.projections_node = None
        self.projections = None  # ProjectionSet
        self.recon_output = None
        self.drr_output = None  # XRayNeRFMRML.drr.DRROutput

    # -- loading ---------------------------------------------------------------------------------------
    def load_ct(self, path: Path, name: str = "CT"):
        nodes = self.sa.io_manager.load_volumes([str(path)])
        node = nodes[0] if nodes else None
        if node is None or node.GetImageData() is None:
            raise ValueError(f"'{Path(path).name}' could not be read as a volume (CT in HU: NIfTI, NRRD, MetaImage)")
        dims = node.GetImageData().GetDimensions()
        if min(dims) < 2:
            self.sa.scene.RemoveNode(node)
            raise ValueError(f"'{Path(path).name}' is a {dims[0]} x {dims[1]} x {dims[2]} image, not a CT volume")
        node.SetName(self.sa.scene.GenerateUniqueName(name))
        self._set_ct(node)
        return node

    def _set_ct(self, node) -> None:
        if self.transform is None:
            self.transform = self.sa.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT pose")
        self.ct = node
        self.set_transform_matrix(np.eye(4))  # a new CT starts where its file puts it
        self.last_registration = None
        self.registration_output = None
        node.SetAndObserveTransformNodeID(self.transform.GetID())
        self.base = self.transform_matrix()
        dm = self.sa.display_manager
        dm.show_volume_in_slice_background(node)
        dm.show_volume_in_slice_foreground(None)
        dm.reset_views()

    def show_volume_rendering(self, node, visible: bool = True) -> None:
        """The CT's volume rendering in 3D (drawn on the CPU here: shown on the DRR and Reconstruction tabs, not
        while the overlay is dragged, where every pose change would redraw it)."""
        vr = self.sa.volume_rendering
        if visible:
            display = (
                vr.get_vr_display_node(node) if vr.has_vr_display_node(node) else vr.create_display_node(node, "CT-Chest-Contrast-Enhanced")
            )
            display.SetVisibility(True)
        elif vr.has_vr_display_node(node):
            vr.get_vr_display_node(node).SetVisibility(False)

    def load_xray_dicom(self, path: Path):
        """A DICOM X-ray frame with its C-arm geometry (isocentre at the CT's centre when a CT is loaded)."""
        from XRayNeRFMRML.inputs import xray_node_from_dicom
        from XRayNeRFMRML.nodes import volume_centre_ras

        centre = volume_centre_ras(self.ct) if self.ct is not None else None
        node = xray_node_from_dicom(str(path), 0, isocenter_ras=centre, name=Path(path).stem, scene=self.sa.scene)
        self._set_xray(node)
        return node

    def load_xray_image(self, image: Path, camera: Path, intensities: bool = False, landmarks: Optional[Path] = None):
        """An X-ray image file with its camera JSON (intrinsics and ``world_from_camera``: the pose in the scene's
        RAS mm, which is the CT file's frame while the CT has not been moved), read by the command line's route
        (``XRayNeRFLib.cli.register.xray_from_image_file``: the camera JSON is also the pose file) and made a node
        by the layer's ``xray_node_from_projections``, as a DICOM X-ray is. intensities: the image holds detector
        intensities (turned into line integrals, as ``xraynerf register --log``); else line integrals.
        landmarks: a landmark file (``xraynerf register --landmarks``: CT points in the CT file's frame, RAS mm,
        with their [column, row] pixels): the camera's pose is solved from it instead (:meth:`landmark_pose`), and
        the camera JSON needs only the intrinsics."""
        from XRayNeRFLib.cli.register import xray_from_image_file
        from XRayNeRFLib.projection_set import ProjectionSet
        from XRayNeRFMRML.inputs import xray_node_from_projections

        if landmarks is not None and self.ct is None:
            raise ValueError("load the CT first: the landmarks' CT points are in the CT file's frame")
        pose = None if landmarks is not None else str(camera)
        pixels, mask, cameras, _notes = xray_from_image_file(str(image), str(camera), pose, log=bool(intensities))
        if landmarks is not None:
            cameras = self.landmark_pose(landmarks, cameras)
        projections = ProjectionSet(pixels[None], cameras, masks=mask[None], source=Path(image).name)
        node = xray_node_from_projections(projections, 0, name=Path(image).stem, scene=self.sa.scene, source=Path(image).name)
        self._set_xray(node)
        return node

    def landmark_pose(self, landmarks: Path, cameras):
        """``cameras`` (1 view, float64) posed by the landmark start of the command line
        (``XRayNeRFLib.cli.register.landmark_start_pose``: the engine's PnP solve, LandmarkError on bad pairs) and
        carried from the CT file's frame into the scene by the CT's transform now: world_from_camera =
        world_from_node(CT) @ w_landmarks."""
        import torch

        from XRayNeRFLib.cli.register import landmark_start_pose
        from XRayNeRFLib.geometry import Cameras
        from XRayNeRFMRML.nodes import world_from_node

        start = landmark_start_pose(str(landmarks), cameras, quiet=True)
        w = torch.as_tensor(world_from_node(self.ct), dtype=torch.float64) @ start.world_from_camera.to(torch.float64)
        c = start.cameras
        return Cameras(w[None], c.sdd_mm, c.pixel_spacing_mm, c.principal_point_px, c.size_px)

    def _set_xray(self, node) -> None:
        self.xray = node
        self.sample_truth = None

    def load_sample_registration(self) -> None:
        """The chest CT and the simulated fluoroscopy (LAO 20 / CRA 10) whose true CT pose is known."""
        from XRayNeRFMRML import sampledata

        self.load_ct(sampledata.verify(sampledata.sample_data_dir() / sampledata.CT_FILE), "chest CT")
        source = types.SimpleNamespace(fileNames=list(sampledata.FLUOROSCOPY_FILES), nodeNames=["chest fluoroscopy"])
        self._set_xray(sampledata.load_fluoroscopy(source)[0])
        self.sample_truth = sampledata.fluoroscopy_setup()["ct_to_parent_ras"]

    def load_sample_projections(self) -> None:
        from XRayNeRFMRML import sampledata
        from XRayNeRFMRML.reconstruction import projection_set_from_nodes

        source = types.SimpleNamespace(fileNames=list(sampledata.PROJECTIONS_FILES), nodeNames=["chest projections"])
        node = sampledata.load_projections(source)[0]
        self.projections = projection_set_from_nodes(node, "images")
        self.projections_node = node

    def load_projections(self, stack: Path, geometry: Optional[Path]) -> None:
        """A projection stack with its geometry file (RTK .xml or XRayNeRF .json), or a DICOM series file."""
        from XRayNeRFMRML.inputs import projection_set_from_dicom
        from XRayNeRFMRML.reconstruction import projection_set_from_nodes

        if geometry is None:
            self.projections = projection_set_from_dicom(str(stack))
            self.projections_node = None
            return
        nodes = self.sa.io_manager.load_volumes([str(stack)])
        if not nodes:
            raise ValueError(f"'{stack.name}' could not be read as a projection stack")
        try:
            self.projections = projection_set_from_nodes(nodes[0], "file", geometry_file=str(geometry))
        except Exception:
            self.sa.scene.RemoveNode(nodes[0])
            raise
        self.projections_node = nodes[0]

    # -- registration: the overlay --------------------------------------------------------------------
    def require_registration_inputs(self) -> None:
        if self.ct is None:
            raise ValueError("load a CT first (or the sample data)")
        if self.xray is None:
            raise ValueError("load an X-ray with its geometry first (a DICOM XA/RF/DX file, or the sample data)")

    def transform_matrix(self) -> np.ndarray:
        from XRayNeRFMRML.registration import transform_to_parent

        return transform_to_parent(self.transform)

    def set_transform_matrix(self, m: np.ndarray) -> None:
        import slicer

        self.transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.asarray(m, dtype=np.float64)))

    def ct_centre_local(self) -> np.ndarray:
        """The CT grid's centre in the CT's own frame (before its transform): (3,) RAS mm."""
        from XRayNeRFMRML.nodes import ijk_to_ras

        dims = np.array(self.ct.GetImageData().GetDimensions(), dtype=np.float64)
        return (ijk_to_ras(self.ct) @ np.r_[(dims - 1.0) / 2.0, 1.0])[:3]

    def overlay_work(self, job: JobState, rotation_deg, translation_mm, opacity: float, coarse: bool = False) -> None:
        """Move the CT by the controls and show its DRR over the X-ray in the Red view: the layer's
        ``OverlayRenderer`` (the Slicer module's live overlay), coarse while the controls move (overlay.py)."""
        from XRayNeRFMRML.live_overlay import OverlayRenderer

        self.set_transform_matrix(nudged(self.base, self.ct_centre_local(), rotation_deg, translation_mm))
        if self.overlay_renderer is None or not self.overlay_renderer.matches(self.ct, self.xray):
            self.overlay_renderer = OverlayRenderer(self.ct, self.xray)
            self.show_volume_rendering(self.ct, False)
        volume = self.overlay_renderer.volume()
        image = job.call_engine(self.overlay_renderer.render_volume, volume, bool(coarse))  # off the event loop
        self.overlay_drr = self.overlay_renderer.write(self.overlay_drr, image, bool(coarse))
        composite = self.red.GetSliceCompositeNode()
        if (composite.GetBackgroundVolumeID(), composite.GetForegroundVolumeID()) != (self.xray.GetID(), self.overlay_drr.GetID()):
            self.show_overlay(opacity)  # turn the view to the detector once; later updates only change the DRR's pixels
        self.overlay_updates += 1

    def show_overlay(self, opacity: float) -> None:
        """The layer's overlay in the Red view, its field of view widened to the view's aspect ratio, and the
        page's colours (:func:`page_style`)."""
        self.overlay_view.show(self.red, self.xray, self.overlay_drr, float(opacity))
        fit_field_of_view(self.red.GetSliceNode())
        page_style(self.xray, self.overlay_drr)

    def set_opacity(self, opacity: float) -> None:
        if self.overlay_drr is not None:
            self.red.GetSliceCompositeNode().SetForegroundOpacity(float(opacity))

    # -- registration: the optimiser ------------------------------------------------------------------
    def register_work(self, job: JobState, loss: str, opacity: float, **engine_options):
        """Register through the MRML layer (XRayNeRFMRML.registration.register_ct_to_xray), its live overlay in
        the Red view; the engine's optimiser and renders run off the event loop (``job.call_engine``)."""
        from XRayNeRFMRML.registration import register_ct_to_xray

        def progress(p) -> bool:
            job.fraction, job.message = p.fraction, p.message or ""
            if p.preview:
                job.previews += 1
            return not job.cancel_requested

        out = register_ct_to_xray(
            self.ct,
            self.xray,
            self.transform,
            drr_node=self.overlay_drr,
            camera_model_node=self.camera_model,
            slice_logic=self.red,
            overlay=self.overlay_view,
            opacity=float(opacity),
            preview_every=3,
            progress=progress,
            call_engine=job.call_engine,
            loss=loss,
            **engine_options,
        )
        fit_field_of_view(self.red.GetSliceNode())
        page_style(self.xray, out.drr_node)
        self.overlay_drr, self.camera_model = out.drr_node, out.camera_model_node
        self.registration_output = out
        self.last_registration = out.result
        return out

    def accept(self) -> None:
        if self.registration_output is None:
            raise ValueError("nothing to accept: run a registration first")
        self.registration_output = None
        self.overlay_view.forget()  # the overlay stays; the view from before it is forgotten
        self.base = self.transform_matrix()

    def revert(self) -> None:
        """The transform as before the last registration (the app shows the overlay again at that pose)."""
        from XRayNeRFMRML.registration import restore_transform

        if self.registration_output is None:
            raise ValueError("nothing to revert: run a registration first")
        restore_transform(self.registration_output)
        self.registration_output = None
        self.last_registration = None
        self.base = self.transform_matrix()

    def pose_json(self) -> dict:
        """The CT's pose (to parent, RAS mm) as the download holds it; ``ct_to_parent_ras`` is Slicer's matrix of
        the CT's transform node (the sample's setup JSON uses the same key for the true pose)."""
        self.require_registration_inputs()
        m = self.transform_matrix()
        out = {
            "ct_to_parent_ras": m.tolist(),
            "frame": "patient RAS, mm; the matrix moves the CT into place (Slicer's transform-to-parent)",
            "ct": self.ct.GetName(),
            "xray": self.xray.GetName(),
        }
        r = self.last_registration  # the engine's RegistrationResult of the pose shown, if it came from one
        if r is not None:
            out.update(
                loss_name=r.loss_name,
                loss=float(r.loss),
                initial_loss=float(r.initial_loss),
                iterations=int(r.iterations),
                cancelled=bool(r.cancelled),
            )
        return out

    def write_itk_transform(self, path: Path) -> None:
        from XRayNeRFLib.registration.transform_io import write_ct_correction

        self.require_registration_inputs()
        write_ct_correction(str(path), self.transform_matrix())

    # -- reconstruction -------------------------------------------------------------------------------
    def reconstruct_work(self, job: JobState, request: dict, show: Callable[[object], None]):
        """Run ``XRayNeRFMRML.reconstruction.run_reconstruction`` on the loaded projections with ``request``
        (:func:`reconstruction_request`); returns (output, the previous output)."""
        from XRayNeRFMRML.reconstruction import run_reconstruction

        if self.projections is None:
            raise ValueError("load projections first (or the sample projections)")

        def progress(p) -> bool:
            job.fraction, job.message = p.fraction, p.message or ""
            if getattr(p, "preview", None) is not None:
                job.previews += 1
            return not job.cancel_requested

        previous = self.recon_output
        out = run_reconstruction(
            self.projections,
            **request,
            ensemble_size=2,
            progress=progress,
            name=f"Reconstruction {request['method']}",
            on_output_node=show,
            call_engine=job.call_engine,
        )
        self.recon_output = out
        return out, previous

    def write_refined_geometry(self, path: Path) -> None:
        """The last reconstruction's self-calibrated cameras to ``path`` (the layer's save_refined_geometry: the
        command line's writer). ValueError when there is no reconstruction or it did not refine."""
        from XRayNeRFMRML.reconstruction import save_refined_geometry

        if self.recon_output is None:
            raise ValueError("run a reconstruction first")
        save_refined_geometry(self.recon_output.volume_node, str(path))

    def show_preview_slice(self, node) -> None:
        """The Red view (axial) through the slice the reconstruction's live preview writes, k = K // 2
        (XRayNeRFMRML.reconstruction.LivePreview), not the neighbouring slice that fitting the view to an even
        number of slices picks. (The node's grey scale is the layer's: reconstruction.set_preview_window.)"""
        from XRayNeRFMRML.nodes import ijk_to_ras

        i, j, k = node.GetImageData().GetDimensions()
        centre = ijk_to_ras(node) @ np.array([(i - 1) / 2.0, (j - 1) / 2.0, k // 2, 1.0])
        self.red.GetSliceNode().JumpSliceByCentering(*centre[:3])

    def write_volume(self, node, path: Path) -> None:
        self.sa.io_manager.write_volume(node, str(path))

    # -- DRR -------------------------------------------------------------------------------------------
    def drr_work(self, job: JobState, pose: dict, renderer: str):
        """The DRR of the CT at a C-arm pose (XRayNeRFMRML.drr), its detector plane and C-arm model."""
        from XRayNeRFMRML.drr import carm_cameras, render_drr

        if self.ct is None:
            raise ValueError("load a CT first (or the sample CT)")

        def progress(p) -> bool:
            job.fraction, job.message = p.fraction, p.message or ""
            return not job.cancel_requested

        previous = self.drr_output
        cameras = carm_cameras(self.ct, **pose)
        self.drr_output = render_drr(
            self.ct,
            cameras,
            renderer=renderer,
            progress=progress,
            call_engine=job.call_engine,
            output_node=previous.volume_node if previous else None,
            camera_model_node=previous.camera_model_node if previous else None,
        )
        return self.drr_output

    @property
    def drr_node(self):
        return None if self.drr_output is None else self.drr_output.volume_node

    def use_drr_as_xray(self) -> None:
        """The rendered DRR (a 1-slice node with its camera) becomes the Registration X-ray."""
        if self.drr_node is None:
            raise ValueError("render a DRR first")
        self._set_xray(self.drr_node)


def page_style(xray_node, drr_node) -> None:
    """Windows of the overlay as the page shows it: the X-ray stretched over its 1st..99.5th percentiles, and only
    the DRR's densest third drawn (green), so that the X-ray stays visible around the spine and heart (the
    Slicer module draws every non-zero DRR pixel; scripts/make_screenshots.py uses this same style)."""
    import slicer

    values = slicer.util.arrayFromVolume(xray_node)
    lo, hi = np.percentile(values, [1, 99.5])
    d = xray_node.GetDisplayNode()
    d.SetAutoWindowLevel(0)
    d.SetWindowLevel(float(hi - lo), float((hi + lo) / 2))
    drr = slicer.util.arrayFromVolume(drr_node)
    lo, hi = np.percentile(drr[drr > 0] if (drr > 0).any() else drr, [67, 99.5])
    d = drr_node.GetDisplayNode()
    d.SetApplyThreshold(1)
    d.SetThreshold(float(lo), 1e30)
    d.SetAutoWindowLevel(0)
    d.SetWindowLevel(float(max(hi - lo, 1e-6)), float((hi + lo) / 2))


def fit_field_of_view(slice_node) -> None:
    """Widen the slice node's field of view along one side so that its aspect ratio is the view's (square
    pixels); the centre stays."""
    fx, fy, fz = slice_node.GetFieldOfView()
    w, h, _ = slice_node.GetDimensions()
    if w <= 0 or h <= 0:
        return
    if fx / fy > w / h:
        fy = fx * h / w
    else:
        fx = fy * w / h
    slice_node.SetFieldOfView(fx, fy, fz)
    slice_node.SetXYZOrigin(0.5 * fx / w, 0.5 * fy / h, 0.0)  # pixel centres about the detector centre, as align does
    slice_node.UpdateMatrices()


def json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=1) + "\n").encode("utf-8")


def reconstruction_request(form: dict, resolve: Optional[Callable[[str], Path]] = None) -> dict:
    """The Reconstruct tab's fields (as the page sends them) -> keyword arguments of
    ``XRayNeRFMRML.reconstruction.run_reconstruction``: method, renderer, iterations, uncertainty, grid_request
    (``GridRequest``: the cylinder of ``fov_region`` with ``grid`` voxels across, or, when ``size`` holds three
    counts > 0, an explicit grid of ``spacing_mm`` voxels with voxel (0, 0, 0)'s centre at ``origin_ras`` (R, A, S mm)
    when given, else (all three empty) centred on the isocentre, or the grid of the reference image ``like``, a path in
    the data folder resolved by ``resolve`` (DataDir.resolve): :func:`reference_grid_path`) and refine_geometry.
    Choices are the engine's (XRayNeRFMRML.choices). Raises ValueError naming the field for anything else."""
    from XRayNeRFMRML.choices import FOV_REGIONS, RECONSTRUCTION_METHODS, RENDERERS
    from XRayNeRFMRML.reconstruction import GridRequest

    method, renderer = form.get("method"), form.get("renderer")
    if method not in RECONSTRUCTION_METHODS:
        raise ValueError(f"unknown method {method!r}")
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}")
    region = form.get("fov_region") or None
    if region is not None and region not in FOV_REGIONS:
        raise ValueError(f"unknown field-of-view region {region!r}; use one of {', '.join(FOV_REGIONS)}")
    size = [int(finite(n or 0, "the explicit grid size", 0, 4096)) for n in (form.get("size") or [0, 0, 0])]
    if len(size) != 3:
        raise ValueError("the explicit grid size needs three counts X Y Z")
    request = GridRequest(grid=int(finite(form.get("grid"), "the grid (voxels across)", 16, 512)), region=region)
    if any(size):
        if not all(size):
            raise ValueError("the explicit grid needs all three sizes X, Y, Z > 0 (or all 0 for the cylinder)")
        origin = [x for x in (form.get("origin_ras") or []) if x not in (None, "")]  # all empty: centred on the isocentre
        if origin and len(origin) != 3:
            raise ValueError("the explicit grid's origin needs all three of R, A, S (mm), or none to centre it on the isocentre")
        request = GridRequest(
            size=tuple(size),
            spacing_mm=finite(form.get("spacing_mm") or 0, "the explicit grid's voxel size (mm)", 0.01, 100),
            origin_ras=tuple(finite(x, "the explicit grid's origin (RAS mm)") for x in origin) if origin else None,
        )
    like = reference_grid_path(form, resolve)
    if like is not None:
        if any(size):
            raise ValueError("the reference image sets the whole output grid: set the explicit size to 0 0 0, or clear the reference")
        request = GridRequest(like_path=str(like))
    return dict(
        method=method,
        renderer=renderer,
        iterations=int(finite(form.get("iterations") or 0, "iterations", 0, 100000)) or None,
        uncertainty=bool(form.get("uncertainty")),
        grid_request=request,
        refine_geometry=bool(form.get("refine_geometry")),
    )


def reference_grid_path(form: dict, resolve: Optional[Callable[[str], Path]]) -> Optional[Path]:
    """The reference image of the form's ``like`` field (a path in the data folder, through ``resolve``: outside
    paths, ``..`` and links out are refused) whose grid the output takes, checked from its header by the engine's
    ``grid_like`` (missing, unreadable or 2-D: ValueError) before any work; None when the field is empty."""
    text = str(form.get("like") or "").strip()
    if not text:
        return None
    if resolve is None:
        raise ValueError("a reference image needs the data folder to find it in")
    from XRayNeRFLib.recon.grid import grid_like

    path = resolve(text)
    grid_like(str(path))
    return path


def finite(value: float, name: str, low: float = -math.inf, high: float = math.inf) -> float:
    v = float(value)
    if not math.isfinite(v) or not low <= v <= high:
        raise ValueError(f"{name} must be a number between {low:g} and {high:g}, got {value}")
    return v


def listing(data: DataDir) -> List[str]:
    return data.listing()
