"""Incremental ingest and sensor tick cost, against the local MariaDB.

    .venv/bin/python benchmarks/ingest_benchmark.py tick [--rows 1000000] [--mysql URL]
    .venv/bin/python benchmarks/ingest_benchmark.py incremental --base-model DIR [--rows 1000] [--mysql URL]

tick: a table of --rows rows (the notebook's shape), a real Dagster instance; times new_transcripts_sensor's first
tick (registers every batch), an idle tick, and a tick after 1% new rows plus one corrected transcript.
incremental: --rows espeak clips ingested in full, then 1% more rows ingested by `asr-pipeline ingest`; compares
wall time and rows processed.
Each prints one JSON object. The database it creates (asr_bench_*) is dropped at the end.
"""

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa

DEFAULT_MYSQL = "mysql+pymysql://root@127.0.0.1:3306/test"


def _database(server_url: str) -> tuple[str, sa.Engine]:
    name = f"asr_bench_{uuid.uuid4().hex[:8]}"
    server = sa.create_engine(server_url)
    with server.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE {name} CHARACTER SET utf8mb4"))
    url = sa.make_url(server_url).set(database=name).render_as_string(hide_password=False)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE training_datas (id INT AUTO_INCREMENT PRIMARY KEY, raw_data VARCHAR(512), "
                             "transcript TEXT) DEFAULT CHARSET=utf8mb4"))
    return url, server


def _drop(server: sa.Engine, url: str) -> None:
    with server.begin() as conn:
        conn.execute(sa.text(f"DROP DATABASE IF EXISTS {sa.make_url(url).database}"))


def _environment(url: str, home: Path, **extra) -> None:
    os.environ.update({"ASR_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "ASR_DB_URL": url, **extra})


def bench_tick(args) -> dict:
    import dagster as dg

    from asr_pipeline import cli

    url, server = _database(args.mysql)
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:  # 1,000 rows, then doubled in SQL until --rows
            conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                         [{"p": f"/cul_m01/PRGTM_2021062700{i % 90:02d}_{i:05d}.wav", "t": f"{i}번째 자막 문장입니다."}
                          for i in range(1000)])
            while conn.execute(sa.text("SELECT COUNT(*) FROM training_datas")).scalar() < args.rows:
                conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) "
                                     "SELECT raw_data, transcript FROM training_datas LIMIT :n"),
                             {"n": args.rows - conn.execute(sa.text("SELECT COUNT(*) FROM training_datas")).scalar()})
        rows = engine.connect().execute(sa.text("SELECT COUNT(*) FROM training_datas")).scalar()
        home = Path(tempfile.mkdtemp(prefix="asr_tick_"))
        _environment(url, home)
        defs, instance = cli._definitions(), cli._instance()
        sensor = defs.resolve_sensor_def("new_transcripts_sensor")
        resources = {"database": defs.resources["database"], "settings": defs.resources["settings"]}
        cursor = None

        def tick():
            nonlocal cursor
            started = time.perf_counter()
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
                result = sensor(context)
            seconds = time.perf_counter() - started
            for request in result.dynamic_partitions_requests or []:
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            cursor = result.cursor
            return {"seconds": round(seconds, 3), "run_requests": len(result.run_requests or []),
                    "skipped": result.skip_reason is not None}

        first = tick()
        idle = [tick() for _ in range(3)]
        new_rows = rows // 100
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) SELECT raw_data, transcript "
                                 "FROM training_datas LIMIT :n"), {"n": new_rows})
            conn.execute(sa.text("UPDATE training_datas SET transcript = '고친 자막' WHERE id = 5"))
        after_new = tick()
        settings = defs.resources["settings"]
        return {"rows": int(rows), "batch_rows": settings.batch_rows,
                "check_batches_per_tick": settings.check_batches_per_tick, "first_tick": first,
                "idle_ticks": idle, "tick_after_1pct_new_rows_and_one_update": after_new, "new_rows": int(new_rows)}
    finally:
        engine.dispose()
        _drop(server, url)


def bench_incremental(args) -> dict:
    import pandas as pd

    from asr_pipeline import cli
    from asr_pipeline.core.synth import write_demo_corpus

    corpus_dir = Path(args.work) / f"corpus_{args.rows}"
    manifest = Path(args.work) / f"corpus_{args.rows}.csv"
    if not manifest.exists():
        pd.DataFrame(write_demo_corpus(corpus_dir, args.rows, emit=lambda m: print(m, file=sys.stderr))).to_csv(
            manifest, index=False)
    clips = pd.read_csv(manifest)
    url, server = _database(args.mysql)
    engine = sa.create_engine(url)
    try:
        def insert(frame):
            with engine.begin() as conn:
                conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                             [{"p": r.audio_path, "t": r.transcript} for r in frame.itertuples()])

        home = Path(tempfile.mkdtemp(prefix="asr_incremental_"))
        _environment(url, home, ASR_BASE_MODEL=args.base_model, ASR_AUDIO_ROOTS=str(corpus_dir.resolve()))
        defs = cli._definitions()
        insert(clips)
        started = time.perf_counter()
        full_batches = cli.ingest.ingest(defs)
        full = time.perf_counter() - started
        insert(clips.head(max(1, args.rows // 100)))
        started = time.perf_counter()
        new_batches = cli.ingest.ingest(defs)
        incremental = time.perf_counter() - started
        return {"rows": args.rows, "new_rows": max(1, args.rows // 100), "full_ingest_s": round(full, 3),
                "incremental_ingest_s": round(incremental, 3), "wall_ratio": round(incremental / full, 4),
                "rows_processed_ratio": round(max(1, args.rows // 100) / args.rows, 4),
                "full_batches": full_batches, "incremental_batches": new_batches}
    finally:
        engine.dispose()
        _drop(server, url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    tick = sub.add_parser("tick")
    tick.add_argument("--rows", type=int, default=1_000_000)
    tick.add_argument("--mysql", default=DEFAULT_MYSQL)
    incremental = sub.add_parser("incremental")
    incremental.add_argument("--base-model", required=True)
    incremental.add_argument("--rows", type=int, default=1000)
    incremental.add_argument("--mysql", default=DEFAULT_MYSQL)
    incremental.add_argument("--work", default="/tmp/asr_featurize_benchmark")
    args = parser.parse_args()
    result = bench_tick(args) if args.what == "tick" else bench_incremental(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
