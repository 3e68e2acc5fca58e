"""Whisper in transformers under the decoding policy (decoding.py): TransformersRuntime decodes a batch step by
step with a key/value cache, and transcribe_features / transcribe_clips / transcribe_audio run decoding.guarded_decode
on it."""

from __future__ import annotations

import inspect
from typing import Callable, Sequence

import numpy as np

from asr_pipeline.core.decoding import SAMPLE_RATE, Candidate, DecodeResult, DecodingPolicy, guarded_decode
from asr_pipeline.core.model import LANGUAGE, TASK, attention_without_cudnn
from asr_pipeline.core.text import clean


class TransformersRuntime:
    """WhisperForConditionalGeneration, decoded step by step with a key/value cache (what `generate` does for Whisper,
    with its token suppression rules), plus what the guards need, read from the same forward passes: the mean
    log-probability of the tokens and <|endoftext|> under the unmodified logits, and P(<|nospeech|>) after
    <|startoftranscript|>, as openai-whisper and CTranslate2 compute them.

    Why not `generate`: it keeps decoding every row of a batch until the last one ends, and the guards then needed a
    second, teacher-forced pass. Here a row leaves the batch when it emits <|endoftext|> (a base model that babbles
    on one clip no longer holds up fifteen finished ones), the statistics come from the decoding passes themselves,
    and the encoder states and cross-attention keys/values of a batch are computed once for every temperature.
    In float32 its greedy tokens equal `generate`'s (asr_pipeline_tests/core/test_decoding.py); in bf16/fp16 a batch
    that shrinks as rows end may round a near-tie differently."""

    def __init__(self, model, processor, features: Callable[[int], np.ndarray]):
        self.model, self.tokenizer, self.features = model, processor.tokenizer, features
        gc = model.generation_config
        self.eot = int(gc.eos_token_id if not isinstance(gc.eos_token_id, list) else gc.eos_token_id[0])
        language = self.tokenizer.convert_tokens_to_ids(f"<|{_language_code()}|>")
        self.prompt = [int(gc.decoder_start_token_id), int(language), int(gc.task_to_id[TASK]),
                       int(gc.no_timestamps_token_id)]
        nospeech = self.tokenizer.convert_tokens_to_ids("<|nospeech|>")
        self.no_speech = int(nospeech) if isinstance(nospeech, int) and nospeech != self.tokenizer.unk_token_id \
            else int(gc.no_timestamps_token_id) - 1
        # generate's rules for Whisper: suppress_tokens at every step, begin_suppress_tokens (" " and <|endoftext|>)
        # at the first generated position
        # (ids outside the vocabulary are skipped, as generate skips them). Other generation_config options
        # (repetition_penalty, no_repeat_ngram_size, top_k/top_p) are not applied: Whisper's configs set none of them.
        vocabulary = int(model.config.vocab_size)
        self.suppress = [int(t) for t in (gc.suppress_tokens or []) if 0 <= int(t) < vocabulary]
        self.begin_suppress = [int(t) for t in (getattr(gc, "begin_suppress_tokens", None) or [])
                               if 0 <= int(t) < vocabulary]
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        model.eval()
        # the batch being decoded: its utterance indices, encoder states and each decoder layer's cross-attention keys
        # and values, computed once for the greedy pass and every fallback temperature
        self._encoded: tuple[tuple[int, ...], object, list] | None = None
        # transformers renamed past_key_values to cache during 5.x; the project allows any 5.x
        self._masks = None  # (every step, first step) suppression masks over the vocabulary, made on first use
        self._cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    def _encode(self, chosen: list[int]):
        """(encoder states, cross-attention keys/values per decoder layer) of the chosen utterances, in that order.
        Without the cached keys/values each temperature pass would project the 1500 encoder positions again in each
        decoder layer (about a tenth of the encoder's work each time, in float32)."""
        import torch

        key = tuple(chosen)
        if self._encoded is None or not set(key) <= set(self._encoded[0]):
            batch = torch.from_numpy(np.stack([self.features(i) for i in chosen]))
            with torch.inference_mode():
                hidden = self.model.model.encoder(batch.to(device=self.device, dtype=self.dtype)).last_hidden_state
                cross = [self._cross_key_value(layer.encoder_attn, hidden) for layer in self.model.model.decoder.layers]
            self._encoded = (key, hidden, cross)
        keys, hidden, cross = self._encoded
        if key == keys:
            return hidden, cross
        rows = torch.tensor([keys.index(i) for i in chosen], device=hidden.device)
        return hidden[rows], [(k[rows], v[rows]) for k, v in cross]

    @staticmethod
    def _cross_key_value(attention, hidden):
        """What WhisperAttention computes for cross-attention before caching it: [batch, heads, positions, head_dim]."""
        shape = (hidden.shape[0], -1, attention.num_heads, attention.head_dim)
        return (attention.k_proj(hidden).view(shape).transpose(1, 2).contiguous(),
                attention.v_proj(hidden).view(shape).transpose(1, 2).contiguous())

    @staticmethod
    def _cache(cross, repeats: int = 1):
        """A fresh decoder cache whose cross-attention part is already filled (the model then skips recomputing it)."""
        from transformers.cache_utils import DynamicCache, EncoderDecoderCache

        if repeats > 1:
            cross = [(k.repeat_interleave(repeats, dim=0), v.repeat_interleave(repeats, dim=0)) for k, v in cross]
        return EncoderDecoderCache(DynamicCache(), DynamicCache(cross))

    def _forward(self, hidden, cache, ids):
        from transformers.modeling_outputs import BaseModelOutput

        return self.model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), decoder_input_ids=ids,
                          use_cache=True, **{self._cache_kwarg: cache}).logits.float()

    def decode(self, chosen, temperature, max_new_tokens, best_of, seed):
        with attention_without_cudnn():  # a new attention shape at nearly every step (model.attention_without_cudnn)
            return self._decode(chosen, temperature, max_new_tokens, best_of, seed)

    def _decode(self, chosen, temperature, max_new_tokens, best_of, seed):
        import torch

        hidden, cross = self._encode(chosen)
        samples = best_of if temperature > 0 else 1
        if samples > 1:
            hidden = hidden.repeat_interleave(samples, dim=0)
        generator = torch.Generator(device=self.device).manual_seed(seed) if temperature > 0 else None
        with torch.inference_mode():
            tokens, logprob_sums, no_speech, ended = self._generate(hidden, self._cache(cross, samples), temperature,
                                                                    max_new_tokens, generator)
        # mean log-probability as faster-whisper reads CTranslate2's score: the tokens (and <|endoftext|> when the text
        # ended; a text cut by the budget has none to score) summed, divided by the token count + 1
        candidates = [Candidate(clean(self.tokenizer.decode(t, skip_special_tokens=True)), s / (len(t) + 1), ns,
                                temperature) for t, s, ns in zip(tokens, logprob_sums, no_speech)]
        return [max(candidates[k * samples:(k + 1) * samples], key=lambda c: c.avg_logprob)
                for k in range(len(chosen))]

    def _generate(self, hidden, cache, temperature: float, max_new_tokens: int, generator):
        """(tokens without <|endoftext|>, summed log-probabilities, P(<|nospeech|>), ended) per row."""
        import torch

        rows = hidden.shape[0]
        ids = torch.tensor([self.prompt] * rows, dtype=torch.long, device=self.device)
        logits = self._forward(hidden, cache, ids)
        lse = logits[:, 0].logsumexp(dim=-1)
        no_speech = (logits[:, 0, self.no_speech] - lse).exp().tolist()
        logits = logits[:, -1]
        tokens: list[list[int]] = [[] for _ in range(rows)]
        sums, ended = [0.0] * rows, [False] * rows
        active = list(range(rows))  # the rows still decoding, in the order of the cache's batch dimension
        for step in range(max_new_tokens):
            chosen = self._choose(logits, temperature, generator, first=step == 0)
            logprobs = logits.gather(1, chosen[:, None])[:, 0] - logits.logsumexp(dim=-1)
            # one copy to the host a step (token ids are exact in float64)
            picked = torch.stack([chosen.double(), logprobs.double()], dim=1).tolist()
            keep = []
            for position, (row, (token, logprob)) in enumerate(zip(active, picked)):
                token = int(token)
                sums[row] += logprob
                if token == self.eot:
                    ended[row] = True
                else:
                    tokens[row].append(token)
                    keep.append(position)
            if not keep or step == max_new_tokens - 1:
                break
            if len(keep) < len(active):  # finished rows leave the batch and the cache
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                hidden, chosen = hidden[index], chosen[index]
                active = [active[p] for p in keep]
            logits = self._forward(hidden, cache, chosen[:, None])[:, -1]
        return tokens, sums, no_speech, ended

    def _choose(self, logits, temperature: float, generator, first: bool):
        """The next token of each row: generate's suppression, then argmax (greedy) or a sample at the temperature."""
        import torch

        if self._masks is None:  # made once: the hot loop only applies them
            masks = []
            for ids in (self.suppress, self.suppress + self.begin_suppress):
                mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
                mask[ids] = True
                masks.append(mask)
            self._masks = tuple(masks)
        scores = logits.masked_fill(self._masks[1 if first else 0], -float("inf"))
        if temperature == 0:
            return scores.argmax(dim=-1)
        probabilities = torch.softmax(scores / temperature, dim=-1)
        return torch.multinomial(probabilities, 1, generator=generator)[:, 0]


def _language_code() -> str:
    from transformers.models.whisper.tokenization_whisper import TO_LANGUAGE_CODE

    return TO_LANGUAGE_CODE[LANGUAGE.lower()]


def transcribe_features(
    model,
    processor,
    features: Sequence[np.ndarray] | Callable[[int], np.ndarray],
    durations: Sequence[float],
    policy: DecodingPolicy = DecodingPolicy(),
    emit: Callable[[str], None] = print,
    what: str = "decoding",
) -> DecodeResult:
    """features: padded [n_mels, 3000] inputs, or a function i -> input; durations: each clip's audio seconds."""
    get = features if callable(features) else features.__getitem__
    return guarded_decode(TransformersRuntime(model, processor, get), durations, policy, emit, what)


def transcribe_clips(model, processor, clips: Sequence[np.ndarray], policy: DecodingPolicy = DecodingPolicy(),
                     emit=print) -> DecodeResult:
    """16 kHz mono clips (any length up to 30 s) to text, with which guard decided each."""
    extractor = processor.feature_extractor

    def features(i: int) -> np.ndarray:
        return extractor(clips[i], sampling_rate=extractor.sampling_rate, return_tensors="np").input_features[0]

    durations = [min(len(c), 30 * SAMPLE_RATE) / SAMPLE_RATE for c in clips]
    return transcribe_features(model, processor, features, durations, policy, emit, "transcribing")


def transcribe_audio(model, processor, clips: Sequence[np.ndarray], policy: DecodingPolicy = DecodingPolicy(),
                     emit=print) -> list[str]:
    """16 kHz mono clips (any length up to 30 s) to text ("" where the no-speech guard found silence)."""
    return transcribe_clips(model, processor, clips, policy, emit).texts
