"""Content versions of an ingest batch: which settings shape what each ingest asset writes.

A batch's manifest depends on ASR_PATH_MAP, ASR_SPLIT_RATIOS, ASR_GROUP_PATTERN and the label clean-up; its 16 kHz
audio in addition on the duration limits; its features in addition on the base model's processor (tokenizer and
feature extractor). Each asset's version covers everything upstream of it too, so one changed setting makes every
asset it reaches stale at once, before anything is re-processed (Dagster does not pass a parent's staleness on to
its children by itself: it only compares each asset's own code version and its inputs' data versions).

The Dagster layer (asr_pipeline.defs.common.versions) uses these as the assets' code_version; they are also written into
every shard's meta.json, so training can refuse a mix of batches made with different settings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from asr_pipeline.core.manifest import LABEL_CLEANUP_VERSION
from asr_pipeline.core.settings import PathMap, SplitRatios

# Bump when the asset's own code changes what it writes.
MANIFEST_FORMAT = 1
AUDIO_FORMAT = 3  # 2: index.parquet carries audio_sha256 (exact-duplicate detection); 3: int16 samples in
# audio.arrow, audio_sha256 of the stored int16 (older float32 shards still read, and show as stale)
FEATURES_FORMAT = 2  # 2: index.parquet carries audio_sha256
# The files that make a processor: what the tokenizer and the feature extractor read.
PROCESSOR_FILES = ("tokenizer.json", "vocab.json", "merges.txt", "added_tokens.json", "special_tokens_map.json",
                   "tokenizer_config.json", "normalizer.json", "preprocessor_config.json", "processor_config.json")
INGEST_ASSETS = ("raw_manifest", "resampled_dataset", "featurized_shards")
FIX_COMMAND = "asr-pipeline backfill --stale"


@dataclass(frozen=True)
class ContentVersion:
    """A short hash of `inputs`: the settings, by their variable names, that decide an asset's content."""

    inputs: Mapping[str, str] = field(default_factory=dict)

    @property
    def version(self) -> str:
        payload = json.dumps(dict(self.inputs), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def processor_fingerprint(base_model: str) -> str:
    """A local model directory: a hash of its processor files (a new tokenizer in the same directory counts).
    A hub id: the id itself (the hub is not asked at load time)."""
    path = Path(base_model).expanduser()
    if not path.is_dir():
        return f"hub:{base_model}"
    digest = hashlib.sha256()
    for name in PROCESSOR_FILES:
        file = path / name
        if file.is_file():
            digest.update(name.encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def ingest_versions(path_map: PathMap, ratios: SplitRatios, group_pattern: str, min_audio_seconds: float,
                    max_audio_seconds: float, base_model: str) -> dict[str, ContentVersion]:
    """{asset name: ContentVersion} for raw_manifest, resampled_dataset and featurized_shards."""
    manifest = {
        "ASR_PATH_MAP": str(path_map),
        "ASR_SPLIT_RATIOS": f"{ratios.train:.6f}/{ratios.valid:.6f}/{ratios.test:.6f}",
        "ASR_GROUP_PATTERN": group_pattern,
        "label clean-up": f"v{LABEL_CLEANUP_VERSION}",
        "manifest format": f"v{MANIFEST_FORMAT}",
    }
    audio = {**manifest, "ASR_MIN_AUDIO_SECONDS": f"{min_audio_seconds:g}",
             "ASR_MAX_AUDIO_SECONDS": f"{max_audio_seconds:g}", "audio format": f"v{AUDIO_FORMAT}"}
    features = {**audio, "ASR_BASE_MODEL": str(base_model), "processor": processor_fingerprint(base_model),
                "features format": f"v{FEATURES_FORMAT}"}
    return {"raw_manifest": ContentVersion(manifest), "resampled_dataset": ContentVersion(audio),
            "featurized_shards": ContentVersion(features)}


def changed_settings(old: Mapping[str, str] | None, new: Mapping[str, str]) -> str:
    """'ASR_SPLIT_RATIOS 0.8/0.1/0.1 -> 0.6/0.2/0.2; ...', or a note when the old inputs were not recorded."""
    if old is None:
        return "made before content versions were recorded"
    changes = [f"{name} {old.get(name, '(unset)')!s} -> {new.get(name, '(unset)')!s}"
               for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)]
    return "; ".join(changes) or "made with another code version"


def mixed_versions_message(metas: Mapping[str, dict], current: ContentVersion) -> str | None:
    """None when every shard (by batch key) was made with the same settings; else which batches differ from the
    current settings, how, and the command that fixes it.

    A mix is refused rather than trained on: with other split ratios or another group pattern, one episode can sit
    in train in one batch and in test in another, and labels or features made for another processor disagree."""
    groups: dict[str | None, list[str]] = {}
    for key, meta in sorted(metas.items()):
        groups.setdefault(meta.get("content_version"), []).append(key)
    if len(groups) <= 1:
        return None
    parts = []
    for version, keys in groups.items():
        if version == current.version:
            continue
        shown = ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
        changes = changed_settings(metas[keys[0]].get("version_inputs"), current.inputs)
        parts.append(f"{len(keys)} batch{'es' if len(keys) != 1 else ''} ({shown}): {changes}")
    return ("featurized batches were made with different settings; training on a mix could leak episodes between "
            f"splits. Made with other settings than the current ones: {'; '.join(parts)}. Run `{FIX_COMMAND}` to "
            "re-process them, then train again.")
