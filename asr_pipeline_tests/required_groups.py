"""No silent skips where a group of tests is mandatory (CI: .ci/run sets ASR_TEST_REQUIRE_*=1).

A test marked `mysql`, `whisper_base` or `browser` that is skipped (for whatever reason: an unreachable server, a
missing checkpoint, a `pytest.skip` or `skipif` someone adds later) is reported as a failure when its group's
variable is 1. Loaded by conftest.py (`pytest_plugins`).
"""

from __future__ import annotations

import os

import pytest

REQUIRED_GROUPS = {
    "mysql": "ASR_TEST_REQUIRE_MYSQL",
    "whisper_base": "ASR_TEST_REQUIRE_BASE_MODEL",
    "browser": "ASR_TEST_REQUIRE_BROWSER",
}


def mandatory_groups(item: pytest.Item) -> list[tuple[str, str]]:
    return [(marker, variable) for marker, variable in REQUIRED_GROUPS.items()
            if item.get_closest_marker(marker) is not None and os.environ.get(variable) == "1"]


def _skip_reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        return str(report.longrepr[2])
    return str(report.longrepr)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    outcome = yield
    report = outcome.get_result()
    if not report.skipped or hasattr(report, "wasxfail"):
        return
    groups = mandatory_groups(item)
    if groups:
        names = ", ".join(f"{marker} ({variable}=1)" for marker, variable in groups)
        report.outcome = "failed"
        report.longrepr = f"skipped ({_skip_reason(report)}), but these tests are mandatory here: {names}"
