"""asr_alerts: the sensor that watches the loop. Every tick it evaluates the freshness checks (recording them when
their result changes), derives the open problems from the instance, and sends what is due: new problems, reminders
after ASR_ALERT_REPEAT_HOURS, one recovery per cleared problem, the nightly digest. Delivery failures are logged
(masked) and retried next tick; they never fail the tick.

Running by default: with no destination configured the messages go to the sensor's log only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable

import dagster as dg

from asr_pipeline.core.alert_ledger import AlertLedger, Outgoing, locked_ledger
from asr_pipeline.core.alerts import LOG, AlertConfig, DeliveryError, FreshnessLimits, deliver
from asr_pipeline.defs.alerts import problems as problem_sources
from asr_pipeline.defs.alerts import sources
from asr_pipeline.defs.alerts.freshness import FreshnessResult, evaluate_freshness
from asr_pipeline.defs.common.resources import PipelineSettings

SENSOR_NAME = "asr_alerts"
RETRAIN_JOB = "asr_retrain"
NIGHTLY = "nightly_retraining"
RECORD_CHECK_EVERY_S = 3600  # an unchanged freshness result is recorded again at most hourly
log = logging.getLogger("asr_pipeline.alerts")


def ledger_path(settings: PipelineSettings) -> Path:
    return Path(settings.home) / "alerts" / "ledger.json"


def record_freshness(instance: dg.DagsterInstance, ledger: AlertLedger, results: list[FreshnessResult],
                     now: float) -> None:
    """A runless check evaluation when a result changes (or hourly), so the asset's page shows it."""
    for result in results:
        mark = f"check:{result.check}"
        fingerprint, recorded_at = ledger.marks.get(mark) or ("", 0.0)
        if fingerprint != result.fingerprint() or now - recorded_at >= RECORD_CHECK_EVERY_S:
            instance.report_runless_asset_event(result.to_evaluation())
            ledger.marks[mark] = [result.fingerprint(), now]


def digest_text(instance: dg.DagsterInstance, home: Path, states: list[sources.BatchState], run) -> str:
    counts = {name: sum(1 for s in states if s.state == name) for name in ("done", "pending", "failed", "blocked")}
    checkpoint = instance.get_latest_materialization_event(dg.AssetKey("finetuned_checkpoint"))
    meta = checkpoint.asset_materialization.metadata if checkpoint else {}
    rows = meta.get("train_rows", meta.get("rows_available"))
    decision = sources.latest_decision(home)
    if decision:
        outcome = "promoted" if decision.get("promote") else "not promoted"
        last = f"{outcome} ({decision.get('created_at')}): {decision.get('reason', '')}. " \
               f"{problem_sources._difference(decision)}"
    else:
        last = "none yet"
    return (f"{problem_sources.PREFIX} nightly digest: {NIGHTLY} run {run.run_id} {run.status.value.lower()}.\n"
            f"Batches: {counts['done']} done, {counts['pending']} pending, {counts['failed'] + counts['blocked']} "
            f"failed ({counts['blocked']} blocked by a check).\nRows trained: {rows.value if rows else 'none yet'}.\n"
            f"Last decision: {last}")


def queue_digest(instance: dg.DagsterInstance, ledger: AlertLedger, home: Path, states, channels) -> None:
    """One digest after each finished nightly_retraining run."""
    records = instance.get_run_records(dg.RunsFilter(job_name=RETRAIN_JOB, statuses=list(sources.FINISHED),
                                                     tags={"dagster/schedule_name": NIGHTLY}), limit=1)
    if records and ledger.marks.get("digest_run") != records[0].dagster_run.run_id:
        ledger.queue(digest_text(instance, home, states, records[0].dagster_run), channels)
        ledger.marks["digest_run"] = records[0].dagster_run.run_id


ROLL_UP_OVER = 5  # more batch messages than this due at once to one destination are rolled up
ROLL_UP_LISTED = 10  # of which this many are quoted


def roll_up_text(items: list[Outgoing], kind: str) -> str:
    """One message for many batches (a NAS outage fails a whole backfill): their count, the first few, and where
    to see the rest, instead of one e-mail or chat message per batch. kind: new, reminder or recovered."""
    prefix = problem_sources.PREFIX
    if kind == "recovered":
        names = ", ".join(o.batch for o in items[:ROLL_UP_LISTED * 2])
        more = f", and {len(items) - ROLL_UP_LISTED * 2} more" if len(items) > ROLL_UP_LISTED * 2 else ""
        return f"{prefix} {len(items)} batches are done again: {names}{more}."
    kinds: dict[str, int] = {}
    for outgoing in items:
        problem, asset = outgoing.key.split("|")[:2]
        label = {"run_failed": f"failed at {asset}", "check_failed": f"blocked by a check on {asset}",
                 "pending_too_long": "not done in time"}.get(problem, f"{problem} ({asset})")
        kinds[label] = kinds.get(label, 0) + 1
    lines = [f"- {o.text.splitlines()[0].removeprefix(prefix).strip()}" for o in items[:ROLL_UP_LISTED]]
    if len(items) > ROLL_UP_LISTED:
        lines.append(f"- and {len(items) - ROLL_UP_LISTED} more")
    headline = "still need attention (a reminder: each was alerted before)" if kind == "reminder" \
        else "need attention"
    return (f"{prefix} {len(items)} batches {headline}: "
            + ", ".join(f"{count} {label}" for label, count in kinds.items()) + ".\n" + "\n".join(lines)
            + "\nOne message for all of them: `asr-pipeline status` lists every batch with its state and reason; once "
            "the cause is fixed, `asr-pipeline backfill` re-runs them.")


def _roll_up_kind(outgoing: Outgoing, channel: str) -> str:
    if outgoing.key.startswith("outbox:"):
        return "recovered"
    return "reminder" if channel in outgoing.told else "new"


def roll_ups(due: list[Outgoing]) -> tuple[list[tuple[Outgoing, list[Outgoing]]], list[Outgoing]]:
    """Batch problems and batch recoveries due to a destination more than ROLL_UP_OVER at once (all kinds together)
    go there as at most one message per kind (new problems, reminders, recoveries: a new problem never hides among
    reminders; a kind with a single message sends it as it is), each counting as delivered for what it stands for.
    Returns those messages with what each stands for, and the rest of `due` with those destinations taken off. The
    log (no destination configured) gets every message."""
    taken: dict[str, set[str]] = {}
    rolled = []
    channels = sorted({c for o in due for c in o.channels if c != LOG})
    for channel in channels:
        batch_messages = [o for o in due if o.batch and channel in o.channels]
        if len(batch_messages) <= ROLL_UP_OVER:
            continue
        for kind in ("new", "reminder", "recovered"):
            items = [o for o in batch_messages if _roll_up_kind(o, channel) == kind]
            if len(items) > 1:
                rolled.append((Outgoing(f"roll_up:{channel}:{kind}", roll_up_text(items, kind), (channel,)), items))
                for outgoing in items:
                    taken.setdefault(outgoing.key, set()).add(channel)
    rest = [Outgoing(o.key, o.text, tuple(c for c in o.channels if c not in taken.get(o.key, ())), o.batch, o.told)
            for o in due]
    return rolled, [o for o in rest if o.channels]


def send_due(ledger: AlertLedger, due: list[Outgoing], config: AlertConfig, now: float,
             emit: Callable[[str], None]) -> tuple[int, int]:
    sent = failed = 0
    down: set[str] = set()  # a destination that failed once this tick is not tried again until the next one
    rolled, rest = roll_ups(due)
    for message, covers in [*rolled, *((o, [o]) for o in rest)]:
        subject = message.text.splitlines()[0][:200]
        for channel in message.channels:
            if channel in down:
                failed += 1
                continue
            try:
                if channel == LOG:
                    emit(message.text)
                else:
                    deliver(config, channel, subject, message.text)
                    emit(f"alert sent ({channel}): {subject}")
            except DeliveryError as exc:
                failed += 1
                down.add(channel)
                emit(f"alert not delivered, retried next tick: {exc}\n{message.text}")
                continue
            for outgoing in covers:
                ledger.delivered(outgoing, channel, now)
            if channel != LOG:
                ledger.save()
            sent += 1
    ledger.settle()
    return sent, failed


def alert_tick(instance: dg.DagsterInstance, settings: PipelineSettings, now: float,
               emit: Callable[[str], None] = log.warning) -> str:
    """One evaluation: what the sensor does each tick, with the time passed in."""
    config = AlertConfig.from_environment()
    states = sources.batch_states(instance)
    freshness = evaluate_freshness(instance, FreshnessLimits.from_environment(), now, states=states)
    problems = problem_sources.open_problems(instance, config, Path(settings.home), states, freshness)
    with locked_ledger(ledger_path(settings)) as ledger:
        record_freshness(instance, ledger, freshness, now)
        if config.digest:
            queue_digest(instance, ledger, Path(settings.home), states, config.channels())
        due = ledger.due(problems, config.channels(), now, config.repeat_hours * 3600)
        sent, failed = send_due(ledger, due, config, now, emit)
    return (f"{len(problems)} open problems; {sent} messages delivered, {failed} deliveries failed (retried next "
            f"tick); {sum(not r.passed for r in freshness)} freshness checks failing")


def alerts_status(instance: dg.DagsterInstance) -> dict:
    """For `asr-pipeline status --json`: the freshness checks evaluated now, and where alerts go (masked)."""
    from asr_pipeline.defs.alerts.freshness import freshness_status

    return {"freshness": freshness_status(instance), "alerting": AlertConfig.from_environment().describe()}


def build_alert_sensor(clock: Callable[[], float] = time.time) -> dg.SensorDefinition:
    destinations = AlertConfig.from_environment().describe()  # validates the variables at load time; masked
    FreshnessLimits.from_environment()

    @dg.sensor(name=SENSOR_NAME, minimum_interval_seconds=120, default_status=dg.DefaultSensorStatus.RUNNING,
               description="Evaluates the freshness checks and alerts on failed runs, blocked batches, failed "
               "freshness checks and rejected challengers: one message per problem per ASR_ALERT_REPEAT_HOURS, one "
               f"when it clears. Destinations: {', '.join(destinations['channels'])} (webhook "
               f"{destinations['webhook'] or 'unset'}; e-mail {(destinations['email'] or {}).get('smtp', 'unset')}).")
    def asr_alerts(context: dg.SensorEvaluationContext, settings: PipelineSettings) -> dg.SkipReason:
        summary = alert_tick(context.instance, settings, clock(), emit=context.log.warning)
        return dg.SkipReason(summary)

    return asr_alerts
