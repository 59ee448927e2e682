"""Percentiles and a progress line for long runs."""
import statistics
import sys
import time


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(values_s: list[float]) -> dict:
    ms = [v * 1000 for v in values_s]
    return {"n": len(ms), "p50": pct(ms, 50), "p90": pct(ms, 90), "p99": pct(ms, 99),
            "mean": statistics.fmean(ms) if ms else float("nan")}


class Progress:
    """`label [#####.....] 12/40 3.1s` on stderr, redrawn in place."""

    def __init__(self, label: str, total: int):
        self.label, self.total, self.done, self.started = label, total, 0, time.monotonic()
        self._draw()

    def step(self, n: int = 1) -> None:
        self.done += n
        self._draw()
        if self.done >= self.total:
            sys.stderr.write("\n")

    def _draw(self) -> None:
        width = 30
        filled = int(width * self.done / max(self.total, 1))
        sys.stderr.write(f"\r{self.label:<34} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{self.done}/{self.total} {time.monotonic() - self.started:5.1f}s")
        sys.stderr.flush()
