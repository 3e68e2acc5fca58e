"""A silent or all-but-silent clip with a transcript (a muted or wrong audio track in the archive) would teach the
model to write text where it hears nothing. The ingest keeps such rows but warns, naming them: the
no_near_silent_clips check on resampled_dataset (a warning, not a blocking check)."""

import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import sqlalchemy as sa

import dagster as dg
from asr_pipeline import cli
from asr_pipeline.defs.ingest import checks

pytestmark = [pytest.mark.mysql]


def _scaled_copy(source: str, target, peak_dbfs: float | None):
    """The clip as a 16-bit WAV whose loudest sample sits at peak_dbfs (None: every sample 0)."""
    samples, rate = sf.read(source, dtype="float64", always_2d=True)
    samples = samples[:, 0]
    gain = 0.0 if peak_dbfs is None else 10 ** (peak_dbfs / 20) / np.abs(samples).max()
    sf.write(str(target), samples * gain, rate, subtype="PCM_16")
    return str(target)


def _archived(path: str) -> str:
    return "/cul_m02/quiet/" + os.path.basename(path)


def test_near_silent_clips_are_kept_and_named_by_a_warning(pipeline_env, mysql_database, korean_clips, tmp_path,
                                                          monkeypatch):
    source = korean_clips[0]["audio_path"]
    quiet_dir = tmp_path / "quiet"
    quiet_dir.mkdir()
    # a second share of the archive, mapped like the first (and so inside the allowed audio roots)
    monkeypatch.setenv("ASR_PATH_MAP", f"{os.environ['ASR_PATH_MAP']};/cul_m02/quiet/={quiet_dir}/")
    files = {"digital silence": _scaled_copy(source, quiet_dir / "silent.wav", None),
             "-60 dBFS": _scaled_copy(source, quiet_dir / "minus60.wav", -60.0),
             "-45 dBFS": _scaled_copy(source, quiet_dir / "minus45.wav", -45.0)}  # quiet, but speech: not named
    engine = sa.create_engine(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": _archived(path), "t": "소리가 거의 없는 행"} for path in files.values()])
        ids = {name: conn.execute(sa.text("SELECT id FROM training_datas WHERE raw_data = :p"),
                                  {"p": _archived(path)}).scalar() for name, path in files.items()}
    engine.dispose()

    cli.main(["ingest"])  # a warning does not fail the run

    instance = dg.DagsterInstance.get()
    key = dg.AssetCheckKey(dg.AssetKey("resampled_dataset"), checks.NEAR_SILENT)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    evaluation = record.event.dagster_event.event_specific_data
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
    metadata = {name: value.value for name, value in evaluation.metadata.items()}
    assert metadata["near_silent_clips"] == 2
    assert metadata["ids"] == [ids["digital silence"], ids["-60 dBFS"]]  # quietest first; -45 dBFS is not named
    assert metadata["quietest_peak"] == "digital silence (every sample 0)"
    batch = instance.get_runs(filters=dg.RunsFilter(job_name="asr_ingest"), limit=1)[0]
    assert batch.status == dg.DagsterRunStatus.SUCCESS
    assert f"ids {ids['digital silence']}, {ids['-60 dBFS']}." in evaluation.description
    assert f"asr-pipeline backfill {batch.tags['dagster/partition']}" in evaluation.description

    # the rows stay: all three are featurized with the 40 clips (the row without a file is quarantined)
    features = next((pipeline_env / "storage" / "featurized_shards").glob("*/index.parquet"))
    kept = set(pd.read_parquet(features, columns=["id"])["id"])
    assert len(kept) == 43 and set(ids.values()) <= kept


def test_a_batch_of_audible_clips_passes(tmp_path, korean_clips):
    from asr_pipeline.core import audio

    manifest = pd.DataFrame({"id": range(5), "audio_path": [c["audio_path"] for c in korean_clips[:5]],
                             "transcript": [c["transcript"] for c in korean_clips[:5]]})
    audio.resample_manifest(manifest, tmp_path, emit=lambda _: None)
    result = checks.near_silent_clips(tmp_path)
    assert result.passed and result.description is None
    assert result.metadata["near_silent_clips"].value == 0 and "quietest_peak" not in result.metadata
