"""Issue 11, point 7: a row deleted from the table never reaches a checkpoint trained after the deletion was seen,
even when its batch's re-ingest is blocked; the checkpoint's metadata names the batches it could not use."""

import json
import dagster as dg
import pandas as pd
import pytest
import sqlalchemy as sa

from asr_pipeline import cli
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.training_data import FeatureRows

pytestmark = pytest.mark.mysql

TRAIN = ["train", "--max-steps", "2", "--batch-size", "4", "--eval-steps", "2", "--warmup-steps", "0", "--packing"]


def test_a_deleted_row_is_not_trained_on_while_its_batch_cannot_be_re_ingested(pipeline_env, monkeypatch,
                                                                                 mysql_database, tmp_path):
    monkeypatch.setenv("ASR_BATCH_ROWS", "20")  # 41 rows: 1-20, 21-40, and 41 (its file is missing: blocked)
    with pytest.raises(SystemExit, match=r"ingest failed for batches \['ids-0000000041-0000000041'\]"):
        cli.main(["ingest"])
    shard_dir = pipeline_env / "storage" / "featurized_shards" / "ids-0000000001-0000000020"
    index = pd.read_parquet(shard_dir / "index.parquet")
    deleted = int(index.loc[index["split"] == "train", "id"].iloc[0])

    engine = sa.create_engine(mysql_database)
    with engine.begin() as conn:  # a rights takedown
        conn.execute(sa.text("DELETE FROM training_datas WHERE id = :id"), {"id": deleted})
    engine.dispose()
    empty = tmp_path / "nas_unmounted"
    empty.mkdir()
    monkeypatch.setenv("ASR_PATH_MAP", f"/cul_m01/archive/={empty}/")  # the re-ingest finds no audio: blocked
    with pytest.raises(SystemExit, match="ids-0000000001-0000000020"):
        cli.main(["ingest"])
    assert pd.read_parquet(shard_dir / "index.parquet")["id"].tolist() == index["id"].tolist()  # old features stay

    cli.main(TRAIN)
    summary = json.loads((pipeline_env / "storage" / "finetuned_checkpoint" / "training_summary.json").read_text())
    shards = [FeatureShard(p) for p in sorted((pipeline_env / "storage" / "featurized_shards").glob("ids-*"))]
    assert summary["train_rows"] == len(FeatureRows(shards, "train")) - 1
    assert summary["deleted_rows_excluded"] == 1
    assert summary["deleted_rows_by_batch"] == {"ids-0000000001-0000000020": 1}
    assert summary["batches_not_used"].keys() == {"ids-0000000041-0000000041"}
    assert summary["batches_not_used"]["ids-0000000041-0000000041"].startswith("blocked: blocking check")
    assert summary["batches_outdated"]["ids-0000000001-0000000020"].startswith("blocked: ")

    # packed windows (--packing); the deleted row is in none of them (train_rows above)
    assert summary["packing"] is True and summary["settings"]["packing"] is True
    assert summary["packing_factor"] == round(summary["train_rows"] / summary["train_windows"], 3) > 1

    event = dg.DagsterInstance.get().get_latest_materialization_event(dg.AssetKey("finetuned_checkpoint"))
    metadata = event.asset_materialization.metadata
    assert metadata["deleted_rows_excluded"].value == 1
    assert list(metadata["batches_not_used"].value) == ["ids-0000000041-0000000041"]
    for name in ("utterances_seen", "windows_seen", "packing_factor"):
        assert metadata[name].value == summary[name]
    assert summary["windows_seen"] == 2 * summary["windows_per_step"]  # 2 steps

    cli.main(TRAIN + ["--no-packing"])  # the CLI flag reaches the Dagster config, and the config the training
    summary = json.loads((pipeline_env / "storage" / "finetuned_checkpoint" / "training_summary.json").read_text())
    assert (summary["packing"], summary["packing_factor"]) == (False, 1.0)
    assert summary["windows_seen"] == summary["utterances_seen"] == 2 * 4
    assert summary["train_rows"] == len(FeatureRows(shards, "train")) - 1

