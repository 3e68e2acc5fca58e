"""The evaluation: base model vs fine-tuned checkpoint (vs the current champion) on the test split.

evaluate_on_test decodes and scores; asr_pipeline.core.report renders what it returns as JSON, Markdown and HTML.
Every rate is a corpus rate (total edits / total reference units) with a bootstrap 95% interval over utterances.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from asr_pipeline.core.decoding import transcribe_features
from asr_pipeline.core.features import FeatureShard
from asr_pipeline.core.hallucination import hallucination_stats
from asr_pipeline.core.settings import DEFAULT_PROGRAMME_PATTERN
from asr_pipeline.core.text import (DEFAULT_POLICY, MEASURES, EditCounts, NormalizationPolicy, bootstrap_ci, clean,
                                    edit_counts, paired_episode_bootstrap)
from asr_pipeline.core.training import FeatureRows

DURATION_BUCKETS = (0.0, 2.0, 5.0, 10.0, 20.0, 30.0)
WORST_COUNT = 20


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


def duration_bucket(seconds: float) -> str:
    for lo, hi in zip(DURATION_BUCKETS, DURATION_BUCKETS[1:]):
        if seconds < hi:
            return f"{lo:g}-{hi:g} s"
    return f">={DURATION_BUCKETS[-1]:g} s"


def programme_of(group: str, pattern: str = DEFAULT_PROGRAMME_PATTERN) -> str:
    match = re.match(pattern, str(group))
    return match.group("programme") if match else "(unknown)"


def breakdown(labels: list[str], counts_by_model: dict, order: Sequence[str] | None = None) -> list[dict]:
    """CER and normalised CER of each model within each label (duration bucket, programme)."""
    labels_arr = np.asarray(labels)
    rows = []
    for label in order or sorted(set(labels)):
        chosen = np.flatnonzero(labels_arr == label)
        if len(chosen) == 0:
            continue
        row = {"bucket": label, "utterances": int(len(chosen))}
        for name, counts in counts_by_model.items():
            row[f"{name}_cer"] = counts.rate("cer", chosen)
            row[f"{name}_cer_normalized"] = counts.rate("cer_normalized", chosen)
        rows.append(row)
    return rows


def character_alignment(reference: str, hypothesis: str) -> list[dict]:
    """jiwer's character alignment as a list of {op: equal|substitute|delete|insert, ref, hyp} pieces."""
    import jiwer

    if not reference or not hypothesis:
        return [{"op": "delete", "ref": reference, "hyp": ""}] if reference else \
            ([{"op": "insert", "ref": "", "hyp": hypothesis}] if hypothesis else [])
    out = jiwer.process_characters(reference, hypothesis)
    pieces = []
    for chunk in out.alignments[0]:
        pieces.append({"op": chunk.type, "ref": reference[chunk.ref_start_idx:chunk.ref_end_idx],
                       "hyp": hypothesis[chunk.hyp_start_idx:chunk.hyp_end_idx]})
    return pieces


def worst_utterances(per_utterance: list[dict], counts, model: str = "finetuned",
                     count: int = WORST_COUNT) -> list[dict]:
    """The utterances with the highest CER (then the most edits) for `model`, each with its aligned diff."""
    edits, lengths = counts.edits["cer"], counts.lengths["cer"]
    rates = edits / np.maximum(lengths, 1)
    order = sorted(range(len(per_utterance)), key=lambda i: (-rates[i], -edits[i], per_utterance[i]["id"]))
    out = []
    for i in order[:count]:
        u = per_utterance[i]
        out.append({"id": u["id"], "audio_path": u["audio_path"], "duration": u["duration"],
                    "programme": u["programme"], "cer": float(rates[i]), "edits": int(edits[i]),
                    "reference": u["reference"], "hypothesis": u[f"{model}_hypothesis"],
                    "diff": character_alignment(u["reference"], u[f"{model}_hypothesis"])})
    return out


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


def champion_comparable(champion: dict | None, shards: Sequence[FeatureShard]) -> bool:
    """The champion can be decoded on these features: its files exist and it takes as many mel bins."""
    if not champion or not (Path(champion["model_path"]) / "config.json").exists():
        return False
    config = json.loads((Path(champion["model_path"]) / "config.json").read_text())
    return config.get("num_mel_bins") == shards[0].n_mels


def evaluate_on_test(
    base_source: str,
    checkpoint_dir: str,
    shards: Sequence[FeatureShard],
    out_dir: Path | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 225,
    warning: str | None = None,
    emit: Callable[[str], None] = print,
    budget_from_labels: bool = True,
    policy: NormalizationPolicy = DEFAULT_POLICY,
    champion: dict | None = None,
    ctranslate2_dir: Path | None = None,
    programme_pattern: str = DEFAULT_PROGRAMME_PATTERN,
    bootstrap_resamples: int = 1000,
    prefer_bf16: bool = True,
) -> dict:
    """Decode the test split with the base model, the checkpoint and the champion (when there is one), score them,
    and (ctranslate2_dir given) export the checkpoint to CTranslate2 int8 and score that too. Returns the report;
    with out_dir, also writes it there (report.json, report.md, report.html, training_curves.png).

    budget_from_labels: decode longest-first with a token budget of 2x the reference label length + 10 per batch
    (see decoding.transcribe_features); off, every utterance may run to max_new_tokens.
    prefer_bf16: decode in bfloat16 where the hardware multiplies it natively (model.inference_dtype); every model
    in the report is decoded the same way, and the report says which."""
    from asr_pipeline.core.model import inference_dtype, load_model, load_processor

    rows = FeatureRows(shards, "test")
    if len(rows) == 0:
        raise ValueError("the test split is empty: nothing to evaluate on (check ASR_SPLIT_RATIOS and the data)")

    def features(i: int):
        s, j = rows.positions[i]
        return rows.shards[s].features(j)

    meta = [rows.row(i) for i in range(len(rows))]
    references = [clean(m["transcript"]) for m in meta]
    expected = [int(m["label_length"]) for m in meta] if budget_from_labels else None
    dtype = inference_dtype(prefer_bf16)
    models = [("base", base_source), ("finetuned", str(checkpoint_dir))]
    if champion_comparable(champion, shards):
        models.append(("champion", champion["model_path"]))
    report: dict = {
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "test_rows": len(rows),
        "base_model": base_source,
        "finetuned_model": str(checkpoint_dir),
        "champion_model": champion["model_path"] if champion else None,
        "warning": warning,
        "normalization": policy.describe(),
        "decoding": {"greedy": True, "max_new_tokens": max_new_tokens, "batch_size": batch_size,
                     "token_budget": "2 x reference label length + 10, longest first" if budget_from_labels
                     else "max_new_tokens", "dtype": str(dtype).replace("torch.", "")},
        "bootstrap": {"resamples": bootstrap_resamples, "level": 0.95, "unit": "utterance",
                      "comparison_unit": "episode (paired)"},
    }
    hypotheses, counts = {}, {}
    for name, source in models:
        model, processor = load_model(source, dtype=dtype), load_processor(source)
        started = time.perf_counter()
        hypotheses[name] = transcribe_features(model, processor, features, count=len(rows), batch_size=batch_size,
                                               max_new_tokens=max_new_tokens, emit=emit, what=f"decoding ({name})",
                                               expected_tokens=expected)
        seconds = time.perf_counter() - started
        rates, counts[name] = score(references, hypotheses[name], policy, bootstrap_resamples)
        report[name] = {**rates, "model": source, "decode_seconds": round(seconds, 3),
                        "utterances_per_s": round(len(rows) / seconds, 3)}
        del model
    if ctranslate2_dir is not None:
        report["ctranslate2"] = _evaluate_ctranslate2(str(checkpoint_dir), Path(ctranslate2_dir), features, rows,
                                                      references, expected, batch_size, max_new_tokens, policy,
                                                      bootstrap_resamples, report["finetuned"], emit)
        hypotheses["ctranslate2"] = report["ctranslate2"].pop("hypotheses")
    report["per_utterance"] = [
        {"id": int(m["id"]), "audio_path": m["audio_path"], "reference": ref,
         "programme": programme_of(m["group"], programme_pattern), "duration": round(float(m["duration"]), 3),
         **{f"{name}_hypothesis": texts[i] for name, texts in hypotheses.items()}}
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


def _evaluate_ctranslate2(checkpoint_dir, export_dir, features, rows, references, expected, batch_size,
                          max_new_tokens, policy, resamples, transformers_rates, emit) -> dict:
    from asr_pipeline.core.export import export_ctranslate2, load_ctranslate2, transcribe_features_ct2
    from asr_pipeline.core.model import load_processor

    emit(f"exporting {checkpoint_dir} to CTranslate2 int8 at {export_dir}")
    export_ctranslate2(checkpoint_dir, export_dir, quantization="int8")
    model, tokenizer = load_ctranslate2(export_dir), load_processor(checkpoint_dir).tokenizer
    started = time.perf_counter()
    texts = transcribe_features_ct2(model, tokenizer, features, len(rows), batch_size=batch_size,
                                    max_new_tokens=max_new_tokens, expected_tokens=expected, emit=emit)
    seconds = time.perf_counter() - started
    rates, _ = score(references, texts, policy, resamples)
    return {"path": str(export_dir), "quantization": "int8", **rates, "decode_seconds": round(seconds, 3),
            "utterances_per_s": round(len(rows) / seconds, 3),
            "transformers_utterances_per_s": transformers_rates["utterances_per_s"],
            "speedup_vs_transformers": round(transformers_rates["decode_seconds"] / seconds, 3),
            "cer_minus_transformers": rates["cer"] - transformers_rates["cer"],
            "hypotheses": texts}
