"""Audio that is there but does not carry the transcript's speech: a silent or all-but-silent clip (a muted track in the
archive), or a stereo file whose channels cancel when averaged to mono (one channel's polarity inverted: the
dialogue goes, the ambience stays). Trained with its transcript, either teaches the model to write text it does not
hear. The no_near_silent_clips and no_cancelling_downmix checks on resampled_dataset name such rows with a warning
and keep them, unless they are too many: then the batch is blocked."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import sqlalchemy as sa

import dagster as dg
from asr_pipeline import cli
from asr_pipeline.core.alerts import AlertConfig
from asr_pipeline.defs.alerts.problems import batch_failure
from asr_pipeline.defs.ingest import checks
from asr_pipeline.defs.ingest.batch_states import batch_states

pytestmark = [pytest.mark.mysql]


def _scaled_copy(source: str, target, peak_dbfs: float | None):
    """The clip as a 16-bit WAV whose loudest sample sits at peak_dbfs (None: every sample 0)."""
    samples, rate = sf.read(source, dtype="float64", always_2d=True)
    samples = samples[:, 0]
    gain = 0.0 if peak_dbfs is None else 10 ** (peak_dbfs / 20) / np.abs(samples).max()
    sf.write(str(target), samples * gain, rate, subtype="PCM_16")
    return str(target)


def _click_copy(source: str, target):
    """The clip's length of digital silence with one full-scale click in it: a muted track with an edit point."""
    info = sf.info(source)
    samples = np.zeros(info.frames, np.float32)
    samples[info.frames // 2] = 1.0
    sf.write(str(target), samples, info.samplerate, subtype="PCM_16")
    return str(target)


def _stereo_copy(source: str, target, invert: bool):
    """The clip in both channels of a float WAV, the second inverted if `invert`, with ambience (noise at a tenth of
    the speech's level) in the first channel only."""
    speech, rate = sf.read(source, dtype="float32", always_2d=True)
    speech = 0.5 * speech[:, 0] / np.abs(speech).max()
    ambience = 0.1 * np.random.default_rng(0).standard_normal(len(speech)).astype(np.float32) * speech.std()
    stereo = np.stack([speech + ambience, -speech if invert else speech], axis=1)
    sf.write(str(target), stereo, rate, subtype="FLOAT")
    return str(target)


def _check_evaluation(instance, name):
    key = dg.AssetCheckKey(dg.AssetKey("resampled_dataset"), name)
    record = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
    return record.event.dagster_event.event_specific_data


def _archived(path: str) -> str:
    return "/cul_m02/quiet/" + os.path.basename(path)


def test_silent_and_cancelling_clips_are_kept_and_named_by_warnings(pipeline_env, mysql_database, korean_clips,
                                                                    tmp_path, monkeypatch, capsys):
    source = korean_clips[0]["audio_path"]
    quiet_dir = tmp_path / "quiet"
    quiet_dir.mkdir()
    # a second share of the archive, mapped like the first (and so inside the allowed audio roots)
    monkeypatch.setenv("ASR_PATH_MAP", f"{os.environ['ASR_PATH_MAP']};/cul_m02/quiet/={quiet_dir}/")
    files = {"digital silence": _scaled_copy(source, quiet_dir / "silent.wav", None),
             "-60 dBFS": _scaled_copy(source, quiet_dir / "minus60.wav", -60.0),
             "-45 dBFS": _scaled_copy(source, quiet_dir / "minus45.wav", -45.0),  # quiet, but speech: not named
             "a click": _click_copy(source, quiet_dir / "click.wav"),  # peaks at 0 dBFS, for a moment
             "inverted stereo": _stereo_copy(source, quiet_dir / "inverted.wav", invert=True),
             "stereo": _stereo_copy(source, quiet_dir / "stereo.wav", invert=False)}
    engine = sa.create_engine(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": _archived(path), "t": "소리가 거의 없는 행"} for path in files.values()])
        ids = {name: conn.execute(sa.text("SELECT id FROM training_datas WHERE raw_data = :p"),
                                  {"p": _archived(path)}).scalar() for name, path in files.items()}
    engine.dispose()

    cli.main(["ingest"])  # a warning does not fail the run
    capsys.readouterr()

    instance = dg.DagsterInstance.get()
    evaluation = _check_evaluation(instance, checks.NEAR_SILENT)
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.WARN
    metadata = {name: value.value for name, value in evaluation.metadata.items()}
    assert metadata["clips"] == 3
    # quietest first; -45 dBFS is not named; the click peaks at full scale but has sound for one or two 20 ms windows
    assert metadata["ids"] == [ids["digital silence"], ids["-60 dBFS"], ids["a click"]]
    assert "the quietest: no sound at all (every sample the same)" in evaluation.description
    assert "(1 of them loud only for a moment: a click in silence?)" in evaluation.description
    batch = instance.get_runs(filters=dg.RunsFilter(job_name="asr_ingest"), limit=1)[0]
    assert batch.status == dg.DagsterRunStatus.SUCCESS
    key = batch.tags["dagster/partition"]
    assert f"ids {ids['digital silence']}, {ids['-60 dBFS']}, {ids['a click']};" in evaluation.description
    assert f"asr-pipeline backfill {key}" in evaluation.description and "They stay in the batch" in evaluation.description

    cancelled = _check_evaluation(instance, checks.CANCELLING_DOWNMIX)
    assert cancelled.passed is False and cancelled.severity == dg.AssetCheckSeverity.WARN
    metadata = {name: value.value for name, value in cancelled.metadata.items()}
    # the inverted pair alone: its ambience is left, about 26 dB under the channels, and it is not near-silent;
    # the exact silence is not a cancellation (mono, nothing lost by mixing)
    assert metadata["ids"] == [ids["inverted stereo"]] and metadata["clips"] == 1
    assert metadata["multichannel_clips"] >= 2
    assert f"ids {ids['inverted stereo']};" in cancelled.description

    # a warning leaves the batch done, raises no alert, and the batch's materialization keeps the counts
    [state] = batch_states(instance)
    assert state.state == "done"
    assert batch_failure(instance, AlertConfig(), state) is None
    materialization = instance.get_latest_materialization_event(dg.AssetKey("resampled_dataset")).asset_materialization
    assert materialization.metadata["near_silent_clips"].value == 3
    assert materialization.metadata["cancelling_downmix_clips"].value == 1

    # `status` counts them over every batch
    cli.main(["status", "--json"])
    resampled = json.loads(capsys.readouterr().out)["assets"]["resampled_dataset"]
    assert (resampled["near_silent"], resampled["cancelled_by_downmix"]) == (3, 1)
    assert resampled["downmix_uncounted_batches"] == 0
    cli.main(["status"])
    out = capsys.readouterr().out
    assert "3 near-silent, 1 cancelled by the down-mix" in out and "not counted" not in out
    # a batch made before the counts were kept
    meta_file = next((pipeline_env / "storage" / "resampled_dataset").glob("*/meta.json"))
    meta = json.loads(meta_file.read_text())
    meta_file.write_text(json.dumps({k: v for k, v in meta.items() if not k.endswith("_clips")}))
    cli.main(["status", "--json"])
    resampled = json.loads(capsys.readouterr().out)["assets"]["resampled_dataset"]
    # (from its index instead, as the check judged it; its channels were never measured, which status says rather
    # than reporting none cancelled)
    assert (resampled["near_silent"], resampled["cancelled_by_downmix"]) == (3, 0)
    assert resampled["downmix_uncounted_batches"] == 1
    cli.main(["status"])
    assert "down-mix not counted in 1 batch (made before the counts were kept)" in capsys.readouterr().out

    # the rows stay: all six are featurized with the 40 clips (the row without a file is quarantined)
    features = next((pipeline_env / "storage" / "featurized_shards").glob("*/index.parquet"))
    kept = set(pd.read_parquet(features, columns=["id"])["id"])
    assert len(kept) == 46 and set(ids.values()) <= kept
    audio_index = pd.read_parquet(next((pipeline_env / "storage" / "resampled_dataset").glob("*/index.parquet")))
    retention = dict(zip(audio_index["id"], audio_index["mix_retention"]))
    # the inverted pair keeps only the ambience of one channel; in phase, all and then some (alike: up to 2); mono 1
    assert retention[ids["inverted stereo"]] < 0.05 and retention[ids["stereo"]] > 1.95
    assert retention[ids["-60 dBFS"]] == 1.0
    assert f"keeping as little as {retention[ids['inverted stereo']]:.0%} of their energy" in cancelled.description


def test_a_warned_batch_that_fails_later_reports_its_own_failure(pipeline_env, mysql_database, korean_clips,
                                                                 tmp_path, monkeypatch):
    # the warning must not pass for the reason a run failed, nor for a block
    from asr_pipeline.core import features

    _add_muted_clips(mysql_database, korean_clips, tmp_path, monkeypatch, 1)

    def out_of_disk(*args, **kwargs):
        raise OSError("No space left on device (while featurizing)")

    monkeypatch.setattr(features, "featurize_shard", out_of_disk)
    with pytest.raises(SystemExit, match="ingest failed for batches"):
        cli.main(["ingest"])
    instance = dg.DagsterInstance.get()
    assert _check_evaluation(instance, checks.NEAR_SILENT).severity == dg.AssetCheckSeverity.WARN
    [state] = batch_states(instance)
    assert state.state == "failed" and "No space left on device" in state.reason
    problem = batch_failure(instance, AlertConfig(), state)
    assert problem.kind == "run_failed" and "No space left on device" in problem.text


def _add_muted_clips(mysql_database, korean_clips, tmp_path, monkeypatch, count: int) -> list[int]:
    """`count` rows whose audio is digital silence, on a second share mapped like the first."""
    quiet_dir = tmp_path / "muted"
    quiet_dir.mkdir()
    monkeypatch.setenv("ASR_PATH_MAP", f"{os.environ['ASR_PATH_MAP']};/cul_m02/quiet/={quiet_dir}/")
    paths = [_scaled_copy(korean_clips[i % len(korean_clips)]["audio_path"], quiet_dir / f"muted{i}.wav", None)
             for i in range(count)]
    engine = sa.create_engine(mysql_database)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO training_datas (raw_data, transcript) VALUES (:p, :t)"),
                     [{"p": _archived(path), "t": "소리가 없는 행"} for path in paths])
        ids = [conn.execute(sa.text("SELECT id FROM training_datas WHERE raw_data = :p"), {"p": _archived(p)}).scalar()
               for p in paths]
    engine.dispose()
    return ids


def test_too_many_silent_clips_block_the_batch(pipeline_env, mysql_database, korean_clips, tmp_path, monkeypatch):
    # a muted source or a decoder giving zeros: 12 of the 52 kept clips (23%), more than the limit and 10 or more
    _add_muted_clips(mysql_database, korean_clips, tmp_path, monkeypatch, 12)
    monkeypatch.setenv("ASR_MAX_SUSPECT_AUDIO_RATE", "0.1")

    with pytest.raises(SystemExit, match="ingest failed for batches"):
        cli.main(["ingest"])

    instance = dg.DagsterInstance.get()
    evaluation = _check_evaluation(instance, checks.NEAR_SILENT)
    assert evaluation.passed is False and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert "12 of 52 kept clips (23.1%)" in evaluation.description
    assert "The batch is blocked: more than ASR_MAX_SUSPECT_AUDIO_RATE (10%)" in evaluation.description
    [state] = batch_states(instance)
    assert state.state == "blocked" and checks.NEAR_SILENT in state.reason
    problem = batch_failure(instance, AlertConfig(), state)
    assert problem.kind == "check_failed" and "the check names the clips" in problem.text
    assert "asr-pipeline quarantine" not in problem.text  # nothing is quarantined: the advice is the audio's
    assert not (pipeline_env / "storage" / "featurized_shards").exists()
