"""The overlay while the manual-alignment controls move: a quick DRR per control change, the exact one after.

While the user drags, each control change needs a new DRR in the page within ~100 ms. The Registration Logic's
``updateDRR`` renders the exact Siddon DRR of the CT node (read from MRML each time) at the X-ray's full
detector: right for a still pose, several times too slow for a drag on 2 CPU cores. :class:`QuickDRR` keeps the
CT's attenuation volume (read once per CT through the MRML layer) and re-poses it by the transform, then renders
with the engine's trilinear projector on the CT pooled 2 x 2 x 2; the image goes back into the scene through the
same ``updateDRR(..., cameras, image)`` the Logic uses for its live previews. When the controls stop, the app
asks for the exact DRR (``updateDRR`` alone). Measured in benchmarks/bench_web.py.

Engine calls only: nodes are read with XRayNeRFMRML.nodes and written by the Logic.
"""

from __future__ import annotations

import dataclasses

import numpy as np

POOL = 2  # CT voxels pooled per axis for the quick DRR (the registration's coarse levels pool the same way)
RENDERER = "trilinear"


class QuickDRR:
    """The CT's mu volume of one CT node at the pose it had when read, and the X-ray's cameras (float32)."""

    def __init__(self, ct_node, xray_node, pool: int = POOL):
        import torch
        from XRayNeRFLib.registration.optimize import pooled_volume
        from XRayNeRFLib.volume import as_mu
        from XRayNeRFMRML.nodes import cameras_from_node, volume_from_node, world_from_node

        self.ct_node, self.xray_node = ct_node, xray_node
        mu = as_mu(volume_from_node(ct_node))  # world frame, at the current pose
        mu = pooled_volume(mu, pool) if pool > 1 else mu
        self.volume = dataclasses.replace(mu, data=mu.data.to(torch.float32).contiguous())
        self.world_at_read = world_from_node(ct_node)  # (4, 4) the CT's parent-to-world when read
        self.cameras = cameras_from_node(xray_node).to(dtype=torch.float32)
        self.checked = False  # the volume's values are checked for NaN / inf on the first render only

    def matches(self, ct_node, xray_node) -> bool:
        return ct_node is self.ct_node and xray_node is self.xray_node

    def volume_now(self):
        """The volume at the CT node's current pose: ras_from_ijk = W_now @ inv(W_read) @ ras_from_ijk_read."""
        import torch
        from XRayNeRFMRML.nodes import world_from_node

        move = world_from_node(self.ct_node) @ np.linalg.inv(self.world_at_read)
        ras = torch.as_tensor(move, dtype=self.volume.ras_from_ijk.dtype) @ self.volume.ras_from_ijk
        return dataclasses.replace(self.volume, ras_from_ijk=ras)

    def render(self, volume):
        """(H, W) float32 line integrals at the X-ray's camera (engine's trilinear projector)."""
        import torch
        from XRayNeRFLib.render import render

        with torch.no_grad():
            image = render(volume, self.cameras, method=RENDERER, check_finite=not self.checked)[0]
        self.checked = True
        return image
