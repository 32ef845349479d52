"""Run the README's Python blocks, as a reader would, and check what they say.

Block 2 is complete; block 1 (the API tour) and block 3 (the Monitor) run in its namespace
with the names they leave to the reader.  Imported by tests/test_docs.py, and run as a
script (``python tests/readme_blocks.py README.md``) in a venv made from the README's
install command alone: it needs numpy, numba and fastgrad only.
"""

from __future__ import annotations

import contextlib
import io
import re
import sys
from pathlib import Path

import numpy as np


def readme_blocks(readme: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)


def run_readme(readme: Path) -> dict:
    """Execute blocks 2, 1 and 3; return their namespace; AssertionError if one misleads."""
    tour, example, monitor = readme_blocks(readme)[:3]
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(example, "README block 2", "exec"), namespace)
    assert "PASS" in printed.getvalue(), printed.getvalue()
    namespace.update(theta=np.random.default_rng(1).standard_normal(50))
    namespace["params"] = namespace["theta"]
    theta_before = namespace["theta"].copy()
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(tour, "README block 1", "exec"), namespace)
    assert namespace["report"].passed
    assert namespace["g_num"].shape == (50,)
    np.testing.assert_array_equal(namespace["theta"], theta_before)
    namespace.update(steps=201, X_batch=namespace["X"], y_batch=namespace["y"])
    exec(compile(monitor, "README block 3", "exec"), namespace)
    assert len(namespace["mon"].history) == 3  # steps 0, 100 and 200
    assert namespace["mon"].seconds > 0
    return namespace


if __name__ == "__main__":
    run_readme(Path(sys.argv[1]))
    print("README blocks ran")
