"""`asr-pipeline`: the same Dagster definitions as the UI, run in-process from a shell.

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default $ASR_HOME/dagster), so `dagster dev` started
with that DAGSTER_HOME shows them in its run history and asset catalog.

One module a concern: parser (the parser and main()), runs (the instance and runs through it), ingest, train,
status (read from the instance's catalog), models (report, champion, transcribe, ui).
"""

from asr_pipeline.cli.parser import build_parser, main
from asr_pipeline.cli.runs import INSTANCE_CONFIG, _definitions, _instance, _run
from asr_pipeline.cli.status import collect_status

# the instance, definitions and job runner, for tests and benchmarks that drive the pipeline in-process
__all__ = ["INSTANCE_CONFIG", "_definitions", "_instance", "_run", "build_parser", "collect_status", "main"]
