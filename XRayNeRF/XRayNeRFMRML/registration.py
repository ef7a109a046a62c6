"""MRML <-> engine for the Registration module: a CT volume node registered to one X-ray node, or to several
at once (a biplane pair, frames of a run), by moving the CT's linear transform node, with a live DRR overlay.

Nodes
-----
* the **X-ray**: a 1-slice scalar volume on its detector with its camera (attribute ``XRayNeRF.Cameras``:
  ``nodes.write_image_node``, ``inputs.xray_node_from_dicom``, the DRR module);
* the **CT** (HU) is put under the **transform node**, whose matrix "to parent" is the pose being registered;
* the **DRR** node: the CT's DRR at the X-ray's camera (line integrals, on the same detector), shown over
  the X-ray by :class:`OverlayView` in a slice view turned to the detector plane (``overlay.show_overlay``);
* the **C-arm model**: the X-ray's camera as lines in 3D (``nodes.update_camera_model``).

With several X-rays (:func:`register_ct_to_xrays`) each has its DRR node, C-arm model and, when given, its slice
view; the engine registers them together (one rigid motion of the patient, the summed loss: docs/registration.md,
"Several X-rays at once").

Frames
------
The engine moves the camera, not the CT: from the initial camera ``w0`` (world_from_camera, RAS mm) to
``w``. Seen from ``w0``, the CT moved by ``C = w0 @ inv(w)`` (world RAS) looks as the unmoved CT does from
``w``. With the transform node's parent-to-world ``P`` and its matrix before the run ``B``, the node gets
``inv(P) @ C @ P @ B`` (:func:`ct_to_parent`), so that the CT's world pose becomes ``C @ P @ B``.
With several X-rays the engine moves every view's camera by one motion ``M``: ``w_v = M @ w0_v``, so that
``C_v = w0_v @ inv(w_v) = inv(M)`` is the same for every view, and the first view's ``C`` is the CT's motion for all.

The CT is read from MRML once per run (:func:`register_ct_to_xrays`): the overlay's previews are the
engine's, and the final DRR renders that volume from ``w`` (the same picture as the moved CT from ``w0``).
Never imports qt or ctk; torch and XRayNeRFLib are imported when called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, List, Optional

import numpy as np
import slicer

from .engine_call import direct
from .nodes import (
    cameras_from_node,
    new_node,
    remove_node,
    scene_of,
    update_camera_model,
    volume_from_node,
    world_from_node,
    write_image_node,
)


# -- pieces ---------------------------------------------------------------------------------------------
def xray_image(xray_node):
    """The X-ray node's image as a (H, W) float32 tensor (image[row, column], as stored)."""
    import torch

    return torch.from_numpy(np.array(slicer.util.arrayFromVolume(xray_node)[0], dtype=np.float32))


def transform_to_parent(transform_node) -> np.ndarray:
    """(4, 4) float64: the linear transform node's matrix to its parent."""
    return slicer.util.arrayFromTransformMatrix(transform_node)


def ct_to_parent(world_from_camera, world_from_camera_init, parent_to_world: np.ndarray, before: np.ndarray) -> np.ndarray:
    """(4, 4) float64: the transform node's new matrix to parent for the registered camera (module docstring):
    ``inv(P) @ C @ P @ B`` with ``C = w0 @ inv(w)`` (``XRayNeRFLib.registration.pose.ct_correction_from_poses``).
    world_from_camera (w) / world_from_camera_init (w0): (4, 4) RAS mm (tensors or arrays); parent_to_world
    (P), before (B): (4, 4)."""
    from XRayNeRFLib.registration.pose import ct_correction_from_poses

    correction = ct_correction_from_poses(world_from_camera, world_from_camera_init).numpy()
    return np.linalg.inv(parent_to_world) @ correction @ parent_to_world @ before


def render_image(volume, cameras, world_from_camera=None, renderer: Optional[str] = None):
    """The DRR (H, W) float32 tensor of ``volume`` (mu) seen by ``cameras`` (1 view), or by a camera with the
    same intrinsics at ``world_from_camera`` (4, 4) RAS mm when given. renderer: None for the engine's
    ``DEFAULT_RENDERER`` (the overlay's projector, as the command line's)."""
    import torch

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.render import DEFAULT_RENDERER, render

    if world_from_camera is not None:
        w = torch.as_tensor(world_from_camera, dtype=cameras.world_from_camera.dtype).reshape(1, 4, 4)
        cameras = Cameras(w, cameras.sdd_mm, cameras.pixel_spacing_mm, cameras.principal_point_px, cameras.size_px)
    with torch.no_grad():
        return render(volume, cameras.to(dtype=torch.float32), renderer=renderer or DEFAULT_RENDERER)[0]


def write_drr(drr_node, image, cameras, *, name: str = "DRR", scene=None):
    """Write ``image`` (h, w) seen by ``cameras`` into ``drr_node``, created in ``scene`` (default
    ``slicer.mrmlScene``) as ``name`` when None (and removed again if writing fails). Returns the node."""
    import torch

    created = drr_node is None
    if created:
        drr_node = new_node(scene if scene is not None else slicer.mrmlScene, "vtkMRMLScalarVolumeNode", name)
    try:
        write_image_node(drr_node, np.asarray(torch.as_tensor(image).detach().double().cpu()), cameras)
    except Exception:
        if created:
            remove_node(drr_node)
        raise
    return drr_node


def update_drr(ct_node, xray_node, drr_node=None, *, renderer: Optional[str] = None):
    """The DRR of the CT (with its current transforms) at the X-ray's camera, written into ``drr_node``
    (created beside the CT, named after it, when None); renderer as :func:`render_image`. Returns the node."""
    from XRayNeRFLib.volume import as_mu

    cameras = cameras_from_node(xray_node)
    image = render_image(as_mu(volume_from_node(ct_node)), cameras, renderer=renderer)
    return write_drr(drr_node, image, cameras, name=f"{ct_node.GetName()} DRR", scene=scene_of(ct_node))


class OverlayView:
    """The DRR-over-X-ray overlay in one slice view, and that view's state from before it.

    :meth:`show` saves the view the first time (layers, opacity, orientation, field of view) and shows the
    overlay (``overlay.show_overlay``); :meth:`restore` puts the saved view back; :meth:`forget` keeps the
    overlay on screen and drops the saved state."""

    def __init__(self) -> None:
        self._saved = None  # (slice logic, overlay.save_slice_view state)

    @property
    def slice_logic(self):
        return None if self._saved is None else self._saved[0]

    def show(self, slice_logic, xray_node, drr_node, opacity: float = 0.5):
        """X-ray background, DRR foreground at ``opacity`` (zeros transparent), the slice on the X-ray's
        detector plane. Returns the slice composite node."""
        from .overlay import save_slice_view, show_overlay

        if self._saved is None or self._saved[0] is not slice_logic:
            if self._saved is not None:
                self.restore()
            self._saved = (slice_logic, save_slice_view(slice_logic))
        return show_overlay(slice_logic, xray_node, drr_node, cameras_from_node(xray_node), opacity)

    def restore(self) -> bool:
        """Give the slice view back its state from before the overlay; False when none was saved."""
        from .overlay import restore_slice_view

        if self._saved is None:
            return False
        slice_logic, state = self._saved
        self._saved = None
        restore_slice_view(slice_logic, state)
        return True

    def forget(self) -> None:
        self._saved = None


# -- the set of X-rays ------------------------------------------------------------------------------------
def xray_set_cameras(xray_nodes) -> list:
    """The 1-view Cameras (float64, world RAS, the initial pose) of each X-ray node of a set registered together,
    after the set's checks: no node twice, each with usable camera geometry. Raises the engine's
    ``XRayViewError`` naming the node (reason "duplicate" or "no-camera"); reads nothing else, changes nothing."""
    from XRayNeRFLib.errors import XRayViewError

    nodes = list(xray_nodes)
    if not nodes or any(node is None for node in nodes):
        raise ValueError("select the X-ray (and, for biplane, the second X-ray)")
    cameras = []
    for v, node in enumerate(nodes):
        name = node.GetName()
        if any(node is seen for seen in nodes[:v]):
            raise XRayViewError(
                f"X-ray '{name}' is in the set twice: register to two different X-rays (e.g. the biplane partner)",
                name=name,
                view=v,
                reason="duplicate",
            )
        try:
            cameras.append(cameras_from_node(node))
        except ValueError as error:  # no camera attribute, or one that does not parse
            raise XRayViewError(f"X-ray '{name}' cannot be registered: {error}", name=name, view=v, reason="no-camera") from error
    return cameras


def _no_overlap(error, name: str, view: int):
    """The engine's ``NoOverlapError`` for X-ray ``name`` as an ``XRayViewError`` that says what to do."""
    from XRayNeRFLib.errors import XRayViewError

    return XRayViewError(
        f"The CT does not project onto X-ray '{name}' at the initial pose: move the CT's transform (Transforms module, "
        f"or the nudge buttons) so that the anatomy roughly overlays it, then retry. Details: {error}",
        name=name,
        view=view,
        reason="behind-source" if error.behind_source else "no-overlap",
    )


def check_xrays_see_ct(volume, xray_nodes, cameras) -> None:
    """The engine's overlap rule (the CT's projected box meets the image, the CT in front of the source) for each
    X-ray node at its camera; raises ``XRayViewError`` naming the first X-ray that does not see the CT.
    volume: the CT (world RAS, as the run reads it); cameras: :func:`xray_set_cameras`'s."""
    import torch

    from XRayNeRFLib.errors import NoOverlapError
    from XRayNeRFLib.registration.optimize import check_overlap

    for v, (node, cams) in enumerate(zip(xray_nodes, cameras)):
        try:
            check_overlap(volume, cams, torch.ones(cams.height, cams.width, dtype=torch.bool), f"X-ray '{node.GetName()}'")
        except NoOverlapError as error:
            raise _no_overlap(error, node.GetName(), v) from error


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class RegistrationOutput:
    """What :func:`register_ct_to_xrays` did: the engine's ``RegistrationResult`` (``result``), the nodes
    (transform; DRR and C-arm model of the first X-ray), the transform's matrix to parent before the run
    (``transform_before``, (4, 4), for :func:`restore_transform`) and the number of overlay updates during the
    run. Per X-ray, in the order given: ``xray_nodes``, ``drr_nodes``, ``camera_model_nodes`` and
    :attr:`view_losses` (one entry each for one X-ray)."""

    result: Any
    transform_node: Any
    drr_node: Any
    camera_model_node: Any
    transform_before: np.ndarray
    overlay_updates: int = 0
    xray_nodes: List[Any] = field(default_factory=list)
    drr_nodes: List[Any] = field(default_factory=list)
    camera_model_nodes: List[Any] = field(default_factory=list)

    @property
    def cancelled(self) -> bool:
        return bool(self.result.cancelled)

    @property
    def loss(self) -> float:
        return float(self.result.loss)

    @property
    def initial_loss(self) -> float:
        return float(self.result.initial_loss)

    @property
    def view_losses(self) -> List[float]:
        """Each X-ray's loss at the registered pose (their sum is :attr:`loss`)."""
        return [float(v) for v in self.result.view_losses]


def restore_transform(output: RegistrationOutput) -> None:
    """Put the transform node back as it was before the run."""
    output.transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(output.transform_before))


@dataclass
class _View:
    """One X-ray of a run and its nodes: the X-ray, its initial 1-view camera, the DRR node and C-arm model (None:
    created by the run), the slice view of its overlay (None: none) and the OverlayView that manages it."""

    xray_node: Any
    cameras: Any
    drr_node: Any
    camera_model_node: Any
    slice_logic: Any
    overlay: OverlayView


def _per_view(values, n: int, what: str) -> list:
    """``values`` (a sequence, or None for all None) as a list of ``n`` entries (missing trailing ones None)."""
    out = list(values) if values is not None else []
    if len(out) > n:
        raise ValueError(f"{len(out)} {what} for {n} X-ray(s): give at most one per X-ray")
    return out + [None] * (n - len(out))


def _views(xray_nodes, cameras, drr_nodes, camera_model_nodes, slice_logics, overlays) -> List[_View]:
    n = len(xray_nodes)
    logics = _per_view(slice_logics, n, "slice views")
    shown = [logic for logic in logics if logic is not None]
    if any(a is b for i, a in enumerate(shown) for b in shown[:i]):
        raise ValueError("each X-ray's overlay needs its own slice view (e.g. Red and Yellow)")
    return [
        _View(x, c, d, m, s, o if o is not None else OverlayView())
        for x, c, d, m, s, o in zip(
            xray_nodes,
            cameras,
            _per_view(drr_nodes, n, "DRR nodes"),
            _per_view(camera_model_nodes, n, "C-arm models"),
            logics,
            _per_view(overlays, n, "overlays"),
        )
    ]


def _show_view(ct_node, view: _View, index: int, mu, call, created: list, opacity: float) -> None:
    """Create the view's DRR node (the initial DRR; the first X-ray's named "<CT> DRR", the others "<CT> DRR
    (<X-ray>)") and C-arm model when missing, show its overlay, draw its camera (from the start of the run)."""
    scene = scene_of(ct_node)
    if view.drr_node is None:
        name = f"{ct_node.GetName()} DRR" if index == 0 else f"{ct_node.GetName()} DRR ({view.xray_node.GetName()})"
        view.drr_node = write_drr(None, call(render_image, mu, view.cameras), view.cameras, name=name, scene=scene)
        created.append(view.drr_node)
    if view.slice_logic is not None:
        view.overlay.show(view.slice_logic, view.xray_node, view.drr_node, opacity)
    if view.camera_model_node is None:
        view.camera_model_node = new_node(scene, "vtkMRMLModelNode", f"{view.xray_node.GetName()} C-arm")
        created.append(view.camera_model_node)
    update_camera_model(view.camera_model_node, view.cameras)


def register_ct_to_xrays(
    ct_node,
    xray_nodes,
    transform_node,
    *,
    drr_nodes=None,
    camera_model_nodes=None,
    slice_logics=None,
    overlays=None,
    opacity: float = 0.5,
    preview_every: int = 5,
    progress: Optional[Callable] = None,
    on_preview: Optional[Callable[[], None]] = None,
    call_engine: Optional[Callable] = None,
    **engine_options,
) -> RegistrationOutput:
    """Register the CT to the X-ray nodes ``xray_nodes`` (one, or several of one patient position: a biplane
    pair) together by moving ``transform_node`` (the CT is put under it): one pose, the summed loss.

    engine_options: keywords of ``XRayNeRFLib.registration.register`` (loss, levels, max_iterations,
    learning_rate, renderer, settings, ...). Per X-ray, in order (shorter sequences or None: None for the rest):
    drr_nodes / camera_model_nodes, nodes to reuse (created beside the CT when None); slice_logics, the slice view
    of its overlay (None: no overlay; each view its own), managed by ``overlays`` (a new :class:`OverlayView` when
    None). Every ``preview_every`` iterations the transform and every DRR (the engine's preview, at the pyramid
    level's resolution) are updated and ``on_preview()`` is called (e.g. to let the GUI redraw). progress:
    ``Callable[[XRayNeRFLib.Progress], bool]``; False stops with the best pose so far (``output.cancelled``).
    call_engine: how the optimiser and the DRRs are run (engine_call.py; None: directly).
    Bad input raises before anything changes: an X-ray twice or without camera, ``XRayViewError`` naming it.
    On an error the transform, the CT's parent and every slice view are restored and the nodes created here
    removed; a CT that does not project onto an X-ray raises ``XRayViewError`` naming it, saying to move the
    CT's transform."""
    from XRayNeRFLib.errors import NoOverlapError
    from XRayNeRFLib.registration import register
    from XRayNeRFLib.volume import as_mu

    call = call_engine or direct
    if ct_node is None or transform_node is None:
        raise ValueError("select the CT, the X-ray and the CT's transform")
    xray_nodes = list(xray_nodes)
    cameras = xray_set_cameras(xray_nodes)
    views = _views(xray_nodes, cameras, drr_nodes, camera_model_nodes, slice_logics, overlays)
    images = [xray_image(node) for node in xray_nodes]
    before = transform_to_parent(transform_node)
    previous_parent = ct_node.GetTransformNodeID()
    created = []
    try:
        ct_node.SetAndObserveTransformNodeID(transform_node.GetID())
        volume = volume_from_node(ct_node)  # world, initial pose included: the one read of the CT
        mu = as_mu(volume)
        check_xrays_see_ct(mu, xray_nodes, cameras)
        for index, view in enumerate(views):
            _show_view(ct_node, view, index, mu, call, created, opacity)
        move_ct = _ct_mover(transform_node, cameras[0], before)
        on_progress, updates = _previewer(views, move_ct, progress, on_preview)
        result = call(register, volume, images, cameras, progress=on_progress, progress_every=int(preview_every), **engine_options)
        move_ct(result.world_from_camera)
        for view, registered in zip(views, result.view_cameras):
            write_drr(view.drr_node, call(render_image, mu, view.cameras, registered.world_from_camera[0]), view.cameras)
    except Exception as error:
        transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(before))
        ct_node.SetAndObserveTransformNodeID(previous_parent)
        for view in views:
            view.overlay.restore()  # before removing the DRR node it shows
        for node in created:
            remove_node(node)
        if isinstance(error, NoOverlapError) and len(views) == 1:  # (the engine's flat-DRR check, after ours)
            raise _no_overlap(error, xray_nodes[0].GetName(), 0) from error
        raise
    return RegistrationOutput(
        result,
        transform_node,
        views[0].drr_node,
        views[0].camera_model_node,
        before,
        updates[0],
        xray_nodes=xray_nodes,
        drr_nodes=[view.drr_node for view in views],
        camera_model_nodes=[view.camera_model_node for view in views],
    )


def _ct_mover(transform_node, cameras, before: np.ndarray) -> Callable:
    """move_ct(world_from_camera): set the transform node for the first X-ray's registered camera (4, 4) RAS mm
    (:func:`ct_to_parent`, from its initial camera ``cameras`` and the matrix ``before``). Right for every X-ray of
    the run: the engine moves each view's camera by one motion (module docstring, Frames)."""
    import torch

    w0 = cameras.world_from_camera[0].double().numpy()
    parent_to_world = world_from_node(transform_node)

    def move_ct(world_from_camera) -> None:
        matrix = ct_to_parent(torch.as_tensor(world_from_camera).double().numpy(), w0, parent_to_world, before)
        transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))

    return move_ct


def _previewer(views: List[_View], move_ct: Callable, progress, on_preview) -> tuple:
    """(the engine's progress callback, [number of overlay updates]): on a preview it moves the CT and writes
    every view's DRR (``preview["drrs"]``, at the level's binning), then calls ``on_preview()``."""
    updates = [0]

    def on_progress(p) -> bool:
        keep_going = progress(p) if progress is not None else True
        preview = p.preview or {}
        if preview.get("drrs") is not None:
            move_ct(preview["world_from_camera"])
            level = int(preview.get("level", 1))
            for view, drr in zip(views, preview["drrs"]):
                write_drr(view.drr_node, drr, view.cameras.downsampled(level))
            updates[0] += 1
            if on_preview is not None:
                on_preview()
        return bool(keep_going)

    return on_progress, updates


def register_ct_to_xray(
    ct_node,
    xray_node,
    transform_node,
    *,
    drr_node=None,
    camera_model_node=None,
    slice_logic=None,
    overlay: Optional[OverlayView] = None,
    **options,
) -> RegistrationOutput:
    """Register the CT to one X-ray: :func:`register_ct_to_xrays` with one X-ray, its DRR node and C-arm model to
    reuse (None: created beside the CT), the slice view of its overlay (None: no overlay) and its OverlayView.
    options: :func:`register_ct_to_xrays`'s (opacity, preview_every, progress, ..., the engine's keywords)."""
    if xray_node is None:
        raise ValueError("select the CT, the X-ray and the CT's transform")
    return register_ct_to_xrays(
        ct_node,
        [xray_node],
        transform_node,
        drr_nodes=[drr_node],
        camera_model_nodes=[camera_model_node],
        slice_logics=[slice_logic],
        overlays=[overlay],
        **options,
    )
