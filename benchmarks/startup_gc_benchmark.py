"""Lean runs (issue 14.3): what pausing the garbage collector during a console command's start-up saves.

    .venv/bin/python benchmarks/startup_gc_benchmark.py [--clips 1000] [--pairs 8] [--base-model DIR]

`asr-pipeline ingest` of the 1,000-clip corpus of ingest_process_benchmark.py (a fresh ASR_HOME and a copy of an
initialized Dagster instance each time, warm page cache), run as a whole process in pairs: once as shipped (start-up
paused, asr_pipeline/cli/runs.py) and once with the pause turned off, in alternating order. Both arms run the same
checkout through the same wrapper, which only (for the "unpaused" arm) replaces pause_gc_for_startup with a no-op
and, in both, adds a gc callback that adds up the seconds spent in collections, before the instance was open and in
all. Prints one JSON object (per pair wall seconds, medians, the paired difference, CPU model and flags) and writes
it to benchmarks/results/startup_gc_<date>_cpu-<kind>.json.
"""

import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from ingest_process_benchmark import (dagster_instance_template, our_home, paired_arguments,  # noqa: E402
                                     paired_ingest_runs, timed_process, write_paired_result)

# run as `python -c WRAPPER ingest`: the console script's main(), with the collector's time written to stderr at exit
WRAPPER = """
import atexit, gc, json, os, sys, time
spent = {"all": 0.0, "before_instance": 0.0}
started = []
def clock(phase, info):
    if phase == "start":
        started.append(time.perf_counter())
    else:
        seconds = time.perf_counter() - started.pop()
        spent["all"] += seconds
        if not instance_open[0]:
            spent["before_instance"] += seconds
gc.callbacks.append(clock)
instance_open = [False]
import asr_pipeline.cli.runs as runs
import asr_pipeline.cli.parser as parser
original_end = runs.end_startup_gc_pause
def end_and_mark():
    instance_open[0] = True
    original_end()
runs.end_startup_gc_pause = end_and_mark
if os.environ["STARTUP_GC_ARM"] == "unpaused":
    parser.pause_gc_for_startup = lambda: None
atexit.register(lambda: print("GC_SECONDS " + json.dumps(spent), file=sys.stderr))
sys.argv = ["asr-pipeline", *sys.argv[1:]]
parser.main()
"""


def one_run(arm: str, env_base: dict, url: str, corpus_dir: Path, work: Path, prepared: tuple) -> dict:
    base_model, template = prepared
    flag = "unpaused" if arm == "unpaused" else "paused"
    home, env = our_home(env_base, url, base_model, corpus_dir, work, f"gc_{flag}_", template)
    result = timed_process([sys.executable, "-c", WRAPPER, "ingest"], {**env, "STARTUP_GC_ARM": flag}, REPO)
    gc_line = next(line for _, line in result["lines"] if line.startswith("GC_SECONDS "))
    spent = json.loads(gc_line.removeprefix("GC_SECONDS "))
    meta = json.loads(next((home / "storage" / "featurized_shards").glob("*/meta.json")).read_text())
    shutil.rmtree(home, ignore_errors=True)  # 160 MB of shards a run
    return {"seconds": result["seconds"], "rows": meta["rows"], "gc_seconds": round(spent["all"], 3),
            "gc_seconds_before_instance": round(spent["before_instance"], 3)}


def main() -> None:
    args = paired_arguments(__doc__).parse_args()
    runs = paired_ingest_runs(args, ("paused (shipped)", "unpaused"),
                              lambda env_base, scratch: (args.base_model, dagster_instance_template(env_base, scratch)),
                              one_run)

    write_paired_result(args, runs, "startup_gc", "pairs_faster_paused",
                        medians_of=("gc_seconds", "gc_seconds_before_instance"))

if __name__ == "__main__":
    main()
