"""Issue 11, point 6: no leakage between train and test."""

import numpy as np
import pandas as pd
import soundfile as sf

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.features import FeatureShard, featurize_shard
from asr_pipeline.core.manifest import build_manifest, fallback_group_share, group_key
from asr_pipeline.core.model import load_processor
from asr_pipeline.core.settings import PathMap, SplitRatios
from asr_pipeline.core.training import TrainingSettings, train_whisper
from asr_pipeline.core.training_data import FeatureRows, duplicate_audio_ids


def test_the_default_group_pattern_recognises_programme_codes_in_hangul_and_other_scripts():
    assert group_key(1, "/cul_m01/뉴스데스크_202106270005_00001.wav") == "뉴스데스크_202106270005"
    assert group_key(2, r"\\nas\cul\ÉMISSION2_202106270005_00002.flac") == "ÉMISSION2_202106270005"
    assert group_key(3, "/cul_m01/PRGTM_202106270005_00003.wav") == "PRGTM_202106270005"
    # still not anything: a name without the broadcast stamp falls back to the row id
    assert group_key(4, "/cul_m01/뉴스_데스크_00001.wav") == "id:4"


def test_the_manifest_reports_the_share_of_rows_grouped_by_row_id():
    rows = [{"id": i, "audio_path": f"/a/뉴스데스크_20210627000{i % 3}_{i:05d}.wav", "transcript": "가"} for i in range(7)]
    rows += [{"id": 100 + i, "audio_path": f"/a/clip{i}.wav", "transcript": "나"} for i in range(3)]
    frame = build_manifest(rows, PathMap(), SplitRatios(0.8, 0.1, 0.1))
    assert fallback_group_share(frame) == 0.3


def _write(path, samples, fmt):
    sf.write(str(path), samples, 22_050, format=fmt, subtype="PCM_16")
    return str(path)


def test_an_exact_duplicate_recording_never_trains_when_it_is_also_in_test(tmp_path, korean_clips, tiny_model_dir):
    """The same recording stored twice (a WAV and a FLAC export, other names and episodes): one copy in test, the
    other in train. It is left out of training; the test split keeps it."""
    samples, _ = sf.read(korean_clips[0]["audio_path"], dtype="int16")
    wav = _write(tmp_path / "PRGTM_202101010001_00001.wav", samples, "WAV")
    flac = _write(tmp_path / "OTHER_202101020002_00007.flac", samples, "FLAC")
    clips = [(wav, "test"), (flac, "train")] + [(c["audio_path"], "train") for c in korean_clips[1:9]] + \
        [(c["audio_path"], "valid") for c in korean_clips[9:11]]
    manifest = pd.DataFrame([{"id": i + 1, "source_path": path, "audio_path": path, "transcript": "같은 녹음",
                              "group": f"id:{i + 1}", "split": split} for i, (path, split) in enumerate(clips)])
    (tmp_path / "audio").mkdir(), (tmp_path / "features").mkdir()
    resample_manifest(manifest, tmp_path / "audio", emit=lambda _: None)
    index = AudioShard(tmp_path / "audio").index
    assert index["audio_sha256"].iloc[0] == index["audio_sha256"].iloc[1]  # same samples, other bytes
    assert index["audio_sha256"].nunique() == len(index) - 1
    processor = load_processor(str(tiny_model_dir))
    featurize_shard(AudioShard(tmp_path / "audio"), tmp_path / "features", processor.feature_extractor,
                    processor.tokenizer, str(tiny_model_dir), emit=lambda _: None)
    shard = FeatureShard(tmp_path / "features")
    assert duplicate_audio_ids([shard]) == {2}
    assert 2 not in {int(FeatureRows([shard], "train", exclude_ids={2}).row(k)["id"]) for k in range(9 - 1)}

    lines = []
    summary = train_whisper(str(tiny_model_dir), [shard], tmp_path / "model",
                            TrainingSettings(learning_rate=1e-3, batch_size=4, warmup_steps=0, max_steps=1,
                                             eval_steps=1, logging_steps=1, max_eval_samples=2,
                                             generation_max_length=8),
                            emit=lines.append)
    assert summary["train_rows"] == 8 and summary["duplicate_audio_excluded"] == 1
    assert any("1 train/valid clips whose audio is an exact duplicate of a test clip" in line for line in lines)
    assert np.isfinite(summary["train_loss"])
