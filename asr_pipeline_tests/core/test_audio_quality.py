"""core/audio_quality.py: how much of a clip is sound (ac_peak), for how long (sound_seconds) and what its mix to mono
keeps (mix_retention)."""

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_quality import (CANCELLING_RETENTION, NEAR_SILENT_SOUND_SECONDS, ac_peak, mix_retention,
                                             near_silent, sound_seconds)
from asr_pipeline.core.synth import speak_korean


def test_mix_retention_finds_a_channel_that_cancels_in_the_mix():
    rng = np.random.default_rng(0)
    dialogue, bed_left, bed_right, bed_centre = (0.1 * rng.standard_normal(48_000).astype(np.float32)
                                                 for _ in range(4))
    silence = np.zeros_like(dialogue)
    surround_8db = bed_centre * np.float32(10 ** (8 / 20))
    cases = {
        "mono": (dialogue[:, None], 1.0),
        "silence": (np.zeros((1000, 2), np.float32), 1.0),
        "one frame": (np.ones((1, 2), np.float32), 1.0),
        "one channel silent": (np.stack([dialogue, silence], 1), 1.0),
        "5.1, dialogue in the centre alone": (np.stack([silence, silence, dialogue, silence, silence, silence], 1),
                                              1.0),
        "two unrelated channels": (np.stack([dialogue, bed_left], 1), 1.0),
        "the same in both channels": (np.stack([dialogue, dialogue], 1), 2.0),
        # faint inverted crosstalk on an almost silent channel: the mix loses nothing that matters
        "inverted crosstalk 60 dB down": (np.stack([dialogue, -0.001 * dialogue + 0.0001 * bed_left], 1), 1.0),
        # matrix-encoded Lt/Rt (dialogue in phase, surround in anti-phase) with surround 4 dB over the dialogue: kept
        "Lt/Rt, surround 4 dB over the dialogue": (
            np.stack([dialogue + 1.585 * bed_centre, dialogue - 1.585 * bed_centre], 1), 2 / (1 + 1.585 ** 2)),
        "one channel inverted": (np.stack([dialogue, -dialogue], 1), 0.0),
        "one channel inverted at 60% of the level": (np.stack([dialogue, -0.6 * dialogue], 1), 0.16 / 1.36),
        # the dialogue cancels in the mix, the beds (unrelated, 6 dB under it) stay: not silent, still found
        "inverted, a bed 6 dB under the dialogue in each": (
            np.stack([dialogue + 0.5 * bed_left, -dialogue + 0.5 * bed_right], 1), 0.2),
        "5.1, left and right inverted, the rest 6 dB under": (
            np.stack([dialogue + 0.5 * bed_left, -dialogue + 0.5 * bed_right, 0.5 * bed_centre, silence,
                      0.5 * bed_left, 0.5 * bed_right], 1), 0.2),
        "Lt/Rt, surround 8 dB over the dialogue": (
            np.stack([dialogue + surround_8db, dialogue - surround_8db], 1), 2 / (1 + 10 ** 0.8)),
        # a DC offset is not sound: the same offset on an inverted pair does not hide it, opposite offsets on
        # unrelated quiet channels do not fake it
        "inverted, the same DC offset in both": (np.stack([dialogue + 0.1, -dialogue + 0.1], 1), 0.0),
        "unrelated and quiet, opposite DC offsets": (np.stack([0.01 * bed_left + 0.05, 0.01 * bed_right - 0.05], 1),
                                                     1.0),
        # float samples whose products overflow float32 (a float WAV far past full scale, later scaled down)
        "inverted, past float32's range when squared": (np.stack([dialogue, -dialogue], 1) * np.float32(1e20), 0.0),
        "inverted, 16-bit integers": ((np.stack([dialogue, -dialogue], 1) * 30_000).astype(np.int16), 0.0),
        # 5.1 whose centre and left surround are inverted against each other (not the first two channels)
        "5.1, centre and left surround inverted": (
            np.stack([0.3 * bed_left, 0.3 * bed_right, dialogue, silence, -dialogue, 0.3 * bed_centre], 1), 0.0),
        # three channels against a fourth: no pair cancels on its own, the whole mix does
        "four channels whose mix is silent": (np.stack([dialogue, dialogue, dialogue, -3 * dialogue], 1), 0.0),
    }
    # estimated on short blocks, and the lower quartile of them: a few hundredths low on noise-like test signals
    for name, (data, expected) in cases.items():
        assert mix_retention(data) == pytest.approx(expected, abs=0.05), name
    found = {name for name, (data, _) in cases.items() if mix_retention(data) < CANCELLING_RETENTION}
    assert found == {"one channel inverted", "one channel inverted at 60% of the level", "inverted, the same DC offset "
                     "in both", "inverted, a bed 6 dB under the dialogue in each", "5.1, left and right inverted, the "
                     "rest 6 dB under", "Lt/Rt, surround 8 dB over the dialogue", "inverted, past float32's range "
                     "when squared", "inverted, 16-bit integers", "5.1, centre and left surround inverted",
                     "four channels whose mix is silent"}
    # inverted for the last third of the clip only (the rest in phase), a bed 3 dB under the dialogue: found
    tail = np.concatenate([dialogue, -dialogue[:24_000]])
    head = np.concatenate([dialogue, dialogue[:24_000]])
    beds = 0.7 * rng.standard_normal((72_000, 2)).astype(np.float32) * dialogue.std()
    assert mix_retention(np.stack([head, tail], 1) + beds) < CANCELLING_RETENTION
    # a tone in step with any fixed stride (1 kHz at 48 kHz, 16.2 s), one channel inverted: found
    tone = np.sin(2 * np.pi * 1000 * np.arange(777_600) / 48_000).astype(np.float32) * 0.3
    assert mix_retention(np.stack([tone, -tone], 1)) < 0.05
    nan = np.stack([dialogue, -dialogue], 1)
    nan[0, 0] = np.nan
    assert mix_retention(nan) == 1.0  # not measured: decode rejects such a clip


def test_the_near_silence_level_leaves_out_a_dc_offset(tmp_path):
    samples = np.full(16_000, 0.1, np.float32)  # a dead source with an offset: no sound, peak -20 dBFS
    assert ac_peak(samples) == 0.0
    samples[::100] += 0.001  # clicks at -60 dBFS over the offset
    assert ac_peak(samples) == pytest.approx(0.001 - 0.001 / 100, abs=1e-6)
    # measured before resampling: soxr rings at the edges of a 48 kHz constant (about -30 dBFS at 16 kHz)
    sf.write(tmp_path / "dead.wav", np.full(48_000, 0.1, np.float32), 48_000, subtype="FLOAT")
    # and after it: an off-air recording's 19 kHz pilot tone (-30 dBFS) alone is gone from the 16 kHz audio
    pilot = 0.0316 * np.sin(2 * np.pi * 19_000 * np.arange(48_000) / 48_000)
    sf.write(tmp_path / "pilot.wav", pilot.astype(np.float32), 48_000, subtype="FLOAT")
    manifest = pd.DataFrame({"id": [1, 2], "audio_path": [str(tmp_path / "dead.wav"), str(tmp_path / "pilot.wav")],
                             "transcript": ["대사", "대사"]})
    (tmp_path / "shard").mkdir()
    resample_manifest(manifest, tmp_path / "shard", emit=lambda _: None)
    index = pd.read_parquet(tmp_path / "shard" / "index.parquet")
    assert index["peak"].iloc[0] > 0.09 and index["ac_peak"].iloc[0] == 0.0
    assert list(near_silent(index)["id"]) == [1, 2]


def test_a_click_in_silence_is_near_silent_and_the_shortest_answer_is_not(tmp_path):
    """A muted track with a click (an edit point, a mic bump) peaks like speech; how long it has sound tells them
    apart. Real files through the ingest's decoding and resampling: the click at 48 kHz rings after resampling."""
    rate = 48_000
    click = np.zeros(3 * rate, np.float32)
    click[rate] = 0.8
    bumps = np.zeros(3 * rate, np.float32)
    for at in (0.5, 1.5):  # two bumps of 1 ms, far apart (a third would pass: each swings for two windows)
        bumps[int(at * rate): int(at * rate) + 48] = 0.5
    word, word_rate = speak_korean("네")  # the shortest answer a caption holds
    whisper = np.concatenate([np.zeros(word_rate, np.float32), word, np.zeros(word_rate, np.float32)])
    whisper *= 10 ** (-40 / 20) / np.abs(whisper).max()  # a whispered "네" in a second of silence each side
    sf.write(tmp_path / "click.wav", click, rate, subtype="FLOAT")
    sf.write(tmp_path / "bumps.wav", bumps, rate, subtype="FLOAT")
    sf.write(tmp_path / "whisper.wav", whisper, word_rate, subtype="PCM_16")
    manifest = pd.DataFrame({"id": [1, 2, 3], "audio_path": [str(tmp_path / f) for f in
                                                             ("click.wav", "bumps.wav", "whisper.wav")],
                             "transcript": ["네", "네", "네"]})
    (tmp_path / "shard").mkdir()
    summary = resample_manifest(manifest, tmp_path / "shard", emit=lambda _: None)
    index = pd.read_parquet(tmp_path / "shard" / "index.parquet")
    by_id = index.set_index("id")
    assert by_id.loc[1, "ac_peak"] > 0.1 and by_id.loc[1, "sound_seconds"] <= 0.04  # -12 dBFS, for a moment
    assert by_id.loc[2, "sound_seconds"] <= 0.08
    assert by_id.loc[3, "sound_seconds"] >= 2 * NEAR_SILENT_SOUND_SECONDS  # quiet (-40 dBFS), but speech: 0.2 s
    assert list(near_silent(index)["id"]) == [1, 2] and summary["near_silent_clips"] == 2


def test_sound_seconds_adds_up_the_windows_that_swing():
    rate = 16_000
    tone = 0.01 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate).astype(np.float32)  # -40 dBFS for 1 s
    silence = np.zeros(rate, np.float32)
    assert sound_seconds(np.concatenate([silence, tone, silence]), rate) == pytest.approx(1.0, abs=0.02)
    assert sound_seconds(tone * 10 ** (-12 / 20), rate) == 0.0  # -52 dBFS: below the level
    assert sound_seconds(np.full(rate, 0.3, np.float32), rate) == 0.0  # a DC offset does not swing
    assert sound_seconds(tone[:100], rate) == pytest.approx(100 / rate, abs=1e-3)  # a clip shorter than a window
    assert sound_seconds(np.zeros(0, np.float32), rate) == 0.0
    old_shard = pd.DataFrame({"id": [1, 2], "peak": [0.5, 0.001]})  # made before sound_seconds: peaks only
    assert list(near_silent(old_shard)["id"]) == [2]
