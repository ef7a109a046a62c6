"""XRayNeRF Registration: 2D/3D registration of a CT to one X-ray, or to a biplane pair at once, with a live DRR
overlay.

Manual alignment (the overlay follows the CT's transform, throttled: XRayNeRFMRML/live_overlay.py and
throttle.py; nudges along the detector axes: manual_pose.py), a landmark start from two markups point lists
(landmarks.py) and the engine's options (registration_options.py) come before the optimiser.

The X-ray is a 1-slice scalar volume node with its camera (attribute ``XRayNeRF.Cameras``, set by
XRayNeRF's DICOM reader and DRR module). The CT sits under a linear transform node (the initial pose,
which the user can move with Slicer's transform tools); registration updates that transform. While the
optimiser runs, the DRR of the CT at the X-ray's camera is shown over the X-ray in a slice view aligned to
the detector plane (zeros transparent). With "Register to both X-rays (biplane)" the second X-ray is registered
together with the first (one pose, the summed loss: XRayNeRFMRML.registration.register_ct_to_xrays), its overlay in
the Yellow view.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path
from typing import Annotated, Callable, Optional


def _addExtensionPaths() -> None:
    """Make XRayNeRFMRML and XRayNeRFLib importable in the source tree and the build/install tree."""
    here = Path(__file__).resolve().parent
    for parent in (here, *here.parents):
        for package in ("XRayNeRFMRML", "XRayNeRFLib"):
            if (parent / package / "__init__.py").is_file() and str(parent) not in sys.path:
                sys.path.insert(0, str(parent))
        if (parent / "XRayNeRFLib" / "__init__.py").is_file():
            break


_addExtensionPaths()

import numpy as np  # noqa: E402
import slicer  # noqa: E402
from slicer import (  # noqa: E402
    vtkMRMLLinearTransformNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLModelNode,
    vtkMRMLScalarVolumeNode,
)
from slicer.i18n import tr as _  # noqa: E402
from slicer.i18n import translate  # noqa: E402
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper  # noqa: E402
from slicer.ScriptedLoadableModule import (  # noqa: E402
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)

from XRayNeRFMRML.choices import SIMILARITIES  # noqa: E402  (the engine's list)
from XRayNeRFMRML.widgets import XRayNeRFWidgetMixin  # noqa: E402


class XRayNeRFRegistration(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("XRayNeRF Registration")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "XRayNeRF")]
        self.parent.dependencies = []
        self.parent.contributors = ["XRayNeRF developers"]
        self.parent.helpText = _(
            "Registers a CT volume to one X-ray (2D/3D) by optimising the pose of the CT's DRR against the "
            "X-ray through the differentiable XRayNeRF renderer. The result is the CT's linear transform.<br>"
            "<b>Geometry conventions</b> (docs/geometry.md in the XRayNeRF repository): scene frame patient "
            "RAS in millimetres; the X-ray is a 1-slice volume lying on its detector plane, seen from the source "
            "(beam's eye view), with its camera stored on the node. The live overlay shows the DRR (green, "
            "zeros transparent) over the X-ray in the Red slice view turned to the detector plane (screen right = "
            "increasing column, screen up = decreasing row). Accept keeps the transform; Revert restores it. "
            "<b>X-ray from DICOM</b>: <i>Load X-ray</i> reads a frame of an XA/RF/DX/CR file with XRayNeRF's reader "
            "(C-arm angles, distances and pixel spacing from the tags, or from the overrides when a tag is missing); "
            "the C-arm's isocentre is put at the selected CT's centre, so start by selecting the CT. "
            "<b>Manual alignment</b>: with <i>Live overlay</i> on, the overlay follows the CT while you move its transform "
            "(Transforms module, 3D handles, the nudge buttons along the detector axes): coarse while moving, full size at "
            "rest. <b>Landmark start</b>: the same 4 or more points on the CT and on the X-ray give a start pose (PnP), with "
            "the reprojection error. <b>Settings</b>: coarse search, intrinsics refinement, NeTT and mNeRF are opt-in; a second X-ray "
            "at a known pose (e.g. the biplane partner) completes the pair set NeTT trains on and mNeRF is fitted to. "
            "<b>Biplane</b>: choose the partner X-ray (with its camera) as <i>Second X-ray</i> and tick <i>Register to both "
            "X-rays (biplane)</i>: one pose fits both views (the depth along one beam is seen by the other), the second "
            "overlay is shown in the Yellow view, the status line gives each X-ray's loss; Accept and Revert act on both. "
            "Not with mNeRF (fitted to the second X-ray at a pose that biplane registers)."
        )
        self.parent.acknowledgementText = _("XRayNeRF is an open-source 3D Slicer extension. Uses 3D Slicer (www.slicer.org) and PyTorch.")
        # XRayNeRF's sample data (CT, projections, fluoroscopy) in the Sample Data module, once Slicer is up
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData() -> None:
    """Add XRayNeRF's sample data sets to the Sample Data module (XRayNeRFMRML/sampledata.py)."""
    from XRayNeRFMRML.sampledata import register_sample_data

    register_sample_data()


@parameterNodeWrapper
class XRayNeRFRegistrationParameterNode:
    """inputVolume: CT (HU); xrayVolume: 1-slice X-ray with its camera; transform: the CT's pose.
    xrayDicom*: a DICOM X-ray file, its frame and tag overrides (0: the tag), read by "Load X-ray".
    nudge*: the steps of the nudge buttons (mm, degrees). ctLandmarks / xrayLandmarks: the landmark start's
    point lists. coarseSearch ... nettIterations, useMnerf: the engine's options (XRayNeRFMRML.registration_options);
    secondXray: an X-ray at a known pose that completes the pair set (NeTT training, the mNeRF fit); biplane: register
    to it too (one pose for both), into secondOutputDRR / secondCameraModel."""

    inputVolume: vtkMRMLScalarVolumeNode
    xrayVolume: vtkMRMLScalarVolumeNode
    transform: vtkMRMLLinearTransformNode
    similarity: Annotated[str, Choice(SIMILARITIES)] = "mi"
    previewEvery: Annotated[int, WithinRange(1, 100)] = 5
    overlayOpacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    outputDRR: vtkMRMLScalarVolumeNode
    cameraModel: vtkMRMLModelNode
    xrayDicomPath: str = ""
    xrayDicomFrame: Annotated[int, WithinRange(0, 100000)] = 0
    dicomSddMm: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    dicomSidMm: Annotated[float, WithinRange(0.0, 5000.0)] = 0.0
    dicomPixelSpacingMm: Annotated[float, WithinRange(0.0, 20.0)] = 0.0
    # manual alignment: nudge steps along / about the detector axes
    nudgeTranslationMm: Annotated[float, WithinRange(0.1, 100.0)] = 5.0
    nudgeRotationDeg: Annotated[float, WithinRange(0.1, 45.0)] = 2.0
    # landmark start: the same points on the CT and on the X-ray, in the same order
    ctLandmarks: vtkMRMLMarkupsFiducialNode
    xrayLandmarks: vtkMRMLMarkupsFiducialNode
    # the engine's options (XRayNeRFMRML.registration_options)
    coarseSearch: bool = False
    captureRangeDeg: Annotated[float, WithinRange(0.0, 90.0)] = 10.0
    captureRangeMm: Annotated[float, WithinRange(0.0, 200.0)] = 20.0
    searchStarts: Annotated[int, WithinRange(2, 512)] = 32
    refineIntrinsics: bool = False
    applyNett: bool = False
    nettWeightsPath: str = ""
    nettIterations: Annotated[int, WithinRange(1, 10000)] = 100
    # the pair set: a second X-ray at a known pose (biplane partner, an earlier registered frame)
    secondXray: vtkMRMLScalarVolumeNode
    useMnerf: bool = False
    biplane: bool = False
    secondOutputDRR: vtkMRMLScalarVolumeNode
    secondCameraModel: vtkMRMLModelNode


class QtSingleShotTimer:
    """The live overlay's timer in Slicer (``XRayNeRFMRML.throttle.Timer`` over a single-shot ``qt.QTimer``):
    the thin Qt layer; the coalescing rule itself is plain Python (XRayNeRFMRML/throttle.py)."""

    def __init__(self, callback: Callable[[], None]) -> None:
        import qt

        self._timer = qt.QTimer()
        self._timer.setSingleShot(True)
        self._timer.connect("timeout()", callback)

    @property
    def active(self) -> bool:
        return bool(self._timer.isActive())

    def start(self, delay_s: float) -> None:
        self._timer.start(int(round(1000.0 * float(delay_s))))

    def stop(self) -> None:
        self._timer.stop()


class XRayNeRFRegistrationWidget(XRayNeRFWidgetMixin, ScriptedLoadableModuleWidget):
    """Parameter node, Apply <-> Cancel, progress and status line come from XRayNeRFMRML.widgets."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        XRayNeRFWidgetMixin.__init__(self)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        self.setupWidget("XRayNeRFRegistration.ui", XRayNeRFRegistrationLogic())
        self.ui.xrayVolumeSelector.addAttribute("vtkMRMLScalarVolumeNode", "XRayNeRF.Cameras")
        self.ui.similarityComboBox.clear()
        self.ui.similarityComboBox.addItems(list(SIMILARITIES))
        self.ui.previewButton.connect("clicked(bool)", self.onPreviewButton)
        self.ui.xrayDicomBrowseButton.connect("clicked(bool)", self.onBrowseXRayDicom)
        self.ui.loadXRayButton.connect("clicked(bool)", self.onLoadXRayButton)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptButton)
        self.ui.revertButton.connect("clicked(bool)", self.onRevertButton)
        self.ui.liveOverlayCheckBox.connect("toggled(bool)", self.onLiveOverlayToggled)
        for axis in ("X", "Y", "Z"):
            for sign, name in ((1, "Plus"), (-1, "Minus")):
                getattr(self.ui, f"nudge{name}{axis}Button").connect(
                    "clicked(bool)", lambda _c, a=axis, k=sign: self.onNudge(a.lower(), 0, k)
                )
                getattr(self.ui, f"rotate{name}{axis}Button").connect(
                    "clicked(bool)", lambda _c, a=axis, k=sign: self.onNudge(a.lower(), k, 0)
                )
        self.ui.landmarkStartButton.connect("clicked(bool)", self.onLandmarkStartButton)
        self.ui.trainNettButton.connect("clicked(bool)", self.onTrainNettButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Module closed: no live overlay update after this (observers removed, timers stopped)."""
        if self.logic is not None:
            self.logic.stopLiveOverlay()
        XRayNeRFWidgetMixin.cleanup(self)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic is not None:
            self.logic.stopLiveOverlay()
        XRayNeRFWidgetMixin.onSceneStartClose(self, caller, event)

    def whyCannotApply(self) -> Optional[str]:
        return self.logic.whyCannotRegister(self._parameterNode) or self.logic.whyCannotRegisterBiplane(self._parameterNode)

    def applyToolTip(self) -> str:
        return _("Register the CT to the X-ray")

    def updateButtons(self, reason: Optional[str]) -> None:
        idle = not self.running
        if self.logic.stopLiveOverlayUnlessShowing(self._parameterNode):  # another CT, X-ray or transform selected
            self.ui.liveOverlayCheckBox.checked = False
        ready = idle and self.logic.whyCannotRegister(self._parameterNode) is None  # the first X-ray's tools: not biplane's
        self.ui.previewButton.enabled = ready
        for axis in ("X", "Y", "Z"):
            for name in ("Plus", "Minus"):
                getattr(self.ui, f"nudge{name}{axis}Button").enabled = ready
                getattr(self.ui, f"rotate{name}{axis}Button").enabled = ready
        self.ui.liveOverlayCheckBox.enabled = ready or self.logic.liveOverlay is not None
        p = self._parameterNode
        self.ui.landmarkStartButton.enabled = ready and bool(p and p.ctLandmarks and p.xrayLandmarks)
        self.ui.trainNettButton.enabled = ready and bool(p and p.nettWeightsPath.strip())
        self.ui.acceptButton.enabled = self.ui.revertButton.enabled = idle and self.logic.hasPendingResult()
        path = self._parameterNode.xrayDicomPath.strip() if self._parameterNode else ""
        self.ui.loadXRayButton.enabled = idle and bool(path) and Path(path).is_file()
        self.ui.loadXRayButton.toolTip = (
            _("Read the X-ray and its C-arm geometry from the DICOM file")
            if self.ui.loadXRayButton.enabled
            else _("Choose a DICOM X-ray file (XA, RF, DX, CR) first")
        )

    def onBrowseXRayDicom(self) -> None:
        import qt

        path = qt.QFileDialog.getOpenFileName(None, _("DICOM X-ray file"), self._parameterNode.xrayDicomPath, _("DICOM (*.dcm *)"))
        if path:
            self._parameterNode.xrayDicomPath = path

    def onLoadXRayButton(self):
        """Read the chosen DICOM frame into an X-ray node with its camera and select it; the isocentre is
        put at the selected CT's centre (else the RAS origin). Returns the node (None on error)."""
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to load the X-ray."), waitCursor=True):
            from XRayNeRFMRML.engine import ensure_engine

            try:
                ensure_engine()
                node = self.logic.loadXRayUsingParameterNode(p)
            except Exception as error:
                self.ui.statusLabel.text = _("Failed to load the X-ray.") + f" {error}"
                raise
            self.checkCanApply()
            self.ui.statusLabel.text = _("Loaded '{name}' with its C-arm geometry.").format(name=node.GetName())
            return node

    def onLiveOverlayToggled(self, checked: bool, sliceLogic=None, makeTimer=None):
        """Start (checked) or stop the live overlay; returns the LiveOverlay (None when stopped or on error)."""
        if not checked:
            self.logic.stopLiveOverlay()
            self.ui.statusLabel.text = _("Live overlay off.")
            return None
        with slicer.util.tryWithErrorDisplay(_("Failed to start the live overlay."), waitCursor=True):
            from XRayNeRFMRML.engine import ensure_engine

            try:
                ensure_engine()
                live = self.logic.liveOverlayUsingParameterNode(self._parameterNode, sliceLogic=sliceLogic, makeTimer=makeTimer)
            except Exception as error:
                self.ui.liveOverlayCheckBox.checked = False
                self.ui.statusLabel.text = _("Failed to start the live overlay.") + f" {error}"
                raise
            self.ui.statusLabel.text = _("Live overlay on: move the CT (Transforms module, 3D handles or the buttons below).")
            return live

    def onNudge(self, axis: str, rotationSteps: int, translationSteps: int) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to move the CT."), waitCursor=False):
            self.logic.nudgeUsingParameterNode(self._parameterNode, axis, rotationSteps=rotationSteps, translationSteps=translationSteps)

    def onLandmarkStartButton(self):
        """Landmark start; bad points give one message in the status line and change nothing. Returns the
        LandmarkStart (None on error)."""
        from XRayNeRFLib.errors import LandmarkError

        with slicer.util.tryWithErrorDisplay(_("Landmark start failed."), waitCursor=True):
            try:
                start = self.logic.landmarkStartUsingParameterNode(self._parameterNode)
            except LandmarkError as error:
                shown = self.logic.landmarkHighlight is not None
                self.ui.statusLabel.text = _("Landmark start failed: {error}").format(error=error) + (
                    " " + _("That pair is the selected point in both point lists.") if shown else ""
                )
                raise
            self.checkCanApply()  # Revert enabled
            self.ui.statusLabel.text = self.logic.landmarkReport(start) + " " + _("Apply to refine, or Revert.")
            return start

    def onTrainNettButton(self) -> None:
        def done(result):
            _model, history = result
            return _("NeTT trained ({n} iterations, loss {a:.4f} -> {b:.4f}) and saved; tick 'Apply NeTT' to use it.").format(
                n=len(history), a=history[0], b=history[-1]
            )

        self.runApply(
            _("NeTT training failed."),
            lambda progress: self.logic.trainNettUsingParameterNode(self._parameterNode, progress=progress),
            done,
        )

    def onPreviewButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to show the overlay."), waitCursor=True):
            from XRayNeRFMRML.engine import ensure_engine

            ensure_engine()
            self.logic.previewUsingParameterNode(self._parameterNode)

    def onApplyButton(self) -> None:
        def done(result):
            return self.logic.registrationReport(result) + " " + _("Accept or Revert.")

        self.runApply(
            _("Registration failed."),
            lambda progress: self.logic.registerUsingParameterNode(self._parameterNode, progress=progress),
            done,
        )

    def onAcceptButton(self) -> None:
        self.logic.accept()
        self.checkCanApply()

    def onRevertButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to revert."), waitCursor=True):
            self.logic.revert()
            self.checkCanApply()


class XRayNeRFRegistrationLogic(ScriptedLoadableModuleLogic):
    """Entry points: :meth:`register` (explicit arguments), :meth:`registerUsingParameterNode` (adapter),
    :meth:`updateDRR` and :meth:`showOverlay` (the overlay alone), :meth:`accept` / :meth:`revert`,
    :meth:`loadXRay` (DICOM). The MRML <-> engine code is XRayNeRFMRML.registration and .inputs."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.cancelRequested = False
        self._pending = None  # the last run's RegistrationOutput (or LandmarkStart) until accept or revert
        self._overlay = None  # XRayNeRFMRML.registration.OverlayView (created on first use)
        self._secondOverlay = None  # the second X-ray's OverlayView (biplane), created on first use
        self._live = None  # XRayNeRFMRML.live_overlay.LiveOverlay while the live overlay runs
        self.landmarkHighlight = None  # XRayNeRFMRML.landmarks.LandmarkHighlight of the last failed landmark start
        self.mnerfCache = None  # XRayNeRFMRML.registration_options.MNeRFCache, created on first use

    def getParameterNode(self):
        return XRayNeRFRegistrationParameterNode(super().getParameterNode())

    @staticmethod
    def whyCannotRegister(p) -> Optional[str]:
        if p is None:
            return _("No parameter node.")
        if not p.inputVolume:
            return _("Select the CT volume.")
        if not p.xrayVolume:
            return _("Select the X-ray (a 1-slice volume with its camera, e.g. from DICOM).")
        if not p.xrayVolume.GetAttribute("XRayNeRF.Cameras"):
            return _("The X-ray has no camera geometry: read the DICOM file with 'X-ray from DICOM > Load X-ray' (or render a DRR).")
        if not p.transform:
            return _("Select or create the CT's transform (the initial pose).")
        return None

    @staticmethod
    def whyCannotRegisterBiplane(p) -> Optional[str]:
        """None unless ``p.biplane`` is ticked and the second X-ray cannot join the run (the panel's reason; the
        MRML layer's ``XRayViewError`` says the same for callers that bypass the panel)."""
        if p is None or not p.biplane:
            return None
        if not p.secondXray:
            return _("Biplane: choose the partner X-ray (with its camera) as 'Second X-ray', or untick biplane.")
        if p.secondXray is p.xrayVolume:
            return _("Biplane needs two different X-rays: the second X-ray is the X-ray itself.")
        if not p.secondXray.GetAttribute("XRayNeRF.Cameras"):
            return _("The second X-ray '{name}' has no camera geometry: load it with 'X-ray from DICOM' (or render a DRR).").format(
                name=p.secondXray.GetName()
            )
        if p.useMnerf:
            return _("mNeRF is fitted to the second X-ray at its known pose, which biplane registers instead: untick 'mNeRF' or 'biplane'.")
        return None

    # -- X-ray from DICOM -------------------------------------------------------------------------------
    @staticmethod
    def loadXRay(
        dicomPath: str,
        frame: int = 0,
        *,
        sddMm: Optional[float] = None,
        sidMm: Optional[float] = None,
        pixelSpacingMm: Optional[float] = None,
        isocenterRas=None,
        name: Optional[str] = None,
    ):
        """A DICOM X-ray file -> a new 1-slice X-ray node on its detector with its camera (attribute
        ``XRayNeRF.Cameras``), holding line integrals -ln(I/I0) of frame ``frame``.

        sddMm / sidMm / pixelSpacingMm: values that win over the tags (None or 0: the tags); a missing tag
        raises ValueError naming the field to fill ("DICOM overrides > ..."). isocenterRas: (3,) RAS mm of
        the C-arm's isocentre (None: the origin; DICOM does not register the C-arm to the CT). Nothing is
        added to the scene on error."""
        from XRayNeRFMRML.inputs import xray_node_from_dicom

        return xray_node_from_dicom(
            dicomPath,
            frame,
            sdd_mm=sddMm,
            sid_mm=sidMm,
            pixel_spacing_mm=pixelSpacingMm,
            isocenter_ras=isocenterRas,
            name=name,
            scene=slicer.mrmlScene,
        )

    @staticmethod
    def volumeCentreRas(volumeNode) -> np.ndarray:
        """The centre of a volume's voxel grid in world RAS mm (parent transforms applied): (3,)."""
        from XRayNeRFMRML.nodes import volume_centre_ras

        return volume_centre_ras(volumeNode)

    def loadXRayUsingParameterNode(self, p):
        """Adapter: read the DICOM file named on the parameter node, select the new X-ray node. The
        isocentre is the selected CT's centre (else the origin)."""
        path = p.xrayDicomPath.strip()
        if not path:
            raise ValueError("Choose the DICOM X-ray file first.")
        centre = self.volumeCentreRas(p.inputVolume) if p.inputVolume and p.inputVolume.GetImageData() else None
        node = self.loadXRay(
            path,
            p.xrayDicomFrame,
            sddMm=p.dicomSddMm or None,
            sidMm=p.dicomSidMm or None,
            pixelSpacingMm=p.dicomPixelSpacingMm or None,
            isocenterRas=centre,
        )
        p.xrayVolume = node
        return node

    def hasPendingResult(self) -> bool:
        return self._pending is not None

    @staticmethod
    def defaultSliceLogic(layoutName: str = "Red"):
        """The slice view of the overlay (Red) or of the second X-ray's overlay in biplane (Yellow)."""
        return slicer.app.applicationLogic().GetSliceLogicByLayoutName(layoutName)

    # -- overlay -----------------------------------------------------------------------------------------
    @property
    def overlay(self):
        from XRayNeRFMRML.registration import OverlayView

        if self._overlay is None:
            self._overlay = OverlayView()
        return self._overlay

    @property
    def secondOverlay(self):
        """The second X-ray's overlay (biplane; the Yellow view by default)."""
        from XRayNeRFMRML.registration import OverlayView

        if self._secondOverlay is None:
            self._secondOverlay = OverlayView()
        return self._secondOverlay

    @staticmethod
    def updateDRR(ctNode, xrayNode, drrNode=None):
        """Write into ``drrNode`` (created if None) the DRR of the CT (with its current transform) at the
        X-ray's camera; returns the node."""
        from XRayNeRFMRML.registration import update_drr

        return update_drr(ctNode, xrayNode, drrNode)

    def showOverlay(self, xrayNode, drrNode, sliceLogic=None, opacity: float = 0.5):
        """X-ray background, DRR foreground (zeros transparent) in a slice view on the detector plane;
        returns the slice composite node. The view's previous state (layers, opacity, orientation) is
        saved the first time, and put back by :meth:`restoreView` (called on failure and by :meth:`revert`)."""
        return self.overlay.show(sliceLogic or self.defaultSliceLogic(), xrayNode, drrNode, opacity)

    def restoreView(self) -> bool:
        """Give the slice views (the overlay's and, after biplane, the second X-ray's) back their state from before the
        overlay; False when there was none."""
        first = self.overlay.restore()
        second = self.secondOverlay.restore()
        return first or second

    def previewUsingParameterNode(self, p, sliceLogic=None, secondSliceLogic=None):
        """The DRR overlay at the CT's current pose; with biplane ticked (and possible) also the second X-ray's
        (Yellow view)."""
        reason = self.whyCannotRegister(p)
        if reason is not None:
            raise ValueError(reason)
        p.inputVolume.SetAndObserveTransformNodeID(p.transform.GetID())
        p.outputDRR = self.updateDRR(p.inputVolume, p.xrayVolume, p.outputDRR)
        if p.biplane and self.whyCannotRegisterBiplane(p) is None:
            p.secondOutputDRR = self.updateDRR(p.inputVolume, p.secondXray, p.secondOutputDRR)
            self.secondOverlay.show(secondSliceLogic or self.defaultSliceLogic("Yellow"), p.secondXray, p.secondOutputDRR, p.overlayOpacity)
        return self.showOverlay(p.xrayVolume, p.outputDRR, sliceLogic, p.overlayOpacity)

    # -- live overlay under manual alignment ---------------------------------------------------------------
    @property
    def liveOverlay(self):
        """The running ``XRayNeRFMRML.live_overlay.LiveOverlay`` (None when off or stopped)."""
        return self._live if self._live is not None and self._live.active else None

    def startLiveOverlay(self, ctNode, xrayNode, transformNode, drrNode=None, *, sliceLogic=None, opacity=0.5, makeTimer=None, **options):
        """Re-render the DRR overlay whenever the CT's transform changes (throttled: coarse while it moves, full
        size at rest; XRayNeRFMRML.live_overlay). The CT is put under ``transformNode``; the DRR is rendered at
        once and shown over the X-ray. makeTimer: the timer factory (default :class:`QtSingleShotTimer`);
        options: LiveOverlay's (interval_s, idle_s, coarse_factor). Returns the LiveOverlay."""
        from XRayNeRFMRML.live_overlay import LiveOverlay
        from XRayNeRFMRML.nodes import remove_node

        self.stopLiveOverlay()
        previousParent = ctNode.GetTransformNodeID() if ctNode is not None else None
        live = None
        try:
            if transformNode is not None:
                ctNode.SetAndObserveTransformNodeID(transformNode.GetID())
            live = LiveOverlay(ctNode, xrayNode, drrNode, make_timer=makeTimer or QtSingleShotTimer, **options)
            self.showOverlay(xrayNode, live.drr_node, sliceLogic, opacity)
        except Exception:  # the scene as it was: CT parent, no new DRR node, no observers
            if live is not None:
                live.stop()
                if drrNode is None:
                    self.overlay.restore()  # the live overlay's view (Red) only
                    remove_node(live.drr_node)
            if ctNode is not None:
                ctNode.SetAndObserveTransformNodeID(previousParent)
            raise
        self._live = live
        return live

    def stopLiveOverlay(self) -> bool:
        """Stop the live overlay (observers removed, timers stopped); False when none was running."""
        live, self._live = self._live, None
        if live is None or not live.active:
            return False
        live.stop()
        return True

    def stopLiveOverlayUnlessShowing(self, p) -> bool:
        """Stop the live overlay when the parameter node now names another CT, X-ray or transform than it
        follows (or none); returns True when it was stopped."""
        live = self.liveOverlay
        if live is None:
            return False
        ct = p.inputVolume if p is not None else None
        same = ct is not None and live.ct_node is ct and live.xray_node is (p.xrayVolume if p else None)
        same = same and p.transform is not None and ct.GetTransformNodeID() == p.transform.GetID()
        return False if same else self.stopLiveOverlay()

    def liveOverlayUsingParameterNode(self, p, sliceLogic=None, makeTimer=None, **options):
        """Adapter: start the live overlay on the parameter node's CT, X-ray, transform and DRR node."""
        reason = self.whyCannotRegister(p)
        if reason is not None:
            raise ValueError(reason)
        live = self.startLiveOverlay(
            p.inputVolume,
            p.xrayVolume,
            p.transform,
            p.outputDRR,
            sliceLogic=sliceLogic,
            opacity=p.overlayOpacity,
            makeTimer=makeTimer,
            **options,
        )
        p.outputDRR = live.drr_node
        return live

    def nudge(self, ctNode, xrayNode, transformNode, axis: str, *, rotationDeg: float = 0.0, translationMm: float = 0.0):
        """Move the CT (put under ``transformNode``) by a rotation about / translation along the X-ray's
        detector axis ``axis`` ("x" columns, "y" rows, "z" beam), rotations about the CT's centre
        (XRayNeRFMRML.manual_pose). Returns the transform's new matrix to parent (4, 4)."""
        from XRayNeRFMRML.manual_pose import nudge_transform
        from XRayNeRFMRML.nodes import cameras_from_node

        cameras = cameras_from_node(xrayNode)
        if ctNode.GetTransformNodeID() != transformNode.GetID():
            ctNode.SetAndObserveTransformNodeID(transformNode.GetID())
        centre = self.volumeCentreRas(ctNode)
        return nudge_transform(transformNode, cameras, axis, rotation_deg=rotationDeg, translation_mm=translationMm, center_ras=centre)

    def nudgeUsingParameterNode(self, p, axis: str, rotationSteps: int = 0, translationSteps: int = 0):
        """Adapter: nudge by whole steps of the parameter node's nudgeRotationDeg / nudgeTranslationMm."""
        reason = self.whyCannotRegister(p)
        if reason is not None:
            raise ValueError(reason)
        return self.nudge(
            p.inputVolume,
            p.xrayVolume,
            p.transform,
            axis,
            rotationDeg=rotationSteps * p.nudgeRotationDeg,
            translationMm=translationSteps * p.nudgeTranslationMm,
        )

    # -- landmark start -----------------------------------------------------------------------------------
    @staticmethod
    def applyLandmarkStart(ctNode, xrayNode, transformNode, ctLandmarks, xrayLandmarks):
        """Solve the start pose from the two markups point lists and move the CT's transform to it
        (XRayNeRFMRML.landmarks). Returns a LandmarkStart (``pose.rms_px`` ... the reprojection errors).
        Bad points raise the engine's ``LandmarkError`` and leave the scene as it was."""
        from XRayNeRFMRML.landmarks import apply_landmark_start

        return apply_landmark_start(ctNode, xrayNode, transformNode, ctLandmarks, xrayLandmarks)

    def landmarkStartUsingParameterNode(self, p):
        reason = self.whyCannotRegister(p)
        if reason is not None:
            raise ValueError(reason)
        if not p.ctLandmarks or not p.xrayLandmarks:
            raise ValueError("Select the landmark point lists: points on the CT and the same points on the X-ray.")
        from XRayNeRFLib.errors import LandmarkError
        from XRayNeRFMRML.landmarks import highlight_bad_landmark

        self.clearLandmarkHighlight()
        try:
            start = self.applyLandmarkStart(p.inputVolume, p.xrayVolume, p.transform, p.ctLandmarks, p.xrayLandmarks)
        except LandmarkError as error:  # show the bad pair on the point lists (selected), nothing else changes
            self.landmarkHighlight = highlight_bad_landmark(error, p.ctLandmarks, p.xrayLandmarks)
            raise
        self._pending = start  # Revert puts the transform back (restore_transform reads transform_node/_before)
        return start

    def clearLandmarkHighlight(self) -> None:
        """Put back the point lists' selection states changed to show a bad pair (if any)."""
        highlight, self.landmarkHighlight = self.landmarkHighlight, None
        if highlight is not None:
            highlight.clear()

    @staticmethod
    def landmarkReport(start) -> str:
        """One status line: the reprojection error (RMS and worst pair) of a landmark start (the layer's wording)."""
        from XRayNeRFMRML.landmarks import landmark_report

        return landmark_report(start, _)

    # -- the engine's options -----------------------------------------------------------------------------
    @staticmethod
    def engineOptions(p) -> dict:
        """The parameter node's engine options as keywords of ``XRayNeRFLib.registration.register``:
        ``settings`` (RegistrationSettings) and ``appearance`` (the NeTT model or None)."""
        from XRayNeRFMRML.registration_options import nett_appearance, registration_settings

        settings = registration_settings(
            loss=p.similarity,
            coarse_search=p.coarseSearch,
            capture_range_deg=p.captureRangeDeg,
            capture_range_mm=p.captureRangeMm,
            starts=p.searchStarts,
            refine_intrinsics=p.refineIntrinsics,
        )
        return {"settings": settings, "appearance": nett_appearance(p.nettWeightsPath) if p.applyNett else None}

    def trainNettUsingParameterNode(self, p, progress: Optional[Callable] = None):
        """Train NeTT on the CT at its current pose and the pair set (the X-ray and, when chosen, the second X-ray;
        the similarity as the loss), save the weights to ``p.nettWeightsPath``; returns (model, history). progress
        returning False (or cancelRequested) stops without writing."""
        from XRayNeRFMRML.registration_options import train_nett_on_pairs

        reason = self.whyCannotRegister(p)
        if reason is not None:
            raise ValueError(reason)
        self.cancelRequested = False

        def onProgress(q):
            keepGoing = progress(q) if progress is not None else True
            return bool(keepGoing) and not self.cancelRequested

        p.inputVolume.SetAndObserveTransformNodeID(p.transform.GetID())
        return train_nett_on_pairs(
            p.inputVolume,
            [p.xrayVolume, p.secondXray],
            p.nettWeightsPath,
            loss=p.similarity,
            iterations=p.nettIterations,
            progress=onProgress,
        )

    def fitMnerfUsingParameterNode(self, p, progress: Optional[Callable] = None):
        """The mNeRF of the CT under its transform fitted to ``p.secondXray`` at its known pose (the registered
        X-ray is not used: its pose is what the run finds). The CT's parent is put back when the fit fails. The fit
        is reused while the CT (voxels, pose) and the second X-ray are unchanged (``self.mnerfCache``)."""

        if p.secondXray is None or p.secondXray is p.xrayVolume:
            raise ValueError("mNeRF is fitted to a second X-ray at a known pose: choose it under 'Second X-ray', or untick mNeRF")
        if p.applyNett:
            raise ValueError("mNeRF replaces the CT's DRR: untick 'Apply NeTT' or 'mNeRF'")
        from XRayNeRFMRML.registration_options import MNeRFCache

        self.cancelRequested = False
        self.mnerfCache = self.mnerfCache or MNeRFCache()
        previous = p.inputVolume.GetTransformNodeID()
        p.inputVolume.SetAndObserveTransformNodeID(p.transform.GetID())  # the pose the run reads the CT at
        try:
            return self.mnerfCache.fit(
                p.inputVolume,
                [p.secondXray],
                progress=lambda q: bool(progress(q) if progress is not None else True) and not self.cancelRequested,
            )
        except Exception:
            p.inputVolume.SetAndObserveTransformNodeID(previous)
            raise

    # -- registration ------------------------------------------------------------------------------------
    def register(
        self,
        ctNode,
        xrayNode,
        transformNode,
        drrNode=None,
        cameraModelNode=None,
        *,
        sliceLogic=None,
        opacity: float = 0.5,
        previewEvery: int = 5,
        progress: Optional[Callable] = None,
        secondXray=None,
        secondDrrNode=None,
        secondCameraModelNode=None,
        secondSliceLogic=None,
        **engineOptions,
    ):
        """Register the CT to the X-ray by moving ``transformNode`` (the CT is put under it); with ``secondXray``
        (biplane) to both X-rays at once: one pose, the summed loss, the second overlay in ``secondSliceLogic``
        (default the Yellow view), its DRR and C-arm in ``secondDrrNode`` / ``secondCameraModelNode`` (created when
        None).

        engineOptions go to ``XRayNeRFLib.registration.register`` (loss, levels, max_iterations, ...).
        The overlays (DRR nodes, slice views) are updated every ``previewEvery`` iterations. On an error the
        transform and the slice views (layers, opacity, orientation) are restored and nodes created here are
        removed; an X-ray without camera, the same X-ray twice or one that does not see the CT raises
        ``XRayViewError`` naming it. A cancel (``progress`` returning False, or ``cancelRequested``) keeps the best
        pose so far (and the overlays, until accept or revert).
        returns XRayNeRFMRML.registration.RegistrationOutput (result: the engine's RegistrationResult,
        drr_node, camera_model_node, overlay_updates, per X-ray drr_nodes, view_losses, ...); :meth:`accept` /
        :meth:`revert` close it.
        """
        from XRayNeRFMRML.registration import register_ct_to_xrays

        self.cancelRequested = False
        live = self.liveOverlay  # paused during the run (the run moves the transform and writes the DRR itself)
        if live is not None:
            self.stopLiveOverlay()

        def onProgress(p):
            keepGoing = progress(p) if progress is not None else True
            return bool(keepGoing) and not self.cancelRequested

        views = [(xrayNode, drrNode, cameraModelNode, sliceLogic or self.defaultSliceLogic(), self.overlay)]
        if secondXray is not None:
            secondView = secondSliceLogic or self.defaultSliceLogic("Yellow")
            views.append((secondXray, secondDrrNode, secondCameraModelNode, secondView, self.secondOverlay))
        xrays, drrs, models, sliceLogics, overlays = (list(column) for column in zip(*views))
        try:
            out = register_ct_to_xrays(
                ctNode,
                xrays,
                transformNode,
                drr_nodes=drrs,
                camera_model_nodes=models,
                slice_logics=sliceLogics,
                overlays=overlays,
                opacity=opacity,
                preview_every=previewEvery,
                progress=onProgress,
                on_preview=lambda: slicer.app.processEvents(),
                **engineOptions,
            )
        finally:
            if live is not None:  # resumed on the same nodes, with the same timers
                self._live = live.restarted()
        self._pending = out
        logging.info(f"XRayNeRF registration: loss {out.initial_loss:.4f} -> {out.loss:.4f}, {out.result.iterations} iterations")
        return out

    def accept(self) -> None:
        """Keep the registered transform; the overlays stay on screen (the previous views are forgotten)."""
        self._pending = None
        self.overlay.forget()
        self.secondOverlay.forget()

    @staticmethod
    def registrationReport(out) -> str:
        """One status line: the loss before -> after the run and, with several X-rays, each one's loss at the
        registered pose (their sum is the loss)."""
        state = _("cancelled, best pose kept") if out.cancelled else _("done")
        text = _("Registration {state}: loss {a:.4f} -> {b:.4f}.").format(state=state, a=out.initial_loss, b=out.loss)
        if len(out.xray_nodes) > 1:
            losses = ", ".join(f"'{node.GetName()}' {loss:.4f}" for node, loss in zip(out.xray_nodes, out.view_losses))
            text += " " + _("Per X-ray: {losses}.").format(losses=losses)
        return text

    def revert(self) -> None:
        """Restore the transform as it was before the last registration, and the slice view as it was
        before the overlay."""
        from XRayNeRFMRML.registration import restore_transform

        if self._pending is None:
            raise RuntimeError("nothing to revert: run a registration first")
        restore_transform(self._pending)
        self._pending = None
        self.restoreView()

    def registerUsingParameterNode(self, p, progress: Optional[Callable] = None, sliceLogic=None, secondSliceLogic=None, **engineOptions):
        """Adapter: read the parameter node, register (with ``p.biplane`` to the X-ray and the second X-ray at once),
        store the DRR and C-arm nodes back on it."""
        reason = self.whyCannotRegister(p) or self.whyCannotRegisterBiplane(p)
        if reason is not None:
            raise ValueError(reason)
        for key, value in self.engineOptions(p).items():  # the panel's options; explicit keywords win
            engineOptions.setdefault(key, value)
        if p.useMnerf and engineOptions.get("settings") is not None:  # the DRR source, fitted before the run
            engineOptions["settings"] = dataclasses.replace(
                engineOptions["settings"], drr_source=self.fitMnerfUsingParameterNode(p, progress)
            )
        out = self.register(
            p.inputVolume,
            p.xrayVolume,
            p.transform,
            p.outputDRR,
            p.cameraModel,
            sliceLogic=sliceLogic,
            opacity=p.overlayOpacity,
            previewEvery=p.previewEvery,
            progress=progress,
            secondXray=p.secondXray if p.biplane else None,
            secondDrrNode=p.secondOutputDRR,
            secondCameraModelNode=p.secondCameraModel,
            secondSliceLogic=secondSliceLogic,
            **engineOptions,
        )
        p.outputDRR, p.cameraModel = out.drr_node, out.camera_model_node
        if p.biplane:
            p.secondOutputDRR, p.secondCameraModel = out.drr_nodes[1], out.camera_model_nodes[1]
        return out


class XRayNeRFRegistrationTest(ScriptedLoadableModuleTest):
    """Self-test on tiny scenes built in code (Slicer and slicer-core)."""

    def setUp(self):
        slicer.mrmlScene.Clear(0)

    def runTest(self):
        self.setUp()
        self.test_OverlayCompositeAndPixels()
        self.setUp()
        self.test_RegistrationRecoversShift()
        self.setUp()
        self.test_BiplaneRegistration()
        self.setUp()
        self.test_FailureLeavesScene()
        self.setUp()
        self.test_ViewRestoredAfterFailureAndRevert()
        self.setUp()
        self.test_ParameterNode()
        self.setUp()
        self.test_LiveOverlayFollowsTransform()
        self.setUp()
        self.test_LandmarkStart()

    # -- helpers -------------------------------------------------------------------------------------
    @staticmethod
    def _cameras(cols=8, rows=6, spacing=2.0, primary=20.0, secondary=10.0, iso=(1.0, 2.0, 3.0)):
        import torch

        from XRayNeRFLib.geometry import Cameras

        return Cameras.carm(
            primary,
            secondary,
            sid_mm=500.0,
            sdd_mm=800.0,
            size_px=(cols, rows),
            pixel_spacing_mm=spacing,
            isocenter_ras=iso,
            dtype=torch.float64,
        )

    @staticmethod
    def _imageNode(name, image, cameras):
        from XRayNeRFMRML.nodes import write_image_node

        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
        write_image_node(node, image, cameras)
        return node

    @staticmethod
    def _sliceLogic(name: str = "Red"):
        """The slice view ``name``'s logic in Slicer; a new one on slicer-core (no layout manager)."""
        appLogic = slicer.app.applicationLogic()
        logic = appLogic.GetSliceLogicByLayoutName(name) if hasattr(appLogic, "GetSliceLogicByLayoutName") else None
        if logic is None:
            logic = slicer.vtkMRMLSliceLogic()
            logic.SetMRMLApplicationLogic(appLogic)
            appLogic.GetSliceLogics().AddItem(logic)
            logic.SetMRMLScene(slicer.mrmlScene)
            logic.AddSliceNode(name)
        return logic

    @staticmethod
    def _blended(sliceLogic) -> np.ndarray:
        """The slice view's blended RGBA image, row 0 at the top of the view: (H, W, 4) uint8."""
        from vtk.util.numpy_support import vtk_to_numpy

        producer = sliceLogic.GetImageDataConnection().GetProducer()
        producer.Update()
        image = producer.GetOutputDataObject(0)
        w, h, _ = image.GetDimensions()
        return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1)[::-1].copy()

    # -- tests -------------------------------------------------------------------------------------------
    def test_OverlayCompositeAndPixels(self):
        """Composite state (X-ray background, DRR foreground at 0.5), slice on the detector plane, and the
        blended pixels: X-ray grey where the DRR is 0, 50/50 mix with the green DRR elsewhere."""
        self.delayDisplay("overlay")
        cams = self._cameras()
        W, H = 8, 6
        xray = (np.arange(H * W).reshape(H, W) / (H * W - 1)).astype(np.float32)
        drr = np.zeros((H, W), np.float32)
        drr[1:4, 2:6] = np.linspace(0.5, 1.0, 12).reshape(3, 4)
        xrayNode = self._imageNode("xray", xray, cams)
        drrNode = self._imageNode("drr", drr, cams)
        sliceLogic = self._sliceLogic()
        sliceNode = sliceLogic.GetSliceNode()
        sliceNode.SetDimensions(W, H, 1)
        logic = XRayNeRFRegistrationLogic()
        composite = logic.showOverlay(xrayNode, drrNode, sliceLogic, opacity=0.5)
        self.assertEqual(composite.GetBackgroundVolumeID(), xrayNode.GetID())
        self.assertEqual(composite.GetForegroundVolumeID(), drrNode.GetID())
        self.assertAlmostEqual(composite.GetForegroundOpacity(), 0.5)
        d = drrNode.GetDisplayNode()
        self.assertTrue(d.GetApplyThreshold())
        self.assertGreater(d.GetLowerThreshold(), 0.0)
        # slice plane = detector plane: normal along the beam, centre at the detector centre
        m = slicer.util.arrayFromVTKMatrix(sliceNode.GetSliceToRAS())
        normal, centre = m[:3, 2], m[:3, 3]
        beam = cams.principal_directions()[0].numpy()
        np.testing.assert_allclose(normal, -beam, atol=1e-9)
        np.testing.assert_allclose(centre, cams.detector_centers()[0].numpy(), atol=1e-6)
        # pixels: fixed windows so that grey = 255 * value
        for node in (xrayNode, drrNode):
            node.GetDisplayNode().SetAutoWindowLevel(0)
            node.GetDisplayNode().SetWindowLevel(1.0, 0.5)
            node.GetDisplayNode().SetInterpolate(0)
        rgba = self._blended(sliceLogic).astype(float)
        self.assertEqual(rgba.shape, (H, W, 4))
        grey = 255.0 * xray
        off = drr == 0
        for c in range(3):  # X-ray alone where the DRR is transparent
            np.testing.assert_allclose(rgba[..., c][off], grey[off], atol=1.01)
        green = 255.0 * drr  # green LUT: (0, g, 0)
        np.testing.assert_allclose(rgba[..., 0][~off], 0.5 * grey[~off], atol=1.01)
        np.testing.assert_allclose(rgba[..., 1][~off], 0.5 * grey[~off] + 0.5 * green[~off], atol=1.51)
        # without the foreground the view is the X-ray everywhere
        composite.SetForegroundVolumeID(None)
        plain = self._blended(sliceLogic).astype(float)
        np.testing.assert_allclose(plain[..., 1], grey, atol=1.01)

    def _registrationScene(self, shiftMm):
        import torch

        from XRayNeRFLib.render import render
        from XRayNeRFLib.volume import Volume, hu_to_mu

        k = np.arange(20) - 9.5
        zz, yy, xx = np.meshgrid(k, k, k, indexing="ij")
        hu = -1000.0 + 1800.0 * np.exp(-((xx - 3) ** 2 + (yy + 2) ** 2 + zz**2) / 18.0)
        hu += 1200.0 * np.exp(-((xx + 4) ** 2 + (yy - 3) ** 2 + (zz - 4) ** 2) / 8.0)
        hu += 900.0 * (np.abs(xx) < 6) * (np.abs(zz + 5) < 2)
        affine = np.diag([3.0, 3.0, 3.0, 1.0])
        affine[:3, 3] = -28.5
        ct = XRayNeRFRegistrationTest._ctNode(hu, affine)
        cams = self._cameras(cols=32, rows=32, spacing=3.0, primary=30.0, secondary=0.0, iso=(0.0, 0.0, 0.0))
        truth = Volume(hu_to_mu(torch.tensor(hu)), torch.tensor(affine), "mu")
        xray = render(truth, cams, renderer="siddon")[0].numpy()
        xrayNode = self._imageNode("xray", xray, cams)
        transform = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "CT pose")
        start = np.eye(4)
        start[:3, 3] = shiftMm
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(start))
        return ct, xrayNode, transform

    @staticmethod
    def _secondXray(ct, name="lateral"):
        """A second X-ray of the CT as it is now (its true pose: before it goes under its transform) from RAO 60, orthogonal to
        :meth:`_registrationScene`'s LAO 30, on another grid (28 x 24 px of 3.5 mm), rendered with Siddon."""
        import torch

        from XRayNeRFLib.render import render
        from XRayNeRFLib.volume import as_mu
        from XRayNeRFMRML.nodes import volume_from_node

        cams = XRayNeRFRegistrationTest._cameras(cols=28, rows=24, spacing=3.5, primary=-60.0, secondary=0.0, iso=(0.0, 0.0, 0.0))
        image = render(as_mu(volume_from_node(ct)), cams.to(dtype=torch.float32), renderer="siddon")[0].numpy()
        return XRayNeRFRegistrationTest._imageNode(name, image, cams)

    @staticmethod
    def _ctNode(hu, affine):
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(hu, dtype=np.float32))
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(affine))
        node.CreateDefaultDisplayNodes()
        return node

    def test_RegistrationRecoversShift(self):
        """A CT shifted by 4 mm (in the detector plane) is brought back: the transform's translation
        shrinks below 1 mm, the overlay was updated live, Revert restores the start."""
        self.delayDisplay("registration with live overlay")
        shift = np.array([4.0, 0.0, -3.0])  # mostly in the detector plane (beam at LAO 30: (-0.5, 0.87, 0))
        ct, xrayNode, transform = self._registrationScene(shift)
        logic = XRayNeRFRegistrationLogic()
        seen = []
        out = logic.register(
            ct,
            xrayNode,
            transform,
            sliceLogic=self._sliceLogic(),
            previewEvery=5,
            progress=lambda p: seen.append(p.done) is None,
            loss="ncc",
            levels=(2, 1),
            max_iterations=(20, 10),
            learning_rate=(1.0, 0.5),
            renderer="trilinear",
        )
        after = slicer.util.arrayFromTransformMatrix(transform)
        self.assertLess(out.loss, out.initial_loss)
        beam = np.array([-0.5, np.sqrt(3) / 2, 0.0])
        inPlane = after[:3, 3] - np.dot(after[:3, 3], beam) * beam
        self.assertLess(float(np.linalg.norm(inPlane)), 1.0, f"translation left: {after[:3, 3]}")
        self.assertGreater(out.overlay_updates, 2)
        self.assertTrue(seen)
        self.assertEqual(ct.GetTransformNodeID(), transform.GetID())
        self.assertIsNotNone(out.drr_node.GetImageData())
        logic.revert()
        np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform)[:3, 3], shift, atol=1e-9)

    def test_BiplaneRegistration(self):
        """The CT 6 mm off along the first X-ray's beam (LAO 30), where that view sees it only through magnification:
        registered to both X-rays (the second at RAO 60, in the Yellow view) the transform's translation comes back
        under 1 mm (half a detector pixel at the isocentre); each X-ray has its DRR and loss; Revert restores the
        transform and the Yellow view."""
        self.delayDisplay("biplane registration")
        beam = np.array([-0.5, np.sqrt(3) / 2, 0.0])
        ct, xrayNode, transform = self._registrationScene(np.zeros(3))
        second = self._secondXray(ct)
        start = np.eye(4)
        start[:3, 3] = 6.0 * beam + np.array([0.0, 0.0, 2.0])
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(start))
        yellow = self._sliceLogic("Yellow")
        background = yellow.GetSliceCompositeNode().GetBackgroundVolumeID()
        logic = XRayNeRFRegistrationLogic()
        out = logic.register(
            ct,
            xrayNode,
            transform,
            sliceLogic=self._sliceLogic(),
            secondXray=second,
            secondSliceLogic=yellow,
            loss="ncc",
            levels=(2, 1),
            max_iterations=(40, 20),
            learning_rate=(1.0, 0.5),
            renderer="trilinear",
            num_threads=1,
        )
        left = slicer.util.arrayFromTransformMatrix(transform)[:3, 3]
        self.assertLess(float(np.linalg.norm(left)), 1.0, f"translation left: {left}")
        self.assertEqual(len(out.view_losses), 2)
        self.assertEqual(yellow.GetSliceCompositeNode().GetForegroundVolumeID(), out.drr_nodes[1].GetID())
        self.assertIn("'lateral'", logic.registrationReport(out))
        logic.revert()
        np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), start, atol=1e-12)
        self.assertEqual(yellow.GetSliceCompositeNode().GetBackgroundVolumeID(), background)

    def test_FailureLeavesScene(self):
        """An X-ray without camera, or a CT that does not overlap the X-ray: error, scene unchanged."""
        self.delayDisplay("bad input")
        ct, xrayNode, transform = self._registrationScene(np.zeros(3))
        bare = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no camera")
        slicer.util.updateVolumeFromArray(bare, np.ones((1, 4, 4), np.float32))
        logic = XRayNeRFRegistrationLogic()
        sliceLogic = self._sliceLogic()
        n = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(ValueError):
            logic.register(ct, bare, transform, sliceLogic=sliceLogic)
        far = np.eye(4)
        far[:3, 3] = (0.0, 0.0, 400.0)  # CT moved 40 cm towards the head: outside the X-ray
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(far))
        with self.assertRaises(ValueError):
            logic.register(ct, xrayNode, transform, sliceLogic=sliceLogic, levels=(2,), max_iterations=5)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), n)
        self.assertIsNone(ct.GetTransformNodeID())
        np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), far)
        self.assertFalse(logic.hasPendingResult())

    @staticmethod
    def _viewState(sliceLogic):
        c, n = sliceLogic.GetSliceCompositeNode(), sliceLogic.GetSliceNode()
        m = slicer.util.arrayFromVTKMatrix(n.GetSliceToRAS())
        return dict(
            background=c.GetBackgroundVolumeID(),
            foreground=c.GetForegroundVolumeID(),
            label=c.GetLabelVolumeID(),
            opacity=round(c.GetForegroundOpacity(), 9),
            orientation=n.GetOrientationString(),
            sliceToRAS=np.round(m, 9).ravel().tolist(),
            fov=tuple(round(v, 9) for v in n.GetFieldOfView()),
            origin=tuple(round(v, 9) for v in n.GetXYZOrigin()),
        )

    def test_ViewRestoredAfterFailureAndRevert(self):
        """The user's slice view (layers, opacity, sagittal orientation, zoom) is the same after a failed
        registration and after a revert as before; during the run it showed the overlay."""
        self.delayDisplay("slice view restored")
        ct, xrayNode, transform = self._registrationScene(np.array([2.0, 0.0, 0.0]))
        other = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "user foreground")
        slicer.util.updateVolumeFromArray(other, np.ones((2, 3, 4), np.float32))
        sliceLogic = self._sliceLogic()
        composite, sliceNode = sliceLogic.GetSliceCompositeNode(), sliceLogic.GetSliceNode()
        composite.SetBackgroundVolumeID(ct.GetID())
        composite.SetForegroundVolumeID(other.GetID())
        composite.SetForegroundOpacity(0.3)
        sliceNode.SetOrientation("Sagittal")
        sliceNode.SetFieldOfView(123.0, 77.0, 1.0)
        sliceNode.SetXYZOrigin(4.0, -2.0, 0.0)
        sliceNode.UpdateMatrices()
        before = self._viewState(sliceLogic)
        self.assertEqual(before["orientation"], "Sagittal")
        logic = XRayNeRFRegistrationLogic()
        during = []

        def failing(p):
            during.append(self._viewState(sliceLogic))
            raise RuntimeError("simulated failure in the optimiser")

        n = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(RuntimeError):
            logic.register(ct, xrayNode, transform, sliceLogic=sliceLogic, progress=failing, levels=(2,), max_iterations=3)
        self.assertTrue(during)
        self.assertEqual(during[0]["background"], xrayNode.GetID())
        self.assertNotEqual(during[0]["orientation"], "Sagittal")
        self.assertEqual(self._viewState(sliceLogic), before)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), n)
        # a registration stopped by the user keeps its best pose and the overlay; Revert gives the view back
        result = logic.register(
            ct, xrayNode, transform, sliceLogic=sliceLogic, progress=lambda p: False, levels=(2,), max_iterations=3, loss="ncc"
        )
        self.assertTrue(result.cancelled)
        self.assertEqual(composite.GetBackgroundVolumeID(), xrayNode.GetID())
        self.assertEqual(composite.GetForegroundVolumeID(), result.drr_node.GetID())
        logic.revert()
        self.assertEqual(self._viewState(sliceLogic), before)
        # Accept keeps the overlay on screen
        logic.register(ct, xrayNode, transform, sliceLogic=sliceLogic, levels=(2,), max_iterations=2, loss="ncc")
        logic.accept()
        self.assertEqual(composite.GetBackgroundVolumeID(), xrayNode.GetID())
        self.assertFalse(logic.restoreView())

    def test_ParameterNode(self):
        """The adapter says why Apply is disabled, validates ranges and choices, registers with the chosen
        similarity into the nodes it names (stored back on the parameter node), and reuses them."""
        self.delayDisplay("parameter node")
        logic = XRayNeRFRegistrationLogic()
        p = logic.getParameterNode()
        self.assertEqual(logic.whyCannotRegister(p), "Select the CT volume.")
        with self.assertRaises(ValueError):
            p.similarity = "ssd"
        with self.assertRaises(ValueError):
            p.overlayOpacity = 1.5
        with self.assertRaises(ValueError):
            p.previewEvery = 0
        ct, xrayNode, transform = self._registrationScene(np.array([2.0, 0.0, -1.0]))
        p.inputVolume = ct
        self.assertIn("X-ray", logic.whyCannotRegister(p))
        p.xrayVolume = xrayNode
        self.assertIn("transform", logic.whyCannotRegister(p))
        p.transform = transform
        self.assertIsNone(logic.whyCannotRegister(p))
        p.similarity, p.previewEvery, p.overlayOpacity = "ncc", 2, 0.25
        sliceLogic = self._sliceLogic()
        out = logic.registerUsingParameterNode(p, sliceLogic=sliceLogic, levels=(2,), max_iterations=4)
        self.assertEqual(out.result.loss_name, "ncc")
        self.assertIs(p.outputDRR, out.drr_node)
        self.assertIs(p.cameraModel, out.camera_model_node)
        self.assertAlmostEqual(sliceLogic.GetSliceCompositeNode().GetForegroundOpacity(), 0.25)
        self.assertTrue(logic.hasPendingResult())
        logic.accept()
        again = logic.registerUsingParameterNode(p, sliceLogic=sliceLogic, levels=(2,), max_iterations=2)
        self.assertEqual(again.drr_node.GetID(), out.drr_node.GetID())
        self.assertEqual(again.camera_model_node.GetID(), out.camera_model_node.GetID())
        carms = [m for m in slicer.util.getNodesByClass("vtkMRMLModelNode") if m.GetName().endswith("C-arm")]
        self.assertEqual([m.GetID() for m in carms], [out.camera_model_node.GetID()])

    @staticmethod
    def _movedDRR(ct, xrayNode, motion):
        """The engine's trilinear DRR (H, W) of the CT's voxels placed by ``motion @ IJKToRAS``."""
        import torch

        from XRayNeRFLib.render import render
        from XRayNeRFLib.volume import Volume, hu_to_mu
        from XRayNeRFMRML.nodes import cameras_from_node, ijk_to_ras

        hu = torch.from_numpy(np.array(slicer.util.arrayFromVolume(ct), dtype=np.float64))
        volume = Volume(hu_to_mu(hu), torch.from_numpy(motion @ ijk_to_ras(ct)), "mu")
        return render(volume, cameras_from_node(xrayNode), renderer="trilinear")[0].numpy()

    def test_LiveOverlayFollowsTransform(self):
        """Live overlay (manual timers): one transform change -> one update with the engine's DRR at that pose;
        a burst of changes -> one update; removing the X-ray stops it (no update, nothing scheduled)."""
        from XRayNeRFMRML.throttle import ManualTimer

        self.delayDisplay("live overlay under manual alignment")
        ct, xrayNode, transform = self._registrationScene(np.zeros(3))
        timers = []

        def makeTimer(callback):
            timers.append(ManualTimer(callback))
            return timers[-1]

        logic = XRayNeRFRegistrationLogic()
        live = logic.startLiveOverlay(ct, xrayNode, transform, sliceLogic=self._sliceLogic(), makeTimer=makeTimer, idle_s=60.0)
        throttle = timers[0]
        motion = np.eye(4)
        motion[:3, 3] = (4.0, -3.0, 2.0)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(motion))
        self.assertEqual(live.updates, [])
        self.assertTrue(throttle.fire())
        self.assertEqual(live.updates, [False])
        expected = self._movedDRR(ct, xrayNode, motion)
        np.testing.assert_allclose(slicer.util.arrayFromVolume(live.drr_node)[0], expected, rtol=1e-4, atol=1e-4 * expected.max())
        timers[1].fire()  # (not armed: a single change renders full size once)
        for k in range(10):
            motion[0, 3] = 4.0 + 0.5 * k
            transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(motion))
        self.assertEqual(len(throttle.starts), 2)
        throttle.fire()
        self.assertEqual(len(live.updates), 2)
        slicer.mrmlScene.RemoveNode(xrayNode)
        self.assertFalse(live.active)
        self.assertIsNone(logic.liveOverlay)
        transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(np.eye(4)))
        self.assertFalse(throttle.fire())
        self.assertEqual(len(live.updates), 2)

    def test_LandmarkStart(self):
        """Exact landmark pairs (markups on the CT and on the X-ray's detector) move the CT's transform to the true
        motion; three pairs raise LandmarkError and change nothing."""
        import torch

        from XRayNeRFLib.errors import LandmarkError
        from XRayNeRFMRML.nodes import cameras_from_node, ras_from_ijk_world

        self.delayDisplay("landmark start")
        ct, xrayNode, transform = self._registrationScene(np.zeros(3))
        points = np.array([[-18.0, -12, 10], [15, -16, -8], [12, 17, 14], [-14, 15, -12], [3, -2, 19], [-6, 4, -17]])
        truth = np.eye(4)
        c, s = np.cos(np.deg2rad(5.0)), np.sin(np.deg2rad(5.0))
        truth[:2, :2] = [[c, -s], [s, c]]
        truth[:3, 3] = (6.0, -4.0, 5.0)
        moved = (truth @ np.c_[points, np.ones(6)].T).T[:, :3]
        uv = cameras_from_node(xrayNode).project(torch.from_numpy(moved)[None])[0][0].numpy()
        onDetector = (ras_from_ijk_world(xrayNode) @ np.c_[uv, np.zeros(6), np.ones(6)].T).T[:, :3]

        def markups(name, pts):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
            for p in pts:
                node.AddControlPointWorld(*[float(v) for v in p])
            return node

        logic = XRayNeRFRegistrationLogic()
        few = markups("CT (3)", points[:3]), markups("X-ray (3)", onDetector[:3])
        n = slicer.mrmlScene.GetNumberOfNodes()
        with self.assertRaises(LandmarkError) as error:
            logic.applyLandmarkStart(ct, xrayNode, transform, *few)
        self.assertEqual(error.exception.reason, "too-few")
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), n)
        self.assertIsNone(ct.GetTransformNodeID())
        start = logic.applyLandmarkStart(ct, xrayNode, transform, markups("CT", points), markups("X-ray", onDetector))
        np.testing.assert_allclose(slicer.util.arrayFromTransformMatrix(transform), truth, atol=1e-6)
        self.assertLess(start.pose.rms_px, 1e-6)
        self.assertEqual(ct.GetTransformNodeID(), transform.GetID())
