"""XRayNeRFWeb/views.py without a browser or VTK: which views redraw while the overlay follows the controls."""

from __future__ import annotations

import asyncio

from XRayNeRFMRML.throttle import CoalescingRenderer
from XRayNeRFWeb.overlay import INTERVAL_S, LoopTimer
from XRayNeRFWeb.views import DRAG_PIXELS, DragRendering


class FakeView:
    """trame-slicer's AbstractView as DragRendering uses it: a render-blocked flag, and a render on release."""

    def __init__(self, tag: str):
        self.tag, self.is_render_blocked, self.renders = tag, False, 0

    def get_singleton_tag(self) -> str:
        return self.tag

    def set_render_blocked(self, blocked: bool) -> bool:
        was, self.is_render_blocked = self.is_render_blocked, blocked
        if not blocked:
            self.renders += 1  # trame-slicer schedules a render when a view is released
        return was


class FakeViews:
    def __init__(self, *tags):
        self.views = [FakeView(t) for t in tags]

    def get_views(self):
        return list(self.views)


class FakeAdapter:
    max_pixel_count = 0


def test_only_the_overlay_view_redraws_while_coarse_and_all_redraw_with_the_full_size_drr():
    views, adapter = FakeViews("Red", "Green", "ThreeD"), FakeAdapter()
    red, green, threed = views.views
    drag = DragRendering(views, overlay_adapter=adapter)
    for _ in range(3):  # three coarse overlay updates while a control moves
        drag.start()
        assert red.is_render_blocked and green.is_render_blocked and threed.is_render_blocked
        drag.done(coarse=True)
        assert not red.is_render_blocked and green.is_render_blocked and threed.is_render_blocked
        assert adapter.max_pixel_count == DRAG_PIXELS  # the overlay view's image is small while dragging
    assert (red.renders, green.renders, threed.renders) == (3, 0, 0)
    drag.start()
    drag.done(coarse=False)  # the full-size DRR once the controls rest: every view, the Red one at full size
    assert (red.renders, green.renders, threed.renders) == (4, 1, 1)
    assert adapter.max_pixel_count == 0 and drag.holding == []


def test_release_all_frees_every_view_and_leaves_views_held_by_others():
    views = FakeViews("Red", "Green")
    red, green = views.views
    drag = DragRendering(views)  # no adapter: the image size is left alone
    drag.start()
    drag.done(coarse=True)
    drag.start()
    assert green.is_render_blocked and sorted(drag.holding) == ["Green", "Red"]
    drag.release_all()  # before a long job: every view redraws its previews
    assert not red.is_render_blocked and not green.is_render_blocked and drag.holding == []
    held_elsewhere = FakeView("Yellow")
    held_elsewhere.is_render_blocked = True
    views.views.append(held_elsewhere)
    drag.start()
    drag.release_all()
    assert held_elsewhere.is_render_blocked  # a view blocked by someone else is left alone


def test_the_layer_throttle_on_the_event_loop_coarse_while_moving_full_size_at_rest():
    """The page's overlay timing is the Slicer module's rule (XRayNeRFMRML.throttle.CoalescingRenderer) on
    asyncio timers (overlay.LoopTimer): a change after a pause renders full size at once; changes while moving
    render coarse, a burst within one loop turn once; the full-size render follows ``idle_s`` after the last."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    renders = []
    idle_s = 0.2
    throttle = CoalescingRenderer(lambda coarse: renders.append((coarse, loop.time())), LoopTimer, interval_s=INTERVAL_S, idle_s=idle_s)

    async def main():
        throttle.changed()
        await asyncio.sleep(0.02)
        assert [c for c, _ in renders] == [False]  # a single change after a pause: one full-size render, at once
        for _ in range(3):  # moving on, 50 ms apart (< idle_s): coarse; a burst of 5 changes gives one render
            for _ in range(5):
                throttle.changed()
            await asyncio.sleep(0.05)
        assert [c for c, _ in renders] == [False, True, True, True]
        last = renders[-1][1]
        await asyncio.sleep(idle_s + 0.15)  # at rest: one full-size render, idle_s after the last one
        assert [c for c, _ in renders] == [False, True, True, True, False]
        assert renders[-1][1] - last >= idle_s - 1e-3
        await asyncio.sleep(idle_s + 0.05)
        assert len(renders) == 5  # nothing more while nothing changes
        throttle.close()

    loop.run_until_complete(main())
    loop.close()
