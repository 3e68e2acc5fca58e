"""`asr-pipeline`: the same Dagster definitions as the UI, run in-process from a shell.

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default $ASR_HOME/dagster), so `dagster dev` started
with that DAGSTER_HOME shows them in its run history and asset catalog.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

from asr_pipeline.core import settings as env
from asr_pipeline.core.errors import ConfigError, DatabaseUnavailable, PlannerBusy

DEMO_TRAINING = {"learning_rate": 1e-3, "batch_size": 8, "warmup_steps": 20, "max_steps": 150, "eval_steps": 50,
                 "logging_steps": 10, "generation_max_length": 64}
DEMO_EVALUATION = {"max_new_tokens": 64}


INSTANCE_CONFIG = """\
# written by asr-pipeline; `make ui` (dagster dev) uses this instance too
telemetry:
  enabled: false
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


def _instance():
    from dagster import DagsterInstance

    if not os.environ.get("DAGSTER_HOME"):  # unset or empty (an empty one would put the instance in the cwd)
        os.environ["DAGSTER_HOME"] = str(env.asr_home() / "dagster")
    home = Path(os.environ["DAGSTER_HOME"]).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(INSTANCE_CONFIG)
    return DagsterInstance.get()


def _reap_dead_runs(instance) -> None:
    """Runs this CLI started on this host whose process is gone (kill -9, power cut) stay 'started' forever and keep
    their concurrency slot, which would block every later training. Mark them failed and free their slots."""
    import socket

    from dagster import DagsterRunStatus, RunsFilter

    from asr_pipeline.core.storage import process_alive

    runs = instance.get_runs(filters=RunsFilter(
        statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
        tags={"asr/launcher": "cli", "asr/host": socket.gethostname()}))
    for run in runs:
        pid = int(run.tags.get("asr/pid", "0") or 0)
        if pid and not process_alive(pid):
            instance.report_run_failed(run, message=f"the asr-pipeline process (pid {pid}) running it is gone")
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            print(f"marked run {run.run_id} failed: its process {pid} is gone", file=sys.stderr)


def _run_tags() -> dict[str, str]:
    import socket

    return {"asr/launcher": "cli", "asr/host": socket.gethostname(), "asr/pid": str(os.getpid())}


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
    result = job.execute_in_process(run_config=run_config, instance=instance, raise_on_error=False,
                                    partition_key=partition_key, tags={**_run_tags(), **(tags or {})})
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


def _run_batch_multiprocess(key: str) -> None:
    """One ingest batch as its own run on the multiprocess executor (each step in a child process): what a
    `--parallel` ingest starts in a subprocess per batch."""
    import dagster as dg

    from asr_pipeline.defs.ingest.planning import INGEST_TAGS
    from asr_pipeline.definitions import ingest_job

    result = dg.execute_job(dg.reconstructable(ingest_job), instance=_instance(),
                            run_config={"execution": {"config": {"multiprocess": {"max_concurrent": 2}}},
                                        "loggers": {"console": {"config": {"log_level": "INFO"}}}},
                            tags={**_run_tags(), **INGEST_TAGS, "dagster/partition": key})
    if not result.success:
        raise SystemExit(f"run {result.run_id} of asr_ingest for batch {key} failed (details in the Dagster UI)")
    print(f"run {result.run_id} of asr_ingest for batch {key} succeeded (multiprocess executor)")


def _run_batches_in_parallel(keys: list[str], parallel: int) -> None:
    """Up to `parallel` batches at once, each in its own process: a batch's steps are sequential (manifest, audio,
    features), so batches are the unit of parallelism."""
    import subprocess

    pending, running, failed = list(keys), {}, []
    while pending or running:
        while pending and len(running) < parallel:
            key = pending.pop(0)
            print(f"ingest: starting batch {key}")
            running[key] = subprocess.Popen([sys.executable, "-m", "asr_pipeline.cli", "ingest-batch", key])
        for key, process in list(running.items()):
            if process.poll() is not None:
                del running[key]
                if process.returncode != 0:
                    failed.append(key)
        time.sleep(0.5)
    if failed:
        raise SystemExit(f"ingest failed for batches {failed} (details above and in the Dagster UI)")


def ingest(defs=None, parallel: int = 1) -> list[str]:
    """What new_transcripts_sensor does, without the daemon: register new batches, (re)process new, changed and
    never-materialized ones. Every registered batch is checked (a person runs this, not a 60 s tick).
    parallel > 1: that many batches at once, each a run on the multiprocess executor."""
    from asr_pipeline.defs.ingest.planning import plan_ingest, request_lines

    defs = defs or _definitions()
    instance = _instance()
    _reap_dead_runs(instance)  # a batch whose CLI run was killed is not "running": it is processed again
    database, settings = defs.resources["database"], defs.resources["settings"]
    table = database.open_table()
    try:
        # every pending row is cut now (no waiting for more), every batch is checked, failed ones retried at once
        plan = plan_ingest(instance, table, settings, check_all=True, max_wait_s=0)
    finally:
        table.dispose()
    print(f"ingest: {plan.summary()}")
    for line in request_lines(plan):
        print(f"ingest: again {line}")
    for request in plan.requests:
        print(f"ingest: batch {request.key} ({request.reason})")
    if parallel > 1 and len(plan.requests) > 1:
        _run_batches_in_parallel([r.key for r in plan.requests], parallel)
    else:
        failed = []
        for request in plan.requests:  # one failing batch does not keep the others from being processed
            try:
                _run("asr_ingest", partition_key=request.key, defs=defs,
                     tags={"asr/fingerprint": request.fingerprint}, instance=instance)
            except SystemExit as exc:
                print(exc, file=sys.stderr)
                failed.append(request.key)
        if failed:
            raise SystemExit(f"ingest failed for batches {failed} (details above; `asr-pipeline status` shows each "
                             "batch's state and reason)")
    return [r.key for r in plan.requests]


def _training_overrides(args) -> dict:
    names = ["max_steps", "epochs", "batch_size", "learning_rate", "eval_steps", "warmup_steps", "packing",
             "packing_max_seconds"]
    overrides = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    if overrides.get("packing") is False and "packing_max_seconds" in overrides:
        raise SystemExit("--packing-max-seconds sets the length of packed windows; with --no-packing there are none: "
                         "give one of the two")
    if "epochs" in overrides:
        if "max_steps" in overrides:
            raise SystemExit("--max-steps and --epochs are two ways to set the training budget: give one")
        overrides["max_steps"] = None  # the budget is epochs, also where a default (the demo's) sets steps
    if getattr(args, "float32", False):
        overrides["cpu_bf16"] = False
    return overrides


def _evaluation_overrides(args, base: dict | None = None) -> dict | None:
    if getattr(args, "float32", False):
        return {**(base or {}), "bf16": False}
    return base


def _storage() -> Path:
    return env.asr_home() / "storage"


def _report_path() -> Path:
    return _storage() / "evaluation_report" / "report.json"


def _print_report_summary() -> None:
    from asr_pipeline.core.report import metrics_table

    report = json.loads(_report_path().read_text(encoding="utf-8"))
    if report.get("warning"):
        print(f"\n*** {report['warning']} ***\n")
    print(metrics_table(report))
    if report.get("promotion"):
        verdict = "promoted to champion" if report["promotion"]["promote"] else "not promoted"
        print(f"\n{verdict}: {report['promotion']['reason']}")
    if report.get("ctranslate2"):
        c = report["ctranslate2"]
        print(f"CTranslate2 int8 export: CER {c['cer']:.4f}, {c['utterances_per_s']:.2f} utterances/s at {c['path']}")
    print(f"\nreport: {report.get('html_path')} (open it in a browser), {report.get('markdown_path')}, "
          f"{report.get('json_path', _report_path())}")


def cmd_demo(args) -> None:
    from asr_pipeline.core.database import TranscriptTable
    from asr_pipeline.core.synth import write_demo_corpus

    home = env.asr_home()
    # The demo only ever writes to its embedded database, never to a configured (possibly shared) one.
    if os.environ.pop("ASR_DB_URL", None):
        print("demo: ignoring ASR_DB_URL and using the embedded SQLite database")
    table = TranscriptTable(env.default_database_url(home))
    home.mkdir(parents=True, exist_ok=True)
    table.create_table()
    existing = table.count()
    if existing >= args.rows:
        print(f"demo: {table.spec.table} in {home / 'transcripts.sqlite'} already has {existing} rows")
    else:
        print(f"demo: speaking {args.rows} Korean sentences with espeak-ng (22.05 kHz) into {home / 'demo_audio'}")
        rows = write_demo_corpus(home / "demo_audio", args.rows)
        table.insert_rows(rows[existing:])
    table.dispose()
    training = {**DEMO_TRAINING, **_training_overrides(args)}
    defs = _definitions()
    ingest(defs)
    _run("asr_retrain", training=training, evaluation=_evaluation_overrides(args, DEMO_EVALUATION), defs=defs)
    _print_report_summary()
    print(f"\nSee it in the UI:  make ui   (= DAGSTER_HOME={os.environ['DAGSTER_HOME']} "
          ".venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1), then open http://127.0.0.1:3000")


def cmd_ingest(args) -> None:
    if args.parallel < 1:
        raise SystemExit("--parallel must be at least 1")
    ingest(parallel=args.parallel)


def cmd_ingest_batch(args) -> None:
    _run_batch_multiprocess(args.key)


def cmd_backfill(args) -> None:
    """Re-process registered batches (after a featurizer change, say): in-process, one after another."""
    from asr_pipeline.core.batches import parse_batch_key
    from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES

    defs, instance = _definitions(), _instance()
    _reap_dead_runs(instance)
    registered = sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name))
    if getattr(args, "stale", False):
        from asr_pipeline.defs.common.versions import stale_batch_reasons

        stale = stale_batch_reasons(instance, defs.resources["settings"], registered)
        if not stale:
            print("backfill: no stale batch (every featurized batch was made with the current settings)")
            return
        for key, reason in sorted(stale.items()):
            print(f"backfill: {key} is stale: {reason}")
        args.partitions = sorted(stale)
    if args.all:
        chosen = registered
    elif args.partitions:
        unknown = sorted(set(args.partitions) - set(registered))
        if unknown:
            raise SystemExit(f"not registered ingest batches: {unknown}; `asr-pipeline status` lists them")
        chosen = sorted(set(args.partitions))
    else:
        low = parse_batch_key(args.from_key)[0] if args.from_key else 0
        high = parse_batch_key(args.to_key)[1] if args.to_key else float("inf")
        chosen = [k for k in registered if parse_batch_key(k)[0] >= low and parse_batch_key(k)[1] <= high]
    if not chosen:
        raise SystemExit("no registered ingest batch matches; run `asr-pipeline ingest` first")
    for n, key in enumerate(chosen, 1):
        print(f"backfill: {n}/{len(chosen)} {key}")
        _run("asr_ingest", partition_key=key, defs=defs, instance=instance)


def cmd_train(args) -> None:
    _run("asr_train", training=_training_overrides(args))


def cmd_run(args) -> None:
    defs = _definitions()
    ingest(defs)
    _run("asr_retrain", training=_training_overrides(args), evaluation=_evaluation_overrides(args), defs=defs)
    _print_report_summary()


def cmd_report(args) -> None:
    path = _report_path()
    if not path.exists():
        raise SystemExit(f"no report yet at {path}: run `asr-pipeline run` (or `demo`) first")
    if args.json:
        print(path.read_text(encoding="utf-8"))
    else:
        print((path.parent / "report.md").read_text(encoding="utf-8"))


PARTITIONED = ("raw_manifest", "resampled_dataset", "featurized_shards")
ROWS_FILE = {"raw_manifest": "manifest.parquet", "resampled_dataset": "index.parquet",
             "featurized_shards": "index.parquet"}


def _batch_dirs(name: str) -> dict[str, Path]:
    root = _storage() / name
    return {p.name: p for p in sorted(root.glob("ids-*")) if p.is_dir()} if root.is_dir() else {}


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def collect_status() -> dict:
    from asr_pipeline.core.storage import directory_bytes, read_json

    storage = _storage()
    assets: dict = {}
    batches: dict[str, dict] = {}
    for name in PARTITIONED:
        dirs = _batch_dirs(name)
        if not dirs:
            assets[name] = {"materialized": False}
            continue
        entry = {"materialized": True, "path": str(storage / name), "partitions": len(dirs), "rows": 0,
                 "bytes": 0, "quarantined": 0}
        for key, path in dirs.items():
            rows = _parquet_rows(path / ROWS_FILE[name])
            entry["rows"] += rows
            entry["bytes"] += directory_bytes(path)
            entry["quarantined"] += _parquet_rows(path / "quarantine.parquet")
            batches.setdefault(key, {})[name] = rows
        entry["updated_at"] = max(_mtime(p) for p in dirs.values())
        assets[name] = entry
    for name, summary_file, rows_key in [("finetuned_checkpoint", "training_summary.json", "train_rows"),
                                         ("evaluation_report", "report.json", "test_rows")]:
        path = storage / name
        if not (path / summary_file).exists():
            assets[name] = {"materialized": False}
            continue
        summary = read_json(path / summary_file)
        assets[name] = {"materialized": True, "path": str(path), "bytes": directory_bytes(path),
                        "rows": summary[rows_key], "partitions": len(summary.get("partitions", [])),
                        "updated_at": _mtime(path)}
        if name == "finetuned_checkpoint":
            assets[name].update({k: summary.get(k) for k in ("steps", "train_loss", "best_valid_cer", "base_model")})
    status = {"asr_home": str(env.asr_home()), "assets": assets, "quarantined": len(collect_quarantine()),
              "partitions": [{"key": key, **rows} for key, rows in sorted(batches.items())],
              **collect_batch_states()}
    checkpoint = storage / "finetuned_checkpoint"
    status["latest_checkpoint"] = str(checkpoint) if (checkpoint / "config.json").exists() else None
    if _report_path().exists():
        report = read_json(_report_path())
        status["latest_report"] = {"path": str(_report_path()), "created_at": report["created_at"],
                                   "test_rows": report["test_rows"], "base_cer": report["base"]["cer"],
                                   "finetuned_cer": report["finetuned"]["cer"], "warning": report.get("warning")}
    else:
        status["latest_report"] = None
    from asr_pipeline.defs.alerts.sensors import alerts_status
    status.update(alerts_status(_instance()))  # "freshness" and "alerting" (destinations masked)
    return status


def collect_batch_states() -> dict:
    """Every registered batch with its state and reason, from the Dagster instance's catalog (runs,
    materializations, check evaluations) and the table's current fingerprints; without the database, from the
    catalog alone (a changed batch then still reads as done) and the error is reported."""
    from asr_pipeline.defs.ingest.batch_states import batch_states, registered_batches

    defs = _definitions()
    instance = _instance()
    database, settings = defs.resources["database"], defs.resources["settings"]
    keys = registered_batches(instance)
    stale = None
    try:  # settings or code changed since a batch was made (asr_pipeline.defs.common.versions, where present)
        from asr_pipeline.defs.common.versions import stale_batch_reasons
    except ImportError:
        pass
    else:
        stale = stale_batch_reasons(instance, settings, keys)
    table, error = database.open_table(retries=0), None
    try:
        try:
            states = batch_states(instance, keys, table, stale)
        except DatabaseUnavailable as exc:
            error = str(exc)
            states = batch_states(instance, keys, None, stale)
    finally:
        table.dispose()
    counts = {}
    for state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
    return {"batches": [s.as_dict() for s in states], "batch_counts": counts, "batch_states_error": error}


def _mtime(path: Path) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def cmd_status(args) -> None:
    status = collect_status()
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return
    print(f"ASR_HOME {status['asr_home']}")
    for name, entry in status["assets"].items():
        if not entry["materialized"]:
            print(f"  {name:22s} not materialized")
            continue
        extra = f", {entry['quarantined']} quarantined" if entry.get("quarantined") else ""
        print(f"  {name:22s} {entry.get('rows', '?'):>7} rows in {entry.get('partitions', 0)} batches{extra}  "
              f"{entry['bytes'] / 1e6:9.1f} MB  updated {entry['updated_at']}")
    rows = {batch["key"]: batch for batch in status["partitions"]}
    for batch in status["batches"]:
        sizes = ", ".join(f"{k} {v}" for k, v in rows.get(batch["key"], {}).items() if k != "key")
        retry = f"; next attempt after {_utc(batch['retry_at'])}" if batch.get("retry_at") else ""
        print(f"  batch {batch['key']}: {batch['state']} ({batch['reason']}{retry})"
              + (f"; rows: {sizes}" if sizes else ""))
    if status["batch_states_error"]:
        print(f"  (the database could not be read, so changed batches may show as done: "
              f"{status['batch_states_error']})")
    print(f"quarantined rows: {status['quarantined']} (asr-pipeline quarantine lists them)")
    print(f"latest checkpoint: {status['latest_checkpoint'] or '(none)'}")
    for name, check in status["freshness"].items():
        print(f"freshness {name} ({check['asset']}): " + ("ok" if check["passed"] else check["description"]))
    report = status["latest_report"]
    print("latest report: " + (f"{report['path']} (base CER {report['base_cer']:.4f}, fine-tuned CER "
                               f"{report['finetuned_cer']:.4f})" if report else "(none)"))


def collect_quarantine() -> list[dict]:
    """Rows left out anywhere in the pipeline: {id, audio_path, reason, stage}."""
    import pandas as pd

    rows = []
    for stage in ("resampled_dataset", "featurized_shards"):
        for key, path in _batch_dirs(stage).items():
            if (path / "quarantine.parquet").exists():
                frame = pd.read_parquet(path / "quarantine.parquet")
                rows += [{"id": int(r.id), "audio_path": r.audio_path, "reason": r.reason, "stage": stage,
                          "partition": key} for r in frame.itertuples(index=False)]
    return sorted(rows, key=lambda r: r["id"])


def cmd_quarantine(args) -> None:
    rows = collect_quarantine()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        print("no quarantined rows")
    for r in rows:
        print(f"{r['id']}\t{r['audio_path']}\t{r['reason']}")


def cmd_champion(args) -> None:
    from asr_pipeline.core.champion import current_champion, promotion_history, retire_champion

    home = env.asr_home()
    if args.retire:
        entry = retire_champion(home, reason="asr-pipeline champion --retire")
        print(f"retired {entry['model_path']}; the next evaluated checkpoint is compared with the base model and "
              "becomes the champion if it beats it" if entry
              else "there is no champion to retire")
        return
    if args.history:
        history = promotion_history(home)
        if args.json:
            print(json.dumps(history, indent=2, ensure_ascii=False))
            return
        for entry in history:
            if "retired_at" in entry:
                print(f"{entry['retired_at']}\tretired\t{entry['model_path']}")
                continue
            print(f"{entry['promoted_at']}\tCER {entry['test_cer']:.4f}\tnormalised {entry['test_cer_normalized']:.4f}"
                  f"\t{entry['model_path']}")
        if not history:
            print("no promotions yet")
        return
    pointer = current_champion(home)
    if pointer is None:
        if args.json:
            print("null")
            return
        # an answer, not an error: the demo's placeholder model, say, never beats its base
        print(f"no champion yet in {home / 'champion'}: the first checkpoint that beats the base model becomes it "
              "(`asr-pipeline run`)")
        return
    if args.json:
        print(json.dumps(pointer, indent=2, ensure_ascii=False))
        return
    for key in ("model_path", "ctranslate2_path", "test_cer", "test_cer_normalized", "test_wer", "test_rows",
                "promoted_at", "run_id", "report_path", "previous_model_path"):
        print(f"{key}: {pointer.get(key)}")


def _default_model_dir() -> str:
    """The champion when there is one (the model in service), else the latest fine-tuned checkpoint."""
    from asr_pipeline.core.champion import current_champion

    pointer = current_champion(env.asr_home())
    if pointer and (Path(pointer["model_path"]) / "config.json").exists():
        print(f"using the champion {pointer['model_path']} (test CER {pointer['test_cer']:.4f})", file=sys.stderr)
        return pointer["model_path"]
    model_dir = str(_storage() / "finetuned_checkpoint")
    if not (Path(model_dir) / "config.json").exists():
        raise SystemExit(f"no champion and no fine-tuned checkpoint at {model_dir}: run `asr-pipeline run` or pass "
                         "--model DIR")
    print(f"no champion yet; using the latest fine-tuned checkpoint {model_dir}", file=sys.stderr)
    return model_dir


def cmd_transcribe(args) -> None:
    from asr_pipeline.core.audio import AudioError, load_16k
    from asr_pipeline.core.decoding import DecodingPolicy, transcribe_clips
    from asr_pipeline.core.model import inference_placement, load_model, load_processor

    model_dir = args.model or _default_model_dir()
    clips, names = [], []
    for name in args.files:
        try:
            clip = load_16k(name)
        except AudioError as exc:
            print(f"{name}\t<error: {exc}>")
            continue
        if len(clip) > 30 * 16_000:
            print(f"{name}\t<note: longer than 30 s; only the first 30 s are transcribed>", file=sys.stderr)
        clips.append(clip)
        names.append(name)
    if not clips:
        raise SystemExit(1)
    # on CUDA when present (bf16, else fp16), under the report's decoding policy (audio budget, Whisper's guards)
    device, dtype = inference_placement(prefer_bf16=not args.float32)
    print(f"decoding on {device} in {str(dtype).replace('torch.', '')}", file=sys.stderr)
    model, processor = load_model(model_dir, device=device, dtype=dtype), load_processor(model_dir)
    result = transcribe_clips(model, processor, clips, DecodingPolicy(batch_size=8),
                              emit=lambda m: print(m, file=sys.stderr))
    for name, text, silent in zip(names, result.texts, result.silent):  # markers, like <error: ...> above
        print(f"{name}\t{'<no speech>' if silent else text or '<empty>'}")


def cmd_ui(args) -> None:
    """dagster dev on this project's instance (concurrency pool, run queue limits and retries configured)."""
    _instance()  # writes $DAGSTER_HOME/dagster.yaml on first use
    target = ["-w", "workspace.yaml"] if Path("workspace.yaml").exists() else ["-m", "asr_pipeline.definitions"]
    command = ["dagster", "dev", *target, "-h", args.host, "-p", str(args.port)]
    print(f"DAGSTER_HOME={os.environ['DAGSTER_HOME']} {' '.join(command)}", file=sys.stderr)
    executable = Path(sys.executable).with_name("dagster")
    os.execv(str(executable), command)


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-steps", type=int, help="training budget in steps (default 4000; demo 150)")
    parser.add_argument("--epochs", type=float, help="training budget in passes over the train split, instead of "
                        "--max-steps (the projected wall time is printed before training starts)")
    parser.add_argument("--batch-size", type=int, help="per-device batch size (default 16)")
    parser.add_argument("--learning-rate", type=float, help="peak learning rate (default 1e-5)")
    parser.add_argument("--eval-steps", type=int, help="validate and checkpoint every N steps (default 1000)")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps (default 500)")
    parser.add_argument("--float32", action="store_true", help="train and decode in float32 even where the hardware "
                        "has bf16 (results comparable with machines that lack it)")
    parser.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                        help="train on packed windows of consecutive clips (the default; docs/BENCHMARKS.md); "
                        "--no-packing: one clip an input, as validation and the report")
    parser.add_argument("--packing-max-seconds", type=_window_seconds, help="the longest packed window, 1 to 30 "
                        "seconds (default 15)")


def _window_seconds(value: str) -> float:
    seconds = float(value)
    if not 1.0 <= seconds <= 30.0:
        raise argparse.ArgumentTypeError(f"must be between 1 and 30 (Whisper's input is 30 s), got {value}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr-pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="make an embedded database of synthetic Korean speech, then `run`")
    demo.add_argument("--rows", type=int, default=120, help="synthetic utterances (default 120)")
    _add_training_options(demo)
    demo.set_defaults(func=cmd_demo)
    ingest_parser = sub.add_parser("ingest", help="what new_transcripts_sensor does: new batches for new rows, "
                                   "re-process changed batches (raw_manifest, resampled_dataset, featurized_shards)")
    ingest_parser.add_argument("--parallel", type=int, default=1, help="batches processed at once, each a run on "
                               "the multiprocess executor in its own process (default 1: one after another)")
    ingest_parser.set_defaults(func=cmd_ingest)
    batch = sub.add_parser("ingest-batch", help="process one registered ingest batch on the multiprocess executor")
    batch.add_argument("key", help="batch key, e.g. ids-0000000001-0000010000")
    batch.set_defaults(func=cmd_ingest_batch)
    backfill = sub.add_parser("backfill", help="re-process registered ingest batches (all, a range, or named)")
    backfill.add_argument("partitions", nargs="*", help="batch keys, e.g. ids-0000000001-0000010000")
    backfill.add_argument("--all", action="store_true", help="every registered batch")
    backfill.add_argument("--from", dest="from_key", help="first batch key of a range")
    backfill.add_argument("--to", dest="to_key", help="last batch key of a range")
    backfill.add_argument("--stale", action="store_true", help="only the batches made with other settings than the "
                          "current ones (split ratios, group pattern, path map, base model, label clean-up)")
    backfill.set_defaults(func=cmd_backfill)
    train = sub.add_parser("train", help="materialize finetuned_checkpoint")
    _add_training_options(train)
    train.set_defaults(func=cmd_train)
    run = sub.add_parser("run", help="ingest + train + evaluate + promote when better than the champion")
    _add_training_options(run)
    run.set_defaults(func=cmd_run)
    report = sub.add_parser("report", help="print the latest evaluation report")
    report.add_argument("--json", action="store_true")
    report.set_defaults(func=cmd_report)
    status = sub.add_parser("status", help="rows and bytes of every asset, latest checkpoint and report")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)
    ui = sub.add_parser("ui", help="dagster dev on this project's instance (localhost only by default)")
    ui.add_argument("--host", default="127.0.0.1", help="keep 127.0.0.1: the webserver has no authentication")
    ui.add_argument("--port", type=int, default=3000)
    ui.set_defaults(func=cmd_ui)
    quarantine = sub.add_parser("quarantine", help="rows left out, with the reason")
    quarantine.add_argument("--json", action="store_true")
    quarantine.set_defaults(func=cmd_quarantine)
    transcribe = sub.add_parser("transcribe", help="transcribe audio files with a checkpoint")
    transcribe.add_argument("files", nargs="+")
    transcribe.add_argument("--model", help="checkpoint directory (default: the champion, else the latest "
                            "finetuned_checkpoint)")
    transcribe.add_argument("--float32", action="store_true", help="decode in float32 even where the hardware has "
                            "bf16/fp16")
    transcribe.set_defaults(func=cmd_transcribe)
    champion = sub.add_parser("champion", help="the model in service: {model_path, test_cer, promoted_at, ...}")
    champion.add_argument("--json", action="store_true")
    champion.add_argument("--history", action="store_true", help="every promotion, oldest first")
    champion.add_argument("--retire", action="store_true", help="set the champion aside (its files stay) so the "
                          "next evaluated checkpoint is promoted: for a champion that cannot be compared any more")
    champion.set_defaults(func=cmd_champion)
    return parser


def _utc(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def main(argv: list[str] | None = None) -> None:
    """argv None: the process's own command line (the console script, `python -m asr_pipeline.cli`), which ends
    when this returns."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "packing"):  # train, run, demo: contradicting options are refused before any work starts
        _training_overrides(args)
    try:
        args.func(args)
    except ConfigError as exc:
        raise SystemExit(f"configuration error: {exc}") from None
    except DatabaseUnavailable as exc:
        raise SystemExit(f"database error: {exc}") from None
    except PlannerBusy as exc:
        raise SystemExit(f"ingest: {exc}") from None
    finally:
        if argv is None:
            # Python's final garbage collections walk every object Dagster, pandas and friends made: about 0.5 s
            # of every command. Everything has been written and closed by now (files by `with`, runs committed),
            # so let the exit skip them. Not for in-process callers (tests), whose memory must stay collectable.
            gc.freeze()


if __name__ == "__main__":
    main()
