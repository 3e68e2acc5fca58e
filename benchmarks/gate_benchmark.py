"""The promotion gate's statistics: how long the paired episode bootstrap takes, and what it sees that two unpaired
utterance intervals do not.

    .venv/bin/python benchmarks/gate_benchmark.py

Prints one JSON object:
- timing: wall and CPU seconds for paired_episode_bootstrap (1,000 and 10,000 resamples) at several test-split sizes
  (10 clips per episode, as in the demo corpus), and the peak extra memory of the largest;
- cases: the two constructed cases of asr_pipeline_tests/core/test_promotion.py, with the per-model utterance
  intervals, the paired episode interval, and what each rule decides.
"""

import json
import time
import tracemalloc

import numpy as np

from asr_pipeline.core import evaluation
from asr_pipeline.core.promotion import PromotionPolicy, decide_promotion
from asr_pipeline.core.hallucination import hallucination_stats
from asr_pipeline.core.text import EditCounts, bootstrap_ci, paired_episode_bootstrap

MEASURE = "cer_normalized"


def _counts(edits, length=50) -> EditCounts:
    edits = np.asarray(edits, dtype=np.int64)
    return EditCounts({MEASURE: edits}, {MEASURE: np.full(len(edits), length, dtype=np.int64)},
                      {MEASURE: np.zeros(len(edits), dtype=np.int64)})


def timing() -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for utterances in (1_000, 10_000, 100_000):
        base = rng.integers(0, 30, size=utterances)
        a, b = _counts(base), _counts(np.maximum(base - rng.integers(0, 2, size=utterances), 0))
        groups = [f"EP_{i // 10}" for i in range(utterances)]
        row = {"utterances": utterances, "episodes": utterances // 10}
        for resamples in (1_000, 10_000):
            tracemalloc.start()
            started, cpu = time.perf_counter(), time.process_time()
            paired_episode_bootstrap(b, a, groups, resamples=resamples)
            row[f"seconds_{resamples}"] = round(time.perf_counter() - started, 3)
            row[f"cpu_seconds_{resamples}"] = round(time.process_time() - cpu, 3)
            row[f"peak_mib_{resamples}"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
            tracemalloc.stop()
        out.append(row)
    return out


def case(name: str, challenger: EditCounts, incumbent: EditCounts, groups: list[str]) -> dict:
    n = len(groups)
    report = {"finetuned": {MEASURE: challenger.rate(MEASURE),
                            "hallucination": hallucination_stats(challenger, ["text"] * n)},
              "base": {MEASURE: incumbent.rate(MEASURE), "hallucination": hallucination_stats(incumbent, ["text"] * n)}}
    report["comparisons"] = evaluation.compare_models({"finetuned": challenger, "base": incumbent}, groups)
    paired = report["comparisons"]["finetuned_vs_base"]
    return {"case": name, "utterances": n, "episodes": paired["episodes"],
            **{name: [round(c.rate(MEASURE), 4), [round(x, 4) for x in bootstrap_ci(c, MEASURE)]]
               for name, c in (("challenger", challenger), ("incumbent", incumbent))},
            "difference": round(paired["difference"], 4), "paired_episode_ci95": [round(x, 4) for x in paired["ci95"]],
            **{f"promote_{rule}": decide_promotion(report, PromotionPolicy(rule, 0.005))["promote"]
               for rule in ("significant", "point")}}


def cases() -> list[dict]:
    rng = np.random.default_rng(1)
    incumbent = rng.integers(1, 40, size=400)
    steady = case("one edit fewer on every clip, 40 episodes", _counts(incumbent - 1), _counts(incumbent),
                  [f"EP_{i // 10:04d}" for i in range(400)])
    flat = np.full(300, 5)
    one_episode = flat.copy()
    one_episode[:25] = 0
    lucky = case("better on one episode of twelve only", _counts(one_episode), _counts(flat),
                 [f"EP_{i // 25:02d}" for i in range(300)])
    return [steady, lucky]


if __name__ == "__main__":
    print(json.dumps({"timing": timing(), "cases": cases()}, indent=1, ensure_ascii=False))
