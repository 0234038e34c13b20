"""Progress bars that suit both a live session and a stored notebook.

Live (a terminal, or stepping through a notebook): ``tqdm.auto``'s bar, a native notebook
progress widget in Jupyter and a text bar in a terminal. Static
(``RPNET_STATIC_FIGURES`` set, as ``make reproduce`` and ``make test`` do): nothing while the
loop runs, then one clean line on stdout with the finished bar and its count, without elapsed
time, rate, ETA or postfix, so a stored notebook keeps one line per loop that is the same in
every run.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm
from tqdm.auto import tqdm as live_tqdm

from utils.config import STATIC_ENV

# The final line in static runs: description, percentage, bar and count; no timings.
STATIC_FORMAT = "{l_bar}{bar:10}| {n_fmt}/{total_fmt}"


class FinalLineBar(tqdm):
    """A tqdm bar that draws nothing while running and writes one timing-free line (to
    stdout) when it closes."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["delay"] = float("inf")  # never drawn while running
        super().__init__(*args, **kwargs)
        self._written = False

    def final_line(self) -> str:
        """The bar's state as one line without timings or postfix."""
        unit = "" if self.unit == "it" else f" {self.unit}"  # tqdm's default unit: no name
        return self.format_meter(self.n, self.total, 0, prefix=self.desc, ascii=self.ascii,
                                 bar_format=STATIC_FORMAT + unit)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Draw nothing while running (a refresh or ``set_postfix`` would, otherwise)."""
        return True

    def close(self) -> None:
        if not self.disable and not self._written:
            self._written = True
            sys.stdout.write(self.final_line() + "\n")
            sys.stdout.flush()
        super().close()


def progress_bar(total: int, desc: str, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A bar over ``total`` steps: live, or one final line in static runs."""
    static = bool(os.environ.get(STATIC_ENV))
    bar_type = FinalLineBar if static else live_tqdm
    return bar_type(total=total, desc=desc, disable=not enabled, **kwargs)
