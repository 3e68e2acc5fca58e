"""The asr_alerts sensor's tick on an instance with many ingest batches.

    .venv/bin/python benchmarks/alerts_benchmark.py [--batches 1000] [--unfinished 5] [--failed 20]

A fresh Dagster instance (SQLite storage, in a temporary directory) with --batches registered ingest batches, all but
--unfinished of them featurized (runless materializations), and --failed failed runs of other jobs; times three
ticks (the first records the freshness checks). Prints one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--unfinished", type=int, default=5)
    parser.add_argument("--failed", type=int, default=20)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="asr_alerts_bench_"))
    os.environ.update({"ASR_HOME": str(home), "DAGSTER_HOME": str(home / "dagster")})
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

    import dagster as dg

    from asr_pipeline import cli
    from asr_pipeline.defs.alerts.sensors import alert_tick

    defs, instance = cli._definitions(), cli._instance()
    keys = [f"ids-{i * 10000 + 1:010d}-{(i + 1) * 10000:010d}" for i in range(args.batches)]
    instance.add_dynamic_partitions("ingest_batches", keys)
    for key in keys[:len(keys) - args.unfinished]:
        instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=key))

    @dg.op
    def boom():
        raise RuntimeError("injected")

    failing = dg.GraphDefinition("asr_train", node_defs=[boom]).to_job()
    for _ in range(args.failed):
        failing.execute_in_process(instance=instance, raise_on_error=False)
    ticks = []
    for _ in range(3):
        started = time.perf_counter()
        summary = alert_tick(instance, defs.resources["settings"], time.time(), emit=lambda _: None)
        ticks.append(round(time.perf_counter() - started, 3))
    print(json.dumps({"batches": args.batches, "unfinished": args.unfinished, "failed_runs": args.failed,
                      "tick_seconds": ticks, "summary": summary}))


if __name__ == "__main__":
    main()
