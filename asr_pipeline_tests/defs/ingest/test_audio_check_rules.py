"""defs/ingest/checks.py's audio checks on an index alone: the limits (exclusive), the ids named, a click in silence
named by how long it has sound, when suspect clips block a batch, and ASR_MAX_SUSPECT_AUDIO_RATE's validation. The
checks on real ingests are in test_audio_warnings.py."""

import dagster as dg
import pandas as pd
import pytest

from asr_pipeline.defs.ingest import checks


def _index(tmp_path, peaks, retention=None, channels=1, level="ac_peak"):
    """An audio shard's index with only what the audio checks read (level "peak": a shard made before ac_peak)."""
    rows = len(peaks)
    pd.DataFrame({"id": range(1, rows + 1), level: peaks, "channels": channels,
                  "mix_retention": retention if retention is not None else [1.0] * rows}).to_parquet(
        tmp_path / "index.parquet")
    return tmp_path


def _severity(check, tmp_path, suspect: int, rows: int, max_rate: float = 0.2):
    return check(_index(tmp_path, [0.0] * suspect + [0.5] * (rows - suspect)), max_rate=max_rate).severity


def test_the_limits_are_exclusive_and_twenty_ids_are_named(tmp_path):
    from asr_pipeline.core import audio_quality

    at_limit = 10 ** (audio_quality.NEAR_SILENT_PEAK_DBFS / 20)
    assert checks.near_silent_clips(_index(tmp_path, [at_limit, 0.5]), max_rate=0.2).passed  # -50 dBFS is not below
    at_retention_limit = _index(tmp_path, [0.5, 0.5], [audio_quality.CANCELLING_RETENTION, 1.9], 2)
    assert checks.cancelling_downmix(at_retention_limit, 0.2).passed

    peaks = [0.0001 * (i + 1) for i in range(25)] + [0.5] * 975  # 25 near-silent clips of 1,000
    result = checks.near_silent_clips(_index(tmp_path, peaks), max_rate=0.2, batch="ids-1-1000")
    assert not result.passed and result.severity == dg.AssetCheckSeverity.WARN
    assert result.metadata["ids"].value == list(range(1, 21)) and result.metadata["clips"].value == 25
    assert "ids 1, 2, 3" in result.description and ", 20 and 5 more;" in result.description
    assert "25 of 1000 kept clips (2.5%)" in result.description and "-80.0 dBFS" in result.description
    assert "They stay in the batch" in result.description and "backfill ids-1-1000" in result.description
    assert checks.near_silent_clips(_index(tmp_path, peaks), max_rate=0.02).severity == dg.AssetCheckSeverity.ERROR
    assert checks.near_silent_clips(_index(tmp_path, []), max_rate=0.2).passed  # every row quarantined
    # a shard made before ac_peak is judged by its peak
    assert not checks.near_silent_clips(_index(tmp_path, [0.0, 0.5], level="peak"), max_rate=0.2).passed


def test_a_click_in_silence_is_named_by_how_long_it_has_sound(tmp_path):
    from asr_pipeline.core import audio_quality

    limit = audio_quality.NEAR_SILENT_SOUND_SECONDS
    pd.DataFrame({"id": [1, 2, 3, 4], "peak": [0.5, 0.5, 0.5, 0.0], "ac_peak": [0.5, 0.5, 0.5, 0.0],
                  "sound_seconds": [0.02, limit, 3.1, 0.0]}).to_parquet(tmp_path / "index.parquet")
    result = checks.near_silent_clips(tmp_path, max_rate=0.6)
    assert result.metadata["ids"].value == [4, 1]  # quietest first; exactly the limit is not under it
    assert result.metadata["sound_limit_seconds"].value == limit
    assert "or one reached for under 0.1 s in all (1 of them loud only for a moment" in result.description
    pd.DataFrame({"id": [1], "peak": [0.5], "ac_peak": [0.5], "sound_seconds": [0.04]}).to_parquet(
        tmp_path / "index.parquet")
    assert "the quietest: -6.0 dBFS for 0.04 s" in checks.near_silent_clips(tmp_path, max_rate=0.2).description
    # a clip cut to one short word needs sound for half its length, not 0.1 s
    pd.DataFrame({"id": [1, 2, 3], "peak": [0.5] * 3, "ac_peak": [0.5] * 3, "duration": [0.12, 0.12, 3.0],
                  "sound_seconds": [0.07, 0.05, 0.07]}).to_parquet(tmp_path / "index.parquet")
    assert checks.near_silent_clips(tmp_path, max_rate=0.9).metadata["ids"].value == [2, 3]


def test_a_batch_is_blocked_by_ten_suspect_clips_or_most_of_a_small_one(tmp_path):
    warn, error = dg.AssetCheckSeverity.WARN, dg.AssetCheckSeverity.ERROR
    near_silent = checks.near_silent_clips
    assert _severity(near_silent, tmp_path, checks.BLOCK_MIN_CLIPS, 30) == error  # 33%, exactly the minimum
    assert _severity(near_silent, tmp_path, checks.BLOCK_MIN_CLIPS - 1, 30) == warn  # 30%: above the rate, too few
    assert _severity(near_silent, tmp_path, 3, 5) == error  # most of a small batch (60%)
    assert _severity(near_silent, tmp_path, 2, 3) == warn  # 67%, but two clips
    assert _severity(near_silent, tmp_path, 3, 6) == warn  # half is not most
    assert _severity(near_silent, tmp_path, 10, 50, max_rate=0.2) == warn  # 20%: at the rate, not above it
    cancelling = _index(tmp_path, [0.5] * 40, [0.05] * 12 + [1.0] * 28, 2)  # 30% of 40
    assert checks.cancelling_downmix(cancelling, 0.2).severity == error
    assert checks.cancelling_downmix(cancelling, 0.3).severity == warn
    # a shard made before mix_retention: nothing to name
    pd.DataFrame({"id": [1], "peak": [0.5], "channels": [2]}).to_parquet(tmp_path / "index.parquet")
    assert checks.cancelling_downmix(tmp_path, 0.2).passed


def test_the_suspect_audio_rate_is_validated(monkeypatch):
    from asr_pipeline.core.errors import ConfigError
    from asr_pipeline.defs.common.resources import settings_from_environment

    monkeypatch.setenv("ASR_MAX_SUSPECT_AUDIO_RATE", "0.05")
    assert settings_from_environment().max_suspect_audio_rate == 0.05
    monkeypatch.setenv("ASR_MAX_SUSPECT_AUDIO_RATE", "1.5")
    with pytest.raises(ConfigError, match="ASR_MAX_SUSPECT_AUDIO_RATE"):
        settings_from_environment()


def test_a_batch_of_audible_clips_passes(tmp_path, korean_clips):
    from asr_pipeline.core import audio

    manifest = pd.DataFrame({"id": range(5), "audio_path": [c["audio_path"] for c in korean_clips[:5]],
                             "transcript": [c["transcript"] for c in korean_clips[:5]]})
    audio.resample_manifest(manifest, tmp_path, emit=lambda _: None)
    for result in (checks.near_silent_clips(tmp_path, 0.2), checks.cancelling_downmix(tmp_path, 0.2)):
        assert result.passed and result.description is None and result.metadata["clips"].value == 0
