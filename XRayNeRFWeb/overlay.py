"""The overlay while the manual-alignment controls move: a quick DRR per control change, the exact one after.

While the user drags, each control change needs a new DRR in the page within ~100 ms. The MRML layer's
``registration.update_drr`` reads the CT node and renders the DRR (the engine's default renderer) at the X-ray's full detector:
right for a still pose (the registration's first and last DRR), several times too slow for a drag on 2 CPU
cores. :class:`QuickDRR` reads the CT's attenuation volume once per CT (``nodes.volume_from_node``) and re-poses
it by the CT's transform at each change, then renders it with the engine's trilinear projector (the
registration optimiser's renderer) on the CT pooled 2 x 2 x 2 and on the X-ray's detector binned to at most
128 pixels a side (as the optimiser's coarse levels), through the layer's ``registration.render_image``; the image
goes into the DRR node through ``registration.write_drr``, as the optimiser's previews do. Measured in benchmarks/bench_web.py.

Nothing here reads or writes MRML itself: the XRayNeRFMRML layer does.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

POOL = 2  # CT voxels pooled per axis for the quick DRR (the registration's coarse levels pool the same way)
MAX_SIDE_PX = 128  # the quick DRR's detector is binned (Cameras.downsampled) to at most this many pixels a side
# torch threads for the quick DRR: one. It is a small render, and it runs while the server's other threads draw the
# views (llvmpipe) and encode them; a second torch thread then only competes for the same cores (bench_web.py
# --profile, overlay.drr)
THREADS = 1


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
        full = cameras_from_node(xray_node)
        self.bin = max(1, math.ceil(max(full.width, full.height) / MAX_SIDE_PX))
        self.cameras = full.downsampled(self.bin) if self.bin > 1 else full

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
        """(H, W) float32 line integrals of ``volume`` at the X-ray's camera (no MRML: runs off the event loop),
        on :data:`THREADS` torch threads (the setting is restored)."""
        import torch

        from XRayNeRFMRML.registration import render_image

        before = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        try:
            return render_image(volume, self.cameras)  # the engine's DEFAULT_RENDERER
        finally:
            torch.set_num_threads(before)

    def write(self, drr_node, image):
        """Put ``image`` into ``drr_node`` (created beside the CT when None); returns the node."""
        from XRayNeRFMRML.nodes import scene_of
        from XRayNeRFMRML.registration import write_drr

        return write_drr(drr_node, image, self.cameras, name=f"{self.ct_node.GetName()} DRR", scene=scene_of(self.ct_node))
