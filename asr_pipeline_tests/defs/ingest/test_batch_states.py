"""Issue 11, points 1 and 2: a batch is done only when its features exist (failed and blocked batches are requested
again, with a bounded back-off, and `status --json` says where every batch stands); trickling rows wait for a full
batch or ASR_BATCH_MAX_WAIT_MINUTES. Real MariaDB, real Dagster instance, real ingest runs on espeak audio."""

import json
import time

import pytest
import sqlalchemy as sa

from asr_pipeline import cli
from asr_pipeline.core.batches import IngestCursor, utc_text
from asr_pipeline.defs.ingest import planning as ingest
from asr_pipeline.defs.ingest.planning import plan_ingest
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline_tests.conftest import create_notebook_table
from asr_pipeline_tests.defs.sensor_harness import Daemon, audio_environment, insert_rows

pytestmark = pytest.mark.mysql

KEYS = ["ids-0000000001-0000000010", "ids-0000000011-0000000020", "ids-0000000021-0000000025"]


@pytest.fixture()
def env(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir):
    engine = create_notebook_table(mysql_database)
    insert_rows(engine, korean_clips, range(1, 26))
    audio_environment(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir)
    yield engine
    engine.dispose()


def _model_storage_outage(monkeypatch, tmp_path):
    """ASR_BASE_MODEL's directory is there but empty (its share unmounted): featurized_shards fails."""
    gone = tmp_path / "model_share"
    gone.mkdir(exist_ok=True)
    monkeypatch.setenv("ASR_BASE_MODEL", str(gone))


def test_a_batch_whose_run_failed_is_requested_again_and_then_done(env, monkeypatch, tmp_path, tiny_model_dir):
    _model_storage_outage(monkeypatch, tmp_path)
    broken = Daemon()
    first = broken.tick(execute=True)
    assert [r.partition_key for r in first.run_requests] == KEYS
    states = {s["key"]: s for s in _status(broken)["batches"]}
    assert {k: s["state"] for k, s in states.items()} == dict.fromkeys(KEYS, "failed")
    assert "featurized_shards failed" in states[KEYS[0]]["reason"] and "config.json" in states[KEYS[0]]["reason"]
    assert states[KEYS[0]]["failures"] == 1

    monkeypatch.setenv("ASR_BASE_MODEL", str(tiny_model_dir))  # the share is back
    daemon = Daemon()
    daemon.cursor = broken.cursor
    retry = daemon.tick(execute=True)
    assert [(r.partition_key, r.tags["asr/reason"]) for r in retry.run_requests] == [(k, "retry") for k in KEYS]
    assert "featurized_shards failed" in retry.run_requests[0].tags["asr/why"]
    assert not {r.run_key for r in retry.run_requests} & {r.run_key for r in first.run_requests}
    assert daemon.states() == dict.fromkeys(KEYS, "done")
    idle = daemon.tick()
    assert not idle.run_requests and "nothing to do" in idle.skip_reason.skip_message


def test_after_three_failed_attempts_the_waits_between_attempts_double(env, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("ASR_BATCH_ROWS", "100")  # one batch
    _model_storage_outage(monkeypatch, tmp_path)
    daemon = Daemon()
    reasons = [[r.tags["asr/reason"] for r in daemon.tick(execute=True).run_requests] for _ in range(3)]
    assert reasons == [["new"], ["retry"], ["retry"]]
    waiting = daemon.tick(execute=True)
    assert not waiting.run_requests
    assert "ids-0000000001-0000000025 failed (3 attempts), next attempt after" in waiting.skip_reason.skip_message
    retry_at = _status(daemon)["batches"][0]["retry_at"]
    assert 3500 < retry_at - time.time() <= 3600
    cli.main(["status"])
    assert f"next attempt after {utc_text(retry_at)}" in capsys.readouterr().out

    table = daemon.defs.resources["database"].open_table()
    settings = daemon.defs.resources["settings"]
    cursor = IngestCursor.from_json(daemon.cursor)
    later = plan_ingest(daemon.instance, table, settings, cursor, now=time.time() + 3601)
    assert [(r.key, r.reason, r.attempt) for r in later.requests] == [("ids-0000000001-0000000025", "retry", 3)]

    # the fourth attempt fails too (the outage goes on): the next wait is two hours, not one
    monkeypatch.setattr(ingest, "clock", lambda: time.time() + 3601)  # the sensor's tick an hour later
    fourth = daemon.tick(execute=True)
    assert [r.tags["asr/reason"] for r in fourth.run_requests] == ["retry"]
    failed_at = time.time()
    cursor = IngestCursor.from_json(daemon.cursor)
    assert not plan_ingest(daemon.instance, table, settings, cursor, now=failed_at + 3601).requests
    after_two_hours = plan_ingest(daemon.instance, table, settings, cursor, now=failed_at + 2 * 3600 + 1)
    table.dispose()
    assert [(r.reason, r.attempt) for r in after_two_hours.requests] == [("retry", 4)]


def test_status_lists_every_batch_with_its_state_and_reason(env, monkeypatch):
    daemon = Daemon()
    daemon.tick(execute=True)  # three batches, done
    with env.begin() as conn:  # ten rows whose files are not there: the quarantine check blocks their batch
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": f"/cul_m01/archive/GONE_20260101{n:04d}_00001.wav", "t": "없는 파일"} for n in range(10)])
    daemon.tick(execute=True)
    insert_rows(env, [{"audio_path": "/x/PRGTM_202106270001_00001.wav"}], range(36, 39))
    daemon.tick()  # requested, not started yet
    with env.begin() as conn:
        conn.execute(sa.text("UPDATE training_datas SET transcript = '고친 자막' WHERE id = 4"))

    batches = {b["key"]: b for b in _status(daemon)["batches"]}
    assert {k: b["state"] for k, b in batches.items()} == {
        "ids-0000000001-0000000010": "pending", "ids-0000000011-0000000020": "done",
        "ids-0000000021-0000000025": "done", "ids-0000000026-0000000035": "blocked",
        "ids-0000000036-0000000038": "pending"}
    assert "rows changed since it was processed" in batches["ids-0000000001-0000000010"]["reason"]
    blocked = batches["ids-0000000026-0000000035"]
    assert "blocking check resampled_dataset.quarantine_rate_below_threshold failed: 10 of 10 rows quarantined" \
        in blocked["reason"]
    assert blocked["failures"] == 1 and blocked["last_run_id"]
    assert "not_started" in batches["ids-0000000036-0000000038"]["reason"]
    assert all(b["registered_at"] and b["registered_at"] > time.time() - 600 for b in batches.values())


def test_trickling_rows_wait_for_a_full_batch_or_the_longest_wait(env, monkeypatch, korean_clips):
    monkeypatch.setenv("ASR_BATCH_MAX_WAIT_MINUTES", "60")
    daemon = Daemon()
    assert [r.partition_key for r in daemon.tick().run_requests] == KEYS[:2]  # rows 21-25 wait
    for n in range(26, 30):  # one row a tick: no partition, no run
        insert_rows(env, korean_clips, [n])
        result = daemon.tick()
        assert not result.run_requests and "pending" in result.skip_reason.skip_message
    insert_rows(env, korean_clips, [30])  # ten pending rows: a full batch
    assert [r.partition_key for r in daemon.tick().run_requests] == ["ids-0000000021-0000000030"]

    insert_rows(env, korean_clips, [31, 32])
    assert not daemon.tick().run_requests
    cursor = json.loads(daemon.cursor)
    cursor["pending_since"] -= 61 * 60  # the oldest pending row was first seen 61 minutes ago
    daemon.cursor = json.dumps(cursor)
    assert [r.partition_key for r in daemon.tick().run_requests] == ["ids-0000000031-0000000032"]
    assert len(daemon.instance.get_dynamic_partitions(INGEST_BATCHES.name)) == 4
    assert len(daemon.cursor) < 200 and set(json.loads(daemon.cursor)) == {
        "high_water", "rotation", "pending_since", "pending_upto", "last_tick"}


def _status(daemon) -> dict:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(["status", "--json"])
    return json.loads(out.getvalue())
