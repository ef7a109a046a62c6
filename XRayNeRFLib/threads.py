"""torch's CPU thread count for one block of work, the caller's own count put back afterwards."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import torch


@contextmanager
def torch_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` (>= 1) torch CPU threads, the previous count restored after (also on an
    exception); None leaves the count as it is."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)
