"""Training on packed windows (issue 14, point 1): the train split packed, validation on single clips, the window
limit, packing off, and the hint a GPU run prints. The plan, labels and frames: test_packing.py."""

import math

import numpy as np
import pandas as pd
import pytest

from asr_pipeline.core.audio import resample_manifest
from asr_pipeline.core.audio_shard import AudioShard
from asr_pipeline.core.features import FeatureShard, featurize_shard
from asr_pipeline.core.model import load_processor
from asr_pipeline.core.packing import window_frames_limit, windows_per_step
from asr_pipeline.core.training import TrainingSettings, train_whisper
from asr_pipeline.core.training_data import SpeechSeq2SeqCollator


def _collated_labels(monkeypatch) -> list[list[int]]:
    """Every label sequence the real collator batches, training and validation alike."""
    seen = []
    collate = SpeechSeq2SeqCollator.__call__

    def recording(self, features):
        seen.extend(list(f["labels"]) for f in features)
        return collate(self, features)

    monkeypatch.setattr(SpeechSeq2SeqCollator, "__call__", recording)
    return seen


@pytest.fixture(scope="module")
def shard_with_valid(tmp_path_factory, korean_clips, tiny_model_dir):
    """12 train clips in three episodes, 3 valid clips of a fourth."""
    root = tmp_path_factory.mktemp("packing_valid")
    clips = korean_clips[:15]
    manifest = pd.DataFrame([{"id": i, "source_path": c["audio_path"], "audio_path": c["audio_path"],
                              "transcript": c["transcript"], "group": f"EP_{i // 4}",
                              "split": "valid" if i >= 12 else "train"} for i, c in enumerate(clips)])
    (root / "audio").mkdir(), (root / "features").mkdir()
    resample_manifest(manifest, root / "audio", emit=lambda _: None)
    processor = load_processor(str(tiny_model_dir))
    featurize_shard(AudioShard(root / "audio"), root / "features", processor.feature_extractor, processor.tokenizer,
                    str(tiny_model_dir), emit=lambda _: None)
    return FeatureShard(root / "features")


FAST = dict(learning_rate=1e-3, warmup_steps=0, logging_steps=1, max_eval_samples=3, generation_max_length=8)


def test_training_packs_the_train_split_and_validates_on_single_clips(shard_with_valid, tiny_model_dir, tmp_path,
                                                                      monkeypatch):
    seen = _collated_labels(monkeypatch)
    lines = []
    summary = train_whisper(str(tiny_model_dir), [shard_with_valid], tmp_path / "packed",
                            TrainingSettings(**FAST, batch_size=8, max_steps=None, epochs=1.0, eval_steps=100, packing=True),
                            emit=lines.append)
    tokenizer = load_processor(str(tiny_model_dir)).tokenizer
    texts = [tokenizer.decode(labels, skip_special_tokens=True) for labels in seen]
    index = shard_with_valid.index
    train, valid = index[index["split"] == "train"]["transcript"].tolist(), index[index["split"] == "valid"]["transcript"].tolist()
    assert any(text.startswith(" ".join(train[:2])) for text in texts)  # a window: clips joined in order
    assert sorted(t for t in texts if any(v in t for v in valid)) == sorted(valid)  # validation: one clip an item

    assert summary["packing"] is True and summary["train_rows"] == 12
    assert summary["train_windows"] < 12 and summary["packing_factor"] == round(12 / summary["train_windows"], 3)
    assert summary["windows_per_step"] == windows_per_step(8, 12, summary["train_windows"])
    # one epoch over the windows
    assert summary["steps"] == math.ceil(summary["train_windows"] / summary["windows_per_step"])
    assert summary["windows_seen"] == summary["steps"] * summary["windows_per_step"]
    assert summary["utterances_seen"] == round(summary["windows_seen"] * 12 / summary["train_windows"])
    assert summary["train_utterances_per_s"] > 0
    assert any(line.startswith(f"packed 12 train clips into {summary['train_windows']} windows") for line in lines)


def test_training_packs_windows_no_longer_than_packing_max_seconds(shard_with_valid, tiny_model_dir, tmp_path,
                                                                    monkeypatch):
    lengths = []
    collate = SpeechSeq2SeqCollator.__call__

    def recording(self, features):
        lengths.extend(np.asarray(f["frames"]).shape[0] for f in features if "frames" in f)
        return collate(self, features)

    monkeypatch.setattr(SpeechSeq2SeqCollator, "__call__", recording)
    clip_frames = int(shard_with_valid.index[shard_with_valid.index["split"] == "train"]["num_frames"].max())
    limit = 2 * clip_frames / 100  # seconds: room for two of the longest clips, never three
    settings = dict(FAST, batch_size=4, max_steps=None, epochs=1.0, eval_steps=100, packing=True)
    wide = train_whisper(str(tiny_model_dir), [shard_with_valid], tmp_path / "wide", TrainingSettings(**settings),
                         emit=lambda _: None)
    lines, wide_lengths = [], lengths[:]
    lengths.clear()
    short = train_whisper(str(tiny_model_dir), [shard_with_valid], tmp_path / "short",
                          TrainingSettings(**settings, packing_max_seconds=limit), emit=lines.append)
    assert short["train_windows"] > wide["train_windows"]
    assert max(wide_lengths) > window_frames_limit(limit)  # the limit made a difference
    assert lengths and max(lengths) <= window_frames_limit(limit)
    assert any(f"windows of at most {limit:g} s" in line for line in lines)


def test_without_packing_every_clip_is_its_own_window(shard_with_valid, tiny_model_dir, tmp_path, monkeypatch):
    seen = _collated_labels(monkeypatch)
    summary = train_whisper(str(tiny_model_dir), [shard_with_valid], tmp_path / "unpacked",
                            TrainingSettings(**FAST, batch_size=4, max_steps=2, eval_steps=2, packing=False),
                            emit=lambda _: None)
    tokenizer = load_processor(str(tiny_model_dir)).tokenizer
    transcripts = set(shard_with_valid.index["transcript"])
    assert all(tokenizer.decode(labels, skip_special_tokens=True) in transcripts for labels in seen)
    assert (summary["packing"], summary["packing_factor"], summary["train_windows"]) == (False, 1.0, 12)
    assert summary["windows_seen"] == summary["utterances_seen"] == 2 * 4


@pytest.mark.parametrize("rank, told", [("0", True), ("1", False)])
def test_packed_training_on_a_gpu_tells_its_first_process_how_to_fill_the_step(shard_with_valid, tiny_model_dir,
                                                                               tmp_path, monkeypatch, rank, told):
    """Seen as a GPU (torch.cuda.is_available), up to the training arguments, where the test stops it. The split's
    12 clips make a few windows, so a filled step is taken as 2 windows here; batch_size 3 is 1 window a step."""
    import torch
    import transformers

    from asr_pipeline.core import packing

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(transformers, "Seq2SeqTrainingArguments", stop)
    monkeypatch.setattr(packing, "GPU_FILLED_STEP_WINDOWS", 2)
    monkeypatch.setenv("RANK", rank)
    lines = []
    with pytest.raises(Stop):
        train_whisper(str(tiny_model_dir), [shard_with_valid], tmp_path / "gpu",
                      TrainingSettings(**FAST, batch_size=3, max_steps=2, packing=True), emit=lines.append)
    packed = next(line for line in lines if line.startswith("packed 12 train clips into "))
    assert "a step takes 1 windows" in packed  # the premise: 3 clips are 1 window of these (about 4 a window)
    hints = [line for line in lines if line.startswith("packed training on a GPU")]
    assert len(hints) == (1 if told else 0)
    assert not told or hints[0].startswith("packed training on a GPU, 1 window a step:")
