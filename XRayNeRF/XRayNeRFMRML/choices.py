"""The engine's choice lists, for the modules' parameter nodes (``Choice``) and combo boxes.

Slicer loads the module files at startup, before torch may be installed (``engine.ensure_engine`` installs
it on first use), and importing any ``XRayNeRFLib`` module imports torch. So the lists are read from the
engine's source text, each from the one assignment that defines it there (a literal tuple, or a dict whose
keys are the choices), without importing the engine: no copy is kept by hand. tests/test_slicer_mrml_layer.py
checks that each equals the imported engine's value.
"""

from __future__ import annotations

import ast
from typing import Tuple

from .engine import extension_root


def engine_choices(relative_path: str, name: str) -> Tuple[str, ...]:
    """The value of the top-level literal ``name`` in ``XRayNeRFLib/<relative_path>``: a tuple or list as a
    tuple, a dict as the tuple of its keys. Raises RuntimeError when the file or the literal is missing."""
    path = extension_root() / "XRayNeRFLib" / relative_path
    if not path.is_file():
        raise RuntimeError(f"missing {path}: reinstall the XRayNeRF extension")
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == name for t in targets) and node.value is not None:
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                break
            return tuple(value.keys() if isinstance(value, dict) else value)
    raise RuntimeError(f"XRayNeRFLib/{relative_path} defines no literal {name}: reinstall the XRayNeRF extension")


RENDERERS = engine_choices("render/__init__.py", "RENDERERS")  # the projector: "siddon" (exact), "trilinear"
PATIENT_POSITIONS = engine_choices("geometry.py", "PATIENT_FROM_CARM")  # DICOM Patient Position (0018,5100)
SIMILARITIES = engine_choices("registration/losses.py", "LOSS_NAMES")  # registration losses
RECONSTRUCTION_METHODS = engine_choices("recon/api.py", "METHODS")  # "fdk", "voxel", "nerf"
VOXEL_SOLVERS = engine_choices("recon/voxel.py", "VOXEL_SOLVERS")  # options["solver"] of the voxel method
FDK_WINDOWS = engine_choices("recon/fdk.py", "WINDOWS")  # FDK ramp-filter windows
