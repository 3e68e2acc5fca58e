"""What the evaluation report says, built once from report.json for both of its documents (report.md and
report.html render the same rows and sentences): the metric rows per model, the promotion decision and gate, the
hallucination shares, the benchmark sets, CER by duration and programme, and the decoding policy."""

from __future__ import annotations

from pathlib import Path

MODEL_ROWS = ("base", "finetuned", "champion", "ctranslate2")
MODEL_LABELS = {"base": "base", "finetuned": "fine-tuned (challenger)", "champion": "champion (in service)",
                "ctranslate2": "fine-tuned, CTranslate2 int8"}


def reported_models(report: dict) -> list[str]:
    return [name for name in MODEL_ROWS if name in report]


def interval_text(r: dict, measure: str) -> str:
    lo, hi = r.get(f"{measure}_ci95", [float("nan")] * 2)
    return f"{r[measure]:.4f} [{lo:.4f}, {hi:.4f}]"


def model_cells(report: dict, name: str) -> list[str]:
    r = report[name]
    path = r.get("model") or r.get("path") or ""
    return [f"{MODEL_LABELS[name]}: {Path(str(path)).name}", *(interval_text(r, m) for m in
            ("cer", "cer_normalized", "wer", "wer_normalized")), f"{r['utterances_per_s']:.2f}"]


METRIC_HEADER = ["model", "CER [95% CI]", "CER normalised [95% CI]", "WER [95% CI]", "WER normalised [95% CI]",
                 "utterances/s"]


def bucket_models(report: dict, key: str) -> list[str]:
    rows = report.get(key) or [{}]
    return [n for n in ("base", "finetuned", "champion") if f"{n}_cer" in rows[0]]


def bucket_header(report: dict, key: str, label: str) -> list[str]:
    return [label, "utterances"] + [f"{n} CER / normalised" for n in bucket_models(report, key)]


def bucket_rows(report: dict, key: str) -> list[list[str]]:
    names = bucket_models(report, key)
    return [[row["bucket"], str(row["utterances"])] + [f"{row[f'{n}_cer']:.4f} / {row[f'{n}_cer_normalized']:.4f}"
                                                      for n in names] for row in report.get(key) or []]


def policy_text(report: dict) -> str:
    p = report.get("normalization") or {}
    return (f"Normalised rates apply the same policy to references and hypotheses: punctuation "
            f"**{p.get('punctuation')}**, spacing **{p.get('spacing')}** (CER), numbers written as "
            f"**{p.get('numbers')}** (docs/NORMALISATION.md). Raw CER counts spaces; WER splits on spaces. Intervals "
            f"are percentile bootstraps over utterances ({(report.get('bootstrap') or {}).get('resamples')} "
            f"resamples).")


def promotion_text(report: dict) -> str | None:
    decision = report.get("promotion")
    if not decision:
        return None
    verdict = "PROMOTE" if decision["promote"] else f"KEEP THE {str(decision.get('incumbent', 'champion')).upper()}"
    blocked = f" Blocked by: {', '.join(decision['blocked_by'])}." if decision.get("blocked_by") else ""
    rule = f", rule: {decision['rule']}" if decision.get("rule") else ""
    return f"{verdict}: {decision['reason']} (metric: {decision['metric']}{rule}).{blocked}"


HALLUCINATION_NOTE = ("Shares of test utterances. CER > 1: more edits than reference characters (insertions). "
                      "Repetition: a hypothesis whose zlib compression ratio is above 2.4, Whisper's threshold. "
                      "The hallucination share counts an utterance with either.")
COMPARISON_HEADER = ["comparison (normalised CER)", "difference", "95% CI (paired, resampling episodes)", "episodes",
                     "clears the rule"]
HALLUCINATION_HEADER = ["model", "insertion rate", "CER > 1", "repetition (compression > 2.4)", "empty output",
                        "hallucination share"]


def comparison_rows(report: dict) -> list[list[str]]:
    decision = report.get("promotion") or {}
    rows = []
    for key, label in (("finetuned_vs_champion", "challenger − champion"), ("finetuned_vs_base", "challenger − base")):
        c = (report.get("comparisons") or {}).get(key)
        if not c:
            continue
        lo, hi = c["ci95"]
        blocked = set(decision.get("blocked_by") or [])
        incumbent = key.endswith(decision.get("incumbent", "-"))
        cleared = ("no" if "not_better" in blocked else "yes") if incumbent else "(not decisive)"
        rows.append([label, f"{c['difference']:+.4f}", f"[{lo:+.4f}, {hi:+.4f}]", str(c["episodes"]), cleared])
    return rows


def gate_text(report: dict) -> str:
    decision = report.get("promotion") or {}
    rule = decision.get("rule", "point")
    margin = decision.get("margin", 0.0)
    how = (f"the 95% upper bound of challenger − incumbent must be below −{margin:g}" if rule == "significant"
           else f"challenger − incumbent must be at most −{margin:g}")
    return (f"Rule **{rule}**: {how} (ASR_PROMOTION_RULE, ASR_PROMOTION_MARGIN); the incumbent is the "
            f"**{decision.get('incumbent', 'champion')}**. Intervals resample whole episodes, the same draw for both "
            f"models. The challenger's hallucination share may exceed the incumbent's by at most "
            f"{decision.get('hallucination_margin', float('nan')):g} (ASR_HALLUCINATION_MARGIN)."
            + (f" Its CTranslate2 int8 export, what is deployed, may score at most {decision['export_margin']:g} "
               "normalised CER worse than the checkpoint (ASR_EXPORT_MARGIN)." if "export_margin" in decision else ""))


def hallucination_rows(report: dict) -> list[list[str]]:
    rows = []
    for name in reported_models(report):
        h = report[name].get("hallucination")
        if h:
            rows.append([MODEL_LABELS[name], f"{h['insertion_rate']:.4f}", f"{h['cer_above_1']:.3f}",
                         f"{h['repetition']:.3f}", f"{h['empty']:.3f}", f"{h['hallucination_share']:.3f}"])
    return rows


def ct2_text(report: dict) -> str | None:
    c = report.get("ctranslate2")
    if not c:
        return None
    return (f"CTranslate2 int8 export at `{c['path']}`: CER {c['cer']:.4f} ({c['cer_minus_transformers']:+.4f} vs "
            f"transformers), {c['utterances_per_s']:.2f} utterances/s vs {c['transformers_utterances_per_s']:.2f} with "
            f"transformers ({c['speedup_vs_transformers']:.2f}x) on this machine's CPU.")


def decoding_text(report: dict) -> str:
    """The decoding policy and the sample, as the report applied them (docs/EVALUATION.md)."""
    d, sample = report.get("decoding") or {}, report.get("sample")
    guards = (f"temperature fallback {d.get('temperatures')} on compression ratio > "
              f"{d.get('compression_ratio_threshold')} or mean log-prob < {d.get('logprob_threshold')}, no-speech "
              f"threshold {d.get('no_speech_threshold')}") if len(d.get("temperatures") or []) > 1 else "greedy only"
    text = (f"Decoding as deployed (no reference information): longest audio first, token budget "
            f"{d.get('token_budget')}; {guards}; {d.get('device', 'cpu')}, {d.get('dtype', 'float32')}.")
    if sample:
        scope = "the whole test split" if sample.get("full_split") else (
            f"a stable sample of {sample['utterances']} of {sample['test_split_rows']} test utterances "
            f"({sample['episodes']} episodes, at most {sample.get('per_episode')} clips each)")
        text += f" Scored on {scope}, fingerprint {str(sample.get('fingerprint'))[:12]}."
    return text


BENCHMARK_HEADER = ["benchmark set", "utterances", "model", "CER [95% CI]", "CER normalised [95% CI]", "cached"]


def benchmark_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, entry in sorted((report.get("benchmarks") or {}).items()):
        for model in ("base", "finetuned", "champion"):
            if model in entry:
                r = entry[model]
                rows.append([name, str(entry["set"]["utterances"]), MODEL_LABELS[model], interval_text(r, "cer"),
                             interval_text(r, "cer_normalized"), "yes" if r.get("cached") else "no"])
    return rows
