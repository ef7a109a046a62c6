"""Where the browser app's time goes: ``python -m XRayNeRFWeb`` with timers around its steps (for bench_web.py --profile).

    python benchmarks/web_profile.py LOG [xraynerf web arguments]

Runs the server unchanged, with wall-clock timers (ms) written to LOG, one line per timed call:
``<epoch s> <step> <ms> [<view>]`` (wall clock, ``time.time()``, at the end of the call: the page's
``performance.timeOrigin + performance.now()`` is on the same clock, so bench_web.py can line up the page's key
presses and images with the server's steps). Steps: a pose control's change arriving from the page
(``page.pose``, 0 ms), the overlay job (``overlay.total`` and its parts ``overlay.pose``, ``overlay.drr`` with
``coarse`` / ``full``, ``overlay.write``, ``overlay.show``), each view's frame (``view.render``: VTK drawing it
through llvmpipe and reading the pixels back, with the view's name) and its JPEG encoding (``view.encode``, in
trame-rca's encoder threads), ``view.push`` (the frame handed to wslink) and ``ws.send`` (a view's frame sent on the
websocket, on the event loop; the time the send took, with the view's name). :func:`summary` turns a LOG into a
table, :func:`round_trip` splits the page's latencies into these steps.
"""

from __future__ import annotations

import functools
import math
import statistics
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

_lock = threading.Lock()
_log = None


def _write(step: str, ms: float, view: str = "") -> None:
    with _lock:
        _log.write(f"{time.time():.4f} {step} {ms:.2f} {view}\n")
        _log.flush()


def _timed(step: str, fn, view_of=None):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _write(step, 1000 * (time.perf_counter() - t), view_of(*args, **kwargs) if view_of else "")

    return wrapper


def install(log_path: str) -> None:
    global _log
    _log = open(log_path, "a", buffering=1)
    from trame_rca.encoders import RcaImageEncoder
    from trame_rca.utils import RcaViewAdapter
    from trame_slicer.rca_view import rca_view_factory as f

    from XRayNeRFWeb import session

    name = lambda rca, *_: getattr(rca, "_xr_name", "?")  # noqa: E731
    frame = f.RcaWindow.img_cols_rows.fget
    f.RcaWindow.img_cols_rows = property(_timed("view.render", frame, name))
    create = f.RemoteViewFactory._create_view

    def create_view(self, *args, **kwargs):
        view = create(self, *args, **kwargs)
        view.view_adapter._rca._xr_name = view.slicer_view.get_singleton_tag()
        return view

    f.RemoteViewFactory._create_view = create_view
    RcaImageEncoder.encode = _timed("view.encode", RcaImageEncoder.encode)
    RcaViewAdapter.push = _timed("view.push", RcaViewAdapter.push, lambda a, *_, **__: a.area_name)
    _time_frame_sends()
    from XRayNeRFMRML.live_overlay import OverlayRenderer as Q
    from XRayNeRFWeb.app import XRayNeRFWebApp as A

    A._on_pose_change = _timed("page.pose", A._on_pose_change)
    S = session.Session
    S.overlay_work = _timed("overlay.total", S.overlay_work)
    S.set_transform_matrix = _timed("overlay.pose", S.set_transform_matrix)
    S.show_overlay = _timed("overlay.show", S.show_overlay)
    Q.render_volume = _timed("overlay.drr", Q.render_volume, lambda r, v=None, coarse=False: "coarse" if coarse else "full")
    Q.write = _timed("overlay.write", Q.write)


def _time_frame_sends() -> None:
    """``ws.send``: wslink's send of each published view frame (topic ``trame.rca.topic.stream``), with the view's name."""
    from wslink.protocol import WslinkHandler

    send = WslinkHandler.sendWrappedMessage

    async def timed(self, rpcid, content, *args, **kwargs):
        t = time.perf_counter()
        try:
            return await send(self, rpcid, content, *args, **kwargs)
        finally:
            if str(rpcid).startswith("publish:trame.rca.topic.stream") and isinstance(content, dict):
                _write("ws.send", 1000 * (time.perf_counter() - t), str(content.get("name", "?")))

    WslinkHandler.sendWrappedMessage = timed


def summary(log_path: str, since_s: float = 0.0, until_s: float = float("inf")) -> str:
    """A Markdown table of the LOG's steps between two wall-clock times (epoch s): calls, median and 90th percentile ms."""
    rows = defaultdict(list)
    for line in Path(log_path).read_text().splitlines():
        parts = line.split()
        t, step, ms = float(parts[0]), parts[1], float(parts[2])
        if since_s <= t <= until_s:
            rows[(step, parts[3] if len(parts) > 3 else "")].append(ms)
    out = ["| step | view | calls | median (ms) | 90th pct (ms) |", "|---|---|---|---|---|"]
    for (step, view), ms in sorted(rows.items()):
        ms.sort()
        out.append(f"| {step} | {view} | {len(ms)} | {statistics.median(ms):.1f} | {ms[math.ceil(0.9 * len(ms)) - 1]:.1f} |")
    return "\n".join(out)


def _events(log_path: str):
    """{(step, view): sorted [(end epoch s, ms)]} of a LOG."""
    rows = defaultdict(list)
    for line in Path(log_path).read_text().splitlines():
        parts = line.split()
        rows[(parts[1], parts[3] if len(parts) > 3 else "")].append((float(parts[0]), float(parts[2])))
    return {k: sorted(v) for k, v in rows.items()}


def _first_after(events, t: float):
    return next((e for e in events if e[0] >= t), None)


def round_trip(log_path: str, steps, arrivals=()) -> str:
    """A Markdown table splitting each page latency into its parts. steps: [(key press, new image in the page)],
    epoch s. arrivals: epoch s of the websocket messages that reached the page (frames; empty: not split). For
    each step: the first pose change at the server after the key press, the first overlay job that starts after
    it, the first Red frame pushed after that job ends, its websocket send and its arrival in the page; medians
    over the steps (ms)."""
    ev = _events(log_path)
    pose, job, push = ev.get(("page.pose", ""), []), ev.get(("overlay.total", ""), []), ev.get(("view.push", "Red"), [])
    sends = ev.get(("ws.send", "Red"), [])
    arrivals = sorted((t, 0.0) for t in arrivals)
    starts = sorted((end - ms / 1000.0, ms) for end, ms in job)  # (start, ms)
    parts = defaultdict(list)
    for key_t, frame_t in steps:
        p = _first_after(pose, key_t)
        j = p and _first_after(starts, p[0])  # the first job started after the change (an earlier one may still run)
        f = j and _first_after(push, j[0] + j[1] / 1000.0)
        if not f or f[0] > frame_t + 0.005:  # not matched: the image came from another step
            continue
        start, j = j[0], (j[0] + j[1] / 1000.0, j[1])
        parts["key press -> pose change at the server (page, websocket)"].append(p[0] - key_t)
        parts["pose change -> overlay job starts (throttle, queue)"].append(start - p[0])
        parts["overlay job (pose, DRR, node write)"].append(j[1] / 1000.0)
        parts["job end -> Red frame pushed (draw, read back, JPEG)"].append(f[0] - j[0])
        s = _first_after(sends, f[0])
        a = s and _first_after(arrivals, s[0] - 0.002)  # clocks of one machine; a send's end may follow the arrival
        if a and a[0] <= frame_t + 0.001:
            parts["  frame pushed -> sent on the websocket (server event loop)"].append(s[0] - f[0])
            parts["  sent -> message in the page (network, page's main thread)"].append(max(0.0, a[0] - s[0]))
            parts["  message in the page -> new image (unpack, blob, JPEG decode, Vue)"].append(frame_t - max(a[0], s[0]))
        parts["frame pushed -> new image in the page (websocket, decode)"].append(frame_t - f[0])
        parts["total"].append(frame_t - key_t)
    n = len(parts["total"])
    out = [f"| part ({n} of {len(steps)} steps matched) | median (ms) | 90th pct (ms) |", "|---|---|---|"]
    for name, v in parts.items():
        v.sort()
        out.append(f"| {name} | {1000 * statistics.median(v):.1f} | {1000 * v[math.ceil(0.9 * len(v)) - 1]:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    install(sys.argv[1])
    from XRayNeRFWeb.cli import main

    sys.exit(main(sys.argv[2:]))
