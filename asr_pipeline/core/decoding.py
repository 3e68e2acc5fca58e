"""Batched greedy decoding with Whisper's Korean/transcribe prefix."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from asr_pipeline.core.model import LANGUAGE, TASK
from asr_pipeline.core.progress import Progress
from asr_pipeline.core.text import clean


def transcribe_features(
    model,
    processor,
    features: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    count: int | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    emit: Callable[[str], None] = print,
    what: str = "decoding",
) -> list[str]:
    """features: padded [n_mels, 3000] inputs, or a function i -> input for i < count. Returns cleaned texts."""
    import torch

    get = features if callable(features) else features.__getitem__
    total = len(features) if count is None else count
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    model.eval()
    texts: list[str] = []
    progress = Progress(what, total, emit)
    for start in range(0, total, batch_size):
        stop = min(start + batch_size, total)
        batch = torch.from_numpy(np.stack([get(i) for i in range(start, stop)])).to(device=device, dtype=dtype)
        with torch.inference_mode():
            tokens = model.generate(batch, language=LANGUAGE, task=TASK, num_beams=1, do_sample=False,
                                    max_new_tokens=max_new_tokens)
        texts.extend(clean(t) for t in processor.tokenizer.batch_decode(tokens, skip_special_tokens=True))
        progress.advance(stop - start)
    return texts


def transcribe_audio(model, processor, clips: Sequence[np.ndarray], batch_size: int = 8, emit=print) -> list[str]:
    """16 kHz mono clips (any length up to 30 s) to text."""
    extractor = processor.feature_extractor

    def features(i: int) -> np.ndarray:
        return extractor(clips[i], sampling_rate=extractor.sampling_rate, return_tensors="np").input_features[0]

    return transcribe_features(model, processor, features, count=len(clips), batch_size=batch_size, emit=emit,
                               what="transcribing")
