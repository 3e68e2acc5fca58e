import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asr_pipeline.core.audio import AudioError, AudioLimits, decode, downmix, load_16k, resample_manifest, to_16k_mono
from asr_pipeline.core.audio_shard import AudioShard


def _tone(seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    mono = (0.4 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    return np.stack([mono] * channels, axis=1) if channels > 1 else mono


@pytest.mark.parametrize("fmt,rate,channels,subtype", [
    ("wav", 22_050, 1, "PCM_16"), ("flac", 44_100, 2, None), ("ogg", 48_000, 2, "VORBIS"),
    ("mp3", 44_100, 1, "MPEG_LAYER_III"), ("wav", 8_000, 1, "FLOAT"), ("wav", 16_000, 1, "PCM_24"),
])
def test_common_formats_decode_to_16k_mono_with_their_duration(tmp_path, fmt, rate, channels, subtype):
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, _tone(1.5, rate, channels), rate, subtype=subtype)
    _, source_rate, source_channels = decode(path)
    assert (source_rate, source_channels) == (rate, channels)
    samples = load_16k(path)
    assert samples.dtype == np.float32 and samples.ndim == 1
    assert abs(len(samples) / 16_000 - 1.5) < 0.06  # mp3 adds encoder padding
    assert 0.2 < np.abs(samples).max() < 0.6


@pytest.mark.parametrize("fmt,channels,subtype", [
    ("wav", 1, "PCM_16"), ("flac", 2, "PCM_16"), ("wav", 2, "PCM_24"), ("wav", 1, "FLOAT"),
])
def test_decode_gives_libsndfile_float32_samples_bit_for_bit(tmp_path, fmt, channels, subtype):
    """16-bit files are read as int16 and scaled by us (half the cost): the same float32 values libsndfile's own
    conversion gives, full scale and negative full scale included; other subtypes go through libsndfile's."""
    rng = np.random.default_rng(0)
    pcm = rng.integers(-32768, 32768, size=(22_050, channels), dtype=np.int16)
    pcm[:2] = [[-32768] * channels, [32767] * channels]
    path = tmp_path / f"clip.{fmt}"
    sf.write(path, pcm, 22_050, subtype=subtype)
    expected, _ = sf.read(path, dtype="float32", always_2d=True)
    data, rate, got_channels = decode(path)
    assert (rate, got_channels) == (22_050, channels)
    assert data.dtype == np.float32 and np.array_equal(data, expected)


def test_a_mono_file_resamples_as_its_one_channel_and_stereo_as_the_channel_mean(tmp_path):
    left, right = _tone(1.0, 22_050), 0.5 * _tone(1.0, 22_050)
    sf.write(tmp_path / "mono.wav", left, 22_050, subtype="FLOAT")
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), 22_050, subtype="FLOAT")
    assert np.array_equal(load_16k(tmp_path / "mono.wav"), to_16k_mono(left[:, None], 22_050))
    assert np.array_equal(to_16k_mono(left[:, None], 22_050), to_16k_mono(left, 22_050))
    both = np.stack([left, right], axis=1)
    assert np.array_equal(load_16k(tmp_path / "stereo.wav"), to_16k_mono(both.mean(axis=1), 22_050))


def test_resampled_spectrum_keeps_the_tone(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(1.0, 22_050), 22_050)
    samples = load_16k(tmp_path / "a.wav")
    peak_hz = np.argmax(np.abs(np.fft.rfft(samples))) * 16_000 / len(samples)
    assert abs(peak_hz - 440) < 2


def test_unusable_files_raise_audio_errors_with_reasons(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "garbage.wav").write_bytes(b"RIFF\x00\x00not really a wave file" * 10)
    with pytest.raises(AudioError, match="missing"):
        decode(tmp_path / "nope.wav")
    with pytest.raises(AudioError, match="empty audio file"):
        decode(tmp_path / "empty.wav")
    with pytest.raises(AudioError, match="undecodable"):
        decode(tmp_path / "garbage.wav")


def test_resample_manifest_quarantines_bad_rows_and_keeps_good_ones(tmp_path):
    sf.write(tmp_path / "good.wav", _tone(1.0, 22_050), 22_050)
    sf.write(tmp_path / "stereo.flac", _tone(2.0, 44_100, 2), 44_100)
    sf.write(tmp_path / "long.wav", _tone(31.0, 8_000), 8_000)
    sf.write(tmp_path / "short.wav", _tone(0.05, 16_000), 16_000)
    (tmp_path / "corrupt.wav").write_bytes(b"\x00" * 1000)
    rows = [(1, "good.wav", "좋은 문장"), (2, "stereo.flac", "스테레오"), (3, "long.wav", "긴 문장"),
            (4, "short.wav", "짧다"), (5, "corrupt.wav", "깨진 파일"), (6, "missing.wav", "없는 파일"),
            (7, "good.wav", "")]
    manifest = pd.DataFrame([{"id": i, "source_path": p, "audio_path": str(tmp_path / p), "transcript": t,
                              "group": f"id:{i}", "split": "train"} for i, p, t in rows])
    out = tmp_path / "shard"
    out.mkdir()
    summary = resample_manifest(manifest, out, AudioLimits(0.1, 30.0), emit=lambda _: None)
    shard = AudioShard(out)
    assert summary["rows"] == 2 and summary["quarantined"] == 5
    assert shard.index["id"].tolist() == [1, 2]
    assert shard.index["duration"].round(3).tolist() == [1.0, 2.0]
    assert len(shard.samples(1)) == 32_000
    reasons = dict(zip(shard.quarantine["id"], shard.quarantine["reason"]))
    assert "longer than 30.0 s" in reasons[3] and "shorter than 0.1 s" in reasons[4]
    assert "undecodable" in reasons[5] and reasons[6] == "missing audio file" and reasons[7] == "empty transcript"


def _write_aac(path, seconds: float, rate: int = 48_000, container_format: str | None = None,
               layout: str = "stereo"):
    """AAC in an .m4a (or in the given container: "adts" for a bare .aac), which libsndfile cannot read, written
    with PyAV's bundled FFmpeg."""
    import av

    tone = _tone(seconds, rate)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = layout
        channels = 2 if layout == "stereo" else 1
        for start in range(0, len(tone), rate):
            block = np.ascontiguousarray(np.stack([tone[start:start + rate]] * channels))
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_m4a_aac_decodes_through_ffmpeg(tmp_path):
    _write_aac(tmp_path / "clip.m4a", 1.5)
    with pytest.raises(sf.LibsndfileError):  # what the fallback is for
        sf.info(str(tmp_path / "clip.m4a"))
    _, rate, channels = decode(tmp_path / "clip.m4a")
    assert (rate, channels) == (48_000, 2)
    samples = load_16k(tmp_path / "clip.m4a")
    assert abs(len(samples) / 16_000 - 1.5) < 0.1  # AAC's priming and padding
    peak_hz = np.argmax(np.abs(np.fft.rfft(samples))) * 16_000 / len(samples)
    assert abs(peak_hz - 440) < 2 and 0.2 < np.abs(samples).max() < 0.6


def test_a_file_longer_than_the_limit_is_rejected_without_reading_it_whole(tmp_path, monkeypatch):
    """A row pointing at a whole programme: libsndfile's header gives the length, so no sample is read; FFmpeg stops
    decoding just past the limit. A file of exactly the limit is kept (the exact check is on the 16 kHz clip)."""
    from asr_pipeline.core import audio

    sf.write(tmp_path / "programme.wav", _tone(600.0, 8_000), 8_000)
    sf.write(tmp_path / "exactly.wav", _tone(30.0, 44_100), 44_100)
    reads = []
    real_read = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, *a, **k: reads.append(self.name) or real_read(self, *a, **k))
    with pytest.raises(audio.TooLong, match=r"longer than 30.0 s \(600.00 s\)"):
        decode(tmp_path / "programme.wav", max_seconds=30.0)
    assert reads == []
    assert len(to_16k_mono(*decode(tmp_path / "exactly.wav", max_seconds=30.0)[:2])) == 30 * 16_000
    _write_aac(tmp_path / "programme.m4a", 45.0)
    decoded = []
    real_pyav = audio._read_with_pyav
    monkeypatch.setattr(audio, "_read_with_pyav", lambda path, limit=None: decoded.append(limit) or real_pyav(path,
                                                                                                              limit))
    with pytest.raises(audio.TooLong, match=r"longer than 30.0 s \(45.0\d s\)"):
        decode(tmp_path / "programme.m4a", max_seconds=30.0)
    assert decoded == [30.0 + audio.READ_MARGIN_SECONDS]


def test_float_samples_that_overflow_when_mixed_are_quarantined_not_stored(tmp_path):
    """Finite float32 samples of 3e38 pass the decoder's check, but their channel mean is infinite."""
    huge = np.full((16_000, 2), 3e38, dtype=np.float32)
    sf.write(tmp_path / "huge.wav", huge, 16_000, subtype="FLOAT")
    manifest = pd.DataFrame([{"id": 1, "source_path": "huge.wav", "audio_path": str(tmp_path / "huge.wav"),
                              "transcript": "네", "group": "id:1", "split": "train"}])
    out = tmp_path / "shard"
    out.mkdir()
    summary = resample_manifest(manifest, out, emit=lambda _: None)
    assert summary["rows"] == 0 and summary["quarantined"] == 1
    assert "NaN or infinite samples after mixing" in AudioShard(out).quarantine["reason"][0]


def test_ffmpeg_opens_no_other_file_than_the_rows_own(tmp_path):
    """An HLS playlist inside an allowed audio root must not make FFmpeg read a file outside it (ASR_AUDIO_ROOTS)."""
    from asr_pipeline.core.settings import AudioRoots

    root, outside = tmp_path / "archive", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    _write_aac(outside / "secret.aac", 1.0, container_format="adts")
    assert decode(outside / "secret.aac")[0].size  # a readable file
    (root / "clip.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{outside / 'secret.aac'}\n"
                                    "#EXT-X-ENDLIST\n")
    path = AudioRoots((root,), "test").resolve(str(root / "clip.m3u8"))
    assert path is not None  # the playlist itself is under the root
    with pytest.raises(AudioError, match="undecodable"):
        decode(path)


def test_an_aac_stream_whose_rate_and_layout_change_midway_decodes_at_its_first_frames(tmp_path):
    """Broadcast streams switch (44.1 kHz stereo, then 22.05 kHz mono): the second part is converted, not refused."""
    _write_aac(tmp_path / "a.aac", 1.0, 44_100, container_format="adts")
    _write_aac(tmp_path / "b.aac", 1.0, 22_050, container_format="adts", layout="mono")
    (tmp_path / "switch.aac").write_bytes((tmp_path / "a.aac").read_bytes() + (tmp_path / "b.aac").read_bytes())
    data, rate, channels = decode(tmp_path / "switch.aac")
    assert (rate, channels) == (44_100, 1)  # parts of different layouts are each averaged to mono
    assert abs(len(data) / rate - 2.0) < 0.15  # each part carries its own AAC priming and padding
    samples = load_16k(tmp_path / "switch.aac")
    first, second = samples[1600: len(samples) // 2 - 1600], samples[len(samples) // 2 + 1600: -1600]
    peak_hz = np.argmax(np.abs(np.fft.rfft(second))) * 16_000 / len(second)
    assert abs(peak_hz - 440) < 5
    # each part at the level it has alone (FFmpeg's own stereo-to-mono mixing would not keep it)
    for part, alone in ((first, load_16k(tmp_path / "a.aac")), (second, load_16k(tmp_path / "b.aac"))):
        assert abs(np.abs(part).max() / np.abs(alone).max() - 1) < 0.05


@pytest.mark.parametrize("channels", [2, 3, 5, 6, 7, 8, 12])
def test_the_downmix_is_numpys_channel_mean_bit_for_bit(channels):
    # a channel at a time below 8 channels (numpy reduces frame by frame, 20x slower for stereo): the same bits,
    # including sums that overflow float32
    rng = np.random.default_rng(channels)
    for scale in (1e-4, 0.5, 1e30, 3e38):
        with np.errstate(over="ignore", invalid="ignore"):
            data = (rng.standard_normal((20_001, channels)) * scale).astype(np.float32)
            expected = data.mean(axis=1)
        mono = downmix(data)
        assert mono.dtype == np.float32 and mono.flags.c_contiguous
        assert np.array_equal(mono, expected, equal_nan=True)
    column = rng.standard_normal((100, 1)).astype(np.float32)
    assert np.array_equal(downmix(column), column[:, 0]) and np.array_equal(downmix(column[:, 0]), column[:, 0])
