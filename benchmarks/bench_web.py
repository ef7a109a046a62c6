"""The browser app's speed and size: overlay latency while dragging, time to the first page, server memory.

Starts ``python -m XRayNeRFWeb`` on 127.0.0.1 and a free port, drives it with Playwright in Debian's Chromium
(/usr/bin/chromium), and measures

* **time to first page**: from starting the server process to the page showing its views (first view image
  in the page), and to the server saying it is ready;
* **overlay latency while dragging**: the sample CT, an X-ray of 256 x 256 pixels (the DRR tab renders the
  sample CT at LAO 20 / CRA 10 with 1 mm pixels, then "Use as the Registration X-ray"), then steps of the R
  translation control (0.5 mm, keyboard) every ``--drag-step-s`` (less than the layer's rest time
  ``XRayNeRFMRML.throttle.IDLE_S``: the user is still moving, each DRR is the coarse one): time from the key
  press to the Red view's new image in the page (the first image change after the key press, once the server
  has counted the update); median and 90th percentile;
* **a nudge at rest**: single steps with a pause of 1.2 s (longer than the rest time) before each: the DRR is
  the full-size one (the layer's rule: a single change renders at full size at once), same timing;
* **updates per second while dragging**: the control stepped every 30 ms for a few seconds (key events sent by
  the page itself); the overlay updates the server made and the view images the page received, per second;
* with ``--profile``: the server's steps, and each dragging latency split into its parts (web_profile.round_trip:
  the page and websocket in, the queue, the overlay job, the frame, the websocket out (the frame's send on the
  server's event loop, its arrival in the page: a WebSocket wrapper added before the page's scripts) and the page's
  decode);
* **server memory**: resident set size (VmRSS) after the sample CT, fluoroscopy and projections are loaded.

    .venv/bin/python benchmarks/bench_web.py [--steps 30] [--nudges 10] [--out FILE] [--profile LOG]

Results: benchmarks/RESULTS_web.md (with the machine's load average: numbers on a busy machine are slower).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"

# times in the page as epoch ms (performance.timeOrigin + now): the server's profile log uses the same clock
WATCH_JS = """
() => {
  const now = () => performance.timeOrigin + performance.now();
  const img = document.querySelector('div:has(> .xr-view-Red) img');
  window.__frames = [];
  new MutationObserver(() => window.__frames.push(now()))
    .observe(img, {attributes: true, attributeFilter: ['src']});
  window.__keys = [];
  document.addEventListener('keydown', () => window.__keys.push(now()), true);
}
"""


# before the page's scripts: the arrival time (epoch ms) of each websocket message large enough to be a view frame
WS_ARRIVALS_JS = """
(() => {
  const now = () => performance.timeOrigin + performance.now();
  const Native = window.WebSocket;
  window.__ws = [];
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener('message', (e) => {
        const size = e.data.byteLength ?? e.data.size ?? e.data.length ?? 0;
        if (size > 2000) window.__ws.push(now());
      });
    }
  };
})();
"""


# a continuous drag driven by the page itself: a key step of the R control every `ms` for `durationMs` (Playwright's
# own key presses, a round trip each, come too slowly on a loaded machine to saturate the server); resolves to the count
DRAG_JS = """
([ms, durationMs]) => new Promise((resolve) => {
  const thumb = document.querySelector('#slider-tr .v-slider-thumb');
  const t0 = performance.now();
  let i = 0;
  const id = setInterval(() => {
    const key = Math.floor(i / 20) % 2 === 0 ? 'ArrowRight' : 'ArrowLeft';
    thumb.dispatchEvent(new KeyboardEvent('keydown', {key, bubbles: true}));
    i += 1;
    if (performance.now() - t0 >= durationMs) { clearInterval(id); resolve(i); }
  }, ms);
})
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def overlay_count(page) -> int:
    return int(page.inner_text("#overlay-updates").split(":")[1])


def wait_message(page, pattern: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if page.is_visible("#message") and re.search(pattern, page.inner_text("#message"), re.I):
            return
        time.sleep(0.1)
    raise RuntimeError(f"no message {pattern!r}: {page.inner_text('#message')!r}")


def step(page, i: int):
    """One step of the R control (right for 10 steps, then left, ...); returns (key press, new image) epoch s:
    the first Red image after the key press, once the server has counted the overlay update."""
    n, frames_before = overlay_count(page), page.evaluate("window.__frames.length")
    page.keyboard.press("ArrowRight" if (i // 10) % 2 == 0 else "ArrowLeft")
    page.wait_for_function(
        f"() => parseInt(document.querySelector('#overlay-updates').textContent.split(':')[1]) > {n}"
        f" && window.__frames.length > {frames_before}"
    )
    key_t = page.evaluate("window.__keys[window.__keys.length - 1]")
    return key_t / 1000.0, page.evaluate(f"window.__frames[{frames_before}]") / 1000.0


def timed_steps(page, n: int, pause_s: float):
    """n steps, each ``pause_s`` after the previous key press (or its image, when that came later)."""
    steps = []
    for i in range(n):
        if steps:
            time.sleep(max(0.0, pause_s - (time.time() - steps[-1][0])))
        steps.append(step(page, i))
    return steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="control steps timed while dragging (default 30)")
    parser.add_argument("--drag-step-s", type=float, default=0.15, help="seconds between the dragging steps (default 0.15)")
    parser.add_argument("--nudges", type=int, default=10, help="single steps at rest timed (default 10)")
    parser.add_argument("--drag-s", type=float, default=4.0, help="seconds of continuous dragging (default 4)")
    parser.add_argument("--out", help="write the results as Markdown here")
    parser.add_argument("--profile", metavar="LOG", help="time the server's steps (web_profile.py) into LOG; tables in the output")
    args = parser.parse_args()
    import tempfile

    from playwright.sync_api import sync_playwright

    data = tempfile.mkdtemp(prefix="xraynerf-bench-web-")
    port = free_port()
    # this tree's engine, MRML layer (XRayNeRF/XRayNeRFMRML) and app, also where another checkout is pip-installed editable
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "XRayNeRF")]), VTK_DEFAULT_OPENGL_WINDOW="vtkEGLRenderWindow")
    t_start = time.monotonic()
    server = ["-m", "XRayNeRFWeb"] if not args.profile else [str(REPO / "benchmarks" / "web_profile.py"), args.profile]
    proc = subprocess.Popen(
        [sys.executable, *server, "--port", str(port), "--data-dir", data],
        cwd=str(REPO),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    results = {}
    try:
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError("the server stopped")
            m = re.search(r"XRayNeRF web app: (http://\S+)", line)
            url = m.group(1) if m else None
        results["server ready (s)"] = time.monotonic() - t_start
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1400, "height": 860})
            page.set_default_timeout(300_000)
            if args.profile:
                page.add_init_script(WS_ARRIVALS_JS)
            page.goto(url)
            page.wait_for_function(
                "() => { const i = document.querySelector('div:has(> .xr-view-Red) img'); return i && i.src && i.src.startsWith('blob:'); }"
            )
            results["first page with views, from server start (s)"] = time.monotonic() - t_start
            # samples: registration (CT + fluoroscopy), projections
            page.click("#sample-registration")
            wait_message(page, "Loaded the sample chest CT")
            page.click("#tab-reconstruction")
            page.click("#sample-projections")
            wait_message(page, "30 views")
            results["server memory with the samples (MB RSS)"] = rss_mb(proc.pid)
            # a 256 x 256 X-ray: the DRR of the sample CT at LAO 20 / CRA 10, 1 mm pixels
            page.click("#tab-drr")
            for key, value in (
                ("drr-primary", "20"),
                ("drr-secondary", "10"),
                ("drr-cols", "256"),
                ("drr-rows", "256"),
                ("drr-spacing", "1.0"),
            ):
                page.fill(f"#{key}", value)
            page.click("#render-drr")
            wait_message(page, "DRR rendered")
            n = overlay_count(page)
            page.click("#drr-as-xray")
            wait_message(page, "is now the Registration X-ray")
            page.wait_for_function(f"() => parseInt(document.querySelector('#overlay-updates').textContent.split(':')[1]) > {n}")
            time.sleep(2.0)
            page.evaluate(WATCH_JS)
            windows = {}
            page.locator("#slider-tr .v-slider-thumb").focus()
            windows["nudges at rest"] = [time.time()]
            nudges = timed_steps(page, args.nudges, pause_s=1.2)
            windows["nudges at rest"].append(time.time())
            step(page, 0)  # the drag's first change follows a pause: full size, not timed
            windows["dragging steps"] = [time.time()]
            drags = timed_steps(page, args.steps, pause_s=args.drag_step_s)
            windows["dragging steps"].append(time.time())
            for name, steps in (("while dragging", drags), ("a nudge at rest (full-size DRR)", nudges)):
                lat = sorted(frame - key for key, frame in steps)
                results[f"overlay latency {name}, control step -> new view image, median (ms)"] = 1000 * statistics.median(lat)
                results[f"overlay latency {name}, 90th percentile (ms)"] = 1000 * lat[math.ceil(0.9 * len(lat)) - 1]
            # continuous dragging
            time.sleep(1.2)
            n0, f0 = overlay_count(page), page.evaluate("window.__frames.length")
            t0 = time.monotonic()
            windows["continuous dragging"] = [time.time()]
            presses = page.evaluate(DRAG_JS, [30, 1000 * args.drag_s])
            time.sleep(0.5)
            span = time.monotonic() - t0
            windows["continuous dragging"].append(time.time())
            results["dragging: control steps per second (the page's key events)"] = presses / span
            results["dragging: overlay updates per second"] = (overlay_count(page) - n0) / span
            results["dragging: view images received per second"] = (page.evaluate("window.__frames.length") - f0) / span
            results["server memory at the end (MB RSS)"] = rss_mb(proc.pid)
            arrivals = [t / 1000.0 for t in page.evaluate("window.__ws || []")]
            browser.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    load = os.getloadavg()
    lines = [
        "| measure | value |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in results.items()],
        "",
        f"{os.cpu_count()} CPU cores, torch threads default, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"(1 / 5 / 15 min) at the end; `{' '.join([Path(sys.executable).name] + sys.argv)}`",
    ]
    if args.profile:
        from web_profile import round_trip, summary

        lines += ["", "Where the dragging latency goes (web_profile.round_trip):", "", round_trip(args.profile, drags, arrivals)]
        for name, (t0, t1) in windows.items():
            lines += ["", f"Server steps during the {name} (web_profile.py):", "", summary(args.profile, t0, t1)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
