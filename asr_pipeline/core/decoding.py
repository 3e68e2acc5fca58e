"""Batched greedy decoding with Whisper's Korean/transcribe prefix."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np

from asr_pipeline.core.model import LANGUAGE, TASK
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.text import clean


def budgeted_batches(count: int, batch_size: int, max_new_tokens: int,
                     expected_tokens: Sequence[int] | None) -> Iterator[tuple[list[int], int]]:
    """(utterance indices, token budget) per batch: longest expected first, at most 2x the batch's longest expected
    length + 10 tokens (never above max_new_tokens); without expectations, input order and max_new_tokens."""
    order = list(range(count))
    if expected_tokens is not None:
        order.sort(key=lambda i: -int(expected_tokens[i]))
    for start in range(0, count, batch_size):
        chosen = order[start: start + batch_size]
        budget = max_new_tokens
        if expected_tokens is not None:
            budget = min(max_new_tokens, 2 * max(int(expected_tokens[i]) for i in chosen) + 10)
        yield chosen, budget


def transcribe_features(
    model,
    processor,
    features: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    count: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    emit: Callable[[str], None] = print,
    what: str = "decoding",
    expected_tokens: Sequence[int] | None = None,
) -> list[str]:
    """features: padded [n_mels, 3000] inputs, or a function i -> input for i < count. Returns cleaned texts in input
    order.

    expected_tokens (e.g. the reference label lengths): utterances are decoded longest first, so a batch holds
    utterances of similar length, and each batch may generate at most 2x its longest expected length + 10 tokens
    (never more than max_new_tokens): enough for any real transcript, while a hallucination loop stops early
    instead of running to max_new_tokens and holding its whole batch up.
    """
    import torch

    get = features if callable(features) else features.__getitem__
    total = len(features) if count is None else count
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    model.eval()
    texts: list[str | None] = [None] * total
    progress = Progress(what, total, emit)
    for chosen, budget in budgeted_batches(total, batch_size, max_new_tokens, expected_tokens):
        batch = torch.from_numpy(np.stack([get(i) for i in chosen])).to(device=device, dtype=dtype)
        with torch.inference_mode():
            tokens = model.generate(batch, language=LANGUAGE, task=TASK, num_beams=1, do_sample=False,
                                    max_new_tokens=budget)
        for i, text in zip(chosen, processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)):
            texts[i] = clean(text)
        progress.advance(len(chosen))
    return texts


def transcribe_audio(model, processor, clips: Sequence[np.ndarray], batch_size: int = 8, emit=print) -> list[str]:
    """16 kHz mono clips (any length up to 30 s) to text."""
    extractor = processor.feature_extractor

    def features(i: int) -> np.ndarray:
        return extractor(clips[i], sampling_rate=extractor.sampling_rate, return_tensors="np").input_features[0]

    return transcribe_features(model, processor, features, count=len(clips), batch_size=batch_size, emit=emit,
                               what="transcribing")
