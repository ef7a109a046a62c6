"""Packaging and shared pieces of the Slicer extension: the Widget mixin (XRayNeRFMRML/widgets.py) on a
real MRML scene with a stand-in .ui, Resources/requirements.txt and engine.missing_requirements, the
SampleData registration and checksums, the ExtensionsIndex entry and the top-level CMake metadata."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Testing" / "Python"))

slicer = pytest.importorskip("slicer", reason="pip install slicer-core (the Qt-free core of 3D Slicer)")
import slicer_harness  # noqa: E402


@pytest.fixture
def core():
    return slicer_harness.new_scene()


@pytest.fixture(scope="module")
def drr_module():
    return slicer_harness.load_module("XRayNeRFDRR")


# -- Widget mixin ----------------------------------------------------------------------------------------
class _Widget(types.SimpleNamespace):
    """Stand-in for a Qt widget: plain attributes (enabled, text, value, ...)."""

    def setVisible(self, visible):
        self.visible = bool(visible)


def _fake_ui():
    return types.SimpleNamespace(
        applyButton=_Widget(enabled=False, text="Apply", toolTip=""),
        progressBar=_Widget(value=0, visible=False),
        statusLabel=_Widget(text=""),
    )


def _drr_widget(drr_module):
    widget = drr_module.XRayNeRFDRRWidget(None)
    widget.ui = _fake_ui()  # setup() would load the .ui through Qt
    widget.logic = drr_module.XRayNeRFDRRLogic()
    widget.initializeParameterNode()
    return widget


def _ct(drr_module):
    return drr_module.XRayNeRFDRRTest._ctNode(np.zeros((6, 6, 6)), np.eye(4))


def test_widget_status_follows_parameter_node(core, drr_module):
    """Apply is disabled with the reason in the status line; choosing a CT (a parameter-node change seen
    through the mixin's observer) enables it; a bad distance disables it again with its reason."""
    widget = _drr_widget(drr_module)
    ui = widget.ui
    assert not ui.applyButton.enabled and ui.statusLabel.text == "Select an input CT volume."
    assert ui.applyButton.toolTip == "Select an input CT volume."
    widget._parameterNode.inputVolume = _ct(drr_module)
    assert ui.applyButton.enabled and ui.statusLabel.text == "Ready." and ui.applyButton.toolTip == "Render the DRR"
    widget._parameterNode.sourceIsocenterDistanceMm = 5000.0
    assert not ui.applyButton.enabled and "source-detector distance" in ui.statusLabel.text
    widget.exit()  # observer removed: changes no longer reach the GUI
    widget._parameterNode.sourceIsocenterDistanceMm = 300.0
    assert not ui.applyButton.enabled


def test_widget_apply_renders_and_resets(core, drr_module):
    widget = _drr_widget(drr_module)
    widget._parameterNode.inputVolume = _ct(drr_module)
    widget._parameterNode.detectorColumns, widget._parameterNode.detectorRows = 8, 6
    states = []
    slicer.app.processEvents = lambda *a: states.append((widget.ui.applyButton.text, widget.ui.progressBar.visible))
    try:
        widget.onApplyButton()
    finally:
        del slicer.app.processEvents  # back to the class's no-op
    drr = widget._parameterNode.outputVolume
    assert drr is not None and slicer.util.arrayFromVolume(drr).shape == (1, 6, 8)
    assert states and states[0] == ("Cancel", True)  # while running: Cancel, progress shown
    assert widget.ui.applyButton.text == "Apply" and not widget.ui.progressBar.visible and not widget.running
    assert widget.ui.statusLabel.text == f"Rendered '{drr.GetName()}'."
    assert widget.ui.progressBar.value == 0 and widget.ui.applyButton.enabled


def test_widget_cancel_click_stops_and_leaves_scene(core, drr_module):
    """Clicking Apply (now Cancel) during the run: the engine stops, no node is added, Apply comes back."""
    widget = _drr_widget(drr_module)
    widget._parameterNode.inputVolume = _ct(drr_module)
    widget._parameterNode.detectorColumns, widget._parameterNode.detectorRows = 64, 64
    widget.PROGRESS_INTERVAL_S = 0.0
    clicks = []

    def click(*args):  # the user presses the button while events are processed
        if not clicks:
            clicks.append(widget.ui.applyButton.text)
            widget.onApplyButton()

    n = slicer.mrmlScene.GetNumberOfNodes()
    slicer.app.processEvents = click
    try:
        assert widget.onApplyButton() is None
    finally:
        del slicer.app.processEvents
    assert clicks == ["Cancel"]
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    assert widget.ui.statusLabel.text == "Cancelled: nothing was changed."
    assert widget.ui.applyButton.text == "Apply" and widget.ui.applyButton.enabled and not widget.running


def test_widget_failure_says_why_and_resets(core, drr_module):
    widget = _drr_widget(drr_module)
    ct = _ct(drr_module)
    widget._parameterNode.inputVolume = ct
    ct.SetAndObserveTransformNodeID(slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode").GetID())
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(ValueError, match="Harden transform"):
        widget.onApplyButton()
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    assert widget.ui.statusLabel.text.startswith("Failed to render the DRR.") and "Harden" in widget.ui.statusLabel.text
    assert widget.ui.applyButton.text == "Apply" and not widget.ui.progressBar.visible and not widget.running


def test_progress_is_throttled(core, drr_module):
    from XRayNeRFLib.progress import Progress

    widget = _drr_widget(drr_module)
    widget.PROGRESS_INTERVAL_S = 3600.0
    widget._lastProgressTime = 0.0
    assert widget.progressCallback(Progress(1, 10, "step 1"))  # first update goes through
    assert widget.ui.progressBar.value == 10 and widget.ui.statusLabel.text == "step 1"
    assert widget.progressCallback(Progress(5, 10, "step 5"))  # within the interval: skipped
    assert widget.ui.progressBar.value == 10
    widget.logic.cancelRequested = True
    assert not widget.progressCallback(Progress(10, 10, "done"))  # the last one always shows
    assert widget.ui.progressBar.value == 100 and widget.ui.statusLabel.text == "done"


def test_every_module_ui_has_the_mixin_widgets():
    """widgets.py uses applyButton, progressBar and statusLabel: every module that uses the mixin has them."""
    import re
    import xml.etree.ElementTree as ET

    used = set(re.findall(r"self\.ui\.(\w+)", (REPO / "XRayNeRF" / "XRayNeRFMRML" / "widgets.py").read_text()))
    assert used == {"applyButton", "progressBar", "statusLabel"}
    users = 0
    for module in sorted((REPO / "XRayNeRF").iterdir()):
        source = module / f"{module.name}.py"
        if not source.is_file() or "XRayNeRFWidgetMixin" not in source.read_text():
            continue
        users += 1
        names = {w.get("name") for w in ET.parse(REPO / "Resources" / "UI" / f"{module.name}.ui").getroot().iter("widget")}
        assert used <= names, f"{module.name}.ui lacks {sorted(used - names)}"
    assert users >= 2
