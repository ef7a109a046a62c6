"""Slicer's core in this process: trame-slicer's scene becomes ``slicer.mrmlScene`` for the XRayNeRFMRML layer.

The MRML layer (``XRayNeRF/XRayNeRFMRML``) and the module Logics address the scene as ``slicer.mrmlScene``
and the application logic as ``slicer.app.applicationLogic()``, as inside 3D Slicer. trame-slicer's
``SlicerApp`` makes the same objects (a ``vtkMRMLScene`` and a ``vtkSlicerApplicationLogic``) without a Qt
application; :func:`bind` publishes them under those names. ``slicer.app`` here is the few members that
code touches outside a GUI: ``applicationLogic()``, ``processEvents()`` (nothing to do: jobs run off the event
loop, see jobs.py) and ``commandOptions().testingEnabled`` (False: nothing is installed by this server either,
the engine is a dependency of the package).

Rendering is headless: VTK's EGL render window on Mesa (llvmpipe without a GPU), never X.
"""

from __future__ import annotations

import os
import types


def use_headless_rendering() -> None:
    """Before VTK's first render window: EGL, not an X display (the X attempt fails without a display)."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")


class _App:
    def __init__(self, app_logic):
        self._app_logic = app_logic

    def applicationLogic(self):
        return self._app_logic

    def processEvents(self, *args) -> None:
        pass

    def commandOptions(self):
        return types.SimpleNamespace(testingEnabled=False, noMainWindow=True)


def bind(slicer_app) -> None:
    """Publish a trame-slicer ``SlicerApp``'s scene and application logic as ``slicer.mrmlScene`` / ``slicer.app``."""
    import slicer

    slicer.mrmlScene = slicer_app.scene
    slicer.app = _App(slicer_app.app_logic)
