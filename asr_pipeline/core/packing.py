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

import math

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


# On a GPU a whisper-base step with real weights cost about the same holding 4 windows or 16 (58.6 to 71.9 ms, H200;
# docs/BENCHMARKS.md, "After the fix"): a packed step must hold about as many windows as an unpacked one to pay off
# there. (An earlier random-weights run of 25 to 27 steps on an H200 gave packing 1.31x at 4 windows; not explained.)
GPU_FILLED_STEP_WINDOWS = 16
MEASURED_RATE_SCALE = 4.0  # 16 utterances a step at 1e-5 against 64 at 4e-5: the only scaling measured


def gpu_packing_hint(windows_a_step: int, batch_size: int, learning_rate: float, packing_factor: float,
                     gradient_accumulation_steps: int = 1, train_windows: int | None = None) -> str | None:
    """What to tell a user whose packed training on a GPU takes few windows a step (the default: about 4), where
    packing gained nothing for whisper-base; None when the step already holds GPU_FILLED_STEP_WINDOWS, when packing
    hardly packs (under 1.5 clips a window) or when the train split has fewer windows than that. A batch of `filled`
    utterances fills that many windows of this data. With enough gradient accumulation, utterances move from
    accumulation into the step (a batch of at least `filled` and fewer accumulation steps, the same utterances an
    optimizer step): the rate and the step budget keep their meaning. Otherwise an optimizer step takes m times the
    utterances, so the step settings divide by m and the rate scales by m, quoted only up to the 4x measured."""
    filled_step = GPU_FILLED_STEP_WINDOWS
    if windows_a_step >= filled_step or packing_factor < 1.5 or (train_windows is not None
                                                                   and train_windows < filled_step):
        return None
    filled = math.ceil(filled_step * packing_factor)
    plural = "s" if windows_a_step != 1 else ""
    said = (f"packed training on a GPU, {windows_a_step} window{plural} a step: for whisper-base with real weights on "
            f"an H200 a step of 4 windows cost about what a step of 16 did, so packing at the default step gained "
            f"nothing there (measured for whisper-base only; a larger model gains more from it)")
    accumulation = gradient_accumulation_steps
    an_optimizer_step = batch_size * accumulation  # utterances
    fewer = an_optimizer_step // filled  # accumulation steps left if each holds at least `filled`
    if accumulation > 1 and fewer >= 1:
        batch = math.ceil(an_optimizer_step / fewer)
        return (f"{said}. A batch_size of about {batch} with gradient_accumulation_steps {fewer} (now {batch_size} "
                f"and {accumulation}) fills {filled_step} windows and keeps an optimizer step at about "
                f"{an_optimizer_step} utterances, so the learning rate and the step settings keep their meaning "
                f"(docs/BENCHMARKS.md)")
    scale = filled / an_optimizer_step
    now = f"now {batch_size}" + (f", gradient_accumulation_steps {accumulation}" if accumulation > 1 else "")
    rate = (f"scale the learning rate with it (about {learning_rate * scale:.2g})" if scale <= MEASURED_RATE_SCALE
            else f"the learning rate would scale by {scale:.2g}x, past the {MEASURED_RATE_SCALE:g}x measured: try "
                 f"that on a short run first")
    return (f"{said}. A batch_size of about {filled} ({now}) fills {filled_step} windows"
            f"{' with gradient_accumulation_steps 1' if accumulation > 1 else ''}; an optimizer step then takes "
            f"about {scale:.2g}x the utterances, so divide max_steps (unless the budget is in epochs), warmup_steps "
            f"and eval_steps (save_steps without validation) by about {scale:.2g} to see the same utterances, and "
            f"{rate}. Measured: 64 utterances a step at 4e-5, with a quarter of the steps of 16 at 1e-5, ran 2.2x to "
            f"3.1x unpacked's utterances a second over 1,600 to 12,800 utterances at the same test CER (one run "
            f"each, synthetic speech; docs/BENCHMARKS.md)")


class PackedWindows:
    """A torch-style dataset of packed windows over a FeatureRows (rows already chosen: exclusions, held-out
    validation episodes and duplicates of test audio are not in it, so they are in no window).

    Memory is a few numpy arrays, about 4 bytes a token and 12 a row: an archive's train split has millions of rows,
    and the loader's forked workers would slowly copy Python lists of token ids (685 bytes a row in
    test_windows_over_many_rows_keep_no_python_lists_per_row) page by page as their reference counts change. A window's first clip's text ids are read from its stored labels when the window
    is built; only the ids of " " + each text (which the stored labels do not hold) are kept."""

    TOKENIZE_CHUNK = 10_000  # transcripts tokenized at a time: Python lists for millions of rows never exist at once

    def __init__(self, rows, tokenizer, max_frames: int = MAX_WINDOW_FRAMES,
                 max_label_tokens: int = MAX_WINDOW_LABEL_TOKENS):
        """rows: a FeatureRows (labels stored as the tokenizer's ids: prefix + text + <|endoftext|>);
        tokenizer: the one that made them (the base model's, with the Korean/transcribe prefix)."""
        self.rows = rows
        empty = list(tokenizer("").input_ids)  # the prefix and <|endoftext|>, nothing between
        self.prefix, self.end_of_text = empty[:-1], empty[-1]
        self.first_lengths = np.array([len(self._text_ids(labels)) for labels in rows.column("labels")],
                                      dtype=np.int32)
        self.joined_ids, self.joined_offsets = self._joined_ids(tokenizer, rows.column("transcript"))
        self.set_windows(plan_windows(rows.column("group"), rows.column("id"), rows.column("num_frames"),
                                      self.first_lengths, self.joined_lengths(), max_frames, max_label_tokens))

    def _text_ids(self, labels) -> Sequence[int]:
        """The text part of stored labels (prefix and <|endoftext|> removed), checked to be the tokenizer's."""
        n = len(self.prefix)
        labels = np.asarray(labels)
        if labels[:n].tolist() != self.prefix or labels[-1:].tolist() != [self.end_of_text]:
            raise ValueError(f"stored labels {labels[:n + 2].tolist()}... do not start with the tokenizer's prefix "
                             f"{self.prefix} and end with {self.end_of_text}: featurize with the base model's tokenizer")
        return labels[n:-1]

    def _joined_ids(self, tokenizer, transcripts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The ids of " " + each transcript, flat, with each row's offsets into them."""
        # the fast tokenizer's Rust backend, when there is one: transformers' wrapper spends more time converting
        # each encoding than the backend spends tokenizing (the ids are the same; test_packing compares windows)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # a copy without the truncation or padding a tokenizer.json may set
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        parts, lengths = [], []
        for start in range(0, len(transcripts), self.TOKENIZE_CHUNK):
            chunk = [" " + str(text) for text in transcripts[start:start + self.TOKENIZE_CHUNK]]
            ids = [e.ids for e in backend.encode_batch(chunk, add_special_tokens=False)] if backend is not None \
                else tokenizer(chunk, add_special_tokens=False).input_ids
            lengths.extend(len(i) for i in ids)
            parts.append(np.fromiter((t for i in ids for t in i), dtype=np.int32))
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return (np.concatenate(parts) if parts else np.zeros(0, np.int32)), offsets

    def joined_lengths(self) -> np.ndarray:
        return np.diff(self.joined_offsets)

    def joined_text(self, k: int) -> list[int]:
        return self.joined_ids[self.joined_offsets[k]:self.joined_offsets[k + 1]].tolist()

    def set_windows(self, windows: Sequence[Sequence[int]]) -> None:
        """Keeps a plan (plan_windows' lists of row positions) as one array of positions and each window's start."""
        sizes = [len(w) for w in windows]
        self._positions = np.fromiter((k for w in windows for k in w), dtype=np.int64, count=sum(sizes))
        self._starts = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=self._starts[1:])

    def window(self, w: int) -> list[int]:
        """Window w's row positions, in order."""
        w = range(len(self))[w]  # a negative index counts from the end, as a list's does
        return self._positions[self._starts[w]:self._starts[w + 1]].tolist()

    @property
    def windows(self) -> list[list[int]]:
        """Every window's row positions (built on each call: for inspection and tests, not the training loop)."""
        return [self.window(w) for w in range(len(self))]

    def __len__(self) -> int:
        return len(self._starts) - 1

    def utterances(self) -> int:
        return len(self.rows)

    def packing_factor(self) -> float:
        """Clips a window on average."""
        return len(self.rows) / max(1, len(self))

    def label_lengths(self) -> list[int]:
        """Each window's full label length, prefix included (what group_by_length sorts on)."""
        firsts = self._starts[:-1]
        joined = np.cumsum(np.concatenate([[0], self.joined_lengths()[self._positions]]))
        rest = joined[self._starts[1:]] - joined[firsts + 1]  # the joined lengths of each window's later clips
        return (len(self.prefix) + self.first_lengths[self._positions[firsts]] + rest + 1).tolist()

    def __getitem__(self, w: int) -> dict[str, Any]:
        window = self.window(w)
        clips = [self.rows[k] for k in window]
        frames, pad_value = window_frames([c["frames"] for c in clips], [c["pad_value"] for c in clips])
        labels = window_labels(self.prefix, self._text_ids(clips[0]["labels"]).tolist(),
                               [self.joined_text(k) for k in window[1:]], self.end_of_text)
        return {"frames": frames, "pad_value": pad_value, "labels": labels}
