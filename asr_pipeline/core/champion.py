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
from datetime import datetime, timezone
from pathlib import Path

from asr_pipeline.core.promotion import PROMOTION_METRIC
from asr_pipeline.core.storage import publish, remove_stale_staging, staging_dir, unpublish, write_json


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
