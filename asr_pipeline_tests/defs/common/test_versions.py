"""Issue 11, points 5 and 6: settings that change a batch's content make it stale, in Dagster's own stale status
(what the UI shows), in `backfill --stale`, and in training, which refuses a mix. Real MariaDB, real instance,
real files."""

import shutil

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver, StaleStatus
from dagster._core.loader import LoadingContextForTest

from asr_pipeline import cli
from asr_pipeline.defs.ingest.partitions import INGEST_BATCHES
from asr_pipeline.defs.common.versions import stale_batch_reasons

pytestmark = pytest.mark.mysql
INGEST = ("raw_manifest", "resampled_dataset", "featurized_shards")
FIRST, SECOND = "ids-0000000001-0000000021", "ids-0000000022-0000000041"


def _ui_status(defs, instance) -> dict[tuple[str, str], tuple[StaleStatus, list[str]]]:
    """What the UI shows: the stale status resolver the webserver uses, over the current definitions."""
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return {(asset, key): (resolver.get_status(dg.AssetKey(asset), key),
                           [c.reason for c in resolver.get_stale_causes(dg.AssetKey(asset), key)])
            for asset in INGEST for key in (FIRST, SECOND)}


def _ingest_runs(instance, key) -> int:
    return len(instance.get_runs(filters=dg.RunsFilter(job_name="asr_ingest", tags={"dagster/partition": key})))


def test_a_changed_split_ratio_makes_batches_stale_backfill_stale_fixes_only_those_and_training_refuses_a_mix(
        pipeline_env, monkeypatch, capsys):
    monkeypatch.setenv("ASR_BATCH_ROWS", "21")
    cli.ingest.ingest()
    instance = cli._instance()
    assert sorted(instance.get_dynamic_partitions(INGEST_BATCHES.name)) == [FIRST, SECOND]
    defs = cli._definitions()
    assert all(status == StaleStatus.FRESH for status, _ in _ui_status(defs, instance).values())
    assert stale_batch_reasons(instance, defs.resources["settings"], [FIRST, SECOND]) == {}
    manifest = instance.get_latest_materialization_event(dg.AssetKey("raw_manifest")).asset_materialization
    assert manifest.metadata["fallback_group_share"].value == 0.0

    monkeypatch.setenv("ASR_SPLIT_RATIOS", "70/15/15")
    defs = cli._definitions()
    status = _ui_status(defs, instance)
    assert all(s == StaleStatus.STALE and "has a new code version" in causes for s, causes in status.values()), status
    reasons = stale_batch_reasons(instance, defs.resources["settings"], [FIRST, SECOND])
    assert sorted(reasons) == [FIRST, SECOND]
    assert "ASR_SPLIT_RATIOS 0.600000/0.200000/0.200000 -> 0.700000/0.150000/0.150000" in reasons[FIRST]

    cli._run("asr_ingest", partition_key=SECOND, defs=defs)  # one batch re-processed: now the batches are a mix
    assert sorted(stale_batch_reasons(instance, defs.resources["settings"], [FIRST, SECOND])) == [FIRST]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli._run("asr_train", training={"max_steps": 1}, defs=defs)
    refused = capsys.readouterr().err
    assert "made with different settings" in refused and f"1 batch ({FIRST})" in refused and SECOND not in refused
    assert "asr-pipeline backfill --stale" in refused and "ASR_SPLIT_RATIOS" in refused

    runs_before = {key: _ingest_runs(instance, key) for key in (FIRST, SECOND)}
    cli.main(["backfill", "--stale"])
    out = capsys.readouterr().out
    assert f"backfill: {FIRST} is stale" in out and SECOND not in out.replace(FIRST, "")
    assert _ingest_runs(instance, FIRST) == runs_before[FIRST] + 1
    assert _ingest_runs(instance, SECOND) == runs_before[SECOND]
    assert stale_batch_reasons(instance, defs.resources["settings"], [FIRST, SECOND]) == {}
    assert all(s == StaleStatus.FRESH for s, _ in _ui_status(defs, instance).values())
    cli.main(["backfill", "--stale"])
    assert "no stale batch" in capsys.readouterr().out


def test_a_group_pattern_that_matches_nothing_warns_and_a_new_processor_makes_features_stale(pipeline_env, monkeypatch,
                                                                                             tiny_model_dir, tmp_path):
    cli.ingest.ingest()
    instance = cli._instance()
    (key,) = instance.get_dynamic_partitions(INGEST_BATCHES.name)
    # another tokenizer in the same model directory: the features' labels would change
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    monkeypatch.setenv("ASR_BASE_MODEL", str(model))
    defs = cli._definitions()
    assert stale_batch_reasons(instance, defs.resources["settings"], [key]) != {}  # another path already
    cli._run("asr_ingest", partition_key=key, defs=defs)
    assert stale_batch_reasons(instance, defs.resources["settings"], [key]) == {}
    config = model / "tokenizer_config.json"
    config.write_text(config.read_text().replace("}", ', "asr_test_marker": 1}', 1))
    defs = cli._definitions()
    reason = stale_batch_reasons(instance, defs.resources["settings"], [key])[key]
    assert "processor" in reason and "ASR_BASE_MODEL" not in reason

    monkeypatch.setenv("ASR_GROUP_PATTERN", r"^(?P<group>NOMATCH_\d+)$")
    defs = cli._definitions()
    result = defs.resolve_job_def("asr_ingest").execute_in_process(
        partition_key=key, instance=instance, op_selection=["raw_manifest"])
    manifest = result.asset_materializations_for_node("raw_manifest")[0]
    assert manifest.metadata["fallback_group_share"].value == 1.0
    assert any("100% of the rows' file names do not match ASR_GROUP_PATTERN" in (entry.user_message or "")
               for entry in instance.all_logs(result.run_id))
