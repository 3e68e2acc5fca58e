"""The nightly loop left alone (issue 11): new_transcripts_sensor on a 1,000,000-row table for 100 ticks.

    .venv/bin/python benchmarks/loop_simulation.py [--rows 1000000] [--ticks 100] [--mysql URL] [--seed 11]

The local MariaDB holds the notebook's table (id, raw_data, transcript) with --rows rows; a fresh Dagster instance
(SQLite storage) is the catalog. The real sensor is evaluated as the daemon evaluates it (its cursor kept between
ticks; a run request whose run_key already has a run is dropped, as the daemon does), one tick per simulated minute
(ASR_BATCH_ROWS=10000, ASR_BATCH_MAX_WAIT_MINUTES=60, ASR_CHECK_BATCHES_PER_TICK=20: the defaults). Between ticks
0-50 rows are inserted (seeded); at tick 30 a transcript is corrected, at tick 50 a row is deleted.

The requested runs are real Dagster runs in that instance, but of stand-in assets with the same keys (raw_manifest
reads the batch's fingerprint from the table, as the real one does, and records it; featurized_shards records a
materialization): the audio work is what this does not measure. The first run of one batch (the 37th) fails in
featurized_shards, a simulated NAS outage, and succeeds when requested again.

Prints one JSON object and writes it to benchmarks/results/loop_simulation_<date>.json: partitions created, whether
every id is in exactly one batch, the failed batch's history, tick time p50/p95/max (goal p95 < 1 s), cursor size,
the final state of every batch, CPU model and flags. The database it creates (asr_loop_*) is dropped at the end.
"""

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from asr_pipeline.core.batches import parse_batch_key  # noqa: E402  (the repository first on the path)
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES  # noqa: E402
from asr_pipeline.defs.common.resources import TranscriptDatabase  # noqa: E402
from bench_common import cpu_info as _cpu  # noqa: E402  (benchmarks/ is the script's directory)
from result_files import write_result  # noqa: E402

DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"
FAILING_BATCH_INDEX = 36  # the 37th batch's first run fails


def _create_table(server_url: str, rows: int) -> "tuple[str, sa.Engine]":
    name = f"asr_loop_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(server_url)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE training_datas (id INT AUTO_INCREMENT PRIMARY KEY, raw_data VARCHAR(512), "
                             "transcript TEXT) DEFAULT CHARSET=utf8mb4"))
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": f"/cul_m01/PRGTM_2021062700{i % 90:02d}_{i:05d}.wav", "t": f"{i}번째 자막 문장입니다."}
                      for i in range(1000)])
        while (count := conn.execute(sa.text("SELECT COUNT(*) FROM training_datas")).scalar()) < rows:
            conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) SELECT raw_data, transcript "
                                 "FROM training_datas LIMIT :n"), {"n": rows - count})
    engine.dispose()
    return url, server


def stand_in_assets(failures: dict[str, int]):
    """raw_manifest and featurized_shards with the real keys and partitions, minus the audio work."""

    @dg.asset(name="raw_manifest", partitions_def=INGEST_BATCHES)
    def raw_manifest(context: dg.AssetExecutionContext, database: TranscriptDatabase) -> dg.MaterializeResult:
        fingerprint = database.reader().batch_fingerprint(*parse_batch_key(context.partition_key))
        return dg.MaterializeResult(metadata={"fingerprint": fingerprint})

    @dg.asset(name="featurized_shards", deps=[raw_manifest], partitions_def=INGEST_BATCHES)
    def featurized_shards(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        if failures.get(context.partition_key, 0) > 0:
            failures[context.partition_key] -= 1
            raise OSError(f"simulated NAS outage while featurizing {context.partition_key}")
        return dg.MaterializeResult()

    return [raw_manifest, featurized_shards]


def simulate(args) -> dict:
    url, server = _create_table(args.mysql, args.rows)
    home = Path(tempfile.mkdtemp(prefix="asr_loop_"))
    os.environ.update({"ASR_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "ASR_DB_URL": url,
                       "ASR_BATCH_ROWS": "10000", "ASR_BATCH_MAX_WAIT_MINUTES": "60",
                       "ASR_CHECK_BATCHES_PER_TICK": "20"})
    from asr_pipeline import cli
    from asr_pipeline.defs.ingest import planning as ingest
    from asr_pipeline.defs.ingest.batch_states import batch_states

    rng = random.Random(args.seed)
    engine = sa.create_engine(url)
    try:
        defs, instance = cli._definitions(), cli._instance()
        sensor = defs.resolve_sensor_def("new_transcripts_sensor")
        database = defs.resources["database"]
        resources = {"database": database, "settings": defs.resources["settings"]}
        failures: dict[str, int] = {}
        assets = stand_in_assets(failures)
        simulated_now = [time.time()]
        ingest.clock = lambda: simulated_now[0]
        cursor, history, seen_run_keys = None, [], set()
        events = []

        def tick(number: int, before_runs=None) -> dict:
            nonlocal cursor
            started = time.perf_counter()
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                result = sensor(context)
            seconds = time.perf_counter() - started
            cursor = result.cursor
            requests = [r for r in result.run_requests or [] if r.run_key not in seen_run_keys]
            if before_runs:
                before_runs(requests)
            for request in requests:  # the daemon launches them; here they run at once, in-process
                seen_run_keys.add(request.run_key)
                tags = {**request.tags, "dagster/run_key": request.run_key}
                dg.materialize(assets, partition_key=request.partition_key, instance=instance, tags=tags,
                               resources={"database": database}, raise_on_error=False)
            record = {"tick": number, "seconds": round(seconds, 4), "cursor_bytes": len(cursor or ""),
                      "requests": [(r.partition_key, r.tags["asr/reason"]) for r in requests]}
            history.append(record)
            return record

        first_batches_started = time.perf_counter()

        def fail_the_37th(requests):
            failures[requests[min(FAILING_BATCH_INDEX, len(requests) - 1)].partition_key] = 1

        first = tick(0, before_runs=fail_the_37th)
        first_batches_s = time.perf_counter() - first_batches_started
        keys_after_first = sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name))
        failing_key = next(iter(failures))
        events.append({"tick": 0, "event": "its first run fails in featurized_shards", "batch": failing_key})
        corrected_key, deleted_key = keys_after_first[min(4, len(keys_after_first) - 1)], keys_after_first[-1 if len(keys_after_first) < 10 else 9]
        ticks = []
        for number in range(1, args.ticks + 1):
            simulated_now[0] += 60
            new_rows = rng.randint(0, 50)
            with engine.begin() as conn:
                if new_rows:
                    conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                                 [{"p": f"/cul_m01/NEW_20261126{number:04d}_{k:05d}.wav", "t": f"새 자막 {k}"}
                                  for k in range(new_rows)])
                if number == 30:
                    first_of, _ = parse_batch_key(corrected_key)
                    conn.execute(sa.text("UPDATE training_datas SET transcript = '고친 자막' WHERE id = :id"),
                                 {"id": first_of + 123})
                    events.append({"tick": number, "event": "correction", "batch": corrected_key})
                if number == 50:
                    first_of, _ = parse_batch_key(deleted_key)
                    conn.execute(sa.text("DELETE FROM training_datas WHERE id = :id"), {"id": first_of + 42})
                    events.append({"tick": number, "event": "delete", "batch": deleted_key})
            ticks.append(tick(number))

        keys = sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name))
        ranges = sorted(parse_batch_key(k) for k in keys)
        contiguous = all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:]))
        with engine.connect() as conn:
            ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM training_datas ORDER BY id"))]
        pending_rows = sum(1 for i in ids if i > ranges[-1][1])
        batched = [i for i in ids if i <= ranges[-1][1]]
        exactly_once = contiguous and ranges[0][0] <= batched[0]

        table = database.open_table()
        states = batch_states(instance, table=table)
        table.dispose()
        counts: dict[str, int] = {}
        for state in states:
            counts[state.state] = counts.get(state.state, 0) + 1

        def requested(key):
            return [(t["tick"], reason) for t in history for k, reason in t["requests"] if k == key]

        seconds = [t["seconds"] for t in ticks]
        quantiles = statistics.quantiles(seconds, n=100)
        final = {s.key: s for s in states}
        return {
            "rows_initial": args.rows, "ticks": args.ticks, "seed": args.seed,
            "rows_inserted_during_ticks": len(ids) - args.rows + 1,
            "settings": {"ASR_BATCH_ROWS": 10000, "ASR_BATCH_MAX_WAIT_MINUTES": 60, "ASR_CHECK_BATCHES_PER_TICK": 20,
                         "tick_every_simulated_s": 60},
            "first_tick": {"seconds": first["seconds"], "partitions_created": len(keys_after_first),
                           "with_its_runs_s": round(first_batches_s, 1)},
            "partitions_created_during_ticks": len(keys) - len(keys_after_first),
            "partitions_total": len(keys),
            "new_partitions": [k for k in keys if k not in keys_after_first],
            "every_id_in_exactly_one_batch": bool(exactly_once),
            "rows_pending_at_end": pending_rows,
            "events": events,
            "failed_batch": {"key": failing_key, "requests": requested(failing_key),
                             "final_state": final[failing_key].state, "failures_recorded": final[failing_key].failures},
            "corrected_batch": {"key": corrected_key, "requests": requested(corrected_key),
                                "final_state": final[corrected_key].state},
            "deleted_row_batch": {"key": deleted_key, "requests": requested(deleted_key),
                                  "final_state": final[deleted_key].state},
            "tick_seconds": {"p50": round(statistics.median(seconds), 4), "p95": round(quantiles[94], 4),
                             "max": round(max(seconds), 4), "mean": round(statistics.fmean(seconds), 4)},
            "cursor_bytes": {"max": max(t["cursor_bytes"] for t in ticks), "final": len(cursor or "")},
            "final_states": counts,
            "mariadb": engine.connect().execute(sa.text("SELECT VERSION()")).scalar(),
            "cpu": _cpu(), "python": platform.python_version(), "date": date.today().isoformat(),
            "command": "python benchmarks/loop_simulation.py " + " ".join(sys.argv[1:]),
        }
    finally:
        engine.dispose()
        with server.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE IF EXISTS {sa.make_url(url).database}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--mysql", default=DEFAULT_MYSQL)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    result = simulate(args)
    write_result(result, args.out, f"loop_simulation_{result['date']}.json")


if __name__ == "__main__":
    main()
