"""Lean runs (issue 14.3): what an `asr-pipeline ingest` saves by not importing pandas (core/tables.py).

    .venv/bin/python benchmarks/pandas_free_benchmark.py [--before bcb303e] [--clips 1000] [--pairs 8] [--cold]

`asr-pipeline ingest` of the 1,000-clip corpus of ingest_process_benchmark.py (a fresh ASR_HOME and a copy of one
initialized Dagster instance each time; with --cold, every file either arm reads dropped from the page cache before
each run, as ingest_process_benchmark.py's cold runs; else a warm page cache), run as a whole process in pairs, in
alternating order:
once with this checkout (the ingest's tables through pyarrow alone) and once with the code of `--before` (the last
commit whose ingest wrote and read its tables with pandas), extracted with `git archive` and put first on
PYTHONPATH. Same virtual environment, same console script, same corpus and database. Each run is checked to have
run its arm's code (the feature shard's empty quarantine file: string columns now, null ones before). Prints one
JSON object and writes it to benchmarks/results/pandas_free[_cold]_<date>_cpu-<kind>.json.
"""

import compileall
import io
import json
import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ingest_process_benchmark import (cli_command, dagster_instance_template, evict_from_page_cache,  # noqa: E402
                                     our_home, paired_arguments, paired_ingest_runs, timed_process,
                                     write_paired_result)

ARMS = ("pyarrow tables (shipped)", "pandas tables (before)")


def checkout_before(commit: str, scratch: Path) -> Path:
    """The package as it was at `commit`, compiled (as `make install` compiles ours)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "asr_pipeline"], check=True,
                             capture_output=True).stdout
    target = scratch / f"before_{commit}"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    compileall.compile_dir(target / "asr_pipeline", quiet=1)
    return target


def one_run(arm: str, env_base: dict, url: str, corpus_dir: Path, work: Path, prepared: tuple) -> dict:
    base_model, template, before, cold = prepared
    home, env = our_home(env_base, url, base_model, corpus_dir, work, "pandas_free_", template)
    if cold:
        evict_from_page_cache([Path(sysconfig.get_paths()["purelib"]), Path(sysconfig.get_paths()["stdlib"]),
                               Path(base_model), corpus_dir, REPO / "asr_pipeline", before, home])
    if arm == ARMS[1]:
        env["PYTHONPATH"] = str(before)
    result = timed_process(cli_command("ingest"), env, REPO)
    shard = next((home / "storage" / "featurized_shards").glob("*/meta.json")).parent
    meta = json.loads((shard / "meta.json").read_text())
    reason_type = str(pq.read_schema(shard / "quarantine.parquet").field("reason").type)
    if (reason_type == "large_string") != (arm == ARMS[0]):
        raise SystemExit(f"the {arm!r} arm ran other code: its empty quarantine has a {reason_type} reason column")
    shutil.rmtree(home, ignore_errors=True)  # 160 MB of shards a run
    return {"seconds": result["seconds"], "rows": meta["rows"]}


def main() -> None:
    parser = paired_arguments(__doc__)
    parser.add_argument("--before", default="bcb303e", help="the last commit whose ingest used pandas")
    parser.add_argument("--cold", action="store_true", help="drop what either arm reads from the page cache first")
    args = parser.parse_args()

    def prepare(env_base: dict, scratch: Path) -> tuple:
        return (args.base_model, dagster_instance_template(env_base, scratch), checkout_before(args.before, scratch),
                args.cold)

    runs = paired_ingest_runs(args, ARMS, prepare, one_run)
    args.before_commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", args.before], check=True,
                                        capture_output=True, text=True).stdout.strip()
    write_paired_result(args, runs, "pandas_free", "pairs_faster_without_pandas", variant="_cold" if args.cold else "")


if __name__ == "__main__":
    main()
