"""What train_whisper hands to Seq2SeqTrainer besides the model and data: the trainer class (length-grouped
sampling from the shard index, in an order that survives a resume), the validation metrics, the callbacks that
print progress and mark a checkpoint complete once its save finished, and arguments named as the installed
transformers names them; and finding the checkpoint to resume from."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from asr_pipeline.core.packing import PackedWindows
from asr_pipeline.core.storage import write_json
from asr_pipeline.core.training_data import FeatureRows

CHECKPOINT_COMPLETE = "asr_checkpoint_complete.json"  # written into a Trainer checkpoint once its save finished
CALIBRATION_STEPS = 10  # the pace is measured (and the projection printed again) after this many steps


def shard_trainer_class():
    from transformers import Seq2SeqTrainer
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
        """The stock sampler draws its order from the global RNG when an epoch's iterator is made. A training resumed
        in the middle of a later epoch makes that iterator before the checkpoint's RNG state is restored, so it saw
        another order than the uninterrupted run (with packed windows, a few windows an epoch, most kills land in a
        later epoch). Here the order is a function of (seed, epoch) alone."""

        def __init__(self, batch_size: int, lengths: list[int], seed: int):
            import torch

            super().__init__(batch_size, lengths=lengths, generator=torch.Generator())
            self.seed, self.epoch = seed, 0

        def set_epoch(self, epoch: int) -> None:  # the Trainer calls it before each epoch's iterator is made
            self.epoch = int(epoch)

        def __iter__(self):
            self.generator.manual_seed(self.seed + self.epoch)
            return super().__iter__()

    class ShardTrainer(Seq2SeqTrainer):
        """Groups by the label lengths stored in the shard index (or planned for packed windows), instead of reading
        every item to measure it."""

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            if self.args.train_sampling_strategy == "group_by_length" and isinstance(dataset,
                                                                                     (FeatureRows, PackedWindows)):
                return EpochSeededLengthGroupedSampler(
                    self.args.train_batch_size * self.args.gradient_accumulation_steps,
                    lengths=dataset.label_lengths(), seed=self.args.seed)
            return super()._get_train_sampler(train_dataset)

        def _get_eval_sampler(self, eval_dataset):
            if self.args.train_sampling_strategy == "group_by_length" and isinstance(eval_dataset, FeatureRows):
                return LengthGroupedSampler(self.args.eval_batch_size, lengths=eval_dataset.label_lengths())
            return super()._get_eval_sampler(eval_dataset)

    return ShardTrainer


def metrics_function(tokenizer, policy):
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


def progress_callback(emit: Callable[[str], None]):
    from transformers import TrainerCallback

    class EmitLogs(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            self.started, self.first_step, self.projected = time.monotonic(), state.global_step, False

        def on_log(self, args, state, control, logs=None, **kwargs):
            done = state.global_step - self.first_step
            if not self.projected and done >= min(CALIBRATION_STEPS, state.max_steps - self.first_step) and done > 0:
                self.projected = True  # the measured pace of this very run: the projection to trust
                per_step = (time.monotonic() - self.started) / done
                emit(f"measured {per_step:.3g} s/step over {done} steps: {state.max_steps - state.global_step} steps "
                     f"left take about {duration_text(per_step * (state.max_steps - state.global_step))} "
                     "(validation not included)")
            if logs:
                shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
                emit(f"step {state.global_step}/{state.max_steps}: {shown}")

    return EmitLogs()


def completion_marker():
    from transformers import TrainerCallback

    class MarkCompleteCheckpoints(TrainerCallback):
        """Trainer calls on_save after a checkpoint's every file is written: only then is it marked complete. A run
        killed while saving leaves an unmarked directory, which resuming skips (last_complete_checkpoint)."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    write_json(folder / CHECKPOINT_COMPLETE, {"step": state.global_step})

    return MarkCompleteCheckpoints()


def last_complete_checkpoint(work_dir: Path, emit: Callable[[str], None] = print) -> str | None:
    """The newest checkpoint-N in work_dir marked complete; unmarked ones (a save cut short by kill -9) are removed
    (by rank 0 only) so the resumed run can write that step again."""
    if not Path(work_dir).is_dir():
        return None
    found = sorted((step_of(str(p)) or -1, p) for p in Path(work_dir).glob("checkpoint-*") if p.is_dir())
    complete = [p for _, p in found if (p / CHECKPOINT_COMPLETE).is_file()]
    for _, path in found:
        if not (path / CHECKPOINT_COMPLETE).is_file():
            emit(f"ignoring {path.name}: its save never completed (the run was killed while writing it)")
            if int(os.environ.get("RANK", "0")) == 0:
                shutil.rmtree(path, ignore_errors=True)
    return str(complete[-1]) if complete else None


def step_of(checkpoint: str | None) -> int | None:
    if not checkpoint:
        return None
    try:
        return int(Path(checkpoint).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def duration_text(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else \
        f"{seconds // 60}m{seconds % 60:02d}s"


def checkpointing_argument(enabled: bool, arguments_class=None) -> dict:
    """Gradient checkpointing under the name this transformers takes: `activation_checkpointing` since 5.2x
    (`gradient_checkpointing` is then deprecated), `gradient_checkpointing` before (5.17, on the GPU image, has
    only that name: the GPU benchmark found train_whisper failing there). arguments_class: TrainingArguments."""
    import inspect

    if arguments_class is None:
        from transformers import TrainingArguments as arguments_class

    name = "activation_checkpointing" if "activation_checkpointing" in inspect.signature(
        arguments_class.__init__).parameters else "gradient_checkpointing"
    return {name: enabled}
