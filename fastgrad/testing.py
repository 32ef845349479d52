"""fastgrad's pytest plugin and assert helpers.

>>> from fastgrad.testing import assert_gradient
>>> def test_my_gradient():
...     assert_gradient(loss, grad, theta, args=(X, y))

Each helper runs a fastgrad check and returns its report; on "fail" (and on "warn" under
``--fastgrad-strict`` or with ``strict=True``) it raises :class:`fastgrad.GradientMismatch`,
an AssertionError whose message is the report, with fastgrad's own frames hidden from
pytest's traceback.  ``--fastgrad-report DIR`` saves every report a test checks as JSON
(``report.to_dict()``) in DIR, named after the test's node id.

pytest loads this module in every session where fastgrad is installed (entry point
``pytest11``): it imports nothing heavy at import time; NumPy, Numba and the checks are
imported when a helper runs.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pytest

    from .report import CheckReport

__all__ = ["assert_gradient", "assert_jacobian", "assert_jax_function", "assert_jvp",
           "assert_torch_function", "assert_vjp"]


@dataclass
class _Session:
    """The options of one pytest session, and the test running in it."""

    strict: bool = False
    report_dir: Path | None = None
    node_id: str | None = None
    saved: dict[str, int] = field(default_factory=dict)  # node id -> reports saved


#: The configured sessions, innermost last (pytester runs a session inside a session).
_sessions: list[_Session] = []


# ---------------------------------------------------------------------- the hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastgrad", "fastgrad's derivative checks")
    group.addoption("--fastgrad-strict", action="store_true", default=False,
                    help="fastgrad's assert helpers fail on a 'warn' verdict too")
    group.addoption("--fastgrad-report", metavar="DIR", default=None,
                    help="save each report of fastgrad's assert helpers as JSON in DIR, "
                         "named after the test's node id")


def pytest_configure(config: pytest.Config) -> None:
    directory = config.getoption("fastgrad_report")
    _sessions.append(_Session(strict=bool(config.getoption("fastgrad_strict")),
                              report_dir=None if directory is None  # relative to where pytest ran
                              else Path(config.invocation_params.dir, directory)))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _sessions:
        _sessions.pop()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if _sessions:
        _sessions[-1].node_id = item.nodeid


def pytest_runtest_teardown(item: pytest.Item) -> None:
    if _sessions:
        _sessions[-1].node_id = None


# ---------------------------------------------------------------------- the helpers
def assert_gradient(loss, grad, theta, args: tuple | list = (), *, strict: bool | None = None,
                    **options: Any) -> CheckReport:
    """:func:`fastgrad.check` (same arguments), asserted: see the module docstring."""
    __tracebackhide__ = True
    from .api import check

    return _settled(check(loss, grad, theta, args, **options), strict)


def assert_vjp(fun, vjp, x, args: tuple | list = (), *, strict: bool | None = None,
               **options: Any) -> CheckReport:
    """:func:`fastgrad.check_vjp` (same arguments), asserted."""
    __tracebackhide__ = True
    from .products import check_vjp

    return _settled(check_vjp(fun, vjp, x, args, **options), strict)


def assert_jvp(fun, jvp, x, args: tuple | list = (), *, strict: bool | None = None,
               **options: Any) -> CheckReport:
    """:func:`fastgrad.check_jvp` (same arguments), asserted."""
    __tracebackhide__ = True
    from .products import check_jvp

    return _settled(check_jvp(fun, jvp, x, args, **options), strict)


def assert_jacobian(fun, jac, x, args: tuple | list = (), *, strict: bool | None = None,
                    **options: Any) -> CheckReport:
    """:func:`fastgrad.check_jacobian` (same arguments), asserted."""
    __tracebackhide__ = True
    from .jacobian import check_jacobian

    return _settled(check_jacobian(fun, jac, x, args, **options), strict)


def assert_jax_function(fun, *args: Any, strict: bool | None = None, **options: Any) -> CheckReport:
    """:func:`fastgrad.jax.check_function` (same arguments), asserted."""
    __tracebackhide__ = True
    from .jax import check_function

    return _settled(check_function(fun, *args, **options), strict)


def assert_torch_function(fn, *inputs: Any, strict: bool | None = None, **options: Any) -> CheckReport:
    """``fastgrad.torch.check_function`` (same arguments), asserted."""
    __tracebackhide__ = True
    from importlib import import_module

    check_function = import_module("fastgrad.torch").check_function  # imports torch
    return _settled(check_function(fn, *inputs, **options), strict)


def _settled(report: CheckReport, strict: bool | None) -> CheckReport:
    """Save ``report`` (``--fastgrad-report``), then hold it to its verdict: strict as
    asked, else as the session's ``--fastgrad-strict`` says (False outside pytest)."""
    __tracebackhide__ = True
    from . import _validation as validate
    from .api import require_verdict

    session = _sessions[-1] if _sessions else _Session()
    strict = session.strict if strict is None else validate.flag("strict", strict)
    if session.report_dir is not None:
        _save(report, session)
    return require_verdict(report, strict)


def _save(report: CheckReport, session: _Session) -> Path:
    """DIR/<node id>.json, with -2, -3 … for a test's second and later reports; outside a
    test (a fixture's setup), ``session``'s DIR/fastgrad-report.json likewise."""
    assert session.report_dir is not None
    node = session.node_id or "fastgrad-report"
    count = session.saved[node] = session.saved.get(node, 0) + 1
    name = report_file_name(node) + ("" if count == 1 else f"-{count}")
    session.report_dir.mkdir(parents=True, exist_ok=True)
    path = session.report_dir / f"{name}.json"
    path.write_text(json.dumps(report.to_dict(), indent=1, allow_nan=False))  # type: ignore[attr-defined]
    return path


def report_file_name(node_id: str) -> str:
    """A file name for a test's node id: ``tests/test_a.py::test_b[1-x]`` →
    ``tests_test_a.py__test_b_1-x_``; every character outside [A-Za-z0-9._-] becomes _."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", node_id)
