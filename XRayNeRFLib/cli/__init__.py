"""The ``xraynerf`` command line (console script ``xraynerf = XRayNeRFLib.cli:main``).

- :mod:`.main`: the parser and :func:`main`; :mod:`.common`: exit codes, the error wrapper, the progress bar,
  device selection, output checks;
- one module per job: :mod:`.drr`, :mod:`.inputs` (``convert``, ``info`` and the DICOM override flags),
  :mod:`.reconstruct`, :mod:`.register`.

``main`` is re-exported here for the console script, so the attribute ``XRayNeRFLib.cli.main`` is the
function; the module's other names are reached with ``from XRayNeRFLib.cli.main import build_parser``.
"""

from .main import main  # noqa: F401
