"""Run the XRayNeRF modules' self-tests (their ScriptedLoadableModuleTest classes).

Inside Slicer (the classes run unchanged), from the repository root, with torch already in Slicer's Python
(the PyTorch extension; testing mode installs nothing)::

    Slicer --testing --no-main-window \
        --additional-module-paths "$PWD/XRayNeRF/XRayNeRFDRR" "$PWD/XRayNeRF/XRayNeRFRegistration" \
        "$PWD/XRayNeRF/XRayNeRFReconstruction" --python-script "$PWD/Testing/Python/run_self_tests.py"

Outside Slicer, on slicer-core with the stand-ins of slicer_harness.py::

    python Testing/Python/run_self_tests.py [ModuleName ...]

Exit status 0 when every test passed.
"""

from __future__ import annotations

import importlib.util
import sys
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODULES = ["XRayNeRFDRR", "XRayNeRFRegistration", "XRayNeRFReconstruction"]


def _inside_slicer() -> bool:
    import slicer

    return getattr(slicer, "app", None) is not None and hasattr(slicer.app, "layoutManager")


def main(names) -> int:
    inside = _inside_slicer()
    if not inside:
        sys.path.insert(0, str(HERE))
        import slicer_harness

        slicer_harness.new_scene()
    ok = True
    for name in names:
        if inside:
            spec = importlib.util.spec_from_file_location(name, REPO / "XRayNeRF" / name / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            module = slicer_harness.load_module(name)
        case = getattr(module, f"{name}Test")()
        result = unittest.TextTestRunner(verbosity=2).run(case)
        ok = ok and result.wasSuccessful()
    return 0 if ok else 1


if __name__ == "__main__":
    status = main([a for a in sys.argv[1:] if not a.startswith("-")] or MODULES)
    import slicer

    if _inside_slicer():
        slicer.util.exit(status)
    sys.exit(status)
