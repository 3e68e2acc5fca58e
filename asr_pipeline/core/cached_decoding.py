"""Decoding jobs for the report: each (model, runtime, placement, policy, utterances) is decoded at most once.

A job is a set of utterances (the test sample, a benchmark set) with a fingerprint; `CachedDecoder.run` returns
each job's hypotheses from the HypothesisCache when it has them and loads the model only when some job misses.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

import numpy as np

from asr_pipeline.core.decoding import DecodeResult, DecodingPolicy
from asr_pipeline.core.hypothesis_cache import HypothesisCache

# the runtime's name is part of the hypothesis cache key: a new decoder revision (here the step-by-step loop of
# transformers_decoding.TransformersRuntime, whose sampled fallbacks draw other random numbers than transformers'
# generate did)
# must not reuse the previous one's cached hypotheses, or the champion and the challenger would be decoded differently
TRANSFORMERS = "transformers/stepwise-1"
CTRANSLATE2 = "ctranslate2-int8"


def cache_placement(runtime: str, placement: str) -> str:
    """The placement ("cuda/bfloat16") as the hypothesis cache keys it. Since 2026-11-27 the transformers runtime
    decodes without cuDNN's attention (model.attention_without_cudnn), which rounds differently on a GPU from the
    PyTorch defaults that earlier cached GPU hypotheses were decoded with: those are keyed apart, so a cached base
    model or champion is never compared with a challenger decoded the other way. ASR_CUDNN_ATTENTION=1 decodes with
    the defaults again, under the old key. A CPU and CTranslate2 have no cuDNN attention: their keys are unchanged."""
    from asr_pipeline.core.model import cudnn_attention_allowed

    if runtime == TRANSFORMERS and placement.startswith("cuda") and not cudnn_attention_allowed():
        return placement + "/no-cudnn-attention"
    return placement


@dataclass
class DecodeJob:
    label: str  # "test" or a benchmark set's name
    count: int
    features: Callable[[int], np.ndarray]
    durations: Callable[[], Sequence[float]]  # lazy: a benchmark set reads its audio only on a miss
    fingerprint: str


def feature_digest(frames: np.ndarray, pad_value: float) -> str:
    """What the decoder sees of one stored utterance: its frames and the padding value."""
    digest = hashlib.sha256(np.ascontiguousarray(frames).tobytes())
    digest.update(f"{float(pad_value):.6g}".encode())
    return digest.hexdigest()[:24]


class CachedDecoder:
    """runtime: TRANSFORMERS or CTRANSLATE2; loader(source) -> decode(job) -> DecodeResult, called only on a miss."""

    def __init__(self, cache: HypothesisCache | None, placement: str, policy: DecodingPolicy,
                 emit: Callable[[str], None] = print):
        self.cache, self.placement, self.policy, self.emit = cache, placement, policy, emit
        self.decoded = 0  # jobs actually decoded (not served by the cache), for the report and tests

    def run(self, name: str, source: str, runtime: str, loader: Callable[[str], Callable[[DecodeJob], DecodeResult]],
            jobs: Sequence[DecodeJob], fingerprint_source: str | None = None) -> dict[str, dict]:
        fingerprint = self.cache.model_fingerprint(fingerprint_source or source) if self.cache else None
        decode = None
        out = {}
        for job in jobs:
            key = self.cache.key(fingerprint, runtime, cache_placement(runtime, self.placement),
                                 self.policy.describe(), job.fingerprint) if self.cache else None
            entry = self.cache.get(key) if self.cache else None
            if entry is not None and len(entry.get("texts", [])) == job.count:
                self.emit(f"{name} on {job.label}: {job.count} hypotheses from the cache ({key}), not decoded again")
                out[job.label] = {**entry, "cached": True}
                continue
            if decode is None:
                decode = loader(source)
            started = time.perf_counter()
            result = decode(job)
            seconds = time.perf_counter() - started
            self.decoded += 1
            entry = {"texts": result.texts, "temperatures": result.temperatures, "silent": result.silent,
                     "passes": result.passes,
                     "decode_seconds": round(seconds, 3), "model": source, "runtime": runtime,
                     "model_fingerprint": fingerprint, "decoded_at": datetime.now(timezone.utc).isoformat()}
            problem = self.cache.put(key, entry) if self.cache else None
            if problem:
                self.emit(f"{name} on {job.label}: hypotheses not cached ({problem}); decoded again next time")
            out[job.label] = {**entry, "cached": False}
        return out


def decode_summary(entry: dict, count: int) -> dict:
    """The report's per-model decoding figures for one job."""
    seconds = float(entry["decode_seconds"])
    temperatures, silent = entry.get("temperatures") or [], entry.get("silent") or []
    n = max(count, 1)
    summary = {"decode_seconds": seconds, "utterances_per_s": round(count / seconds, 3) if seconds > 0 else None,
               "cached": bool(entry.get("cached")), "fallback_share": sum(t > 0 for t in temperatures) / n,
               "no_speech_share": sum(bool(s) for s in silent) / n}
    if entry.get("passes"):  # decoding passes a clip (entries cached before it was recorded have none)
        summary["mean_passes"] = round(sum(entry["passes"]) / n, 3)
    return summary


def transformers_loader(device: str, dtype, policy: DecodingPolicy, emit: Callable[[str], None], name: str):
    def load(source: str):
        from asr_pipeline.core.transformers_decoding import transcribe_features
        from asr_pipeline.core.model import load_model, load_processor

        model, processor = load_model(source, device=device, dtype=dtype), load_processor(source)

        def decode(job: DecodeJob) -> DecodeResult:
            return transcribe_features(model, processor, job.features, job.durations(), policy, emit,
                                       f"decoding ({name}, {job.label})")

        return decode

    return load
