"""`asr-pipeline ingest` tags its runs as the sensor tags its run requests: why the batch runs and for which content
(asr/fingerprint). The next plan compares a failed run's fingerprint with the table's to decide whether the rows
changed since (retry at once, reason "changed") or not (wait out the back-off, reason "retry"); a run without it
counts as unchanged."""

import dagster as dg
import pytest
import sqlalchemy as sa

from asr_pipeline import cli
from asr_pipeline.core.batches import parse_batch_key
from asr_pipeline.core.database import TranscriptTable

pytestmark = [pytest.mark.mysql]


def _fingerprints(url: str, keys) -> dict[str, str]:
    table = TranscriptTable(url)
    try:
        return {key: table.batch_fingerprint(*parse_batch_key(key)) for key in keys}
    finally:
        table.dispose()


def _ingest_runs(**tags) -> list:
    return dg.DagsterInstance.get().get_runs(filters=dg.RunsFilter(job_name="asr_ingest", tags=tags or None))


def test_cli_ingest_runs_carry_the_plans_reason_and_fingerprint(pipeline_env, monkeypatch, mysql_database):
    monkeypatch.setenv("ASR_BATCH_ROWS", "14")  # 41 rows -> 3 batches
    cli.main(["ingest"])
    runs = _ingest_runs()
    keys = [run.tags["dagster/partition"] for run in runs]
    assert len(runs) == 3 and len(set(keys)) == 3
    fingerprints = _fingerprints(mysql_database, keys)
    for run in runs:
        key = run.tags["dagster/partition"]
        assert run.tags["asr/fingerprint"] == fingerprints[key] != ""
        assert (run.tags["asr/reason"], run.tags["asr/why"], run.tags["asr/attempt"]) == ("new", "new rows", "0")
        assert run.tags["asr/launcher"] == "cli"
        assert run.tags["asr/stage"] == "ingest"  # the job's own tag, on every ingest run

    # a backfilled batch's run says so, with the fingerprint of the content it re-processed
    key = sorted(keys)[1]
    cli.main(["backfill", key])
    [backfill] = _ingest_runs(**{"asr/reason": "backfill"})
    assert backfill.status == dg.DagsterRunStatus.SUCCESS and backfill.tags["dagster/partition"] == key
    assert backfill.tags["asr/fingerprint"] == fingerprints[key]


def test_a_failed_cli_run_whose_rows_changed_since_is_requested_as_changed(pipeline_env, monkeypatch,
                                                                           mysql_database):
    """The batch holding the row without a file fails its quarantine-rate check; after a transcript of that batch
    is corrected, the next ingest knows the rows changed since the failed run (its fingerprint tag) and says so."""
    monkeypatch.setenv("ASR_BATCH_ROWS", "14")
    monkeypatch.setenv("ASR_MAX_QUARANTINE_RATE", "0.01")  # 1 of the last batch's 13 rows has no file
    with pytest.raises(SystemExit, match="ingest failed for batches"):
        cli.main(["ingest"])
    [failed] = [run for run in _ingest_runs() if run.status == dg.DagsterRunStatus.FAILURE]
    first, last = parse_batch_key(failed.tags["dagster/partition"])
    engine = sa.create_engine(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE training_datas SET transcript = :t WHERE id = :i"), {"t": "고친 문장", "i": first})
    engine.dispose()
    with pytest.raises(SystemExit, match="ingest failed for batches"):  # still one row without a file
        cli.main(["ingest"])
    again = _ingest_runs(**{"dagster/partition": failed.tags["dagster/partition"]})
    assert [run.tags["asr/reason"] for run in again] == ["changed", "new"]  # newest first
    assert again[0].tags["asr/fingerprint"] != failed.tags["asr/fingerprint"]


def test_ingest_batch_takes_only_asr_tags_as_a_json_object_of_strings():
    for bad, message in (("{not json", "--tags is not JSON"), ('["a"]', "must be a JSON object of asr/ tags"),
                         ('{"asr/attempt": 2}', "must be a JSON object of asr/ tags"),
                         ('{"dagster/priority": "9"}', "must be a JSON object of asr/ tags")):
        with pytest.raises(SystemExit, match=message):
            cli.main(["ingest-batch", "ids-0000000001-0000000014", "--tags", bad])
