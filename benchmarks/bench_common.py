"""What the benchmarks share, with no Dagster import, so that the GPU benchmark runs on a machine without Dagster:
the machine's CPU (model and SIMD flags), the seed recipe (../shared/reference/seed_recipe.py) run as the notebook
ran it, and our own featurization of a corpus."""

from __future__ import annotations

import importlib.util
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import pandas as pd

SEED_RECIPE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "seed_recipe.py"
# a Whisper directory minus its weights: what a random initialisation of its configuration needs
MODEL_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
               "normalizer.json", "added_tokens.json")


def cpu_info() -> dict:
    info = {}
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Flags", "CPU family", "Model", "CPU max MHz"):
                info[key.strip()] = value.strip()
    except OSError:
        info["Model name"] = platform.processor()
    try:  # the clock a virtual machine reports (lscpu often has no "CPU max MHz" there)
        with open("/proc/cpuinfo") as cpuinfo:
            info["cpu_mhz"] = next(line.split(":")[1].strip() for line in cpuinfo if line.startswith("cpu MHz"))
    except (OSError, StopIteration):
        pass
    info["recorded_at_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    flags = set(info.pop("Flags", "").split())
    info["simd_flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "sse4", "fma")))
    return info


def cpu_tag(cpu: dict | None = None) -> str:
    """The machine kind in a result file's name (the project's CPUs differ: AMX, AVX512-BF16, AVX2 only), so a run
    on one kind never overwrites another's figures of the same day."""
    flags = set((cpu or cpu_info())["simd_flags"])
    if "amx_bf16" in flags:
        return "amx"
    if "avx512_bf16" in flags:
        return "avx512bf16"
    return "avx512" if "avx512f" in flags else "avx2" if "avx2" in flags else "novec"


def seed_module(path: Path = SEED_RECIPE):
    spec = importlib.util.spec_from_file_location("seed_recipe", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def keep_cudnn_attention() -> None:
    """Our training and decoding leave cuDNN among PyTorch's attention backends (ASR_CUDNN_ATTENTION=1), as before
    they took it out (asr_pipeline.core.model.attention_without_cudnn): --keep-cudnn-sdpa, to compare. The seed
    recipe's calls run outside our code and always keep PyTorch's defaults, cuDNN included, as the notebook does."""
    os.environ["ASR_CUDNN_ATTENTION"] = "1"


def attention_label(kept: bool) -> str:
    return ("ours and the seed's: PyTorch's defaults, cuDNN included (ASR_CUDNN_ATTENTION=1)" if kept else
            "ours: without cuDNN (attention_without_cudnn); the seed's: PyTorch's defaults, cuDNN included")


def seed_train(seed, features_dir: Path, out: Path, model_dir: str, steps: int, batch_size: int):
    """The seed's own train(); its Trainer is captured (the seed does not save the model) to score the result."""
    import transformers

    captured = {}
    original = transformers.Seq2SeqTrainer

    class Capturing(original):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            captured["trainer"] = self

    transformers.Seq2SeqTrainer = Capturing
    try:
        result = seed.train(str(features_dir), str(out), model_dir, steps, batch_size)
    finally:
        transformers.Seq2SeqTrainer = original
    return result, captured["trainer"].model


def seed_evaluate(features_dir: Path, model_dir: str, batch_size: int = 16, seed=None) -> dict:
    """The notebook's evaluation: Seq2SeqTrainer.predict, predict_with_generate, generation_max_length=225 (fp16
    where a GPU is present, as the notebook trained)."""
    import torch
    from datasets import load_from_disk
    from transformers import (Seq2SeqTrainer, Seq2SeqTrainingArguments, WhisperForConditionalGeneration,
                              WhisperProcessor)

    seed = seed or seed_module()
    dataset = load_from_disk(str(features_dir))
    processor = WhisperProcessor.from_pretrained(model_dir, language="Korean", task="transcribe")
    model = WhisperForConditionalGeneration.from_pretrained(model_dir)
    model.generation_config.forced_decoder_ids = None
    model.generation_config.language, model.generation_config.task = "korean", "transcribe"
    args = Seq2SeqTrainingArguments(output_dir="/tmp/seed_eval", per_device_eval_batch_size=batch_size,
                                    predict_with_generate=True, generation_max_length=225, report_to=[],
                                    fp16=torch.cuda.is_available())
    trainer = Seq2SeqTrainer(model=model, args=args, data_collator=seed.SeedCollator(processor),
                             processing_class=processor.feature_extractor)
    started = time.perf_counter()
    output = trainer.predict(dataset)
    seconds = time.perf_counter() - started
    pad = processor.tokenizer.pad_token_id
    generated = (output.predictions != pad) & (output.predictions != -100)
    return {"utterances": len(dataset), "seconds": round(seconds, 3),
            "utterances_per_s": round(len(dataset) / seconds, 4),
            "mean_generated_tokens": round(float(generated.sum(axis=1).mean()), 1),
            "texts": seed_texts(output.predictions, processor.tokenizer)}


def seed_texts(predictions: np.ndarray, tokenizer) -> list[str]:
    """The seed's predictions as texts, in the dataset's order (the seed's CSV order), so that callers score the
    seed as they score ours. predict pads the batches' predictions to one length with -100, which the tokenizer
    cannot decode; the prompt (start, language, task) and end tokens are special and dropped."""
    return tokenizer.batch_decode(np.where(predictions == -100, tokenizer.pad_token_id, predictions),
                                  skip_special_tokens=True)


def split_by_episode(frame: pd.DataFrame, test: int, valid: int) -> pd.DataFrame:
    """Adds group (the episode: the file name without its segment number) and split: the last episodes test, the
    ones before valid, the rest train."""
    frame = frame.copy()
    frame["group"] = [Path(p).stem.rsplit("_", 1)[0] for p in frame["audio_path"]]
    sizes = frame.groupby("group", sort=False).size()
    split, counts = {}, {"test": 0, "valid": 0}
    for group, size in reversed(list(sizes.items())):
        name = "test" if counts["test"] < test else ("valid" if counts["valid"] < valid else "train")
        counts[name] = counts.get(name, 0) + int(size)
        split[group] = name
    frame["split"] = frame["group"].map(split)
    return frame


def our_shard(frame: pd.DataFrame, out: Path, model: str):
    """What resampled_dataset and featurized_shards make of frame (audio_path, transcript, group, split)."""
    from asr_pipeline.core.audio import resample_manifest
    from asr_pipeline.core.audio_shard import AudioShard
    from asr_pipeline.core.features import FeatureShard, featurize_shard
    from asr_pipeline.core.model import load_processor

    manifest = pd.DataFrame({"id": range(len(frame)), "source_path": frame["audio_path"],
                             "audio_path": frame["audio_path"], "transcript": frame["transcript"],
                             "group": frame["group"], "split": frame["split"]})
    (out / "audio").mkdir(parents=True), (out / "features").mkdir(parents=True)
    resample_manifest(manifest, out / "audio", emit=lambda _: None)
    processor = load_processor(model)
    featurize_shard(AudioShard(out / "audio"), out / "features", processor.feature_extractor, processor.tokenizer,
                    model, emit=lambda _: None)
    return FeatureShard(out / "features")


def one_split_shard(frame: pd.DataFrame, split: str, out: Path, model: str):
    """our_shard with every clip in one split, each its own episode."""
    return our_shard(frame.assign(group=[f"id:{i}" for i in range(len(frame))], split=split), out, model)


def isa_limits() -> dict:
    """The instruction sets PyTorch's kernels may use here, and the variables that hold them below the CPU's own."""
    import torch

    names = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
    return {"pytorch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "held_by": {name: os.environ[name] for name in names if os.environ.get(name)}}


def random_whisper(files: Path, out: Path, config_overrides: dict) -> str:
    """A seeded random initialisation of the Whisper configuration in `files` (MODEL_FILES: no weights needed), with
    config_overrides applied; its feature extractor follows num_mel_bins. Saved to out with the tokenizer files."""
    import json
    import shutil

    import torch
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    out.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (Path(files) / name).exists():
            shutil.copy(Path(files) / name, out / name)
    config = WhisperConfig.from_pretrained(out)
    config.update(config_overrides)
    for name in ("preprocessor_config.json", "processor_config.json"):  # transformers 5 keeps it in the latter
        if "num_mel_bins" in config_overrides and (out / name).exists():
            settings = json.loads((out / name).read_text())
            settings.get("feature_extractor", settings)["feature_size"] = config.num_mel_bins
            (out / name).write_text(json.dumps(settings, indent=2))
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # initialising 809M weights on a CPU is slow
        model = WhisperForConditionalGeneration(config)
    # the source's generation settings (language and task ids), not the defaults a new model would save
    model.generation_config = GenerationConfig.from_pretrained(out)
    model.save_pretrained(out)
    return str(out)


def time_steps() -> list[float]:
    """Makes train_whisper's Trainer record each optimizer step's wall time (CUDA synchronised), so steady-state
    speed can be told apart from a run's fixed costs (dataloader start, validation, checkpoint saving, loading the
    best checkpoint), which dominate short runs on a GPU. Returns the list the next training fills."""
    import torch
    from transformers import TrainerCallback

    from asr_pipeline.core import training

    seconds: list[float] = []
    original = getattr(training.shard_trainer_class, "original", training.shard_trainer_class)

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            torch.cuda.synchronize() if torch.cuda.is_available() else None
            seconds.append(time.perf_counter() - self.started)

    def timed_trainer_class():
        class TimedTrainer(original()):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.add_callback(StepTimer())

        return TimedTrainer

    timed_trainer_class.original = original
    training.shard_trainer_class = timed_trainer_class
    return seconds


def step_summary(seconds: list[float], utterances_per_step: float, train_runtime_s: float) -> dict:
    """Steady state: the median step after the first five (kernel selection, the dataloader's first batches)."""
    import statistics

    if not seconds:
        return {"step_timings_n": 0}
    steady = seconds[5:] or seconds
    median = statistics.median(steady)
    return {"step_timings_n": len(steady), "steady_state": len(seconds) > 5,  # False: the median includes warm-up
            "step_ms_median": round(1000 * median, 1),
            "step_ms_mean": round(1000 * sum(seconds) / len(seconds), 1), "step_ms_first": round(1000 * seconds[0], 1),
            "steps_total_s": round(sum(seconds), 2), "outside_steps_s": round(train_runtime_s - sum(seconds), 2),
            "utterances_per_s_steady": round(utterances_per_step / median, 2)}
