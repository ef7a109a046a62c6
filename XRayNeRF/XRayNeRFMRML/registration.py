"""MRML <-> engine for the Registration module: a CT volume node registered to one X-ray node by moving
the CT's linear transform node, with a live DRR overlay.

Nodes
-----
* the **X-ray**: a 1-slice scalar volume on its detector with its camera (attribute ``XRayNeRF.Cameras``:
  ``nodes.write_image_node``, ``inputs.xray_node_from_dicom``, the DRR module);
* the **CT** (HU) is put under the **transform node**, whose matrix "to parent" is the pose being registered;
* the **DRR** node: the CT's DRR at the X-ray's camera (line integrals, on the same detector), shown over
  the X-ray by :class:`OverlayView` in a slice view turned to the detector plane (``overlay.show_overlay``);
* the **C-arm model**: the X-ray's camera as lines in 3D (``nodes.update_camera_model``).

Frames
------
The engine moves the camera, not the CT: from the initial camera ``w0`` (world_from_camera, RAS mm) to
``w``. Seen from ``w0``, the CT moved by ``C = w0 @ inv(w)`` (world RAS) looks as the unmoved CT does from
``w``. With the transform node's parent-to-world ``P`` and its matrix before the run ``B``, the node gets
``inv(P) @ C @ P @ B`` (:func:`ct_to_parent`), so that the CT's world pose becomes ``C @ P @ B``.

The CT is read from MRML once per run (:func:`register_ct_to_xray`): the overlay's previews are the
engine's, and the final DRR renders that volume from ``w`` (the same picture as the moved CT from ``w0``).
Never imports qt or ctk; torch and XRayNeRFLib are imported when called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

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


# -- the run ------------------------------------------------------------------------------------------
@dataclass
class RegistrationOutput:
    """What :func:`register_ct_to_xray` did: the engine's ``RegistrationResult`` (``result``), the nodes
    (transform, DRR, C-arm model), the transform's matrix to parent before the run (``transform_before``,
    (4, 4), for :func:`restore_transform`) and the number of overlay updates during the run."""

    result: Any
    transform_node: Any
    drr_node: Any
    camera_model_node: Any
    transform_before: np.ndarray
    overlay_updates: int = 0

    @property
    def cancelled(self) -> bool:
        return bool(self.result.cancelled)

    @property
    def loss(self) -> float:
        return float(self.result.loss)

    @property
    def initial_loss(self) -> float:
        return float(self.result.initial_loss)


def restore_transform(output: RegistrationOutput) -> None:
    """Put the transform node back as it was before the run."""
    output.transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(output.transform_before))


def register_ct_to_xray(
    ct_node,
    xray_node,
    transform_node,
    *,
    drr_node=None,
    camera_model_node=None,
    slice_logic=None,
    overlay: Optional[OverlayView] = None,
    opacity: float = 0.5,
    preview_every: int = 5,
    progress: Optional[Callable] = None,
    on_preview: Optional[Callable[[], None]] = None,
    call_engine: Optional[Callable] = None,
    **engine_options,
) -> RegistrationOutput:
    """Register the CT to the X-ray by moving ``transform_node`` (the CT is put under it).

    engine_options: keywords of ``XRayNeRFLib.registration.register`` (loss, levels, max_iterations,
    learning_rate, renderer, ...). drr_node / camera_model_node: nodes to reuse; created beside the CT when
    None. slice_logic: the slice view of the overlay (none: no overlay), managed by ``overlay`` (a new
    :class:`OverlayView` when None). Every ``preview_every`` iterations the transform and the DRR (the
    engine's preview, at the pyramid level's resolution) are updated and ``on_preview()`` is called (e.g.
    to let the GUI redraw). progress: ``Callable[[XRayNeRFLib.Progress], bool]``; False stops with the best
    pose so far (``output.cancelled``). call_engine: how the optimiser and the DRRs are run (engine_call.py;
    None: directly).
    On an error the transform, the CT's parent and the slice view are restored and the nodes created here
    removed; a CT that does not project onto the X-ray raises ValueError saying to move its transform."""
    import torch

    from XRayNeRFLib.errors import NoOverlapError
    from XRayNeRFLib.registration import register
    from XRayNeRFLib.volume import as_mu

    call = call_engine or direct
    if ct_node is None or xray_node is None or transform_node is None:
        raise ValueError("select the CT, the X-ray and the CT's transform")
    cameras = cameras_from_node(xray_node)
    image = xray_image(xray_node)
    overlay = overlay if overlay is not None else OverlayView()
    scene = scene_of(ct_node)
    before = transform_to_parent(transform_node)
    previous_parent = ct_node.GetTransformNodeID()
    w0 = cameras.world_from_camera[0].double()
    created = []
    updates = [0]
    try:
        ct_node.SetAndObserveTransformNodeID(transform_node.GetID())
        volume = volume_from_node(ct_node)  # world, initial pose included: the one read of the CT
        parent_to_world = world_from_node(transform_node)
        mu = as_mu(volume)
        if drr_node is None:
            drr_node = write_drr(None, call(render_image, mu, cameras), cameras, name=f"{ct_node.GetName()} DRR", scene=scene)
            created.append(drr_node)
        if slice_logic is not None:
            overlay.show(slice_logic, xray_node, drr_node, opacity)
        if camera_model_node is None:  # the X-ray's C-arm in 3D, from the start of the run
            camera_model_node = new_node(scene, "vtkMRMLModelNode", f"{xray_node.GetName()} C-arm")
            created.append(camera_model_node)
        update_camera_model(camera_model_node, cameras)

        def move_ct(world_from_camera) -> None:
            matrix = ct_to_parent(torch.as_tensor(world_from_camera).double().numpy(), w0.numpy(), parent_to_world, before)
            transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))

        def on_progress(p) -> bool:
            keep_going = progress(p) if progress is not None else True
            preview = p.preview or {}
            if preview.get("drr") is not None:
                move_ct(preview["world_from_camera"])
                level = int(preview.get("level", 1))
                write_drr(drr_node, preview["drr"], cameras.downsampled(level))
                updates[0] += 1
                if on_preview is not None:
                    on_preview()
            return bool(keep_going)

        result = call(register, volume, image, cameras, progress=on_progress, progress_every=int(preview_every), **engine_options)
        move_ct(result.world_from_camera)
        write_drr(drr_node, call(render_image, mu, cameras, result.world_from_camera), cameras)
    except Exception as error:
        transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(before))
        ct_node.SetAndObserveTransformNodeID(previous_parent)
        overlay.restore()  # before removing the DRR node it shows
        for node in created:
            remove_node(node)
        if isinstance(error, NoOverlapError) and not error.behind_source:
            raise ValueError(
                "The CT does not project onto the X-ray at the initial pose: move the CT's transform "
                "(Transforms module) so that the anatomy roughly overlays the X-ray, then retry. "
                f"Details: {error}"
            ) from error
        raise
    return RegistrationOutput(result, transform_node, drr_node, camera_model_node, before, updates[0])
