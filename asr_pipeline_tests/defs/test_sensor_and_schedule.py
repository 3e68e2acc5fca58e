"""new_transcripts_sensor and nightly_retraining against the real MariaDB and a real Dagster instance."""

import json

import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline_tests.conftest import create_notebook_table
from asr_pipeline_tests.defs import sensor_harness
from asr_pipeline_tests.defs.sensor_harness import audio_environment, covered_ids, insert_rows
from asr_pipeline_tests.defs.test_faults import FlakyProxy

pytestmark = pytest.mark.mysql


@pytest.fixture()
def env(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir):
    engine = create_notebook_table(mysql_database)
    CLIPS[:] = korean_clips
    _insert(engine, range(1, 26))
    audio_environment(monkeypatch, tmp_path, mysql_database, korean_clips, tiny_model_dir)
    yield engine
    engine.dispose()


CLIPS: list[dict] = []


def _insert(engine, numbers):
    insert_rows(engine, CLIPS, numbers)


class Daemon(sensor_harness.Daemon):
    def manifest_ids(self, key: str) -> list[int]:
        assert self.process(key)
        frame = pd.read_parquet(self.defs.resources["settings"].home + f"/storage/raw_manifest/{key}/manifest.parquet")
        return frame["id"].tolist()


_covered_ids = covered_ids


def test_first_tick_covers_every_row_exactly_once_and_an_idle_tick_skips(env):
    daemon = Daemon()
    result = daemon.tick()
    keys = [r.partition_key for r in result.run_requests]
    assert keys == ["ids-0000000001-0000000010", "ids-0000000011-0000000020", "ids-0000000021-0000000025"]
    assert sorted(_covered_ids(keys)) == list(range(1, 26))
    assert sorted(daemon.instance.get_dynamic_partitions(INGEST_BATCHES.name)) == keys
    assert daemon.manifest_ids(keys[2]) == [21, 22, 23, 24, 25]
    assert all(r.tags["asr/reason"] == "new" for r in result.run_requests)

    idle = daemon.tick()
    assert not idle.run_requests and "no new or changed rows" in idle.skip_reason.skip_message
    assert json.loads(daemon.cursor)["high_water"] == 25


def test_rows_with_ids_past_ten_digits_are_left_and_the_others_still_ingested(env):
    """A BIGINT key of timestamp-shaped ids: batch keys have ten digits, so those rows are never cut (documented),
    and one of them must not stop every tick from registering the others."""
    with env.begin() as conn:
        conn.execute(sa.text("ALTER TABLE training_datas MODIFY id BIGINT NOT NULL AUTO_INCREMENT"))
        conn.execute(sa.text("INSERT INTO training_datas (id, raw_data, transcript) VALUES (10000000001, 'x', 'y')"))
    daemon = Daemon()
    keys = [r.partition_key for r in daemon.tick().run_requests]
    assert keys == ["ids-0000000001-0000000010", "ids-0000000011-0000000020", "ids-0000000021-0000000025"]
    idle = daemon.tick()
    assert json.loads(daemon.cursor)["high_water"] == 25 and not idle.run_requests
    assert "rows with ids above 9,999,999,999 (up to 10000000001) are never ingested" in \
        idle.skip_reason.skip_message  # said on every tick, not dropped silently


def test_new_rows_get_a_new_partition_holding_exactly_them(env):
    daemon = Daemon()
    daemon.tick()
    _insert(env, range(26, 33))
    result = daemon.tick()
    assert [r.partition_key for r in result.run_requests] == ["ids-0000000026-0000000032"]
    assert daemon.manifest_ids("ids-0000000026-0000000032") == list(range(26, 33))
    # re-evaluating: nothing new beyond the cursor, and the processed batch is done
    again = daemon.tick(commit=False)
    assert not again.run_requests


def test_run_keys_are_stable_for_the_same_content(env):
    daemon = Daemon()
    first = daemon.tick(commit=False)
    second = daemon.tick(commit=False)
    assert [r.run_key for r in first.run_requests] == [r.run_key for r in second.run_requests]


def test_an_updated_transcript_re_requests_its_batch_and_a_deleted_row_drops_out(env):
    daemon = Daemon()
    initial = {r.partition_key: r.run_key for r in daemon.tick(execute=True).run_requests}
    assert set(daemon.states().values()) == {"done"}
    with env.begin() as conn:
        conn.execute(sa.text("UPDATE training_datas SET transcript = :t WHERE id = 12"), {"t": "고친 자막입니다"})
    changed = daemon.tick(execute=True)
    assert [(r.partition_key, r.tags["asr/reason"]) for r in changed.run_requests] == \
        [("ids-0000000011-0000000020", "changed")]
    assert changed.run_requests[0].run_key != initial["ids-0000000011-0000000020"]
    assert not daemon.tick().run_requests  # the change is requested once

    with env.begin() as conn:
        conn.execute(sa.text("DELETE FROM training_datas WHERE id = 3"))
    deleted = daemon.tick()
    assert [r.partition_key for r in deleted.run_requests] == ["ids-0000000001-0000000010"]
    assert daemon.manifest_ids("ids-0000000001-0000000010") == [1, 2, 4, 5, 6, 7, 8, 9, 10]


def test_updated_at_column_is_used_when_the_table_has_one(env, mysql_database):
    with env.begin() as conn:
        conn.execute(sa.text("ALTER TABLE training_datas ADD COLUMN updated_at DATETIME(6) NOT NULL "
                             "DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6)"))
    daemon = Daemon()
    daemon.tick(execute=True)
    table = daemon.defs.resources["database"].open_table()
    assert table.updated_column() == "updated_at"
    table.dispose()
    with env.begin() as conn:
        conn.execute(sa.text("UPDATE training_datas SET transcript = '다시 고친 자막' WHERE id = 22"))
    assert [r.partition_key for r in daemon.tick().run_requests] == ["ids-0000000021-0000000025"]


def test_a_database_outage_fails_the_tick_and_keeps_the_cursor(env, monkeypatch, mysql_database):
    url = sa.make_url(mysql_database)
    proxy = FlakyProxy(url.host, url.port or 3306)
    monkeypatch.setenv("ASR_DB_URL", url.set(host="127.0.0.1", port=proxy.port).render_as_string(False))
    daemon = Daemon()
    daemon.tick()
    cursor = daemon.cursor
    _insert(env, range(26, 30))
    proxy.outage(5.0)
    with pytest.raises(Exception, match="failed after 2 attempts"):
        daemon.tick()
    assert daemon.cursor == cursor
    import time
    time.sleep(5.5)
    recovered = daemon.tick()
    assert [r.partition_key for r in recovered.run_requests] == ["ids-0000000026-0000000029"]


def test_cli_ingest_and_the_sensor_never_cut_overlapping_batches(env):
    daemon = Daemon()
    daemon.tick()  # registers ids 1-25
    _insert(env, range(26, 31))
    from asr_pipeline.defs.ingest.planning import plan_ingest
    table = daemon.defs.resources["database"].open_table()
    plan = plan_ingest(daemon.instance, table, daemon.defs.resources["settings"], check_all=True, max_wait_s=0)
    table.dispose()
    assert plan.new_keys == ["ids-0000000026-0000000030"]


def test_schedule_skips_without_new_data_and_fires_with_it(env):
    daemon = Daemon()
    schedule = daemon.defs.resolve_schedule_def("nightly_retraining")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "Asia/Seoul"

    def evaluate():
        return schedule.evaluate_tick(dg.build_schedule_context(instance=daemon.instance))

    assert "no featurized_shards batch is materialized yet" in evaluate().skip_message
    key = "ids-0000000001-0000000010"
    daemon.instance.add_dynamic_partitions(INGEST_BATCHES.name, [key])
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=key))
    fired = evaluate()
    assert fired.run_requests and f"batch {key} changed" in fired.run_requests[0].tags["asr/reason"]
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("finetuned_checkpoint"))
    assert "no featurized_shards batch changed since the last checkpoint" in evaluate().skip_message
    daemon.instance.report_runless_asset_event(dg.AssetMaterialization("featurized_shards", partition=key))
    assert evaluate().run_requests
