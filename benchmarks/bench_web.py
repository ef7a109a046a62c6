"""The browser app's speed and size: overlay latency while dragging, time to the first page, server memory.

Starts ``python -m XRayNeRFWeb`` on 127.0.0.1 and a free port, drives it with Playwright in Debian's Chromium
(/usr/bin/chromium), and measures

* **time to first page**: from starting the server process to the page showing its views (first view image
  in the page), and to the server saying it is ready;
* **overlay latency**: the sample CT, an X-ray of 256 x 256 pixels (the DRR tab renders the sample CT at LAO 20 /
  CRA 10 with 1 mm pixels, then "Use as the Registration X-ray"), then single steps of the R translation
  control (0.5 mm, keyboard): time from the key press to the Red view's new image in the page (the first image
  change after the key press, the previous change having settled); median and 90th percentile;
* **updates per second while dragging**: the control stepped every 30 ms for a few seconds; the overlay updates
  the server made and the view images the page received, per second;
* **server memory**: resident set size (VmRSS) after the sample CT, fluoroscopy and projections are loaded.

    .venv/bin/python benchmarks/bench_web.py [--steps 30] [--out benchmarks/RESULTS_web.md]

Results: benchmarks/RESULTS_web.md (with the machine's load average: numbers on a busy machine are slower).
"""

from __future__ import annotations

import argparse
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

WATCH_JS = """
() => {
  const img = document.querySelector('div:has(> .xr-view-Red) img');
  window.__frames = [];
  new MutationObserver(() => window.__frames.push(performance.now()))
    .observe(img, {attributes: true, attributeFilter: ['src']});
  window.__keys = [];
  document.addEventListener('keydown', () => window.__keys.push(performance.now()), true);
}
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="single control steps timed (default 30)")
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
            thumb = page.locator("#slider-tr .v-slider-thumb")
            thumb.focus()
            latencies = []
            windows = {"single steps": [time.monotonic()]}
            for i in range(args.steps):
                n = overlay_count(page)
                frames_before = page.evaluate("window.__frames.length")
                page.keyboard.press("ArrowRight" if (i // 10) % 2 == 0 else "ArrowLeft")
                page.wait_for_function(
                    f"() => parseInt(document.querySelector('#overlay-updates').textContent.split(':')[1]) > {n}"
                    f" && window.__frames.length > {frames_before}"
                )
                key_t = page.evaluate("window.__keys[window.__keys.length - 1]")
                frame_t = page.evaluate(f"window.__frames[{frames_before}]")
                latencies.append((frame_t - key_t) / 1000.0)
                time.sleep(1.2)  # let the view's still-quality frame of this update pass
            windows["single steps"].append(time.monotonic())
            latencies.sort()
            results["overlay latency, control step -> new view image, median (ms)"] = 1000 * statistics.median(latencies)
            results["overlay latency, 90th percentile (ms)"] = 1000 * latencies[int(0.9 * (len(latencies) - 1))]
            # continuous dragging
            n0, f0 = overlay_count(page), page.evaluate("window.__frames.length")
            t0 = time.monotonic()
            windows["dragging"] = [t0]
            i = 0
            while time.monotonic() - t0 < args.drag_s:
                page.keyboard.press("ArrowRight" if (i // 20) % 2 == 0 else "ArrowLeft")
                i += 1
                time.sleep(0.03)
            time.sleep(0.5)
            span = time.monotonic() - t0
            windows["dragging"].append(time.monotonic())
            results["dragging: overlay updates per second"] = (overlay_count(page) - n0) / span
            results["dragging: view images received per second"] = (page.evaluate("window.__frames.length") - f0) / span
            results["server memory at the end (MB RSS)"] = rss_mb(proc.pid)
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
        from web_profile import summary

        for name, (t0, t1) in windows.items():
            lines += ["", f"Server steps during the {name} (web_profile.py):", "", summary(args.profile, t0, t1)]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
