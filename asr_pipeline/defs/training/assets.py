"""finetuned_checkpoint: Whisper fine-tuned on the train split of every featurized batch (asr_pipeline.core.training),
in this process or under torchrun (launcher)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from asr_pipeline.core import training, work_dirs
from asr_pipeline.core.storage import read_json, write_json
from asr_pipeline.defs.common.io_managers import stage
from asr_pipeline.defs.common.resources import PipelineSettings, TranscriptDatabase
from asr_pipeline.defs.common.shards import GROUP, TRAINING_POOL, load_shards, partitions_metadata, storage_dir
from asr_pipeline.defs.training import checks, launcher, schedules
from asr_pipeline.defs.training.inputs import survey


class TrainingConfig(dg.Config):
    """Seq2SeqTrainer knobs; defaults are the notebook's production values."""

    learning_rate: float = Field(default=1e-5, description="peak learning rate (linear warmup, then linear decay)")
    batch_size: int = Field(default=16, description="per-device train and eval batch size")
    gradient_accumulation_steps: int = Field(default=1)
    warmup_steps: int = Field(default=500)
    max_steps: int | None = Field(default=None, description="the training budget in optimizer steps; 4000 when "
                                  "neither max_steps nor epochs is set")
    epochs: float | None = Field(default=None, description="the budget as passes over the train split, instead of "
                                 "max_steps (set one, not both); grows with the archive, steps do not")
    eval_steps: int = Field(default=1000, description="validate (and checkpoint) every N steps")
    save_steps: int = Field(default=1000, description="checkpoint interval when there is no validation split")
    logging_steps: int = Field(default=25)
    generation_max_length: int = Field(default=225)
    max_eval_samples: int = Field(default=500, description="cap on validation clips decoded at each evaluation")
    seed: int = Field(default=42)
    group_by_length: bool = Field(default=True, description="batches of similar label length")
    freeze_encoder: bool = Field(default=False, description="train the decoder only (no encoder backward)")
    gradient_checkpointing: bool = Field(default=False, description="less memory, more compute")
    torch_compile: bool = Field(default=False, description="torch.compile the model")
    cpu_bf16: bool = Field(default=True, description="bf16 autocast on CPUs with AMX/AVX512-BF16 (fp32 elsewhere)")
    packing: bool = Field(default=True, description="train on packed windows: an episode's consecutive clips in one "
                          "input of at most packing_max_seconds, texts joined by a space (validation and the report "
                          "stay on single clips); "
                          "batch_size stays the clips a step trains on")
    packing_max_seconds: float = Field(default=15.0, description="the longest packed window in seconds (1 to 30): "
                                       "shorter windows hold fewer clips, less speed-up, more clips at the input's start")
    dataloader_num_workers: int | None = Field(default=None, description="None: 4 with a GPU, 0 on CPU")
    launcher: str = Field(default="", description="inprocess | torchrun (a Dagster Pipes subprocess running "
                          "torch.distributed.run); empty: ASR_TRAIN_LAUNCHER, default inprocess")
    nproc_per_node: int = Field(default=0, description="torchrun processes (one per GPU); 0: ASR_TRAIN_PROCESSES, "
                                "default 1")


@dg.asset(group_name=GROUP, kinds={"pytorch"}, pool=TRAINING_POOL, check_specs=checks.TRAINING_CHECKS,
          description="Whisper fine-tuned on the train split of every featurized batch (memory-mapped, not loaded) "
          "with Seq2SeqTrainer; best checkpoint by normalised validation CER (an episode-stratified sample of the valid "
          "split; with none, held-out train episodes). Loads with WhisperForConditionalGeneration/"
          "WhisperProcessor.from_pretrained; TensorBoard logs in tensorboard/.")
def finetuned_checkpoint(context: dg.AssetExecutionContext, config: TrainingConfig,
                         featurized_shards: dict[str, Path], settings: PipelineSettings,
                         database: TranscriptDatabase):
    train_settings = _training_settings(config)
    # what this training reads, recorded before any shard is opened: a batch that lands from now on is newer than
    # this, and makes the next nightly_retraining tick train again (schedules.batches_changed_since_training)
    read = schedules.featurized_storage_ids(context.instance, featurized_shards)
    context.log.info(f"training reads {len(read)} featurized batches (storage ids: metadata "
                     f"{schedules.FEATURIZED_READ})")
    shards = load_shards(context, featurized_shards)
    # rows deleted from the table never reach the checkpoint; batches it cannot use are named in its metadata
    inputs = survey(context, database.reader(), featurized_shards)
    base_source = shards[0].meta["model"]
    out = stage(context, storage_dir(settings))
    launch = launcher.resolve(config.launcher, config.nproc_per_node)
    # Same features + settings -> same work directory, so a killed training resumes from its last checkpoint.
    metas = [s.meta for s in shards] + ([{"excluded_ids": sorted(inputs.exclude_ids)}] if inputs.exclude_ids else [])
    fingerprint = training.training_fingerprint(base_source, metas, train_settings)
    work_dir = Path(settings.home) / "work" / "finetuned_checkpoint" / fingerprint
    data = work_dirs.data_fingerprint(base_source, metas)
    with work_dirs.claimed(work_dir, data):  # this process trains there; its heartbeat shows it is alive
        # a training killed before new batches landed left checkpoints no rerun can resume: they go now
        work_dirs.remove_abandoned(work_dir.parent, keep=work_dir, data=data, emit=context.log.info)
        try:
            if launch.kind == "torchrun":
                shard_dirs = [featurized_shards[key] for key in sorted(featurized_shards)]
                summary = launcher.train_with_torchrun(context, launch, base_source, shard_dirs, out, work_dir,
                                                       train_settings, exclude_ids=inputs.exclude_ids)
            else:
                summary = training.train_whisper(base_source, shards, out, train_settings, emit=context.log.info,
                                                 work_dir=work_dir, exclude_ids=inputs.exclude_ids,
                                                 previous_summary=_previous_summary(settings))
        except Exception:
            # a training that diverged (NaN loss) stops before its checkpoint is published; record the failed
            # check too, so the UI shows why evaluation never ran
            if (out / "training_log.json").exists() and not (result := checks.training_loss_finite(out)).passed:
                yield result
            raise
    summary["launcher"] = launch.describe()
    if summary.get("validation_warning"):  # no valid split: a held-out slice of train (or nothing) chose the model
        context.log.warning(summary["validation_warning"])
    summary["partitions"] = sorted(featurized_shards)
    summary.update(inputs.summary())
    write_json(out / "training_summary.json", summary)
    result = checks.training_loss_finite(out)
    yield dg.Output(out, metadata={
        **inputs.metadata(),
        **{k: v for k, v in summary.items() if isinstance(v, (int, float, str)) and v is not None},
        **partitions_metadata(featurized_shards, shards),
        schedules.FEATURIZED_READ: dg.MetadataValue.json(read),
        "tensorboard": dg.MetadataValue.path(str(storage_dir(settings) / "finetuned_checkpoint" / "tensorboard")),
    })
    yield result


def _training_settings(config: TrainingConfig) -> training.TrainingSettings:
    values = config.model_dump(exclude={"launcher", "nproc_per_node"})
    if values["max_steps"] is None and values["epochs"] is None:
        values["max_steps"] = training.TrainingSettings.max_steps  # the default budget: 4000 steps
    settings = training.TrainingSettings(**values)
    settings.validate()  # before anything is read: "max_steps or epochs, not both"
    return settings


def _previous_summary(settings: PipelineSettings) -> dict | None:
    """The last training's summary: its measured pace projects this one's wall time."""
    path = storage_dir(settings) / "finetuned_checkpoint" / "training_summary.json"
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None
