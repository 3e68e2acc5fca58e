"""Fixed benchmark sets: evaluation data that never changes as transcripts arrive, so figures compare across nights.

ASR_BENCHMARK_SETS lists them, separated by os.pathsep (':' on Linux, ';' on Windows), each `NAME=FOLDER` or just
FOLDER (named after the folder). A folder holds manifest.csv with the columns audio_path,transcript; relative
audio paths are read against the folder. The clips go through the pipeline's own audio loading (16 kHz mono,
audio.load_16k) and the base model's feature extractor, and are decoded under the same policy as the test split.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from asr_pipeline.core.errors import ConfigError

VARIABLE = "ASR_BENCHMARK_SETS"
GATE_VARIABLE = "ASR_BENCHMARK_GATE"
GATE_MODES = ("block", "warn")
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def parse_benchmark_sets(value: str | None, variable: str = VARIABLE) -> list[tuple[str, Path]]:
    """[(name, folder)]; every folder must exist and hold manifest.csv, names must be unique."""
    entries = []
    for chunk in (value or "").split(os.pathsep):
        chunk = chunk.strip()
        if not chunk:
            continue
        name, _, folder = chunk.partition("=") if "=" in chunk else ("", "", chunk)
        folder_path = Path(folder.strip()).expanduser()
        name = name.strip() or folder_path.resolve().name
        if not NAME.match(name):
            raise ConfigError(f"{variable}: set name {name!r} must be letters, digits, '_', '-' or '.'")
        if not (folder_path / "manifest.csv").is_file():
            raise ConfigError(f"{variable}: {folder_path} has no manifest.csv (columns audio_path,transcript)")
        if name in {n for n, _ in entries}:
            raise ConfigError(f"{variable}: the name {name!r} is used twice")
        entries.append((name, folder_path.resolve()))
    return entries


def parse_gate(value: str | None, variable: str = GATE_VARIABLE) -> str:
    mode = (value or "block").strip().lower()
    if mode not in GATE_MODES:
        raise ConfigError(f"{variable} must be one of {', '.join(GATE_MODES)}, got {value!r}")
    return mode


@dataclass
class BenchmarkSet:
    """One fixed set: audio read lazily (only a model that misses the hypothesis cache needs features)."""

    name: str
    folder: Path
    audio_paths: list[Path]
    references: list[str]
    _clips: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, name: str, folder: Path) -> "BenchmarkSet":
        from asr_pipeline.core.text import clean

        paths, references = [], []
        with open(Path(folder) / "manifest.csv", newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not {"audio_path", "transcript"} <= set(reader.fieldnames or []):
                raise ConfigError(f"{VARIABLE}: {folder}/manifest.csv must have the columns audio_path,transcript "
                                  f"(found {reader.fieldnames})")
            for line, row in enumerate(reader, start=2):
                path = Path(row["audio_path"]).expanduser()
                path = path if path.is_absolute() else Path(folder) / path
                if not path.is_file():
                    raise ConfigError(f"benchmark set {name}: {path} (manifest.csv line {line}) does not exist")
                paths.append(path)
                references.append(clean(row["transcript"] or ""))
        if not paths:
            raise ConfigError(f"benchmark set {name}: {folder}/manifest.csv lists no clips")
        return cls(name, Path(folder), paths, references)

    def __len__(self) -> int:
        return len(self.audio_paths)

    def content_digests(self) -> list[str]:
        """The bytes of each audio file: a re-recorded or replaced file changes the set's fingerprint."""
        from asr_pipeline.core.hypothesis_cache import file_digest

        return [file_digest(p) for p in self.audio_paths]

    def clip(self, i: int) -> np.ndarray:
        from asr_pipeline.core.audio import load_16k

        if i not in self._clips:
            self._clips[i] = load_16k(str(self.audio_paths[i]))
        return self._clips[i]

    def durations(self) -> list[float]:
        return [min(len(self.clip(i)), 30 * 16_000) / 16_000 for i in range(len(self))]

    def features_function(self, feature_extractor):
        """i -> Whisper's padded [n_mels, 3000] input, computed as featurized_shards computes it."""
        from asr_pipeline.core.features import log_mel_frames, padding_value, rebuild_padded

        def features(i: int) -> np.ndarray:
            kept = log_mel_frames(feature_extractor, self.clip(i))
            stored = kept.T.astype(np.float16)  # the pipeline stores float16 frames: decode the same numbers
            return rebuild_padded(stored, padding_value(kept))

        return features

    def fingerprint(self, n_mels: int) -> str:
        digest = hashlib.sha256(f"{n_mels}\n".encode())
        for path, content in zip(self.audio_paths, self.content_digests()):
            digest.update(f"{path.name}\0{content}\n".encode())
        return digest.hexdigest()
