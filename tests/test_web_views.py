"""XRayNeRFWeb/views.py without a browser or VTK: which views redraw while the overlay follows the controls."""

from __future__ import annotations

import asyncio

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


def test_only_the_overlay_view_redraws_while_dragging_and_all_redraw_once_it_settles():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    views, adapter = FakeViews("Red", "Green", "ThreeD"), FakeAdapter()
    red, green, threed = views.views
    drag = DragRendering(views, settle_s=0.2, overlay_adapter=adapter)

    async def main():
        for _ in range(3):  # three overlay updates while a control moves, 50 ms apart
            drag.moving()
            drag.start()
            assert red.is_render_blocked and green.is_render_blocked and threed.is_render_blocked
            drag.done()
            assert not red.is_render_blocked and green.is_render_blocked and threed.is_render_blocked
            assert adapter.max_pixel_count == DRAG_PIXELS  # the overlay view's image is small while dragging
            await asyncio.sleep(0.05)
        assert (red.renders, green.renders, threed.renders) == (3, 0, 0)
        await asyncio.sleep(0.3)  # still for longer than settle_s
        assert (red.renders, green.renders, threed.renders) == (3, 1, 1)
        assert adapter.max_pixel_count == 0 and drag.holding == []

    loop.run_until_complete(main())
    loop.close()


def test_a_running_update_defers_the_settle_and_release_all_frees_every_view():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    views = FakeViews("Red", "Green")
    red, green = views.views
    drag = DragRendering(views, settle_s=0.05)  # no adapter: the image size is left alone

    async def main():
        drag.start()
        drag.done()
        drag.start()  # the next update runs when the settle timer fires: the others stay held
        await asyncio.sleep(0.15)
        assert green.is_render_blocked and sorted(drag.holding) == ["Green", "Red"]
        drag.release_all()  # before a long job: every view redraws its previews
        assert not red.is_render_blocked and not green.is_render_blocked and drag.holding == []
        held_elsewhere = FakeView("Yellow")
        held_elsewhere.is_render_blocked = True
        views.views.append(held_elsewhere)
        drag.start()
        drag.release_all()
        assert held_elsewhere.is_render_blocked  # a view blocked by someone else is left alone

    loop.run_until_complete(main())
    loop.close()
