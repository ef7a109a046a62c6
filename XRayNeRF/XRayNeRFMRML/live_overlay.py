"""The live overlay under manual alignment: the CT's DRR at the X-ray's camera re-rendered when the CT moves.

Two pieces, used by both faces of the layer (the Slicer Registration module and the browser app, XRayNeRFWeb):

* :class:`OverlayRenderer`, the DRR "while the CT moves": the CT's voxels are read from MRML once (in the
  node's own IJK-to-RAS frame, converted to mu) and each render composes the current parent transforms (world
  RAS mm), so a render costs the projection and the node write only. The projector is the engine's
  ``DEFAULT_RENDERER`` (trilinear) on the CT's full voxel grid, at the X-ray's camera read from its node once:
  full size at rest, or **coarse** while the CT moves, the detector binned by a power of two to about
  :data:`COARSE_PX` pixels on its shorter side (:func:`coarse_factor_for`; the CT is not pooled: for the same
  time, pooling the CT 2 x 2 x 2 and binning the detector half as much loses more detail,
  benchmarks/RESULTS_web.md). :meth:`OverlayRenderer.volume` reads MRML, :meth:`OverlayRenderer.render_volume`
  is the engine call alone (the browser app runs it off its event loop).
* :class:`LiveOverlay` (Slicer): observes the CT node's ``TransformModifiedEvent`` (sent for any change of
  its parent transforms, nested ones included) and re-renders the DRR node, coalesced by
  :class:`~.throttle.CoalescingRenderer` (coarse while the CT keeps moving, full size once it rests
  ``IDLE_S``). The browser app drives the same CoalescingRenderer from its page's controls.

The CT's voxels are read again only when its image data change. Removing the CT, the X-ray or the DRR node,
or closing the scene, stops a LiveOverlay (observers removed, timers stopped); :meth:`LiveOverlay.stop` does
the same. Never imports qt: the timers come from ``make_timer`` (see throttle.py).

Each render runs with ``num_threads`` torch CPU threads (default ``RENDER_THREADS``, for both faces), the
process's own setting put back afterwards; None leaves the process's setting. One thread by default: the coarse
render that follows a drag is far under the latency target with one thread on a quiet machine, and with two it
became several times slower whenever other work shared the cores (the measurements:
benchmarks/RESULTS_registration.md, "Live overlay (Slicer)"; the choice: docs/slicer.md).
"""

from __future__ import annotations

from typing import Callable, List, Optional

import slicer
import vtk

from .nodes import cameras_from_node, ijk_to_ras, world_from_node
from .registration import render_image, write_drr
from .throttle import IDLE_S, INTERVAL_S, CoalescingRenderer, ManualTimer, Timer

COARSE_PX = 64  # the coarse detector's shorter side while the CT moves (about; a power-of-two binning)
RENDER_THREADS = 1  # torch CPU threads of one overlay render (module docstring: why one)


def coarse_factor_for(size_px, coarse_px: int = COARSE_PX) -> int:
    """The power-of-two binning factor that leaves at least ``coarse_px`` pixels on the shorter side of a
    detector of ``size_px`` (columns, rows); 1 for detectors already that small."""
    side, f = min(int(v) for v in size_px), 1
    while side // (2 * f) >= int(coarse_px):
        f *= 2
    return f


class OverlayRenderer:
    """The DRR of ``ct_node`` (with its current transforms) at ``xray_node``'s camera, full size or coarse.

    coarse_factor: the detector binning while the CT moves (None: :func:`coarse_factor_for` the X-ray).
    num_threads: torch CPU threads of each render (default ``RENDER_THREADS``; None: the process's).
    ``cameras`` / ``coarse_cameras``: the X-ray's camera (1 view, world RAS mm) and its binned copy. The CT's
    voxels are read on the first :meth:`volume` and kept until :meth:`forget_voxels`."""

    def __init__(self, ct_node, xray_node, coarse_factor: Optional[int] = None, num_threads: Optional[int] = RENDER_THREADS):
        if num_threads is not None and int(num_threads) < 1:
            raise ValueError(f"the live overlay's thread count must be at least 1 (or None: the process's), got {num_threads}")
        if ct_node is None or xray_node is None:
            raise ValueError("select the CT and the X-ray for the live overlay")
        self.num_threads = num_threads
        self.ct_node, self.xray_node = ct_node, xray_node
        self.cameras = cameras_from_node(xray_node)
        self.coarse_factor = int(coarse_factor) if coarse_factor else coarse_factor_for(self.cameras.size_px)
        self.coarse_cameras = self.cameras.downsampled(self.coarse_factor)
        self._mu = None  # (data (K, J, I) mu 1/mm, node-local ras_from_ijk (4, 4)), read lazily

    def matches(self, ct_node, xray_node) -> bool:
        """Whether this renderer is for these two nodes."""
        return ct_node is self.ct_node and xray_node is self.xray_node

    def forget_voxels(self) -> None:
        """The CT's image data changed: read them again at the next :meth:`volume`."""
        self._mu = None

    def cameras_for(self, coarse: bool):
        return self.coarse_cameras if coarse else self.cameras

    def _local_mu(self):
        if self._mu is None:
            import torch

            from XRayNeRFLib.volume import Volume, as_mu

            from .nodes import volume_from_node

            local = ijk_to_ras(self.ct_node)
            volume = volume_from_node(self.ct_node)  # checks the node; world frame
            mu = as_mu(Volume(volume.data, torch.from_numpy(local).float(), "hu"))
            self._mu = (mu.data, local)
        return self._mu

    def volume(self):
        """The CT at its current pose (reads MRML): ``Volume`` (K, J, I) mu 1/mm, world RAS mm (parent
        transforms applied)."""
        import torch

        from XRayNeRFLib.volume import Volume

        data, local = self._local_mu()
        return Volume(data, torch.from_numpy(world_from_node(self.ct_node) @ local).float(), "mu")

    def render_volume(self, volume, coarse: bool = False):
        """The engine call alone (no MRML): the DRR (h, w) float32 tensor of ``volume`` (from :meth:`volume`) at
        the coarse or full detector, on ``num_threads`` torch threads."""
        from XRayNeRFLib.threads import torch_threads  # torch only when rendering, as the layer's other engine calls

        with torch_threads(self.num_threads):
            return render_image(volume, self.cameras_for(coarse))

    def render(self, coarse: bool = False):
        """:meth:`render_volume` of the CT at its current pose."""
        return self.render_volume(self.volume(), coarse)

    def write(self, drr_node, image, coarse: bool = False):
        """Put ``image`` (from a render at ``coarse``) into ``drr_node`` with its detector geometry (created beside
        the CT as "<CT name> DRR" when None); returns the node."""
        name = f"{self.ct_node.GetName()} DRR"
        return write_drr(drr_node, image, self.cameras_for(coarse), name=name, scene=self.ct_node.GetScene())


class LiveOverlay:
    """Keeps ``drr_node`` the DRR of ``ct_node`` (with its current transforms) at ``xray_node``'s camera.

    drr_node: the node written, rendered at once (created beside the CT when None; ``self.drr_node``). make_timer: the timer
    factory (default :class:`~.throttle.ManualTimer`: nothing fires by itself). interval_s / idle_s: the
    throttle window and the rest pause (throttle.py). coarse_factor: the binning while moving (None:
    :func:`coarse_factor_for` the X-ray). num_threads: torch threads of each render (:class:`OverlayRenderer`).
    on_update(coarse): called after each render (e.g. to redraw).
    ``updates``: the coarse flag of every render done."""

    def __init__(
        self,
        ct_node,
        xray_node,
        drr_node=None,
        *,
        make_timer: Callable[[Callable[[], None]], Timer] = ManualTimer,
        interval_s: float = INTERVAL_S,
        idle_s: float = IDLE_S,
        coarse_factor: Optional[int] = None,
        on_update: Optional[Callable[[bool], None]] = None,
        num_threads: Optional[int] = RENDER_THREADS,
    ):
        self.renderer = OverlayRenderer(ct_node, xray_node, coarse_factor, num_threads)
        self.ct_node, self.xray_node = ct_node, xray_node
        self._options = dict(
            make_timer=make_timer,
            interval_s=interval_s,
            idle_s=idle_s,
            coarse_factor=coarse_factor,
            on_update=on_update,
            num_threads=num_threads,
        )
        self.num_threads = num_threads
        self.cameras, self.coarse_factor = self.renderer.cameras, self.renderer.coarse_factor
        self.on_update = on_update
        self.updates: List[bool] = []
        # the first full-size render now (into a new node beside the CT when none is given)
        self.drr_node = self.renderer.write(drr_node, self.renderer.render(coarse=False))
        self.scheduler = CoalescingRenderer(self._render_and_write, make_timer, interval_s=interval_s, idle_s=idle_s)
        self._observations = []  # (object, tag)
        self._observe(ct_node, slicer.vtkMRMLTransformableNode.TransformModifiedEvent, self._on_moved)
        self._observe(ct_node, slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, self._on_image_changed)
        scene = ct_node.GetScene()
        self._observe(scene, scene.NodeAboutToBeRemovedEvent, self._on_node_removed)
        self._observe(scene, scene.StartCloseEvent, self._on_scene_closed)

    # -- observers ----------------------------------------------------------------------------------------
    def _observe(self, obj, event, callback) -> None:
        self._observations.append((obj, obj.AddObserver(event, callback)))

    def _on_moved(self, caller=None, event=None) -> None:
        self.scheduler.changed()

    def _on_image_changed(self, caller=None, event=None) -> None:
        self.renderer.forget_voxels()
        self.scheduler.changed()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def _on_node_removed(self, caller, event, node) -> None:
        if node is not None and node in (self.ct_node, self.xray_node, self.drr_node):
            self.stop()

    def _on_scene_closed(self, caller=None, event=None) -> None:
        self.stop()

    @property
    def active(self) -> bool:
        return not self.scheduler.closed

    def stop(self) -> None:
        """Remove the observers and stop the timers; no render after this (idempotent)."""
        self.scheduler.close()
        for obj, tag in self._observations:
            obj.RemoveObserver(tag)
        self._observations = []

    def restarted(self) -> Optional["LiveOverlay"]:
        """A new LiveOverlay on the same nodes and options (this one stopped), rendered at once; None when a
        node has left the scene."""
        self.stop()
        nodes = (self.ct_node, self.xray_node, self.drr_node)
        if any(node is None or node.GetScene() is None for node in nodes):
            return None
        return LiveOverlay(self.ct_node, self.xray_node, self.drr_node, **self._options)

    # -- rendering ----------------------------------------------------------------------------------------
    def volume(self):
        """The CT at its current pose (:meth:`OverlayRenderer.volume`)."""
        return self.renderer.volume()

    def render(self, coarse: bool = False):
        """The DRR (h, w) float32 tensor of the CT at its current pose, at the coarse or full detector."""
        return self.renderer.render(coarse)

    def _render_and_write(self, coarse: bool) -> None:
        self.renderer.write(self.drr_node, self.render(coarse), coarse)
        self.updates.append(bool(coarse))
        if self.on_update is not None:
            self.on_update(bool(coarse))
