"""Hypotheses cached by (model, decoding policy, sample), so a model is never decoded twice on the same utterances.

The nightly report decodes the base model, the challenger and the champion. Two of the three usually did not change
since last night: their hypotheses on an unchanged sample come from here, and only the new checkpoint is decoded.

- model fingerprint: SHA-256 of the model directory's files that decide its outputs (weights, configs, tokenizer),
  by content. Hashing a large checkpoint takes seconds, so each file's digest is remembered under the cache
  directory keyed by (path, size, mtime); a file rewritten in place gets a new mtime and is hashed again.
- sample fingerprint: the utterance ids with a digest of each one's decoder input (features or audio bytes) and
  duration (it sets the token budget), computed by the caller.
- the key also holds the runtime (transformers or CTranslate2), the device/dtype and the decoding policy.
Entries are JSON files written atomically (a temporary file, then os.replace), so a killed run leaves either
the old entry, the new one, or none. The cache only saves work: a cache directory that cannot be written (a
read-only mount, a full disk) costs a decode next time, never the evaluation. An entry not used for UNUSED_DAYS is removed when another is written (each
night writes one to three: a year of them would be hundreds of megabytes), and a remembered file digest whose file
is gone is forgotten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path

from asr_pipeline.core.storage import write_json

# files whose bytes decide what a model outputs; anything else in a checkpoint (training logs, TensorBoard) does not
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")
IGNORED_FILES = {"training_log.json", "training_summary.json", "trainer_state.json", "export.json"}
UNUSED_DAYS = 30  # a model not decoded on the sample for a month (a champion long replaced) is not coming back
log = logging.getLogger(__name__)


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class HypothesisCache:
    """$ASR_HOME/cache: hypotheses/<key>.json and the remembered file digests (file_digests.json)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.hypotheses = self.root / "hypotheses"
        self._digests_path = self.root / "file_digests.json"

    def model_fingerprint(self, source: str) -> str:
        """Content hash of a local model directory; a hub id (no local directory) is identified by its name."""
        directory = Path(source)
        if not directory.is_dir():
            return "hub:" + hashlib.sha256(source.encode()).hexdigest()
        files = sorted(p for p in directory.iterdir() if p.is_file() and p.suffix in MODEL_FILE_SUFFIXES
                       and p.name not in IGNORED_FILES)
        known = self._load_digests()
        combined = hashlib.sha256()
        for path in files:
            stat = path.stat()
            remembered = known.get(str(path.resolve()))
            if remembered and remembered["size"] == stat.st_size and remembered["mtime_ns"] == stat.st_mtime_ns:
                digest = remembered["sha256"]
            else:
                digest = file_digest(path)
                known[str(path.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
            combined.update(f"{path.name}\0{digest}\n".encode())
        self._save_digests(known)
        return combined.hexdigest()

    def _load_digests(self) -> dict:
        try:
            return json.loads(self._digests_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}

    def _save_digests(self, known: dict) -> None:
        # what another evaluation remembered since we read the file is kept (ours win for the same path); files
        # gone (checkpoints replaced every night, copies pruned) are forgotten: the file stays small
        merged = {**self._load_digests(), **known}
        try:
            write_json(self._digests_path, {path: d for path, d in merged.items() if os.path.exists(path)},
                       indent=None)
        except OSError as exc:
            log.warning("file digests not remembered in %s (%s): the model files are hashed again next time",
                        self.root, exc)

    @staticmethod
    def key(model_fingerprint: str, runtime: str, placement: str, policy: dict, sample_fingerprint: str) -> str:
        # the decoding software too: after an upgrade the champion's cached hypotheses would come from the old
        # library while the challenger is decoded by the new one, and the paired comparison would be biased
        payload = json.dumps([model_fingerprint, runtime, placement, policy, sample_fingerprint, _software()],
                             sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:32]

    def get(self, key: str) -> dict | None:
        path = self.hypotheses / f"{key}.json"
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent, or unreadable: decode again
        try:
            os.utime(path)  # used: its month starts again
        except OSError:
            pass
        return entry

    def put(self, key: str, entry: dict) -> str | None:
        """Store an entry; returns None, or why it could not be stored (the caller goes on without it)."""
        try:
            write_json(self.hypotheses / f"{key}.json", entry, indent=None)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        self.remove_unused()
        return None

    def remove_unused(self, days: float = UNUSED_DAYS) -> list[str]:
        """Delete the entries neither written nor read for `days` (and what a killed write left); returns their
        names."""
        removed, cutoff = [], time.time() - days * 86400
        for path in [*self.hypotheses.glob("*.json"), *self.hypotheses.glob(".*.tmp")]:
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed.append(path.stem)
            except OSError:
                continue  # gone meanwhile (another evaluation pruned it)
        return removed


def sample_fingerprint(ids, digests, durations) -> str:
    """ids, per-utterance content digests and durations, in decoding order."""
    combined = hashlib.sha256()
    for uid, digest, seconds in zip(ids, digests, durations):
        combined.update(f"{uid}\0{digest}\0{float(seconds):.4f}\n".encode())
    return combined.hexdigest()


def _software() -> dict[str, str]:
    """Versions of the libraries that decode (a hub model's weights can also change under its name: a hub id is
    cached by name, so pin hub models to a local directory where that matters)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "ctranslate2"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            found[package] = "absent"
    return found
