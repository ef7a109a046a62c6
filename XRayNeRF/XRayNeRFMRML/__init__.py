"""Slicer-side helpers shared by the XRayNeRF modules: MRML nodes <-> engine tensors, camera display,
slice-view overlays, lazy installation of the engine's dependencies.

Runs in Slicer and on the Qt-free ``slicer-core`` (tests); never imports qt or ctk. Submodules import
torch and XRayNeRFLib only when called (``nodes``, ``overlay``), so that Slicer can load the modules at
startup before torch is installed (``engine.ensure_engine``).
"""
