"""Progress reporting and cancellation for long engine loops.

Engine loops take ``progress: Callable[[Progress], bool] | None``. The callback is called every now and
then with a :class:`Progress`; when it returns ``False`` the loop stops. Loops that have a meaningful
"best result so far" (optimisers) return it; loops whose partial result would be misleading (a half
rendered projection stack) raise :class:`Cancelled` so that nothing half-done is written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional


@dataclass
class Progress:
    """State of a long computation.

    done, total: units of work finished and in all (e.g. rays, iterations).
    message: short human-readable text ("rendering view 3/40").
    preview: optional payload for a live preview (a DRR, a slice); may be None.
    """

    done: int
    total: int
    message: str = ""
    preview: Any = field(default=None, repr=False)

    @property
    def fraction(self) -> float:
        return 0.0 if self.total <= 0 else min(1.0, self.done / self.total)


ProgressCallback = Optional[Callable[[Progress], bool]]


class Cancelled(RuntimeError):
    """Raised when a progress callback asked a computation to stop and no partial result is kept."""


def report(progress: ProgressCallback, done: int, total: int, message: str = "", preview: Any = None) -> None:
    """Call ``progress`` (if any) and raise :class:`Cancelled` when it returns False."""
    if progress is None:
        return
    keep_going = progress(Progress(done, total, message, preview))
    if keep_going is False:
        raise Cancelled(f"cancelled by the user at {done}/{total}: {message}".rstrip(": "))
