"""Against the real MariaDB server: a created database and a table in the notebook's shape."""

import pytest
import sqlalchemy as sa

from asr_pipeline.core.database import TableSpec, TranscriptTable, masked, prepare_url
from asr_pipeline.core.errors import ConfigError
from asr_pipeline_tests.conftest import create_notebook_table

pytestmark = pytest.mark.mysql


def test_reads_korean_rows_in_id_order_across_pages(mysql_database):
    engine = create_notebook_table(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": f"/cul_m01/PRGTM_202106270005_{i:05d}.wav", "t": f"{i}번째 문장입니다."} for i in range(1, 251)])
    table = TranscriptTable(mysql_database)
    rows = list(table.read_rows(page_size=100))
    assert [r["id"] for r in rows] == list(range(1, 251))
    assert rows[41]["transcript"] == "42번째 문장입니다."
    assert [r["id"] for r in table.read_rows(after_id=245)] == [246, 247, 248, 249, 250]
    assert table.count() == 250
    table.dispose()


def test_values_are_bound_parameters_not_sql(mysql_database):
    table = TranscriptTable(mysql_database)
    hostile = "'); DROP TABLE training_datas; --"
    table.insert_rows([{"audio_path": hostile, "transcript": "Robert'); DROP TABLE x;-- 한국어"}])
    rows = list(table.read_rows())
    assert rows[0]["audio_path"] == hostile and table.count() == 1


def test_configured_names_are_validated_and_custom_columns_work(mysql_database):
    with pytest.raises(ConfigError):
        TableSpec(table="training_datas; DROP TABLE training_datas")
    with pytest.raises(ConfigError):
        TableSpec(audio_column="raw_data`, (SELECT 1) AS `x")
    engine = sa.create_engine(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE captions (caption_id BIGINT PRIMARY KEY, wav VARCHAR(200), txt TEXT)"))
        conn.execute(sa.text("INSERT INTO captions VALUES (10, 'a.wav', '가'), (3, 'b.wav', '나')"))
    table = TranscriptTable(mysql_database, TableSpec("captions", "caption_id", "wav", "txt"))
    assert [(r["id"], r["audio_path"], r["transcript"]) for r in table.read_rows()] == [(3, "b.wav", "나"),
                                                                                          (10, "a.wav", "가")]


def test_passwords_never_appear_in_rendered_urls_or_errors():
    url = "mysql+pymysql://asr:s3cr3t-pw@127.0.0.1:1/nowhere"
    assert "s3cr3t-pw" not in masked(url) and "***" in masked(url)
    assert prepare_url(url).query["charset"] == "utf8mb4"
    table = TranscriptTable(url, retries=1, backoff_s=0.01)
    with pytest.raises(RuntimeError) as failure:
        list(table.read_rows())
    assert "s3cr3t-pw" not in str(failure.value) and "2 attempts" in str(failure.value)


def test_malformed_urls_fail_with_the_variable_name():
    with pytest.raises(ConfigError, match="ASR_DB_URL"):
        prepare_url("not a url at all")
