"""Make the engine importable inside Slicer: torch through the PyTorch extension, on demand.

Nothing is installed at import time or at Slicer startup; the modules call :func:`ensure_engine` when the
user presses Apply. One confirmation lists what will be installed; none in testing mode (then a missing
torch is an error).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import List

import slicer


def extension_root() -> Path:
    """The directory that holds XRayNeRFLib/ and Resources/ (the source tree's root, or the build/install
    tree's qt-scripted-modules directory, which the extension's CMake lays out the same way)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "XRayNeRFLib" / "__init__.py").is_file():
            return parent
    raise RuntimeError(f"XRayNeRFLib was not found above {here}: reinstall the XRayNeRF extension")


def resource_path(*parts: str) -> str:
    path = extension_root().joinpath("Resources", *parts)
    if not path.exists():
        raise RuntimeError(f"missing resource {path}: reinstall the XRayNeRF extension")
    return str(path)


def missing_requirements() -> List[str]:
    """Requirement lines whose package is not importable (torch first, then Resources/requirements.txt)."""
    missing = []
    if importlib.util.find_spec("torch") is None:
        missing.append("torch")
    req = extension_root() / "Resources" / "requirements.txt"
    if req.is_file():
        for line in req.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name = line.split(";")[0].split("[")[0]
            for sep in "=<>!~ ":
                name = name.split(sep)[0]
            import_name = {"SimpleITK": "SimpleITK", "pydicom": "pydicom"}.get(name, name.replace("-", "_"))
            if importlib.util.find_spec(import_name) is None:
                missing.append(line)
    return missing


def _testing() -> bool:
    app = getattr(slicer, "app", None)
    try:
        return bool(app is not None and app.commandOptions().testingEnabled)
    except AttributeError:
        return False


def ensure_engine(ask: bool = True) -> None:
    """Install what the engine needs if missing (after one confirmation), then import XRayNeRFLib.

    Raises RuntimeError if the user declines, or in testing mode when something is missing."""
    missing = missing_requirements()
    if missing:
        if _testing() or os.environ.get("XRAYNERF_NO_INSTALL"):
            raise RuntimeError(f"XRayNeRF needs {', '.join(missing)}; install them (PyTorch extension for torch)")
        text = "XRayNeRF needs these Python packages, which will now be installed:\n  " + "\n  ".join(missing)
        if ask and not slicer.util.confirmOkCancelDisplay(text, "XRayNeRF: install dependencies"):
            raise RuntimeError("XRayNeRF cannot run without " + ", ".join(missing) + " (installation declined)")
        if "torch" in missing:
            try:
                import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
            except ImportError:
                slicer.util.pip_install("torch")
            else:
                torch_logic = PyTorchUtils.PyTorchUtilsLogic()
                if not torch_logic.torchInstalled():
                    if torch_logic.installTorch(askConfirmation=False) is None:
                        raise RuntimeError("PyTorch could not be installed: use the PyTorch module to install it")
        others = [m for m in missing if m != "torch"]
        if others:
            slicer.util.pip_install(others)
    root = str(extension_root())
    import sys

    if root not in sys.path:
        sys.path.insert(0, root)
    import XRayNeRFLib  # noqa: F401
