"""The engine's choice lists and defaults, for the modules' parameter nodes (``Choice``, defaults) and combo boxes.

Slicer loads the module files at startup, before torch may be installed (``engine.ensure_engine`` installs
it on first use), and importing any ``XRayNeRFLib`` module imports torch. So the lists are read from the
engine's source text, each from the one assignment that defines it there (a literal tuple, or a dict whose
keys are the choices; a literal string for a default), without importing the engine: no copy is kept by hand.
tests/test_slicer_mrml_layer.py checks that each equals the imported engine's value.
"""

from __future__ import annotations

import ast
from typing import Any, Tuple

from .engine import extension_root


def engine_literal(relative_path: str, *names: str) -> Any:
    """The value of the first of ``names`` assigned a literal at the top level of ``XRayNeRFLib/<relative_path>``.
    Raises RuntimeError when the file or every literal is missing."""
    path = extension_root() / "XRayNeRFLib" / relative_path
    if not path.is_file():
        raise RuntimeError(f"missing {path}: reinstall the XRayNeRF extension")
    literals = {}
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for target in targets:
            if isinstance(target, ast.Name) and target.id in names and node.value is not None:
                try:
                    literals.setdefault(target.id, ast.literal_eval(node.value))
                except ValueError:  # not a literal
                    pass
    for name in names:
        if name in literals:
            return literals[name]
    raise RuntimeError(f"XRayNeRFLib/{relative_path} defines no literal {' or '.join(names)}: reinstall the XRayNeRF extension")


def engine_choices(relative_path: str, *names: str) -> Tuple[str, ...]:
    """:func:`engine_literal` as a tuple of choices: a tuple or list as a tuple, a dict as the tuple of its keys."""
    value = engine_literal(relative_path, *names)
    return tuple(value.keys() if isinstance(value, dict) else value)


RENDERERS = engine_choices("render/__init__.py", "RENDERERS")  # the projector: "siddon" (exact), "trilinear"
PATIENT_POSITIONS = engine_choices("geometry.py", "PATIENT_FROM_CARM")  # DICOM Patient Position (0018,5100)
SIMILARITIES = engine_choices("registration/losses.py", "LOSS_NAMES")  # registration losses
RECONSTRUCTION_METHODS = engine_choices("recon/api.py", "METHODS")  # "fdk", "voxel", "nerf"
VOXEL_SOLVERS = engine_choices("recon/voxel.py", "VOXEL_SOLVERS")  # options["solver"] of the voxel method
FDK_WINDOWS = engine_choices("recon/fdk.py", "WINDOWS")  # FDK ramp-filter windows
FOV_REGIONS = engine_choices("recon/grid.py", "REGIONS")  # the default cylinder: seen by "every" view or by "any"
DEFAULT_FOV_REGION = engine_literal("recon/grid.py", "DEFAULT_REGION")
DEFAULT_RENDERER = engine_literal("render/__init__.py", "DEFAULT_RENDERER")  # the one default projector (DRR, reconstruction)
