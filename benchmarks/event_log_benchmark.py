"""Lean runs (issue 14.3): what keeping the event log's SQLite databases open saves an `asr-pipeline ingest`.

    .venv/bin/python benchmarks/event_log_benchmark.py [--clips 1000] [--pairs 8] [--base-model DIR]

`asr-pipeline ingest` of the 1,000-clip corpus of ingest_process_benchmark.py (a fresh ASR_HOME and a copy of an
initialized Dagster instance each time, warm page cache), run as a whole process in pairs, in alternating order:
once with the instance as the CLI writes it (event log: asr_pipeline.defs.common.event_log.PooledSqliteEventLogStorage)
and once with the same dagster.yaml less its event_log_storage entry (Dagster's SqliteEventLogStorage, which opens
each database for every read and write). Same checkout, same console script, same files on disk. Prints one JSON
object (per pair wall seconds, medians, the paired difference, CPU model and flags) and writes it to
benchmarks/results/event_log_<date>_cpu-<kind>.json.
"""

import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ingest_process_benchmark import (cli_command, dagster_instance_template, our_home, paired_arguments,  # noqa: E402
                                     paired_ingest_runs, timed_process, write_paired_result)

ARMS = ("kept open (shipped)", "Dagster's SqliteEventLogStorage")


def dagsters_own(template: Path, work: Path) -> Path:
    """A copy of the template whose dagster.yaml lacks the event_log_storage entry (and carries a comment, so the
    CLI does not take it for a file an earlier version wrote and bring it up to date)."""
    copy = Path(tempfile.mkdtemp(prefix="dagster_plain_", dir=work)) / "dagster"
    shutil.copytree(template, copy)
    config = copy / "dagster.yaml"
    text, removed = re.subn(r"event_log_storage:.*?env: DAGSTER_HOME\n", "", config.read_text(), flags=re.S)
    if removed != 1:
        raise SystemExit(f"{config} has no event_log_storage entry to remove")
    config.write_text(text + "# event_log_benchmark.py: Dagster's own event log storage\n")
    return copy


def one_run(arm: str, env_base: dict, url: str, corpus_dir: Path, work: Path, prepared: tuple) -> dict:
    base_model, templates = prepared
    home, env = our_home(env_base, url, base_model, corpus_dir, work, "event_log_", templates[arm])
    result = timed_process(cli_command("ingest"), env, REPO)
    meta = json.loads(next((home / "storage" / "featurized_shards").glob("*/meta.json")).read_text())
    config = (home / "dagster" / "dagster.yaml").read_text()
    if ("PooledSqliteEventLogStorage" in config) != (arm == ARMS[0]):
        raise SystemExit(f"the {arm!r} arm ran with another event log storage:\n{config}")
    runs_dir = home / "dagster" / "history" / "runs"
    left = sorted(path.name for path in runs_dir.glob("*.db-*"))  # write-ahead logs left beside the databases
    shutil.rmtree(home, ignore_errors=True)  # 160 MB of shards a run
    return {"seconds": result["seconds"], "rows": meta["rows"], "wal_files_left": left}


def main() -> None:
    args = paired_arguments(__doc__).parse_args()

    def templates(env_base: dict, scratch: Path) -> tuple:
        shipped = dagster_instance_template(env_base, scratch)
        return args.base_model, {ARMS[0]: shipped, ARMS[1]: dagsters_own(shipped, scratch)}

    runs = paired_ingest_runs(args, ARMS, templates, one_run)
    write_paired_result(args, runs, "event_log", "pairs_faster_kept_open")

if __name__ == "__main__":
    main()
