"""Run the XRayNeRF modules' Logic and Test classes outside the Slicer application, on a real MRML scene.

The Qt-free core of Slicer is the pip package ``slicer-core`` (``import slicer`` gives the real
``vtkMRMLScene``, the module logics' VTK classes and the real ``slicer.util``). What only exists inside
the Slicer application is stood in for here, and nothing else:

- ``qt`` and ``ctk``: placeholder modules (any attribute is an inert placeholder class). A module's Widget
  runs here only with a stand-in ``ui`` (tests build one from the widget names of the module's .ui), and
  Qt-only pieces (a ``qt.QTimer``) are injected or replaced by the tests (e.g. the live overlay's timers:
  ``XRayNeRFMRML.throttle.ManualTimer``).
- ``slicer.app``: ``processEvents()`` does nothing, testing mode is on, no main window.
- ``slicer.i18n``: ``tr`` / ``translate`` return the text unchanged.
- ``slicer.ScriptedLoadableModule``: the four base classes (Module, Widget, Logic, Test) with the
  behaviour the modules rely on (``getParameterNode`` returns the scene's singleton
  ``vtkMRMLScriptedModuleNode`` for the module, as in Slicer; the Test class is a ``unittest.TestCase``).
- ``SampleData`` (a Qt module), only when a test asks for it (:func:`install_sample_data_stand_in`):
  ``SampleDataLogic.registerCustomSampleDataSource`` records its arguments.
- ``slicer.parameterNodeWrapper``: a small typed wrapper over that node (float, int, bool, str and MRML
  node references; validators ``WithinRange``, ``Minimum``, ``Maximum``, ``Choice``, ``Default``) with the
  same attribute behaviour as Slicer's; ``connectGui`` is a no-op (there is no GUI); ``AddObserver`` /
  ``RemoveObserver`` go to the underlying node, as in Slicer.

:func:`new_scene` builds a scene the way the application does: application logic, colour nodes, and
the Volumes, Markups, Transforms, Sequences, Models and Subject hierarchy module logics registered,
``slicer.mrmlScene`` set. :func:`add_slice_view` adds a slice node with its ``vtkMRMLSliceLogic``
whose blend output (the composited slice image, RGBA uint8) is computed without any rendering.

Use::

    import slicer_harness
    slicer_harness.install()                    # before importing a module file
    core = slicer_harness.new_scene()
    module = slicer_harness.load_module("XRayNeRFDRR")
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import types
import unittest
from pathlib import Path
from typing import Annotated, Any, Dict, get_args, get_origin, get_type_hints

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULES_DIR = REPO_ROOT / "XRayNeRF"

_installed = False


# -- qt / ctk placeholders ----------------------------------------------------------------------------
class _PlaceholderType(type):
    """Class-level attributes of a placeholder class are placeholders too (``qt.Qt.WaitCursor``)."""

    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder()


class _Placeholder(metaclass=_PlaceholderType):
    """Inert stand-in for any Qt/CTK class or constant: instances accept any call and attribute."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        return _Placeholder()

    def __getattr__(self, name):
        return _Placeholder()


def _placeholder_module(name: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__doc__ = f"slicer_harness stand-in for {name} (no GUI outside Slicer)"

    def __getattr__(attr):  # PEP 562: qt.QTimer, qt.Qt.WaitCursor, ctk.ctkCollapsibleButton, ...
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _PlaceholderType(attr, (_Placeholder,), {})

    module.__getattr__ = __getattr__
    return module


# -- slicer.app ----------------------------------------------------------------------------------------
class _CommandOptions:
    testingEnabled = True
    noMainWindow = True


class _App:
    """The few ``slicer.app`` members that Logic code and slicer.util's dialogs touch."""

    def processEvents(self, *args):
        pass

    def commandOptions(self):
        return _CommandOptions()

    def testingEnabled(self):
        return True

    def setOverrideCursor(self, *args):
        pass

    def restoreOverrideCursor(self):
        pass

    def connect(self, *args):
        pass

    def pauseRender(self):
        pass

    def resumeRender(self):
        pass

    temporaryPath = "/tmp"


# -- slicer.ScriptedLoadableModule ---------------------------------------------------------------------
class _ModuleParent:
    """What Slicer passes to a scripted module's constructor: a holder of its title, help, ..."""

    def __init__(self):
        self.title = ""
        self.categories = []
        self.dependencies = []
        self.contributors = []
        self.helpText = ""
        self.acknowledgementText = ""
        self.hidden = False


class ScriptedLoadableModule:
    def __init__(self, parent=None):
        self.parent = parent if parent is not None else _ModuleParent()
        self.moduleName = self.__class__.__name__

    def getDefaultModuleDocumentationLink(self, docPage=""):
        return "https://slicer.readthedocs.io"


class ScriptedLoadableModuleWidget:
    def __init__(self, parent=None):
        self.parent = parent
        self.moduleName = self.__class__.__name__[: -len("Widget")]
        self.developerMode = False

    def setup(self):
        pass

    def resourcePath(self, filename):
        raise RuntimeError("the Widget needs Qt and does not run outside Slicer")


class ScriptedLoadableModuleLogic:
    def __init__(self, parent=None):
        name = self.__class__.__name__
        self.moduleName = name[: -len("Logic")] if name.endswith("Logic") else name
        self.isSingletonParameterNode = True

    def getParameterNode(self):
        """The scene's singleton scripted-module node of this module (created on first use), as in Slicer."""
        import slicer

        scene = slicer.mrmlScene
        node = scene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = slicer.vtkMRMLScriptedModuleNode()
            node.SetName(scene.GenerateUniqueName(self.moduleName))
            node.SetSingletonTag(self.moduleName)
            node.SetAttribute("ModuleName", self.moduleName)
            node = scene.AddNode(node)
        return node


class ScriptedLoadableModuleTest(unittest.TestCase):
    def __init__(self, methodName="runTest"):
        super().__init__(methodName)

    def delayDisplay(self, message, msec=1000):
        logging.info(message)

    def takeScreenshot(self, name, description, type=-1):
        pass

    def runTest(self):  # overridden by the modules
        pass


# -- slicer.parameterNodeWrapper -----------------------------------------------------------------------
class WithinRange:
    def __init__(self, minimum, maximum):
        self.minimum, self.maximum = minimum, maximum

    def validate(self, value):
        if value is not None and not (self.minimum <= value <= self.maximum):
            raise ValueError(f"value {value} is outside [{self.minimum}, {self.maximum}]")


class Minimum:
    def __init__(self, minimum):
        self.minimum = minimum

    def validate(self, value):
        if value is not None and value < self.minimum:
            raise ValueError(f"value {value} is below the minimum {self.minimum}")


class Maximum:
    def __init__(self, maximum):
        self.maximum = maximum

    def validate(self, value):
        if value is not None and value > self.maximum:
            raise ValueError(f"value {value} is above the maximum {self.maximum}")


class Choice:
    def __init__(self, choices):
        self.choices = list(choices)

    def validate(self, value):
        if value not in self.choices:
            raise ValueError(f"value {value!r} is not one of {self.choices}")


class Default:
    def __init__(self, value):
        self.value = value


def _is_node_type(tp) -> bool:
    return isinstance(tp, type) and tp.__name__.startswith("vtkMRML")


def _unwrap(tp):
    """(base type, validators, default-or-None) of an annotation; Optional[X] -> X."""
    validators, default = [], None
    if get_origin(tp) is Annotated:
        base, *meta = get_args(tp)
        for m in meta:
            if isinstance(m, Default):
                default = m.value
            elif hasattr(m, "validate"):
                validators.append(m)
        tp = base
    args = [a for a in get_args(tp) if a is not type(None)]
    if args and get_origin(tp) is not None and len(args) == 1:
        tp = args[0]
    return tp, validators, default


class _Field:
    def __init__(self, name, tp, validators, default):
        self.name, self.type, self.validators, self.default = name, tp, validators, default

    def __get__(self, wrapper, owner=None):
        if wrapper is None:
            return self
        node = wrapper.parameterNode
        if _is_node_type(self.type):
            return node.GetNodeReference(self.name)
        if self.name not in node.GetParameterNames():
            return self.default
        text = node.GetParameter(self.name)
        if self.type is bool:
            return text == "true"
        if self.type in (int, float):
            return self.type(float(text)) if self.type is int else float(text)
        return text

    def __set__(self, wrapper, value):
        node = wrapper.parameterNode
        if _is_node_type(self.type):
            if value is not None and not value.IsA(self.type.__name__):
                raise ValueError(f"{self.name} must be a {self.type.__name__}, got {value.GetClassName()}")
            node.SetNodeReferenceID(self.name, value.GetID() if value is not None else None)
            return
        if self.type in (int, float) and value is not None:
            value = self.type(value)
        for v in self.validators:
            v.validate(value)
        if self.type is bool:
            node.SetParameter(self.name, "true" if value else "false")
        else:
            node.SetParameter(self.name, repr(value) if self.type is float else str(value))


def parameterNodeWrapper(cls):
    """Typed access to a vtkMRMLScriptedModuleNode, as Slicer's decorator of the same name."""
    hints = get_type_hints(cls, include_extras=True)
    fields: Dict[str, _Field] = {}
    for name, tp in hints.items():
        base, validators, default = _unwrap(tp)
        if name in cls.__dict__:
            default = cls.__dict__[name]
        if default is None and not _is_node_type(base):
            default = {float: 0.0, int: 0, bool: False, str: ""}.get(base)
        fields[name] = _Field(name, base, validators, default)

    def __init__(self, parameterNode):
        self.parameterNode = parameterNode
        for f in fields.values():
            if not _is_node_type(f.type) and f.name not in parameterNode.GetParameterNames():
                f.__set__(self, f.default)

    def connectGui(self, gui):
        return object()

    def disconnectGui(self, tag):
        pass

    # as in Slicer, observers go to the underlying node (the template's Widget observes ModifiedEvent)
    def AddObserver(self, event, callback, priority=0.0):
        return self.parameterNode.AddObserver(event, callback, priority)

    def RemoveObserver(self, tag):
        self.parameterNode.RemoveObserver(tag)

    namespace = {name: f for name, f in fields.items()}
    namespace.update(
        __init__=__init__,
        connectGui=connectGui,
        disconnectGui=disconnectGui,
        AddObserver=AddObserver,
        RemoveObserver=RemoveObserver,
        allParameters=fields,
        __doc__=cls.__doc__,
        __module__=cls.__module__,
    )
    return type(cls.__name__, (), namespace)


# -- installation --------------------------------------------------------------------------------------
def install() -> None:
    """Put the stand-ins in place (idempotent). Call before importing a module file."""
    global _installed
    if _installed:
        return
    import slicer  # slicer-core: the real MRML classes and slicer.util

    if not hasattr(slicer, "vtkMRMLScene"):
        raise RuntimeError(
            f"'import slicer' gave {slicer.__file__}, which has no vtkMRMLScene: uninstall the unrelated "
            "PyPI package 'slicer' and install 'slicer-core'"
        )
    for name in ("qt", "ctk", "slicer.qSlicerBaseQTCore"):
        sys.modules.setdefault(name, _placeholder_module(name))
    slicer.app = _App()

    i18n = types.ModuleType("slicer.i18n")
    i18n.tr = lambda text: text
    i18n.translate = lambda context, text: text
    sys.modules["slicer.i18n"] = slicer.i18n = i18n

    slm = types.ModuleType("slicer.ScriptedLoadableModule")
    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest):
        setattr(slm, cls.__name__, cls)
    slm.__all__ = [
        c.__name__ for c in (ScriptedLoadableModule, ScriptedLoadableModuleWidget, ScriptedLoadableModuleLogic, ScriptedLoadableModuleTest)
    ]
    sys.modules["slicer.ScriptedLoadableModule"] = slicer.ScriptedLoadableModule = slm

    pnw = types.ModuleType("slicer.parameterNodeWrapper")
    for obj in (parameterNodeWrapper, WithinRange, Minimum, Maximum, Choice, Default):
        setattr(pnw, obj.__name__, obj)
    sys.modules["slicer.parameterNodeWrapper"] = slicer.parameterNodeWrapper = pnw
    _installed = True


class SlicerCore:
    """A scene with the application logic and module logics, as the application sets them up."""

    def __init__(self, scene, app_logic, logics: Dict[str, Any]):
        self.scene, self.app_logic, self.logics = scene, app_logic, logics
        self.slice_logics = []


def new_scene() -> SlicerCore:
    """A fresh ``vtkMRMLScene`` with module logics registered; becomes ``slicer.mrmlScene``."""
    install()
    import slicer
    from vtkmodules.vtkCommonCore import vtkCollection

    scene = slicer.vtkMRMLScene()
    crosshair = slicer.vtkMRMLCrosshairNode()
    crosshair.SetCrosshairName("default")
    scene.AddNode(crosshair)
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    app_logic.SetSliceLogics(vtkCollection())
    app_logic.SetViewLogics(vtkCollection())
    logics = {
        "Volumes": slicer.vtkSlicerVolumesLogic(),
        "Markups": slicer.vtkSlicerMarkupsLogic(),
        "Transforms": slicer.vtkSlicerTransformLogic(),
        "Sequences": slicer.vtkSlicerSequencesLogic(),
        "Models": slicer.vtkSlicerModelsLogic(),
        "SubjectHierarchy": slicer.vtkSlicerSubjectHierarchyModuleLogic(),
    }
    for name, logic in logics.items():
        logic.SetMRMLScene(scene)
        logic.SetMRMLApplicationLogic(app_logic)
        app_logic.SetModuleLogic(name, logic)
    slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(scene, True)
    slicer.mrmlScene = scene
    slicer.app.applicationLogic = lambda: app_logic
    slicer.modules = types.SimpleNamespace()
    return SlicerCore(scene, app_logic, logics)


def add_slice_view(core: SlicerCore, name: str = "Red"):
    """A slice view's logic (slice node + composite node) without a render window."""
    import slicer

    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(core.app_logic)
    core.app_logic.GetSliceLogics().AddItem(logic)
    logic.SetMRMLScene(core.scene)
    logic.AddSliceNode(name)
    core.slice_logics.append(logic)
    return logic


def blended_slice_rgba(slice_logic):
    """The slice view's composited image (background, foreground, label blended): (H, W, 4) uint8."""
    from vtkmodules.util.numpy_support import vtk_to_numpy

    producer = slice_logic.GetImageDataConnection().GetProducer()
    producer.Update()
    image = producer.GetOutputDataObject(0)
    w, h, _ = image.GetDimensions()
    return vtk_to_numpy(image.GetPointData().GetScalars()).reshape(h, w, -1).copy()


def install_sample_data_stand_in() -> types.ModuleType:
    """A stand-in for Slicer's SampleData module (a Qt module): ``SampleDataLogic.registerCustomSampleDataSource``
    records its keyword arguments in ``SampleData.registered`` (fresh list on each call of this function)."""
    module = types.ModuleType("SampleData")
    module.registered = []

    class SampleDataLogic:
        @staticmethod
        def registerCustomSampleDataSource(
            category="Custom",
            sampleName=None,
            uris=None,
            fileNames=None,
            nodeNames=None,
            customDownloader=None,
            thumbnailFileName=None,
            loadFileTypes=None,
            loadFiles=None,
            loadFileProperties={},  # noqa: B006  (Slicer's signature)
            checksums=None,
            loadFileType=None,
        ):
            module.registered.append(
                dict(
                    category=category,
                    sampleName=sampleName,
                    uris=uris,
                    fileNames=fileNames,
                    nodeNames=nodeNames,
                    customDownloader=customDownloader,
                    thumbnailFileName=thumbnailFileName,
                    loadFileTypes=loadFileTypes,
                    loadFiles=loadFiles,
                    loadFileProperties=loadFileProperties,
                    checksums=checksums,
                )
            )

    module.SampleDataLogic = SampleDataLogic
    sys.modules["SampleData"] = module
    return module


def load_module(name: str):
    """Import XRayNeRF/<name>/<name>.py as module ``name`` (fresh import)."""
    install()
    path = MODULES_DIR / name / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no module file {path}")
    sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class FakeWidget:
    """Stand-in for a Qt widget of a module's .ui: plain attributes (visible, enabled, text, value, toolTip, ...)."""

    def __init__(self, **kw):
        self.visible, self.enabled = True, True
        self.__dict__.update(kw)

    def setVisible(self, visible):
        self.visible = bool(visible)

    def setEnabled(self, enabled):
        self.enabled = bool(enabled)


def module_widget(module, name: str):
    """The module's ``<name>Widget`` with ``ui`` holding a :class:`FakeWidget` per widget named in
    Resources/UI/<name>.ui, its ``<name>Logic`` and its parameter node initialised (no Qt)."""
    import xml.etree.ElementTree as ET

    names = {w.get("name") for w in ET.parse(REPO_ROOT / "Resources" / "UI" / f"{name}.ui").getroot().iter("widget")}
    widget = getattr(module, f"{name}Widget")(None)
    widget.ui = type("UI", (), {n: FakeWidget(text="", value=0, toolTip="") for n in names})()
    widget.logic = getattr(module, f"{name}Logic")()
    widget.initializeParameterNode()
    return widget
