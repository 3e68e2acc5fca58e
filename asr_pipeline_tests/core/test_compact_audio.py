"""Issue 14, point 4: resampled audio is stored as int16 (audio.arrow), and what is stored is what is read."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import soundfile as sf
import soxr
from transformers import WhisperFeatureExtractor

from asr_pipeline.core.audio import load_16k, resample_manifest
from asr_pipeline.core.audio_shard import PCM_STEP, AudioShard, content_hash, from_pcm16, to_pcm16
from asr_pipeline.core.features import FeatureShard, featurize_shard, log_mel_frames
from asr_pipeline.core.model import load_processor

# How far int16 rounding may move Whisper's normalised log-mel (values about -1.5..1.5), in any one bin of any
# frame, and on average. Measured on espeak-ng Korean, the same with reverb and pink noise, at -6 and -40 dBFS,
# 80 and 128 mel bins: at most 0.018 and 0.0004 (the float16 the features are stored in rounds by up to 0.0005).
MAX_LOG_MEL_DEVIATION = 0.03
MEAN_LOG_MEL_DEVIATION = 0.001


def _manifest(paths) -> pd.DataFrame:
    return pd.DataFrame([{"id": i + 1, "source_path": str(p), "audio_path": str(p), "transcript": "같은 문장",
                          "group": f"id:{i + 1}", "split": "train"} for i, p in enumerate(paths)])


def _shard(tmp_path, paths) -> tuple[AudioShard, dict]:
    out = tmp_path / "audio"
    out.mkdir()
    summary = resample_manifest(_manifest(paths), out, emit=lambda _: None)
    return AudioShard(out), summary


def test_what_is_stored_is_what_is_read_and_datasets_reads_the_same(tmp_path, korean_clips):
    # a 16-bit source at 16 kHz, with both extremes of int16: nothing to resample, so it is stored bit for bit
    pcm16k = (np.sin(np.arange(16_000) / 5) * 20_000).astype(np.int16)
    pcm16k[100], pcm16k[200] = -32768, 32767
    sf.write(tmp_path / "16k.wav", pcm16k, 16_000, subtype="PCM_16")
    paths = [tmp_path / "16k.wav", *(c["audio_path"] for c in korean_clips[:10])]  # 22.05 kHz WAV, 44.1 kHz FLAC
    shard, summary = _shard(tmp_path, paths)
    past_full_scale = sum(np.abs(load_16k(path)).max() > 1.0 for path in paths)  # espeak's loudest overshoot
    assert summary["rows"] == 11 and summary["clips_past_full_scale"] == past_full_scale

    assert np.array_equal(shard.pcm(0), pcm16k) and shard.index["scale"].iloc[0] == PCM_STEP
    assert np.array_equal(shard.samples(0), sf.read(tmp_path / "16k.wav", dtype="float32")[0])
    for i, path in enumerate(paths[1:], start=1):
        resampled = load_16k(path)
        pcm, scale = to_pcm16(resampled)
        assert np.array_equal(shard.pcm(i), pcm) and shard.index["scale"].iloc[i] == np.float32(scale)
        assert np.array_equal(shard.samples(i), from_pcm16(pcm, scale))
        assert np.abs(shard.samples(i) - resampled).max() <= 0.51 * scale  # rounding only, never clipping
        assert shard.index["audio_sha256"].iloc[i] == content_hash(pcm, scale)

    # two bytes a sample, plus Arrow's framing
    samples = int(shard.index["num_samples"].sum())
    assert 2 * samples < (shard.path / "audio.arrow").stat().st_size < 2 * samples + 4096

    # opened memory-mapped: the samples are views of the file, not copies
    allocated = pa.total_allocated_bytes()
    reopened = AudioShard(shard.path)
    assert pa.total_allocated_bytes() - allocated < samples * 2 // 100
    assert not reopened.pcm(3).flags.owndata

    import datasets

    dataset = datasets.Dataset.from_file(str(shard.path / "audio.arrow")).with_format("numpy")
    assert [int(dataset[i]["id"]) for i in range(len(dataset))] == shard.index["id"].tolist()
    for i in range(len(shard)):
        row = dataset[i]
        assert np.array_equal(row["samples"], shard.pcm(i)) and row["scale"] == shard.index["scale"].iloc[i]


def test_features_from_the_stored_audio_equal_features_of_the_same_quantized_samples(tmp_path, korean_clips,
                                                                                      tiny_model_dir):
    paths = [c["audio_path"] for c in korean_clips[:10]]
    shard, _ = _shard(tmp_path, paths)
    processor = load_processor(str(tiny_model_dir))
    (tmp_path / "features").mkdir()
    featurize_shard(shard, tmp_path / "features", processor.feature_extractor, processor.tokenizer,
                    str(tiny_model_dir), emit=lambda _: None)
    features = FeatureShard(tmp_path / "features")
    for i, path in enumerate(paths):
        quantized = from_pcm16(*to_pcm16(load_16k(path)))  # computed here from the file, not read from the shard
        expected = log_mel_frames(processor.feature_extractor, quantized).T.astype(np.float16)
        assert np.array_equal(np.asarray(features.frames(i)), expected)


def _realish(clean: np.ndarray, rng) -> np.ndarray:
    """A room and a noisy line: 0.25 s of exponentially decaying reverb, then pink-ish noise at about -26 dB."""
    response = rng.standard_normal(4000) * np.exp(-np.arange(4000) / 800)
    response[0] = 1.0
    wet = np.convolve(clean, response)[: len(clean)]
    noise = np.cumsum(rng.standard_normal(len(clean)))
    noise -= np.convolve(noise, np.ones(200) / 200, "same")
    return wet / np.abs(wet).max() + 0.05 * noise / np.abs(noise).max()


def _at_peak_dbfs(samples: np.ndarray, dbfs: float) -> np.ndarray:
    return (samples / np.abs(samples).max() * 10 ** (dbfs / 20)).astype(np.float32)


@pytest.mark.parametrize("mel_bins", [80, 128])
def test_int16_rounding_moves_log_mel_features_little_at_any_level(korean_clips, mel_bins):
    extractor = WhisperFeatureExtractor(feature_size=mel_bins)
    rng = np.random.default_rng(0)
    clips = {}
    for clip in korean_clips[:6]:
        clean = load_16k(clip["audio_path"])
        clips[f"{clip['audio_path']} as spoken"] = clean
        clips[f"{clip['audio_path']} at -40 dBFS"] = _at_peak_dbfs(clean, -40)
        clips[f"{clip['audio_path']} real-ish at -6 dBFS"] = _at_peak_dbfs(_realish(clean, rng), -6)
        clips[f"{clip['audio_path']} real-ish at -40 dBFS"] = _at_peak_dbfs(_realish(clean, rng), -40)
    for name, clip in clips.items():
        exact = log_mel_frames(extractor, clip)
        deviation = np.abs(log_mel_frames(extractor, from_pcm16(*to_pcm16(clip))) - exact)
        assert deviation.max() <= MAX_LOG_MEL_DEVIATION, name
        assert deviation.mean() <= MEAN_LOG_MEL_DEVIATION, name

    # why the step is per clip: at a fixed 2**-15 a quiet clip's rounding noise rises above Whisper's 80 dB floor
    quiet = clips[f"{korean_clips[0]['audio_path']} at -40 dBFS"]
    fixed_step = np.rint(quiet / PCM_STEP).astype(np.float32) * np.float32(PCM_STEP)
    assert np.abs(log_mel_frames(extractor, fixed_step) - log_mel_frames(extractor, quiet)).max() \
        > 3 * MAX_LOG_MEL_DEVIATION


def test_a_clip_past_full_scale_is_scaled_down_not_clipped(tmp_path):
    t = np.arange(44_100) / 44_100
    square = np.sign(np.sin(2 * np.pi * 200 * t))  # full scale; band-limiting to 8 kHz overshoots (Gibbs)
    sf.write(tmp_path / "square.wav", (square * 32767).astype(np.int16), 44_100, subtype="PCM_16")
    sf.write(tmp_path / "hot.wav", (3.0 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 44_100, subtype="FLOAT")
    sf.write(tmp_path / "normal.wav", (0.5 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 44_100)
    shard, summary = _shard(tmp_path, [tmp_path / "square.wav", tmp_path / "hot.wav", tmp_path / "normal.wav"])
    assert summary["clips_past_full_scale"] == 2
    assert json.loads((shard.path / "meta.json").read_text())["clips_past_full_scale"] == 2
    assert shard.index["peak"].iloc[0] > 1.0 and abs(shard.index["peak"].iloc[1] - 3.0) < 0.01
    for i, name in enumerate(["square.wav", "hot.wav", "normal.wav"]):
        resampled = load_16k(tmp_path / name)
        scale = float(shard.index["scale"].iloc[i])
        assert abs(scale * 32767 - np.abs(resampled).max()) < 1e-6 * np.abs(resampled).max()  # the peak spans int16
        assert np.abs(shard.pcm(i)).max() == 32767
        assert np.abs(shard.samples(i) - resampled).max() <= 0.51 * scale  # read back at its level, unclipped
    assert soxr.resample(square.astype(np.float32), 44_100, 16_000).max() > 1.0  # the overshoot is real


def test_a_float32_shard_written_before_the_int16_format_still_reads(tmp_path):
    clips = [np.linspace(-1, 1, 1600, dtype=np.float32), np.full(800, 0.25, np.float32)]
    (tmp_path / "audio.f32").write_bytes(b"".join(c.tobytes() for c in clips))
    pd.DataFrame({"id": [1, 2], "transcript": ["가", "나"], "offset": [0, 1600], "num_samples": [1600, 800],
                  "duration": [0.1, 0.05]}).to_parquet(tmp_path / "index.parquet", index=False)
    pd.DataFrame(columns=["id", "audio_path", "reason"]).to_parquet(tmp_path / "quarantine.parquet", index=False)
    shard = AudioShard(tmp_path)
    assert [np.array_equal(shard.samples(i), clip) for i, clip in enumerate(clips)] == [True, True]
    assert shard.stored_lengths().tolist() == [1600, 800]
    with pytest.raises(ValueError, match="float32 shard"):
        shard.pcm(0)


def test_the_shard_check_compares_the_audio_file_with_the_index(tmp_path, korean_clips):
    from asr_pipeline.defs.ingest.checks import clips_are_16k_mono

    shard, _ = _shard(tmp_path, [c["audio_path"] for c in korean_clips[:3]])
    assert clips_are_16k_mono(shard.path).passed
    shard.index.iloc[[0, 2]].to_parquet(shard.path / "index.parquet", index=False)  # a clip missing from the index
    assert not clips_are_16k_mono(shard.path).passed


def test_a_clip_on_the_int16_grid_only_at_its_start_gets_its_own_scale():
    """to_pcm16 looks at the first samples before the whole clip; a clip that leaves the int16 grid later on is
    still scaled to its peak, never rounded onto the grid."""
    on_grid = np.arange(-1024, 1024, dtype=np.float32) * np.float32(PCM_STEP)
    clip = np.concatenate([on_grid, np.float32([0.3 + PCM_STEP / 3])])
    pcm, scale = to_pcm16(clip)
    assert scale != PCM_STEP and scale == np.float32(np.abs(clip).max() / 32767)
    assert np.abs(from_pcm16(pcm, scale) - clip).max() <= scale / 2 * 1.0001
    assert to_pcm16(on_grid)[1] == PCM_STEP and np.array_equal(from_pcm16(*to_pcm16(on_grid)), on_grid)
