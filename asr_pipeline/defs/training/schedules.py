"""nightly_retraining: retrain and evaluate when, and only when, some featurized batch changed since the last
checkpoint's training *started*; evaluate again a checkpoint whose evaluation or promotion failed; nothing while a
training or evaluation is queued or running.

finetuned_checkpoint records, before it opens any shard, the storage id of every featurized_shards partition it reads
(metadata `featurized_read`). A batch materialized while a training runs has a newer storage id than the one read, so
the next night's tick retrains, although the checkpoint itself is newer than that batch.

A training that outlasts a night (an epochs budget at archive scale, a run waiting for the asr_training pool) must
not have a second one queued behind it every night: the tick skips while one is active, and the first tick after it
ends decides. A checkpoint whose evaluation_report failed (the benchmark sets' share unmounted, a full disk), or
whose champion_model step failed after the report, is evaluated again by the next tick (the evaluate job's assets
only), up to MAX_EVALUATION_ATTEMPTS failed tries; otherwise it would stay unevaluated until new data came.
"""

import os

import dagster as dg

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.defs.common.dead_runs import HEARTBEAT_STALE_S, reap_dead_cli_runs
from asr_pipeline.defs.evaluation.checks import BEATS_CHAMPION
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline.defs.ingest.run_failures import succeeded_steps

RETRAIN_JOB = "asr_retrain"
TRAINING_ASSET_NAMES = ("finetuned_checkpoint", "evaluation_report", "champion_model")
# the jobs that train or evaluate, and what each makes (the alerts read it too); a tick waits while one is active
JOB_ASSETS = {RETRAIN_JOB: TRAINING_ASSET_NAMES, "asr_train": TRAINING_ASSET_NAMES[:1],
              "asr_evaluate": TRAINING_ASSET_NAMES[1:]}
TRAINING_JOBS = tuple(JOB_ASSETS)
ACTIVE = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
          dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)
EVALUATION_ASSETS = tuple(dg.AssetKey(name) for name in TRAINING_ASSET_NAMES[1:])
TRAINING_ASSETS = {dg.AssetKey(name) for name in TRAINING_ASSET_NAMES}
IMPLICIT_ASSET_JOB = "__ASSET_JOB"  # Dagster's job for the UI's "Materialize" and asset backfills
EVALUATES_TAG = "asr/evaluates_checkpoint"  # a re-evaluation's run: the storage id of the checkpoint it evaluates
MAX_EVALUATION_ATTEMPTS = 3
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


def active_training(instance: dg.DagsterInstance) -> str | None:
    """Why a tick must wait: a training or evaluation run queued or in progress (its id, status, and for a run of
    an `asr-pipeline` command its host and process), else None. The UI's "Materialize" and asset backfills run as
    Dagster's implicit asset job: they count when they select a training or evaluation asset."""
    for job_name in (*TRAINING_JOBS, IMPLICIT_ASSET_JOB):
        for record in instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=list(ACTIVE)),
                                               limit=None if job_name == IMPLICIT_ASSET_JOB else 1):
            run = record.dagster_run
            if job_name == IMPLICIT_ASSET_JOB and not (run.asset_selection or set()) & TRAINING_ASSETS:
                continue  # an ingest backfill or a check from the UI
            where = (f" by `asr-pipeline` on {run.tags.get('asr/host')} (pid {run.tags.get('asr/pid')}; if that process "
                     "is gone, a tick marks the run failed: at once on that host and in its container, elsewhere "
                     f"{HEARTBEAT_STALE_S / 60:.0f} min after the command's last heartbeat)"
                     if run.tags.get("asr/launcher") == "cli" else "")
            return (f"{run.job_name} run {run.run_id} is {run.status.value.lower()}{where}; the first tick after it "
                    "ends decides whether to train again")
    return None


def unevaluated_checkpoint(instance: dg.DagsterInstance) -> tuple[int, list[dg.AssetKey], str] | None:
    """(the latest checkpoint's storage id, the assets to run, why) when it was made by an asr_retrain run (which
    meant to evaluate it; `asr_train` and the UI's checkpoint-only runs do not) and not evaluated and decided on: no
    evaluation_report since it, or the run that made the report failed in champion_model. None otherwise, and once
    a run evaluating it again succeeded."""
    checkpoints = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=CHECKPOINT), limit=1).records
    if not checkpoints or not checkpoints[0].run_id:
        return None
    checkpoint = checkpoints[0]
    trained_by = instance.get_run_by_id(checkpoint.run_id)
    if trained_by is None or trained_by.job_name != RETRAIN_JOB:
        return None
    if instance.get_runs_count(dg.RunsFilter(tags={EVALUATES_TAG: str(checkpoint.storage_id)},
                                             statuses=[dg.DagsterRunStatus.SUCCESS])):
        return None  # evaluated again, and decided on (a promotion retry makes no new report)
    reports = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=EVALUATION_ASSETS[0]), limit=1).records
    made_by = f"the checkpoint of run {checkpoint.run_id}"
    if not reports or reports[0].storage_id < checkpoint.storage_id:
        return checkpoint.storage_id, list(EVALUATION_ASSETS), f"{made_by} has no evaluation_report"
    run = instance.get_run_by_id(reports[0].run_id) if reports[0].run_id else None
    # FAILURE only: a dead CLI run is marked failed, and so is a run whose worker died; a CANCELED run was stopped
    # by someone, perhaps to keep that very promotion from happening
    if run is not None and run.status == dg.DagsterRunStatus.FAILURE \
            and _step_unfinished(instance, run.run_id, "champion_model"):
        return (checkpoint.storage_id, [EVALUATION_ASSETS[1]],
                f"{made_by} was evaluated in run {run.run_id}, whose champion_model step failed or was killed")
    return None


def _step_unfinished(instance: dg.DagsterInstance, run_id: str, step: str) -> bool:
    """The report's step succeeded in the run and `step` did not: it failed, or its process was killed before or
    during it (a run reaped as dead, or canceled by the run monitor, has no failure event for it)."""
    succeeded = succeeded_steps(instance, run_id)
    return EVALUATION_ASSETS[0].to_user_string() in succeeded and step not in succeeded


def evaluation_request(instance: dg.DagsterInstance) -> dg.RunRequest | dg.SkipReason | None:
    """The run that evaluates an unevaluated checkpoint again, a skip once it failed MAX_EVALUATION_ATTEMPTS times,
    or None when the latest checkpoint was evaluated. The run's checks are the job's own (the promotion decision),
    never the freshness checks the alerts sensor evaluates."""
    pending = unevaluated_checkpoint(instance)
    if pending is None:
        return None
    storage_id, assets, why = pending
    failed = instance.get_runs_count(dg.RunsFilter(tags={EVALUATES_TAG: str(storage_id)},
                                                   statuses=[dg.DagsterRunStatus.FAILURE,
                                                             dg.DagsterRunStatus.CANCELED]))
    if failed >= MAX_EVALUATION_ATTEMPTS:
        return dg.SkipReason(f"{why}, and evaluating it again failed {failed} times (runs tagged {EVALUATES_TAG}="
                             f"{storage_id}): fix the cause and run `asr-pipeline evaluate`")
    checks = [dg.AssetCheckKey(EVALUATION_ASSETS[0], BEATS_CHAMPION)] if EVALUATION_ASSETS[0] in assets else []
    return dg.RunRequest(asset_selection=assets, asset_check_keys=checks,
                         tags={"asr/stage": "retrain", "asr/reason": f"{why}: evaluating it again",
                               EVALUATES_TAG: str(storage_id)})


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
        reap_dead_cli_runs(context.instance, context.log.warning)  # a killed CLI training is not "running"
        busy = active_training(context.instance)
        if busy:
            return dg.SkipReason(busy)
        changed, reason = changed_since_last_checkpoint(context.instance)
        if not changed:
            return evaluation_request(context.instance) or dg.SkipReason(reason)
        return dg.RunRequest(tags={"asr/stage": "retrain", "asr/reason": reason},
                             run_config={"ops": {"finetuned_checkpoint": {"config": budget}}} if budget else None)

    return dg.ScheduleDefinition(
        name="nightly_retraining", cron_schedule=cron, execution_timezone=timezone, job_name=RETRAIN_JOB,
        execution_fn=evaluate, default_status=dg.DefaultScheduleStatus.STOPPED,
        description=f"Fine-tune and evaluate on every featurized batch at '{cron}' ({timezone}; ASR_RETRAIN_CRON, "
        "ASR_RETRAIN_TIMEZONE), skipped when no batch changed since the last checkpoint's training started. Budget: "
        f"{budget or 'the default 4000 steps'} (ASR_RETRAIN_MAX_STEPS or ASR_RETRAIN_EPOCHS).")
