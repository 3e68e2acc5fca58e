"""Whisper's log-mel features and label ids with numpy, scipy.fft and the `tokenizers` library alone.

Ingest needs two things from the base model: its log-mel (WhisperFeatureExtractor) and the label ids of each
transcript (WhisperTokenizer with the Korean/transcribe prefix). Both are small: a mel filter bank, a short-time
Fourier transform, and a byte-level BPE from the model's tokenizer.json. Importing transformers for them costs
about 5 s of every ingest process (it imports torch), so ingest computes them here, the same way transformers does;
asr_pipeline_tests/core/test_whisper_inputs.py compares both with transformers' outputs.

The arithmetic follows WhisperFeatureExtractor as transformers runs it where torch is installed
(_torch_extract_fbank_features): float32 periodic Hann window, centred STFT with reflect padding, power spectrum
without the last frame, float32 slaney mel filters, log10 clamped at 1e-10, at (max - 8), then (x + 4) / 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft

# The only configuration these classes reproduce; anything else goes through transformers (model.load_featurizer).
WHISPER_AUDIO = {"sampling_rate": 16_000, "n_fft": 400, "hop_length": 160, "chunk_length": 30,
                 "padding_value": 0.0, "dither": 0.0}
MAX_FREQUENCY = 8000.0  # Whisper's filters stop at 8 kHz whatever the sampling rate


def _hertz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above (as librosa and transformers have it)."""
    mels = 3.0 * freq / 200.0
    log_region = freq >= 1000.0
    mels[log_region] = 15.0 + np.log(freq[log_region] / 1000.0) * (27.0 / np.log(6.4))
    return mels


def _mel_to_hertz(mels: np.ndarray) -> np.ndarray:
    freq = 200.0 * mels / 3.0
    log_region = mels >= 15.0
    freq[log_region] = 1000.0 * np.exp((np.log(6.4) / 27.0) * (mels[log_region] - 15.0))
    return freq


def mel_filter_bank(num_mel_filters: int, n_fft: int = 400, sampling_rate: int = 16_000) -> np.ndarray:
    """[1 + n_fft // 2, num_mel_filters] slaney-normalised triangular filters, float64 (transformers'
    mel_filter_bank(norm="slaney", mel_scale="slaney", min_frequency=0, max_frequency=8000))."""
    num_frequency_bins = 1 + n_fft // 2
    mel_freqs = np.linspace(_hertz_to_mel(np.array([0.0]))[0], _hertz_to_mel(np.array([MAX_FREQUENCY]))[0],
                            num_mel_filters + 2)
    filter_freqs = _mel_to_hertz(mel_freqs)
    fft_freqs = np.linspace(0, sampling_rate // 2, num_frequency_bins)
    filter_diff = np.diff(filter_freqs)
    slopes = filter_freqs[None, :] - fft_freqs[:, None]
    down_slopes = -slopes[:, :-2] / filter_diff[:-1]
    up_slopes = slopes[:, 2:] / filter_diff[1:]
    filters = np.maximum(0.0, np.minimum(down_slopes, up_slopes))
    filters *= (2.0 / (filter_freqs[2: num_mel_filters + 2] - filter_freqs[:num_mel_filters]))[None, :]
    return filters


@dataclass
class LogMelExtractor:
    """WhisperFeatureExtractor's log-mel for one waveform, without the 30 s padding (features.log_mel_frames pads)."""

    feature_size: int = 80
    sampling_rate: int = 16_000
    n_fft: int = 400
    hop_length: int = 160

    def __post_init__(self):
        self.mel_filters_t = np.ascontiguousarray(
            mel_filter_bank(self.feature_size, self.n_fft, self.sampling_rate).T, dtype=np.float32)
        n = np.arange(self.n_fft, dtype=np.float64)
        self.window = (0.5 - 0.5 * np.cos(2.0 * np.pi * n / self.n_fft)).astype(np.float32)  # periodic Hann

    def log_mel(self, waveform: np.ndarray) -> np.ndarray:
        """[feature_size, len(waveform) // hop_length] normalised log-mel of the waveform as given."""
        half = self.n_fft // 2
        signal = np.pad(np.asarray(waveform, dtype=np.float32), half, mode="reflect")  # torch.stft(center=True)
        frames = np.lib.stride_tricks.sliding_window_view(signal, self.n_fft)[:: self.hop_length]
        frames = frames[:-1]  # Whisper drops the last frame
        spectrum = scipy.fft.rfft(frames * self.window, axis=1)  # float32 throughout (numpy's rfft is 5x slower)
        power = spectrum.real ** 2 + spectrum.imag ** 2  # [frames, bins], float32
        mel = self.mel_filters_t @ power.T
        log_spec = np.log10(np.maximum(mel, 1e-10), dtype=np.float64)  # float32's log10(1e-10) is not -10
        log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
        return ((log_spec + 4.0) / 4.0).astype(np.float32, copy=False)


class LabelTokenizer:
    """WhisperTokenizer(language=..., task="transcribe")'s input_ids from the model's tokenizer.json:
    <|startoftranscript|> <|lang|> <|transcribe|> <|notimestamps|> text <|endoftext|>, as its post-processor makes
    them."""

    def __init__(self, tokenizer_json: Path, language_code: str, task: str = "transcribe"):
        from tokenizers import Tokenizer, processors

        self.tokenizer = Tokenizer.from_file(str(tokenizer_json))
        # a tokenizer.json saved with truncation would cut long labels silently (they must be quarantined instead)
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        prefix = ["<|startoftranscript|>", f"<|{language_code}|>", f"<|{task}|>", "<|notimestamps|>"]
        ids = {token: self.tokenizer.token_to_id(token) for token in [*prefix, "<|endoftext|>"]}
        missing = [token for token, token_id in ids.items() if token_id is None]
        if missing:
            raise ValueError(f"{tokenizer_json} has no Whisper special tokens {missing}")
        self.tokenizer.post_processor = processors.TemplateProcessing(
            single=" ".join(f"{token}:0" for token in prefix) + " $A:0 <|endoftext|>:0",
            special_tokens=list(ids.items()),
        )
        self.prefix_ids = [ids[token] for token in prefix]
        self.eos_token_id = ids["<|endoftext|>"]

    def label_ids(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

