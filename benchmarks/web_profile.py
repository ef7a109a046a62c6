"""Where the browser app's time goes: ``python -m XRayNeRFWeb`` with timers around its steps (for bench_web.py --profile).

    python benchmarks/web_profile.py LOG [xraynerf web arguments]

Runs the server unchanged, with wall-clock timers (ms) written to LOG, one line per timed call:
``<monotonic s> <step> <ms> [<view>]``. Steps: the overlay job (``overlay.total`` and its parts ``overlay.pose``,
``overlay.drr``, ``overlay.write``, ``overlay.show``), each view's frame (``view.render``: VTK drawing it through
llvmpipe and reading the pixels back, with the view's name) and its JPEG encoding (``view.encode``, in trame-rca's
encoder threads), and ``view.push`` (the frame handed to the websocket). :func:`summary` turns a LOG into a table.
"""

from __future__ import annotations

import functools
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
        _log.write(f"{time.monotonic():.4f} {step} {ms:.2f} {view}\n")
        _log.flush()


def _timed(step: str, fn, view_of=None):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _write(step, 1000 * (time.perf_counter() - t), view_of(args[0]) if view_of else "")

    return wrapper


def install(log_path: str) -> None:
    global _log
    _log = open(log_path, "a", buffering=1)
    from trame_rca.encoders import RcaImageEncoder
    from trame_rca.utils import RcaViewAdapter
    from trame_slicer.rca_view import rca_view_factory as f

    from XRayNeRFWeb import overlay, session

    name = lambda rca: getattr(rca, "_xr_name", "?")  # noqa: E731
    frame = f.RcaWindow.img_cols_rows.fget
    f.RcaWindow.img_cols_rows = property(_timed("view.render", frame, name))
    create = f.RemoteViewFactory._create_view

    def create_view(self, *args, **kwargs):
        view = create(self, *args, **kwargs)
        view.view_adapter._rca._xr_name = view.slicer_view.get_singleton_tag()
        return view

    f.RemoteViewFactory._create_view = create_view
    RcaImageEncoder.encode = _timed("view.encode", RcaImageEncoder.encode)
    RcaViewAdapter.push = _timed("view.push", RcaViewAdapter.push, lambda a: a.area_name)
    S, Q = session.Session, overlay.QuickDRR
    S.overlay_work = _timed("overlay.total", S.overlay_work)
    S.set_transform_matrix = _timed("overlay.pose", S.set_transform_matrix)
    S.show_overlay = _timed("overlay.show", S.show_overlay)
    Q.render = _timed("overlay.drr", Q.render)
    Q.write = _timed("overlay.write", Q.write)


def summary(log_path: str, since_s: float = 0.0, until_s: float = float("inf")) -> str:
    """A Markdown table of the LOG's steps between two monotonic times: calls, median and 90th percentile ms."""
    rows = defaultdict(list)
    for line in Path(log_path).read_text().splitlines():
        parts = line.split()
        t, step, ms = float(parts[0]), parts[1], float(parts[2])
        if since_s <= t <= until_s:
            rows[(step, parts[3] if len(parts) > 3 else "")].append(ms)
    out = ["| step | view | calls | median (ms) | 90th pct (ms) |", "|---|---|---|---|---|"]
    for (step, view), ms in sorted(rows.items()):
        ms.sort()
        out.append(f"| {step} | {view} | {len(ms)} | {statistics.median(ms):.1f} | {ms[int(0.9 * (len(ms) - 1))]:.1f} |")
    return "\n".join(out)


if __name__ == "__main__":
    install(sys.argv[1])
    from XRayNeRFWeb.cli import main

    sys.exit(main(sys.argv[2:]))
