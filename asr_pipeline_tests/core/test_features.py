import numpy as np
import pytest
from transformers import WhisperFeatureExtractor

from asr_pipeline.core.features import frames_holding_audio, log_mel_frames, padding_value, rebuild_padded


@pytest.mark.parametrize("n_mels", [80, 128])
def test_compact_frames_rebuild_the_extractors_padded_input(n_mels):
    extractor = WhisperFeatureExtractor(feature_size=n_mels)
    rng = np.random.default_rng(0)
    lengths = [1, 100, 1600, 1601, 8000, 16_000, 33_333, 80_000, 160_000, 321_123, 479_999, 480_000]
    for n in lengths:
        t = np.arange(n)
        clip = (0.3 * np.sin(t / (20 + n % 17)) * rng.uniform(0.1, 1.0) + 0.01 * rng.standard_normal(n))
        full = extractor(clip.astype(np.float32), sampling_rate=16_000, return_tensors="np").input_features[0]
        kept = log_mel_frames(extractor, clip.astype(np.float32))  # computed from the clip alone, not 30 s
        assert kept.shape == (n_mels, frames_holding_audio(n))
        stored = np.ascontiguousarray(kept.T, dtype=np.float16)  # as written to features.f16
        rebuilt = rebuild_padded(stored, padding_value(kept))
        assert rebuilt.shape == full.shape == (n_mels, 3000)
        assert np.abs(rebuilt - full).max() < 2e-3, n


def test_silence_rebuilds_exactly():
    extractor = WhisperFeatureExtractor(feature_size=80)
    full = extractor(np.zeros(16_000, np.float32), sampling_rate=16_000, return_tensors="np").input_features[0]
    kept = full[:, : frames_holding_audio(16_000)]
    assert np.array_equal(rebuild_padded(kept.T, padding_value(kept)), full)


def test_compact_storage_is_much_smaller_than_padded_float32():
    five_seconds = frames_holding_audio(5 * 16_000) * 80 * 2  # float16 bytes
    assert 3000 * 80 * 4 / five_seconds > 10


def test_clips_longer_than_30_s_are_truncated_like_the_extractor_does():
    extractor = WhisperFeatureExtractor(feature_size=80)
    clip = (0.2 * np.sin(np.arange(35 * 16_000) / 9)).astype(np.float32)
    full = extractor(clip, sampling_rate=16_000, return_tensors="np").input_features[0]
    kept = log_mel_frames(extractor, clip)
    assert kept.shape == (80, 3000)
    assert np.abs(kept - full).max() < 1e-5
