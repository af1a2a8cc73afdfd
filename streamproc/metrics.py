"""In-process counters: the numbers behind logs now and the /metrics endpoint later.

Names follow Prometheus conventions (``_total`` counters, base units) so the exporter can map
them one to one.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self.counters: dict[tuple[str, Labels], float] = defaultdict(float)
        self.gauges: dict[tuple[str, Labels], float] = {}

    def inc(self, name: str, n: float = 1, **labels: Any) -> None:
        self.counters[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))] += n

    def set(self, name: str, value: float, **labels: Any) -> None:
        self.gauges[(name, tuple(sorted((k, str(v)) for k, v in labels.items())))] = value

    def total(self, name: str, **labels: Any) -> float:
        """Sum of a counter over every label set that includes ``labels``."""
        want = {(k, str(v)) for k, v in labels.items()}
        return sum(v for (n, ls), v in self.counters.items() if n == name and want <= set(ls))
