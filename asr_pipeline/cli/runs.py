"""The Dagster instance and the runs this CLI executes in it: opened (and its dagster.yaml written) on first use, runs
of dead CLI processes reaped, jobs executed in-process, or batches as launched runs in subprocesses."""

from __future__ import annotations

import gc
import hashlib
import os
import sys
import time
from pathlib import Path

from asr_pipeline.core import settings as env


INSTANCE_CONFIG = """\
# written by asr-pipeline; `make ui` (dagster dev) uses this instance too
telemetry:
  enabled: false
event_log_storage:            # Dagster's SQLite event log, its files kept open (0.36 s of an ingest process)
  module: asr_pipeline.defs.common.event_log
  class: PooledSqliteEventLogStorage
  config:
    dagster_home:
      env: DAGSTER_HOME
run_retries:
  enabled: true
  max_retries: 2              # a sensor-launched ingest run killed or failed part way is retried
concurrency:
  pools:
    default_limit: 1          # pool asr_training: one training or evaluation at a time
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: asr/stage
        value: ingest
        limit: 2              # ingest batches run in parallel, at most two at once
"""


# The sha256 of each dagster.yaml an earlier version wrote: found unchanged, it is rewritten to INSTANCE_CONFIG
# (the same storage files: nothing moves). A file someone wrote or edited is left as it is.
EARLIER_INSTANCE_CONFIGS_SHA256 = frozenset({
    "0bedfdee5d31f3e784750b5f93959dc7ee946bdedfd3b0cda692820969675d30",
    "a404a9f0b41b7f13acaa66bf7469e6035d125eb43898278a302b7c51e06f0e42",
})


_startup_gc_paused = False


def pause_gc_for_startup() -> None:
    """Called by main() for a console command that opens the instance before it does any work. Importing Dagster,
    pandas, SQLAlchemy and the definitions leaves about 360,000 objects for the collector to track, nearly all of
    them living as long as the process, and Python's full collections walk them all each time that number has
    grown by a quarter: four or five before an ingest's batch is planned, freeing next to nothing, about 0.35 s of
    its start-up (docs/BENCHMARKS.md, issue 14). _instance() ends the pause."""
    global _startup_gc_paused
    if gc.isenabled():
        gc.disable()
        _startup_gc_paused = True


def end_startup_gc_pause() -> None:
    """Start-up is over once the instance is open: what it made moves to the permanent generation (gc.freeze: never
    walked again) and collection resumes, for the run's own garbage. The price: what start-up left as cyclic
    garbage is frozen with the rest and kept for the life of the process: about 4,200 objects, 1.4 MB (mostly
    alembic's migration scripts), or 15,000 objects, 3.9 MB, when the instance was just created. A full collection
    here to free them would cost about 0.2 s."""
    global _startup_gc_paused
    if _startup_gc_paused:
        _startup_gc_paused = False
        gc.freeze()
        gc.enable()


def write_instance_config(config: Path) -> None:
    """Writes INSTANCE_CONFIG where there is no dagster.yaml, or where one an earlier version wrote is unchanged;
    a file someone wrote or edited is left as it is."""
    if config.exists() and hashlib.sha256(config.read_bytes()).hexdigest() not in EARLIER_INSTANCE_CONFIGS_SHA256:
        return
    partial = config.with_name(f".{config.name}.{os.getpid()}")
    partial.write_text(INSTANCE_CONFIG)
    os.replace(partial, config)  # a process reading it meanwhile sees the old file or the new one, never half


def _instance():
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):  # unset or empty (an empty one would put the instance in the cwd)
        os.environ["DAGSTER_HOME"] = str(env.asr_home() / "dagster")
    expanded = os.path.expanduser(os.environ["DAGSTER_HOME"])
    if expanded != os.environ["DAGSTER_HOME"]:  # a "~" an env file left: as Dagster reads it, for this process,
        os.environ["DAGSTER_HOME"] = expanded  # the dagster.yaml's event log and the processes it starts
    home = Path(expanded).resolve()
    home.mkdir(parents=True, exist_ok=True)
    write_instance_config(home / "dagster.yaml")
    instance = DagsterInstance.get()
    end_startup_gc_pause()
    return instance


def _reap_dead_runs(instance) -> None:
    """Runs this CLI started on this host whose process is gone (kill -9, power cut) stay 'started' forever and keep
    their concurrency slot, which would block every later training. Mark them failed and free their slots."""
    from asr_pipeline.defs.common.dead_runs import reap_dead_cli_runs

    reap_dead_cli_runs(instance, lambda line: print(line, file=sys.stderr))


def _run_tags() -> dict[str, str]:
    from asr_pipeline.defs.common.dead_runs import cli_run_tags

    return cli_run_tags(os.getpid())


def _definitions():
    from asr_pipeline.definitions import build_definitions

    return build_definitions()


def _run(job_name: str, training: dict | None = None, evaluation: dict | None = None,
         partition_key: str | None = None, defs=None, tags: dict | None = None, instance=None) -> None:
    """instance: the caller's, its dead runs already reaped (opening an instance costs about 0.5 s)."""
    defs = defs or _definitions()
    run_config: dict = {"loggers": {"console": {"config": {"log_level": "INFO"}}}, "ops": {}}
    if training:
        run_config["ops"]["finetuned_checkpoint"] = {"config": training}
    if evaluation:
        run_config["ops"]["evaluation_report"] = {"config": evaluation}
    job = defs.resolve_job_def(job_name)
    op_names = {node.name for node in job.graph.node_dict.values()}
    run_config["ops"] = {name: cfg for name, cfg in run_config["ops"].items() if name in op_names}
    if instance is None:
        instance = _instance()
        _reap_dead_runs(instance)
    from asr_pipeline.defs.common.dead_runs import heartbeat

    mine = _run_tags()
    with heartbeat(instance, mine):  # what tells a reaper in another container or on another host that this lives
        result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                        partition_key=partition_key, tags={**(tags or {}), **mine})
    where = f" for batch {partition_key}" if partition_key else ""
    if not result.success:
        for event in result.all_events:
            if event.is_step_failure:
                error = event.step_failure_data.error
                while error is not None and error.cause is not None and "Error occurred while" in error.message:
                    error = error.cause  # the asset's own exception, not Dagster's wrapper around it
                print(f"\nstep {event.step_key} failed: {error.message.strip() if error else ''}", file=sys.stderr)
        raise SystemExit(f"run {result.run_id} of {job_name}{where} failed (details above and in the Dagster UI)")
    if _not_promoted(result):
        print(f"run {result.run_id} of {job_name} succeeded: the challenger was evaluated but not promoted; the "
              "champion stays (see the report's promotion line)")
        return
    print(f"run {result.run_id} of {job_name}{where} succeeded")


def _not_promoted(result) -> bool:
    """The run evaluated a challenger and the promotion decision (the check challenger_beats_champion, WARN when it
    says no) kept the champion: a successful run whose answer is "no"."""
    from asr_pipeline.defs.evaluation.checks import BEATS_CHAMPION

    return any(e.check_name == BEATS_CHAMPION and not e.passed for e in result.get_asset_check_evaluations())


def _run_batch_as_launched(key: str, tags: dict[str, str] | None = None) -> None:
    """One ingest batch as its own run, executed as the daemon executes a launched run (dg.execute_job on the
    reconstructable job, with the job's executor): what a `--parallel` ingest starts in a subprocess per batch.
    tags: the plan's for this batch (planning.request_tags), passed on by `ingest --parallel`."""
    import dagster as dg

    from asr_pipeline.defs.common.dead_runs import heartbeat
    from asr_pipeline.defs.ingest.planning import INGEST_TAGS
    from asr_pipeline.definitions import ingest_job

    instance = _instance()
    mine = _run_tags()
    with heartbeat(instance, mine):
        result = dg.execute_job(dg.reconstructable(ingest_job), instance=instance,
                                run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
                                tags={**INGEST_TAGS, **(tags or {}), **mine, "dagster/partition": key})
    if not result.success:
        raise SystemExit(f"run {result.run_id} of asr_ingest for batch {key} failed (details in the Dagster UI)")
    print(f"run {result.run_id} of asr_ingest for batch {key} succeeded")


def _run_batches_in_parallel(keys: list[str], parallel: int,
                             tags: dict[str, dict[str, str]] | None = None) -> None:
    """Up to `parallel` batches at once, each in its own process: a batch's steps are sequential (manifest, audio,
    features), so batches are the unit of parallelism. tags: each batch's run tags, by key."""
    import json
    import subprocess

    pending, running, failed = list(keys), {}, []
    while pending or running:
        while pending and len(running) < parallel:
            key = pending.pop(0)
            print(f"ingest: starting batch {key}")
            command = [sys.executable, "-m", "asr_pipeline.cli", "ingest-batch", key]
            if tags and key in tags:
                command += ["--tags", json.dumps(tags[key])]
            running[key] = subprocess.Popen(command)
        for key, process in list(running.items()):
            if process.poll() is not None:
                del running[key]
                if process.returncode != 0:
                    failed.append(key)
        time.sleep(0.5)
    if failed:
        raise SystemExit(f"ingest failed for batches {failed} (details above and in the Dagster UI)")
