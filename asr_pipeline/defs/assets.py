"""The five assets: transcript rows -> manifest -> 16 kHz audio -> features -> fine-tuned checkpoint -> report.

The first three are partitioned by ingest batch (an id range of the table, see asr_pipeline.core.batches); the
checkpoint and the report use every featurized batch. Each asset body is wiring; the work is in asr_pipeline.core.
"""

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from asr_pipeline.core import audio, champion, evaluation, features, manifest, training
from asr_pipeline.core.batches import parse_batch_key
from asr_pipeline.core.benchmark_sets import BenchmarkSet
from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.model import PLACEHOLDER_WARNING, load_featurizer
from asr_pipeline.core.report import render_markdown, write_report
from asr_pipeline.core.storage import read_json, resolved, write_json
from asr_pipeline.core.versions import mixed_versions_message
from asr_pipeline.defs import checks, launcher, schedules, training_inputs, versions
from asr_pipeline.defs.io_managers import stage
from asr_pipeline.defs.partitions import INGEST_BATCHES
from asr_pipeline.defs.resources import PipelineSettings, TranscriptDatabase

GROUP = "asr"
TRAINING_POOL = "asr_training"  # dagster.yaml limits it to 1: one training (or evaluation) at a time

training_datas = dg.AssetSpec(
    "training_datas",
    description="The transcript table (id, raw_data = audio path on the NAS, transcript), owned outside Dagster.",
    group_name="source",
    kinds={"sql"},
)


def storage_dir(settings: PipelineSettings) -> Path:
    return Path(settings.home) / "storage"


def _preview(frame: pd.DataFrame, columns: list[str], rows: int = 10) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame[columns].head(rows).to_markdown(index=False) if len(frame) else "(empty)")


@dg.asset(
    group_name=GROUP, deps=[training_datas], partitions_def=INGEST_BATCHES, kinds={"pandas", "parquet"},
    description="One ingest batch of the transcript table (rows first..last of its key) with NAS paths rewritten "
    "(ASR_PATH_MAP) and a stable split (a hash of the episode id: one broadcast never straddles train and test).",
)
def raw_manifest(context: dg.AssetExecutionContext, database: TranscriptDatabase,
                 settings: PipelineSettings) -> dg.Output:
    first, last = parse_batch_key(context.partition_key)
    table = database.reader()
    # fingerprint first: a change that lands while we read makes the sensor re-request, never go unnoticed
    fingerprint = table.batch_fingerprint(first, last)
    context.log.info(f"reading ids {first}..{last} of {database.describe()}")
    rows = list(table.read_range(first, last))
    frame = manifest.build_manifest(rows, settings.parsed_path_map(), settings.parsed_split_ratios(),
                                    settings.group_pattern)
    out = stage(context, storage_dir(settings))
    frame.to_parquet(out / "manifest.parquet", index=False)
    splits = frame["split"].value_counts().to_dict()
    context.log.info(f"{len(frame)} rows, splits {splits}, {frame['group'].nunique()} groups")
    fallback = manifest.fallback_group_share(frame)
    if fallback > manifest.FALLBACK_WARNING_SHARE:
        context.log.warning(f"{fallback:.0%} of the rows' file names do not match ASR_GROUP_PATTERN and are grouped "
                            "by row id: their episodes can straddle train and test. Fix ASR_GROUP_PATTERN.")
    return dg.Output(out, metadata={
        "rows": len(frame), "groups": int(frame["group"].nunique()), "fingerprint": fingerprint,
        "fallback_group_share": round(fallback, 4), **versions.version_metadata(settings, "raw_manifest"),
        "first_id": first, "last_id": last,
        **{f"{name}_rows": int(splits.get(name, 0)) for name in manifest.SPLITS},
        "source": database.describe(), "preview": _preview(frame, ["id", "audio_path", "transcript", "split"]),
    })


@dg.asset(group_name=GROUP, partitions_def=INGEST_BATCHES, kinds={"numpy"}, check_specs=checks.RESAMPLED_CHECKS,
          description="Every clip decoded (wav/flac/mp3/ogg), downmixed to mono and resampled to 16 kHz (soxr); "
          "unusable rows are quarantined with a reason.")
def resampled_dataset(context: dg.AssetExecutionContext, raw_manifest: Path, settings: PipelineSettings):
    frame = pd.read_parquet(raw_manifest / "manifest.parquet")
    out = stage(context, storage_dir(settings))
    limits = audio.AudioLimits(settings.min_audio_seconds, settings.max_audio_seconds)
    summary = audio.resample_manifest(frame, out, limits, emit=context.log.info, roots=settings.parsed_audio_roots())
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    if len(quarantine):
        reasons = quarantine["reason"].str.split(" (", regex=False).str[0].value_counts().to_dict()
        context.log.warning(f"{len(quarantine)} rows quarantined: {reasons}")
    results = [checks.quarantine_rate(out, settings.max_quarantine_rate), checks.clips_are_16k_mono(out)]
    yield dg.Output(out, metadata={**summary, **versions.version_metadata(settings, "resampled_dataset"),
                                   "quarantine": _preview(quarantine, ["id", "audio_path", "reason"], rows=20)})
    yield from results


@dg.asset(group_name=GROUP, partitions_def=INGEST_BATCHES, kinds={"numpy"}, check_specs=checks.FEATURE_CHECKS,
          description="Log-mel features (mel bins from the base model's config) stored compactly as float16 frames "
          "that hold audio, plus label ids from the tokenizer with the Korean/transcribe prefix.")
def featurized_shards(context: dg.AssetExecutionContext, resampled_dataset: Path, settings: PipelineSettings):
    clips = audio.AudioShard(resampled_dataset)
    base = settings.resolve_base(corpus=clips.index["transcript"].tolist())
    if base.warning:
        context.log.warning(base.warning)
    feature_extractor, tokenizer = load_featurizer(base.source)  # numpy + tokenizers: no torch in an ingest
    context.log.info(f"featurizing {len(clips)} clips for {base.source} (log-mel: {type(feature_extractor).__name__}, "
                     f"labels: {type(tokenizer).__name__})")
    out = stage(context, storage_dir(settings))
    summary = features.featurize_shard(clips, out, feature_extractor, tokenizer, base.source, emit=context.log.info)
    summary["placeholder_model"] = base.placeholder
    version = versions.current_versions(settings)["featurized_shards"]
    # in the shard itself, so training can tell batches made with other settings apart (mixed_versions_message)
    summary.update(content_version=version.version, version_inputs=dict(version.inputs))
    write_json(out / "meta.json", summary)
    result = checks.features_match_model(out)
    yield dg.Output(out, metadata={**{k: v for k, v in summary.items() if k not in ("splits", "version_inputs")},
                                   **{f"{k}_rows": int(v) for k, v in summary["splits"].items()},
                                   **versions.version_metadata(settings, "featurized_shards")})
    yield result


def _load_shards(context: dg.AssetExecutionContext, shard_dirs: dict[str, Path]) -> list[features.FeatureShard]:
    if not shard_dirs:
        raise ValueError("no featurized_shards partition is materialized yet: run the ingest first "
                         "(`asr-pipeline ingest`, or turn on new_transcripts_sensor)")
    shards = [features.FeatureShard(shard_dirs[key]) for key in sorted(shard_dirs)]
    models = {shard.meta["model"] for shard in shards}
    if len(models) > 1:
        raise ValueError(f"featurized batches were made with different base models {sorted(models)}: backfill "
                         "featurized_shards so every batch uses the current ASR_BASE_MODEL (`asr-pipeline backfill "
                         "--stale`)")
    current = versions.current_versions(context.resources.settings)["featurized_shards"]
    mix = mixed_versions_message({key: shard.meta for key, shard in zip(sorted(shard_dirs), shards)}, current)
    if mix:
        raise ValueError(mix)
    if shards[0].meta.get("content_version") != current.version:
        context.log.warning("every featurized batch was made with other settings than the current ones; "
                            "`asr-pipeline backfill --stale` re-processes them")
    context.log.info(f"using {len(shards)} featurized batches, {sum(len(s) for s in shards)} rows")
    return shards


def _partitions_metadata(shard_dirs: dict[str, Path], shards: list[features.FeatureShard]) -> dict:
    return {"partitions_used": len(shards), "rows_available": sum(len(s) for s in shards),
            "partitions": dg.MetadataValue.json({key: len(s) for key, s in zip(sorted(shard_dirs), shards)})}


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
    shards = _load_shards(context, featurized_shards)
    # rows deleted from the table never reach the checkpoint; batches it cannot use are named in its metadata
    inputs = training_inputs.survey(context, database.reader(), featurized_shards)
    base_source = shards[0].meta["model"]
    out = stage(context, storage_dir(settings))
    launch = launcher.resolve(config.launcher, config.nproc_per_node)
    # Same features + settings -> same work directory, so a killed training resumes from its last checkpoint.
    fingerprint = training.training_fingerprint(
        base_source, [s.meta for s in shards] + ([{"excluded_ids": sorted(inputs.exclude_ids)}] if inputs.exclude_ids else []),
        train_settings)
    work_dir = Path(settings.home) / "work" / "finetuned_checkpoint" / fingerprint
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
        # a training that diverged (NaN loss) stops before its checkpoint is published; record the failed check
        # too, so the UI shows why evaluation never ran
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
        **_partitions_metadata(featurized_shards, shards),
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


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


class EvaluationConfig(dg.Config):
    batch_size: int = Field(default=16, description="utterances decoded together (ordered by audio duration)")
    # decoding policy (core/decoding.py, docs/EVALUATION.md): as deployed, nothing from the references
    max_new_tokens: int = Field(default=444, description="most new tokens per utterance (Whisper's limit is 444)")
    tokens_per_second: float = Field(default=12.0, description="token budget per second of audio: a batch may "
                                     "generate ceil(rate x its longest clip's seconds) + token_allowance tokens")
    token_allowance: int = Field(default=16, description="tokens added to every budget")
    temperature_fallback: bool = Field(default=True, description="Whisper's temperature fallback (0, 0.2 .. 1.0) "
                                       "and no-speech guard; off: greedy only")
    compression_ratio_threshold: float = Field(default=2.4, description="fallback when the text compresses more")
    logprob_threshold: float = Field(default=-1.0, description="fallback when the mean token log-prob is lower")
    no_speech_threshold: float = Field(default=0.6, description="silence when P(<|nospeech|>) is higher and the "
                                       "mean log-prob is below logprob_threshold")
    best_of: int = Field(default=1, description="samples per fallback temperature (faster-whisper's default is 5)")
    max_utterances: int | None = Field(default=None, description="test utterances decoded (a stable sample "
                                       "stratified by episode); None: ASR_EVAL_MAX_UTTERANCES (default 2000); 0: all")
    full_test_split: bool = Field(default=False, description="decode the whole test split, not the sample")
    per_episode: int = Field(default=20, description="most clips of one episode in the sample")
    cache_hypotheses: bool = Field(default=True, description="reuse the hypotheses of an unchanged model on an "
                                   "unchanged sample ($ASR_HOME/cache/hypotheses)")
    export_ctranslate2: bool = Field(default=True, description="export the checkpoint to CTranslate2 int8 and "
                                     "score the export on the test split too")
    bootstrap_resamples: int = Field(default=1000, description="bootstrap resamples for the 95% intervals")
    bf16: bool = Field(default=True, description="decode in bfloat16 where the hardware has it (a bf16 GPU, a CPU "
                       "with AMX/AVX512-BF16; float16 on other GPUs); every model in the report alike")

    def decoding_policy(self) -> DecodingPolicy:
        guards = {} if self.temperature_fallback else {"temperatures": (0.0,), "compression_ratio_threshold": None,
                                                       "logprob_threshold": None, "no_speech_threshold": None}
        return DecodingPolicy(**{"max_new_tokens": self.max_new_tokens, "tokens_per_second": self.tokens_per_second,
                                 "token_allowance": self.token_allowance, "batch_size": self.batch_size,
                                 "compression_ratio_threshold": self.compression_ratio_threshold,
                                 "logprob_threshold": self.logprob_threshold, "best_of": self.best_of,
                                 "no_speech_threshold": self.no_speech_threshold, **guards})

    def sample_size(self, settings: PipelineSettings) -> int | None:
        size = settings.eval_max_utterances if self.max_utterances is None else self.max_utterances
        return None if self.full_test_split or not size else size


@dg.asset(group_name=GROUP, kinds={"html", "json", "markdown"}, pool=TRAINING_POOL,
          check_specs=checks.EVALUATION_CHECKS,
          description="Base model vs fine-tuned checkpoint vs the current champion on the test split of every batch: "
          "CER/WER raw and normalised with bootstrap 95% intervals, by duration and programme, the 20 worst "
          "utterances with aligned diffs, training curves, and the CTranslate2 int8 export's CER and speed. "
          "report.html (self-contained), report.md, report.json.")
def evaluation_report(context: dg.AssetExecutionContext, config: EvaluationConfig,
                      featurized_shards: dict[str, Path], finetuned_checkpoint: Path, settings: PipelineSettings):
    shards = _load_shards(context, featurized_shards)
    out = stage(context, storage_dir(settings))
    final_dir = storage_dir(settings) / "evaluation_report"
    warning = PLACEHOLDER_WARNING if any(s.meta.get("placeholder_model") for s in shards) else None
    if warning:
        context.log.warning(warning)
    incumbent = champion.current_champion(settings.home_dir())
    if incumbent:
        context.log.info(f"current champion: {incumbent['model_path']} (promoted {incumbent['promoted_at']})")
    report = evaluation.evaluate_on_test(
        # the version directory, not the published link: champion_model must copy the weights this report scored,
        # even if another training publishes in between
        shards[0].meta["model"], str(resolved(finetuned_checkpoint)), shards, decoding=config.decoding_policy(),
        warning=warning, emit=context.log.info, policy=settings.normalization_policy(),
        champion=incumbent, ctranslate2_dir=out / "ctranslate2" if config.export_ctranslate2 else None,
        programme_pattern=settings.programme_pattern, bootstrap_resamples=config.bootstrap_resamples,
        prefer_bf16=config.bf16, max_utterances=config.sample_size(settings), per_episode=config.per_episode,
        cache_dir=settings.home_dir() / "cache" if config.cache_hypotheses else None,
        benchmark_sets=[BenchmarkSet.load(name, folder) for name, folder in settings.parsed_benchmark_sets()])
    if "ctranslate2" in report:  # where the IO manager publishes it, not the staging directory
        report["ctranslate2"]["path"] = str(final_dir / "ctranslate2")
    report["partitions"] = sorted(featurized_shards)
    decision = _promotion_decision(report, incumbent, settings)
    report["promotion"] = decision
    write_report(report, out, final_dir=final_dir)
    context.log.info(f"report: {report['html_path']}; promotion: {decision['reason']}")
    yield dg.Output(out, metadata={
        "report": dg.MetadataValue.md(render_markdown(report, curves_png=_read_bytes(out / "training_curves.png"))),
        "html_path": dg.MetadataValue.path(report["html_path"]),
        "json_path": dg.MetadataValue.path(report["json_path"]),
        "test_rows": report["test_rows"],
        "test_split_rows": report["sample"]["test_split_rows"],
        "hypotheses_decoded": report["hypotheses_decoded"],
        **{f"benchmark_{name}_{model}_cer_normalized": entry[model]["cer_normalized"]
           for name, entry in (report.get("benchmarks") or {}).items()
           for model in ("base", "finetuned", "champion") if model in entry},
        **{f"{name}_{measure}": report[name][measure] for name in ("base", "finetuned", "champion", "ctranslate2")
           if name in report for measure in ("cer", "cer_normalized", "wer", "wer_normalized")},
        "finetuned_cer_ci95": dg.MetadataValue.json(report["finetuned"]["cer_ci95"]),
        **_promotion_metadata(report),
        **_partitions_metadata(featurized_shards, shards),
        **({"warning": warning} if warning else {}),
    })
    yield checks.challenger_beats_champion(decision)


@dg.asset(group_name=GROUP, kinds={"pytorch"}, deps=["finetuned_checkpoint"], output_required=False,
          description="The model in service: the fine-tuned checkpoint and its CTranslate2 int8 export, copied into "
          "ASR_HOME/champion when evaluation_report's promotion decision says so (the challenger beats the champion, "
          "or the base model when there is none, under ASR_PROMOTION_RULE, without hallucinating more; "
          "docs/EVALUATION.md). Otherwise the step succeeds and materializes nothing. champion.json points at it; "
          "history.jsonl keeps every promotion.")
def champion_model(context: dg.AssetExecutionContext, evaluation_report: Path, settings: PipelineSettings):
    report = read_json(evaluation_report / "report.json")
    decision = report.get("promotion") or {}
    if not decision.get("promote"):
        # Not promoting is the report's answer, not an error: the step succeeds and materializes nothing.
        context.log.info(f"nothing to promote, the champion stays: {decision.get('reason', 'no decision recorded')}")
        return
    evaluated = Path(report["finetuned_model"])
    if not (evaluated / "config.json").exists():
        raise FileNotFoundError(f"the checkpoint this report evaluated is gone ({evaluated}): a newer training replaced "
                                "it; materialize evaluation_report again to decide on the current checkpoint")
    export = evaluation_report / "ctranslate2"
    pointer = champion.promote(settings.home_dir(), evaluated,
                               export if export.exists() else None, report, run_id=context.run.run_id)
    context.log.info(f"promoted {pointer['model_path']} (test CER {pointer['test_cer']:.4f})")
    out = stage(context, storage_dir(settings))
    write_json(out / "champion.json", pointer)
    yield dg.Output(out, metadata={
        "model_path": dg.MetadataValue.path(pointer["model_path"]),
        "ctranslate2_path": dg.MetadataValue.path(pointer["ctranslate2_path"] or ""),
        "test_cer": pointer["test_cer"], "test_cer_normalized": pointer["test_cer_normalized"],
        "promoted_at": pointer["promoted_at"], "previous_model_path": pointer["previous_model_path"] or "(none)",
        "promotions": len(champion.promotion_history(settings.home_dir())),
    })


def _promotion_decision(report: dict, incumbent: dict | None, settings: PipelineSettings) -> dict:
    unavailable = None
    if incumbent and "champion" not in report:
        unavailable = (f"the champion at {incumbent['model_path']} is missing or takes other features (a different "
                       "base model?), so it cannot be compared on this test split; restore it, or retire it with "
                       "`asr-pipeline champion --retire` to let the next challenger in")
    # fixed benchmark sets (ASR_BENCHMARK_SETS): worse than the champion on any by more than the margin
    regressed = evaluation.benchmark_regressions(report, settings.promotion_margin) if report.get("benchmarks") else []
    return champion.decide_promotion(report, settings.promotion_policy(), unavailable, regressed)


def _promotion_metadata(report: dict) -> dict:
    decision = report["promotion"]
    return {
        "promote": decision["promote"], "promotion_rule": decision["rule"],
        "promotion_incumbent": decision["incumbent"], "promotion_difference": decision["difference"],
        "promotion_difference_ci95": dg.MetadataValue.json(checks.finite_or_none(decision["difference_ci95"])),
        "promotion_blocked_by": dg.MetadataValue.json(decision["blocked_by"]),
        "promotion_reason": decision["reason"],
        **{f"{name}_hallucination_share": report[name]["hallucination"]["hallucination_share"]
           for name in ("base", "finetuned", "champion") if name in report},
    }


ASSETS = [training_datas, raw_manifest, resampled_dataset, featurized_shards, finetuned_checkpoint, evaluation_report,
          champion_model]
INGEST_ASSETS = ["raw_manifest", "resampled_dataset", "featurized_shards"]
RETRAIN_ASSETS = ["finetuned_checkpoint", "evaluation_report", "champion_model"]
