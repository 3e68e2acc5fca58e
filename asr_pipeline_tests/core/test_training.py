from types import SimpleNamespace

import numpy as np
import torch

from asr_pipeline.core.training import TrainingSettings
from asr_pipeline.core.training_data import SpeechSeq2SeqCollator

SOT, BOS = 50258, 50257  # decoder_start_token_id and <|endoftext|> of OpenAI's multilingual Whisper


def _feature(labels, frames=10):
    return {"frames": np.zeros((frames, 80), np.float16), "pad_value": -1.5, "labels": labels}


def test_collator_strips_decoder_start_token_not_bos():
    batch = SpeechSeq2SeqCollator(SOT)([_feature([SOT, 50264, 50359, 50363, 100, BOS]),
                                        _feature([SOT, 50264, 50359, 50363, 7, 8, 9, BOS])])
    assert batch["labels"].tolist() == [[50264, 50359, 50363, 100, BOS, -100, -100],
                                        [50264, 50359, 50363, 7, 8, 9, BOS]]
    assert batch["input_features"].shape == (2, 80, 3000)
    assert batch["input_features"].dtype == torch.float32


def test_collator_keeps_labels_that_do_not_start_with_the_start_token():
    batch = SpeechSeq2SeqCollator(SOT)([_feature([BOS, 5, BOS]), _feature([SOT, 6, BOS])])
    assert batch["labels"][:, 0].tolist() == [BOS, SOT]


def test_collator_rebuilds_padding_from_the_pad_value():
    frames = np.full((4, 80), 0.5, np.float16)
    batch = SpeechSeq2SeqCollator(SOT)([{"frames": frames, "pad_value": -1.25, "labels": [SOT, 1]}])
    features = batch["input_features"][0]
    assert torch.all(features[:, :4] == 0.5) and torch.all(features[:, 4:] == -1.25)


def test_training_settings_defaults_are_the_notebooks():
    s = TrainingSettings()
    assert (s.learning_rate, s.batch_size, s.warmup_steps, s.max_steps, s.eval_steps, s.generation_max_length) == \
        (1e-5, 16, 500, 4000, 1000, 225)


def _rows_over(groups: list[str], split: str = "valid"):
    """FeatureRows over an index alone (no features): what the sampling reads."""
    import pandas as pd

    from asr_pipeline.core.training_data import FeatureRows

    shard = SimpleNamespace(index=pd.DataFrame({"group": groups, "split": split}),
                            split_positions=lambda s: [i for i in range(len(groups)) if s == split])
    return FeatureRows([shard], split)


def test_validation_sample_is_seeded_and_spread_over_every_episode():
    from asr_pipeline.core.training_data import FeatureRows
    from asr_pipeline.core.validation import choose_validation

    # one long-running programme with 1,000 clips first, then 99 episodes of 5: the first 200 rows would be one episode
    groups = ["OLD_000"] * 1000 + [f"EP_{k:03d}" for k in range(99) for _ in range(5)]
    valid, train = _rows_over(groups), _rows_over([f"T_{k}" for k in range(50)], "train")
    kept, sample, validation = choose_validation(train, valid, size=200, seed=42)
    assert kept is train and len(sample) == 200 and validation.source == "valid split" and validation.warning is None
    chosen = list(sample.groups())
    assert len(set(chosen)) == 100 == validation.episodes  # every episode is represented
    assert chosen.count("OLD_000") <= 2
    again = choose_validation(train, valid, size=200, seed=42)[1]
    assert again.positions == sample.positions
    assert choose_validation(train, valid, size=200, seed=7)[1].positions != sample.positions
    assert len(choose_validation(train, valid, size=5000, seed=42)[1]) == len(groups)
    assert isinstance(sample, FeatureRows)


def test_without_a_valid_split_whole_train_episodes_are_held_out_and_it_says_so():
    from asr_pipeline.core.validation import choose_validation

    groups = [f"EP_{k:02d}" for k in range(20) for _ in range(10)]
    train, empty = _rows_over(groups, "train"), _rows_over([], "valid")
    kept, sample, validation = choose_validation(train, empty, size=500, seed=42)
    held = set(sample.groups())
    assert validation.source == "held-out train episodes" and "NO VALID SPLIT" in validation.warning
    assert len(held) == validation.episodes == 2 and len(sample) == 20  # 10% of 200 clips, whole episodes
    assert not held & set(kept.groups()) and len(kept) == 180  # never trained on
    one_episode = _rows_over(["EP_00"] * 10, "train")
    kept, sample, validation = choose_validation(one_episode, empty, size=500, seed=42)
    assert len(sample) == 0 and len(kept) == 10 and validation.source == "none" and "NO VALIDATION" in \
        validation.warning
