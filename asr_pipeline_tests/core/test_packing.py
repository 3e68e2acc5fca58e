"""Packed training windows (issue 14, point 1): the plan, the labels and the frames. Training on them:
test_packed_training.py."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from asr_pipeline.core.audio import load_16k, resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.features import HOP_LENGTH, FeatureShard, featurize_shard, log_mel_frames, rebuild_padded
from asr_pipeline.core.model import load_processor
from asr_pipeline.core.packing import (MAX_WINDOW_LABEL_TOKENS, PackedWindows, plan_windows, window_frames,
                                       window_frames_limit, window_labels, windows_per_step)
from asr_pipeline.core.synth import demo_sentences
from asr_pipeline.core.training import TrainingSettings
from asr_pipeline.core.training_data import FeatureRows, SpeechSeq2SeqCollator


def _plan(clips, **limits):
    """clips: (group, id, frames, text tokens when first, text tokens when joined); returns windows as ids."""
    groups, ids, frames, first, joined = zip(*clips)
    return [[ids[k] for k in window] for window in plan_windows(groups, ids, frames, first, joined, **limits)]


def test_an_episodes_clips_are_packed_in_order_and_the_next_episode_fills_the_rest():
    clips = [("EP_B", 12, 1000, 5, 5), ("EP_A", 2, 1000, 5, 5), ("EP_B", 10, 1000, 5, 5), ("EP_A", 1, 1000, 5, 5),
             ("EP_B", 11, 1000, 5, 5)]
    assert _plan(clips) == [[1, 2, 10], [11, 12]]


def test_a_window_holds_at_most_30_seconds():
    assert _plan([("A", 1, 1000, 5, 5), ("A", 2, 2000, 5, 5)]) == [[1, 2]]  # exactly 3000 frames
    assert _plan([("A", 1, 1000, 5, 5), ("A", 2, 2001, 5, 5)]) == [[1], [2]]


def test_a_shorter_window_limit_holds_fewer_clips_and_never_exceeds_30_seconds():
    assert window_frames_limit(15) == 1500 and window_frames_limit(30) == 3000 and window_frames_limit(45) == 3000
    clips = [("A", k, 500, 5, 5) for k in range(1, 7)]
    assert _plan(clips) == [[1, 2, 3, 4, 5, 6]]
    assert _plan(clips, max_frames=window_frames_limit(15)) == [[1, 2, 3], [4, 5, 6]]
    assert _plan(clips, max_frames=window_frames_limit(14.99)) == [[1, 2], [3, 4], [5, 6]]


@pytest.mark.parametrize("seconds", [0.5, 30.5])
def test_a_window_limit_outside_1_to_30_seconds_is_refused(seconds):
    with pytest.raises(ValueError, match="packing_max_seconds must be between 1 and 30"):
        TrainingSettings(packing_max_seconds=seconds).validate()


def test_a_clip_longer_than_the_remaining_window_starts_a_new_one_and_order_is_kept():
    # the 500-frame clip would fit in the first window, but it follows the 1500-frame one: order wins
    assert _plan([("A", 1, 2000, 5, 5), ("A", 2, 1500, 5, 5), ("A", 3, 500, 5, 5)]) == [[1], [2, 3]]


def test_a_window_label_holds_at_most_444_tokens_with_the_end_of_text():
    assert MAX_WINDOW_LABEL_TOKENS == 444
    # 400 text tokens + 43 joined + <|endoftext|> = 444: one window; one joined token more: two
    assert _plan([("A", 1, 100, 400, 401), ("A", 2, 100, 42, 43)]) == [[1, 2]]
    assert _plan([("A", 1, 100, 400, 401), ("A", 2, 100, 43, 44)]) == [[1], [2]]


def test_a_clip_that_alone_exceeds_a_limit_trains_alone():
    clips = [("A", 1, 100, 5, 5), ("A", 2, 3500, 5, 5), ("A", 3, 100, 5, 5), ("A", 4, 100, 500, 501),
             ("A", 5, 100, 5, 5)]
    assert _plan(clips) == [[1], [2], [3], [4], [5]]


def test_a_step_takes_as_many_windows_as_hold_about_batch_size_clips():
    assert windows_per_step(16, utterances=160, windows=20) == 2
    assert windows_per_step(16, utterances=100, windows=100) == 16  # nothing packed: one clip a window
    assert windows_per_step(4, utterances=100, windows=10) == 1  # never fewer than one window


@pytest.fixture(scope="module")
def episodes_shard(tmp_path_factory, korean_clips, tiny_model_dir):
    """15 clips, three episodes of five, in the train split; ids in broadcast order."""
    root = tmp_path_factory.mktemp("packing")
    clips = korean_clips[:15]
    manifest = pd.DataFrame([{"id": i, "source_path": c["audio_path"], "audio_path": c["audio_path"],
                              "transcript": c["transcript"], "group": f"EP_{i // 5}", "split": "train"}
                             for i, c in enumerate(clips)])
    (root / "audio").mkdir(), (root / "features").mkdir()
    resample_manifest(manifest, root / "audio", emit=lambda _: None)
    processor = load_processor(str(tiny_model_dir))
    featurize_shard(AudioShard(root / "audio"), root / "features", processor.feature_extractor, processor.tokenizer,
                    str(tiny_model_dir), emit=lambda _: None)
    return FeatureShard(root / "features")


def test_a_window_is_the_clips_frames_and_the_tokenizers_ids_of_their_texts_joined_by_a_space(episodes_shard,
                                                                                               tiny_model_dir):
    tokenizer = load_processor(str(tiny_model_dir)).tokenizer
    rows = FeatureRows([episodes_shard], "train")
    windows = PackedWindows(rows, tokenizer)
    assert 1 < len(windows) < len(rows) and windows.utterances() == len(rows) == 15
    order = [k for window in windows.windows for k in window]
    assert [int(rows.row(k)["id"]) for k in order] == list(range(15))  # every clip once, in broadcast order
    for w, window in enumerate(windows.windows):
        item = windows[w]
        texts = [str(rows.row(k)["transcript"]) for k in window]
        assert item["labels"] == tokenizer(" ".join(texts)).input_ids
        assert tokenizer.decode(item["labels"], skip_special_tokens=True) == " ".join(texts)
        assert len(item["labels"]) == windows.label_lengths()[w] <= 4 + MAX_WINDOW_LABEL_TOKENS
        assert np.array_equal(item["frames"], np.concatenate([np.asarray(rows[k]["frames"]) for k in window]))
        assert item["frames"].shape[0] <= 3000
        assert item["pad_value"] == max(rows[k]["pad_value"] for k in window)
    # the collator makes a batch of windows like one of clips: 30 s inputs, the start token stripped once
    batch = SpeechSeq2SeqCollator(tokenizer.convert_tokens_to_ids("<|startoftranscript|>"))([windows[0], windows[1]])
    assert batch["input_features"].shape == (2, 80, 3000)
    assert batch["labels"][0, : len(windows[0]["labels"]) - 1].tolist() == windows[0]["labels"][1:]


def test_excluded_rows_are_in_no_window(episodes_shard, tiny_model_dir):
    rows = FeatureRows([episodes_shard], "train", exclude_ids={2, 7})
    windows = PackedWindows(rows, load_processor(str(tiny_model_dir)).tokenizer)
    packed_ids = sorted(int(rows.row(k)["id"]) for window in windows.windows for k in window)
    assert packed_ids == [i for i in range(15) if i not in (2, 7)]


def test_joined_labels_match_whisper_bases_tokenizer(whisper_base_dir):
    """The real byte-level BPE merges the space into the next word: the ids of " " + text, not a space token."""
    tokenizer = load_processor(str(whisper_base_dir)).tokenizer
    texts = demo_sentences(12)
    index = pd.DataFrame({"id": range(12), "group": "EP", "num_frames": 300, "transcript": texts,
                          "labels": [tokenizer(t).input_ids for t in texts]})
    shard = SimpleNamespace(index=index, split_positions=lambda split: list(range(12)))  # the index alone
    windows = PackedWindows(FeatureRows([shard], "train"), tokenizer)
    assert [len(w) for w in windows.windows] == [10, 2]  # 10 x 300 frames fill 30 s
    labels = _labels_of_window(windows, 0)
    assert labels == tokenizer(" ".join(texts[:10])).input_ids
    assert tokenizer.decode(labels, skip_special_tokens=True) == " ".join(texts[:10])
    space = tokenizer(" ", add_special_tokens=False).input_ids
    assert labels != tokenizer(texts[0]).input_ids[:-1] + space + tokenizer(texts[1]).input_ids[4:]


def test_windows_over_many_rows_keep_no_python_lists_per_row(tiny_model_dir):
    """A train split of millions of rows: token ids kept as Python lists cost about 1.2 KB a row, copied page by page
    into every forked loader worker. Kept as arrays they cost a few bytes a token."""
    import tracemalloc

    tokenizer = load_processor(str(tiny_model_dir)).tokenizer
    n = 20_000
    texts = (demo_sentences(200) * (n // 200))[:n]
    index = pd.DataFrame({"id": range(n), "group": [f"EP{i // 300}" for i in range(n)], "num_frames": 400,
                          "transcript": texts, "labels": [np.asarray(i) for i in tokenizer(texts).input_ids]})
    rows = FeatureRows([SimpleNamespace(index=index, split_positions=lambda split: range(n))], "train")
    columns = {name: rows.column(name) for name in ("labels", "transcript", "group", "id", "num_frames")}
    rows.column = columns.__getitem__  # read once before measuring: the index's own memory is not the windows'
    tracemalloc.start()
    try:
        windows = PackedWindows(rows, tokenizer)
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert retained / n < 200, f"{retained / n:.0f} bytes a row"
    assert windows.utterances() == n and sum(len(w) for w in windows.windows) == n
    assert windows.window(-1) == windows.windows[-1] and windows.window(len(windows) - 1) == windows.windows[-1]
    assert _labels_of_window(windows, 3) == tokenizer(" ".join(texts[k] for k in windows.window(3))).input_ids


def _labels_of_window(windows: PackedWindows, w: int) -> list[int]:
    """A window's labels without reading its frames."""
    window = windows.window(w)
    first = [int(t) for t in windows.rows.row(window[0])["labels"]][len(windows.prefix):-1]
    return window_labels(windows.prefix, first, [windows.joined_text(k) for k in window[1:]], windows.end_of_text)


def test_packed_frames_equal_the_concatenated_audios_log_mel_away_from_the_boundaries(korean_clips, tiny_model_dir):
    """What the module docstring promises: the pad value is the concatenated audio's, and the frames are its
    log-mel except about two frames at each boundary and where a clamp at (max - 8) applies."""
    extractor = load_processor(str(tiny_model_dir)).feature_extractor
    clips = [load_16k(c["audio_path"]) for c in korean_clips[:2]]
    clips = [c[: len(c) // HOP_LENGTH * HOP_LENGTH] for c in clips]  # on the frame grid, so frames line up
    per_clip = [log_mel_frames(extractor, c) for c in clips]  # [n_mels, frames]
    frames, pad_value = window_frames([f.T for f in per_clip], [max(-1.5, float(f.max()) - 2) for f in per_clip])
    packed = rebuild_padded(frames, pad_value)
    whole = extractor(np.concatenate(clips), sampling_rate=16000, return_tensors="np").input_features[0]

    assert pad_value == pytest.approx(float(whole[0, -1]), abs=1e-6)  # the padding Whisper gives the window
    assert np.allclose(packed[:, frames.shape[0]:], whole[:, -1:], atol=1e-6)
    first_hop = len(clips[0]) // HOP_LENGTH
    assert per_clip[0].shape[1] - first_hop == 2  # the two boundary frames a clip keeps past its end
    compared = 0
    for clip, (packed_start, whole_start) in enumerate([(0, 0), (per_clip[0].shape[1], first_hop)]):
        hops = len(clips[clip]) // HOP_LENGTH
        inner = np.arange(2, hops - 2)  # frames whose STFT window lies inside the clip
        a, b = packed[:, packed_start + inner], whole[:, whole_start + inner]
        unclamped = (a > per_clip[clip].max() - 2 + 1e-4) & (b > whole.max() - 2 + 1e-4)
        assert np.allclose(a[unclamped], b[unclamped], atol=1e-4)
        compared += int(unclamped.sum())
    assert compared > 0.5 * 80 * (frames.shape[0] - 8)  # most of the window was compared
