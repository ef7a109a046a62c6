"""Coalescing of bursts of changes into few renders (the live overlay's timing rule), in plain Python.

A user dragging a transform slider or the 3D handles changes the CT's transform many times a second; the
overlay must not render once per change. :class:`CoalescingRenderer` turns the changes into renders:

* **throttle**: the first change after a render arms a timer of ``interval_s``; changes that arrive while it
  is armed are only counted. When it fires, one render shows the latest state (a burst of N changes within
  the interval gives one render);
* **coarse while moving**: a render that follows the end of the previous one by less than ``idle_s`` (the user
  is still moving the CT) is asked for at the coarse size; it arms an idle timer of ``idle_s``. The time counts
  from the end of the previous render, not its start, so that a render slower than ``idle_s`` (a large
  detector at full size) does not make the next one full size too. A render callback that only starts the
  render (the browser app's jobs) calls :meth:`CoalescingRenderer.render_ended` when it ends;
* **full size at rest**: when the idle timer fires with no change since, one full-size render follows. A
  change after a pause (no render in the last ``idle_s``: a slider click, a nudge button) is rendered at full
  size at once, so that a single change gives exactly one render.

Timers are injected: ``make_timer(callback) -> Timer`` where a Timer has ``start(delay_s)`` (re-arms),
``stop()`` and ``active``. :class:`ManualTimer` is the plain one (tests, benchmarks: the caller fires it);
in Slicer a ``qt.QTimer`` adapter (the Registration module's ``QtSingleShotTimer``) is the thin layer
between this logic and the event loop. Nothing here imports qt, vtk or torch.
"""

from __future__ import annotations

import time
from typing import Callable, List, Optional, Protocol

INTERVAL_S = 0.05  # the throttle window: at most one render per window while changes arrive (~20 Hz)
IDLE_S = 0.3  # no change for this long: the user rests, one full-size render


class Timer(Protocol):
    """A single-shot timer that calls its callback ``delay_s`` seconds after :meth:`start` (re-armed by a
    second start), unless stopped."""

    active: bool

    def start(self, delay_s: float) -> None: ...

    def stop(self) -> None: ...


class ManualTimer:
    """A Timer that the caller fires: :meth:`start` records the delay, :meth:`fire` calls the callback when
    armed (and disarms first). ``starts``: every delay started, in seconds."""

    def __init__(self, callback: Callable[[], None]):
        self.callback = callback
        self.active = False
        self.delay_s: Optional[float] = None
        self.starts: List[float] = []

    def start(self, delay_s: float) -> None:
        self.active, self.delay_s = True, float(delay_s)
        self.starts.append(float(delay_s))

    def stop(self) -> None:
        self.active = False

    def fire(self) -> bool:
        """Call the callback if armed; returns whether it was."""
        if not self.active:
            return False
        self.active = False
        self.callback()
        return True


class CoalescingRenderer:
    """The timing rule of the module docstring around ``render(coarse: bool)``.

    interval_s: the throttle window (s); idle_s: the pause (s) after which the user counts as at rest.
    clock: seconds, monotonic (injected for tests). ``renders``: the ``coarse`` flag of every render so far.
    After :meth:`close` nothing renders again (late timer calls are ignored)."""

    def __init__(
        self,
        render: Callable[[bool], None],
        make_timer: Callable[[Callable[[], None]], Timer],
        *,
        interval_s: float = INTERVAL_S,
        idle_s: float = IDLE_S,
        clock: Callable[[], float] = time.monotonic,
    ):
        if not (interval_s >= 0.0 and idle_s > 0.0):
            raise ValueError(f"interval_s must be >= 0 and idle_s > 0 (seconds), got {interval_s}, {idle_s}")
        self._render = render
        self._clock = clock
        self.interval_s, self.idle_s = float(interval_s), float(idle_s)
        self.throttle_timer = make_timer(self._on_throttle)
        self.idle_timer = make_timer(self._on_idle)
        self._pending = 0  # changes since the last render
        self._last_render: Optional[float] = None  # clock time the last render while moving ended; None at rest
        self._closed = False
        self.renders: List[bool] = []

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def pending(self) -> int:
        return self._pending

    def changed(self) -> None:
        """One change of the rendered state (call from the observer)."""
        if self._closed:
            return
        self._pending += 1
        self.idle_timer.stop()
        if not self.throttle_timer.active:
            self.throttle_timer.start(self.interval_s)

    def _on_throttle(self) -> None:
        if self._closed or self._pending == 0:
            return
        now = self._clock()
        coarse = self._last_render is not None and now - self._last_render < self.idle_s
        self._pending = 0
        self._last_render = now
        self._do(coarse)
        self.render_ended()  # a synchronous render has ended here
        if coarse:
            self.idle_timer.start(self.idle_s)

    def render_ended(self) -> None:
        """The last render asked for has ended (now): a change within ``idle_s`` from now is rendered coarse. Called
        after each render; a render callback that only starts its render calls it again when the render ends.
        Nothing after the rest render (the next change is full size) or after :meth:`close`."""
        if self._last_render is not None and not self._closed:
            self._last_render = self._clock()

    def _on_idle(self) -> None:
        if self._closed or self._pending:
            return
        self._last_render = None  # at rest: the next change is rendered at full size
        self._do(False)

    def _do(self, coarse: bool) -> None:
        self.renders.append(bool(coarse))
        self._render(bool(coarse))

    def close(self) -> None:
        """Stop both timers; no render after this."""
        self._closed = True
        self._pending = 0
        self.throttle_timer.stop()
        self.idle_timer.stop()
