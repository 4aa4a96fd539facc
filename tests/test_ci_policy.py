"""Under CI a skip is a failure (tests/ci_policy.py), checked on a throw-away suite run in-process
with the policy as its only plugin."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SUITE = '''
import pytest

def test_passes():
    assert True

def test_tool_missing():
    pytest.skip("the tool is not installed")

@pytest.mark.skipif(True, reason="the data file is absent")
def test_marked_skipif():
    pass

@pytest.fixture
def needs_file():
    pytest.skip("fixture: the file is absent")

def test_fixture_skips(needs_file):
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
'''

MODULE_SKIP = '''
import pytest
pytest.importorskip("a_module_that_is_not_installed")

def test_never_runs():
    pass
'''


HOOKS = ("from ci_policy import pytest_configure, pytest_make_collect_report, "
         "pytest_runtest_makereport  # noqa: F401\n")  # as tests/conftest.py installs them


def run(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ci: str | None,
        **files: str) -> pytest.RunResult:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    pytester.makeconftest(HOOKS)
    pytester.makepyfile(**files)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rfE")


@pytest.mark.parametrize("ci", [None, "false"])
def test_skips_stay_skips_outside_ci(pytester, monkeypatch, ci):
    result = run(pytester, monkeypatch, ci, test_suite=SUITE)
    result.assert_outcomes(passed=1, skipped=3, xfailed=1)


def test_every_skip_fails_under_ci(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "true", test_suite=SUITE)
    # a skip in the test body fails; in setup (skipif, a fixture) it is an error; the xfail stays
    result.assert_outcomes(passed=1, failed=1, errors=2, xfailed=1)
    assert result.ret != 0
    summary = [line for line in result.stdout.lines if line.startswith(("FAILED", "ERROR"))]
    assert len(summary) == 3 and all("counts as a failure" in line for line in summary)
    for why in ("the tool is not installed", "the data file is absent",
                "fixture: the file is absent"):
        assert any(why in line for line in summary), why


def test_a_module_level_skip_is_a_collection_error_under_ci(pytester, monkeypatch):
    result = run(pytester, monkeypatch, "1", test_module_skip=MODULE_SKIP)
    result.assert_outcomes(errors=1)
    assert "a_module_that_is_not_installed" in result.stdout.str()
    assert result.ret != 0


def test_ci_policy_reads_ci_like_ci_systems_set_it(monkeypatch):
    from ci_policy import in_ci

    for value, expected in (("true", True), ("1", True), ("yes", True), ("TRUE", True),
                            ("", False), ("0", False), ("false", False), ("no", False)):
        monkeypatch.setenv("CI", value)
        assert in_ci() is expected, value
    monkeypatch.delenv("CI")
    assert in_ci() is False


def test_ci_run_sets_ci_itself():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[1] / ".ci" / "run").read_text()
    lines = [line.strip() for line in script.splitlines()]
    assert "export CI=true" in lines
    assert lines.index("export CI=true") < next(i for i, line in enumerate(lines)
                                                 if line.startswith("exec "))
