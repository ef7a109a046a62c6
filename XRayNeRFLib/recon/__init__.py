"""Sparse-view cone-beam CT reconstruction (issue 4).

- :func:`fdk`: Feldkamp filtered backprojection for arbitrary per-view projection matrices.
- :func:`fov.default_grid`: the scanned cylinder as the default output grid.
- :func:`reconstruct_voxel`: voxel grid + TV (or learned loss weights) optimised through the renderer.

All inputs are line integrals (V, H, W) in our camera convention; outputs are :class:`Volume` of mu
(1/mm) with ``ras_from_ijk`` in patient RAS mm.
"""

from .fdk import fdk, line_integrals_from_intensities  # noqa: F401
from .fov import analyse_orbit, default_grid  # noqa: F401
from .voxel import reconstruct_voxel  # noqa: F401
