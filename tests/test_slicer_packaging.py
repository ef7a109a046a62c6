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


# -- requirements ----------------------------------------------------------------------------------------
def _engine():
    slicer_harness.install()
    sys.path.insert(0, str(REPO / "XRayNeRF"))
    from XRayNeRFMRML import engine

    return engine


def test_requirements_file_matches_pyproject():
    """Resources/requirements.txt lists the engine's runtime dependencies except torch, with pyproject's ranges."""
    import tomllib

    engine = _engine()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = sorted(d.replace(" ", "") for d in pyproject if not d.startswith("torch"))
    lines = [r.line.replace(" ", "") for r in engine.parse_requirements((REPO / "Resources" / "requirements.txt").read_text())]
    assert sorted(lines) == expected and expected
    assert engine.requirements_file() == REPO / "Resources" / "requirements.txt"


def test_parse_requirements():
    engine = _engine()
    reqs = engine.parse_requirements(
        "# comment\n\nnumpy>=1.23\npillow >= 9.1  # images\nSimpleITK>=2.2,<3\npydicom[codecs]~=3.0 ; python_version>'3.8'\nscipy\n"
    )
    assert [(r.name, r.import_name, r.minimum) for r in reqs] == [
        ("numpy", "numpy", (1, 23)),
        ("pillow", "PIL", (9, 1)),
        ("SimpleITK", "SimpleITK", (2, 2)),
        ("pydicom", "pydicom", (3, 0)),
        ("scipy", "scipy", None),
    ]
    assert reqs[1].line == "pillow >= 9.1" and reqs[3].line.startswith("pydicom[codecs]~=3.0")
    with pytest.raises(ValueError, match="line 2"):
        engine.parse_requirements("numpy\n??bad\n")
    assert engine._version_tuple("3.0rc1") == (3, 0) and engine._version_tuple("2.13.0+cpu") == (2, 13, 0)


def test_missing_requirements(tmp_path):
    """Not importable -> listed; older than the minimum -> listed; bundled without pip metadata -> kept."""
    import importlib.metadata

    engine = _engine()
    req = tmp_path / "requirements.txt"
    req.write_text("numpy>=1.23\npydicom>=3.0\npillow>=9\nSimpleITK>=2.2\n")
    present = {"numpy": "1.26.4", "pydicom": "2.4.0", "PIL": None, "SimpleITK": None}

    def find_spec(name):
        return object() if name in present else None

    def version_of(dist):
        v = {"numpy": "1.26.4", "pydicom": "2.4.0", "SimpleITK": "2.3.1"}.get(dist)
        if v is None:
            raise importlib.metadata.PackageNotFoundError(dist)
        return v

    assert engine.missing_requirements(req, find_spec, version_of) == ["torch", "pydicom>=3.0"]
    present.pop("PIL")
    present["torch"] = "2.13"
    assert engine.missing_requirements(req, find_spec, version_of) == ["pydicom>=3.0", "pillow>=9"]
    assert engine.missing_requirements() == []  # this environment has everything
    with pytest.raises(RuntimeError, match="reinstall"):
        engine.missing_requirements(tmp_path / "absent.txt")


def test_ensure_engine_confirms_once_and_never_in_testing(monkeypatch):
    engine = _engine()
    monkeypatch.setattr(engine, "missing_requirements", lambda: ["torch", "pydicom>=3.0"])
    monkeypatch.delenv("XRAYNERF_NO_INSTALL", raising=False)
    asked, installed = [], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None, **k: asked.append(text) or True)
    monkeypatch.setattr(slicer.util, "pip_install", lambda what: installed.append(what))
    # testing mode (the harness's slicer.app): no dialog, an error that says what to install
    with pytest.raises(RuntimeError, match="torch, pydicom>=3.0: install torch with the PyTorch module"):
        engine.ensure_engine()
    assert not asked and not installed
    # interactive: one confirmation listing everything, then torch through PyTorchUtils, the rest with pip
    monkeypatch.setattr(engine, "_testing", lambda: False)
    calls = []

    class _TorchLogic:
        def torchInstalled(self):
            return False

        def installTorch(self, askConfirmation=True):
            calls.append(askConfirmation)
            return "torch module"

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=_TorchLogic))
    engine.ensure_engine()
    assert len(asked) == 1 and "torch (through the PyTorch extension)" in asked[0] and "pydicom>=3.0" in asked[0]
    assert calls == [False] and installed == [["pydicom>=3.0"]]
    # declined: nothing installed, an error
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None, **k: False)
    with pytest.raises(RuntimeError, match="declined"):
        engine.ensure_engine()
    assert calls == [False] and installed == [["pydicom>=3.0"]]
