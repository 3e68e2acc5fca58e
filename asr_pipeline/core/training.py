"""Fine-tuning Whisper with Seq2SeqTrainer on featurized shards (memory-mapped; nothing is loaded up front)."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from asr_pipeline.core.features import FeatureShard, rebuild_padded
from asr_pipeline.core.storage import write_json

# The validation measure the best checkpoint is chosen on: the one promotion decides on (champion.PROMOTION_METRIC).
SELECTION_METRIC = "cer_normalized"


@dataclass
class TrainingSettings:
    """Defaults are the notebook's production values."""

    learning_rate: float = 1e-5
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 500
    max_steps: int = 4000
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

    def validate(self) -> None:
        positive = ["learning_rate", "batch_size", "gradient_accumulation_steps", "max_steps", "eval_steps",
                    "save_steps", "logging_steps", "generation_max_length", "max_eval_samples"]
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"training setting {name} must be > 0, got {getattr(self, name)}")
        if self.warmup_steps < 0:
            raise ValueError("training setting warmup_steps must be >= 0")
        if self.generation_max_length > 444:  # 448 target positions minus the 4-token Korean/transcribe prefix
            raise ValueError("generation_max_length must be at most 444")


class FeatureRows:
    """A torch-style dataset over chosen rows of one or more feature shards."""

    def __init__(self, shards: Sequence[FeatureShard], split: str, limit: int | None = None):
        self.shards = list(shards)
        self.positions = [(s, i) for s, shard in enumerate(self.shards) for i in shard.split_positions(split)]
        if limit is not None:
            self.positions = self.positions[:limit]

    def __len__(self) -> int:
        return len(self.positions)

    def label_lengths(self) -> list[int]:
        return [int(self.shards[s].index["label_length"].iloc[i]) for s, i in self.positions]

    def __getitem__(self, k: int) -> dict[str, Any]:
        s, i = self.positions[k]
        shard = self.shards[s]
        row = shard.index.iloc[i]
        return {"frames": np.asarray(shard.frames(i)), "pad_value": float(row["pad_value"]),
                "labels": list(row["labels"])}

    def row(self, k: int):
        s, i = self.positions[k]
        return self.shards[s].index.iloc[i]

    def groups(self) -> np.ndarray:
        """Each row's episode (the manifest's `group`), read column-wise: fast on millions of rows."""
        columns = [shard.index["group"].astype(str).to_numpy() for shard in self.shards]
        return np.array([columns[s][i] for s, i in self.positions], dtype=object)

    def subset(self, chosen) -> "FeatureRows":
        """The same shards, only the rows at `chosen` (indices into this dataset), in that order."""
        out = object.__new__(type(self))
        out.__dict__.update(self.__dict__)
        out.positions = [self.positions[int(k)] for k in chosen]
        return out


@dataclass
class SpeechSeq2SeqCollator:
    """Pads a batch: rebuilds Whisper's 30 s inputs and pads labels with -100.

    The tokenizer puts <|startoftranscript|> (decoder_start_token_id, 50258 for OpenAI's models) first; the model
    prepends it again when it shifts labels right, so it is stripped here. (The notebook compared with BOS, 50257,
    which never matches, and trained on a doubled start token.)
    """

    decoder_start_token_id: int
    pad_label: int = -100

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        inputs = np.stack([rebuild_padded(f["frames"], f["pad_value"]) for f in features])
        labels = [list(f["labels"]) for f in features]
        if labels and all(seq and seq[0] == self.decoder_start_token_id for seq in labels):
            labels = [seq[1:] for seq in labels]
        width = max(len(seq) for seq in labels)
        padded = torch.full((len(labels), width), self.pad_label, dtype=torch.long)
        for row, seq in enumerate(labels):
            padded[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        return {"input_features": torch.from_numpy(inputs), "labels": padded}


def _shard_trainer_class():
    from transformers import Seq2SeqTrainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class ShardTrainer(Seq2SeqTrainer):
        """Groups by the label lengths stored in the shard index, instead of reading every item to measure it."""

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset, FeatureRows):
                return LengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                            lengths=dataset.label_lengths())
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            if self.args.train_sampling_strategy == "group_by_length" and isinstance(eval_dataset, FeatureRows):
                return LengthGroupedSampler(self.args.eval_batch_size, lengths=eval_dataset.label_lengths())
            return super()._get_eval_sampler(eval_dataset)

    return ShardTrainer


def _metrics_function(tokenizer, policy):
    from asr_pipeline.core.text import error_rates

    def compute_metrics(prediction) -> dict[str, float]:
        predictions, labels = prediction.predictions, prediction.label_ids
        labels = np.where(labels != -100, labels, tokenizer.pad_token_id)
        predictions = np.where(predictions != -100, predictions, tokenizer.pad_token_id)
        hypotheses = tokenizer.batch_decode(predictions, skip_special_tokens=True)
        references = tokenizer.batch_decode(labels, skip_special_tokens=True)
        pairs = [(r, h) for r, h in zip(references, hypotheses) if r.strip()]
        rates = error_rates([r for r, _ in pairs], [h for _, h in pairs], policy)
        return {"cer": rates.cer, "cer_normalized": rates.cer_normalized, "wer": rates.wer}

    return compute_metrics


def _progress_callback(emit: Callable[[str], None]):
    from transformers import TrainerCallback

    class EmitLogs(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs:
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
                emit(f"step {state.global_step}/{state.max_steps}: {shown}")

    return EmitLogs()


def train_whisper(
    base_source: str,
    shards: Sequence[FeatureShard],
    out_dir: Path,
    settings: TrainingSettings,
    emit: Callable[[str], None] = print,
    work_dir: Path | None = None,
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
    from transformers.trainer_utils import get_last_checkpoint

    from asr_pipeline.core.model import cpu_has_native_bf16, load_model, load_processor
    from asr_pipeline.core.validation import choose_validation

    settings.validate()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir / "trainer"
    train_rows = FeatureRows(shards, "train")
    valid_rows = FeatureRows(shards, "valid")
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
    # a short run (max_steps < eval_steps) still validates once, at its end, so best-model selection has a score
    eval_steps = min(settings.eval_steps, settings.max_steps)
    on_gpu = torch.cuda.is_available()
    # bf16 autocast keeps float32 master weights: the GPU's fast path, and on CPUs with AMX/AVX512-BF16 about twice
    # the speed of float32 (docs/BENCHMARKS.md)
    bf16 = torch.cuda.is_bf16_supported() if on_gpu else (settings.cpu_bf16 and cpu_has_native_bf16())
    workers = settings.dataloader_num_workers if settings.dataloader_num_workers is not None else (4 if on_gpu else 0)
    args = Seq2SeqTrainingArguments(
        output_dir=str(work_dir),
        per_device_train_batch_size=settings.batch_size,
        per_device_eval_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation_steps,
        learning_rate=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        max_steps=settings.max_steps,
        eval_strategy=strategy,
        eval_steps=eval_steps,
        # checkpoints: at every evaluation (best-model selection needs them) and to resume a killed run
        save_strategy="steps",
        save_steps=eval_steps if evaluate else min(settings.save_steps, settings.max_steps),
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
        activation_checkpointing=settings.gradient_checkpointing,  # transformers 5 name for gradient checkpointing
        torch_compile=settings.torch_compile,
        logging_steps=settings.logging_steps,
        report_to=["tensorboard"],
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_num_workers=workers,
        dataloader_pin_memory=on_gpu,
        seed=settings.seed,
        disable_tqdm=False,
    )
    ShardTrainer = _shard_trainer_class()
    previous_logdir = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(work_dir / "tensorboard")
    resume_from = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
    try:
        trainer = ShardTrainer(
            model=model,
            args=args,
            train_dataset=train_rows,
            eval_dataset=valid_rows if evaluate else None,
            data_collator=SpeechSeq2SeqCollator(model.config.decoder_start_token_id),
            processing_class=processor.feature_extractor,
            compute_metrics=_metrics_function(processor.tokenizer, policy) if evaluate else None,
            callbacks=[_progress_callback(emit)],
        )
        emit(f"fine-tuning {base_source} on {len(train_rows)} clips ({len(valid_rows)} for validation, "
             f"{validation.source}, best checkpoint by validation {SELECTION_METRIC}), "
             f"{settings.max_steps} steps of {settings.batch_size}")
        if resume_from:
            emit(f"resuming from {resume_from} (a previous run of the same data and settings was interrupted)")
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
    summary = {
        "base_model": base_source,
        "train_rows": len(train_rows),
        **validation.as_summary(),
        "selection_metric": SELECTION_METRIC if evaluate else None,
        "steps": int(trainer.state.global_step),
        "epochs": round(float(trainer.state.epoch or 0), 3),
        "train_loss": float(result.training_loss),
        "first_logged_loss": train_losses[0] if train_losses else None,
        "last_logged_loss": train_losses[-1] if train_losses else None,
        "best_valid_cer_normalized": best,
        "best_valid_cer": next((h["eval_cer"] for h in evals if h.get(f"eval_{SELECTION_METRIC}") == best), None),
        "best_checkpoint_step": _step_of(trainer.state.best_model_checkpoint),
        "valid_cer_history": [{"step": h["step"], "cer": h["eval_cer"],
                               "cer_normalized": h.get(f"eval_{SELECTION_METRIC}")} for h in evals],
        "settings": asdict(settings),
        "device": "cuda" if on_gpu else "cpu",
        "precision": "bf16 autocast" if bf16 else ("fp16 autocast" if on_gpu else "fp32"),
        "train_runtime_s": round(float(result.metrics.get("train_runtime", 0.0)), 3),
        "train_samples_per_s": round(float(result.metrics.get("train_samples_per_second", 0.0)), 4),
        "resumed_from_step": _step_of(resume_from),
    }
    if not math.isfinite(summary["train_loss"]):
        raise FloatingPointError(f"training loss is {summary['train_loss']}: the checkpoint would be garbage")
    write_json(out_dir / "training_summary.json", summary)
    return summary


def _step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def training_fingerprint(base_source: str, shard_metas: Sequence[dict], settings: TrainingSettings) -> str:
    """Identifies a training job: the same base model, features and settings give the same work directory."""
    import hashlib
    import json

    payload = json.dumps([base_source, list(shard_metas), asdict(settings)], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
