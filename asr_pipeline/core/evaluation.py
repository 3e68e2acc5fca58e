"""The evaluation: base model vs fine-tuned checkpoint (vs the current champion) on the test split.

evaluate_on_test decodes and scores; asr_pipeline.core.report renders what it returns as JSON, Markdown and HTML.
Every rate is a corpus rate (total edits / total reference units) with a bootstrap 95% interval over utterances.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from asr_pipeline.core.benchmark_sets import BenchmarkSet
from asr_pipeline.core.cached_decoding import (CTRANSLATE2, TRANSFORMERS, CachedDecoder, DecodeJob, decode_summary,
                                               feature_digest, transformers_loader)
from asr_pipeline.core.decoding import DecodingPolicy
from asr_pipeline.core.error_analysis import (DURATION_BUCKETS, breakdown, duration_bucket, programme_of,
                                             worst_utterances)
from asr_pipeline.core.eval_sample import DEFAULT_MAX_UTTERANCES, DEFAULT_PER_EPISODE, SampleMemory, stable_sample
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.hallucination import hallucination_stats
from asr_pipeline.core.hypothesis_cache import HypothesisCache, sample_fingerprint
from asr_pipeline.core.settings import DEFAULT_PROGRAMME_PATTERN
from asr_pipeline.core.text import (DEFAULT_POLICY, MEASURES, EditCounts, NormalizationPolicy, bootstrap_ci, clean,
                                    edit_counts, paired_episode_bootstrap)
from asr_pipeline.core.training_data import FeatureRows


def score(references: list[str], hypotheses: list[str], policy: NormalizationPolicy, resamples: int = 1000,
          seed: int = 0) -> tuple[dict, EditCounts]:
    """Rates and their bootstrap intervals over utterances: {cer, cer_ci95, cer_normalized, cer_normalized_ci95, wer,
    ..., hallucination: {...}} (asr_pipeline.core.hallucination)."""
    counts = edit_counts(references, hypotheses, policy)
    out: dict = {"pairs": len(references)}
    for measure in MEASURES:
        out[measure] = counts.rate(measure)
        out[f"{measure}_ci95"] = bootstrap_ci(counts, measure, resamples=resamples, seed=seed)
    out["hallucination"] = hallucination_stats(counts, [clean(h) for h in hypotheses])
    return out, counts


def compare_models(counts: dict[str, EditCounts], groups: Sequence[str], resamples: int = 1000,
                   seed: int = 0) -> dict:
    """The challenger against each other model, normalised CER, paired and resampled by episode:
    {finetuned_vs_base: {difference, ci95, episodes, ...}, finetuned_vs_champion: {...}}."""
    return {f"finetuned_vs_{name}": paired_episode_bootstrap(counts["finetuned"], counts[name], groups,
                                                             resamples=resamples, seed=seed)
            for name in ("base", "champion") if name in counts}


def training_curves(checkpoint_dir: Path) -> dict:
    """Loss and validation CER by step, from the trainer's log history (training_log.json)."""
    path = Path(checkpoint_dir) / "training_log.json"
    history = json.loads(path.read_text()) if path.exists() else []
    curves = {"train": [], "eval": []}
    for entry in history:
        if "loss" in entry and "step" in entry:
            curves["train"].append({"step": entry["step"], "loss": entry["loss"]})
        if "eval_loss" in entry:
            curves["eval"].append({"step": entry["step"], "loss": entry["eval_loss"], "cer": entry.get("eval_cer")})
    return curves


SPLIT_SETTINGS = ("ASR_SPLIT_RATIOS", "ASR_GROUP_PATTERN")  # what decides each row's split (manifest.assign_split)


def split_settings(shards: Sequence[FeatureShard]) -> dict | None:
    """The split settings every shard was made with (their meta.json's version_inputs), or None where they differ
    or a shard does not say (made by an older version)."""
    found = {json.dumps({k: (getattr(s, "meta", None) or {}).get("version_inputs", {}).get(k) for k in SPLIT_SETTINGS},
                        sort_keys=True) for s in shards}
    if len(found) != 1:
        return None
    settings = json.loads(found.pop())
    return settings if all(settings.values()) else None


def champion_unavailable(champion: dict | None, shards: Sequence[FeatureShard]) -> str | None:
    """Why the champion cannot be scored fairly on these features, or None when it can (or there is none): its
    files are gone, it takes other mel bins, or it was trained on another split, so rows that are test rows now
    were its training rows (ASR_SPLIT_RATIOS or ASR_GROUP_PATTERN changed since its promotion)."""
    if not champion:
        return None
    if not (Path(champion["model_path"]) / "config.json").exists():
        return f"the champion's files at {champion['model_path']} are missing"
    config = json.loads((Path(champion["model_path"]) / "config.json").read_text())
    if config.get("num_mel_bins") != shards[0].n_mels:
        return (f"the champion takes {config.get('num_mel_bins')} mel bins and these features have "
                f"{shards[0].n_mels} (a different base model?)")
    trained_on, now = champion.get("split"), split_settings(shards)
    # (a champion promoted before splits were recorded: not known)
    if trained_on and now and trained_on != now and _test_rows_may_have_trained(trained_on, now):
        changed = ", ".join(f"{k} {trained_on.get(k)!r} -> {now[k]!r}" for k in SPLIT_SETTINGS
                            if trained_on.get(k) != now[k])
        return (f"the champion was trained on another split ({changed}): some of today's test rows were its "
                "training rows, so its scores would flatter it")
    return None


def _test_rows_may_have_trained(before: dict, now: dict) -> bool:
    """Whether a row of the test split under `now` was a train or validation row under `before`. Another group
    pattern regroups rows: yes. Other ratios with the same groups: manifest.assign_split puts a group in test when its
    hash fraction is at least train + valid, so only a test share that grew takes rows from train or valid."""
    if before.get("ASR_GROUP_PATTERN") != now.get("ASR_GROUP_PATTERN"):
        return True
    try:
        start_before, start_now = (sum(float(part) for part in settings["ASR_SPLIT_RATIOS"].split("/")[:2])
                                   for settings in (before, now))
    except (KeyError, ValueError, AttributeError):
        return True  # not readable: assume the worst
    return start_now < start_before - 1e-9


def champion_comparable(champion: dict | None, shards: Sequence[FeatureShard]) -> bool:
    """The champion can be decoded and scored fairly on these features (champion_unavailable says why not)."""
    return bool(champion) and champion_unavailable(champion, shards) is None


def evaluate_on_test(
    base_source: str,
    checkpoint_dir: str,
    shards: Sequence[FeatureShard],
    out_dir: Path | None = None,
    decoding: DecodingPolicy = DecodingPolicy(),
    warning: str | None = None,
    emit: Callable[[str], None] = print,
    policy: NormalizationPolicy = DEFAULT_POLICY,
    champion: dict | None = None,
    ctranslate2_dir: Path | None = None,
    programme_pattern: str = DEFAULT_PROGRAMME_PATTERN,
    bootstrap_resamples: int = 1000,
    prefer_bf16: bool = True,
    max_utterances: int | None = DEFAULT_MAX_UTTERANCES,
    per_episode: int = DEFAULT_PER_EPISODE,
    cache_dir: Path | None = None,
    benchmark_sets: Sequence[BenchmarkSet] = (),
) -> dict:
    """Decode a stable sample of the test split (eval_sample; max_utterances None or 0: all of it) and every
    benchmark set with the base model, the checkpoint and the champion (when there is one), score them, and
    (ctranslate2_dir given) export the checkpoint to CTranslate2 int8 and score that too. Returns the report; with
    out_dir, also writes it there (report.json, report.md, report.html, training_curves.png).

    decoding: the policy (decoding.DecodingPolicy: audio-derived budget, temperature fallback, no-speech), the same
    for every model and runtime; nothing from the references reaches the decoder.
    prefer_bf16: decode in bfloat16 where the hardware has it (model.inference_placement: on CUDA bf16, else fp16);
    every model in the report is decoded the same way, and the report says which.
    cache_dir ($ASR_HOME/cache): hypotheses are cached by (model content, runtime, placement, policy, sample), so an
    unchanged model is not decoded again on an unchanged sample."""
    from asr_pipeline.core.model import attention_description, inference_placement, load_processor

    rows = FeatureRows(shards, "test")
    if len(rows) == 0:
        raise ValueError("the test split is empty: nothing to evaluate on (check ASR_SPLIT_RATIOS and the data)")
    split_meta = [rows.row(i) for i in range(len(rows))]
    memory = SampleMemory(cache_dir)
    sample = stable_sample([int(m["id"]) for m in split_meta], [str(m["group"]) for m in split_meta],
                           max_utterances, per_episode, memory.previous(max_utterances, per_episode))
    memory.remember([int(split_meta[p]["id"]) for p in sample.positions], max_utterances, per_episode)
    positions = [rows.positions[p] for p in sample.positions]
    meta = [split_meta[p] for p in sample.positions]

    def features(i: int):
        s, j = positions[i]
        return rows.shards[s].features(j)

    references = [clean(m["transcript"]) for m in meta]
    durations = [float(m["duration"]) for m in meta]
    digests = [feature_digest(rows.shards[s].frames(j), rows.shards[s].index.iloc[j]["pad_value"])
               for s, j in positions]
    test_job = DecodeJob("test", len(meta), features, lambda: durations,
                         sample_fingerprint([int(m["id"]) for m in meta], digests, durations))
    extractor = load_processor(base_source).feature_extractor if benchmark_sets else None
    bench_jobs = [DecodeJob(b.name, len(b), b.features_function(extractor), b.durations, b.fingerprint(shards[0].n_mels))
                  for b in benchmark_sets]
    device, dtype = inference_placement(prefer_bf16)
    dtype_name = str(dtype).replace("torch.", "")
    decoder = CachedDecoder(HypothesisCache(cache_dir) if cache_dir else None, f"{device}/{dtype_name}", decoding,
                            emit)
    models = [("base", base_source), ("finetuned", str(checkpoint_dir))]
    unavailable = champion_unavailable(champion, shards)
    if champion and unavailable is None:
        models.append(("champion", champion["model_path"]))
    report: dict = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "test_rows": len(meta),
        "sample": {**sample.describe(), "fingerprint": test_job.fingerprint, "max_utterances": max_utterances or None,
                   "per_episode": per_episode},
        "base_model": base_source,
        "finetuned_model": str(checkpoint_dir),
        "champion_model": champion["model_path"] if champion else None,
        "champion_unavailable": unavailable,
        "split": split_settings(shards),  # the promoted champion's pointer keeps it (champion_unavailable)
        "warning": warning,
        "normalization": policy.describe(),
        "decoding": {**decoding.describe(), "greedy_first": True, "device": device, "dtype": dtype_name,
                     "attention": attention_description(),
                     "runtime": "transformers (step-by-step decoder with key/value cache)",
                     "budget_check": budget_check(meta, decoding)},
        "bootstrap": {"resamples": bootstrap_resamples, "level": 0.95, "unit": "utterance",
                      "comparison_unit": "episode (paired)"},
    }
    hypotheses, counts, bench_results, guards = {}, {}, {}, {}
    for name, source in models:
        results = decoder.run(name, source, TRANSFORMERS, transformers_loader(device, dtype, decoding, emit, name),
                              [test_job, *bench_jobs])
        hypotheses[name] = results["test"]["texts"]
        rates, counts[name] = score(references, hypotheses[name], policy, bootstrap_resamples)
        report[name] = {**rates, "model": source, **decode_summary(results["test"], len(meta))}
        guards[name] = results["test"]
        bench_results[name] = results
    if benchmark_sets:
        report["benchmarks"] = score_benchmarks(benchmark_sets, bench_results, policy, bootstrap_resamples)
    if ctranslate2_dir is not None:
        report["ctranslate2"] = _evaluate_ctranslate2(str(checkpoint_dir), Path(ctranslate2_dir), test_job,
                                                      references, decoder, policy, bootstrap_resamples,
                                                      report["finetuned"], emit)
        hypotheses["ctranslate2"] = report["ctranslate2"].pop("hypotheses")
    report["hypotheses_decoded"] = decoder.decoded
    report["per_utterance"] = [
        {"id": int(m["id"]), "audio_path": m["audio_path"], "reference": ref, "group": str(m["group"]),
         "programme": programme_of(m["group"], programme_pattern), "duration": round(float(m["duration"]), 3),
         **{f"{name}_hypothesis": texts[i] for name, texts in hypotheses.items()},
         # which guard decided (decoding.py): the fallback temperature kept, and whether it was judged silence
         **{f"{name}_temperature": g["temperatures"][i] for name, g in guards.items()},
         **{f"{name}_no_speech": bool(g["silent"][i]) for name, g in guards.items()}}
        for i, (m, ref) in enumerate(zip(meta, references))
    ]
    durations = [duration_bucket(u["duration"]) for u in report["per_utterance"]]
    bucket_order = [duration_bucket((lo + hi) / 2) for lo, hi in zip(DURATION_BUCKETS, DURATION_BUCKETS[1:])]
    report["comparisons"] = compare_models(counts, [str(m["group"]) for m in meta], bootstrap_resamples)
    report["by_duration"] = breakdown(durations, counts, bucket_order + [f">={DURATION_BUCKETS[-1]:g} s"])
    report["by_programme"] = breakdown([u["programme"] for u in report["per_utterance"]], counts)
    report["worst"] = worst_utterances(report["per_utterance"], counts["finetuned"])
    report["training_curves"] = training_curves(Path(checkpoint_dir))
    if out_dir is not None:
        from asr_pipeline.core.report import write_report

        write_report(report, Path(out_dir))
    return report


PROMPT_AND_EOT_TOKENS = 5  # labels hold <|startoftranscript|><|ko|><|transcribe|><|notimestamps|> ... <|endoftext|>


def budget_check(meta, decoding: DecodingPolicy) -> dict:
    """Would the audio budget ever cut a correct transcript short? Measured on the references after decoding (they
    never reach the decoder): how many exceed the budget of their own clip, and the fastest tokens per second."""
    tokens = [max(int(m["label_length"]) - PROMPT_AND_EOT_TOKENS, 0) for m in meta]
    seconds = [max(float(m["duration"]), 1e-3) for m in meta]
    rates = [t / s for t, s in zip(tokens, seconds)]
    return {"references_over_budget": sum(t > decoding.budget(s) for t, s in zip(tokens, seconds)),
            "reference_tokens_per_second_p99": float(np.percentile(rates, 99)) if rates else None,
            "reference_tokens_per_second_max": max(rates) if rates else None}


def score_benchmarks(sets: Sequence[BenchmarkSet], results: dict[str, dict], policy: NormalizationPolicy,
                     resamples: int) -> dict:
    """{set: {"set": {...}, base: rates, finetuned: rates, champion: rates}}, every model on the same clips."""
    out = {}
    for b in sets:
        entry: dict = {"set": {"folder": str(b.folder), "utterances": len(b)}}
        for name, by_job in results.items():
            rates, _ = score(b.references, by_job[b.name]["texts"], policy, resamples)
            entry[name] = {**rates, **decode_summary(by_job[b.name], len(b))}
        out[b.name] = entry
    return out


def benchmark_regressions(report: dict, margin: float, metric: str = "cer_normalized") -> list[str]:
    """Benchmark sets on which the challenger is worse than the incumbent by more than margin (absolute): the
    champion, or the base model where there is none (the first promotion, one after a retirement), as the test
    split's gate compares."""
    regressed = []
    for name, entry in sorted((report.get("benchmarks") or {}).items()):
        challenger, incumbent = entry.get("finetuned"), entry.get("champion") or entry.get("base")
        if challenger and incumbent and challenger[metric] - incumbent[metric] > margin:
            regressed.append(name)
    return regressed


def _evaluate_ctranslate2(checkpoint_dir, export_dir, job, references, decoder, policy, resamples,
                          transformers_rates, emit) -> dict:
    from asr_pipeline.core.export import ct2_loader, export_ctranslate2

    emit(f"exporting {checkpoint_dir} to CTranslate2 int8 at {export_dir}")
    export_ctranslate2(checkpoint_dir, export_dir, quantization="int8")
    result = decoder.run("ctranslate2", str(export_dir), CTRANSLATE2, ct2_loader(checkpoint_dir, decoder.policy, emit),
                         [job], fingerprint_source=checkpoint_dir)["test"]
    rates, _ = score(references, result["texts"], policy, resamples)
    summary = decode_summary(result, job.count)
    return {"path": str(export_dir), "quantization": "int8", **rates, **summary,
            "transformers_utterances_per_s": transformers_rates["utterances_per_s"],
            "speedup_vs_transformers": round(transformers_rates["decode_seconds"] / summary["decode_seconds"], 3)
            if summary["decode_seconds"] else None,
            "cer_minus_transformers": rates["cer"] - transformers_rates["cer"],
            "hypotheses": result["texts"]}
