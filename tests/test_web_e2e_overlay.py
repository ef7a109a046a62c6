"""The overlay and the landmark clicks in the browser, end to end (the server and Chromium as in test_web_e2e.py,
with its fixtures and helpers; a server of its own):

* after a burst of control steps (frames of two sizes, coarse while moving and full size at rest, arriving close
  together) the page ends on the newest image: the Red view's final image in the page equals the image a second
  page, opened afterwards, gets of the server's current scene (the final pose's overlay);
* clicks in the views place landmarks: CT points in the Green view, X-ray points in the Red view (Slicer's place
  mode through trame-slicer), counted in the page; Landmark start with three pairs gives the layer's message.
"""

from __future__ import annotations

import json
import time

import numpy as np
import test_web_e2e as e2e

server, page = e2e.server, e2e.page  # the module's own server and page (the fixtures of test_web_e2e.py)

# a burst of `n` key steps of the R control, `ms` apart, sent by the page itself (faster than Playwright's presses)
BURST_JS = """
([n, ms]) => new Promise((resolve) => {
  const thumb = document.querySelector('#slider-tr .v-slider-thumb');
  let i = 0;
  const id = setInterval(() => {
    thumb.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight', bubbles: true}));
    i += 1;
    if (i >= n) { clearInterval(id); resolve(i); }
  }, ms);
})
"""


def red_image_of_a_new_page(page, server) -> np.ndarray:
    """The Red view's image in a second page opened now in the same browser (the server's current scene, drawn
    for it)."""
    other = page.context.browser.new_page(viewport={"width": 1400, "height": 860})
    try:
        other.goto(server["url"])
        other.wait_for_function(
            "() => { const i = document.querySelector('div:has(> .xr-view-Red) img');"
            " return i && i.src && i.src.startsWith('blob:') && i.complete && i.naturalWidth > 0; }"
        )
        return e2e.stable_view(other)
    finally:
        other.close()


def test_after_a_burst_of_steps_the_page_ends_on_the_newest_image(page, server):
    page.click("#sample-registration")
    e2e.wait_message(page, "Loaded the sample chest CT")
    page.wait_for_function("() => parseInt(document.querySelector('#overlay-updates').textContent.split(':')[1]) >= 1")
    start = e2e.stable_view(page)
    for burst in range(3):  # three bursts of 12 steps (6 mm each), 25 ms apart, with a short pause between them
        n = e2e.overlay_count(page)
        page.evaluate(BURST_JS, [12, 25])
        e2e.wait_overlay_after(page, n)
        time.sleep(0.1 * burst)
    page.wait_for_function("() => document.querySelector('#slider-tr input').value == '18'")
    final = e2e.stable_view(page)  # the page's image once frames stop coming (the full-size DRR at rest is the last)
    pose = np.array(json.loads(e2e.download(page, "#download-pose").read_text())["ct_to_parent_ras"])
    np.testing.assert_allclose(pose[:3, 3], (18.0, 0.0, 0.0), atol=1e-6)  # the server's scene is at the final pose
    fresh = red_image_of_a_new_page(page, server)
    assert final.shape == fresh.shape
    assert np.abs(final - start).max(axis=-1).mean() > 1.0, "the overlay did not move"
    diff = np.abs(final - fresh).max(axis=-1)
    differ = (diff > 8).mean()
    assert differ < 0.001, f"the page's final image is not the final pose's overlay ({differ:.4f} of the pixels differ)"
    page.click("#reset-pose")
    page.wait_for_function("() => document.querySelector('#slider-tr input').value == '0'")


def click_in_view(page, name: str, offsets) -> None:
    """Left clicks at (dx, dy) px from the centre of the view's image in the page."""
    img = page.locator(f"div:has(> .xr-view-{name}) img").first
    box = img.bounding_box()
    for dx, dy in offsets:
        page.mouse.click(box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2 + dy)
        time.sleep(0.3)


def test_clicks_in_the_views_place_landmark_pairs_and_start_gives_the_layer_message(page):
    offsets = [(-40, -30), (35, -25), (10, 40)]
    n = len(offsets)
    page.click("#lm-place-ct")
    e2e.wait_message(page, "Click the landmarks on the CT")
    click_in_view(page, "Green", offsets)
    page.wait_for_function(f"() => document.querySelector('#lm-counts').textContent.includes('CT points: {n} ')")
    page.click("#lm-place-xray")
    e2e.wait_message(page, "Click the landmarks on the X-ray")
    click_in_view(page, "Red", offsets)
    page.wait_for_function(f"() => document.querySelector('#lm-counts').textContent.includes('X-ray points: {n}')")
    before = json.loads(e2e.download(page, "#download-pose").read_text())["ct_to_parent_ras"]
    page.click("#lm-start")
    e2e.wait_message(page, f"{n} landmark pairs: a pose needs at least 4")
    assert json.loads(e2e.download(page, "#download-pose").read_text())["ct_to_parent_ras"] == before  # nothing moved
    page.click("#lm-clear")
    page.wait_for_function("() => document.querySelector('#lm-counts').textContent.includes('CT points: 0 ')")
