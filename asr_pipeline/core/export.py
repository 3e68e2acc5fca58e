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

from asr_pipeline.core.decoding import Candidate, DecodeResult, DecodingPolicy, guarded_decode
from asr_pipeline.core.model import LANGUAGE, TASK
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


def ct2_device_and_compute_type(cuda_devices: int, quantization: str = "int8") -> tuple[str, str]:
    """Where CTranslate2 decodes (device="auto" picks CUDA when it sees a GPU) and with what arithmetic: int8
    weights with float16 activations on a GPU, int8 on a CPU."""
    if cuda_devices > 0:
        return "cuda", f"{quantization}_float16" if quantization == "int8" else quantization
    return "cpu", quantization


def load_ctranslate2(model_dir: str | Path, compute_type: str = "int8", threads: int | None = None):
    import ctranslate2

    _, compute = ct2_device_and_compute_type(ctranslate2.get_cuda_device_count(), compute_type)
    return ctranslate2.models.Whisper(str(model_dir), device="auto", compute_type=compute,
                                      intra_threads=threads or os.cpu_count() or 1)


def prompt_tokens(tokenizer) -> list[str]:
    return ["<|startoftranscript|>", f"<|{_language_code(tokenizer)}|>", f"<|{TASK}|>", "<|notimestamps|>"]


def _language_code(tokenizer) -> str:
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE[LANGUAGE.lower()]


class CTranslate2Runtime:
    """decoding.Runtime on a CTranslate2 Whisper: the statistics come from CTranslate2 itself (return_scores,
    return_no_speech_prob), read as faster-whisper reads them."""

    def __init__(self, model, tokenizer, features: Callable[[int], np.ndarray]):
        self.model, self.tokenizer, self.features = model, tokenizer, features
        self.prompt = prompt_tokens(tokenizer)

    def decode(self, chosen, temperature, max_new_tokens, best_of, seed):
        import ctranslate2

        batch = np.ascontiguousarray(np.stack([self.features(i) for i in chosen]).astype(np.float32))
        options = {"beam_size": 1, "num_hypotheses": best_of, "sampling_topk": 0,
                   "sampling_temperature": temperature} if temperature > 0 else {"beam_size": 1}
        ctranslate2.set_random_seed(seed)
        results = self.model.generate(ctranslate2.StorageView.from_array(batch), [self.prompt] * len(chosen),
                                      max_length=max_new_tokens + len(self.prompt), return_scores=True,
                                      return_no_speech_prob=True, suppress_blank=True, **options)
        out = []
        for result in results:
            # hypotheses come best first; faster-whisper: avg log-prob = score x length / (length + 1)
            tokens, score = result.sequences_ids[0], result.scores[0]
            text = clean(self.tokenizer.decode(tokens, skip_special_tokens=True))
            out.append(Candidate(text, score * len(tokens) / (len(tokens) + 1), result.no_speech_prob, temperature))
        return out


def transcribe_features_ct2(
    model,
    tokenizer,
    features: Callable[[int], np.ndarray],
    durations: Sequence[float],
    policy: DecodingPolicy = DecodingPolicy(),
    emit: Callable[[str], None] = print,
    what: str = "decoding (ctranslate2)",
) -> DecodeResult:
    """The same policy as transformers_decoding.transcribe_features (audio-duration order and budget, temperature
    fallback, no-speech), so the two runtimes are compared on equal terms."""
    return guarded_decode(CTranslate2Runtime(model, tokenizer, features), durations, policy, emit, what)


def ct2_loader(checkpoint_dir: str, policy: DecodingPolicy, emit: Callable[[str], None]):
    """For cached_decoding.CachedDecoder: load the export (and the checkpoint's tokenizer) only on a cache miss."""

    def load(export_dir: str):
        from asr_pipeline.core.model import load_processor

        model, tokenizer = load_ctranslate2(export_dir), load_processor(checkpoint_dir).tokenizer

        def decode(job) -> DecodeResult:
            return transcribe_features_ct2(model, tokenizer, job.features, job.durations(), policy, emit)

        return decode

    return load
