"""Where the project's data files are: the ``Resources/`` folder (sample data, pre-fitted model heads).

One lookup for every layout the package runs from:

* the source tree and the Slicer extension (the extension's CMake lays it out the same way):
  ``Resources/`` beside ``XRayNeRFLib/``;
* a pip-installed wheel (``pip install .``, not editable): the files the app and the engine read are package
  data, ``XRayNeRFLib/Resources/SampleData`` and ``XRayNeRFLib/Resources/Models`` (pyproject.toml maps them from
  the source tree's ``Resources/``).

The wheel's copy is looked at first: beside an installed ``XRayNeRFLib/`` is ``site-packages/``, where another
distribution could have put a folder of that name.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


class ResourcesMissingError(RuntimeError):
    """The project's ``Resources/`` folder (or a file in it) is not where the package looks: an installation
    problem, not bad input (so not one of errors.py's ValueErrors). ``path``: what was looked for."""

    def __init__(self, path: Path):
        self.path = Path(path)
        super().__init__(f"XRayNeRF resource {self.path} is missing: reinstall the xraynerf package (or the XRayNeRF extension)")


def resources_dir() -> Path:
    """The ``Resources/`` folder: the wheel's package data, else the one beside ``XRayNeRFLib/``."""
    for candidate in (_HERE / "Resources", _HERE.parent / "Resources"):
        if (candidate / "SampleData").is_dir() or (candidate / "Models").is_dir():
            return candidate
    raise ResourcesMissingError(_HERE.parent / "Resources")


def resource(*parts: str) -> Path:
    """A file or folder under :func:`resources_dir` (ResourcesMissingError when absent)."""
    path = resources_dir().joinpath(*parts)
    if not path.exists():
        raise ResourcesMissingError(path)
    return path
