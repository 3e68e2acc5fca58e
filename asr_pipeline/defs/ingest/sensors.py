"""new_transcripts_sensor: notices new, changed, unfinished and failed ingest batches and requests them."""

import time

import dagster as dg

from asr_pipeline.core.batches import IngestCursor
from asr_pipeline.defs.ingest.planning import plan_ingest, request_lines, run_requests
from asr_pipeline.defs.common.resources import PipelineSettings, TranscriptDatabase, _int_env

INGEST_JOB = "asr_ingest"
# ASR_SENSOR_INTERVAL_SECONDS: how often the daemon evaluates the sensor (default 60; the daemon test uses 5)
SENSOR_INTERVAL_SECONDS = _int_env("ASR_SENSOR_INTERVAL_SECONDS", 60)


@dg.sensor(job_name=INGEST_JOB, minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
           default_status=dg.DefaultSensorStatus.STOPPED,
           description="High-water mark on the id column: pending rows become a new ingest batch at ASR_BATCH_ROWS "
           "rows or after ASR_BATCH_MAX_WAIT_MINUTES. A batch is done only when featurized_shards exists for its "
           "current content: changed batches (corrected or deleted rows), unfinished ones and failed ones (at once "
           "for 3 attempts, then after waits doubling from an hour to a day) are requested again. One run per batch, "
           "content and attempt (run_key).")
def new_transcripts_sensor(context: dg.SensorEvaluationContext, database: TranscriptDatabase,
                           settings: PipelineSettings) -> dg.SensorResult:
    started = time.perf_counter()
    cursor = IngestCursor.from_json(context.cursor)
    # Short retries: a tick should fail visibly and soon; the next tick tries again. An exception leaves the cursor
    # where it was, so nothing is skipped by an outage.
    table = database.open_table(retries=1, backoff_s=0.5)
    try:
        plan = plan_ingest(context.instance, table, settings, cursor)
    finally:
        table.dispose()
    summary = f"{plan.summary()} ({time.perf_counter() - started:.3f} s)"
    context.log.info(summary)
    for line in request_lines(plan):
        context.log.info(f"requesting again {line}")
    if not plan.requests:
        return dg.SensorResult(skip_reason=f"no new or changed rows in {database.table}: {summary}",
                               cursor=plan.cursor.to_json())
    # A tick that requests runs has no skip reason: the reason of each request is on its run (tags asr/reason and
    # asr/why, shown with the tick on the Automation page) and in the tick's log above.
    return dg.SensorResult(run_requests=run_requests(plan), cursor=plan.cursor.to_json())
