"""evaluation_report (base model, fine-tuned checkpoint and the champion on the test split,
asr_pipeline.core.evaluation) and champion_model (the checkpoint in service, replaced when the promotion decision
says so)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from asr_pipeline.core import champion, evaluation, promotion
from asr_pipeline.core.benchmark_sets import BenchmarkSet
from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.placeholder_model import PLACEHOLDER_WARNING
from asr_pipeline.core.report import render_markdown, write_report
from asr_pipeline.core.storage import read_json, resolved, write_json
from asr_pipeline.defs.common.io_managers import stage
from asr_pipeline.defs.common.resources import PipelineSettings
from asr_pipeline.defs.common.shards import GROUP, TRAINING_POOL, load_shards, partitions_metadata, storage_dir
from asr_pipeline.defs.evaluation import checks


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
    settings.promotion_policy()  # a bad margin or rule set in the Launchpad fails now, not after an hour of decoding
    shards = load_shards(context, featurized_shards)
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
        **partitions_metadata(featurized_shards, shards),
        **({"warning": warning} if warning else {}),
    })
    yield checks.challenger_beats_champion(decision)


@dg.asset(group_name=GROUP, kinds={"pytorch"}, deps=["finetuned_checkpoint"], output_required=False,
          description="The model in service: the fine-tuned checkpoint and its CTranslate2 int8 export, copied into "
          "ASR_HOME/champion when evaluation_report's promotion decision says so (the challenger beats the champion, "
          "or the base model when there is none, under ASR_PROMOTION_RULE, without hallucinating more; "
          "docs/EVALUATION.md). Otherwise the step succeeds and materializes nothing. champion.json points at it; "
          "history.jsonl keeps every promotion; the copies of all but the latest ASR_CHAMPION_KEEP promotions are "
          "removed.")
def champion_model(context: dg.AssetExecutionContext, evaluation_report: Path, settings: PipelineSettings):
    report = read_json(evaluation_report / "report.json")
    decision = report.get("promotion") or {}
    if not decision.get("promote"):
        # Not promoting is the report's answer, not an error: the step succeeds and materializes nothing.
        context.log.info(f"nothing to promote, the champion stays: {decision.get('reason', 'no decision recorded')}")
        return
    pointer = champion.promoted_from(settings.home_dir(), report)
    if pointer is not None:  # a retry after a failure past the promotion (the pointer had moved): no second copy
        context.log.info(f"this report's checkpoint is the champion already ({pointer['model_path']}, promoted "
                         f"{pointer['promoted_at']}): nothing to copy again; the asset records it")
    else:
        pointer = _promote(context, evaluation_report, report, settings)
    try:  # the promotion is done: tidying the older copies never fails it
        removed = champion.prune_models(settings.home_dir(), settings.champion_keep, emit=context.log.info)
        promotions = len(champion.promotions(champion.promotion_history(settings.home_dir())))
    except Exception as error:  # noqa: BLE001
        context.log.warning(f"older champion copies were not removed ({type(error).__name__}: {error}); the next "
                            "promotion tries again")
        removed, promotions = [], None
    out = stage(context, storage_dir(settings))
    write_json(out / "champion.json", pointer)
    yield dg.Output(out, metadata={
        "model_path": dg.MetadataValue.path(pointer["model_path"]),
        "ctranslate2_path": dg.MetadataValue.path(pointer["ctranslate2_path"] or ""),
        "test_cer": pointer["test_cer"], "test_cer_normalized": pointer["test_cer_normalized"],
        "promoted_at": pointer["promoted_at"], "previous_model_path": pointer["previous_model_path"] or "(none)",
        **({"promotions": promotions} if promotions is not None else {}),
        "copies_removed": len(removed),
    })


def _promote(context: dg.AssetExecutionContext, evaluation_report: Path, report: dict,
             settings: PipelineSettings) -> dict:
    evaluated = Path(report["finetuned_model"])
    if not (evaluated / "config.json").exists():
        raise FileNotFoundError(f"the checkpoint this report evaluated is gone ({evaluated}): a newer training replaced "
                                "it; materialize evaluation_report again to decide on the current checkpoint")
    export = evaluation_report / "ctranslate2"
    pointer = champion.promote(settings.home_dir(), evaluated,
                               export if export.exists() else None, report, run_id=context.run.run_id)
    context.log.info(f"promoted {pointer['model_path']} (test CER {pointer['test_cer']:.4f})")
    return pointer


def _promotion_decision(report: dict, incumbent: dict | None, settings: PipelineSettings) -> dict:
    unavailable = None
    if incumbent and "champion" not in report:
        why = report.get("champion_unavailable") or (f"the champion at {incumbent['model_path']} is missing or "
                                                     "takes other features (a different base model?)")
        unavailable = (f"{why}, so it cannot be compared on this test split; restore it (or the settings), or "
                       "retire it with `asr-pipeline champion --retire` to let the next challenger in")
    # fixed benchmark sets (ASR_BENCHMARK_SETS): worse than the champion (the base, with none) on any by more than
    # the margin
    regressed = evaluation.benchmark_regressions(report, settings.promotion_margin) if report.get("benchmarks") else []
    return promotion.decide_promotion(report, settings.promotion_policy(), unavailable, regressed)


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
