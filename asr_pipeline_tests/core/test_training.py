import numpy as np
import torch

from asr_pipeline.core.training import SpeechSeq2SeqCollator, TrainingSettings

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
