"""Make the engine importable inside Slicer: torch through the PyTorch extension, on demand.

Nothing is installed at import time or at Slicer startup; the modules call :func:`ensure_engine` when the
user presses Apply. One confirmation lists what will be installed; none in testing mode (then a missing
torch is an error).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

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


# torch's range, as in the engine's pyproject.toml (a test keeps them equal); passed to the PyTorch extension
TORCH_REQUIREMENT = ">=2.1"

# distribution name -> import name, where they differ
IMPORT_NAMES = {"pillow": "PIL", "Pillow": "PIL", "scikit-image": "skimage", "pyyaml": "yaml"}
_SPECIFIER = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*?)\s*$")


@dataclass(frozen=True)
class Requirement:
    """One line of a requirements file: ``name`` (distribution), ``import_name``, ``minimum`` (from a
    ``>=`` clause, or None) and the ``line`` itself (what pip is given)."""

    name: str
    import_name: str
    minimum: Optional[Tuple[int, ...]]
    line: str


def _version_tuple(text: str) -> Tuple[int, ...]:
    """'2.2.1' -> (2, 2, 1); stops at the first part that is not a number ('3.0rc1' -> (3,))."""
    out = []
    for part in text.split("."):
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        out.append(int(digits.group()))
        if digits.group() != part:
            break
    return tuple(out)


def parse_requirements(text: str) -> List[Requirement]:
    """Parse requirement lines (``name[extras] >=x.y, <z ; marker  # comment``); blank lines and comments
    are skipped. Raises ValueError naming a line that is not a requirement."""
    out = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _SPECIFIER.match(line.split(";", 1)[0])
        if match is None or (match.group(3) and not re.match(r"^(==|>=|<=|~=|!=|<|>)", match.group(3))):
            raise ValueError(f"requirements line {number} is not 'name>=version': {raw!r}")
        name = match.group(1)
        minimum = None
        for clause in match.group(3).split(","):
            clause = clause.strip()
            if clause.startswith((">=", "==", "~=")):
                minimum = _version_tuple(clause[2:].strip())
        import_name = IMPORT_NAMES.get(name, IMPORT_NAMES.get(name.lower(), name.replace("-", "_")))
        out.append(Requirement(name, import_name, minimum, line))
    return out


def requirements_file() -> Path:
    return extension_root() / "Resources" / "requirements.txt"


def missing_requirements(
    path: Optional[Path] = None,
    find_spec: Callable[[str], object] = importlib.util.find_spec,
    version_of: Callable[[str], str] = importlib.metadata.version,
) -> List[str]:
    """What must be installed: "torch" when torch is not importable, then each line of the requirements
    file (default Resources/requirements.txt) whose package is not importable or older than its ``>=``
    minimum. find_spec / version_of: lookups (replaceable in tests)."""
    missing = []
    if find_spec("torch") is None:
        missing.append("torch")
    path = requirements_file() if path is None else Path(path)
    if not path.is_file():
        raise RuntimeError(f"missing {path}: reinstall the XRayNeRF extension")
    for req in parse_requirements(path.read_text()):
        if find_spec(req.import_name) is None:
            missing.append(req.line)
            continue
        if req.minimum:
            try:
                installed = _version_tuple(version_of(req.name))
            except importlib.metadata.PackageNotFoundError:
                continue  # importable but not installed by pip (bundled with Slicer): keep it
            if installed < req.minimum:
                missing.append(req.line)
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
            raise RuntimeError(
                f"XRayNeRF needs {', '.join(missing)}: install torch with the PyTorch module (PyTorch extension) "
                "and the others with slicer.util.pip_install, then retry"
            )
        shown = [
            f"torch{TORCH_REQUIREMENT} and torchvision (through the PyTorch extension, which picks the CPU or CUDA build)"
            if m == "torch"
            else m
            for m in missing
        ]
        text = "XRayNeRF needs these Python packages, which will now be installed:\n  " + "\n  ".join(shown)
        if ask and not slicer.util.confirmOkCancelDisplay(text, "XRayNeRF: install dependencies"):
            raise RuntimeError("XRayNeRF cannot run without " + ", ".join(missing) + " (installation declined)")
        if "torch" in missing:
            try:
                import PyTorchUtils  # the PyTorch extension (EXTENSION_DEPENDS)
            except ImportError:
                slicer.util.pip_install(f"torch{TORCH_REQUIREMENT}")
            else:
                torch_logic = PyTorchUtils.PyTorchUtilsLogic()
                if not torch_logic.torchInstalled():  # the one confirmation was ours: none from the extension
                    if torch_logic.installTorch(askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT) is None:
                        raise RuntimeError("PyTorch could not be installed: use the PyTorch module to install it")
        others = [m for m in missing if m != "torch"]
        if others:
            slicer.util.pip_install(others)
    root = str(extension_root())
    import sys

    if root not in sys.path:
        sys.path.insert(0, root)
    import XRayNeRFLib  # noqa: F401
