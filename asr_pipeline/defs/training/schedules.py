"""nightly_retraining: retrain and evaluate when, and only when, some featurized batch changed since the last
checkpoint's training *started*.

finetuned_checkpoint records, before it opens any shard, the storage id of every featurized_shards partition it reads
(metadata `featurized_read`). A batch materialized while a training runs has a newer storage id than the one read, so
the next night's tick retrains, although the checkpoint itself is newer than that batch.
"""

import os

import dagster as dg

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES

RETRAIN_JOB = "asr_retrain"
DEFAULT_CRON = "0 2 * * *"
DEFAULT_TIMEZONE = "Asia/Seoul"
FEATURIZED = dg.AssetKey("featurized_shards")
CHECKPOINT = dg.AssetKey("finetuned_checkpoint")
FEATURIZED_READ = "featurized_read"  # finetuned_checkpoint metadata: {partition: storage id read}
FETCH_CHUNK = 500


def featurized_storage_ids(instance: dg.DagsterInstance, keys=None) -> dict[str, int]:
    """{partition: storage id of its latest featurized_shards materialization}; one query."""
    return instance.get_latest_storage_id_by_partition(FEATURIZED, dg.DagsterEventType.ASSET_MATERIALIZATION,
                                                       partitions=set(keys) if keys is not None else None)


def _timestamps(instance: dg.DagsterInstance, storage_ids: list[int]) -> dict[int, float]:
    found = {}
    for start in range(0, len(storage_ids), FETCH_CHUNK):
        chunk = storage_ids[start: start + FETCH_CHUNK]
        for record in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=FEATURIZED, storage_ids=chunk), limit=len(chunk)).records:
            found[record.storage_id] = record.timestamp
    return found


def batches_changed_since_training(instance: dg.DagsterInstance) -> list[tuple[str, float]]:
    """[(partition, timestamp of its newer featurized_shards materialization)], oldest first: registered batches
    whose latest features the last checkpoint did not read (new, re-processed, or landed while it trained)."""
    registered = set(instance.get_dynamic_partitions(INGEST_BATCHES.name))
    current = {k: v for k, v in featurized_storage_ids(instance).items() if k in registered}
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=CHECKPOINT), limit=1).records
    if not records:
        changed = current
    else:
        entry = records[0].asset_materialization.metadata.get(FEATURIZED_READ)
        if entry is not None:
            read = {key: int(storage_id) for key, storage_id in entry.value.items()}
            changed = {k: v for k, v in current.items() if read.get(k) != v}
        else:  # a checkpoint made before reads were recorded: what landed after it finished
            changed = {k: v for k, v in current.items() if v > records[0].storage_id}
    stamps = _timestamps(instance, sorted(changed.values()))
    return sorted(((k, stamps.get(v, 0.0)) for k, v in changed.items()), key=lambda item: (item[1], item[0]))


def changed_since_last_checkpoint(instance: dg.DagsterInstance) -> tuple[bool, str]:
    changed = batches_changed_since_training(instance)
    if changed:
        shown = ", ".join(key for key, _ in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5
                                                            else "")
        return True, (f"featurized_shards batch {shown} changed since the last checkpoint's training started"
                      if len(changed) == 1 else
                      f"{len(changed)} featurized_shards batches changed since the last checkpoint's training "
                      f"started: {shown}")
    if not featurized_storage_ids(instance):
        return False, "no featurized_shards batch is materialized yet"
    return False, "no featurized_shards batch changed since the last checkpoint (as read when its training started)"


def nightly_budget() -> dict:
    """The nightly training's budget (ASR_RETRAIN_MAX_STEPS or ASR_RETRAIN_EPOCHS) as finetuned_checkpoint config;
    empty: the config's default (4000 steps). Steps keep the nightly cost flat however large the archive grows."""
    steps, epochs = os.environ.get("ASR_RETRAIN_MAX_STEPS"), os.environ.get("ASR_RETRAIN_EPOCHS")
    if steps and epochs:
        raise ConfigError("ASR_RETRAIN_MAX_STEPS and ASR_RETRAIN_EPOCHS both set the nightly training budget: set one")
    try:
        if steps and int(steps) >= 1:
            return {"max_steps": int(steps)}
        if epochs and float(epochs) > 0:
            return {"max_steps": None, "epochs": float(epochs)}
    except ValueError:
        pass
    if steps:
        raise ConfigError(f"ASR_RETRAIN_MAX_STEPS must be a positive whole number, got {steps!r}")
    if epochs:
        raise ConfigError(f"ASR_RETRAIN_EPOCHS must be a positive number, got {epochs!r}")
    return {}


def build_nightly_retraining() -> dg.ScheduleDefinition:
    cron = os.environ.get("ASR_RETRAIN_CRON") or DEFAULT_CRON
    timezone = os.environ.get("ASR_RETRAIN_TIMEZONE") or DEFAULT_TIMEZONE
    budget = nightly_budget()

    def evaluate(context: dg.ScheduleEvaluationContext):
        changed, reason = changed_since_last_checkpoint(context.instance)
        if not changed:
            return dg.SkipReason(reason)
        return dg.RunRequest(tags={"asr/stage": "retrain", "asr/reason": reason},
                             run_config={"ops": {"finetuned_checkpoint": {"config": budget}}} if budget else None)

    return dg.ScheduleDefinition(
        name="nightly_retraining", cron_schedule=cron, execution_timezone=timezone, job_name=RETRAIN_JOB,
        execution_fn=evaluate, default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Fine-tune and evaluate on every featurized batch at '{cron}' ({timezone}; ASR_RETRAIN_CRON, "
        "ASR_RETRAIN_TIMEZONE), skipped when no batch changed since the last checkpoint's training started. Budget: "
        f"{budget or 'the default 4000 steps'} (ASR_RETRAIN_MAX_STEPS or ASR_RETRAIN_EPOCHS).")
