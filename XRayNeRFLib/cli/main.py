"""The ``xraynerf`` entry point: one argparse parser with a subcommand per job.

Each subcommand module (:mod:`.drr`, :mod:`.inputs`, :mod:`.reconstruct`, :mod:`.register`) offers an
``add_...(subparsers) -> parser`` and a ``run...(args) -> int`` that raises on error; :data:`COMMANDS` lists
them and :func:`main` runs the chosen one through :func:`.common.run_command` (exit codes, one-line errors,
Ctrl-C). ``xraynerf web`` hands its arguments to the optional browser front end (``XRayNeRFWeb.cli``).
Nothing is written unless the whole result is ready.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import __version__
from . import drr, inputs, reconstruct, register
from .common import EXIT_USAGE, run_command

WEB_MODULE = "XRayNeRFWeb.cli"  # add_arguments(parser) and run(args) -> int
WEB_INSTALL_HINT = "pip install xraynerf[web]"

# name -> (add the subparser, run it); in the order of `xraynerf --help`.
COMMANDS: Dict[str, Tuple[Callable, Callable]] = {
    "drr": (drr.add_parser, drr.run),
    "convert": (inputs.add_convert, inputs.run_convert),
    "info": (inputs.add_info, inputs.run_info),
    "register": (register.add_parser, register.run),
    "reconstruct": (reconstruct.add_parser, reconstruct.run),
}


def _add_web(subparsers) -> argparse.ArgumentParser:
    # Its options belong to XRayNeRFWeb (imported only when `xraynerf web` runs): they are parsed there.
    return subparsers.add_parser(
        "web",
        add_help=False,
        help=f"serve the registration app in a browser (optional: {WEB_INSTALL_HINT}); xraynerf web --help lists its options",
    )


def run_web(argv: List[str]) -> int:
    """``xraynerf web ARGS``: parse ARGS with XRayNeRFWeb's parser and run it; without the web extra, one line
    saying how to install it and the usage-error code."""
    try:
        web = importlib.import_module(WEB_MODULE)
    except ImportError as exc:
        missing = f" ({exc.name} is not installed)" if exc.name else ""
        sys.stderr.write(f"xraynerf web: the browser front end is not installed{missing}; install the web extra: {WEB_INSTALL_HINT}\n")
        return EXIT_USAGE
    parser = argparse.ArgumentParser(
        prog="xraynerf web",
        description=getattr(web, "DESCRIPTION", "XRayNeRF in the browser."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    web.add_arguments(parser)
    return run_command("xraynerf web", web.run, parser.parse_args(argv))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xraynerf",
        description="XRayNeRF: cone-beam X-ray geometry, DRRs, reconstruction and 2D/3D registration (engine command line).",
        epilog=drr.CONVENTIONS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for add, run in COMMANDS.values():
        add(subparsers).set_defaults(run=run)
    _add_web(subparsers)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 error, 130 interrupted; see :mod:`.common`)."""
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "web":
        return run_web(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return run_command(f"xraynerf {args.command}", args.run, args)
