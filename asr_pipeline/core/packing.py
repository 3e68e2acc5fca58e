"""Packed training windows: several short clips of the train split in one 30 s Whisper input.

Whisper's encoder always sees 30 s (3000 mel frames). Broadcast caption clips are 2-6 s, so unpacked training spends
most of its encoder work on padding. Packing puts consecutive clips into one window instead (what distil-whisper
calls concatenating audio), of at most 15 s by default (docs/BENCHMARKS.md says why not 30):

* Order: clips sorted by (group, id), i.e. an episode's clips in the order they were broadcast, then the next
  episode's; a window is filled in that order and closed when the next clip would not fit, so a window holds one
  episode's neighbouring clips first and the next episode's first clips after them.
* Limits: at most `packing_max_seconds` of the training settings (default 15 s, at most 3000 frames = 30 s), and
  at most 444 label tokens after the 4-token Korean/transcribe prefix (the joined text and <|endoftext|>), so the
  full label, prefix included, fits Whisper's 448 target positions.
  A clip that alone exceeds a limit gets a window of its own and trains exactly as it would unpacked: with the
  default 15 s windows, every stored clip of 15 to 30 s (featurized_shards quarantines labels over the limit and
  truncates audio at 30 s, so nothing longer is stored).
* Labels: the prefix once, the clips' texts joined by a space, <|endoftext|> once: exactly the tokenizer's ids of
  "text1 text2 ...". The ids of a clip that follows another are those of " " + its text, not a space token
  followed by its own ids: Whisper's byte-level BPE merges the space into the next word ("다음" and " 다음" are
  different tokens), and the model must learn the ids it is to generate.
* Frames: the clips' stored frames concatenated, then padded to 3000 with the largest of the clips' pad values.

The frames are the stored per-clip normalised log-mels, not the log-mel of the concatenated audio: packing costs a
memory copy, not a second feature extraction. The differences, both small for clips of one broadcast:
  - each clip is clamped at its own (max - 8) before the (x + 4) / 4 scaling, not at the window's; only a clip much
    quieter than its neighbours differs (its quietest bins sit higher than in the concatenated audio);
  - each clip keeps the frames whose STFT window touches it, so about two frames (20 ms) at every boundary hold the
    clip's edge against silence rather than against the next clip's start.
Away from the boundaries and where neither clamp applies, a window's frames equal the concatenated audio's log-mel,
and its pad value equals the one the feature extractor would give the concatenated audio (the window's maximum
- 2, at least -1.5): asr_pipeline_tests/core/test_packing.py checks both.

Validation and the test report stay on single clips, as the model is used in service.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from asr_pipeline.core.features import FRAMES_30S

MAX_WINDOW_FRAMES = FRAMES_30S
MAX_WINDOW_LABEL_TOKENS = 444  # joined text + <|endoftext|>; with the 4-token prefix, Whisper's 448 positions


def window_frames_limit(seconds: float) -> int:
    """Mel frames in a window of at most `seconds` (100 frames a second: hop 160 at 16 kHz), never over 30 s."""
    return min(MAX_WINDOW_FRAMES, int(round(seconds * 100)))


def plan_windows(groups: Sequence[Any], ids: Sequence[int], num_frames: Sequence[int], first_lengths: Sequence[int],
                 joined_lengths: Sequence[int], max_frames: int = MAX_WINDOW_FRAMES,
                 max_label_tokens: int = MAX_WINDOW_LABEL_TOKENS) -> list[list[int]]:
    """Windows as lists of row positions (indices into the sequences given), in (group, id) order.

    first_lengths: text tokens of each clip when it opens a window; joined_lengths: when it follows another clip
    (" " + its text). A window's label length is its first clip's length + the others' joined lengths + 1
    (<|endoftext|>). A clip that does not fit what is left of the current window starts a new one.
    """
    order = np.lexsort((np.asarray(ids, dtype=np.int64), np.asarray([str(g) for g in groups], dtype=object)))
    windows: list[list[int]] = []
    current: list[int] = []
    frames = tokens = 0
    for position in order.tolist():
        if current and (frames + num_frames[position] > max_frames
                        or tokens + joined_lengths[position] > max_label_tokens):
            windows.append(current)
            current = []
        if not current:
            current, frames, tokens = [position], int(num_frames[position]), int(first_lengths[position]) + 1
        else:
            current.append(position)
            frames += int(num_frames[position])
            tokens += int(joined_lengths[position])
    if current:
        windows.append(current)
    return windows


def window_labels(prefix: Sequence[int], first_text: Sequence[int], joined_texts: Sequence[Sequence[int]],
                  end_of_text: int) -> list[int]:
    """prefix + the first clip's text ids + each following clip's (" " + text) ids + <|endoftext|>."""
    labels = list(prefix) + list(first_text)
    for text in joined_texts:
        labels.extend(text)
    return labels + [end_of_text]


def window_frames(clip_frames: Sequence[np.ndarray], pad_values: Sequence[float]) -> tuple[np.ndarray, float]:
    """(frames [sum of num_frames, n_mels], pad value) of a window: the clips' stored frames one after another; the
    pad value is the largest of theirs, which is max(-1.5, window max - 2), what the extractor pads the window with."""
    return np.concatenate([np.asarray(f) for f in clip_frames], axis=0), float(max(pad_values))


def windows_per_step(batch_size: int, utterances: int, windows: int) -> int:
    """Windows a device step takes so that a step still trains on about batch_size utterances: the learning rate,
    warmup and step budget keep their meaning, and a packed run sees as many utterances per optimizer step as an
    unpacked one (the same optimisation, with a fraction of the encoder work)."""
    return max(1, round(batch_size * windows / max(1, utterances)))


class PackedWindows:
    """A torch-style dataset of packed windows over a FeatureRows (rows already chosen: exclusions, held-out
    validation episodes and duplicates of test audio are not in it, so they are in no window)."""

    def __init__(self, rows, tokenizer, max_frames: int = MAX_WINDOW_FRAMES,
                 max_label_tokens: int = MAX_WINDOW_LABEL_TOKENS):
        """rows: a FeatureRows (labels stored as the tokenizer's ids: prefix + text + <|endoftext|>);
        tokenizer: the one that made them (the base model's, with the Korean/transcribe prefix)."""
        self.rows = rows
        empty = list(tokenizer("").input_ids)  # the prefix and <|endoftext|>, nothing between
        self.prefix, self.end_of_text = empty[:-1], empty[-1]
        self.first_texts = [self._text_ids([int(t) for t in labels]) for labels in rows.column("labels")]
        transcripts = [" " + str(text) for text in rows.column("transcript")]
        self.joined_texts = [list(ids) for ids in tokenizer(transcripts, add_special_tokens=False).input_ids] \
            if transcripts else []
        self.windows = plan_windows(rows.column("group"), rows.column("id"), rows.column("num_frames"),
                                    [len(t) for t in self.first_texts], [len(t) for t in self.joined_texts],
                                    max_frames, max_label_tokens)

    def _text_ids(self, labels: list[int]) -> list[int]:
        n = len(self.prefix)
        if labels[:n] != self.prefix or labels[-1:] != [self.end_of_text]:
            raise ValueError(f"stored labels {labels[:n + 2]}... do not start with the tokenizer's prefix "
                             f"{self.prefix} and end with {self.end_of_text}: featurize with the base model's tokenizer")
        return labels[n:-1]

    def __len__(self) -> int:
        return len(self.windows)

    def utterances(self) -> int:
        return len(self.rows)

    def packing_factor(self) -> float:
        """Clips a window on average."""
        return len(self.rows) / max(1, len(self.windows))

    def label_lengths(self) -> list[int]:
        """Each window's full label length, prefix included (what group_by_length sorts on)."""
        return [len(self.prefix) + len(self.first_texts[w[0]]) + sum(len(self.joined_texts[k]) for k in w[1:]) + 1
                for w in self.windows]

    def __getitem__(self, w: int) -> dict[str, Any]:
        window = self.windows[w]
        clips = [self.rows[k] for k in window]
        frames, pad_value = window_frames([c["frames"] for c in clips], [c["pad_value"] for c in clips])
        labels = window_labels(self.prefix, self.first_texts[window[0]], [self.joined_texts[k] for k in window[1:]],
                               self.end_of_text)
        return {"frames": frames, "pad_value": pad_value, "labels": labels}
