"""``xraynerf web``: serve the XRayNeRF browser app (registration, reconstruction, DRR) on one data folder.

``add_arguments(parser)`` and ``run(args) -> int`` are what the ``xraynerf`` command line calls; ``python -m
XRayNeRFWeb`` runs the same. Imports of trame, Slicer's core and VTK happen in :func:`run`, so that ``--help``
works without them.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

DESCRIPTION = """\
Serve XRayNeRF in the browser: Slicer's slice and 3D views with three tabs, Registration (a CT to one X-ray,
with a live DRR overlay while you move the CT, Register / Cancel / Accept / Revert, pose and ITK transform
downloads), Reconstruction (a CT from cone-beam projections, with a live preview slice) and DRR (a CT seen
from C-arm angles). The bundled sample data is one click away.

The server reads and writes only inside --data-dir (default: a fresh folder in the temporary directory): paths
with '..', absolute paths and links out of it are refused, and uploads are bounded by --max-upload-mb. It binds
127.0.0.1 unless told otherwise; it has no login, so only bind another address on a network you trust.
Rendering is headless (VTK through EGL / Mesa); no display or GPU is needed. Latency and memory:
benchmarks/bench_web.py and benchmarks/RESULTS_web.md.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", metavar="DIR", help="the only folder the server reads and writes (default: a new folder in the temp directory)"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only; another address prints a warning)"
    )
    parser.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 picks a free one)")
    parser.add_argument("--max-upload-mb", type=float, default=512.0, metavar="N", help="largest upload accepted, in MB (default 512)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the engine (default: torch's choice)")


def host_warning(host: str) -> Optional[str]:
    """The warning printed for a bind address other than this machine's loopback (None for loopback)."""
    if host in LOCAL_HOSTS:
        return None
    return (
        f"WARNING: binding {host}: the XRayNeRF web app has no login; anyone who can reach this address can "
        "use it and read or write files in the data folder. Use 127.0.0.1 (the default) unless the network is trusted."
    )


def run(args: argparse.Namespace) -> int:
    if args.max_upload_mb <= 0:
        print("xraynerf web: --max-upload-mb must be positive", file=sys.stderr)
        return 2
    warning = host_warning(args.host)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    import logging

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("XRayNeRFWeb").setLevel(logging.INFO)
    from .datadir import DataDir, default_data_dir

    data = DataDir(args.data_dir or default_data_dir(), int(args.max_upload_mb * 2**20))
    if args.threads:
        import torch

        torch.set_num_threads(int(args.threads))
    from .app import serve

    return serve(data, host=args.host, port=args.port)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m XRayNeRFWeb", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
