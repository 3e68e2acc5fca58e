"""Finding the base Whisper model (or, offline, the stand-in of core/placeholder_model.py), loading it for Korean,
its featurizer, and where it runs (device, bf16)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from asr_pipeline.core.errors import ConfigError
from asr_pipeline.core.placeholder_model import PLACEHOLDER_NAME, PLACEHOLDER_WARNING, build_tiny_whisper

log = logging.getLogger(__name__)

LANGUAGE = "korean"
LANGUAGE_CODE = "ko"  # the <|ko|> token
TASK = "transcribe"


@dataclass(frozen=True)
class BaseModel:
    source: str  # a local directory or a hub id, as from_pretrained takes it
    placeholder: bool = False

    @property
    def warning(self) -> str | None:
        return PLACEHOLDER_WARNING if self.placeholder else None


def hub_reachable(host: str = "huggingface.co", timeout_s: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of after from_pretrained's retries."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout_s):
            return True
    except OSError:
        return False


def _cached_locally(name: str) -> bool:
    """The hub id's config.json is in the local Hugging Face cache (what from_pretrained(local_files_only=True)
    looks for), asked of huggingface_hub rather than transformers, whose import costs seconds."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id
        return False


def resolve_base_model(name: str, allow_placeholder: bool, home: Path, corpus: Iterable[str] = ()) -> BaseModel:
    """name: ASR_BASE_MODEL. allow_placeholder: True when the user left it at its default."""
    if Path(name).expanduser().is_dir():
        directory = Path(name).expanduser().resolve()
        if not (directory / "config.json").is_file():
            raise ConfigError(f"ASR_BASE_MODEL={name} is a directory without config.json (not a transformers model)")
        return BaseModel(str(directory))
    if _cached_locally(name) or hub_reachable():
        return BaseModel(name)
    if not allow_placeholder:
        raise ConfigError(
            f"ASR_BASE_MODEL={name} is neither a local directory nor reachable: the Hugging Face hub cannot be "
            "contacted from this machine. Point ASR_BASE_MODEL at a local Whisper directory."
        )
    log.warning(PLACEHOLDER_WARNING)
    directory = Path(home) / "models" / PLACEHOLDER_NAME
    if not (directory / "model.safetensors").is_file():
        build_tiny_whisper(directory, corpus)
    return BaseModel(str(directory), placeholder=True)


def load_processor(source: str):
    """WhisperProcessor with the Korean/transcribe prefix and a feature extractor whose mel bins match the model."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(source, language=LANGUAGE, task=TASK)
    num_mel_bins = WhisperConfig.from_pretrained(source).num_mel_bins  # 80 (tiny..large-v2) or 128 (large-v3)
    if processor.feature_extractor.feature_size != num_mel_bins:
        log.warning("feature extractor has %s mel bins but the model expects %s; using the model's",
                    processor.feature_extractor.feature_size, num_mel_bins)
        processor.feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return processor


def model_file(source: str, filename: str) -> Path | None:
    """One file of a local model directory or of a hub id (from the Hugging Face cache, downloaded if need be);
    None when the model has no such file or it cannot be had."""
    if Path(source).expanduser().is_dir():
        path = Path(source).expanduser() / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, filename))
    except Exception:  # no such file in the repo, offline and not cached, ...: the caller says what it falls back to
        return None


def model_num_mel_bins(source: str) -> int:
    """The model's num_mel_bins (80 for tiny..large-v2, 128 for large-v3), from its config.json."""
    path = model_file(source, "config.json")
    if path is None:
        raise ConfigError(f"{source} has no readable config.json")
    return int(json.loads(path.read_text()).get("num_mel_bins", 80))  # WhisperConfig's default is 80


def saved_feature_extractor_settings(source: str) -> dict | None:
    """The feature extractor's saved settings where WhisperProcessor.from_pretrained finds them: the
    "feature_extractor" entry of processor_config.json (what transformers 5 saves), else preprocessor_config.json
    (hub checkpoints)."""
    path = model_file(source, "processor_config.json")
    if path is not None and "feature_extractor" in (saved := json.loads(path.read_text())):
        return saved["feature_extractor"]
    path = model_file(source, "preprocessor_config.json")
    return json.loads(path.read_text()) if path is not None else None


def load_featurizer(source: str):
    """(feature extractor, label tokenizer) for features.featurize_shard, the way load_processor would make them.

    Every released Whisper has a tokenizer.json and the standard audio settings (16 kHz, n_fft 400, hop 160, 30 s
    chunks): for those, numpy and the tokenizers library compute the same log-mel and label ids without importing
    transformers or torch (core/whisper_inputs.py; seconds of every ingest). Anything else goes through
    load_processor, saying why."""
    from asr_pipeline.core.whisper_inputs import WHISPER_AUDIO, LabelTokenizer, LogMelExtractor

    tokenizer_json = model_file(source, "tokenizer.json")
    settings = saved_feature_extractor_settings(source)
    num_mel_bins = model_num_mel_bins(source)
    reason = None
    if tokenizer_json is None:
        if model_file(source, "vocab.json") is None or model_file(source, "merges.txt") is None:
            raise ConfigError(f"{source} has no tokenizer: neither tokenizer.json nor vocab.json + merges.txt")
        reason = "the model has no tokenizer.json, only a slow tokenizer's vocab.json/merges.txt"
    elif settings is None:
        reason = "the model has no saved feature extractor settings"
    elif settings.get("feature_size") == num_mel_bins and any(
            settings.get(key, value) != value for key, value in WHISPER_AUDIO.items()):
        # (with other mel bins than the model's, load_processor makes a default extractor: Whisper's settings)
        reason = f"its feature extractor's settings differ from Whisper's {WHISPER_AUDIO}"
    if reason is None:
        try:
            tokenizer = LabelTokenizer(tokenizer_json, LANGUAGE_CODE, TASK)
        except ValueError as exc:  # no Whisper special tokens in it
            reason = str(exc)
    if reason is not None:
        log.warning("featurizing with transformers' WhisperProcessor (slower to load: it imports torch): %s", reason)
        processor = load_processor(source)
        return processor.feature_extractor, processor.tokenizer
    if settings.get("feature_size") != num_mel_bins:  # as load_processor: the model's mel bins win
        log.warning("feature extractor has %s mel bins but the model expects %s; using the model's",
                    settings.get("feature_size"), num_mel_bins)
    return LogMelExtractor(feature_size=num_mel_bins), tokenizer


def load_model(source: str, device: str | None = None, dtype=None):
    """WhisperForConditionalGeneration with Korean/transcribe generation settings and SDPA attention; device and
    dtype (e.g. from inference_placement()) place and cast the loaded copy for decoding."""
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(source, attn_implementation="sdpa")
    configure_generation(model)
    if device or dtype is not None:
        model.to(device=device, dtype=dtype)
    return model


CUDNN_ATTENTION_VARIABLE = "ASR_CUDNN_ATTENTION"


def cudnn_attention_allowed() -> bool:
    """ASR_CUDNN_ATTENTION=1 lets PyTorch give attention to cuDNN while we train and decode (off by default)."""
    value = os.environ.get(CUDNN_ATTENTION_VARIABLE, "").strip()
    if value not in ("", "0", "1"):
        raise ConfigError(f"{CUDNN_ATTENTION_VARIABLE} must be 0 or 1, got {value!r}")
    return value == "1"


def attention_description() -> str:
    """What the training summary and the report record about attention."""
    return "sdpa, cuDNN allowed (ASR_CUDNN_ATTENTION=1)" if cudnn_attention_allowed() else "sdpa without cuDNN"


_cudnn_lock = threading.Lock()
_cudnn_users = 0  # trainings and decodes inside attention_without_cudnn, in any thread
_cudnn_before: bool | None = None  # the flag as the first of them found it


@contextlib.contextmanager
def attention_without_cudnn():
    """Training and decoding run in this: cuDNN is taken out of PyTorch's attention backends (flash, memory-efficient
    and math stay) and put back as it was once the last training or decode in the process leaves, in whatever
    thread. The flag is process-wide, so while one is inside, the whole process runs attention without cuDNN.
    Why: on an H100 with torch 2.11, half-precision attention went to cuDNN first, and cuDNN built an execution plan
    for each new shape. The report's first bf16 decode of 32 clips averaged 39 ms a decoder step (14 to 88 ms a
    call) against 8.5 ms when the same clips were decoded again; decoding meets a new (rows, cache length) pair at
    nearly every step, packed training a new padded label length at nearly every step (docs/BENCHMARKS.md, "cuDNN
    attention"). A CPU is unaffected. ASR_CUDNN_ATTENTION=1 leaves cuDNN in."""
    global _cudnn_users, _cudnn_before
    import torch

    flags = torch.backends.cuda
    if cudnn_attention_allowed():
        yield
        return
    with _cudnn_lock:
        if _cudnn_users == 0:
            _cudnn_before = flags.cudnn_sdp_enabled()
            flags.enable_cudnn_sdp(False)
        _cudnn_users += 1
    try:
        yield
    finally:
        with _cudnn_lock:
            _cudnn_users -= 1
            if _cudnn_users == 0:
                flags.enable_cudnn_sdp(_cudnn_before)


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) at or above which it multiplies bfloat16 in hardware
ONEDNN_BF16_ISAS = ("ALL", "AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX10")


def native_bf16(hardware: bool, onednn_cap: str | None, onednn_bf16: bool) -> bool:
    """hardware: the CPU has AVX512-BF16 or AMX; onednn_cap: ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) when set;
    onednn_bf16: oneDNN says it can run bf16. bf16 linear layers and matmuls run in oneDNN, so a cap below
    AVX512_CORE_BF16 (an AVX2-only CPU emulated on a newer one) makes bf16 several times slower than float32 there."""
    capped = onednn_cap is not None and not onednn_cap.strip().upper().startswith(ONEDNN_BF16_ISAS)
    return hardware and onednn_bf16 and not capped


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX, and oneDNN allowed to use them: bfloat16 about twice as fast as float32 here."""
    import torch

    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    hardware = any(probe() for probe in probes if probe is not None)
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
    onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return native_bf16(hardware, cap, onednn() if onednn is not None else True)


def inference_device_and_dtype(prefer_bf16: bool, cuda_available: bool, cuda_bf16: bool,
                               cpu_bf16: bool) -> tuple[str, str]:
    """Where and in what precision a model decodes, from what the machine has (a pure function, tested without a
    GPU): a GPU decodes in bfloat16 where it supports it, else float16; a CPU in bfloat16 only where it multiplies
    bf16 in hardware (AVX512-BF16/AMX), else float32. prefer_bf16=False (--float32) keeps float32 everywhere."""
    if cuda_available:
        return "cuda", ("bfloat16" if cuda_bf16 else "float16") if prefer_bf16 else "float32"
    return "cpu", "bfloat16" if prefer_bf16 and cpu_bf16 else "float32"


def inference_placement(prefer_bf16: bool = True) -> tuple[str, "object"]:
    """(device, torch dtype) for this machine; weights stay float32 on disk, only the decoding copy is cast."""
    import torch

    cuda = torch.cuda.is_available()
    device, dtype = inference_device_and_dtype(prefer_bf16, cuda, cuda and torch.cuda.is_bf16_supported(),
                                               not cuda and cpu_has_native_bf16())
    return device, getattr(torch, dtype)


def inference_dtype(prefer_bf16: bool = True):
    """The torch dtype of inference_placement."""
    return inference_placement(prefer_bf16)[1]


def configure_generation(model) -> None:
    gc = model.generation_config
    gc.language = LANGUAGE
    gc.task = TASK
    gc.forced_decoder_ids = None  # the prefix comes from language/task, not from the deprecated forced ids


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
