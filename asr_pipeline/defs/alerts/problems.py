"""The open problems of the loop right now, each one alert: derived from the instance's state, not from a stream of
events, so a problem stays one problem however many runs or ticks repeat it, and it clears when the state does.

Kinds (README, "Daily life"): check_failed and run_failed (per batch, or per asset for training/evaluation),
pending_too_long (per batch), training_lag, decision_lag, rejected_hallucination, rejected_benchmark:<set>,
rejected_incomparable_champion.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from asr_pipeline.core.alert_ledger import Problem
from asr_pipeline.core.alerts import AlertConfig
from asr_pipeline.defs.alerts import sources
from asr_pipeline.defs.alerts.freshness import BATCHES_DONE, DECISION_RECENT, TRAINING_KEEPS_UP, FreshnessResult
from asr_pipeline.defs.ingest.checks import CANCELLING_DOWNMIX, NEAR_SILENT
from asr_pipeline.defs.ingest.run_failures import succeeded_steps
from asr_pipeline.defs.training.schedules import IMPLICIT_ASSET_JOB, JOB_ASSETS, TRAINING_ASSET_NAMES

SUSPECT_AUDIO_CHECKS = (NEAR_SILENT, CANCELLING_DOWNMIX)  # blocked by the audio, not by missing rows

PREFIX = "[asr_pipeline]"
# ...and the UI's own materializations (__ASSET_JOB) of the unpartitioned assets; batch runs are alerted per batch
TRAINING_JOBS = (*JOB_ASSETS, IMPLICIT_ASSET_JOB)
TRAINING_ASSETS = set(TRAINING_ASSET_NAMES)
RUNS_PER_JOB = 20  # unpartitioned finished runs read a job
PAGE, MAX_PAGES = 100, 20  # batch runs paged past to find them


def _link(config: AlertConfig, run_id: str | None) -> str:
    link = config.run_link(run_id)
    return f"\nRun: {link}" if link else (f"\nRun id: {run_id}" if run_id else "")


def _check_detail(check: dict) -> str:
    meta = check["metadata"]
    if "quarantine_rate" in meta:
        reasons = ", ".join(f"{reason} x{count}" for reason, count in (meta.get("reasons") or {}).items())
        return (f"{meta['quarantined']} of {meta['rows']} rows quarantined ({meta['quarantine_rate']:.0%}, threshold "
                f"{meta['threshold']:.0%}): {reasons or 'see the check'}")
    return check.get("description") or ", ".join(f"{k}={v}" for k, v in meta.items())


def batch_failure(instance: dg.DagsterInstance, config: AlertConfig, state: sources.BatchState) -> Problem | None:
    """A batch whose latest finished run failed (and that is not done since): one problem until it is done."""
    if state.state == "done" or not (state.state in ("failed", "blocked") or state.failures):
        return None
    run_id = sources.latest_failed_run(instance, tags={"dagster/partition": state.key})
    if run_id is None:
        return None
    failure = sources.run_failure(instance, run_id)
    runs = f" ({state.failures} failed runs so far)" if state.failures > 1 else ""
    recovery = f"{PREFIX} batch {state.key} is done again" + (
        f" after {state.failures} failed runs." if state.failures > 1 else ".")
    if failure.failed_checks:
        check = failure.failed_checks[0]
        fix = (f"the check names the clips; fix their audio, then `asr-pipeline backfill {state.key}` (or raise "
               "ASR_MAX_SUSPECT_AUDIO_RATE)" if check["check"] in SUSPECT_AUDIO_CHECKS else
               "`asr-pipeline quarantine --json` lists the rows and reasons; put the audio in place (or correct "
               f"ASR_PATH_MAP / ASR_AUDIO_ROOTS), then `asr-pipeline backfill {state.key}`")
        return Problem("check_failed", check["asset"], state.key, (
            f"{PREFIX} batch {state.key} blocked: check {check['check']} on {check['asset']} failed{runs}.\n"
            f"{_check_detail(check)}.\nThe batch is left out of training until it passes. Fix: "
            f"{fix}.{_link(config, run_id)}"), recovery)
    return Problem("run_failed", failure.asset, state.key, (
        f"{PREFIX} ingest of batch {state.key} failed at {failure.asset}{runs}: {failure.error}\n"
        f"Fix: read the run's error, then `asr-pipeline backfill {state.key}`.{_link(config, run_id)}"), recovery)


def _unpartitioned_runs(instance: dg.DagsterInstance, job: str) -> list[dg.RunRecord]:
    """The job's latest finished runs that are not a batch's (up to RUNS_PER_JOB), newest first, paging past batch
    runs (the UI's ingest backfills are __ASSET_JOB runs too, and may be thousands)."""
    found, cursor = [], None
    for _ in range(MAX_PAGES):
        page = instance.get_run_records(dg.RunsFilter(job_name=job, statuses=list(sources.FINISHED)),
                                        limit=PAGE, cursor=cursor)
        found += [r for r in page if "dagster/partition" not in r.dagster_run.tags]
        if len(page) < PAGE or len(found) >= RUNS_PER_JOB:
            break
        cursor = page[-1].dagster_run.run_id
    return found[:RUNS_PER_JOB]


def _covers(run: dg.DagsterRun) -> set[str]:
    """The training and evaluation assets a run would make: its selection, or its job's (a job's own runs may
    carry an empty selection). The UI's runs (__ASSET_JOB) always name theirs: one without (a check executed
    alone) makes none. What it did make, its steps say."""
    if run.asset_selection:
        return {key.to_user_string() for key in run.asset_selection} & TRAINING_ASSETS
    return set(JOB_ASSETS.get(run.job_name, ()))


def training_failures(instance: dg.DagsterInstance, config: AlertConfig) -> list[Problem]:
    """Training and evaluation runs that failed (for a reason other than "not promoted") at an asset no later run
    has made since: one problem per asset, open until a later run makes it (its step succeeds), whichever job
    that is (a one-off `asr_train` that failed is cleared by the next nightly asr_retrain; a run that failed later
    on clears what it did make)."""
    runs = sorted((r for job in TRAINING_JOBS for r in _unpartitioned_runs(instance, job)),
                  key=lambda r: (r.end_time or 0.0, r.create_timestamp.timestamp()), reverse=True)
    problems: dict[str, Problem] = {}
    settled: set[str] = set()
    for record in runs:  # newest first: a run settles its assets for every older run
        if settled >= TRAINING_ASSETS:
            break  # nothing older can be open
        run = record.dagster_run
        covered = _covers(run)
        if covered and covered <= settled:
            continue  # (no event-log read for what newer runs settled)
        # what it made: its training and evaluation steps that succeeded (a check-only run's steps are checks; a
        # champion_model that promotes nothing succeeds all the same)
        made = succeeded_steps(instance, run.run_id) & TRAINING_ASSETS
        if run.status != dg.DagsterRunStatus.SUCCESS:
            # a challenger that is not promoted leaves its run green (challenger_beats_champion is a non-blocking
            # warning), so it never gets here; rejections are their own alert
            failure = sources.run_failure(instance, run.run_id)
            # a run that died before any step failed (failure.asset is its job) waits for all that it would make
            failed = {failure.asset} if failure.asset in TRAINING_ASSETS else covered - made
            if failed and not failed <= settled:
                problem = Problem("run_failed", failure.asset, "", (
                    f"{PREFIX} {run.job_name} failed at {failure.asset}: {failure.error}\nNo new model until it runs "
                    f"again. Fix: read the run's error, then `asr-pipeline run` (or wait for nightly_retraining)."
                    f"{_link(config, failure.run_id)}"),
                    f"{PREFIX} {failure.asset} recovered: a later run made {', '.join(sorted(failed))}.")
                problems.setdefault(problem.key, problem)
            settled |= failed  # a newer failure there supersedes the older ones
        settled |= made
    return list(problems.values())


def _difference(decision: dict) -> str:
    difference = decision.get("difference")
    if difference is None and decision.get("champion_cer") is not None:
        difference = decision["challenger_cer"] - decision["champion_cer"]
    if difference is None:
        return ""
    interval = decision.get("difference_ci95")
    ci = f" (95% interval {interval[0]:+.4f} .. {interval[1]:+.4f})" if interval else ""
    return f"CER difference challenger - champion {difference:+.4f}{ci}"


def _export_figures(decision: dict) -> str:
    def number(key: str) -> float:
        value = decision.get(key)
        return float("nan") if value is None else value

    return (f"Normalised CER of its int8 export {number('export_cer'):.4f} against the checkpoint's "
            f"{number('challenger_cer'):.4f} (ASR_EXPORT_MARGIN {number('export_margin'):g})")


def rejections(home: Path) -> list[Problem]:
    """The latest challenger, rejected for hallucination or a benchmark regression, or not compared because the
    champion cannot be (the gate's `blocked_by`): every later challenger is blocked the same way until someone
    restores or retires the champion, while a decision is still made every night (decision_lag stays quiet)."""
    decision = sources.latest_decision(home)
    if not decision or decision.get("promote"):
        return []
    problems = []
    for blocker in decision["blocked_by"]:
        if blocker == "incomparable_champion":
            problems.append(Problem("rejected_incomparable_champion", "champion_model", "", (
                f"{PREFIX} challenger not compared (report {decision.get('created_at')}): the champion cannot be "
                f"scored on today's test split.\n{decision.get('reason', '')}\nNo challenger is promoted until "
                "then. Fix: restore the champion's files (or the settings that changed), or `asr-pipeline champion "
                "--retire` to compare the next challenger with the base model."),
                f"{PREFIX} the champion can be compared again (the latest report is not blocked by it)."))
            continue
        if blocker not in ("hallucination", "export") and not blocker.startswith("benchmark:"):
            continue
        what = ("hallucinates" if blocker == "hallucination" else
                "loses accuracy in its deployed CTranslate2 int8 export" if blocker == "export" else
                f"regresses on benchmark {blocker.split(':', 1)[1]}")
        figures = _export_figures(decision) if blocker == "export" else _difference(decision)
        problems.append(Problem(f"rejected_{blocker}", "champion_model", "", (
            f"{PREFIX} challenger rejected: it {what} (report {decision.get('created_at')}). {figures}\n"
            f"{decision.get('reason', '')}\nThe champion stays. Fix: open the report (`asr-pipeline report`), look at "
            "the worst utterances and the benchmark table; check the newest batches' transcripts."),
            f"{PREFIX} the latest challenger is no longer rejected for {blocker}."))
    return problems


def freshness_problems(results: list[FreshnessResult], failing_batches: set[str]) -> list[Problem]:
    """Failed freshness checks; a late batch that already has a failure alert is not alerted twice."""
    problems = []
    for result in results:
        if result.passed:
            continue
        if result.check == BATCHES_DONE:
            for batch in result.batches:
                if batch["batch"] in failing_batches:
                    continue
                problems.append(Problem("pending_too_long", result.asset, batch["batch"], (
                    f"{PREFIX} batch {batch['batch']} is not done {batch['hours']} h after it was registered "
                    f"({batch['registered_at']}; {batch['state']}{': ' + batch['reason'] if batch['reason'] else ''})."
                    f"\nFix: `asr-pipeline backfill {batch['batch']}`; check that the daemon runs (`make ui`)."),
                    f"{PREFIX} batch {batch['batch']} is done again."))
        elif result.check in (TRAINING_KEEPS_UP, DECISION_RECENT):
            kind = "training_lag" if result.check == TRAINING_KEEPS_UP else "decision_lag"
            problems.append(Problem(kind, result.asset, "", f"{PREFIX} {result.asset} is behind: {result.description}",
                                    f"{PREFIX} {result.asset} is keeping up again ({result.check} passes)."))
    return problems


def open_problems(instance: dg.DagsterInstance, config: AlertConfig, home: Path,
                  states: list[sources.BatchState], freshness: list[FreshnessResult]) -> list[Problem]:
    failures = [p for p in (batch_failure(instance, config, s) for s in states) if p is not None]
    return (failures + freshness_problems(freshness, {p.batch for p in failures})
            + training_failures(instance, config) + rejections(home))
