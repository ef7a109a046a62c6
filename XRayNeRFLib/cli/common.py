"""What every ``xraynerf`` subcommand shares: exit codes, the one error wrapper, the progress bar, device
selection and output-path checks. Nothing here imports a subcommand module (no import circle).

Exit codes: :data:`EXIT_OK` 0; :data:`EXIT_ERROR` 2, an error the user can fix (bad input, missing tag,
unusable geometry, unwritable output; argparse's usage errors use 2 too); :data:`EXIT_INTERRUPTED` 130,
Ctrl-C or a cancelled run that wrote nothing.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Optional, TextIO

import torch

from ..progress import Cancelled, Progress

EXIT_OK = 0
EXIT_ERROR = 2
EXIT_USAGE = EXIT_ERROR  # argparse's code for a bad command line; the same number on purpose
EXIT_INTERRUPTED = 130

DEBUG_ENV = "XRAYNERF_DEBUG"  # =1: tracebacks instead of one-line errors


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (the class name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def run_command(prog: str, run: Callable[[object], int], args, stderr: Optional[TextIO] = None) -> int:
    """Run one subcommand: the only place that turns exceptions into exit codes.

    Ctrl-C (KeyboardInterrupt) and a cancelled engine run (:class:`~XRayNeRFLib.progress.Cancelled`) give
    ``{prog}: cancelled; no output written`` and 130; ``ValueError`` (including the typed errors of
    :mod:`XRayNeRFLib.errors`), ``RuntimeError`` and ``OSError`` give ``{prog}: error: <one line>`` and 2
    (with ``XRAYNERF_DEBUG=1`` they propagate, with their traceback)."""
    err = stderr if stderr is not None else sys.stderr
    try:
        return run(args)
    except (KeyboardInterrupt, Cancelled):
        err.write(f"\n{prog}: cancelled; no output written\n")
        return EXIT_INTERRUPTED
    except (ValueError, RuntimeError, OSError) as exc:
        if os.environ.get(DEBUG_ENV, "") == "1":
            raise
        err.write(f"{prog}: error: {one_line(exc)}\n")
        return EXIT_ERROR


def note(text: str, quiet: bool = False) -> None:
    """One line on stderr (nothing when ``quiet``)."""
    if not quiet:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


class TextProgress:
    """Progress callback drawing a bar on ``stream`` (default stderr).

    On a terminal the bar is redrawn in place at most ``1 / min_interval_s`` times a second; on a
    file or pipe one line is written per 10 % step. Never asks to stop (returns True)."""

    def __init__(self, label: str, stream: Optional[TextIO] = None, min_interval_s: float = 0.1, width: int = 30):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = min_interval_s
        self.width = width
        self.start = time.monotonic()
        self._last_draw = -math.inf
        self._last_decile = -1
        self._drawn = False

    def __call__(self, p: Progress) -> bool:
        now = time.monotonic()
        frac = p.fraction
        if self.tty:
            if now - self._last_draw >= self.min_interval_s or frac >= 1.0:
                self._last_draw = now
                self._write("\r" + self._line(frac, now))
        else:
            decile = int(frac * 10 + 1e-9)
            if decile > self._last_decile:
                self._last_decile = decile
                self._write(self._line(frac, now) + "\n")
        return True

    def _line(self, frac: float, now: float) -> str:
        filled = int(round(frac * self.width))
        elapsed = now - self.start
        eta = f" ETA {elapsed * (1 - frac) / frac:5.1f} s" if 0 < frac < 1 else f" {elapsed:5.1f} s"
        return f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {100 * frac:5.1f}%{eta}"

    def _write(self, text: str) -> None:
        self._drawn = True
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False


def progress_bar(label: str, quiet: bool) -> Optional[TextProgress]:
    """A :class:`TextProgress` on stderr, or None with ``--quiet``."""
    return None if quiet else TextProgress(label)


def select_device(name: str):
    """``--device`` -> torch.device: cpu, cuda or cuda:N; ValueError naming what to use instead."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {name!r} requested but CUDA is not available to this PyTorch build ({torch.__version__}); use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device {name!r} is not supported; use cpu, cuda or cuda:N")
    return device


def check_output_file(path: str, flag: str, example: str) -> None:
    """Refuse an output path that cannot be written: a file where a directory must be, no write permission,
    or a directory given as the file (``example``: a file name to suggest). Missing directories are fine:
    the commands create them once the result is ready."""
    out_dir = os.path.dirname(os.path.abspath(path))
    existing = out_dir
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"cannot create output directory {out_dir!r}: {existing!r} is a file")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"cannot write to {existing!r} (permission denied); choose another {flag}")
    if os.path.isdir(path):
        raise ValueError(f"{flag} {path!r} is a directory; give a file name such as {os.path.join(path, example)}")


def refuse_overwriting_inputs(inputs, outputs) -> None:
    """ValueError when a path is both an input and an output (compared as absolute paths; None skipped)."""
    outs = {os.path.abspath(str(o)) for o in outputs if o}
    for path in inputs:
        if path and os.path.abspath(str(path)) in outs:
            raise ValueError(f"{path} is both an input and an output")
