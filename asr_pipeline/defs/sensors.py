"""new_transcripts_sensor: notices new and changed rows and requests their ingest batches."""

import time

import dagster as dg

from asr_pipeline.core.batches import IngestCursor
from asr_pipeline.defs.ingest import plan_for_instance, run_requests
from asr_pipeline.defs.partitions import INGEST_BATCHES
from asr_pipeline.defs.resources import PipelineSettings, TranscriptDatabase, _int_env

INGEST_JOB = "asr_ingest"
# ASR_SENSOR_INTERVAL_SECONDS: how often the daemon evaluates the sensor (default 60; the daemon test uses 5)
SENSOR_INTERVAL_SECONDS = _int_env("ASR_SENSOR_INTERVAL_SECONDS", 60)


@dg.sensor(job_name=INGEST_JOB, minimum_interval_seconds=SENSOR_INTERVAL_SECONDS, default_status=dg.DefaultSensorStatus.STOPPED,
           description="High-water mark on the id column: new rows become new ingest batches; batches whose "
           "fingerprint changed (corrected or deleted rows) are processed again. One run per batch and content "
           "(run_key), so repeated ticks never duplicate work.")
def new_transcripts_sensor(context: dg.SensorEvaluationContext, database: TranscriptDatabase,
                           settings: PipelineSettings) -> dg.SensorResult:
    started = time.perf_counter()
    cursor = IngestCursor.from_json(context.cursor)
    # Short retries: a tick should fail visibly and soon; the next tick tries again. An exception leaves the cursor
    # where it was, so nothing is skipped by an outage.
    table = database.open_table(retries=1, backoff_s=0.5)
    try:
        plan = plan_for_instance(context.instance, table, cursor, settings)
    finally:
        table.dispose()
    context.log.info(f"{plan.summary()} ({time.perf_counter() - started:.3f} s)")
    if not plan.requests:
        return dg.SensorResult(skip_reason=f"no new or changed rows in {database.table} ({plan.summary()})",
                               cursor=plan.cursor.to_json())
    return dg.SensorResult(
        run_requests=run_requests(plan), cursor=plan.cursor.to_json(),
        dynamic_partitions_requests=[INGEST_BATCHES.build_add_request(plan.new_keys)] if plan.new_keys else [])
