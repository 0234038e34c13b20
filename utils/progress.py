"""Progress bars that suit both a live session and a stored notebook.

Live (a terminal, or stepping through a notebook): an ordinary ``tqdm`` bar. Static
(``RPNET_STATIC_FIGURES`` set, as ``make reproduce`` and ``make test`` do): nothing while the
loop runs, then one line with the finished bar, so a stored notebook keeps one line per loop
instead of every intermediate refresh.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm

from utils.config import STATIC_ENV


class FinalLineBar(tqdm):
    """A tqdm bar that writes a single line, its final state, when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["delay"] = float("inf")  # never drawn while running
        super().__init__(*args, **kwargs)
        self._written = False

    def close(self) -> None:
        if not self.disable and not self._written:
            self._written = True
            self.fp.write(str(self) + "\n")
            self.fp.flush()
        super().close()


def progress_bar(total: int, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar over ``total`` steps: live, or one final line in static runs."""
    static = bool(os.environ.get(STATIC_ENV))
    bar_type = FinalLineBar if static else tqdm
    return bar_type(total=total, desc=desc, disable=not enabled, **kwargs)
