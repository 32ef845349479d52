"""The executors section of ``fastgrad bench`` alone: ``python benchmarks/executor_costs.py [--quick]``.

Prints one line per comparison and writes every figure to ``executor_costs.json``.
"""

from __future__ import annotations

import json
import sys

from fastgrad_bench.common import FULL, QUICK
from fastgrad_bench.executors import measure_executors

if __name__ == "__main__":  # worker processes import this module again: run nothing then
    section = measure_executors(QUICK if "--quick" in sys.argv else FULL)
    for line in section.lines:
        print(" | ".join(filter(None, (line.comparison, line.result, line.target, line.status,
                                       line.why))))
    with open("executor_costs.json", "w", encoding="utf-8") as out:
        json.dump(section.figures, out, default=str, indent=1)
