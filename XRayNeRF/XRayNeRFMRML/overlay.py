"""Slice-view overlay of a DRR on an X-ray, in a slice view aligned to the detector plane.

The slice view looks at the detector from the source side (beam's eye view, as the images are stored):
screen right = camera +x (increasing column), screen up = camera -y (row 0 at the top), the slice normal
= camera -z (towards the source), the slice centre = the detector's centre. The X-ray is the background
layer, the DRR the foreground layer (a colour lookup table, opacity ``opacity``), and the DRR's zero pixels
(rays that missed the CT) are transparent through the display node's threshold, so the X-ray shows there.
"""

from __future__ import annotations

import numpy as np
import slicer

DRR_COLOR_NODE_ID = "vtkMRMLColorTableNodeGreen"
ZERO_THRESHOLD = 1e-6  # line integrals below this (no CT on the ray) are not drawn


def slice_to_ras_for_detector(cameras, view: int = 0) -> np.ndarray:
    """(4, 4) float64 SliceToRAS: columns screen-right, screen-up, normal (unit, RAS), then the detector centre."""
    w = cameras.world_from_camera[view].detach().double().cpu().numpy()
    x, y, z = w[:3, 0], w[:3, 1], w[:3, 2]
    centre = cameras[view : view + 1].detector_centers()[0].detach().double().cpu().numpy()
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, -y, -z, centre
    return m


def align_slice_to_detector(slice_node, cameras, view: int = 0, fit: bool = True) -> None:
    """Turn a slice view to the detector plane; with ``fit`` its field of view is the detector's extent
    (the view's dimensions keep their aspect: Slicer widens one side when they differ)."""
    m = slice_to_ras_for_detector(cameras, view)
    slicer.util.updateVTKMatrixFromArray(slice_node.GetSliceToRAS(), m)
    if fit:
        su, sv = cameras.pixel_spacing_mm[view].detach().double().tolist()
        slice_node.SetFieldOfView(cameras.width * su, cameras.height * sv, 1.0)
    # Slicer maps view pixel x to slice coordinate x * fov / dims - fov / 2 + origin: shift by half a view
    # pixel so that view pixel centres sit symmetrically about the detector centre (with a view of the
    # detector's size, exactly on the detector's pixel centres).
    fov, dims = slice_node.GetFieldOfView(), slice_node.GetDimensions()
    slice_node.SetXYZOrigin(0.5 * fov[0] / dims[0], 0.5 * fov[1] / dims[1], 0.0)
    slice_node.UpdateMatrices()


def style_drr_foreground(drr_node, color_node_id: str = DRR_COLOR_NODE_ID) -> None:
    """DRR display: colour LUT, zero pixels transparent (threshold), no interpolation."""
    if drr_node.GetDisplayNode() is None:
        drr_node.CreateDefaultDisplayNodes()
    d = drr_node.GetDisplayNode()
    d.SetAndObserveColorNodeID(color_node_id)
    d.SetApplyThreshold(1)
    d.SetThreshold(ZERO_THRESHOLD, 1e30)
    d.SetInterpolate(0)


def show_overlay(slice_logic, xray_node, drr_node, cameras, opacity: float = 0.5, view: int = 0):
    """Background = X-ray, foreground = DRR at ``opacity``, slice aligned to the detector.
    Returns the slice composite node."""
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"overlay opacity must be in [0, 1], got {opacity}")
    style_drr_foreground(drr_node)
    if xray_node.GetDisplayNode() is None:
        xray_node.CreateDefaultDisplayNodes()
    composite = slice_logic.GetSliceCompositeNode()
    composite.SetBackgroundVolumeID(xray_node.GetID())
    composite.SetForegroundVolumeID(drr_node.GetID())
    composite.SetForegroundOpacity(float(opacity))
    align_slice_to_detector(slice_logic.GetSliceNode(), cameras, view)
    return composite


# -- the user's view, saved before the overlay and restored after a failure or a revert ----------------
_COMPOSITE_FIELDS = (
    ("BackgroundVolumeID", str),
    ("ForegroundVolumeID", str),
    ("LabelVolumeID", str),
    ("ForegroundOpacity", float),
    ("LabelOpacity", float),
)


def save_slice_view(slice_logic) -> dict:
    """The slice view's state that :func:`show_overlay` changes: composite layers and opacities, the
    slice node's orientation preset, SliceToRAS (4, 4), field of view and XYZ origin (mm)."""
    composite, node = slice_logic.GetSliceCompositeNode(), slice_logic.GetSliceNode()
    state = {name: getattr(composite, "Get" + name)() for name, _kind in _COMPOSITE_FIELDS}
    state["SliceToRAS"] = slicer.util.arrayFromVTKMatrix(node.GetSliceToRAS())
    state["Orientation"] = node.GetOrientationString()
    state["FieldOfView"] = tuple(node.GetFieldOfView())
    state["XYZOrigin"] = tuple(node.GetXYZOrigin())
    return state


def restore_slice_view(slice_logic, state: dict) -> None:
    """Put back what :func:`save_slice_view` saved (layers whose node was deleted since become empty)."""
    composite, node = slice_logic.GetSliceCompositeNode(), slice_logic.GetSliceNode()
    scene = slice_logic.GetMRMLScene()
    wasModifying = composite.StartModify()
    for name, _kind in _COMPOSITE_FIELDS:
        value = state[name]
        if name.endswith("VolumeID") and value and scene is not None and scene.GetNodeByID(value) is None:
            value = None
        getattr(composite, "Set" + name)(value)
    composite.EndModify(wasModifying)
    wasModifying = node.StartModify()
    slicer.util.updateVTKMatrixFromArray(node.GetSliceToRAS(), state["SliceToRAS"])
    node.SetFieldOfView(*state["FieldOfView"])
    node.SetXYZOrigin(*state["XYZOrigin"])
    node.UpdateMatrices()
    node.EndModify(wasModifying)


# -- every slice view's background, for a run that shows its output while it runs (Reconstruction) ------
def save_slice_backgrounds(app_logic, scene) -> tuple:
    """(active volume ID of the application's selection node, [(slice composite node, background volume
    ID)] of every slice view in ``scene``) as they are now. app_logic: the vtkMRMLApplicationLogic (or None)."""
    selection = app_logic.GetSelectionNode() if app_logic is not None else None
    composites = [
        scene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode") for i in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode"))
    ]
    return (selection.GetActiveVolumeID() if selection else None, [(c, c.GetBackgroundVolumeID()) for c in composites])


def restore_slice_backgrounds(app_logic, state: tuple) -> None:
    """Put back what :func:`save_slice_backgrounds` saved (composite nodes since removed are skipped)."""
    active, composites = state
    selection = app_logic.GetSelectionNode() if app_logic is not None else None
    if selection is not None:
        selection.SetActiveVolumeID(active)
    for composite, background in composites:
        if composite.GetScene() is not None:
            composite.SetBackgroundVolumeID(background)


def show_volume(app_logic, volume_node) -> None:
    """Make ``volume_node`` the background of every slice view (the application's volume selection)."""
    selection = app_logic.GetSelectionNode() if app_logic is not None else None
    if selection is None:
        return
    selection.SetActiveVolumeID(volume_node.GetID())
    app_logic.PropagateVolumeSelection(0)
