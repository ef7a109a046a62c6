"""Sparse-view cone-beam CT reconstruction (issue 4).

- :func:`fdk`: Feldkamp filtered backprojection for arbitrary per-view projection matrices.
- :func:`fov.default_grid`: the scanned cylinder as the default output grid.
- :func:`reconstruct_voxel`: voxel grid + TV (or learned loss weights) optimised through the renderer.
- :func:`reconstruct`: one entry point for fdk | voxel | nerf, HU or mu, optional uncertainty ensemble
  (:mod:`uncertainty`: grouped jackknife over views).

All inputs are line integrals (V, H, W) in our camera convention; outputs are :class:`Volume` of mu
(1/mm) with ``ras_from_ijk`` in patient RAS mm.
"""

from .api import ReconstructionResult, reconstruct  # noqa: F401
from .fdk import fdk, line_integrals_from_intensities  # noqa: F401
from .fov import analyse_orbit, default_grid  # noqa: F401
from .uncertainty import EnsembleResult, ensemble, jackknife_std, leave_out_groups, spearman  # noqa: F401
from .voxel import reconstruct_voxel  # noqa: F401
