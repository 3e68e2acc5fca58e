"""A deployable copy of a checkpoint: CTranslate2 (int8 by default), the format faster-whisper serves.

The exported directory holds model.bin, config.json, vocabulary.json, tokenizer.json and preprocessor_config.json
(faster-whisper reads n_mels from it), so `faster_whisper.WhisperModel(path, compute_type="int8")` loads it as is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from asr_pipeline.core.decoding import budgeted_batches
from asr_pipeline.core.model import LANGUAGE, TASK
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.storage import publish, staging_dir
from asr_pipeline.core.text import clean


def export_ctranslate2(checkpoint_dir: str | Path, out_dir: Path, quantization: str = "int8") -> Path:
    """Convert a transformers Whisper checkpoint; the result is published atomically at out_dir."""
    from ctranslate2.converters import TransformersConverter
    from transformers import WhisperProcessor

    out_dir = Path(out_dir)
    staged = staging_dir(out_dir)
    TransformersConverter(str(checkpoint_dir), copy_files=["tokenizer.json"]).convert(
        str(staged), quantization=quantization, force=True)
    # transformers 5 keeps the feature extractor inside processor_config.json; faster-whisper looks for this file
    extractor = WhisperProcessor.from_pretrained(str(checkpoint_dir)).feature_extractor
    (staged / "preprocessor_config.json").write_text(extractor.to_json_string(), encoding="utf-8")
    (staged / "export.json").write_text(json.dumps({"source": str(checkpoint_dir), "quantization": quantization}))
    publish(staged, out_dir)
    return out_dir


def load_ctranslate2(model_dir: str | Path, compute_type: str = "int8", threads: int | None = None):
    import ctranslate2

    return ctranslate2.models.Whisper(str(model_dir), device="cpu", compute_type=compute_type,
                                      intra_threads=threads or os.cpu_count() or 1)


def prompt_tokens(tokenizer) -> list[str]:
    return ["<|startoftranscript|>", f"<|{_language_code(tokenizer)}|>", f"<|{TASK}|>", "<|notimestamps|>"]


def _language_code(tokenizer) -> str:
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE[LANGUAGE.lower()]


def transcribe_features_ct2(
    model,
    tokenizer,
    features: Callable[[int], np.ndarray],
    count: int,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    expected_tokens: Sequence[int] | None = None,
    emit: Callable[[str], None] = print,
    what: str = "decoding (ctranslate2)",
) -> list[str]:
    """The same policy as decoding.transcribe_features (greedy, longest first, label-derived budget), so the two
    runtimes are compared on equal terms."""
    import ctranslate2

    prompt = prompt_tokens(tokenizer)
    texts: list[str | None] = [None] * count
    progress = Progress(what, count, emit)
    for chosen, budget in budgeted_batches(count, batch_size, max_new_tokens, expected_tokens):
        batch = np.ascontiguousarray(np.stack([features(i) for i in chosen]).astype(np.float32))
        results = model.generate(ctranslate2.StorageView.from_array(batch), [prompt] * len(chosen),
                                 beam_size=1, max_length=budget + len(prompt), suppress_blank=True,
                                 return_scores=False)
        for i, result in zip(chosen, results):
            texts[i] = clean(tokenizer.decode(result.sequences_ids[0], skip_special_tokens=True))
        progress.advance(len(chosen))
    return texts
