"""How the layer calls the engine's long functions: ``call_engine(fn, *args, **kwargs)``.

Inside Slicer the layer calls the engine directly on the main thread (:func:`direct`, the default). A caller that
runs the layer in a worker thread holding the scene (the web app, XRayNeRFWeb/jobs.py) passes its own
``call_engine``, which runs ``fn`` with the scene released and calls ``fn``'s ``progress=`` callback (where the
layer writes its previews into nodes) with the scene held again. ``fn`` never touches MRML; its arguments are
tensors and small dataclasses, as for any engine call.
"""

from __future__ import annotations

from typing import Any, Callable

EngineCall = Callable[..., Any]  # call_engine(fn, *args, **kwargs) -> fn(*args, **kwargs)


def direct(fn: Callable, *args, **kwargs):
    """Call ``fn`` here and now (Slicer's main thread)."""
    return fn(*args, **kwargs)
