"""`asr-pipeline`: the same Dagster definitions as the UI, run in-process from a shell.

Runs are recorded in the Dagster instance at $DAGSTER_HOME (default $ASR_HOME/dagster), so `dagster dev` started
with that DAGSTER_HOME shows them in its run history and asset catalog.
"""

from __future__ import annotations

import argparse
import gc

from asr_pipeline.cli.ingest import cmd_backfill, cmd_ingest, cmd_ingest_batch
from asr_pipeline.cli.models import cmd_champion, cmd_report, cmd_transcribe, cmd_ui
from asr_pipeline.cli.runs import pause_gc_for_startup
from asr_pipeline.cli.status import cmd_quarantine, cmd_status
from asr_pipeline.cli.train import _training_overrides, cmd_demo, cmd_run, cmd_train
from asr_pipeline.core.errors import ConfigError, DatabaseUnavailable, PlannerBusy

# commands that open the Dagster instance right after their imports and definitions, before any work: the
# collector is paused until then (cli.runs.pause_gc_for_startup)
GC_PAUSED_UNTIL_INSTANCE = frozenset({"ingest", "ingest-batch", "backfill", "train", "run", "status"})


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


def _add_evaluation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--export", action=argparse.BooleanOptionalAction, default=None,
                        help="export the fine-tuned checkpoint to CTranslate2 int8 and score the export in the report "
                        "(the default); --no-export skips both (whisper-base: about a minute on two cores)")


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
    _add_evaluation_options(demo)
    demo.set_defaults(func=cmd_demo)
    ingest_parser = sub.add_parser("ingest", help="what new_transcripts_sensor does: new batches for new rows, "
                                   "re-process changed batches (raw_manifest, resampled_dataset, featurized_shards)")
    ingest_parser.add_argument("--parallel", type=int, default=1, help="batches processed at once, each a run in "
                               "its own process, executed as the daemon executes a launched run (default 1: one "
                               "after another)")
    ingest_parser.set_defaults(func=cmd_ingest)
    batch = sub.add_parser("ingest-batch", help="process one registered ingest batch as a launched run (in this "
                       "process, on the ingest job's executor)")
    batch.add_argument("key", help="batch key, e.g. ids-0000000001-0000010000")
    batch.add_argument("--tags", help="extra run tags as a JSON object (what `ingest --parallel` passes: the "
                       "plan's reason and fingerprint for the batch)")
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
    _add_evaluation_options(run)
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


def main(argv: list[str] | None = None) -> None:
    """argv None: the process's own command line (the console script, `python -m asr_pipeline.cli`), which ends
    when this returns."""
    args = build_parser().parse_args(argv)
    if hasattr(args, "packing"):  # train, run, demo: contradicting options are refused before any work starts
        _training_overrides(args)
    if argv is None and args.command in GC_PAUSED_UNTIL_INSTANCE:
        pause_gc_for_startup()  # not for in-process callers (tests), whose collector is theirs
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
