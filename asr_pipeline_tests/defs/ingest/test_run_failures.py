"""run_failures.stopped_the_run: the one answer to "did this failed check stop its run", which a batch's state
(why_it_failed) and a run-failure alert (alerts.sources.run_failure) both give."""

import dagster as dg
import pytest

from asr_pipeline.defs.ingest.run_failures import stopped_the_run


def evaluation(passed: bool, blocking: bool | None, severity=dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckEvaluation:
    return dg.AssetCheckEvaluation(asset_key=dg.AssetKey("resampled_dataset"), check_name="near_silent_clips",
                                   passed=passed, blocking=blocking, severity=severity)


@pytest.mark.parametrize("passed, blocking, severity, stopped", [
    (False, True, dg.AssetCheckSeverity.ERROR, True),
    (True, True, dg.AssetCheckSeverity.ERROR, False),    # a passed check stops nothing
    (False, False, dg.AssetCheckSeverity.ERROR, False),  # a non-blocking check only reports
    (False, True, dg.AssetCheckSeverity.WARN, False),    # a warning never stops a run, even from a blocking check
    (False, None, dg.AssetCheckSeverity.ERROR, False),   # reported outside a step: it stopped no run
])
def test_only_a_failed_blocking_error_stops_the_run(passed, blocking, severity, stopped):
    assert stopped_the_run(evaluation(passed, blocking, severity)) is stopped


def test_the_alerts_and_the_batch_states_ask_the_same_question():
    """Both readers of a failed run's checks call the one predicate (they differed on blocking=None before)."""
    import inspect

    from asr_pipeline.defs.alerts import sources
    from asr_pipeline.defs.ingest import run_failures

    for function in (sources.run_failure, run_failures.why_it_failed):
        code = inspect.getsource(function)
        assert "stopped_the_run(" in code and ".blocking" not in code, function.__name__
