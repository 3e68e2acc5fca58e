"""`asr-pipeline ingest` tags its runs as the sensor tags its run requests: why the batch runs and for which content
(asr/fingerprint). The next plan compares a failed run's fingerprint with the table's to decide whether the rows
changed since (retry at once) or not (wait out the back-off), so a run without it is retried late."""

import dagster as dg
import pytest

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


def test_cli_ingest_runs_carry_the_plans_reason_and_fingerprint(pipeline_env, monkeypatch, mysql_database):
    monkeypatch.setenv("ASR_BATCH_ROWS", "14")  # 41 rows -> 3 batches
    cli.main(["ingest"])
    runs = dg.DagsterInstance.get().get_runs(filters=dg.RunsFilter(job_name="asr_ingest"))
    keys = [run.tags["dagster/partition"] for run in runs]
    assert len(runs) == 3 and len(set(keys)) == 3
    fingerprints = _fingerprints(mysql_database, keys)
    for run in runs:
        key = run.tags["dagster/partition"]
        assert run.tags["asr/fingerprint"] == fingerprints[key] != ""
        assert (run.tags["asr/reason"], run.tags["asr/why"], run.tags["asr/stage"]) == ("new", "new rows", "ingest")
        assert run.tags["asr/launcher"] == "cli"

    # a backfilled batch's run says so, with the fingerprint of the content it re-processed
    key = sorted(keys)[1]
    cli.main(["backfill", key])
    [backfill] = dg.DagsterInstance.get().get_runs(filters=dg.RunsFilter(job_name="asr_ingest",
                                                                           tags={"asr/reason": "backfill"}))
    assert backfill.status == dg.DagsterRunStatus.SUCCESS and backfill.tags["dagster/partition"] == key
    assert backfill.tags["asr/fingerprint"] == fingerprints[key]


def test_ingest_batch_refuses_tags_that_are_not_a_json_object_of_strings(capsys):
    for bad, message in (("{not json", "--tags is not JSON"), ('["a"]', "must be a JSON object of strings"),
                         ('{"asr/attempt": 2}', "must be a JSON object of strings")):
        with pytest.raises(SystemExit, match=message):
            cli.main(["ingest-batch", "ids-0000000001-0000000014", "--tags", bad])
