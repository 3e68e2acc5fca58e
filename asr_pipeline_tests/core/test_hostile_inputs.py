"""Inputs an archive really contains, and some an attacker could put in a shared database."""

import os

import numpy as np
import soundfile as sf

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.manifest import build_manifest
from asr_pipeline.core.settings import AudioRoots, PathMap, SplitRatios


def _tone(path, seconds=1.0, rate=22_050):
    sf.write(path, (0.3 * np.sin(np.arange(int(seconds * rate)) / 7)).astype(np.float32), rate)


def _resample(rows, roots, tmp_path):
    manifest = build_manifest(rows, PathMap.parse(f"/cul_m01/={tmp_path}/nas/"), SplitRatios.parse("80/10/10"))
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    resample_manifest(manifest, out, emit=lambda _: None, roots=roots)
    shard = AudioShard(out)
    return shard, dict(zip(shard.quarantine["id"], shard.quarantine["reason"]))


def test_paths_escaping_the_roots_are_quarantined_not_opened(tmp_path):
    nas, outside = tmp_path / "nas", tmp_path / "outside"
    nas.mkdir(), outside.mkdir()
    _tone(nas / "good.wav")
    _tone(outside / "secret.wav")
    os.symlink(outside / "secret.wav", nas / "link.wav")  # a symlink on the share pointing out of it
    os.symlink(nas / "good.wav", nas / "inner_link.wav")   # a symlink that stays inside is fine
    roots = AudioRoots.from_settings("", PathMap.parse(f"/cul_m01/={nas}/"), tmp_path / "home")
    rows = [{"id": 1, "audio_path": "/cul_m01/good.wav", "transcript": "좋다"},
            {"id": 2, "audio_path": "/cul_m01/link.wav", "transcript": "링크"},
            {"id": 3, "audio_path": "/cul_m01/../outside/secret.wav", "transcript": "상위 폴더"},
            {"id": 4, "audio_path": str(outside / "secret.wav"), "transcript": "절대 경로"},
            {"id": 5, "audio_path": "/etc/passwd", "transcript": "시스템 파일"},
            {"id": 6, "audio_path": "/cul_m01/inner_link.wav", "transcript": "내부 링크"}]
    shard, reasons = _resample(rows, roots, tmp_path)
    assert shard.index["id"].tolist() == [1, 6]
    assert set(reasons) == {2, 3, 4, 5}
    assert all("outside the allowed audio roots" in r and "ASR_AUDIO_ROOTS" in r for r in reasons.values())


def test_a_nul_byte_or_a_symbolic_link_loop_in_a_path_quarantines_that_row_not_the_batch(tmp_path):
    """Path.resolve raises ValueError on a NUL byte and RuntimeError on a link loop (Python 3.11): one such row
    must not fail the resampling of its whole batch (which would be retried for ever)."""
    nas = tmp_path / "nas"
    nas.mkdir()
    _tone(nas / "good.wav")
    os.symlink(nas / "b.wav", nas / "a.wav")
    os.symlink(nas / "a.wav", nas / "b.wav")
    rows = [{"id": 1, "audio_path": "/cul_m01/good.wav", "transcript": "좋다"},
            {"id": 2, "audio_path": "/cul_m01/bad\x00name.wav", "transcript": "널 문자"},
            {"id": 3, "audio_path": "/cul_m01/a.wav", "transcript": "고리"}]
    for roots in (AudioRoots.from_settings("", PathMap.parse(f"/cul_m01/={nas}/"), tmp_path / "home"), None):
        shard, reasons = _resample(rows, roots, tmp_path)
        assert shard.index["id"].tolist() == [1] and set(reasons) == {2, 3}
        if roots is not None:
            assert "unresolvable audio path (ValueError" in reasons[2]
            assert "unresolvable audio path (RuntimeError" in reasons[3] or "(OSError" in reasons[3]


def test_a_transcript_of_invisible_characters_only_is_empty(tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    for name in ("a.wav", "b.wav", "c.wav"):
        _tone(nas / name)
    rows = [{"id": 1, "audio_path": "/cul_m01/a.wav", "transcript": "\u200b \ufeff"},
            {"id": 2, "audio_path": "/cul_m01/b.wav", "transcript": "\u200b가"},
            {"id": 3, "audio_path": "/cul_m01/c.wav", "transcript": "\t\u200d\u3164"},
            {"id": 4, "audio_path": "/cul_m01/a.wav", "transcript": "\ue000"}]  # private use: not blank
    shard, reasons = _resample(rows, None, tmp_path)
    assert shard.index["id"].tolist() == [2, 4] and reasons == {1: "empty transcript", 3: "empty transcript"}


def test_explicit_roots_replace_the_defaults(tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    _tone(nas / "a.wav")
    roots = AudioRoots.from_settings(f"{tmp_path}/elsewhere:{nas}", PathMap(), tmp_path)
    assert roots.source == "ASR_AUDIO_ROOTS"
    assert roots.resolve(str(nas / "a.wav")) == (nas / "a.wav").resolve()
    assert AudioRoots.from_settings(f"{tmp_path}/elsewhere", PathMap(), tmp_path).resolve(str(nas / "a.wav")) is None


def test_windows_and_unc_paths_from_the_database_are_mapped(tmp_path):
    nas = tmp_path / "nas"
    (nas / "2021").mkdir(parents=True)
    _tone(nas / "2021" / "PRGTM_202106270005_00001.wav")
    _tone(nas / "2021" / "PRGTM_202106270005_00002.wav")
    path_map = PathMap.parse(f"//nas01/cul_m01/={nas}/; C:/cul_m01/={nas}/")
    roots = AudioRoots.from_settings("", path_map, tmp_path / "home")
    rows = [{"id": 1, "audio_path": r"\\nas01\cul_m01\2021\PRGTM_202106270005_00001.wav", "transcript": "유엔씨"},
            {"id": 2, "audio_path": r"C:\cul_m01\2021\PRGTM_202106270005_00002.wav", "transcript": "윈도우"}]
    manifest = build_manifest(rows, path_map, SplitRatios.parse("80/10/10"))
    assert manifest["group"].tolist() == ["PRGTM_202106270005"] * 2
    out = tmp_path / "out"
    out.mkdir()
    resample_manifest(manifest, out, emit=lambda _: None, roots=roots)
    assert AudioShard(out).index["id"].tolist() == [1, 2]


def test_nfd_and_nfc_korean_transcripts_become_the_same_text():
    nfc = "서울중앙지검"
    import unicodedata
    nfd = unicodedata.normalize("NFD", nfc)
    assert nfd != nfc
    frame = build_manifest([{"id": 1, "audio_path": "a.wav", "transcript": nfd},
                            {"id": 2, "audio_path": "b.wav", "transcript": nfc}], PathMap(), SplitRatios(1, 0, 0))
    assert frame["transcript"].tolist() == [nfc, nfc]


def test_blank_transcripts_and_odd_audio_are_told_apart(tmp_path):
    nas = tmp_path / "nas"
    nas.mkdir()
    _tone(nas / "ok.wav")
    sf.write(nas / "nan.wav", np.array([0.1, np.nan] * 8000, np.float32), 16_000, subtype="FLOAT")
    sf.write(nas / "silence.wav", np.zeros(16_000, np.float32), 16_000)
    (nas / "text.wav").write_text("this is not audio")
    (nas / "dir.wav").mkdir()
    roots = AudioRoots.from_settings("", PathMap.parse(f"/cul_m01/={nas}/"), tmp_path)
    rows = [{"id": 1, "audio_path": "/cul_m01/ok.wav", "transcript": " \t "},
            {"id": 2, "audio_path": "/cul_m01/ok.wav", "transcript": None},
            {"id": 3, "audio_path": "/cul_m01/nan.wav", "transcript": "숫자가 아님"},
            {"id": 4, "audio_path": "/cul_m01/silence.wav", "transcript": "조용"},
            {"id": 5, "audio_path": "/cul_m01/text.wav", "transcript": "텍스트"},
            {"id": 6, "audio_path": "/cul_m01/dir.wav", "transcript": "폴더"},
            {"id": 7, "audio_path": None, "transcript": "경로 없음"}]
    shard, reasons = _resample(rows, roots, tmp_path)
    assert shard.index["id"].tolist() == [4]  # silence is valid audio
    assert reasons[1] == reasons[2] == "empty transcript"
    assert "NaN" in reasons[3] and "undecodable" in reasons[5]
    assert reasons[6] == "missing audio file"
    assert reasons[7] == "no audio path"


def test_labels_longer_than_448_tokens_are_quarantined_at_featurization(tmp_path, tiny_model_dir):
    from asr_pipeline.core.features import FeatureShard, featurize_shard
    from asr_pipeline.core.model import load_processor

    nas = tmp_path / "nas"
    nas.mkdir()
    _tone(nas / "a.wav", seconds=2.0)
    roots = AudioRoots.from_settings("", PathMap.parse(f"/cul_m01/={nas}/"), tmp_path)
    rows = [{"id": 1, "audio_path": "/cul_m01/a.wav", "transcript": "짧은 문장"},
            {"id": 2, "audio_path": "/cul_m01/a.wav", "transcript": " ".join(["뷁꿻"] * 400)}]
    _, reasons = _resample(rows, roots, tmp_path)
    assert not reasons
    processor = load_processor(str(tiny_model_dir))
    features_dir = tmp_path / "features"
    features_dir.mkdir()
    summary = featurize_shard(AudioShard(tmp_path / "out"), features_dir, processor.feature_extractor,
                              processor.tokenizer, str(tiny_model_dir), emit=lambda _: None)
    shard = FeatureShard(features_dir)
    assert summary["rows"] == 1 and shard.index["id"].tolist() == [1]
    assert shard.quarantine["id"].tolist() == [2]
    assert shard.quarantine["reason"].iloc[0].startswith("label longer than 448 tokens")


def test_a_notebooks_manifest_with_odd_ids_and_paths_quarantines_rows_not_the_batch(tmp_path):
    """A DataFrame built by hand: a NaN id (the column became float), a fractional id, a pathlib path, a bytes path
    and a missing path. The good row is kept with an int id and a text path; the others are quarantined."""
    import math
    from pathlib import Path

    import numpy as np
    import pandas as pd
    import soundfile as sf

    from asr_pipeline.core.audio import resample_manifest
    from asr_pipeline.core.tables import read_rows

    wav = tmp_path / "clip.wav"
    sf.write(wav, (0.3 * np.sin(np.arange(16_000) / 5)).astype(np.float32), 16_000, subtype="PCM_16")
    manifest = pd.DataFrame({"id": [1.0, math.nan, 7.9, 8.0, 9.0, 2.0**63, 3.0],
                             "audio_path": [Path(wav), str(wav), str(wav), b"/nowhere/clip.wav", None, str(wav),
                                            str(wav)],
                             "transcript": ["네", "네", "네", "네", "네", "네", 0.0]})  # read_csv of a digit caption
    (tmp_path / "shard").mkdir()
    summary = resample_manifest(manifest, tmp_path / "shard", emit=lambda _: None)
    assert summary["rows"] == 2 and summary["quarantined"] == 5  # an id past int64 too, not the whole batch
    kept = read_rows(tmp_path / "shard" / "index.parquet", ["id", "audio_path", "transcript"])
    assert kept == [{"id": 1, "audio_path": str(wav), "transcript": "네"},
                    {"id": 3, "audio_path": str(wav), "transcript": "0"}]
    quarantined = sorted((str(r["id"]), str(r["audio_path"]), r["reason"])
                         for r in read_rows(tmp_path / "shard" / "quarantine.parquet"))
    assert [(i, p) for i, p, _ in quarantined] == [("8", "/nowhere/clip.wav"), ("9", "None"), ("None", str(wav)),
                                                  ("None", str(wav)), ("None", str(wav))]
    reasons = [reason for _, _, reason in quarantined]
    assert reasons[0].startswith("missing") and reasons[1] == "no audio path"
    assert sorted(r.split(" is not")[0] for r in reasons[2:]) == ["row id 7.9", "row id 9.223372036854776e+18",
                                                                  "row id nan"]
    assert reasons[2].endswith("is not a whole number from 0 to 2**63 - 1")
