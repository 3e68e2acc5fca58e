"""Fine-tuning Whisper with Seq2SeqTrainer on featurized shards (memory-mapped; nothing is loaded up front)."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.packing import PackedWindows, gpu_packing_hint, window_frames_limit, windows_per_step
from asr_pipeline.core.storage import write_json
from asr_pipeline.core.trainer_hooks import (checkpointing_argument, completion_marker, duration_text,
                                             last_complete_checkpoint, metrics_function, progress_callback,
                                             shard_trainer_class, step_of)
from asr_pipeline.core.training_budget import projected_wall_time, training_steps
from asr_pipeline.core.training_data import FeatureRows, SpeechSeq2SeqCollator, duplicate_audio_ids

# The validation measure the best checkpoint is chosen on: the one promotion decides on (promotion.PROMOTION_METRIC).
SELECTION_METRIC = "cer_normalized"


@dataclass
class TrainingSettings:
    """Defaults are the notebook's production values."""

    learning_rate: float = 1e-5
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 500
    max_steps: int | None = 4000  # the budget: a number of optimizer steps...
    epochs: float | None = None  # ...or passes over the train split (then max_steps must be None)
    eval_steps: int = 1000
    save_steps: int = 1000
    logging_steps: int = 25
    generation_max_length: int = 225
    max_eval_samples: int = 500  # validation decoding during training is capped; the test report decodes all
    seed: int = 42
    dataloader_num_workers: int | None = None  # None: 4 with a GPU (pinned memory), 0 on CPU
    group_by_length: bool = True  # batches of similar label length: less padding in the decoder
    freeze_encoder: bool = False  # train the decoder only: no encoder backward pass
    gradient_checkpointing: bool = False  # less activation memory for more compute
    torch_compile: bool = False
    cpu_bf16: bool = True  # bf16 autocast on CPUs that multiply bf16 in hardware (AVX512-BF16/AMX); fp32 elsewhere
    # train on packed windows: consecutive clips of an episode in one Whisper input (core/packing.py); batch_size
    # stays the utterances an optimizer step trains on, so a step takes about batch_size / (clips a window) windows
    packing: bool = True
    # the longest packed window. The encoder still sees 30 s; a shorter window holds fewer clips (less speed-up) but
    # puts more of them near the input's start, where every clip sits in service. 15 s: 3.0-3.6x the utterances a
    # second of unpacked training at about the same test CER; 30 s windows were 6.6x as fast but 4.8 points worse
    # (docs/BENCHMARKS.md). On a GPU a packed step of 4 windows gains nothing for whisper-base (0.95-0.99x on an
    # H200); a step of about 16 windows does (64 utterances at lr 4e-5: 3.1x), and training says so (gpu_packing_hint)
    packing_max_seconds: float = 15.0

    def validate(self) -> None:
        if (self.max_steps is None) == (self.epochs is None):
            raise ValueError("set one training budget: max_steps or epochs, not both and not neither "
                             f"(got max_steps={self.max_steps}, epochs={self.epochs})")
        positive = ["learning_rate", "batch_size", "gradient_accumulation_steps", "eval_steps", "save_steps",
                    "logging_steps", "generation_max_length", "max_eval_samples",
                    "max_steps" if self.max_steps is not None else "epochs"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"training setting {name} must be > 0, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError("training setting warmup_steps must be >= 0")
        if not 1.0 <= self.packing_max_seconds <= 30.0:  # Whisper's encoder input is 30 s
            raise ValueError(f"training setting packing_max_seconds must be between 1 and 30, got "
                             f"{self.packing_max_seconds}")
        if self.generation_max_length > 444:  # 448 target positions minus the 4-token Korean/transcribe prefix
            raise ValueError("generation_max_length must be at most 444")


def train_whisper(
    base_source: str,
    shards: Sequence[FeatureShard],
    out_dir: Path,
    settings: TrainingSettings,
    emit: Callable[[str], None] = print,
    work_dir: Path | None = None,
    exclude_ids: frozenset[int] | set[int] = frozenset(),
    previous_summary: dict | None = None,
    policy=None,
) -> dict:
    """Fine-tune `base_source` on the train split; save model + processor in out_dir (from_pretrained-ready).

    The best checkpoint is chosen on validation CER normalised by `policy` (default: the ASR_NORMALIZE_* policy),
    the metric promotion decides on, over an episode-stratified sample of the valid split (choose_validation).

    TensorBoard event files go to out_dir/tensorboard, the trainer's log history to out_dir/training_log.json.
    work_dir holds the trainer's intermediate checkpoints; when a killed run left some there, training resumes
    from the last one. Callers make work_dir specific to the data and settings (see training_fingerprint).
    """
    import torch
    from transformers import Seq2SeqTrainingArguments

    from asr_pipeline.core.model import (attention_description, attention_without_cudnn, cpu_has_native_bf16,
                                         load_model, load_processor)
    from asr_pipeline.core.validation import choose_validation

    settings.validate()
    attention = attention_description()  # ASR_CUDNN_ATTENTION checked before any work; recorded as in force now
    exclude_ids = frozenset(int(i) for i in exclude_ids)  # e.g. rows deleted from the table since featurization
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir / "trainer"
    duplicates = duplicate_audio_ids(shards)
    if duplicates:
        emit(f"leaving out {len(duplicates)} train/valid clips whose audio is an exact duplicate of a test clip")
    train_rows = FeatureRows(shards, "train", exclude_ids=exclude_ids | duplicates)
    valid_rows = FeatureRows(shards, "valid", exclude_ids=exclude_ids | duplicates)
    if len(train_rows) == 0:
        raise ValueError("the train split is empty: nothing to fine-tune on (check ASR_SPLIT_RATIOS and the data)")
    train_rows, valid_rows, validation = choose_validation(train_rows, valid_rows, settings.max_eval_samples,
                                                           settings.seed)
    if validation.warning:
        emit(f"WARNING: {validation.warning}")
    if policy is None:
        from asr_pipeline.core.settings import normalization_policy

        policy = normalization_policy()
    processor = load_processor(base_source)
    model = load_model(base_source)
    shard_mels = {shard.n_mels for shard in shards}
    if shard_mels != {model.config.num_mel_bins}:
        raise ValueError(f"features have {shard_mels} mel bins but the model expects {model.config.num_mel_bins}: "
                         "re-materialize featurized_shards for this base model")
    model.config.use_cache = False  # caching is for generation; training with it only wastes memory
    if settings.freeze_encoder:
        model.freeze_encoder()  # the frozen encoder runs forward only: no activations kept, no backward
    evaluate = len(valid_rows) > 0
    strategy = "steps" if evaluate else "no"
    # validation stays on single clips (as in service); training reads packed windows or single clips
    train_data = PackedWindows(train_rows, processor.tokenizer,
                               max_frames=window_frames_limit(settings.packing_max_seconds)) if settings.packing \
        else train_rows
    device_batch = windows_per_step(settings.batch_size, len(train_rows), len(train_data)) if settings.packing \
        else settings.batch_size
    if settings.packing:
        emit(f"packed {len(train_rows)} train clips into {len(train_data)} windows of at most "
             f"{settings.packing_max_seconds:g} s "
             f"({train_data.packing_factor():.2f} clips a window); a step takes {device_batch} windows, about "
             f"{device_batch * train_data.packing_factor():.3g} clips")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    max_steps = training_steps(settings, len(train_data), world_size, device_batch)
    # a short run (max_steps < eval_steps) still validates once, at its end, so best-model selection has a score
    eval_steps = min(settings.eval_steps, max_steps)
    on_gpu = torch.cuda.is_available()
    hint = gpu_packing_hint(device_batch, settings.batch_size, settings.learning_rate, train_data.packing_factor(),
                            settings.gradient_accumulation_steps, len(train_data)) if on_gpu and settings.packing \
        else None
    if hint and int(os.environ.get("RANK", "0")) == 0:  # once, not from every process of a multi-GPU run
        emit(hint)
    # bf16 autocast keeps float32 master weights: the GPU's fast path, and on CPUs with AMX/AVX512-BF16 about twice
    # the speed of float32 (docs/BENCHMARKS.md)
    bf16 = torch.cuda.is_bf16_supported() if on_gpu else (settings.cpu_bf16 and cpu_has_native_bf16())
    workers = settings.dataloader_num_workers if settings.dataloader_num_workers is not None else (4 if on_gpu else 0)
    args = Seq2SeqTrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=device_batch,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        max_steps=max_steps,
        eval_strategy=strategy,
        eval_steps=eval_steps,
        # checkpoints: at every evaluation (best-model selection needs them) and to resume a killed run
        save_strategy="steps",
        save_steps=eval_steps if evaluate else min(settings.save_steps, max_steps),
        save_total_limit=2,
        load_best_model_at_end=evaluate,
        metric_for_best_model=SELECTION_METRIC if evaluate else None,
        greater_is_better=False,
        predict_with_generate=True,
        generation_max_length=settings.generation_max_length,
        bf16=bf16,
        fp16=on_gpu and not bf16,
        use_cpu=not on_gpu,  # transformers asks for it explicitly before it allows bf16 on a CPU
        optim="adamw_torch_fused" if on_gpu else "adamw_torch",
        train_sampling_strategy="group_by_length" if settings.group_by_length else "random",
        **checkpointing_argument(settings.gradient_checkpointing),
        torch_compile=settings.torch_compile,
        logging_steps=settings.logging_steps,
        # the default (True) logs a NaN/inf step as the mean of earlier ones, 0.0 on the first: a model that went
        # NaN would look trained, and the blocking check training_loss_finite could never see it
        logging_nan_inf_filter=False,
        report_to=["tensorboard"],
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=workers,
        # workers live across epochs (and validation's across evaluations): forked again every epoch, they slowed
        # each epoch's first step by 0.8-0.9 s on a 2-vCPU machine (benchmarks/epoch_stall_probe.py)
        dataloader_persistent_workers=workers > 0,
        dataloader_pin_memory=on_gpu,
        seed=settings.seed,
        disable_tqdm=False,
    )
    ShardTrainer = shard_trainer_class()
    previous_logdir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(work_dir / "tensorboard")
    resume_from = last_complete_checkpoint(work_dir, emit)
    device = "cuda" if on_gpu else "cpu"
    projected_s, projection = projected_wall_time(max_steps - (step_of(resume_from) or 0), settings, device,
                                                  base_source, previous_summary, device_batch)
    try:
        trainer = ShardTrainer(
            model=model,
            args=args,
            train_dataset=train_data,
            eval_dataset=valid_rows if evaluate else None,
            data_collator=SpeechSeq2SeqCollator(model.config.decoder_start_token_id),
            processing_class=processor.feature_extractor,
            compute_metrics=metrics_function(processor.tokenizer, policy) if evaluate else None,
            callbacks=[progress_callback(emit), completion_marker()],
        )
        budget = f"{settings.epochs:g} epochs = " if settings.max_steps is None else ""
        emit(f"fine-tuning {base_source} on {len(train_rows)} clips ({len(valid_rows)} for validation, "
             f"{validation.source}, best checkpoint by validation {SELECTION_METRIC}), "
             f"{budget}{max_steps} steps of {device_batch}{' windows' if settings.packing else ''}")
        emit("projected wall time: " + (f"{duration_text(projected_s)} ({projection})" if projected_s is not None
                                        else f"unknown ({projection})"))
        if resume_from:
            emit(f"resuming from {resume_from} (a previous run of the same data and settings was interrupted)")
        with attention_without_cudnn():
            result = trainer.train(resume_from_checkpoint=resume_from)
    finally:
        if previous_logdir is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = previous_logdir
    if not trainer.is_world_process_zero():
        return {}  # under torchrun, rank 0 alone writes the checkpoint and the logs
    model = trainer.model
    model.config.use_cache = True
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    history = trainer.state.log_history
    write_json(out_dir / "training_log.json", history)
    if (work_dir / "tensorboard").is_dir():
        shutil.move(str(work_dir / "tensorboard"), str(out_dir / "tensorboard"))
    shutil.rmtree(work_dir, ignore_errors=True)  # intermediate checkpoints; the best one is saved above
    train_losses = [h["loss"] for h in history if "loss" in h]
    evals = [h for h in history if "eval_cer" in h]
    best = trainer.state.best_metric if evaluate else None
    steps_run = int(trainer.state.global_step) - (step_of(resume_from) or 0)  # what train_runtime_s covers
    runtime_s = float(result.metrics.get("train_runtime", 0.0))
    # counted as the Trainer counts samples (steps x windows a step), utterances as windows x clips a window
    packing_factor = len(train_rows) / len(train_data)
    windows_per_optimizer_step = device_batch * settings.gradient_accumulation_steps * world_size
    summary = {
        "base_model": base_source,
        "train_rows": len(train_rows),
        "excluded_ids": len(exclude_ids),
        **validation.as_summary(),
        "selection_metric": SELECTION_METRIC if evaluate else None,
        "steps": int(trainer.state.global_step),
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "train_loss": float(result.training_loss),
        "first_logged_loss": train_losses[0] if train_losses else None,
        "last_logged_loss": train_losses[-1] if train_losses else None,
        "best_valid_cer_normalized": best,
        "best_valid_cer": next((h["eval_cer"] for h in evals if h.get(f"eval_{SELECTION_METRIC}") == best), None),
        "best_checkpoint_step": step_of(trainer.state.best_model_checkpoint),
        "valid_cer_history": [{"step": h["step"], "cer": h["eval_cer"],
                               "cer_normalized": h.get(f"eval_{SELECTION_METRIC}")} for h in evals],
        "settings": asdict(settings),
        "device": device,
        "duplicate_audio_excluded": len(duplicates),
        "projected_wall_s": round(projected_s, 1) if projected_s is not None else None,
        "precision": "bf16 autocast" if bf16 else ("fp16 autocast" if on_gpu else "fp32"),
        "attention": attention,
        "train_runtime_s": round(runtime_s, 3),
        "train_samples_per_s": round(float(result.metrics.get("train_samples_per_second", 0.0)), 4),  # windows/s
        "resumed_from_step": step_of(resume_from),
        "steps_run": steps_run,
        "packing": settings.packing,
        "train_windows": len(train_data),
        "packing_factor": round(packing_factor, 3),
        "windows_per_step": device_batch,
        "windows_seen": int(trainer.state.global_step) * windows_per_optimizer_step,
        "utterances_seen": round(int(trainer.state.global_step) * windows_per_optimizer_step * packing_factor),
        "train_utterances_per_s": round(steps_run * windows_per_optimizer_step * packing_factor / runtime_s, 4)
        if runtime_s > 0 else None,
    }
    if not math.isfinite(summary["train_loss"]):
        raise FloatingPointError(f"training loss is {summary['train_loss']}: the checkpoint would be garbage")
    write_json(out_dir / "training_summary.json", summary)
    return summary


def training_fingerprint(base_source: str, shard_metas: Sequence[dict], settings: TrainingSettings) -> str:
    """Identifies a training job: the same base model, features and settings give the same work directory."""
    import hashlib
    import json

    payload = json.dumps([base_source, list(shard_metas), asdict(settings)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
