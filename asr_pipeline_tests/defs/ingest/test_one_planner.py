"""Issue 11, point 3: `asr-pipeline ingest` and new_transcripts_sensor plan under one lock, so running both at once
while rows are inserted never cuts overlapping id ranges, and every id lands in exactly one batch."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from asr_pipeline.core.batches import parse_batch_key
from asr_pipeline.core.database import TranscriptTable
from asr_pipeline.core.locks import lock_name
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline_tests.conftest import create_notebook_table
from asr_pipeline_tests.defs.sensor_harness import Daemon, audio_environment, insert_rows

pytestmark = pytest.mark.mysql
REPO = Path(__file__).resolve().parents[3]


@pytest.fixture()
def env(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir):
    engine = create_notebook_table(mysql_database)
    insert_rows(engine, korean_clips, range(1, 13))
    audio_environment(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir)
    monkeypatch.setenv("ASR_BATCH_ROWS", "6")
    yield engine
    engine.dispose()


def _cli_ingest() -> subprocess.Popen:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "asr_pipeline.cli", "ingest"], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_cli_ingest_waits_for_the_planning_lock(env, mysql_database):
    """While another planner holds the lock (here: this test, with GET_LOCK on the lock's name), the CLI registers
    nothing; once it is released, the CLI plans."""
    daemon = Daemon()
    holder = sa.create_engine(mysql_database)
    with holder.connect() as conn:
        name = lock_name(TranscriptTable(mysql_database))
        assert conn.execute(sa.text("SELECT GET_LOCK(:n, 0)"), {"n": name}).scalar() == 1
        cli = _cli_ingest()
        time.sleep(8)  # long enough for the CLI to start, load the definitions and reach planning
        assert cli.poll() is None, cli.stdout.read()
        assert daemon.instance.get_dynamic_partitions(INGEST_BATCHES.name) == []
        conn.execute(sa.text("SELECT RELEASE_LOCK(:n)"), {"n": name})
    holder.dispose()
    output, _ = cli.communicate(timeout=300)
    assert cli.returncode == 0, output
    assert sorted(daemon.instance.get_dynamic_partitions(INGEST_BATCHES.name)) == \
        ["ids-0000000001-0000000006", "ids-0000000007-0000000012"]


def test_cli_and_sensor_planning_at_once_while_rows_arrive_never_overlap(env, korean_clips, monkeypatch):
    # The sensor cuts only full batches of 20 (its wait is an hour); the CLI always cuts what is pending (wait 0). With
    # one row arriving every 0.15 s, a CLI run almost always finds a remainder to cut while the sensor keeps cutting
    # full batches. 125 rows is not a multiple of 20, so a CLI started after the last insert always finds the rest.
    monkeypatch.setenv("ASR_BATCH_ROWS", "20")
    monkeypatch.setenv("ASR_BATCH_MAX_WAIT_MINUTES", "60")
    daemon = Daemon()
    stop = threading.Event()
    inserted = [12]

    def insert_rows_slowly():
        while not stop.is_set() and inserted[0] < 125:
            insert_rows(env, korean_clips, [inserted[0] + 1])
            inserted[0] += 1
            time.sleep(0.15)  # rows keep arriving while the CLI starts (several seconds) and plans

    writer = threading.Thread(target=insert_rows_slowly)
    writer.start()
    clis, outputs = [_cli_ingest()], []
    ticks = 0
    try:
        while writer.is_alive() or clis[-1].poll() is None:
            daemon.tick()  # plans and registers under the lock; runs are requested, not executed
            ticks += 1
            if clis[-1].poll() is not None and len(clis) < 4:
                outputs.append(clis[-1].communicate()[0])
                if writer.is_alive() or _batches_cut(outputs) == 0:
                    clis.append(_cli_ingest())  # a person running `asr-pipeline ingest` again
    finally:
        stop.set()
        writer.join()
    outputs += [c.communicate(timeout=300)[0] for c in clis[len(outputs):]]
    assert all(c.returncode == 0 for c in clis), outputs
    monkeypatch.setenv("ASR_BATCH_MAX_WAIT_MINUTES", "0")
    Daemon().tick()  # whatever arrived last, cut now (a fresh sensor starts from the registered batches)

    ranges = sorted(parse_batch_key(k) for k in daemon.instance.get_dynamic_partitions(INGEST_BATCHES.name))
    for (_, last), (first, _) in zip(ranges, ranges[1:]):
        assert first == last + 1, f"batches overlap or leave a gap: {ranges}"
    with env.connect() as conn:
        ids = [row[0] for row in conn.execute(sa.text("SELECT id FROM training_datas ORDER BY id"))]
    assert len(ids) == inserted[0] == 125
    owners = {i: [r for r in ranges if r[0] <= i <= r[1]] for i in ids}
    assert all(len(found) == 1 for found in owners.values())
    cut_by_cli = _batches_cut(outputs)
    full_batches = sum(last - first + 1 == 20 for first, last in ranges)
    assert ticks > 3 and cut_by_cli > 0 and full_batches > 0, (ticks, outputs)  # both planners really cut batches


def _batches_cut(outputs: list[str]) -> int:
    return sum("new" in line for output in outputs for line in output.splitlines() if "ingest: batch" in line)
