"""`asr-pipeline status` and `quarantine`: every asset's rows and bytes, and every batch's state, read from the
Dagster instance's catalog (asr_pipeline.defs.ingest.batch_states), not from directories."""

from __future__ import annotations

import json
from pathlib import Path

from asr_pipeline.cli.models import _report_path, _storage
from asr_pipeline.cli.runs import _definitions, _instance
from asr_pipeline.core import settings as env
from asr_pipeline.core.batches import utc_text
from asr_pipeline.core.errors import DatabaseUnavailable

PARTITIONED = ("raw_manifest", "resampled_dataset", "featurized_shards")
ROWS_FILE = {"raw_manifest": "manifest.parquet", "resampled_dataset": "index.parquet",
             "featurized_shards": "index.parquet"}


def _batch_dirs(name: str) -> dict[str, Path]:
    root = _storage() / name
    return {p.name: p for p in sorted(root.glob("ids-*")) if p.is_dir()} if root.is_dir() else {}


def _parquet_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows if path.exists() else 0


def _suspect_audio(shard: Path) -> tuple[int, int | None]:
    """(near-silent clips, clips cancelled by the down-mix) of an audio shard: the counts its meta.json keeps, or,
    for a shard made before them, core.audio_quality's criteria on what its index has and None for the down-mix:
    the shard keeps no count of it (its channels may never have been measured), which is not the same as none
    cancelled."""
    from asr_pipeline.core.storage import read_json

    meta = read_json(shard / "meta.json") if (shard / "meta.json").exists() else {}
    if "near_silent_clips" in meta:
        return meta["near_silent_clips"], meta.get("cancelling_downmix_clips")
    if not (shard / "index.parquet").exists():  # a batch folder with no clips stored (yet): nothing to count
        return 0, 0
    from asr_pipeline.core import audio_quality

    return len(audio_quality.near_silent(audio_quality.read_index(shard, audio_quality.NEAR_SILENT_COLUMNS))), None


def collect_status() -> dict:
    from asr_pipeline.core.storage import directory_bytes, read_json

    # the instance first: it ends a console command's start-up (the collector's pause, cli.runs), and is opened once
    defs, instance = _definitions(), _instance()
    storage = _storage()
    assets: dict = {}
    batches: dict[str, dict] = {}
    for name in PARTITIONED:
        dirs = _batch_dirs(name)
        if not dirs:
            assets[name] = {"materialized": False}
            continue
        entry = {"materialized": True, "path": str(storage / name), "partitions": len(dirs), "rows": 0,
                 "bytes": 0, "quarantined": 0}
        for key, path in dirs.items():
            rows = _parquet_rows(path / ROWS_FILE[name])
            entry["rows"] += rows
            entry["bytes"] += directory_bytes(path)
            entry["quarantined"] += _parquet_rows(path / "quarantine.parquet")
            if name == "resampled_dataset":  # kept, but named by the audio checks (docs/ROBUSTNESS.md)
                quiet, cancelled = _suspect_audio(path)
                entry["near_silent"] = entry.get("near_silent", 0) + quiet
                entry["cancelled_by_downmix"] = entry.get("cancelled_by_downmix", 0) + (cancelled or 0)
                entry["downmix_uncounted_batches"] = entry.get("downmix_uncounted_batches", 0) + (cancelled is None)
            batches.setdefault(key, {})[name] = rows
        entry["updated_at"] = max(_mtime(p) for p in dirs.values())
        assets[name] = entry
    for name, summary_file, rows_key in [("finetuned_checkpoint", "training_summary.json", "train_rows"),
                                         ("evaluation_report", "report.json", "test_rows")]:
        path = storage / name
        if not (path / summary_file).exists():
            assets[name] = {"materialized": False}
            continue
        summary = read_json(path / summary_file)
        assets[name] = {"materialized": True, "path": str(path), "bytes": directory_bytes(path),
                        "rows": summary[rows_key], "partitions": len(summary.get("partitions", [])),
                        "updated_at": _mtime(path)}
        if name == "finetuned_checkpoint":
            assets[name].update({k: summary.get(k) for k in ("steps", "train_loss", "best_valid_cer", "base_model")})
    status = {"asr_home": str(env.asr_home()), "assets": assets, "quarantined": len(collect_quarantine()),
              "partitions": [{"key": key, **rows} for key, rows in sorted(batches.items())],
              **collect_batch_states(defs, instance)}
    checkpoint = storage / "finetuned_checkpoint"
    status["latest_checkpoint"] = str(checkpoint) if (checkpoint / "config.json").exists() else None
    if _report_path().exists():
        report = read_json(_report_path())
        status["latest_report"] = {"path": str(_report_path()), "created_at": report["created_at"],
                                   "test_rows": report["test_rows"], "base_cer": report["base"]["cer"],
                                   "finetuned_cer": report["finetuned"]["cer"], "warning": report.get("warning")}
    else:
        status["latest_report"] = None
    status.update(collect_kept_files(defs.resources["settings"]))
    from asr_pipeline.defs.alerts.sensors import alerts_status
    status.update(alerts_status(instance))  # "freshness" and "alerting" (destinations masked)
    return status


def collect_kept_files(settings) -> dict:
    """What grows besides the assets: the promoted models' copies (ASR_CHAMPION_KEEP of them stay) and the training
    work directories (a finished training removes its own; an abandoned one goes when the next training starts)."""
    from asr_pipeline.core import work_dirs
    from asr_pipeline.core.champion import champion_dir
    from asr_pipeline.core.storage import directory_bytes

    def size(path: Path) -> int:
        try:
            return directory_bytes(path)
        except OSError:  # a training or a promotion changed it while it was counted
            return 0

    def listing(folder: Path) -> list[Path]:
        try:
            return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        except OSError:  # not readable by this user: counted as empty rather than failing the whole status
            return []

    copies = [p for p in listing(champion_dir(settings.home_dir()) / "models") if not p.name.startswith(".")]
    dirs = listing(settings.home_dir() / "work" / "finetuned_checkpoint")
    return {"champion_copies": {"count": len(copies), "bytes": sum(size(p) for p in copies),
                                "keep": settings.champion_keep},
            "training_work": {"directories": len(dirs), "bytes": sum(size(p) for p in dirs),
                              "unused": [p.name for p in dirs if work_dirs.abandoned(p)]}}


def collect_batch_states(defs, instance) -> dict:
    """Every registered batch with its state and reason, from the Dagster instance's catalog (runs,
    materializations, check evaluations) and the table's current fingerprints; without the database, from the
    catalog alone (a changed batch then still reads as done) and the error is reported."""
    from asr_pipeline.defs.ingest.batch_states import batch_states, registered_batches

    database, settings = defs.resources["database"], defs.resources["settings"]
    keys = registered_batches(instance)
    stale = None
    try:  # settings or code changed since a batch was made (asr_pipeline.defs.common.versions, where present)
        from asr_pipeline.defs.common.versions import stale_batch_reasons
    except ImportError:
        pass
    else:
        stale = stale_batch_reasons(instance, settings, keys)
    table, error = database.open_table(retries=0), None
    try:
        try:
            states = batch_states(instance, keys, table, stale)
        except DatabaseUnavailable as exc:
            error = str(exc)
            states = batch_states(instance, keys, None, stale)
    finally:
        table.dispose()
    counts = {}
    for state in states:
        counts[state.state] = counts.get(state.state, 0) + 1
    return {"batches": [s.as_dict() for s in states], "batch_counts": counts, "batch_states_error": error}


def _mtime(path: Path) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")


def cmd_status(args) -> None:
    status = collect_status()
    if args.json:
        print(json.dumps(status, indent=2, ensure_ascii=False))
        return
    print(f"ASR_HOME {status['asr_home']}")
    for name, entry in status["assets"].items():
        if not entry["materialized"]:
            print(f"  {name:22s} not materialized")
            continue
        extra = f", {entry['quarantined']} quarantined" if entry.get("quarantined") else ""
        extra += f", {entry['near_silent']} near-silent" if entry.get("near_silent") else ""
        extra += f", {entry['cancelled_by_downmix']} cancelled by the down-mix" \
            if entry.get("cancelled_by_downmix") else ""
        uncounted = entry.get("downmix_uncounted_batches", 0)
        extra += f", down-mix not counted in {uncounted} batch{'es' if uncounted > 1 else ''} (made before the counts " \
            "were kept)" if uncounted else ""
        print(f"  {name:22s} {entry.get('rows', '?'):>7} rows in {entry.get('partitions', 0)} batches{extra}  "
              f"{entry['bytes'] / 1e6:9.1f} MB  updated {entry['updated_at']}")
    rows = {batch["key"]: batch for batch in status["partitions"]}
    for batch in status["batches"]:
        sizes = ", ".join(f"{k} {v}" for k, v in rows.get(batch["key"], {}).items() if k != "key")
        retry = f"; next attempt after {utc_text(batch['retry_at'])}" if batch.get("retry_at") else ""
        print(f"  batch {batch['key']}: {batch['state']} ({batch['reason']}{retry})"
              + (f"; rows: {sizes}" if sizes else ""))
    if status["batch_states_error"]:
        print(f"  (the database could not be read, so changed batches may show as done: "
              f"{status['batch_states_error']})")
    print(f"quarantined rows: {status['quarantined']} (asr-pipeline quarantine lists them)")
    print(f"latest checkpoint: {status['latest_checkpoint'] or '(none)'}")
    copies, work = status["champion_copies"], status["training_work"]
    keep = f"each promotion removes those beyond the latest {copies['keep']}" if copies["keep"] \
        else "every one kept"
    print(f"champion copies: {copies['count']} ({copies['bytes'] / 1e9:.2f} GB; {keep}, ASR_CHAMPION_KEEP)")
    if work["directories"]:
        unused = len(work["unused"])
        print(f"training work directories: {work['directories']} ({work['bytes'] / 1e9:.2f} GB)"
              + (f", {unused} of killed trainings (a rerun on the same data and settings resumes one; the next "
                 "training on other data removes them)" if unused else ""))
    for name, check in status["freshness"].items():
        print(f"freshness {name} ({check['asset']}): " + ("ok" if check["passed"] else check["description"]))
    report = status["latest_report"]
    print("latest report: " + (f"{report['path']} (base CER {report['base_cer']:.4f}, fine-tuned CER "
                               f"{report['finetuned_cer']:.4f})" if report else "(none)"))


def collect_quarantine() -> list[dict]:
    """Rows left out anywhere in the pipeline: {id, audio_path, reason, stage}."""
    from asr_pipeline.core.tables import read_rows

    rows = []
    for stage in ("resampled_dataset", "featurized_shards"):
        for key, path in _batch_dirs(stage).items():
            if (path / "quarantine.parquet").exists():
                # an id is null where a notebook's manifest had no usable one (manifest.row_id)
                rows += [{"id": None if r["id"] is None else int(r["id"]), "audio_path": r["audio_path"],
                          "reason": r["reason"], "stage": stage, "partition": key}
                         for r in read_rows(path / "quarantine.parquet")]
    return sorted(rows, key=lambda r: (r["id"] is None, r["id"] or 0))


def cmd_quarantine(args) -> None:
    rows = collect_quarantine()
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        print("no quarantined rows")
    for r in rows:
        print(f"{r['id']}\t{r['audio_path']}\t{r['reason']}")
