"""benchmarks/bench_common.seed_evaluate: the notebook's Seq2SeqTrainer.predict, with its texts kept so that the
benchmarks score the seed's CER as they score ours (the GPU benchmark had no seed CER before)."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_common  # noqa: E402


def test_predictions_padded_with_minus_100_decode_to_the_texts_alone(tiny_model_dir):
    """predict pads shorter batches' predictions with -100 (and the generator pads finished rows with <pad>): the
    texts are the transcripts between the prompt and <|endoftext|>, row by row, in order."""
    from transformers import WhisperTokenizer

    tokenizer = WhisperTokenizer.from_pretrained(str(tiny_model_dir), language="Korean", task="transcribe")
    texts = ["저는 검사입니다.", "오늘 아침 비가 내리겠습니다.", ""]
    rows = [tokenizer(text).input_ids for text in texts]
    width = max(map(len, rows)) + 3
    predictions = np.full((len(rows), width), -100, dtype=np.int64)
    for i, ids in enumerate(rows):
        predictions[i, :len(ids)] = ids
    predictions[1, len(rows[1])] = tokenizer.pad_token_id  # a row the generator padded before predict did
    assert bench_common.seed_texts(predictions, tokenizer) == texts


@pytest.fixture(scope="module")
def seed_features(korean_clips, tiny_model_dir, tmp_path_factory):
    if not bench_common.SEED_RECIPE.is_file():  # ../shared beside the checkout, as for whisper-base: CI has it
        pytest.skip(f"the seed recipe is not at {bench_common.SEED_RECIPE} (../shared/reference beside the checkout)")
    work = tmp_path_factory.mktemp("seed_eval")
    frame = pd.DataFrame([{"audio_path": c["audio_path"], "transcript": c["transcript"]} for c in korean_clips[:3]])
    frame.to_csv(work / "seed_test.csv", index=False)
    seed = bench_common.seed_module()
    seed.featurize(str(work / "seed_test.csv"), str(work / "seed_test"), str(tiny_model_dir))
    return work, seed


@pytest.mark.whisper_base  # needs ../shared, like the whisper-base tests: a skip fails where those are required
def test_the_seed_texts_are_what_its_model_generates_for_each_clip(seed_features, tiny_model_dir):
    """Through Seq2SeqTrainer.predict in batches of 2: one text a clip, the prompt's special tokens not in it, each
    what the same model generates for that clip on its own (a random tiny model babbles to the 225-token limit)."""
    import torch
    from datasets import load_from_disk
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    work, seed = seed_features
    result = bench_common.seed_evaluate(work / "seed_test", str(tiny_model_dir), batch_size=2, seed=seed)
    assert result["utterances"] == 3 and len(result["texts"]) == 3
    assert not any("<|" in text for text in result["texts"])

    processor = WhisperProcessor.from_pretrained(str(tiny_model_dir), language="Korean", task="transcribe")
    model = WhisperForConditionalGeneration.from_pretrained(str(tiny_model_dir)).eval()
    model.generation_config.forced_decoder_ids = None
    model.generation_config.language, model.generation_config.task = "korean", "transcribe"
    alone = []
    for row in load_from_disk(str(work / "seed_test")):
        with torch.no_grad():
            ids = model.generate(torch.tensor([row["input_features"]]), max_length=225)
        alone.append(processor.tokenizer.decode(ids[0], skip_special_tokens=True))
    assert result["texts"] == alone
