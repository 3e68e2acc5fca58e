"""The ingest's own log-mel and label ids (core/whisper_inputs.py) against transformers' WhisperFeatureExtractor and
WhisperTokenizer, which they replace in featurized_shards: the same features and the same ids."""

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from asr_pipeline.core.audio import load_16k, resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.features import (FRAMES_30S, FeatureShard, featurize_shard, frames_holding_audio, label_ids,
                                        log_mel_frames, padding_value, rebuild_padded)
from asr_pipeline.core.model import BaseModel, load_featurizer, load_processor, resolve_base_model
from asr_pipeline.core.whisper_inputs import LabelTokenizer, LogMelExtractor, mel_filter_bank

# Korean as the archive's captions have it: numbers, units, punctuation, Latin letters, spacing, one special token
TRANSCRIPTS = [
    "저는 서울중앙지검 지능범죄수사팀 최인호 검사입니다.",
    "2024년 3월 15일 오후 3시 30분, 1,234명이 참석했습니다!",
    "기온은 영하 5.5도(℃)까지 떨어지겠고… 내일은 \"맑음\"입니다?",
    "KBS 뉴스 9시, AI·IoT 기술을 소개합니다 - 100% 확인",
    "  앞뒤 공백과   여러 칸  ",
    "ㅋㅋㅋ ㄱㄴㄷ 힣",
    "",
    "<|en|> 특수 토큰처럼 보이는 글",
]
# One mel bin differs by at most a few 1e-5 from transformers' float32 torch.stft (rounding order); a stored
# feature is float16, whose step near 1.0 is 1e-3.
LOG_MEL_TOLERANCE = 2e-4
LENGTHS = [1, 100, 1600, 1601, 8000, 16_000, 33_333, 80_000, 321_123, 479_999, 480_000, 35 * 16_000]


def _clip(n: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n)
    return (0.3 * np.sin(t / (20 + n % 17)) * rng.uniform(0.1, 1.0) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_are_transformers_filters(n_mels):
    assert np.array_equal(mel_filter_bank(n_mels), WhisperFeatureExtractor(feature_size=n_mels).mel_filters)


@pytest.mark.parametrize("n_mels", [80, 128])
def test_log_mel_matches_the_feature_extractor_at_every_length(n_mels):
    theirs, ours = WhisperFeatureExtractor(feature_size=n_mels), LogMelExtractor(feature_size=n_mels)
    rng = np.random.default_rng(1)
    for n in LENGTHS:
        clip = _clip(n, rng)
        expected = log_mel_frames(theirs, clip)
        got = log_mel_frames(ours, clip)
        assert got.shape == expected.shape == (n_mels, frames_holding_audio(n)) and got.dtype == np.float32
        assert np.abs(got - expected).max() < LOG_MEL_TOLERANCE, n
        # and the padded 30 s input the model sees, rebuilt from what is stored
        full = theirs(clip, sampling_rate=16_000, return_tensors="np").input_features[0]
        rebuilt = rebuild_padded(np.ascontiguousarray(got.T, dtype=np.float16), padding_value(got))
        assert rebuilt.shape == (n_mels, FRAMES_30S)
        assert np.abs(rebuilt - full).max() < 2e-3, n


def test_log_mel_of_silence_and_of_real_speech(korean_clips):
    theirs, ours = WhisperFeatureExtractor(feature_size=80), LogMelExtractor(feature_size=80)
    silence = np.zeros(16_000, np.float32)
    assert np.array_equal(log_mel_frames(ours, silence), log_mel_frames(theirs, silence))
    for clip in korean_clips[:10]:  # espeak speech, resampled from 22.05/44.1 kHz as ingest does
        samples = load_16k(clip["audio_path"])
        assert np.abs(log_mel_frames(ours, samples) - log_mel_frames(theirs, samples)).max() < LOG_MEL_TOLERANCE


def _label_ids_agree(model_dir: Path) -> None:
    theirs = load_processor(str(model_dir)).tokenizer  # WhisperProcessor(language="korean", task="transcribe")
    ours = LabelTokenizer(model_dir / "tokenizer.json", "ko")
    for text in TRANSCRIPTS:
        assert ours.label_ids(text) == theirs(text).input_ids, text
    assert ours.label_ids(TRANSCRIPTS[0])[:4] == theirs.prefix_tokens
    assert ours.eos_token_id == theirs.eos_token_id


def test_label_ids_match_whisper_tokenizer_on_the_tiny_model(tiny_model_dir):
    _label_ids_agree(tiny_model_dir)


@pytest.mark.whisper_base
def test_label_ids_match_whisper_tokenizer_on_whisper_base(whisper_base_dir):
    _label_ids_agree(whisper_base_dir)
    ours = LabelTokenizer(whisper_base_dir / "tokenizer.json", "ko")
    assert ours.label_ids("")[:4] == [50258, 50264, 50359, 50363]  # sot, <|ko|>, transcribe, notimestamps


def test_load_featurizer_needs_neither_transformers_nor_torch_for_a_whisper_directory(tiny_model_dir):
    extractor, tokenizer = load_featurizer(str(tiny_model_dir))
    assert isinstance(extractor, LogMelExtractor) and extractor.feature_size == 80
    assert isinstance(tokenizer, LabelTokenizer)


def _copy(model_dir: Path, target: Path) -> Path:
    shutil.copytree(model_dir.resolve(), target)
    return target


def test_a_model_with_a_slow_tokenizer_only_is_featurized_by_transformers(tiny_model_dir, tmp_path, caplog):
    # an older checkpoint: vocab.json + merges.txt + added_tokens.json, no tokenizer.json
    model = _copy(tiny_model_dir, tmp_path / "slow")
    saved = json.loads((model / "tokenizer.json").read_text())
    (model / "vocab.json").write_text(json.dumps(saved["model"]["vocab"], ensure_ascii=False))
    merges = [m if isinstance(m, str) else " ".join(m) for m in saved["model"]["merges"]]
    (model / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    (model / "added_tokens.json").write_text(json.dumps({a["content"]: a["id"] for a in saved["added_tokens"]}))
    (model / "tokenizer.json").unlink()
    with caplog.at_level(logging.WARNING):
        extractor, tokenizer = load_featurizer(str(model))
    assert "no tokenizer.json" in caplog.text
    assert isinstance(extractor, WhisperFeatureExtractor)
    lean = LabelTokenizer(tiny_model_dir / "tokenizer.json", "ko")
    assert [label_ids(tokenizer, t) for t in TRANSCRIPTS] == [lean.label_ids(t) for t in TRANSCRIPTS]


def test_a_model_without_any_tokenizer_is_a_clear_error(tiny_model_dir, tmp_path):
    model = _copy(tiny_model_dir, tmp_path / "no_tokenizer")
    (model / "tokenizer.json").unlink()
    with pytest.raises(ConfigError, match="no tokenizer: neither tokenizer.json nor vocab.json"):
        load_featurizer(str(model))


def test_other_audio_settings_go_through_transformers(tiny_model_dir, tmp_path, caplog):
    model = _copy(tiny_model_dir, tmp_path / "dither")
    config = json.loads((model / "processor_config.json").read_text())
    config["feature_extractor"]["dither"] = 1e-5
    (model / "processor_config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        extractor, tokenizer = load_featurizer(str(model))
    assert "differ from Whisper's" in caplog.text
    assert isinstance(extractor, WhisperFeatureExtractor) and extractor.dither == 1e-5


def test_the_models_mel_bins_win_over_the_saved_extractors(tiny_model_dir, tmp_path):
    # as load_processor: an extractor saved from another Whisper (128 bins) is replaced by the model's 80
    model = _copy(tiny_model_dir, tmp_path / "mismatch")
    config = json.loads((model / "processor_config.json").read_text())
    config["feature_extractor"]["feature_size"] = 128
    (model / "processor_config.json").write_text(json.dumps(config))
    extractor, _ = load_featurizer(str(model))
    assert extractor.feature_size == load_processor(str(model)).feature_extractor.feature_size == 80


def test_hub_checkpoints_preprocessor_config_is_read(tiny_model_dir, tmp_path):
    # hub checkpoints keep the extractor in preprocessor_config.json, and have no processor_config.json
    model = _copy(tiny_model_dir, tmp_path / "hub_layout")
    config = json.loads((model / "processor_config.json").read_text())
    (model / "processor_config.json").unlink()
    (model / "preprocessor_config.json").write_text(json.dumps(config["feature_extractor"]))
    assert isinstance(load_featurizer(str(model))[0], LogMelExtractor)
    (model / "preprocessor_config.json").write_text(json.dumps({**config["feature_extractor"], "dither": 0.5}))
    extractor, _ = load_featurizer(str(model))
    assert isinstance(extractor, WhisperFeatureExtractor) and extractor.dither == 0.5  # it was read, and it wins


def test_a_hub_id_in_the_local_cache_is_featurized_from_the_cache(tiny_model_dir, tmp_path, monkeypatch):
    # ASR_BASE_MODEL=<hub id> on a machine without the hub, the model downloaded earlier: the cache is used, by
    # huggingface_hub alone (no transformers import to find out)
    from huggingface_hub import constants

    repo, commit = "asr-test/tiny-whisper-ko", "0123456789abcdef0123456789abcdef01234567"
    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # what resolve_base_model reads: no hub, even on a machine with one
    with pytest.raises(ConfigError, match="neither a local directory nor reachable"):  # HF_HUB_OFFLINE=1
        resolve_base_model(repo, allow_placeholder=False, home=tmp_path)
    shutil.copytree(tiny_model_dir.resolve(), cache / "models--asr-test--tiny-whisper-ko" / "snapshots" / commit)
    (cache / "models--asr-test--tiny-whisper-ko" / "refs").mkdir()
    (cache / "models--asr-test--tiny-whisper-ko" / "refs" / "main").write_text(commit)
    assert resolve_base_model(repo, allow_placeholder=False, home=tmp_path) == BaseModel(repo)
    extractor, tokenizer = load_featurizer(repo)
    assert isinstance(extractor, LogMelExtractor) and isinstance(tokenizer, LabelTokenizer)
    lean = LabelTokenizer(tiny_model_dir / "tokenizer.json", "ko")
    assert [tokenizer.label_ids(t) for t in TRANSCRIPTS] == [lean.label_ids(t) for t in TRANSCRIPTS]


def test_a_shard_featurized_either_way_is_the_same(tiny_model_dir, korean_clips, tmp_path):
    import pandas as pd

    manifest = pd.DataFrame({"id": range(len(korean_clips)), "source_path": [c["audio_path"] for c in korean_clips],
                             "audio_path": [c["audio_path"] for c in korean_clips],
                             "transcript": [c["transcript"] for c in korean_clips],
                             "group": [f"g{i // 5}" for i in range(len(korean_clips))], "split": "train"})
    (tmp_path / "audio").mkdir()
    resample_manifest(manifest, tmp_path / "audio", emit=lambda _: None)
    shards = {}
    processor = load_processor(str(tiny_model_dir))
    for name, (extractor, tokenizer) in {"transformers": (processor.feature_extractor, processor.tokenizer),
                                         "lean": load_featurizer(str(tiny_model_dir))}.items():
        (tmp_path / name).mkdir()
        featurize_shard(AudioShard(tmp_path / "audio"), tmp_path / name, extractor, tokenizer, str(tiny_model_dir),
                        emit=lambda _: None, workers=3)
        shards[name] = FeatureShard(tmp_path / name)
    theirs, ours = shards["transformers"], shards["lean"]
    assert len(ours) == len(theirs) == len(korean_clips)
    columns = ["id", "transcript", "offset", "num_frames", "label_length"]
    pd.testing.assert_frame_equal(ours.index[columns], theirs.index[columns])
    assert [list(x) for x in ours.index["labels"]] == [list(x) for x in theirs.index["labels"]]
    assert ours.meta == theirs.meta
    for i in range(len(ours)):
        assert np.abs(ours.frames(i).astype(np.float32) - theirs.frames(i).astype(np.float32)).max() <= 2e-3
        assert np.abs(ours.features(i) - theirs.features(i)).max() <= 2e-3
