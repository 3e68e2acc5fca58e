"""The test session itself: isolated from the developer's environment by construction, and never silently
skipping a group of tests that is mandatory (CI)."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from asr_pipeline_tests.conftest import ASR_VARIABLES, package_variables

REPO = Path(__file__).resolve().parent.parent


def test_the_variable_list_is_derived_from_the_package():
    # variables read in different places (resources, schedules, definitions, launcher), none listed by hand
    assert {"ASR_BATCH_ROWS", "ASR_CHECK_BATCHES_PER_TICK", "ASR_PROMOTION_MARGIN", "ASR_RETRAIN_CRON",
            "ASR_EXECUTOR", "ASR_TRAIN_LAUNCHER", "ASR_DB_UPDATED_COLUMN", "DAGSTER_HOME"} <= set(ASR_VARIABLES)
    assert not [name for name in ASR_VARIABLES if name.startswith("ASR_TEST_")]
    assert package_variables() == ASR_VARIABLES


def test_no_package_variable_is_visible_to_a_test():
    leaked = [name for name in package_variables() if name in os.environ]
    assert not leaked, f"the developer's settings leak into the tests: {leaked}"


def test_a_developer_environment_full_of_bad_settings_does_not_reach_the_tests(tmp_path):
    """Every variable the package reads set to nonsense, as a developer's shell might have it: the tests above
    must still see none of it."""
    polluted = {**os.environ, **{name: "not-a-valid-value" for name in ASR_VARIABLES}}
    here = Path(__file__).relative_to(REPO)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{here}::test_no_package_variable_is_visible_to_a_test"],
        cwd=REPO, env=polluted, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_every_run_ends_with_the_reasons_for_what_it_skipped():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-ra" in config.get("addopts", "").split()


@pytest.mark.parametrize("marker, variable", [("mysql", "ASR_TEST_REQUIRE_MYSQL"),
                                              ("whisper_base", "ASR_TEST_REQUIRE_BASE_MODEL"),
                                              ("browser", "ASR_TEST_REQUIRE_BROWSER")])
def test_a_skipped_mandatory_test_fails_the_run(pytester, monkeypatch, marker, variable):
    pytester.makepyfile(f"""
        import pytest

        @pytest.mark.{marker}
        def test_needs_it():
            pytest.skip("the thing is not here")

        @pytest.mark.{marker}
        @pytest.mark.skipif(True, reason="added by someone later")
        def test_conditionally_skipped():
            pass

        def test_unrelated():
            pytest.skip("fine to skip")
    """)
    monkeypatch.delenv(variable, raising=False)
    relaxed = pytester.runpytest("-p", "asr_pipeline_tests.required_groups", "-ra")
    relaxed.assert_outcomes(skipped=3)
    relaxed.stdout.fnmatch_lines(["*SKIPPED*the thing is not here*"])

    monkeypatch.setenv(variable, "1")
    strict = pytester.runpytest("-p", "asr_pipeline_tests.required_groups", "-ra")
    strict.assert_outcomes(failed=1, errors=1, skipped=1)  # a skip in setup (skipif, a fixture) is an error
    strict.stdout.fnmatch_lines([f"*the thing is not here*mandatory here: {marker} ({variable}=1)*"])
    assert strict.ret != 0
