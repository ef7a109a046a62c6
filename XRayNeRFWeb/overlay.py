"""The overlay while the manual-alignment controls move, on the server's event loop: the layer's rule, web plumbing.

The DRR "while the CT moves" is the MRML layer's, shared with the Slicer module
(``XRayNeRFMRML.live_overlay.OverlayRenderer``: the CT's voxels read once, the detector binned to about
``COARSE_PX`` while moving, full size at rest) and so is the timing rule (``XRayNeRFMRML.throttle.CoalescingRenderer``:
coarse while the controls keep moving, one full-size render once they have been still for ``IDLE_S``). What is
the web's own:

* :class:`LoopTimer`: the throttle's timers on the asyncio event loop (the Slicer module uses a ``qt.QTimer``);
* :data:`INTERVAL_S` = 0: the page's job runner already renders one overlay at a time and keeps only the newest
  pose asked for while one runs (jobs.py), which paces renders to the render time; a throttle window on top of it
  would only add its length to every update's latency;
* the render itself (``OverlayRenderer.render_volume``, on the layer's ``RENDER_THREADS`` torch threads like the
  Slicer module's) runs in the job's worker thread with the scene released (session.Session.overlay_work), while
  the server's other threads draw and encode the views.

Which views redraw, and at which image size, is views.DragRendering.
"""

from __future__ import annotations

import asyncio
from typing import Callable, List, Optional

# the throttle window of the page's CoalescingRenderer (s): none, the job runner paces the renders (module docstring)
INTERVAL_S = 0.0


class LoopTimer:
    """A single-shot ``XRayNeRFMRML.throttle.Timer`` on the running asyncio loop (start, stop and the callback on
    the loop's thread). ``starts``: every delay started (s)."""

    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self._handle: Optional[asyncio.TimerHandle] = None
        self.starts: List[float] = []

    @property
    def active(self) -> bool:
        return self._handle is not None

    def start(self, delay_s: float) -> None:
        self.stop()
        self.starts.append(float(delay_s))
        self._handle = asyncio.get_event_loop().call_later(float(delay_s), self._fire)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        self.callback()
