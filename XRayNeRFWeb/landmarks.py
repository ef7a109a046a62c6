"""Click-placed landmarks in the page: point pairs clicked on the CT and on the X-ray, then the layer's landmark start.

The page's "Landmark start" is the Slicer Registration module's, through the same layer route
(``XRayNeRFMRML.landmarks.apply_landmark_start``: the engine's PnP solve, the CT's transform moved to the start
pose, ``LandmarkError`` and nothing changed on bad pairs; ``highlight_bad_landmark`` selects the pair at fault).
What is the web's own: the two markups point lists and Slicer's place mode, through trame-slicer's
``MarkupsLogic`` (a click in a view in place mode adds a control point to the active list, as in Slicer):

* **CT points** ("CT landmarks"): clicked on the CT in the Green (coronal) view; the list is put under the CT's
  transform node, so that its points follow the CT when it moves (a second start begins from the moved CT). A
  point outside the CT's grid (a click meant for the CT that landed on the X-ray) is refused (:func:`require_on_ct`);
* **X-ray points** ("X-ray landmarks"): clicked on the X-ray in the Red view, which the overlay turns to the
  detector plane (a point off that plane is refused by the layer, ``reason="outside-image"``).

Pair n is the n-th point of each list. Runs on the server's event loop (the scene's thread).
"""

from __future__ import annotations

from typing import Callable, Optional

CT_LIST, XRAY_LIST = "CT landmarks", "X-ray landmarks"
CT_COLOR, XRAY_COLOR = (1.0, 0.85, 0.1), (0.2, 0.8, 1.0)  # the two lists' points in the views (RGB 0..1)


class ClickedLandmarks:
    """The two point lists of ``session`` (XRayNeRFWeb.session.Session) and the place mode of ``markups_logic``
    (trame-slicer's MarkupsLogic). on_change(ct_count, xray_count): called when a list's points change."""

    def __init__(self, session, markups_logic, on_change: Optional[Callable[[int, int], None]] = None):
        self.session, self.markups_logic, self.on_change = session, markups_logic, on_change
        self.ct_points = self.xray_points = None  # vtkMRMLMarkupsFiducialNode, created on first use
        self.highlight = None  # XRayNeRFMRML.landmarks.LandmarkHighlight of the last bad pair, or None

    def _list(self, name: str, color):
        import slicer

        scene = self.session.sa.scene
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
        node.CreateDefaultDisplayNodes()
        node.GetDisplayNode().SetSelectedColor(*color)
        node.AddObserver(slicer.vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._changed)
        node.AddObserver(slicer.vtkMRMLMarkupsNode.PointRemovedEvent, self._changed)
        return node

    def lists(self):
        """(CT points, X-ray points): the two markups nodes, made when first asked for; the CT list under the CT's
        transform node."""
        if self.ct_points is None or self.ct_points.GetScene() is None:
            self.ct_points = self._list(CT_LIST, CT_COLOR)
        if self.xray_points is None or self.xray_points.GetScene() is None:
            self.xray_points = self._list(XRAY_LIST, XRAY_COLOR)
        if self.session.transform is not None:
            self.ct_points.SetAndObserveTransformNodeID(self.session.transform.GetID())
        return self.ct_points, self.xray_points

    def counts(self):
        """(CT points, X-ray points) placed so far."""
        nodes = (self.ct_points, self.xray_points)
        return tuple(0 if n is None else n.GetNumberOfControlPoints() for n in nodes)

    def _changed(self, *_) -> None:
        if self.on_change is not None:
            self.on_change(*self.counts())

    def place(self, which: str) -> None:
        """Clicks in the views add points to the CT list (``which="ct"``) or the X-ray list (``"xray"``) until
        :meth:`stop`."""
        self.session.require_registration_inputs()
        ct_points, xray_points = self.lists()
        if which not in ("ct", "xray"):
            raise ValueError(f"place landmarks on 'ct' or 'xray', not {which!r}")
        self.markups_logic.place_node(ct_points if which == "ct" else xray_points, persistent=True)

    def stop(self) -> None:
        if self.ct_points is not None or self.xray_points is not None:
            self.markups_logic.disable_place_mode()

    def clear(self) -> None:
        """Remove every point of both lists (and stop placing)."""
        self.stop()
        self._clear_highlight()
        for node in (self.ct_points, self.xray_points):
            if node is not None:
                node.RemoveAllControlPoints()
        self._changed()

    def _clear_highlight(self) -> None:
        highlight, self.highlight = self.highlight, None
        if highlight is not None:
            highlight.clear()

    def start(self):
        """The layer's landmark start from the two lists: the CT's transform moved to the solved pose. Returns the
        layer's ``LandmarkStart`` (``pose``: the reprojection errors). Raises ``LandmarkError`` (the pair at fault
        selected in both lists) with the scene otherwise unchanged."""
        from XRayNeRFLib.errors import LandmarkError
        from XRayNeRFMRML.landmarks import apply_landmark_start, highlight_bad_landmark

        s = self.session
        s.require_registration_inputs()
        self.stop()
        self._clear_highlight()
        ct_points, xray_points = self.lists()
        try:
            require_on_ct(s.ct, ct_points)
            return apply_landmark_start(s.ct, s.xray, s.transform, ct_points, xray_points)
        except LandmarkError as error:
            self.highlight = highlight_bad_landmark(error, ct_points, xray_points)
            raise


def require_on_ct(ct_node, ct_points) -> None:
    """Every CT point inside the CT's voxel grid (with its transforms), else ``LandmarkError(reason="outside-image")``
    naming the first one outside: a click meant for the CT that landed elsewhere (in the Red view, on the X-ray)."""
    import numpy as np

    from XRayNeRFLib.errors import LandmarkError
    from XRayNeRFMRML.landmarks import markup_points_world
    from XRayNeRFMRML.nodes import ras_from_ijk_world

    points, labels = markup_points_world(ct_points)
    ijk = (np.linalg.inv(ras_from_ijk_world(ct_node)) @ np.c_[points, np.ones(len(points))].T).T[:, :3]
    dims = np.array(ct_node.GetImageData().GetDimensions(), dtype=np.float64)
    outside = np.nonzero(((ijk < -0.5) | (ijk > dims - 0.5)).any(axis=1))[0]
    if outside.size:
        i = int(outside[0])
        raise LandmarkError(
            f"CT landmark {i} ({labels[i]}) lies outside the CT: place the CT points on the CT in the Green view",
            reason="outside-image",
            index=i,
            label=labels[i],
        )


def report(start) -> str:
    """One line for the page: the layer's report of a landmark start (reprojection error RMS and the worst pair),
    then what to do next."""
    from XRayNeRFMRML.landmarks import landmark_report

    return landmark_report(start) + " Accept or Revert, or Register from here."
