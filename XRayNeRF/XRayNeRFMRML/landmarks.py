"""Landmark start from markups: two fiducial nodes (points on the CT, the same points on the X-ray) -> the
engine's PnP solve (``XRayNeRFLib.registration.landmarks``) -> the CT's transform moved to the start pose.

Points
------
* **CT points**: control points of a markups fiducial node placed on the CT, read in world RAS mm
  (``GetNthControlPointPositionWorld``) at the CT's current pose. Put that markups node under the CT's
  transform so that the points follow the CT when it moves (then a second solve starts from the moved CT).
* **X-ray points**: control points placed on the X-ray in its slice view (the view turned to the detector
  plane by the overlay). Each world point is mapped through the X-ray node's RAS-to-IJK (parent transforms
  included) to ``(i, j, k)``; ``(i, j)`` = (column, row) are the engine's 0-based pixel-centre coordinates
  (nodes.py: voxel (i, j, 0) is the centre of detector pixel (column i, row j)), and ``|k|`` must be at most
  ``ON_DETECTOR_K`` (the 1-slice node's half thickness): a point off the detector plane is refused.
* Pair n is the n-th control point of each node (labels from the CT node).

The pose
--------
The solve gives ``w_L`` (world_from_camera, RAS mm) under which the CT points project onto their pixels. The
camera stays at the X-ray's pose ``w0``; the CT moves instead by ``C = w0 @ inv(w_L)``
(``pose.ct_correction_from_poses``): the transform node's matrix to parent becomes ``inv(P) @ C @ W`` with
``P`` the node's parent-to-world and ``W`` the CT's world-from-node now, and the CT is put under the node.

Bad input (fewer than 4 pairs, unequal counts, collinear points, a pixel outside the image or a point off
the detector plane) raises the engine's :class:`~XRayNeRFLib.errors.LandmarkError` (``reason``, ``index``,
``label``) before anything in the scene changes.

Showing the bad pair
--------------------
When the error names a pair (``LandmarkError.index``), :func:`highlight_bad_landmark` makes that control point
the only *selected* one in each point list (markups draw selected points in the display node's selected colour,
the others in its colour), so the user sees which one to move; the other points, the positions, labels and
every other node stay as they were. :meth:`LandmarkHighlight.clear` puts the selection states back (the Logic
does it before the next landmark start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import numpy as np
import slicer

from .nodes import cameras_from_node, ras_from_ijk_world, world_from_node

ON_DETECTOR_K = 0.5  # |k| (slices) within which an X-ray point counts as on the detector plane


def markup_points_world(markups_node) -> Tuple[np.ndarray, List[str]]:
    """(N, 3) float64 world RAS mm of the node's control points, and their labels."""
    if markups_node is None:
        raise ValueError("select the markups point lists of the landmarks (CT points and X-ray points)")
    n = markups_node.GetNumberOfControlPoints()
    points = np.zeros((n, 3))
    for i in range(n):
        markups_node.GetNthControlPointPositionWorld(i, points[i])
    return points, [markups_node.GetNthControlPointLabel(i) or str(i + 1) for i in range(n)]


def xray_pixels(xray_node, points_ras: np.ndarray, labels: List[str]) -> np.ndarray:
    """(N, 2) float64 [column, row] of world points (N, 3) RAS mm on the X-ray node's detector; raises
    LandmarkError(reason="outside-image") for a point off the detector plane (|k| > ON_DETECTOR_K)."""
    from XRayNeRFLib.errors import LandmarkError

    ijk = (np.linalg.inv(ras_from_ijk_world(xray_node)) @ np.c_[points_ras, np.ones(len(points_ras))].T).T[:, :3]
    off = np.nonzero(np.abs(ijk[:, 2]) > ON_DETECTOR_K)[0]
    if off.size:
        i = int(off[0])
        raise LandmarkError(
            f"X-ray landmark {i} ({labels[i]}) lies {abs(ijk[i, 2]):.1f} mm off the X-ray's detector plane: place the X-ray "
            "points on the X-ray in its slice view (Show overlay turns the view to the detector)",
            reason="outside-image",
            index=i,
            label=labels[i],
        )
    return ijk[:, :2]


def landmark_pairs(ct_points_node, xray_points_node, xray_node):
    """The engine's ``LandmarkPairs`` from the two markups nodes (module docstring); LandmarkError on bad input."""
    from XRayNeRFLib.errors import LandmarkError
    from XRayNeRFLib.registration.landmarks import LandmarkPairs

    points, labels = markup_points_world(ct_points_node)
    marked, xray_labels = markup_points_world(xray_points_node)
    if len(points) != len(marked):
        raise LandmarkError(
            f"{len(points)} CT points but {len(marked)} X-ray points: every landmark needs both, in the same order",
            reason="shape",
        )
    pixels = xray_pixels(xray_node, marked, labels)
    return LandmarkPairs(points, pixels, labels)


@dataclass
class LandmarkHighlight:
    """The pair :func:`highlight_bad_landmark` marked: ``index`` (0-based pair) and, per point list, the
    node and its control points' selected states from before (to put back with :meth:`clear`)."""

    index: int
    saved: List[Tuple[Any, List[bool]]]

    def clear(self) -> None:
        """Put every point list's selection states back as they were before the highlight."""
        for node, states in self.saved:
            if node.GetNumberOfControlPoints() != len(states):
                continue  # the user edited the list since: its states are the user's now
            with slicer.util.NodeModify(node):
                for i, selected in enumerate(states):
                    node.SetNthControlPointSelected(i, selected)
        self.saved = []


def highlight_bad_landmark(error, *points_nodes) -> Optional[LandmarkHighlight]:
    """Mark the pair named by ``error`` (a ``LandmarkError``) in the point lists: its control point selected, the
    others not (module docstring). None, and nothing changed, when the error names no pair (a problem of the
    whole set: too few pairs, unequal counts, all points collinear) or no list holds that point."""
    index = getattr(error, "index", None)
    nodes = [n for n in points_nodes if n is not None and index is not None and 0 <= index < n.GetNumberOfControlPoints()]
    if not nodes:
        return None
    saved = []
    for node in nodes:
        n = node.GetNumberOfControlPoints()
        saved.append((node, [bool(node.GetNthControlPointSelected(i)) for i in range(n)]))
        with slicer.util.NodeModify(node):
            for i in range(n):
                node.SetNthControlPointSelected(i, i == index)
    return LandmarkHighlight(int(index), saved)


@dataclass
class LandmarkStart:
    """What :func:`apply_landmark_start` did: the engine's ``LandmarkPose`` (``pose``: reprojection errors in
    px, detector mm and mm at the landmarks), the transform node, its matrix to parent before and after (4, 4),
    and the CT's parent transform node ID before."""

    pose: Any
    transform_node: Any
    transform_before: np.ndarray
    transform_after: np.ndarray
    previous_parent_id: Any


def apply_landmark_start(ct_node, xray_node, transform_node, ct_points_node, xray_points_node) -> LandmarkStart:
    """Solve the start pose from the markups and move the CT (under ``transform_node``) to it (module
    docstring). Nothing changes in the scene when the solve fails."""
    import torch

    from XRayNeRFLib.registration.landmarks import solve_landmark_pose
    from XRayNeRFLib.registration.pose import ct_correction_from_poses

    if ct_node is None or xray_node is None or transform_node is None:
        raise ValueError("select the CT, the X-ray and the CT's transform")
    cameras = cameras_from_node(xray_node)
    pose = solve_landmark_pose(landmark_pairs(ct_points_node, xray_points_node, xray_node), cameras=cameras)
    correction = ct_correction_from_poses(pose.world_from_camera, cameras.world_from_camera[0].to(torch.float64)).numpy()
    ct_world = world_from_node(ct_node)
    before = slicer.util.arrayFromTransformMatrix(transform_node)
    after = np.linalg.inv(world_from_node(transform_node)) @ correction @ ct_world
    previous = ct_node.GetTransformNodeID()
    transform_node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(after))
    ct_node.SetAndObserveTransformNodeID(transform_node.GetID())
    return LandmarkStart(pose, transform_node, before, after, previous)


def landmark_report(start, translate: Callable[[str], str] = str) -> str:
    """One status line for a :class:`LandmarkStart`: the reprojection error (RMS, and the worst pair) of the solved
    start pose. translate: applied to the sentence's template before it is filled (Slicer's ``_`` for i18n)."""
    pose = start.pose
    worst = int(pose.error_px.argmax())
    return translate(
        "Landmark start from {n} pairs: reprojection error RMS {px:.2f} px ({mm:.2f} mm at the landmarks); largest: "
        "'{label}' {worst:.2f} px."
    ).format(n=len(pose.labels), px=pose.rms_px, mm=pose.rms_object_mm, label=pose.labels[worst], worst=float(pose.error_px[worst]))
