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


def test_widget_resets_after_an_interrupt(core, drr_module):
    """An exception that is no Exception (Ctrl-C in the Python console during a run) still gives Apply
    back: the widget's running state is reset in a ``finally``."""
    widget = _drr_widget(drr_module)
    widget._parameterNode.inputVolume = _ct(drr_module)

    def interrupted(progress):
        assert widget.running and widget.ui.applyButton.text == "Cancel"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        widget.runApply("Failed.", interrupted)
    assert not widget.running and widget.ui.applyButton.text == "Apply" and widget.ui.applyButton.enabled
    assert not widget.ui.progressBar.visible and widget.ui.statusLabel.text == "Ready."


def test_progress_is_throttled(core, drr_module):
    from XRayNeRFLib.progress import Progress

    widget = _drr_widget(drr_module)
    widget.PROGRESS_INTERVAL_S = 3600.0
    assert widget._lastProgressTime is None  # nothing shown yet
    assert widget.progressCallback(Progress(1, 10, "step 1"))  # first update goes through (even on a machine up < 1 h)
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

        def installTorch(
            self, askConfirmation=False, forceComputationBackend=None, torchVersionRequirement=None, torchvisionVersionRequirement=None
        ):  # PyTorchUtilsLogic's signature
            calls.append((askConfirmation, torchVersionRequirement))
            return "torch module"

    monkeypatch.setitem(sys.modules, "PyTorchUtils", types.SimpleNamespace(PyTorchUtilsLogic=_TorchLogic))
    engine.ensure_engine()
    assert len(asked) == 1 and "torch>=2.1 and torchvision (through the PyTorch extension" in asked[0] and "pydicom>=3.0" in asked[0]
    assert calls == [(False, ">=2.1")] and installed == [["pydicom>=3.0"]]
    # declined: nothing installed, an error
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None, **k: False)
    with pytest.raises(RuntimeError, match="declined"):
        engine.ensure_engine()
    assert calls == [(False, ">=2.1")] and installed == [["pydicom>=3.0"]]
    # without the PyTorch extension: the fallback pip-installs torch with the engine's range
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, title=None, **k: asked.append(text) or True)
    monkeypatch.setitem(sys.modules, "PyTorchUtils", None)  # import PyTorchUtils -> ImportError
    engine.ensure_engine()
    assert installed[-2:] == ["torch>=2.1", ["pydicom>=3.0"]] and len(asked) == 2


def test_widget_without_torch_says_what_to_install_and_changes_nothing(core, drr_module, monkeypatch):
    """Apply with torch missing (testing mode: nothing is installed): the error and the status line say to
    install torch with the PyTorch module; no node is added; Apply stays Apply."""
    from XRayNeRFMRML import engine

    widget = _drr_widget(drr_module)
    widget._parameterNode.inputVolume = _ct(drr_module)
    monkeypatch.setattr(engine, "missing_requirements", lambda: ["torch"])
    n = slicer.mrmlScene.GetNumberOfNodes()
    with pytest.raises(RuntimeError, match="install torch with the PyTorch module"):
        widget.onApplyButton()
    assert slicer.mrmlScene.GetNumberOfNodes() == n
    assert widget.ui.applyButton.text == "Apply" and not widget.running and not widget.ui.progressBar.visible
    assert "install torch with the PyTorch module" in widget.ui.statusLabel.text


def test_torch_requirement_matches_pyproject():
    import tomllib

    engine = _engine()
    torch_line = [d for d in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] if d.startswith("torch")]
    assert torch_line == ["torch" + engine.TORCH_REQUIREMENT]


# -- sample data -----------------------------------------------------------------------------------------
SAMPLE_DIR = REPO / "Resources" / "SampleData"


def _sampledata():
    _engine()
    from XRayNeRFMRML import sampledata

    return sampledata


def test_sample_checksums_match_files():
    sd = _sampledata()
    assert set(sd.CHECKSUMS) == {sd.CT_FILE, *sd.PROJECTIONS_FILES, *sd.FLUOROSCOPY_FILES}
    for name, checksum in sd.CHECKSUMS.items():
        assert sd.sha256(SAMPLE_DIR / name) == checksum, f"{name}: rebuild with scripts/make_sample_data.py and update CHECKSUMS"
        assert sd.verify(SAMPLE_DIR / name) == SAMPLE_DIR / name
    total = sum(p.stat().st_size for p in SAMPLE_DIR.iterdir())  # CT 1.1 MB, projections 0.5 MB, the rest small
    assert total < 2.5e6, f"Resources/SampleData holds {total} bytes"


def test_damaged_sample_is_refused(tmp_path):
    sd = _sampledata()
    copy = tmp_path / "chest_fluoroscopy_setup.json"
    copy.write_bytes((SAMPLE_DIR / copy.name).read_bytes() + b" ")
    with pytest.raises(RuntimeError, match="damaged .* reinstall"):
        sd.verify(copy)
    with pytest.raises(RuntimeError, match="missing"):
        sd.verify(tmp_path / "chest_ct_128.nii.gz")


def test_module_startup_registers_sample_data(core):
    """Each module connects startupCompleted() to the registration; the Sample Data module (stand-in)
    receives three sources with file URIs of the installed files and their SHA256 sums."""
    sd = _sampledata()
    connections = []
    slicer.app.connect = lambda signal, slot: connections.append((signal, slot))
    try:
        module = slicer_harness.load_module("XRayNeRFRegistration")
        module.XRayNeRFRegistration(None)
    finally:
        del slicer.app.connect
    assert [s for s, _ in connections] == ["startupCompleted()"]
    stand_in = slicer_harness.install_sample_data_stand_in()
    try:
        sd._registered = False
        connections[0][1]()  # what Slicer does once started
        assert sd.register_sample_data()  # a second call (the other module) registers nothing more
    finally:
        sys.modules.pop("SampleData", None)
    calls = stand_in.registered
    assert [c["sampleName"] for c in calls] == ["XRayNeRFChestCT", "XRayNeRFChestProjections", "XRayNeRFChestFluoroscopy"]
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    for c in calls:
        assert c["category"] == "XRayNeRF"
        assert c["thumbnailFileName"] and Path(c["thumbnailFileName"]).parent == SAMPLE_DIR
        assert Path(c["thumbnailFileName"]).is_file()
        assert len(c["uris"]) == len(c["fileNames"]) == len(c["checksums"]) == len(c["nodeNames"])
        for uri, name, checksum in zip(c["uris"], c["fileNames"], c["checksums"]):
            assert uri.startswith("file://")
            path = Path(url2pathname(urlparse(uri).path))
            assert path == SAMPLE_DIR / name and sd.sha256(path) == checksum and checksum.startswith("SHA256:")
    assert calls[0]["loadFileTypes"] == ["VolumeFile"] and calls[0]["customDownloader"] is None
    assert calls[1]["customDownloader"] is sd.load_projections and calls[2]["customDownloader"] is sd.load_fluoroscopy


def _source(sd, index):
    kwargs = sd.sources()[index]
    return types.SimpleNamespace(**{k: kwargs[k] for k in ("uris", "fileNames", "nodeNames", "checksums")})


def test_fluoroscopy_sample_loads_with_its_dicom_geometry(core):
    """The XA file becomes an X-ray node whose camera is LAO 20 / CRA 10 about the setup's isocentre and
    whose line integrals match the CT, moved by the setup's true transform, rendered at that camera."""
    import torch

    from XRayNeRFLib.geometry import Cameras
    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import Volume, as_mu, load_volume
    from XRayNeRFMRML.nodes import cameras_from_node

    sd = _sampledata()
    n = slicer.mrmlScene.GetNumberOfNodes()
    (node,) = sd.load_fluoroscopy(_source(sd, 2))
    assert node.GetName() == "XRayNeRF chest fluoroscopy" and slicer.mrmlScene.GetNumberOfNodes() > n
    setup = sd.fluoroscopy_setup()
    cams = cameras_from_node(node)
    truth = Cameras.carm(
        20.0,
        10.0,
        sid_mm=800.0,
        sdd_mm=1200.0,
        size_px=(160, 160),
        pixel_spacing_mm=1.6,
        isocenter_ras=setup["isocenter_ras"],
        dtype=torch.float64,
    )
    np.testing.assert_allclose(cams.world_from_camera.numpy(), truth.world_from_camera.numpy(), atol=1e-6)
    ct = as_mu(load_volume(str(SAMPLE_DIR / "chest_ct_128.nii.gz")))
    moved = Volume(ct.data, torch.as_tensor(setup["ct_to_parent_ras"], dtype=torch.float32) @ ct.ras_from_ijk, "mu")
    expected = render(moved, truth.to(dtype=torch.float32))[0].numpy()
    got = slicer.util.arrayFromVolume(node)[0]
    assert expected.min() > 1.0  # the chest fills the detector
    assert np.median(np.abs(got - expected)) < 0.04  # Poisson noise of I0 = 20000
    assert np.median(np.abs(got[:, ::-1] - expected)) > 0.2  # and not mirrored
    rotation = setup["ct_to_parent_ras"][:3, :3]
    assert np.degrees(np.arccos((np.trace(rotation) - 1) / 2)) == pytest.approx(3.0, abs=1e-6)


def test_projection_sample_loads_as_stack_with_cameras(core):
    import json as _json

    import torch

    from XRayNeRFLib.geometry_io import cameras_from_json, load_geometry
    from XRayNeRFLib.projections_io import load_projection_stack

    sd = _sampledata()
    (node,) = sd.load_projections(_source(sd, 1))
    array = slicer.util.arrayFromVolume(node)
    images, spacing, origin = load_projection_stack(str(SAMPLE_DIR / "chest_projections_30.mha"))
    assert array.shape == (30, 77, 72) == tuple(images.shape)
    np.testing.assert_array_equal(array, images.numpy())
    assert float(array.max()) > 3.0 and float(array.min()) == 0.0  # the chest, and air around it
    cams = cameras_from_json(_json.loads(node.GetAttribute("XRayNeRF.Cameras")))
    ref = load_geometry(str(SAMPLE_DIR / "chest_projections_30.json"))
    assert len(cams) == 30 and cams.size_px == (72, 77)
    np.testing.assert_allclose(cams.world_from_camera.numpy(), ref.world_from_camera.numpy(), atol=1e-9)
    import vtk

    vtk_matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(vtk_matrix)
    a = slicer.util.arrayFromVTKMatrix(vtk_matrix)
    np.testing.assert_allclose(np.diag(a)[:3], [-8.0, -8.0, 1.0])
    np.testing.assert_allclose(a[:2, 3], -origin.numpy())
    assert torch.allclose(spacing, torch.tensor([8.0, 8.0], dtype=spacing.dtype))


# -- Extensions Index entry and CMake metadata -------------------------------------------------------------
CATALOG_SCHEMA = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json"


def _cmake_sets(text: str) -> dict:
    import re

    values = {}
    for name, value in re.findall(r'^set\((\w+)\s+(".*?"|\S+)\)', text, flags=re.M):
        value = value.strip('"')
        for ref, sub in values.items():
            value = value.replace("${" + ref + "}", sub)
        values[name] = value
    return values


def test_extensions_index_entry_follows_the_schema():
    """XRayNeRF.json: the catalog-entry schema v1.0.1's rules (required keys, no other keys, types, enums)."""
    import json

    entry = json.loads((REPO / "XRayNeRF.json").read_text())
    allowed = {
        "$schema": str,
        "category": str,
        "scm_url": str,
        "scm_revision": str,
        "scm_type": str,
        "build_dependencies": list,
        "build_subdirectory": str,
        "enabled": bool,
        "tier": int,
    }
    assert {"$schema", "category", "scm_url"} <= set(entry) <= set(allowed)
    for key, value in entry.items():
        assert isinstance(value, allowed[key]), key
    assert entry["$schema"].rstrip("#") == CATALOG_SCHEMA
    assert entry.get("scm_type", "git") in ("git", "local") and entry.get("tier", 5) in (1, 3, 5)
    assert all(isinstance(d, str) for d in entry["build_dependencies"])
    assert entry["scm_url"].startswith("https://") and entry["scm_revision"]


def test_cmake_metadata_matches_the_index_entry():
    import json

    entry = json.loads((REPO / "XRayNeRF.json").read_text())
    text = (REPO / "CMakeLists.txt").read_text()
    sets = _cmake_sets(text)
    assert entry["build_dependencies"] == sets["EXTENSION_DEPENDS"].split() == ["PyTorch"]
    assert entry["category"] == sets["EXTENSION_CATEGORY"]
    repository = entry["scm_url"].removesuffix(".git")
    assert sets["EXTENSION_HOMEPAGE"].startswith(repository)
    assert sets["EXTENSION_DESCRIPTION"] and sets["EXTENSION_CONTRIBUTORS"]
    assert "project(XRayNeRF)" in text and "add_subdirectory(XRayNeRF)" in text
    # icon and screenshots: raw URLs of files in this repository (published at scm_revision)
    raw = repository.replace("https://github.com/", "https://raw.githubusercontent.com/") + "/" + entry["scm_revision"] + "/"
    urls = [sets["EXTENSION_ICONURL"], *sets["EXTENSION_SCREENSHOTURLS"].split()]
    assert len(urls) >= 2
    for url in urls:
        assert url.startswith(raw), url
        assert (REPO / url[len(raw) :]).is_file(), url
    from PIL import Image

    assert Image.open(REPO / sets["EXTENSION_ICONURL"][len(raw) :]).size == (128, 128)
    for name in ("LICENSE", "README.md"):
        assert f"${{CMAKE_CURRENT_SOURCE_DIR}}/{name}" in text


def test_module_cmake_installs_what_the_modules_load():
    """Every module directory has slicerMacroBuildScriptedModule with generic tests and its unittest; the
    shared CMake copies the engine, requirements.txt and the registered sample files."""
    text = (REPO / "XRayNeRF" / "CMakeLists.txt").read_text()
    for module in sorted(p.name for p in (REPO / "XRayNeRF").iterdir() if (p / f"{p.name}.py").is_file()):
        assert f"add_subdirectory({module})" in text
        cm = (REPO / "XRayNeRF" / module / "CMakeLists.txt").read_text()
        assert "slicerMacroBuildScriptedModule" in cm and "WITH_GENERIC_TESTS" in cm and "slicer_add_python_unittest" in cm
    assert "Resources/requirements.txt" in text and "XRayNeRFLib/*.py" in text
    fixtures = sorted(p.name for p in (REPO / "Testing" / "Data").iterdir() if p.suffix == ".nrrd")
    assert fixtures and "Testing/Data/*.nrrd" in text  # the self-tests' fixtures reach the install tree
    assert sum((REPO / "Testing" / "Data" / f).stat().st_size for f in fixtures) < 20000
    sd = _sampledata()
    for name in sd.CHECKSUMS:
        assert f"Resources/SampleData/*{''.join(Path(name).suffixes)}" in text, name


# -- documented self-test command ------------------------------------------------------------------------
def _documented_commands():
    import re

    out = {}
    for doc in (REPO / "README.md", REPO / "docs" / "slicer.md", REPO / "Testing" / "Python" / "run_self_tests.py"):
        text = doc.read_text().replace("\\\n", " ")
        out[doc.name] = [c for c in re.findall(r"Slicer --testing[^`\n]*(?:\n[^`\n]*)*?run_self_tests\.py\"?", text)]
    return out


def test_documented_slicer_command_names_every_module_and_the_script():
    """README, docs/slicer.md and run_self_tests.py give `Slicer --testing --no-main-window
    --additional-module-paths <every module directory> --python-script <run_self_tests.py>`."""
    import re
    import shlex

    modules = sorted(p.name for p in (REPO / "XRayNeRF").iterdir() if (p / f"{p.name}.py").is_file())
    assert len(modules) == 3
    for doc, commands in _documented_commands().items():
        assert commands, f"{doc} documents no Slicer --testing command"
        for command in commands:
            words = shlex.split(" ".join(command.split()).replace("$PWD", str(REPO)))
            assert words[:3] == ["Slicer", "--testing", "--no-main-window"], (doc, words[:3])
            paths = words[words.index("--additional-module-paths") + 1 : words.index("--python-script")]
            assert sorted(Path(p).name for p in paths) == modules, (doc, paths)
            for p in paths:
                assert (REPO / p if not Path(p).is_absolute() else Path(p)).joinpath(f"{Path(p).name}.py").is_file(), (doc, p)
            script = Path(words[words.index("--python-script") + 1])
            assert (script if script.is_absolute() else REPO / script) == REPO / "Testing" / "Python" / "run_self_tests.py", doc
    assert re.search(r"MODULES = \[.*\]", (REPO / "Testing" / "Python" / "run_self_tests.py").read_text())


def test_run_self_tests_script_passes_under_the_harness():
    """The documented script itself (not only the test methods): every module's Test class passes, exit 0."""
    import subprocess

    run = subprocess.run(
        [sys.executable, str(REPO / "Testing" / "Python" / "run_self_tests.py")], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    ran = [line for line in run.stderr.splitlines() if line.startswith("Ran ")]
    assert len(ran) == 3, run.stderr[-2000:]
