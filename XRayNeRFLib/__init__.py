"""XRayNeRFLib: the XRayNeRF engine (pure Python + PyTorch; never imports slicer, vtk or qt).

World frame: patient RAS, millimetres. Attenuation: mu in 1/mm. See docs/geometry.md.
"""

__version__ = "0.1.0"

from .geometry import Cameras  # noqa: E402,F401
from .geometry_io import load_geometry, save_geometry  # noqa: E402,F401
from .progress import Cancelled, Progress  # noqa: E402,F401
from .volume import Volume, load_volume  # noqa: E402,F401
