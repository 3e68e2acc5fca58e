"""The champion: the model in service, kept in storage with a promotion history.

    <ASR_HOME>/champion/
      champion.json        the pointer: {model_path, ctranslate2_path, test_cer, promoted_at, ...}
      history.jsonl        one line per promotion, oldest first
      models/<stamp>/      a copy of each promoted checkpoint (model/) and its CTranslate2 export (ctranslate2/)

A checkpoint is copied, not linked, because finetuned_checkpoint is rewritten by the next training.
The pointer is replaced atomically (write a temporary file, rename it), so a reader sees the old champion or the
new one.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from asr_pipeline.core.storage import publish, staging_dir, write_json

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
    path = champion_dir(home) / "history.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def retire_champion(home: Path, reason: str) -> dict | None:
    """Move the pointer aside (kept as champion.retired-<stamp>.json, and in the history), so the next evaluated
    checkpoint is promoted without a comparison. For a champion that can no longer be compared (base model changed)."""
    pointer = current_champion(home)
    if pointer is None:
        return None
    root = champion_dir(home)
    stamp = datetime.now(timezone.utc)
    (root / "champion.json").rename(root / f"champion.retired-{stamp.strftime('%Y%m%dT%H%M%S')}.json")
    entry = {"retired_at": stamp.isoformat(timespec="seconds"), "model_path": pointer["model_path"], "reason": reason}
    with open(root / "history.jsonl", "a", encoding="utf-8") as history:
        history.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return entry


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    challenger_cer: float
    champion_cer: float | None
    margin: float

    def as_dict(self) -> dict:
        return {"promote": self.promote, "reason": self.reason, "challenger_cer": self.challenger_cer,
                "champion_cer": self.champion_cer, "margin": self.margin, "metric": PROMOTION_METRIC}


def decide_promotion(challenger_cer: float, champion_cer: float | None, margin: float) -> PromotionDecision:
    """Promote only when the challenger's test CER is below the champion's (measured on the same test split, in the
    same report) by at least `margin` (absolute CER, e.g. 0.005 = half a point); a tie never replaces the champion,
    even with margin 0."""
    if challenger_cer != challenger_cer:  # NaN
        return PromotionDecision(False, "the challenger's CER is not a number", challenger_cer, champion_cer, margin)
    if champion_cer is None:
        return PromotionDecision(True, "there is no champion yet", challenger_cer, None, margin)
    needed = champion_cer - margin
    improvement = champion_cer - challenger_cer
    if improvement > 0 and improvement >= margin - 1e-12:
        return PromotionDecision(True, f"challenger CER {challenger_cer:.4f} <= champion {champion_cer:.4f} - margin "
                                 f"{margin:.4f}", challenger_cer, champion_cer, margin)
    return PromotionDecision(False, f"challenger CER {challenger_cer:.4f} does not beat champion {champion_cer:.4f} "
                             f"by the margin {margin:.4f} (needs <= {needed:.4f})", challenger_cer, champion_cer,
                             margin)


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
    }
    write_json(root / "champion.json", pointer)
    with open(root / "history.jsonl", "a", encoding="utf-8") as history:
        history.write(json.dumps(pointer, ensure_ascii=False) + "\n")
    return pointer
