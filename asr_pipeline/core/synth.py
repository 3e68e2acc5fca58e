"""Synthetic Korean speech from espeak-ng (bundled by the espeakng-loader wheel): demo and test fixtures.

espeak-ng speaks at 22,050 Hz, so every demo clip goes through the resampler like real archive audio does.
"""

from __future__ import annotations

import ctypes
import os
import threading
from pathlib import Path

import numpy as np

_LOCK = threading.Lock()
_ENGINE: "_Espeak | None" = None

_TIMES = ["오늘 아침", "어제 저녁", "이번 주말", "다음 달", "지난해", "올해 여름", "내일 오후", "오늘 밤",
          "지난주", "새해 첫날", "이번 겨울", "모레 새벽"]
_SUBJECTS = ["서울 지역에는", "정부는", "시민들은", "경찰은", "기상청은", "국회는", "학생들은", "선수들은",
             "의료진은", "농민들은", "관광객들은", "연구팀은", "소방당국은", "기업들은"]
_PREDICATES = ["많은 비가 내리겠습니다.", "새로운 정책을 발표했습니다.", "축제에 참가했습니다.",
               "사건을 조사하고 있습니다.", "경기에서 승리했습니다.", "안전에 주의해야 합니다.",
               "회의를 열었습니다.", "공원을 찾았습니다.", "결과를 기다리고 있습니다.", "대책을 마련했습니다.",
               "바람이 강하게 불겠습니다.", "기온이 크게 떨어지겠습니다.", "문제를 해결했습니다.",
               "계획을 세우고 있습니다.", "지원을 약속했습니다.", "협력을 강화하기로 했습니다.",
               "시험을 준비하고 있습니다.", "현장을 방문했습니다."]
SEED_SENTENCE = "저는 서울중앙지검 지능범죄수사팀 최인호 검사입니다."


_PLACES = ["서울에서", "부산에서", "대구에서", "인천에서", "광주에서", "대전에서", "울산에서", "제주에서"]


def demo_sentences(count: int) -> list[str]:
    """`count` distinct news-style Korean sentences (up to 27,216), the same every time."""
    per_block = len(_TIMES) * len(_SUBJECTS) * len(_PREDICATES)
    if count > per_block * (len(_PLACES) + 1):
        raise ValueError(f"cannot make {count} distinct demo sentences")
    sentences, seen = [SEED_SENTENCE], {SEED_SENTENCE}
    i = 0
    while len(sentences) < count:
        j, block = i % per_block, i // per_block
        # every (time, subject, predicate) triple once per block: 7 is coprime with the 18 predicates
        s = f"{_TIMES[j % len(_TIMES)]} {_SUBJECTS[(j // len(_TIMES)) % len(_SUBJECTS)]} " \
            f"{_PREDICATES[7 * (j + j // (len(_TIMES) * len(_SUBJECTS))) % len(_PREDICATES)]}"
        if block:  # later blocks say where
            s = f"{_PLACES[block - 1]} {s}"
        if s not in seen:
            sentences.append(s)
            seen.add(s)
        i += 1
    return sentences[:count]


class _Espeak:
    """A minimal ctypes binding: synchronous synthesis into a callback that collects int16 samples."""

    RATE, PITCH = 1, 3  # espeak_PARAMETER values

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        data_parent = os.path.dirname(espeakng_loader.get_data_path())
        # AUDIO_OUTPUT_RETRIEVAL = 1: samples go to our callback, nothing to a sound card.
        self.sample_rate = self.lib.espeak_Initialize(1, 0, data_parent.encode(), 0)
        if self.sample_rate <= 0:
            raise RuntimeError("espeak-ng failed to initialise")
        self._chunks: list[np.ndarray] = []
        callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
        self._callback = callback_type(self._collect)  # keep a reference: ctypes does not
        self.lib.espeak_SetSynthCallback(self._callback)
        if self.lib.espeak_SetVoiceByName(b"ko") != 0:
            raise RuntimeError("espeak-ng has no Korean voice ('ko') in its data directory")

    def _collect(self, wav, count, _events) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def speak(self, text: str, rate_wpm: int = 175, pitch: int = 50) -> np.ndarray:
        self._chunks = []
        self.lib.espeak_SetParameter(self.RATE, int(rate_wpm), 0)
        self.lib.espeak_SetParameter(self.PITCH, int(pitch), 0)
        encoded = text.encode("utf-8")
        # espeakCHARS_UTF8 = 1; size includes the terminating NUL
        status = self.lib.espeak_Synth(encoded, len(encoded) + 1, 0, 0, 0, 1, None, None)
        if status != 0:
            raise RuntimeError(f"espeak-ng synthesis failed with status {status}")
        self.lib.espeak_Synchronize()
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return (samples.astype(np.float32) / 32768.0)


def speak_korean(text: str, rate_wpm: int = 175, pitch: int = 50) -> tuple[np.ndarray, int]:
    """(float32 mono samples, sample rate = 22050) for `text` spoken by espeak-ng's Korean voice."""
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            _ENGINE = _Espeak()
        return _ENGINE.speak(text, rate_wpm, pitch), _ENGINE.sample_rate


def write_demo_corpus(audio_dir: Path, count: int, clips_per_episode: int = 5, programme: str = "DEMO",
                      emit=print) -> list[dict]:
    """Speak `count` sentences into audio_dir, named like the archive (<PROGRAMME>_<12 digits>_<segment>).

    Most clips are 22.05 kHz mono WAV; every 10th is 44.1 kHz stereo FLAC, so the decoder and the downmix are
    exercised too. Returns rows {audio_path, transcript} for the database.
    """
    import soundfile as sf
    import soxr

    from asr_pipeline.core.progress import Progress

    audio_dir = Path(audio_dir)
    audio_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    progress = Progress("speaking demo corpus", count, emit)
    for i, sentence in enumerate(demo_sentences(count)):
        episode, segment = divmod(i, clips_per_episode)
        voice = episode % 4  # a different speed and pitch per episode, as different announcers would have
        samples, rate = speak_korean(sentence, rate_wpm=150 + 15 * voice, pitch=35 + 10 * voice)
        stem = f"{programme}_2026010{1 + episode % 9}{episode:04d}_{segment + 1:05d}"
        if i % 10 == 9:
            stereo = soxr.resample(samples, rate, 44_100)
            path = audio_dir / f"{stem}.flac"
            sf.write(path, np.stack([stereo, stereo * 0.9], axis=1), 44_100)
        else:
            path = audio_dir / f"{stem}.wav"
            sf.write(path, samples, rate, subtype="PCM_16")
        rows.append({"audio_path": str(path), "transcript": sentence})
        progress.advance()
    return rows
