"""Widget behaviour shared by the XRayNeRF modules (the scripted-module template's boilerplate, once).

:class:`XRayNeRFWidgetMixin` is mixed into a module's ``ScriptedLoadableModuleWidget`` subclass::

    class XRayNeRFDRRWidget(XRayNeRFWidgetMixin, ScriptedLoadableModuleWidget):
        def __init__(self, parent=None):
            ScriptedLoadableModuleWidget.__init__(self, parent)
            XRayNeRFWidgetMixin.__init__(self)

        def setup(self):
            ScriptedLoadableModuleWidget.setup(self)
            self.setupWidget("XRayNeRFDRR.ui", XRayNeRFDRRLogic())   # loads Resources/UI/<file>
            ...                                                      # module-specific connections
            self.initializeParameterNode()

        def whyCannotApply(self):                                    # None, or the status-line reason
            return self.logic.whyCannotRender(self._parameterNode)

        def onApplyButton(self):
            self.runApply(_("Failed to render the DRR."), lambda progress: ...)

It provides: the parameter node's life cycle (created on enter, GUI bound with ``connectGui``, released on
scene close, a ModifiedEvent observer that re-checks whether Apply can run); Apply that becomes Cancel
while running (the Logic's ``cancelRequested`` flag); a progress bar and a status line updated at most
``PROGRESS_INTERVAL_S`` apart (~10 Hz) with ``slicer.app.processEvents()`` so that Cancel can be clicked;
errors shown through ``slicer.util.tryWithErrorDisplay`` (only logged in testing mode, then re-raised);
the engine's dependencies installed on demand (``engine.ensure_engine``) before the first run.

The .ui must hold ``applyButton`` (QPushButton), ``progressBar`` (QProgressBar) and ``statusLabel``
(QLabel); the module's Logic must have a ``cancelRequested`` attribute. Nothing here imports qt or ctk, so
the mixin runs unchanged under the test harness (``Testing/Python/slicer_harness.py``) with a stand-in ``ui``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Optional

import slicer
import vtk
from slicer.util import VTKObservationMixin

try:  # Slicer's translation function; the harness provides a stand-in
    from slicer.i18n import tr as _
except ImportError:  # pragma: no cover - old Slicer

    def _(text):
        return text


class XRayNeRFWidgetMixin(VTKObservationMixin):
    """Parameter node, Apply <-> Cancel, progress bar and status line for an XRayNeRF module widget."""

    PROGRESS_INTERVAL_S = 0.1  # GUI updates during a run at most this often (~10 Hz)

    def __init__(self) -> None:
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.ui = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._running = False
        self._lastProgressTime = None  # None: nothing shown yet (the next update goes through)

    # -- to override ----------------------------------------------------------------------------------
    def whyCannotApply(self) -> Optional[str]:
        """None when Apply can run, else the reason shown in the status line and the button's tooltip."""
        return None

    def applyToolTip(self) -> str:
        return _("Run")

    def onParameterNodeInitialized(self) -> None:
        """Called after the parameter node is (re)created: pick default inputs here."""

    def updateButtons(self, reason: Optional[str]) -> None:
        """Enable module-specific buttons; ``reason`` is :meth:`whyCannotApply`'s answer (not running)."""

    # -- set-up and life cycle ------------------------------------------------------------------------
    def setupWidget(self, uiFileName: str, logic) -> Any:
        """Load Resources/UI/<uiFileName> into the module panel, keep ``logic``, observe scene close,
        connect Apply. Call from ``setup()`` after ``ScriptedLoadableModuleWidget.setup(self)``."""
        from XRayNeRFMRML.engine import resource_path

        uiWidget = slicer.util.loadUI(resource_path("UI", uiFileName))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.progressBar.setVisible(False)
        self.logic = logic
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        return uiWidget

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.onParameterNodeInitialized()

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.checkCanApply)
            self.checkCanApply()

    # -- state ----------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._running

    def checkCanApply(self, caller=None, event=None) -> None:
        """Enable Apply (or say why not in the status line). Does nothing while a run is in progress."""
        if self._running:
            return
        reason = self.whyCannotApply()
        self.ui.applyButton.enabled = reason is None
        self.ui.applyButton.toolTip = reason or self.applyToolTip()
        self.ui.statusLabel.text = reason or _("Ready.")
        self.updateButtons(reason)

    def progressCallback(self, progress) -> bool:
        """The engine's progress callback: updates the bar and status line (throttled), lets Qt handle
        events (the Cancel click), returns False once Cancel was pressed."""
        now = time.monotonic()
        final = progress.total > 0 and progress.done >= progress.total
        if final or self._lastProgressTime is None or now - self._lastProgressTime >= self.PROGRESS_INTERVAL_S:
            self._lastProgressTime = now
            self.ui.progressBar.value = int(round(100 * progress.fraction))
            if progress.message:
                self.ui.statusLabel.text = progress.message
            slicer.app.processEvents()
        return not self.logic.cancelRequested

    def _setRunning(self, running: bool) -> None:
        self._running = running
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        self.ui.applyButton.toolTip = _("Stop the run (the best result so far is kept)") if running else self.applyToolTip()
        self.ui.progressBar.value = 0
        self.ui.progressBar.setVisible(running)
        if running:
            self.ui.applyButton.enabled = True
            self.updateButtons(_("Running."))

    def runApply(self, errorMessage: str, work: Callable[[Callable], Any], doneMessage: Optional[Callable[[Any], str]] = None):
        """Apply/Cancel: when a run is in progress, request its cancellation and return None. Otherwise
        install the engine if needed, switch Apply to Cancel, call ``work(progressCallback)`` and switch
        back whatever happens. Returns work's result; None when the engine raised ``Cancelled`` (the
        Logic left the scene as it was; the status line says so). Other errors: the status line gives
        the reason and ``tryWithErrorDisplay`` shows (Slicer) or logs (testing) and re-raises them.
        doneMessage(result) -> the status line after success."""
        if self._running:
            self.logic.cancelRequested = True
            self.ui.statusLabel.text = _("Cancelling...")
            return None
        with slicer.util.tryWithErrorDisplay(errorMessage):
            from XRayNeRFMRML.engine import ensure_engine

            try:
                ensure_engine()
            except Exception as error:  # torch or a package missing (or declined): say what to install
                self.ui.statusLabel.text = f"{errorMessage} {error}"
                raise
            from XRayNeRFLib.progress import Cancelled

            self.logic.cancelRequested = False
            self._lastProgressTime = None  # None: nothing shown yet (the next update goes through)
            self._setRunning(True)
            status = None  # the status line once the run is over (None: checkCanApply's)
            try:
                result = work(self.progressCallback)
                status = doneMessage(result) if doneMessage is not None else None
                return result
            except Cancelled:
                status = _("Cancelled: nothing was changed.")
                return None
            except Exception as error:
                status = f"{errorMessage} {error}"
                raise
            finally:  # whatever happened (an interrupt included): Apply back, buttons and status line
                self._setRunning(False)
                self.checkCanApply()
                if status is not None:
                    self.ui.statusLabel.text = status
