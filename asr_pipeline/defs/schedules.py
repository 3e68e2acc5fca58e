"""nightly_retraining: retrain and evaluate when, and only when, some featurized batch changed since the last
checkpoint."""

import os

import dagster as dg

RETRAIN_JOB = "asr_retrain"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "Asia/Seoul"


def changed_since_last_checkpoint(instance: dg.DagsterInstance) -> tuple[bool, str]:
    checkpoint = instance.get_latest_materialization_event(dg.AssetKey("finetuned_checkpoint"))
    since = checkpoint.timestamp if checkpoint else None
    newer = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("featurized_shards"), after_timestamp=since), limit=1).records
    if newer:
        partition = newer[0].event_log_entry.dagster_event.partition
        return True, f"featurized_shards batch {partition} changed since the last checkpoint"
    if since is None:
        return False, "no featurized_shards batch is materialized yet"
    return False, "no featurized_shards batch changed since the last checkpoint"


def build_nightly_retraining() -> dg.ScheduleDefinition:
    cron = os.environ.get("ASR_RETRAIN_CRON") or DEFAULT_CRON
    timezone = os.environ.get("ASR_RETRAIN_TIMEZONE") or DEFAULT_TIMEZONE

    def evaluate(context: dg.ScheduleEvaluationContext):
        changed, reason = changed_since_last_checkpoint(context.instance)
        if not changed:
            return dg.SkipReason(reason)
        return dg.RunRequest(tags={"asr/stage": "retrain", "asr/reason": reason})

    return dg.ScheduleDefinition(
        name="nightly_retraining", cron_schedule=cron, execution_timezone=timezone, job_name=RETRAIN_JOB,
        execution_fn=evaluate, default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Fine-tune and evaluate on every featurized batch at '{cron}' ({timezone}; ASR_RETRAIN_CRON, "
        "ASR_RETRAIN_TIMEZONE), skipped when no batch changed since the last checkpoint.")
