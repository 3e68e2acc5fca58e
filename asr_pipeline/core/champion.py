"""The champion: the model in service, kept in storage with a promotion history.

    <ASR_HOME>/champion/
      champion.json        the pointer: {model_path, ctranslate2_path, test_cer, promoted_at, ...}
      history.jsonl        one line per promotion, oldest first
      models/<stamp>/      a copy of each promoted checkpoint (model/) and its CTranslate2 export (ctranslate2/),
                           for the latest ASR_CHAMPION_KEEP promotions (prune_models)

A checkpoint is copied, not linked, because finetuned_checkpoint is rewritten by the next training.
The pointer is replaced atomically (write a temporary file, rename it), so a reader sees the old champion or the
new one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from asr_pipeline.core.storage import publish, remove_stale_staging, staging_dir, unpublish, write_json

# The CER a promotion is decided on: normalised (docs/NORMALISATION.md), so a policy-level difference such as
# "0.1%" vs "영 점 일 프로" neither wins nor loses a promotion.
PROMOTION_METRIC = "cer_normalized"


def champion_dir(home: Path) -> Path:
    return Path(home) / "champion"


def current_champion(home: Path) -> dict | None:
    pointer = champion_dir(home) / "champion.json"
    if not pointer.exists():
        return None
    return json.loads(pointer.read_text(encoding="utf-8"))


def promotion_history(home: Path) -> list[dict]:
    """history.jsonl's entries, oldest first. A line that is not a JSON object (cut short by a kill during an
    append, or edited by hand) is left out, not fatal: the history is a record, and the pointer is the truth."""
    path = champion_dir(home) / "history.jsonl"
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            entry = json.loads(line) if line.strip() else None
        except ValueError:
            entry = None
        if isinstance(entry, dict):
            entries.append(entry)
    return entries


def append_history(home: Path, entry: dict) -> None:
    """One line at the end of history.jsonl. A last line cut short by a kill (no newline) is ended first, so this
    entry is a line of its own and not glued to the torn one (both would be lost to promotion_history)."""
    with open(champion_dir(home) / "history.jsonl", "a+b") as history:  # (appends go to the end whatever is read)
        torn = False
        if history.seek(0, os.SEEK_END):
            history.seek(-1, os.SEEK_END)
            torn = history.read(1) != b"\n"
        history.write((b"\n" if torn else b"") + (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8"))


def promotions(history: list[dict]) -> list[dict]:
    """The history's promotions, oldest first (it also records retirements and removed copies)."""
    return [entry for entry in history if "promoted_at" in entry and isinstance(entry.get("model_path"), str)]


# what promote() names a copy: its time stamp and the run's first 8 characters; anything else in models/ was put
# there by a person and is never removed
COPY_NAME = re.compile(r"^\d{8}T\d{6}(-[0-9A-Za-z_-]{1,8})?$")


def prune_models(home: Path, keep: int, emit=print) -> list[Path]:
    """Remove the copies in champion/models/ of all but the `keep` latest promotions (0: keep every one). Always kept:
    the champion's copy and the one it replaced (an evaluation that started before this promotion may still be
    decoding it), copies no promotion in the history names (a promotion killed between its copy and its pointer,
    or a lost history line: nothing says they are unwanted), and anything not named as promote() names copies.
    With no history, nothing is removed. Each removal is recorded as a line of its own in the history; a copy that
    cannot be removed is reported and left. Also removes what killed promotions left half-copied (hidden staging
    and version folders whose process is gone; storage.remove_stale_staging). Nightly retraining that promotes once
    a week would otherwise keep 50 copies a year: 18 GB for whisper-base with its int8 export, about 200 GB for
    large-v3-turbo."""
    root = champion_dir(home) / "models"
    if not root.is_dir():
        return []
    for name in {entry.name[1:].split(".", 1)[0] for entry in root.iterdir() if entry.name.startswith(".")}:
        remove_stale_staging(root / name)  # a promotion killed while copying gigabytes
    promoted = [Path(entry["model_path"]).parent.name for entry in promotions(promotion_history(home))]
    if keep <= 0 or not promoted:
        return []
    wanted = set(list(dict.fromkeys(reversed(promoted)))[:keep])
    pointer = current_champion(home)
    if pointer:
        wanted |= {Path(path).parent.name for path in (pointer.get("model_path"), pointer.get("previous_model_path"))
                   if isinstance(path, str)}
    reason = f"older than {f'the latest {keep} promotions' if keep > 1 else 'the latest promotion'} " \
             f"(ASR_CHAMPION_KEEP={keep})"
    removed = []
    for copy in sorted(root.iterdir()):
        if copy.name in wanted or copy.name not in promoted or not COPY_NAME.match(copy.name):
            continue
        try:
            unpublish(copy)
            error = ""
        except OSError as failure:  # judged below: only a copy still there counts as not removed
            error = f": {failure}"
        if os.path.lexists(copy):
            emit(f"could not remove the champion copy {copy} ({reason}){error}; remove it by hand")
            continue
        entry = {"removed_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "model_path": str(copy / "model"), "reason": reason}
        append_history(home, entry)
        emit(f"removed the champion copy {copy.name}: {reason}")
        removed.append(copy)
    return removed


def promoted_from(home: Path, report: dict) -> dict | None:
    """The champion's pointer when this very report (its checkpoint and creation time) promoted it: a promotion
    tried again after a step failed past it must not copy the same model again (each copy would push a real
    earlier champion out of ASR_CHAMPION_KEEP)."""
    pointer = current_champion(home)
    if pointer and report.get("created_at") and pointer.get("report_created_at") == report["created_at"] \
            and pointer.get("source_checkpoint") == report.get("finetuned_model"):
        return pointer
    return None


def retire_champion(home: Path, reason: str) -> dict | None:
    """Move the pointer aside (kept as champion.retired-<stamp>.json, and in the history), so the next evaluated
    checkpoint is compared with the base model alone. For a champion that can no longer be compared (base model
    changed)."""
    pointer = current_champion(home)
    if pointer is None:
        return None
    root = champion_dir(home)
    stamp = datetime.now(timezone.utc)
    (root / "champion.json").rename(root / f"champion.retired-{stamp.strftime('%Y%m%dT%H%M%S')}.json")
    entry = {"retired_at": stamp.isoformat(timespec="seconds"), "model_path": pointer["model_path"], "reason": reason}
    append_history(home, entry)
    return entry


PROMOTION_RULES = ("significant", "point")


@dataclass(frozen=True)
class PromotionPolicy:
    """ASR_PROMOTION_RULE, ASR_PROMOTION_MARGIN, ASR_HALLUCINATION_MARGIN, ASR_PROMOTION_MIN_EPISODES, how
    benchmark regressions count, and ASR_EXPORT_MARGIN."""

    rule: str = "significant"
    margin: float = 0.005
    hallucination_margin: float = 0.01
    benchmark_gate: str = "block"
    # A bootstrap over 2 or 3 episodes has only a handful of distinct resamples: its interval is far too narrow.
    min_episodes: int = 10
    # How much worse (normalised CER) the CTranslate2 int8 export, the model deployed, may score than the checkpoint
    # on the same sample: wide enough for int8's near-tie flips on a small sample (1.9 points from float32 on 12
    # clips of the unsure base model, docs/BENCHMARKS.md), narrow enough for a broken conversion.
    export_margin: float = 0.05

    def __post_init__(self):
        # the environment variables' ranges (defs/common/resources.py), for settings from the Launchpad; the gate
        # arrives lower-cased (PipelineSettings.promotion_policy), as the variable's parser has it
        if self.rule not in PROMOTION_RULES:
            raise ValueError(f"ASR_PROMOTION_RULE must be one of {', '.join(PROMOTION_RULES)}, got {self.rule!r}")
        if self.benchmark_gate not in ("block", "warn"):
            raise ValueError(f"ASR_BENCHMARK_GATE must be block or warn, got {self.benchmark_gate!r}")
        if not 0.0 <= self.margin < 1.0:
            raise ValueError(f"ASR_PROMOTION_MARGIN must be at least 0 and below 1, got {self.margin!r}")
        for name, value in (("ASR_HALLUCINATION_MARGIN", self.hallucination_margin),
                            ("ASR_EXPORT_MARGIN", self.export_margin)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        # 1 is allowed here (its bootstrap interval is NaN, which never wins); the variable asks for 2 or more
        if self.min_episodes < 1:
            raise ValueError(f"ASR_PROMOTION_MIN_EPISODES must be 1 or more, got {self.min_episodes!r}")

    def beats(self, comparison: dict) -> bool:
        """challenger − incumbent (comparison['difference'], ['ci95']) clears the rule. `significant`: the interval's
        upper bound is below −margin. `point`: the difference is below zero and at most −margin. A tie never wins."""
        difference, (_, upper) = comparison["difference"], comparison["ci95"]
        if self.rule == "point":
            return difference < 0 and -difference >= self.margin - 1e-12
        if comparison["episodes"] < self.min_episodes:
            return False
        return upper == upper and upper < -self.margin  # NaN (fewer than two episodes) never wins


def _comparison_text(name: str, comparison: dict, policy: PromotionPolicy, won: bool) -> str:
    lo, hi = comparison["ci95"]
    figures = f"challenger − {name} normalised CER {comparison['difference']:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}; " \
              f"{comparison['episodes']} episodes]"
    if policy.rule == "point":
        need = f"needs a difference <= {-policy.margin:+.4f}"
    elif comparison["episodes"] < policy.min_episodes:
        need = (f"needs at least {policy.min_episodes} episodes in the test split for its interval to mean anything, "
                "ASR_PROMOTION_MIN_EPISODES")
    else:
        need = f"needs the upper bound < {-policy.margin:+.4f}"
    return f"{figures} {'beats' if won else 'does not beat'} the {name} (rule {policy.rule}, {need})"


def decide_promotion(report: dict, policy: PromotionPolicy, champion_unavailable: str | None = None,
                     benchmark_regressions: list[str] = ()) -> dict:
    """report.json's `promotion`: {promote, reason, rule, difference, difference_ci95, blocked_by, ...}.

    The incumbent is the champion, or, with no champion yet, the base model the challenger was trained from: a
    challenger that does not beat the model it started from is never promoted. (With a champion, challenger − base is
    reported, measured the same way, but does not decide: a champion worse than the base should still give way to a
    better challenger.) Blocked (blocked_by) by:
    - not_better: does not beat the incumbent under the rule;
    - hallucination: hallucination share above the incumbent's by more than hallucination_margin;
    - benchmark:<name>: worse than the incumbent on that benchmark set (ASR_BENCHMARK_GATE=warn only reports it);
    - incomparable_champion: a champion exists but could not be decoded on these features;
    - export: its CTranslate2 int8 export (what is deployed) scores worse than it by more than export_margin."""
    incumbent = "champion" if "champion" in report else "base"
    comparisons = report["comparisons"]
    main = comparisons[f"finetuned_vs_{incumbent}"]
    blocked, reasons, notes = [], [], []
    if champion_unavailable:
        blocked.append("incomparable_champion")
        reasons.append(champion_unavailable)
    won = policy.beats(main)
    if not won:
        blocked.append("not_better")
    reasons.append(_comparison_text(incumbent, main, policy, won))
    challenger_share = report["finetuned"]["hallucination"]["hallucination_share"]
    incumbent_share = report[incumbent]["hallucination"]["hallucination_share"]
    if challenger_share - incumbent_share > policy.hallucination_margin + 1e-12:
        blocked.append("hallucination")
        reasons.append(f"hallucination share {challenger_share:.3f} vs the {incumbent}'s {incumbent_share:.3f}: "
                       f"worse by more than ASR_HALLUCINATION_MARGIN {policy.hallucination_margin:.3f}")
    for name in benchmark_regressions:
        text = f"worse than the {incumbent} on benchmark {name} by more than the margin"
        if policy.benchmark_gate == "block":
            blocked.append(f"benchmark:{name}")
            reasons.append(text)
        else:
            notes.append(f"warning: {text} (ASR_BENCHMARK_GATE=warn)")
    export = report.get("ctranslate2") or {}
    if export.get(PROMOTION_METRIC) is not None:
        worse = export[PROMOTION_METRIC] - report["finetuned"][PROMOTION_METRIC]
        if worse > policy.export_margin + 1e-12:
            blocked.append("export")
            reasons.append(f"its CTranslate2 int8 export, the model deployed, scores {worse:+.4f} normalised CER "
                           f"against the checkpoint: worse by more than ASR_EXPORT_MARGIN {policy.export_margin:.3f}")
    promote = not blocked
    reasons += notes
    return {
        "promote": promote,
        "reason": "; ".join(reasons),
        "rule": policy.rule, "metric": PROMOTION_METRIC, "margin": policy.margin,
        "hallucination_margin": policy.hallucination_margin, "min_episodes": policy.min_episodes,
        "export_margin": policy.export_margin, "export_cer": export.get(PROMOTION_METRIC),
        "incumbent": incumbent,
        "difference": main["difference"], "difference_ci95": main["ci95"],
        "versus_base": {"difference": comparisons["finetuned_vs_base"]["difference"],
                        "difference_ci95": comparisons["finetuned_vs_base"]["ci95"]},
        "episodes": main["episodes"],
        "challenger_cer": report["finetuned"][PROMOTION_METRIC],
        "champion_cer": report["champion"][PROMOTION_METRIC] if "champion" in report else None,
        "base_cer": report["base"][PROMOTION_METRIC],
        "hallucination": {"challenger": challenger_share, "incumbent": incumbent_share},
        "blocked_by": blocked,
    }


def promote(home: Path, checkpoint_dir: Path, ctranslate2_dir: Path | None, report: dict,
            run_id: str | None = None) -> dict:
    """Copy the checkpoint (and its export) into champion/models/, then move the pointer and append the history."""
    root = champion_dir(home)
    promoted_at = datetime.now(timezone.utc)
    stamp = promoted_at.strftime("%Y%m%dT%H%M%S") + (f"-{run_id[:8]}" if run_id else "")
    target = root / "models" / stamp
    staged = staging_dir(target)
    shutil.copytree(checkpoint_dir, staged / "model", ignore=shutil.ignore_patterns("tensorboard"))
    if ctranslate2_dir is not None:
        shutil.copytree(ctranslate2_dir, staged / "ctranslate2")
    publish(staged, target)
    previous = current_champion(home)
    finetuned = report["finetuned"]
    pointer = {
        "model_path": str(target / "model"),
        "ctranslate2_path": str(target / "ctranslate2") if ctranslate2_dir is not None else None,
        "test_cer": finetuned["cer"],
        "test_cer_normalized": finetuned["cer_normalized"],
        "test_wer": finetuned["wer"],
        "metric": PROMOTION_METRIC,
        "test_rows": report["test_rows"],
        "promoted_at": promoted_at.isoformat(timespec="seconds"),
        "run_id": run_id,
        "source_checkpoint": str(checkpoint_dir),
        "report_path": report.get("json_path"),
        "previous_model_path": previous["model_path"] if previous else None,
        "decision": report.get("promotion"),
        "split": report.get("split"),  # the split it was trained and tested on (evaluation.champion_unavailable)
        "report_created_at": report.get("created_at"),  # with source_checkpoint: which report promoted it
    }
    write_json(root / "champion.json", pointer)
    append_history(home, pointer)
    return pointer
