"""`asr-pipeline demo`, `train` and `run`, and the training and evaluation options they share."""

from __future__ import annotations

import os

from asr_pipeline.cli.ingest import ingest
from asr_pipeline.cli.models import _print_report_summary
from asr_pipeline.cli.runs import _definitions, _run
from asr_pipeline.core import settings as env

DEMO_TRAINING = {"learning_rate": 1e-3, "batch_size": 8, "warmup_steps": 20, "max_steps": 150, "eval_steps": 50,
                 "logging_steps": 10, "generation_max_length": 64}
DEMO_EVALUATION = {"max_new_tokens": 64}


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
    overrides = dict(base or {})
    if getattr(args, "float32", False):
        overrides["bf16"] = False
    if getattr(args, "export", None) is not None:
        overrides["export_ctranslate2"] = args.export
    return overrides or None


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


def cmd_train(args) -> None:
    _run("asr_train", training=_training_overrides(args))


def cmd_run(args) -> None:
    defs = _definitions()
    ingest(defs)
    _run("asr_retrain", training=_training_overrides(args), evaluation=_evaluation_overrides(args), defs=defs)
    _print_report_summary()
