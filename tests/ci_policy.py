"""CI policy for the test suite (a pytest plugin; ``tests/conftest.py`` installs its hooks).

Under CI (the environment variable ``CI`` set to anything but ``""``, ``0``, ``false`` or ``no``;
``.ci/run`` sets ``CI=true``) a skipped test FAILS: a test that skips because a file or a tool is
absent must not let a CI machine that lost an install step pass. ``xfail`` is not affected.
Also registers the ``fitted`` marker.
"""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _skip_reason(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2])
    return str(longrepr)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "fitted: the expected value was fitted to the implementation (not a correctness check)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail") and in_ci():
        report.outcome = "failed"
        report.longrepr = (f"skipped under CI={os.environ['CI']!r}, which counts as a failure: "
                           f"{_skip_reason(report.longrepr)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and in_ci():  # a module-level skip / importorskip
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} skipped under CI={os.environ['CI']!r}, which "
                           f"counts as a failure: {_skip_reason(report.longrepr)}")
