"""MRML <-> engine for the DRR module: a C-arm view of a CT volume node rendered into a DRR node.

- :func:`carm_cameras`: the C-arm pose (DICOM angles, distances, detector) as engine Cameras, the isocentre
  at the CT's centre in world RAS unless given;
- :func:`render_drr`: the CT node (HU, linear parent transforms applied) rendered by
  ``XRayNeRFLib.render.render`` at those cameras into a 1-slice volume node lying on the detector
  (``nodes.write_image_node``: line integrals, the camera in ``XRayNeRF.Cameras``) and a C-arm line model;
  returns a :class:`DRROutput`.

Output nodes are created only after the rendering succeeded, so a failed or cancelled run leaves the scene
as it was. Never imports qt or ctk; torch and XRayNeRFLib are imported when called.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Tuple, Union

from .choices import DEFAULT_RENDERER  # the engine's one default (XRayNeRFLib.render.DEFAULT_RENDERER), read from its source
from .engine_call import direct
from .nodes import new_node, remove_node, scene_of, update_camera_model, volume_centre_ras, volume_from_node, write_image_node


def carm_cameras(
    ct_node=None,
    *,
    primary_deg: float = 0.0,
    secondary_deg: float = 0.0,
    sid_mm: float = 750.0,
    sdd_mm: float = 1200.0,
    size_px: Tuple[int, int] = (256, 256),
    pixel_spacing_mm: Union[float, Sequence[float]] = 1.5,
    patient_position: str = "HFS",
    isocenter_ras: Optional[Sequence[float]] = None,
):
    """One isocentric C-arm view as ``XRayNeRFLib.geometry.Cameras`` (float64, world RAS mm).

    primary_deg / secondary_deg: LAO+ / CRA+ (DICOM), in the C-arm frame turned into RAS by
    ``patient_position``. size_px: (columns, rows). pixel_spacing_mm: one value (square) or (column, row).
    isocenter_ras: (3,) RAS mm; default the centre of ``ct_node``'s voxel grid in world coordinates (parent
    transforms applied). Raises ValueError when neither is given or the distances are inconsistent."""
    import torch

    from XRayNeRFLib.geometry import Cameras

    if isocenter_ras is None:
        isocenter_ras = volume_centre_ras(ct_node)
    spacing = pixel_spacing_mm if isinstance(pixel_spacing_mm, (tuple, list)) else (pixel_spacing_mm, pixel_spacing_mm)
    return Cameras.carm(
        float(primary_deg),
        float(secondary_deg),
        sid_mm=float(sid_mm),
        sdd_mm=float(sdd_mm),
        size_px=(int(size_px[0]), int(size_px[1])),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        isocenter_ras=[float(x) for x in isocenter_ras],
        patient_position=patient_position,
        dtype=torch.float64,
    )


@dataclass
class DRROutput:
    """What :func:`render_drr` made: the DRR node (1-slice (1, H, W) line integrals on the detector plane,
    its camera in ``XRayNeRF.Cameras``), the C-arm line model node, the cameras (1 view, float64, world RAS)
    and the rendering time in seconds."""

    volume_node: Any
    camera_model_node: Any
    cameras: Any
    seconds: float = 0.0


def render_drr(
    ct_node,
    cameras,
    *,
    renderer: str = DEFAULT_RENDERER,
    output_node=None,
    camera_model_node=None,
    progress: Optional[Callable] = None,
    scene=None,
    call_engine: Optional[Callable] = None,
) -> DRROutput:
    """Render the DRR of ``ct_node`` (scalar volume, HU; linear parent transforms applied) at ``cameras``
    (1 view) into ``output_node`` and show the C-arm in ``camera_model_node``.

    renderer: "siddon" (exact) or "trilinear". output_node / camera_model_node: nodes to overwrite; new ones
    (named after the CT) are created in ``scene`` (default: the CT's scene) when None, only after the
    rendering succeeded. progress: ``Callable[[XRayNeRFLib.Progress], bool]``; returning False cancels
    (raises ``XRayNeRFLib.Cancelled``, the scene unchanged). call_engine: how the engine's ``render`` is run
    (engine_call.py; None: directly)."""
    import torch

    from XRayNeRFLib.render import render
    from XRayNeRFLib.volume import as_mu

    if ct_node is None:
        raise ValueError("no input volume: select a CT volume")
    volume = as_mu(volume_from_node(ct_node, units="hu"))
    start = time.monotonic()
    with torch.no_grad():
        image = (call_engine or direct)(render, volume, cameras.to(dtype=torch.float32), renderer=renderer, progress=progress)[0]
    seconds = time.monotonic() - start
    logging.info(f"XRayNeRF DRR: {cameras.width}x{cameras.height} {renderer} in {seconds:.2f} s")

    scene = scene if scene is not None else scene_of(ct_node)
    created = []
    try:
        if output_node is None:
            output_node = new_node(scene, "vtkMRMLScalarVolumeNode", f"{ct_node.GetName()} DRR")
            created.append(output_node)
        if camera_model_node is None:
            camera_model_node = new_node(scene, "vtkMRMLModelNode", f"{ct_node.GetName()} C-arm")
            created.append(camera_model_node)
        write_image_node(output_node, image.double().numpy(), cameras)
        update_camera_model(camera_model_node, cameras)
    except Exception:
        for node in created:
            remove_node(node)
        raise
    return DRROutput(output_node, camera_model_node, cameras, seconds)
