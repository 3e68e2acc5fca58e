"""Why a run of the ingest job failed, in one line, from the instance's event log: the blocking check that stopped
it, the step's own error, a cancel, or a process that died in the middle of a step (kill -9, out of memory: no step
failure then, only the run's, recorded by whoever noticed). batch_states gives it as a failed batch's reason and the
alerts as a run failure's."""

from __future__ import annotations

import dagster as dg


def unfinished_step(instance: dg.DagsterInstance, run_id: str) -> str | None:
    """The step that started and never ended in this run, if any: the one its process was running when it died."""
    ended_types = {dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE,
                   dg.DagsterEventType.STEP_SKIPPED}
    records = instance.get_records_for_run(run_id, of_type={dg.DagsterEventType.STEP_START, *ended_types}).records
    started = [r.event_log_entry.dagster_event.step_key for r in records
               if r.event_log_entry.dagster_event.event_type == dg.DagsterEventType.STEP_START]
    ended = {r.event_log_entry.dagster_event.step_key for r in records
             if r.event_log_entry.dagster_event.event_type in ended_types}
    unfinished = [key for key in started if key not in ended]
    return unfinished[-1] if unfinished else None


def succeeded_steps(instance: dg.DagsterInstance, run_id: str) -> set[str]:
    """The steps that succeeded in this run (a run that failed later keeps what those made)."""
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_SUCCESS).records
    return {r.event_log_entry.dagster_event.step_key for r in records}


CRASH_PREFIX = "Run execution process for"  # the code server's engine event when a launched run's process dies


def run_failure_message(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why the run was marked failed: the code server's crash explanation for a launched run ("... was terminated by
    signal 9 (SIGKILL). This usually indicates ... out of memory"), which it records as an engine event before a
    generic run failure, else the run failure's own message (the CLI's: its process is gone)."""
    engine = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT).records
    crashes = [r.event_log_entry.dagster_event.message for r in engine
               if (r.event_log_entry.dagster_event.message or "").startswith(CRASH_PREFIX)]
    records = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records
    message = crashes[-1] if crashes else records[-1].event_log_entry.dagster_event.message if records else None
    return _whole_sentences((message or "the run was marked failed").strip().splitlines()[0], 300)


def process_death(instance: dg.DagsterInstance, run_id: str) -> tuple[str, str] | None:
    """(step, why) for a run whose process died in the middle of a step (kill -9, out of memory): such a run has no
    step failure, only the run's failure, recorded by whoever noticed (the code server, the run monitor, the CLI)."""
    step = unfinished_step(instance, run_id)
    if step is None:
        return None
    return step, f"the run's process died during {step}: {run_failure_message(instance, run_id)}"


def _whole_sentences(text: str, limit: int) -> str:
    """text cut to at most `limit` characters at a sentence's end (or hard, when its first sentence is longer)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(". ", 0, limit)
    return text[:cut + 1] if cut > 0 else text[:limit]


def stopped_the_run(evaluation: dg.AssetCheckEvaluation) -> bool:
    """A failed check that stops its run: blocking and not a warning (severity WARN never blocks, even from a
    blocking check). A step records its check spec's `blocking` (True or False); an evaluation reported outside a
    step has None, and such a one stopped no run. The batch states and the alerts both ask this."""
    return not evaluation.passed and evaluation.blocking is True and evaluation.severity != dg.AssetCheckSeverity.WARN


def why_it_failed(instance: dg.DagsterInstance, run_id: str) -> tuple[str, str]:
    """('blocked', the failed blocking check and its description) or ('failed', the step's error)."""
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION).records:
        evaluation = record.event_log_entry.dagster_event.event_specific_data
        if stopped_the_run(evaluation):
            detail = evaluation.description or ", ".join(
                f"{k}={getattr(v, 'value', v)}" for k, v in evaluation.metadata.items()
                if not isinstance(getattr(v, "value", None), (dict, list)))
            return "blocked", (f"blocking check {evaluation.asset_key.to_user_string()}.{evaluation.check_name} "
                               f"failed: {detail}")
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.STEP_FAILURE).records:
        event = record.event_log_entry.dagster_event
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:  # the user code's exception, not Dagster's wrapper
            error = error.cause
        message = (error.message.strip().splitlines() or [""])[-1] if error else "no error recorded"
        return "failed", f"step {event.step_key} failed: {message[:300]}"
    status = instance.get_run_by_id(run_id).status
    if status == dg.DagsterRunStatus.CANCELED:
        return "failed", "the run was canceled"
    death = process_death(instance, run_id)
    if death is not None:
        return "failed", death[1]
    for record in instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.RUN_FAILURE).records:
        return "failed", (record.event_log_entry.dagster_event.message or "the run failed")[:300]
    return "failed", "the run failed"
