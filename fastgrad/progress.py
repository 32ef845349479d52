"""A progress bar on stderr for long checks: coordinates done, evaluations per second, time left."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

#: The bar appears only once a check has run this long.
DELAY_SECONDS = 1.0
#: ... and is redrawn at most this often.
REDRAW_SECONDS = 0.1
WIDTH = 30


class ProgressBar:
    """``check(progress=ProgressBar(total))``: called with (coordinates, evaluations) done."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, delay: float = DELAY_SECONDS):
        self.total = max(int(total), 1)
        self.stream = stream
        self.delay = delay
        self.done = 0
        self.evaluations = 0
        self.started = time.perf_counter()
        self.drawn_at = 0.0
        self.shown = False
        self.lock = threading.Lock()

    def __call__(self, coordinates: int, evaluations: int) -> None:
        with self.lock:
            self.done += coordinates
            self.evaluations += evaluations
            now = time.perf_counter()
            if now - self.started >= self.delay and now - self.drawn_at >= REDRAW_SECONDS:
                self.drawn_at = now
                self._draw(now - self.started)

    def _draw(self, elapsed: float) -> None:
        done = min(self.done, self.total)
        filled = int(WIDTH * done / self.total)
        rate = self.evaluations / elapsed if elapsed > 0 else 0.0
        per_coordinate = elapsed / self.done if self.done else 0.0
        left = per_coordinate * (self.total - done)
        self.stream.write(f"\r[{'#' * filled}{'.' * (WIDTH - filled)}] {done:,}/{self.total:,} "
                          f"coordinates  {rate:,.0f} evaluations/s  {_duration(left)} left ")
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Clear the bar's line, if it was drawn."""
        with self.lock:
            if self.shown:
                self.stream.write("\r" + " " * (WIDTH + 70) + "\r")
                self.stream.flush()


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(round(seconds), 60)
    return f"{minutes}:{seconds:02d}"
