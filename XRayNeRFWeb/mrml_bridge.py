"""Where the web app finds the Registration and DRR MRML <-> engine code: one place to change.

Interim: that code still lives in the Slicer module files' Logic classes (the "one route per job" refactor,
issue 15, moves it to ``XRayNeRFMRML/registration.py`` and ``XRayNeRFMRML/drr.py``). The module files import
Slicer's scripted-module base classes, ``qt`` and ``slicer.i18n``, which Slicer's Qt-free core lacks; the same
stand-ins that the tests use (Testing/Python/slicer_harness.py: inert ``qt``/``ctk``, the four base classes)
let them load here. Only the Logic classes are used; nothing is copied.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _module(name: str):
    if name in sys.modules:
        return sys.modules[name]
    harness_dir = REPO / "Testing" / "Python"
    if str(harness_dir) not in sys.path:
        sys.path.insert(0, str(harness_dir))
    import slicer
    import slicer_harness

    app = getattr(slicer, "app", None)
    slicer_harness.install()
    if app is not None:
        slicer.app = app  # keep runtime.bind's application (the harness's is for tests)
    path = REPO / "XRayNeRF" / name / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def registration_logic_class():
    return _module("XRayNeRFRegistration").XRayNeRFRegistrationLogic


def drr_logic_class():
    return _module("XRayNeRFDRR").XRayNeRFDRRLogic
